//! `swarmcast-sim`: runs the swarm simulator from the command line (native only).
//!
//! ```text
//! cargo run --release --bin swarmcast-sim -- --peers 1000 --bitrate 2mbit --duration 60s --seed 1 \
//!     [--churn 20%/min] [--malicious 0.1] [--free-riders 0.1] [--capacity-scale 0.5] \
//!     [--json out.json] [--svg-dir out/]
//! ```
//! `--peers` takes a comma-separated list (`10,100,1000`) to sweep audience sizes; the SVG of
//! source share and p95 latency against audience size needs such a sweep.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = cli::main() {
        eprintln!("swarmcast-sim: {e}");
        std::process::exit(2);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use swarmcast::sim::{self, MaliciousMode, Report, SimConfig};

    const USAGE: &str = "usage: swarmcast-sim [options]
  --peers N[,N...]        viewers (a list sweeps audience sizes)        [100]
  --bitrate RATE          stream bitrate, e.g. 2mbit                    [2mbit]
  --duration T            simulated time, e.g. 60s                      [60s]
  --seed N                seed of everything random                     [1]
  --churn R               share of the audience replaced per minute, e.g. 20%/min
  --graceful SHARE        share of churn departures that close cleanly  [0.7]
  --mass-departure T:S    at time T a share S of viewers vanishes (repeatable)
  --malicious SHARE       malicious viewers                             [0]
  --malicious-mode M      forge | withhold | mixed                      [mixed]
  --free-riders SHARE     viewers with no upload                        [0]
  --capacity-scale X      multiplies every viewer's upload              [1]
  --mix S:U:D,...         capacity classes share:up:down (x bitrate)    [0.2:0.5:8,0.5:2:20,0.3:5:50]
  --source-upload X       broadcaster uplink, x bitrate                 [10]
  --source-cap X          core's source upload cap, x bitrate           [3]
  --segment T             segment duration                              [200ms]
  --keyframe T            keyframe interval                             [1s]
  --buffer T              player buffer (core playout_delay)            [1s]
  --window T              core data window                              [3s]
  --join-spread T         viewers join uniformly over this span         [10s]
  --latency MIN-MAX       one-way latency range, e.g. 5ms-150ms         [5ms-150ms]
  --target-degree N / --max-degree N   override the core's defaults
  --advertise KBPS        upload every viewer tells its core (default: its true capacity)
  --advertise-share X     viewers tell their core X times their true upload  [1]
  --threads N             worker threads (results do not depend on it)  [cores]
  --json FILE             write the report(s) as JSON
  --svg-dir DIR           write latency-cdf.svg (and versus-audience.svg for a sweep)
  --plot A.json,B.json    no simulation: draw the SVGs (into --svg-dir) from saved reports
  --quiet                 no progress lines";

    fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
        *i += 1;
        args.get(*i)
            .map(|s| s.as_str())
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
    }

    fn num<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("{flag}: not a number: {s:?}"))
    }

    fn e<T>(r: Result<T, sim::ConfigError>) -> Result<T, String> {
        r.map_err(|e| e.to_string())
    }

    pub fn main() -> Result<(), String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut cfg = SimConfig::default();
        let mut sizes = vec![cfg.peers];
        let mut json: Option<String> = None;
        let mut svg_dir: Option<String> = None;
        let mut quiet = false;
        let mut plot: Vec<String> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(());
                }
                "--peers" => {
                    sizes = value(&args, &mut i, flag)?
                        .split(',')
                        .map(|s| num::<usize>(s.trim().replace('_', "").as_str(), flag))
                        .collect::<Result<_, _>>()?;
                }
                "--bitrate" => {
                    cfg.bitrate_bps = e(sim::parse_bitrate(value(&args, &mut i, flag)?))?
                }
                "--duration" => {
                    cfg.duration_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?
                }
                "--seed" => cfg.seed = num(value(&args, &mut i, flag)?, flag)?,
                "--churn" => cfg.churn_per_min = e(sim::parse_churn(value(&args, &mut i, flag)?))?,
                "--graceful" => {
                    cfg.graceful_share = e(sim::parse_share(value(&args, &mut i, flag)?))?
                }
                "--mass-departure" => cfg
                    .mass_departures
                    .push(e(sim::parse_mass_departure(value(&args, &mut i, flag)?))?),
                "--malicious" => cfg.malicious = e(sim::parse_share(value(&args, &mut i, flag)?))?,
                "--malicious-mode" => {
                    cfg.malicious_mode = match value(&args, &mut i, flag)? {
                        "forge" => MaliciousMode::Forge,
                        "withhold" => MaliciousMode::Withhold,
                        "mixed" => MaliciousMode::Mixed,
                        m => return Err(format!("--malicious-mode: unknown mode {m:?}")),
                    }
                }
                "--free-riders" => {
                    cfg.free_riders = e(sim::parse_share(value(&args, &mut i, flag)?))?
                }
                "--capacity-scale" => cfg.capacity_scale = num(value(&args, &mut i, flag)?, flag)?,
                "--mix" => cfg.mix = e(sim::parse_mix(value(&args, &mut i, flag)?))?,
                "--source-upload" => cfg.source_upload = num(value(&args, &mut i, flag)?, flag)?,
                "--source-cap" => cfg.source_cap = num(value(&args, &mut i, flag)?, flag)?,
                "--segment" => {
                    cfg.segment_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?
                }
                "--keyframe" => {
                    cfg.keyframe_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?
                }
                "--buffer" => cfg.buffer_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?,
                "--window" => cfg.window_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?,
                "--join-spread" => {
                    cfg.join_spread_us = e(sim::parse_duration(value(&args, &mut i, flag)?))?
                }
                "--latency" => {
                    let v = value(&args, &mut i, flag)?;
                    let (a, b) = v
                        .split_once('-')
                        .ok_or_else(|| format!("--latency wants MIN-MAX, got {v:?}"))?;
                    cfg.latency_min_us = e(sim::parse_duration(a))?;
                    cfg.latency_max_us = e(sim::parse_duration(b))?;
                }
                "--target-degree" => {
                    cfg.target_degree = Some(num(value(&args, &mut i, flag)?, flag)?)
                }
                "--max-degree" => cfg.max_degree = Some(num(value(&args, &mut i, flag)?, flag)?),
                "--advertise" => cfg.advertise_kbps = Some(num(value(&args, &mut i, flag)?, flag)?),
                "--advertise-share" => {
                    cfg.advertise_share = num(value(&args, &mut i, flag)?, flag)?
                }
                "--threads" => cfg.threads = num(value(&args, &mut i, flag)?, flag)?,
                "--json" => json = Some(value(&args, &mut i, flag)?.to_string()),
                "--svg-dir" => svg_dir = Some(value(&args, &mut i, flag)?.to_string()),
                "--quiet" => quiet = true,
                "--plot" => {
                    plot = value(&args, &mut i, flag)?
                        .split(',')
                        .map(str::to_string)
                        .collect()
                }
                other => return Err(format!("unknown option {other:?}\n{USAGE}")),
            }
            i += 1;
        }
        if !plot.is_empty() {
            let mut runs = Vec::new();
            for path in &plot {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
                let items = match v {
                    serde_json::Value::Array(a) => a,
                    one => vec![one],
                };
                for item in &items {
                    runs.push(
                        sim::svg::PlotRun::from_json(item)
                            .ok_or_else(|| format!("{path}: not a swarmcast-sim report"))?,
                    );
                }
            }
            let dir = svg_dir.ok_or("--plot needs --svg-dir")?;
            return write_svgs(&dir, &runs);
        }
        let mut reports: Vec<Report> = Vec::new();
        for &n in &sizes {
            let run_cfg = SimConfig {
                peers: n,
                ..cfg.clone()
            };
            let mut last_print = 0.0;
            let report = sim::run(&run_cfg, |p| {
                if quiet {
                    return;
                }
                if p.wall_s - last_print >= 2.0 || p.now_us >= p.end_us {
                    last_print = p.wall_s;
                    eprintln!(
                        "  [{n} viewers] t = {:>5.1} s / {:.0} s   online {:>6}   events {:>11}   wall {:>6.1} s   cpu {:>7.1} s   rss {:>6.0} MiB",
                        p.now_us as f64 / 1e6,
                        p.end_us as f64 / 1e6,
                        p.online,
                        p.events,
                        p.wall_s,
                        p.cpu_s,
                        p.rss_mib
                    );
                }
            })
            .map_err(|e| e.to_string())?;
            print!("{}", report.table());
            let _ = std::io::stdout().flush();
            reports.push(report);
        }
        if let Some(path) = json {
            let text = if reports.len() == 1 {
                serde_json::to_string_pretty(&reports[0])
            } else {
                serde_json::to_string_pretty(&reports)
            }
            .map_err(|e| format!("json: {e}"))?;
            std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))?;
            eprintln!("wrote {path}");
        }
        if let Some(dir) = svg_dir {
            let runs: Vec<sim::svg::PlotRun> =
                reports.iter().map(sim::svg::PlotRun::from_report).collect();
            write_svgs(&dir, &runs)?;
        }
        Ok(())
    }

    fn write_svgs(dir: &str, runs: &[sim::svg::PlotRun]) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        let cdf = format!("{dir}/latency-cdf.svg");
        std::fs::write(&cdf, sim::svg::latency_cdf(runs)).map_err(|e| format!("{cdf}: {e}"))?;
        eprintln!("wrote {cdf}");
        if runs.len() > 1 {
            let vs = format!("{dir}/versus-audience.svg");
            std::fs::write(&vs, sim::svg::versus_audience(runs))
                .map_err(|e| format!("{vs}: {e}"))?;
            eprintln!("wrote {vs}");
        }
        Ok(())
    }
}
