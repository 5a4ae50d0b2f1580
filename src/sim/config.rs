//! What a simulation run models, and the parsers for the CLI's human-friendly values
//! (`2mbit`, `60s`, `20%/min`).

use serde::Serialize;

/// Why a configuration value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not a value of the expected kind.
    #[error("cannot parse {what} from {text:?}")]
    Parse {
        /// What was expected (e.g. "bitrate").
        what: &'static str,
        /// The text given.
        text: String,
    },
    /// A value is out of the range the model supports.
    #[error("{0}")]
    Invalid(String),
}

fn bad(what: &'static str, text: &str) -> ConfigError {
    ConfigError::Parse {
        what,
        text: text.to_string(),
    }
}

/// What a malicious peer does to the data it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaliciousMode {
    /// Corrupts piece bytes and tampers with headers (signature no longer verifies).
    Forge,
    /// Announces what it has but never sends piece data.
    Withhold,
    /// Half the malicious peers forge, half withhold.
    Mixed,
}

/// One class of peers in the capacity mix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CapacityClass {
    /// Share of peers in this class (the shares are normalised).
    pub share: f64,
    /// Upload capacity as a multiple of the stream bitrate.
    pub up: f64,
    /// Download capacity as a multiple of the stream bitrate.
    pub down: f64,
}

/// A mass-departure event: at `at_us`, `fraction` of the online viewers vanish at once without
/// saying goodbye (a regional outage, a popular page closing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MassDeparture {
    /// When, µs of simulated time.
    pub at_us: u64,
    /// Share of online viewers that leave.
    pub fraction: f64,
}

/// Everything one run models. [`SimConfig::default`] is issue 4's default scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    /// Viewers at the start (churn replaces leavers, so this is the audience size).
    pub peers: usize,
    /// Stream bitrate, bit/s.
    pub bitrate_bps: u64,
    /// Simulated time, µs.
    pub duration_us: u64,
    /// Seed of everything random: the same seed, the same run.
    pub seed: u64,
    /// Segment duration, µs.
    pub segment_us: u64,
    /// Keyframe interval, µs (a multiple of `segment_us`).
    pub keyframe_us: u64,
    /// Upload/download capacity mix.
    pub mix: Vec<CapacityClass>,
    /// Multiplies every viewer's upload (below ~0.4 total upload falls under demand).
    pub capacity_scale: f64,
    /// The broadcaster's uplink, as a multiple of the bitrate (the core caps what it uses).
    pub source_upload: f64,
    /// The core's cap on source upload, multiple of the bitrate.
    pub source_cap: f32,
    /// One-way latency range of the synthetic geography, µs.
    pub latency_min_us: u64,
    /// Upper end of the one-way latency range, µs.
    pub latency_max_us: u64,
    /// Viewers join uniformly over this span from the start, µs.
    pub join_spread_us: u64,
    /// Churn: share of the audience leaving (and replaced by newcomers) per minute.
    pub churn_per_min: f64,
    /// Share of churn departures that close cleanly (the other side learns within one-way
    /// latency); the rest vanish and are noticed after `detect_us`.
    pub graceful_share: f64,
    /// How long a vanished neighbour takes to be noticed (ICE consent failure), µs.
    pub detect_us: u64,
    /// Mass departures.
    pub mass_departures: Vec<MassDeparture>,
    /// Share of viewers that are malicious.
    pub malicious: f64,
    /// What they do.
    pub malicious_mode: MaliciousMode,
    /// Share of viewers that upload nothing (advertise 0; their uplink carries control only).
    pub free_riders: f64,
    /// Player buffer: the core's `playout_delay`, µs.
    pub buffer_us: u64,
    /// The core's data window, µs (memory per peer is about window x bitrate).
    pub window_us: u64,
    /// The core's target degree (`None`: the core's default).
    pub target_degree: Option<usize>,
    /// The core's max degree (`None`: the core's default).
    pub max_degree: Option<usize>,
    /// Connection set-up after the answer arrives, in round trips (ICE check, DTLS, SCTP).
    pub setup_rtts: f64,
    /// Fixed processing cost of a connection set-up (ICE gathering etc.), µs.
    pub setup_fixed_us: u64,
    /// Re-announce interval the modelled tracker tells peers, µs (whole seconds; the node
    /// re-announces sooner while it wants neighbours, see `client::node`).
    pub announce_interval_us: u64,
    /// Bytes of a modelled SDP offer/answer carried by the tracker or relayed by neighbours.
    pub sdp_bytes: usize,
    /// Worker threads (peers are partitioned; the result does not depend on this).
    pub threads: usize,
    /// Advertise this upload to the core instead of the true capacity (the browser can only
    /// guess its uplink); `None`: the true capacity.
    pub advertise_kbps: Option<u32>,
    /// Share of its true upload a viewer tells its core (when `advertise_kbps` is not set): a
    /// binding that knows its uplink but leaves headroom for transport framing and cross traffic.
    pub advertise_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            peers: 100,
            bitrate_bps: 2_000_000,
            duration_us: 60_000_000,
            seed: 1,
            segment_us: 200_000,
            keyframe_us: 1_000_000,
            mix: vec![
                CapacityClass {
                    share: 0.2,
                    up: 0.5,
                    down: 8.0,
                },
                CapacityClass {
                    share: 0.5,
                    up: 2.0,
                    down: 20.0,
                },
                CapacityClass {
                    share: 0.3,
                    up: 5.0,
                    down: 50.0,
                },
            ],
            capacity_scale: 1.0,
            source_upload: 10.0,
            source_cap: 3.0,
            latency_min_us: 5_000,
            latency_max_us: 150_000,
            join_spread_us: 10_000_000,
            churn_per_min: 0.0,
            graceful_share: 0.7,
            detect_us: 5_000_000,
            mass_departures: Vec::new(),
            malicious: 0.0,
            malicious_mode: MaliciousMode::Mixed,
            free_riders: 0.0,
            buffer_us: 1_000_000,
            window_us: 3_000_000,
            target_degree: None,
            max_degree: None,
            setup_rtts: 3.0,
            setup_fixed_us: 20_000,
            announce_interval_us: 120_000_000,
            sdp_bytes: 600,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            advertise_kbps: None,
            advertise_share: 1.0,
        }
    }
}

