//! The swarm simulator (native only): a deterministic discrete-event simulation that runs the
//! real peer ([`crate::client::node::Node`] and its [`crate::core::Swarm`], the code the browser
//! runs) for every peer, with a modelled network (heterogeneous capacities, a synthetic
//! geography, serialisation at the sender's upload rate, data channel send buffers), a modelled
//! tracker, churn, free-riders and malicious peers, and measures what issue 4 asks: delivery
//! latency, startup, continuity, source load, control overhead, fairness and integrity.
//!
//! ```no_run
//! use swarmcast::sim::{run, SimConfig};
//! let report = run(&SimConfig { peers: 200, ..SimConfig::default() }, |_| {}).unwrap();
//! assert_eq!(report.security.forged_played, 0);
//! ```

mod config;
mod engine;
mod metrics;
mod population;
mod rng;
pub mod svg;

pub use config::{
    parse_bitrate, parse_churn, parse_duration, parse_mass_departure, parse_mix, parse_share,
    CapacityClass, ConfigError, MaliciousMode, MassDeparture, SimConfig,
};
pub use metrics::{
    ClassReport, Continuity, Cuts, Goal, Percentiles, Report, Security, SourceReport,
};
pub use population::Behaviour;
pub use rng::Rng;

/// Where a run is, for progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Simulated time reached, µs.
    pub now_us: u64,
    /// Simulated time of the whole run, µs.
    pub end_us: u64,
    /// Peers online (including the source).
    pub online: usize,
    /// Events processed so far.
    pub events: u64,
    /// Wall time so far, s.
    pub wall_s: f64,
    /// CPU time of the run so far (all threads), s.
    pub cpu_s: f64,
    /// Resident memory of the process now (VmRSS), MiB.
    pub rss_mib: f64,
}

/// Runs one scenario to the end; `progress` is called about once per simulated second.
pub fn run(cfg: &SimConfig, mut progress: impl FnMut(&Progress)) -> Result<Report, ConfigError> {
    cfg.validate()?;
    let started = std::time::Instant::now();
    let cpu0 = metrics::cpu_seconds();
    let specs = population::generate(cfg);
    let truth = engine::Truth::generate(cfg);
    let mut eng = engine::Engine::new(cfg, &specs, &truth);
    let mut t = 0;
    while t < cfg.duration_us {
        t = (t + 1_000_000).min(cfg.duration_us);
        eng.run_until(t);
        progress(&Progress {
            now_us: eng.now(),
            end_us: cfg.duration_us,
            online: eng.online(),
            events: eng.stats.events,
            wall_s: started.elapsed().as_secs_f64(),
            cpu_s: metrics::cpu_seconds() - cpu0,
            rss_mib: metrics::rss_mib(),
        });
    }
    eng.finish();
    let stats = eng.stats;
    let mut metrics: Vec<metrics::PeerMetrics> = eng.peers.into_iter().map(|p| p.metrics).collect();
    Ok(Report::build(
        cfg,
        &specs,
        &mut metrics,
        stats.events,
        stats.inputs,
        started.elapsed().as_secs_f64(),
        metrics::cpu_seconds() - cpu0,
    ))
}
