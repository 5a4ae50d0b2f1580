//! The figures a peer reports about itself and its neighbours, and the stream bitrate
//! estimate they include.

use std::collections::VecDeque;
use std::time::Duration;

/// Per-neighbour figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NeighbourStats {
    /// Payload bytes sent to it.
    pub bytes_up: u64,
    /// Payload bytes received from it.
    pub bytes_down: u64,
    /// It is the source.
    pub is_source: bool,
    /// Round-trip estimate, if any.
    pub rtt: Option<Duration>,
    /// Bit `s`: it receives stripe `s` from us.
    pub child_stripes: u64,
    /// Bit `s`: we receive stripe `s` from it.
    pub parent_stripes: u64,
}

/// This peer's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Current neighbours (handshake done).
    pub neighbours: usize,
    /// Payload bytes received from the source directly.
    pub bytes_from_source: u64,
    /// Payload bytes received from other viewers.
    pub bytes_from_peers: u64,
    /// Payload bytes uploaded.
    pub bytes_up: u64,
    /// All bytes sent, including control messages.
    pub wire_bytes_up: u64,
    /// All bytes received, including control messages.
    pub wire_bytes_down: u64,
    /// Segments handed to the player.
    pub segments_played: u64,
    /// Segments skipped (missed deadline).
    pub segments_skipped: u64,
    /// Neighbours cut off for forged data.
    pub forgers_cut: u64,
    /// Newest segment seen (header verified).
    pub newest_seq: Option<u64>,
    /// Payload bytes received that were already held (push/pull overlap).
    pub duplicate_bytes: u64,
    /// Stream bitrate estimated from signed headers (segment bytes / duration), kbit/s.
    pub bitrate_kbps: u32,
    /// Depth in each stripe tree (0 = source, 255 = not receiving).
    pub stripe_depths: Vec<u8>,
    /// `now - published_us` of the last played segment: the live latency from publication to
    /// playback when the caller's clock and the source's share an origin (simulator, tests).
    pub play_lag: Option<Duration>,
    /// Pieces pulled by request (repairs) rather than pushed.
    pub pieces_pulled: u64,
    /// Stripe parents abandoned because they stalled.
    pub stalls: u64,
    /// **Insufficient swarm capacity**: this viewer has gone without a parent on some stripe
    /// for 2 s or more because no neighbour has upload to spare for it. The player should say
    /// so ("not enough upload in this swarm"), not just buffer. Cleared once every stripe has a
    /// parent again.
    pub capacity_short: bool,
}

/// Segments kept for the bitrate estimate (a few GOPs at usual segment lengths).
const RATE_WINDOW: usize = 24;

/// The stream's bitrate as the signed headers tell it: the sizes of the last [`RATE_WINDOW`]
/// segments.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitrateEstimate {
    /// Recent `(len, duration µs, keyframe)` of segments, oldest first.
    recent: VecDeque<(u64, u64, bool)>,
    /// The last estimate, kbit/s; 0 before the first.
    kbps: u32,
}

impl BitrateEstimate {
    /// Adds one segment's size and returns the estimate, kbit/s, if there is one.
    pub(crate) fn add(&mut self, len: u64, duration_us: u64, keyframe: bool) -> Option<u32> {
        self.recent.push_back((len, duration_us, keyframe));
        while self.recent.len() > RATE_WINDOW {
            self.recent.pop_front();
        }
        let kbps = bitrate_kbps(&self.recent).map(|kbps| kbps.min(u32::MAX as u64) as u32);
        if let Some(k) = kbps {
            self.kbps = k;
        }
        kbps
    }

    /// The last estimate, kbit/s; 0 before any segment size is known.
    pub(crate) fn kbps(&self) -> u32 {
        self.kbps
    }
}

/// The stream's bitrate from recent segment sizes, kbit/s, over whole GOPs: from the oldest
/// keyframe segment in the window to just before the newest one. A window cut anywhere else
/// counts keyframe segments (several times the size of the others) unevenly: with 200 ms
/// segments and a keyframe a second, 16 segments held 4 keyframes half of the time, an
/// estimate 4 % high, and the source's cap of 3x that let its busiest second reach 3.13x the
/// stream's bitrate (simulator, 100 viewers). Without two keyframes in the window, all of it.
fn bitrate_kbps(recent: &VecDeque<(u64, u64, bool)>) -> Option<u64> {
    let first = recent.iter().position(|s| s.2);
    let last = recent.iter().rposition(|s| s.2);
    let span = match (first, last) {
        (Some(a), Some(b)) if a < b => a..b,
        _ => 0..recent.len(),
    };
    let (bytes, dur) = recent
        .range(span)
        .fold((0u64, 0u64), |(b, d), (l, u, _)| (b + l, d + u));
    (bytes * 8 * 1000).checked_div(dur)
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    /// A keyframe segment every 5, twice the size: the estimate is the true average whatever
    /// the window's phase (a 16-segment window was 4 % high in one phase of 5).
    #[test]
    fn bitrate_over_whole_gops_is_phase_free() {
        let seg = |i: usize| {
            let k = i % 5 == 0;
            (if k { 20_000u64 } else { 10_000 }, 200_000u64, k)
        };
        // 6 units per 5 segments of 200 ms: 60,000 B/s = 480 kbit/s.
        for start in 0..10 {
            let w: VecDeque<_> = (start..start + RATE_WINDOW).map(seg).collect();
            assert_eq!(bitrate_kbps(&w), Some(480), "phase {start}");
        }
        // Too short for two keyframes: everything counts.
        let w: VecDeque<_> = (1..4).map(seg).collect();
        assert_eq!(bitrate_kbps(&w), Some(400));
        assert_eq!(bitrate_kbps(&VecDeque::new()), None);
    }
}
