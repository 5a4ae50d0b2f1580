//! Who takes part and when: the source, the viewers' sessions (join, leave, how), their
//! capacities, their place in the synthetic geography and their behaviour. All drawn up front
//! from the seed, so the schedule does not depend on how the run unfolds.

use super::config::{MaliciousMode, SimConfig};
use super::rng::Rng;
use crate::core::PeerId;
use serde::Serialize;

/// What a peer does with the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// The broadcaster.
    Source,
    /// Runs the core and forwards what it is asked for.
    Honest,
    /// Advertises zero upload; its uplink carries control messages only.
    FreeRider,
    /// Corrupts the pieces it forwards and tampers with headers.
    Forger,
    /// Announces what it has, never sends piece data.
    Withholder,
}

impl Behaviour {
    /// Malicious (forger or withholder).
    pub fn malicious(self) -> bool {
        matches!(self, Behaviour::Forger | Behaviour::Withholder)
    }
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Closes its connections; neighbours learn it after one-way latency.
    Graceful,
    /// Vanishes; neighbours notice after the detection timeout.
    Abrupt,
}

/// One peer session (a rejoining viewer is a new session with a new id).
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// The id the core and the tracker know it by. Bytes 16..20 hold the index.
    pub id: PeerId,
    /// Upload capacity, bit/s.
    pub up_bps: u64,
    /// Download capacity, bit/s.
    pub down_bps: u64,
    /// Index into the capacity mix (`u8::MAX` for the source).
    pub class: u8,
    /// Position on the unit square of the synthetic geography.
    pub pos: (f32, f32),
    /// Joins at, µs.
    pub join_us: u64,
    /// Leaves at, µs, and how; `None` stays to the end.
    pub leave: Option<(u64, Departure)>,
    /// What it does.
    pub behaviour: Behaviour,
}

/// Region centres of the synthetic geography: a few dense clusters (continents, big ISPs), so
/// that most pairs are either close or far, as on the real Internet.
const REGIONS: [(f32, f32, f64); 5] = [
    (0.15, 0.30, 0.30),
    (0.45, 0.25, 0.25),
    (0.80, 0.35, 0.25),
    (0.30, 0.80, 0.10),
    (0.75, 0.80, 0.10),
];

/// Where the tracker sits (near the biggest cluster, as a hosted service would).
pub const TRACKER_POS: (f32, f32) = (0.2, 0.3);

/// One-way latency between two positions: the configured minimum plus a share of the range
/// proportional to distance (the unit square's diagonal maps to the maximum).
pub fn latency_us(cfg: &SimConfig, a: (f32, f32), b: (f32, f32)) -> u64 {
    let dx = (a.0 - b.0) as f64;
    let dy = (a.1 - b.1) as f64;
    let d = (dx * dx + dy * dy).sqrt() / std::f64::consts::SQRT_2;
    cfg.latency_min_us + ((cfg.latency_max_us - cfg.latency_min_us) as f64 * d.min(1.0)) as u64
}

/// The peer id of session `idx`: random bytes plus the index (so the simulator maps an id back to
/// its session without a hash map; ids are still unique and look random to the core).
pub fn peer_id(seed: u64, idx: u32) -> PeerId {
    let mut b = [0u8; 20];
    Rng::derive(seed ^ 0x1D, idx as u64).fill(&mut b[..16]);
    b[16..].copy_from_slice(&idx.to_le_bytes());
    PeerId(b)
}