impl SimConfig {
    /// Checks the values the model cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.bitrate_bps < 8_000 {
            return inv("bitrate must be at least 8 kbit/s");
        }
        if self.segment_us < 10_000 || self.keyframe_us % self.segment_us != 0 {
            return inv("segment must be >= 10ms and divide the keyframe interval");
        }
        if self.latency_min_us < 1_000 || self.latency_max_us < self.latency_min_us {
            return inv("latency range must be >= 1ms and ordered");
        }
        if !(self.advertise_share > 0.0 && self.advertise_share <= 10.0) {
            return inv("advertise share must be in (0, 10]");
        }
        if self.mix.is_empty() || self.mix.iter().any(|c| c.share < 0.0 || c.up < 0.0) {
            return inv("capacity mix needs at least one class with non-negative values");
        }
        if self.mix.iter().map(|c| c.share).sum::<f64>() <= 0.0 {
            return inv("capacity mix shares sum to zero");
        }
        if !(0.0..=1.0).contains(&self.malicious)
            || !(0.0..=1.0).contains(&self.free_riders)
            || self.malicious + self.free_riders > 1.0
        {
            return inv("malicious + free-riders must be a share between 0 and 1");
        }
        let seg_bytes = self.bitrate_bps as f64 / 8.0 * self.segment_us as f64 / 1e6 * 2.0;
        let max = (crate::core::MAX_PIECES_PER_SEGMENT * crate::core::PIECE_SIZE) as f64;
        if seg_bytes > max {
            return inv("keyframe segments would exceed the protocol's segment size limit");
        }
        Ok(())
    }
}

/// `2mbit`, `2.5Mbit/s`, `800kbit`, `2000000` (bit/s) -> bit/s.
pub fn parse_bitrate(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("/s");
    let t = match t.strip_suffix("bps") {
        Some(prefix) => format!("{prefix}bit"),
        None => t.to_string(),
    };
    let t = t.as_str();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix("kbit") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("bit") {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad("bitrate", text))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad("bitrate", text));
    }
    Ok((v * mult).round() as u64)
}

/// `60s`, `200ms`, `2m`, `1.5s`, `500us` -> µs.
pub fn parse_duration(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("min") {
        (n, 60e6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e6)
    } else {
        (t.as_str(), 1e6)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad("duration", text))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("duration", text));
    }
    Ok((v * mult).round() as u64)
}

/// `20%/min`, `0.2/min`, `20%` (per minute) -> share per minute.
pub fn parse_churn(text: &str) -> Result<f64, ConfigError> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("/min");
    let v = parse_share(t).map_err(|_| bad("churn", text))?;
    Ok(v)
}

/// `10%` or `0.1` -> 0.1.
pub fn parse_share(text: &str) -> Result<f64, ConfigError> {
    let t = text.trim();
    let v = if let Some(p) = t.strip_suffix('%') {
        p.trim().parse::<f64>().map(|v| v / 100.0)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| bad("share", text))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("share", text));
    }
    Ok(v)
}

/// `30s:25%` -> a mass departure of 25% of the audience at 30 s.
pub fn parse_mass_departure(text: &str) -> Result<MassDeparture, ConfigError> {
    let (at, frac) = text
        .split_once(':')
        .ok_or_else(|| bad("mass departure (AT:SHARE)", text))?;
    let fraction = parse_share(frac)?;
    if fraction > 1.0 {
        return Err(bad("mass departure share", text));
    }
    Ok(MassDeparture {
        at_us: parse_duration(at)?,
        fraction,
    })
}

/// `0.2:0.5:8,0.5:2:20,0.3:5:50` (share:upload:download, multiples of the bitrate).
pub fn parse_mix(text: &str) -> Result<Vec<CapacityClass>, ConfigError> {
    text.split(',')
        .map(|c| {
            let f: Vec<&str> = c.split(':').collect();
            if f.len() != 3 {
                return Err(bad("capacity class (share:up:down)", c));
            }
            let n = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad("capacity class number", s))
            };
            Ok(CapacityClass {
                share: n(f[0])?,
                up: n(f[1])?,
                down: n(f[2])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse() {
        assert_eq!(parse_bitrate("2mbit"), Ok(2_000_000));
        assert_eq!(parse_bitrate("2.5Mbit/s"), Ok(2_500_000));
        assert_eq!(parse_bitrate("800kbps"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1mbit").is_err());
        assert_eq!(parse_duration("60s"), Ok(60_000_000));
        assert_eq!(parse_duration("200ms"), Ok(200_000));
        assert_eq!(parse_duration("2m"), Ok(120_000_000));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_churn("20%/min"), Ok(0.2));
        assert_eq!(parse_share("0.1"), Ok(0.1));
        let m = parse_mass_departure("30s:25%").unwrap();
        assert_eq!((m.at_us, m.fraction), (30_000_000, 0.25));
        assert_eq!(parse_mix("1:2:3").unwrap()[0].down, 3.0);
        assert!(parse_mix("1:2").is_err());
    }

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
        let c = SimConfig {
            malicious: 0.8,
            free_riders: 0.5,
            ..SimConfig::default()
        };
        assert!(c.validate().is_err());
        let c = SimConfig {
            keyframe_us: 300_000,
            ..SimConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
