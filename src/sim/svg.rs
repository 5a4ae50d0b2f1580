//! Hand-written SVG plots for the README and BENCHMARKS.md: the latency CDF and source share /
//! p95 latency against audience size. Plain SVG 1.1, no scripts, no external fonts.

use super::metrics::Report;
use std::fmt::Write;

/// What a plot needs of one run: read from a [`Report`] or from its JSON.
#[derive(Debug, Clone)]
pub struct PlotRun {
    /// Legend label.
    pub label: String,
    /// Audience size.
    pub peers: usize,
    /// Source share of delivered payload, 0..1.
    pub source_share: f64,
    /// p95 delivery latency, ms.
    pub p95_ms: f64,
    /// Latency CDF points (ms, share).
    pub cdf: Vec<(f64, f64)>,
}

impl PlotRun {
    /// From a report in memory.
    pub fn from_report(r: &Report) -> Self {
        PlotRun {
            label: format!("{} viewers", r.config.peers),
            peers: r.config.peers,
            source_share: r.source.share_of_delivered,
            p95_ms: r.latency_ms.p95,
            cdf: r.latency_cdf.clone(),
        }
    }

    /// From a report's JSON (as `--json` writes it); `None` when fields are missing.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let peers = v.get("config")?.get("peers")?.as_u64()? as usize;
        let cdf = v
            .get("latency_cdf")?
            .as_array()?
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect();
        Some(PlotRun {
            label: format!("{peers} viewers"),
            peers,
            source_share: v.get("source")?.get("share_of_delivered")?.as_f64()?,
            p95_ms: v.get("latency_ms")?.get("p95")?.as_f64()?,
            cdf,
        })
    }
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 70.0;
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    s
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn axes(s: &mut String, x_label: &str, y_label: &str) {
    let _ = write!(
        s,
        r#"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
"#,
        H - B,
        W - R,
        H - B,
        H - B,
        (L + W - R) / 2.0,
        H - 18.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
}

/// Latency CDF of one or more runs (each labelled), x in ms up to the largest p99.9-ish point.
pub fn latency_cdf(runs: &[PlotRun]) -> String {
    let mut s = header("Delivery latency CDF (segment published -> verified at viewer)");
    let xmax = nice_max(
        runs.iter()
            .filter_map(|r| r.cdf.get(99).map(|p| p.0))
            .fold(0.0, f64::max)
            * 1.1,
    );
    let pw = W - L - R;
    let ph = H - T - B;
    axes(&mut s, "delivery latency (ms)", "share of segments");
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        let x = L + pw * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{T}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{v:.0}</text>"##,
            H - B,
            H - B + 16.0
        );
        let q = i as f64 / 5.0;
        let y = H - B - ph * q;
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{q:.1}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let label = &r.label;
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = r
            .cdf
            .iter()
            .map(|(ms, q)| format!("{:.1},{:.1}", L + pw * (ms / xmax).min(1.0), H - B - ph * q))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = H - B - 30.0 - 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{ly}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            W - R - 190.0,
            W - R - 170.0,
            ly + 5.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Source share of delivered bytes (%) and p95 delivery latency (ms) against audience size
/// (log scale), one point per run.
pub fn versus_audience(runs: &[PlotRun]) -> String {
    let mut s = header("Source share and p95 latency vs audience size");
    let mut pts: Vec<(f64, f64, f64)> = runs
        .iter()
        .map(|r| (r.peers.max(1) as f64, r.source_share * 100.0, r.p95_ms))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pw = W - L - R;
    let ph = H - T - B;
    let xmin = pts.first().map(|p| p.0).unwrap_or(1.0).log10().floor();
    let xmax = pts
        .last()
        .map(|p| p.0)
        .unwrap_or(10.0)
        .log10()
        .ceil()
        .max(xmin + 1.0);
    let share_max = nice_max(pts.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1);
    let lat_max = nice_max(pts.iter().map(|p| p.2).fold(0.0, f64::max) * 1.1);
    axes(
        &mut s,
        "viewers (log scale)",
        "source share of delivered bytes (%)",
    );
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{T}" x2="{}" y2="{}" stroke="#d62728"/><text x="{}" y="{}" text-anchor="middle" fill="#d62728" transform="rotate(90 {} {})">p95 delivery latency (ms)</text>"##,
        W - R,
        W - R,
        H - B,
        W - 18.0,
        (T + H - B) / 2.0,
        W - 18.0,
        (T + H - B) / 2.0
    );
    let xpos = |n: f64| L + pw * (n.log10() - xmin) / (xmax - xmin);
    for e in (xmin as i32)..=(xmax as i32) {
        let x = xpos(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{T}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            10u64.pow(e.max(0) as u32)
        );
    }
    for i in 0..=5 {
        let y = H - B - ph * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#1f77b4">{:.1}</text><text x="{}" y="{}" fill="#d62728">{:.0}</text>"##,
            L - 6.0,
            y + 4.0,
            share_max * i as f64 / 5.0,
            W - R + 6.0,
            y + 4.0,
            lat_max * i as f64 / 5.0
        );
    }
    for (k, (c, max)) in [("#1f77b4", share_max), ("#d62728", lat_max)]
        .iter()
        .enumerate()
    {
        let coords: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| {
                if k == 0 {
                    p.1.is_finite()
                } else {
                    p.2.is_finite()
                }
            })
            .map(|p| {
                let v = if k == 0 { p.1 } else { p.2 };
                (xpos(p.0), H - B - ph * (v / max).min(1.0))
            })
            .collect();
        let line: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for (x, y) in coords {
            let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"/>"#);
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(1000.0), 1000.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b&c>"), "a&lt;b&amp;c&gt;");
    }
}