/// Draws every session of the run. Index 0 is the source.
pub fn generate(cfg: &SimConfig) -> Vec<PeerSpec> {
    let mut rng = Rng::derive(cfg.seed, 0xB0B);
    let bitrate = cfg.bitrate_bps as f64;
    let total_share: f64 = cfg.mix.iter().map(|c| c.share).sum();
    let mut specs = vec![PeerSpec {
        id: peer_id(cfg.seed, 0),
        up_bps: (bitrate * cfg.source_upload) as u64,
        down_bps: (bitrate * 20.0) as u64,
        class: u8::MAX,
        pos: (0.45, 0.3),
        join_us: 0,
        leave: None,
        behaviour: Behaviour::Source,
    }];
    let end = cfg.duration_us;
    let churn_mean_us = if cfg.churn_per_min > 0.0 {
        Some(60e6 / cfg.churn_per_min)
    } else {
        None
    };
    // Sessions to create: (join time). Leavers are replaced by a newcomer shortly after, which
    // keeps the audience near `peers` while the population turns over.
    let mut pending: Vec<u64> = (0..cfg.peers)
        .map(|_| (rng.f64() * cfg.join_spread_us as f64) as u64)
        .collect();
    pending.sort_unstable();
    let mut next = 0;
    while next < pending.len() {
        let join_us = pending[next];
        next += 1;
        let idx = specs.len() as u32;
        let leave = churn_mean_us.and_then(|mean| {
            // Sessions of viewers already watching when the run starts are in progress, so their
            // remaining time is drawn from the same (memoryless) distribution.
            let t = join_us + rng.exp(mean) as u64;
            (t < end).then(|| {
                let how = if rng.f64() < cfg.graceful_share {
                    Departure::Graceful
                } else {
                    Departure::Abrupt
                };
                (t, how)
            })
        });
        if let Some((t, _)) = leave {
            let rejoin = t + rng.exp(1e6) as u64;
            if rejoin < end {
                // Keep the list sorted: insert the replacement in order.
                let pos = pending[next..].partition_point(|&j| j <= rejoin) + next;
                pending.insert(pos, rejoin);
            }
        }
        let mut pick = rng.f64() * total_share;
        let mut class = cfg.mix.len() - 1;
        for (i, c) in cfg.mix.iter().enumerate() {
            if pick < c.share {
                class = i;
                break;
            }
            pick -= c.share;
        }
        let c = cfg.mix[class];
        let r = rng.f64();
        let behaviour = if r < cfg.malicious {
            match cfg.malicious_mode {
                MaliciousMode::Forge => Behaviour::Forger,
                MaliciousMode::Withhold => Behaviour::Withholder,
                MaliciousMode::Mixed if rng.f64() < 0.5 => Behaviour::Forger,
                MaliciousMode::Mixed => Behaviour::Withholder,
            }
        } else if r < cfg.malicious + cfg.free_riders {
            Behaviour::FreeRider
        } else {
            Behaviour::Honest
        };
        let up_bps = if behaviour == Behaviour::FreeRider {
            // Control traffic only (requests, haves): a receive-only peer still talks.
            64_000
        } else {
            (bitrate * c.up * cfg.capacity_scale).max(16_000.0) as u64
        };
        let region = {
            let mut p = rng.f64();
            let mut r = REGIONS.len() - 1;
            for (i, reg) in REGIONS.iter().enumerate() {
                if p < reg.2 {
                    r = i;
                    break;
                }
                p -= reg.2;
            }
            REGIONS[r]
        };
        let pos = (
            (region.0 as f64 + rng.normal() * 0.06).clamp(0.0, 1.0) as f32,
            (region.1 as f64 + rng.normal() * 0.06).clamp(0.0, 1.0) as f32,
        );
        specs.push(PeerSpec {
            id: peer_id(cfg.seed, idx),
            up_bps,
            down_bps: (bitrate * c.down).max(bitrate * 1.2) as u64,
            class: class as u8,
            pos,
            join_us,
            leave,
            behaviour,
        });
    }
    // Mass departures: a share of those online at that moment vanish together (no replacement).
    for md in &cfg.mass_departures {
        let mut mrng = Rng::derive(cfg.seed, 0xDEAD ^ md.at_us);
        for s in specs.iter_mut().skip(1) {
            let online = s.join_us <= md.at_us && s.leave.is_none_or(|(t, _)| t > md.at_us);
            if online && mrng.f64() < md.fraction {
                s.leave = Some((md.at_us, Departure::Abrupt));
            }
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_follows_the_mix_and_is_deterministic() {
        let cfg = SimConfig {
            peers: 2000,
            malicious: 0.1,
            free_riders: 0.1,
            ..SimConfig::default()
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.len(), 2001);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.id == y.id && x.up_bps == y.up_bps));
        let slow = a.iter().filter(|s| s.class == 0).count() as f64 / 2000.0;
        assert!((0.17..0.23).contains(&slow), "slow share {slow}");
        let bad = a.iter().filter(|s| s.behaviour.malicious()).count();
        assert!((150..250).contains(&bad), "{bad} malicious");
        // The tracker tells sessions apart by id.
        let ids: std::collections::BTreeSet<_> = a.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), a.len());
    }

    #[test]
    fn churn_replaces_leavers_and_mass_departures_cut() {
        let cfg = SimConfig {
            peers: 1000,
            churn_per_min: 0.2,
            duration_us: 60_000_000,
            mass_departures: vec![super::super::config::MassDeparture {
                at_us: 30_000_000,
                fraction: 0.5,
            }],
            ..SimConfig::default()
        };
        let s = generate(&cfg);
        let leavers = s.iter().filter(|p| p.leave.is_some()).count();
        assert!(s.len() > 1100, "replacements joined: {}", s.len());
        assert!(leavers > 400, "{leavers} leavers");
        let online_after = s
            .iter()
            .skip(1)
            .filter(|p| p.join_us <= 30_000_000 && p.leave.is_none_or(|(t, _)| t > 30_000_000))
            .count();
        assert!((350..650).contains(&online_after), "{online_after}");
    }

    #[test]
    fn latency_stays_in_range() {
        let cfg = SimConfig::default();
        assert_eq!(latency_us(&cfg, (0.0, 0.0), (0.0, 0.0)), 5_000);
        assert_eq!(latency_us(&cfg, (0.0, 0.0), (1.0, 1.0)), 150_000);
    }
}
