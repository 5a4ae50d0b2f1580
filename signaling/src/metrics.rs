//! Prometheus counters, kept as plain atomics so that counting costs one relaxed add on the hot
//! path and `/metrics` needs no metrics framework. Names follow Prometheus conventions
//! (`_total` counters, base units in the name).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Kinds of messages counted in `messages_in_total` / `messages_out_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An announce (without answer).
    Announce,
    /// An offer (in: offers carried by announces; out: forwarded offers).
    Offer,
    /// An answer.
    Answer,
    /// A scrape request or reply.
    Scrape,
    /// A `failure reason` reply (out only).
    Failure,
}

const KINDS: [(Kind, &str); 5] = [
    (Kind::Announce, "announce"),
    (Kind::Offer, "offer"),
    (Kind::Answer, "answer"),
    (Kind::Scrape, "scrape"),
    (Kind::Failure, "failure"),
];

/// Why a message or connection was refused; the `reason` label of `rejected_total`.
pub const REASONS: &[&str] = &[
    "malformed_json",
    "bad_action",
    "bad_info_hash",
    "bad_peer_id",
    "bad_to_peer_id",
    "bad_offer_id",
    "bad_offer",
    "bad_answer",
    "bad_event",
    "too_many_offers",
    "rate_limited",
    "swarm_full",
    "too_many_swarms",
    "too_many_swarms_per_connection",
    "answer_unmatched",
    "frame_too_large",
    "slow_reader",
    "queue_full",
    "idle_timeout",
    "origin",
    "too_many_connections",
    "not_text",
    "bad_frame",
    "bad_handshake",
    "request_timeout",
    "evicted",
    "peer_id_in_use",
    "too_many_peers_from_address",
];

/// Upper bounds (µs) of the relay latency histogram buckets. Up to 10 s: under a flood the
/// messages that wait for a slow reader's socket take seconds, and a p99 past the last bucket
/// would be unknowable (`aquatic_ws_load_test` against the server put a quarter of all relays
/// above 250 ms, BENCHMARKS.md).
const LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// All counters of one server.
#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Failed `accept` calls (out of descriptors, mostly).
    pub accept_errors: AtomicU64,
    msg_in: [AtomicU64; 5],
    msg_out: [AtomicU64; 5],
    rejected: [AtomicU64; REASONS.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn kind_index(k: Kind) -> usize {
    KINDS.iter().position(|(x, _)| *x == k).unwrap_or(0)
}

impl Metrics {
    /// Counts `n` incoming messages of kind `k`.
    pub fn incoming(&self, k: Kind, n: u64) {
        self.msg_in[kind_index(k)].fetch_add(n, Relaxed);
    }

    /// Counts `n` outgoing messages of kind `k`.
    pub fn outgoing(&self, k: Kind, n: u64) {
        self.msg_out[kind_index(k)].fetch_add(n, Relaxed);
    }

    /// Counts a rejection; `reason` should be one of [`REASONS`] (others are ignored).
    pub fn reject(&self, reason: &str) {
        self.reject_n(reason, 1);
    }

    /// Counts `n` rejections at once (the offers of one announce dropped at full queues).
    pub fn reject_n(&self, reason: &str, n: u64) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(n, Relaxed);
        }
    }

    /// How many rejections with `reason` so far (tests read this).
    pub fn rejected(&self, reason: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].load(Relaxed))
    }

    /// Records one relay: from reading the offer/answer to handing it to the receiver's socket.
    pub fn relay_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Renders the Prometheus text exposition format; `swarms` and `peers` are sampled by the
    /// caller from the tracker.
    pub fn render(&self, swarms: usize, peers: usize) -> String {
        let mut o = String::with_capacity(4096);
        let p = "swarmcast_signaling";
        let _ = writeln!(
            o,
            "# HELP {p}_accept_errors_total Failed accepts (mostly: out of file descriptors)."
        );
        let _ = writeln!(o, "# TYPE {p}_accept_errors_total counter");
        let _ = writeln!(
            o,
            "{p}_accept_errors_total {}",
            self.accept_errors.load(Relaxed)
        );
        let _ = writeln!(o, "# HELP {p}_connections Open WebSocket connections.");
        let _ = writeln!(o, "# TYPE {p}_connections gauge");
        let _ = writeln!(o, "{p}_connections {}", self.connections.load(Relaxed));
        let _ = writeln!(
            o,
            "# HELP {p}_connections_total WebSocket connections accepted."
        );
        let _ = writeln!(o, "# TYPE {p}_connections_total counter");
        let _ = writeln!(
            o,
            "{p}_connections_total {}",
            self.connections_total.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP {p}_swarms Swarms (info_hashes with at least one peer)."
        );
        let _ = writeln!(o, "# TYPE {p}_swarms gauge");
        let _ = writeln!(o, "{p}_swarms {swarms}");
        let _ = writeln!(o, "# HELP {p}_peers Peers over all swarms.");
        let _ = writeln!(o, "# TYPE {p}_peers gauge");
        let _ = writeln!(o, "{p}_peers {peers}");
        for (dir, arr) in [("in", &self.msg_in), ("out", &self.msg_out)] {
            let _ = writeln!(o, "# HELP {p}_messages_{dir}_total Messages {dir} by type.");
            let _ = writeln!(o, "# TYPE {p}_messages_{dir}_total counter");
            for (i, (_, name)) in KINDS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{p}_messages_{dir}_total{{type=\"{name}\"}} {}",
                    arr[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP {p}_rejected_total Messages or connections refused, by reason."
        );
        let _ = writeln!(o, "# TYPE {p}_rejected_total counter");
        for (i, r) in REASONS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{p}_rejected_total{{reason=\"{r}\"}} {}",
                self.rejected[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP {p}_relay_latency_seconds Time from reading an offer or answer to writing it to the receiver's socket."
        );
        let _ = writeln!(o, "# TYPE {p}_relay_latency_seconds histogram");
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "{p}_relay_latency_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "{p}_relay_latency_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "{p}_relay_latency_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{p}_relay_latency_seconds_count {count}");
        o
    }
}

/// Appends one gauge (for figures sampled outside [`Metrics`]).
pub fn render_gauge(o: &mut String, name: &str, help: &str, value: usize) {
    let p = "swarmcast_signaling";
    let _ = writeln!(o, "# HELP {p}_{name} {help}");
    let _ = writeln!(o, "# TYPE {p}_{name} gauge");
    let _ = writeln!(o, "{p}_{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.relay_latency(Duration::from_micros(40));
        m.relay_latency(Duration::from_micros(700));
        m.relay_latency(Duration::from_secs(3));
        m.relay_latency(Duration::from_secs(11));
        let text = m.render(1, 2);
        assert!(text.contains("relay_latency_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("relay_latency_seconds_bucket{le=\"0.001\"} 2\n"));
        // Seconds-long waits (a flooded slow reader) still land in a bucket of their own.
        assert!(text.contains("relay_latency_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("relay_latency_seconds_bucket{le=\"5\"} 3\n"));
        assert!(text.contains("relay_latency_seconds_bucket{le=\"10\"} 3\n"));
        assert!(text.contains("relay_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("swarmcast_signaling_peers 2\n"));
    }
}
