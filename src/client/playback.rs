//! The live player's rules, as pure functions of what MSE reports (buffered ranges, the playhead):
//! how fast to play to hold the target latency, when to jump a gap or back to the live edge, what
//! to evict, and how long playback stalled. The wasm player applies the decisions.

/// One buffered time range, seconds on the media timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Start.
    pub start: f64,
    /// End.
    pub end: f64,
}

/// Tunables of the latency controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyConfig {
    /// Buffer ahead of the playhead to hold, seconds: the live latency the player adds.
    pub target: f64,
    /// Within `target ± deadband` the rate stays exactly 1 (no audible pitch wobble).
    pub deadband: f64,
    /// Playback rate change per second of error, before clamping.
    pub gain: f64,
    /// Slowest rate used to rebuild the buffer.
    pub min_rate: f64,
    /// Fastest rate used to catch up.
    pub max_rate: f64,
    /// More than `target + max_excess` ahead (tab was hidden, a long stall): seek to the edge
    /// instead of catching up at `max_rate` for ages.
    pub max_excess: f64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            target: 1.0,
            deadband: 0.15,
            gain: 0.15,
            min_rate: 0.95,
            max_rate: 1.1,
            max_excess: 1.5,
        }
    }
}

/// What the player should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep playing at this rate.
    Play {
        /// `playbackRate`.
        rate: f64,
    },
    /// Move the playhead (gap jump or back to the live edge), then play at rate 1.
    Seek {
        /// New `currentTime`.
        to: f64,
    },
    /// Nothing buffered at or after the playhead: wait for data.
    Wait,
}

/// Slack when deciding whether the playhead is inside a range: decoders report a `currentTime`
/// a few ms before a range's first frame.
const EDGE: f64 = 0.05;

/// Index of the range holding playhead `current`, if any.
fn at_playhead(ranges: &[Range], current: f64) -> Option<usize> {
    ranges
        .iter()
        .position(|r| current >= r.start - EDGE && current < r.end)
}

/// Decides rate or seek for playhead `current` over `ranges` (sorted, as `TimeRanges` are);
/// `stalled`: the playhead stopped although playback should advance (see [`StallMeter`]).
pub fn decide(ranges: &[Range], current: f64, stalled: bool, cfg: &LatencyConfig) -> Decision {
    let Some(i) = at_playhead(ranges, current) else {
        // Not inside buffered data: jump to the next range if there is one (a gap the core
        // skipped or a segment that never came), else wait.
        return match ranges.iter().find(|r| r.start > current) {
            Some(next) => Decision::Seek {
                to: seek_target(next, cfg),
            },
            None => Decision::Wait,
        };
    };
    let here = ranges[i];
    let last = ranges[ranges.len() - 1];
    let ahead = here.end - current;
    // A hole ahead that playback is about to hit, or has stopped short of: the video element
    // would wait there forever. Chromium was seen stopping half a second short of a hole
    // (a CI run's log, BENCHMARKS.md; likely frames its decoder holds until more input
    // follows), so a stall with data after the hole jumps too, however much is left before it.
    if (ahead < 0.1 || stalled) && i + 1 < ranges.len() {
        return Decision::Seek {
            to: seek_target(&ranges[i + 1], cfg),
        };
    }
    // Far behind the newest data: jump close to the edge.
    if last.end - current > cfg.target + cfg.max_excess {
        return Decision::Seek {
            to: seek_target(&last, cfg),
        };
    }
    let err = ahead - cfg.target;
    let rate = if err.abs() <= cfg.deadband {
        1.0
    } else {
        (1.0 + cfg.gain * err).clamp(cfg.min_rate, cfg.max_rate)
    };
    Decision::Play { rate }
}

/// Whether enough is buffered at the playhead to start playback: half the target, at most
/// 0.5 s. Starting on a single short segment stalls at once when the next one is a little late;
/// waiting for the whole target would add its length to the start-up time.
pub fn ready_to_start(ranges: &[Range], current: f64, cfg: &LatencyConfig) -> bool {
    let need = (cfg.target * 0.5).min(0.5);
    at_playhead(ranges, current).is_some_and(|i| ranges[i].end - current >= need)
}

/// Where to move the playhead before the first `play()`, if anywhere: segments that queued up
/// while the MediaSource opened (a second on a busy machine) can leave far more than the
/// target buffered, and starting there would play the whole session that much behind live
/// (catching up at `max_rate` takes ten times the excess).
pub fn start_seek(ranges: &[Range], current: f64, cfg: &LatencyConfig) -> Option<f64> {
    let r = &ranges[at_playhead(ranges, current)?];
    (r.end - current > cfg.target + cfg.deadband).then(|| seek_target(r, cfg))
}

/// Where to land in range `r`: `target` before its end, but not before its start.
fn seek_target(r: &Range, cfg: &LatencyConfig) -> f64 {
    (r.end - cfg.target).max(r.start + 0.001)
}

/// The range to evict so that at most `keep_behind` seconds stay behind the playhead; `None`
/// when less than `min_chunk` seconds would go (evicting is an async SourceBuffer operation that
/// blocks appends, so it is batched).
pub fn trim(ranges: &[Range], current: f64, keep_behind: f64, min_chunk: f64) -> Option<Range> {
    let first = ranges.first()?;
    let end = current - keep_behind;
    (end - first.start >= min_chunk).then_some(Range {
        start: first.start.min(0.0),
        end,
    })
}

/// Wall-clock jump between consecutive segments (no segment skipped in between) beyond which
/// the broadcast restarted or paused, µs.
pub const DISCONTINUITY_US: u64 = 1_000_000;

/// Whether segment `seq` starting at `pts_us` breaks the timeline of the previous one, which
/// ended (pts + duration) at `prev_end_us`: consecutive sequence numbers but a wall-clock jump
/// either way. The container's own timestamps may then restart too (a new muxer origin), so
/// the player starts a fresh MediaSource there instead of appending over old media times.
pub fn is_discontinuity(prev: Option<(u64, u64)>, seq: u64, pts_us: u64) -> bool {
    match prev {
        Some((prev_seq, prev_end_us)) if seq == prev_seq.wrapping_add(1) => {
            pts_us.abs_diff(prev_end_us) > DISCONTINUITY_US
        }
        _ => false,
    }
}

/// Where each appended segment landed on the media timeline, so the playhead maps to the
/// wall-clock capture time of the frame it shows. Per segment, not one global offset: the
/// container's timeline and the broadcaster's wall-clock stamps drift apart when its encoder
/// stalls (the muxer keeps decode times continuous), and a single offset then misreports
/// latency by the length of the stall.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WallMap {
    /// (media start, media end, wall start), seconds, in append order.
    entries: std::collections::VecDeque<(f64, f64, f64)>,
}

/// Segments remembered by [`WallMap`] (far more than the buffer holds).
const WALL_MAP_LEN: usize = 256;

impl WallMap {
    /// A segment of `duration` s whose first frame was captured at `wall_start` (s since the
    /// epoch) now ends the buffered media at `media_end`.
    pub fn record(&mut self, media_end: f64, duration: f64, wall_start: f64) {
        if self.entries.len() == WALL_MAP_LEN {
            self.entries.pop_front();
        }
        self.entries
            .push_back((media_end - duration, media_end, wall_start));
    }

    /// Capture time (s since the epoch) of the frame at media time `t`.
    pub fn wall_at(&self, t: f64) -> Option<f64> {
        // The newest segment starting at or before `t` (a later append overrides older media).
        let (start, _, wall) = self
            .entries
            .iter()
            .rev()
            .find(|(start, _, _)| *start <= t + EDGE)
            .or_else(|| self.entries.front())?;
        Some(wall + (t - start))
    }

    /// Forgets everything (new MediaSource).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Counts stalls: playback expected (started, not paused) but the playhead not advancing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StallMeter {
    last: Option<(f64, f64)>,
    stalled: bool,
    /// Number of distinct stalls.
    pub stalls: u32,
    /// Total stalled time, ms.
    pub stall_ms: f64,
}

impl StallMeter {
    /// Samples the playhead `current` (s) at `now_ms`; `expected` when it should be advancing.
    pub fn sample(&mut self, now_ms: f64, current: f64, expected: bool) {
        if let (Some((t, c)), true) = (self.last, expected) {
            let dt = (now_ms - t).max(0.0);
            if (current - c).abs() < 1e-3 {
                if !self.stalled {
                    self.stalled = true;
                    self.stalls += 1;
                }
                self.stall_ms += dt;
            } else {
                self.stalled = false;
            }
        } else {
            self.stalled = false;
        }
        self.last = Some((now_ms, current));
    }

    /// Whether the last sample found playback stuck.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: f64, end: f64) -> Range {
        Range { start, end }
    }

    #[test]
    fn holds_rate_one_near_the_target_and_corrects_gently() {
        let cfg = LatencyConfig::default();
        assert_eq!(
            decide(&[r(0.0, 11.0)], 10.0, false, &cfg),
            Decision::Play { rate: 1.0 }
        );
        // 1.5 s ahead: a bit fast; 0.2 s ahead: a bit slow; both within the clamp.
        match decide(&[r(0.0, 11.5)], 10.0, false, &cfg) {
            Decision::Play { rate } => assert!(rate > 1.0 && rate <= 1.1, "{rate}"),
            d => panic!("{d:?}"),
        }
        match decide(&[r(0.0, 10.2)], 10.0, false, &cfg) {
            Decision::Play { rate } => assert!((0.95..1.0).contains(&rate), "{rate}"),
            d => panic!("{d:?}"),
        }
        // 2.4 s ahead: still catch-up, clamped at 1.1.
        assert_eq!(
            decide(&[r(0.0, 12.4)], 10.0, false, &cfg),
            Decision::Play { rate: 1.1 }
        );
    }

    #[test]
    fn far_behind_the_edge_seeks_to_target_latency() {
        let cfg = LatencyConfig::default();
        assert_eq!(
            decide(&[r(0.0, 30.0)], 10.0, false, &cfg),
            Decision::Seek { to: 29.0 }
        );
    }

    #[test]
    fn jumps_gaps_instead_of_waiting() {
        let cfg = LatencyConfig::default();
        // Playhead in a hole.
        assert_eq!(
            decide(&[r(0.0, 5.0), r(6.0, 9.0)], 5.5, false, &cfg),
            Decision::Seek { to: 8.0 }
        );
        // Playhead at the end of a range with a later range.
        assert_eq!(
            decide(&[r(0.0, 5.0), r(5.5, 7.0)], 4.95, false, &cfg),
            Decision::Seek { to: 6.0 }
        );
        // Before the first range (fresh start).
        assert_eq!(
            decide(&[r(3.0, 4.5)], 0.0, false, &cfg),
            Decision::Seek { to: 3.5 }
        );
        // Stopped short of a hole with half a second left (Chromium does): jump once stalled.
        let ranges = [r(1.0, 6.19), r(6.29, 7.5)];
        assert_eq!(
            decide(&ranges, 5.68, false, &cfg),
            Decision::Play { rate: 0.95 }
        );
        assert_eq!(
            decide(&ranges, 5.68, true, &cfg),
            Decision::Seek { to: 6.5 }
        );
        // Stalled with nothing after the range: only more data helps.
        assert_eq!(
            decide(&[r(1.0, 6.19)], 5.68, true, &cfg),
            Decision::Play { rate: 0.95 }
        );
        // Past everything buffered: wait.
        assert_eq!(decide(&[r(0.0, 5.0)], 5.0, false, &cfg), Decision::Wait);
        assert_eq!(decide(&[], 0.0, false, &cfg), Decision::Wait);
    }

    #[test]
    fn starts_with_half_the_target_buffered() {
        let cfg = LatencyConfig::default();
        assert!(!ready_to_start(&[r(3.0, 3.2)], 3.0, &cfg));
        assert!(ready_to_start(&[r(3.0, 3.6)], 3.0, &cfg));
        assert!(!ready_to_start(&[r(3.0, 3.6)], 4.0, &cfg));
        let short = LatencyConfig { target: 0.4, ..cfg };
        assert!(ready_to_start(&[r(3.0, 3.25)], 3.0, &short));
    }

    #[test]
    fn starts_at_the_target_latency_when_more_queued_up() {
        let cfg = LatencyConfig::default();
        // 1.77 s buffered at the first play (seen in the e2e swarm test): start 1 s from the end.
        assert_eq!(start_seek(&[r(2.0, 3.97)], 2.0, &cfg), Some(2.97));
        // Within the deadband, or nothing at the playhead: stay.
        assert_eq!(start_seek(&[r(2.0, 3.1)], 2.0, &cfg), None);
        assert_eq!(start_seek(&[r(2.0, 3.97)], 5.0, &cfg), None);
    }

    #[test]
    fn trims_only_whole_chunks_behind_the_playhead() {
        assert_eq!(trim(&[r(0.0, 40.0)], 35.0, 20.0, 5.0), Some(r(0.0, 15.0)));
        assert_eq!(trim(&[r(12.0, 40.0)], 35.0, 20.0, 5.0), None);
        assert_eq!(trim(&[], 35.0, 20.0, 5.0), None);
        // Bounded over hours: whatever the playhead, at most keep_behind + min_chunk stay.
        let mut start = 0.0;
        for minute in 1..600 {
            let now = minute as f64 * 60.0;
            if let Some(t) = trim(&[r(start, now + 1.0)], now, 20.0, 5.0) {
                start = t.end;
            }
            assert!(now - start <= 25.0);
        }
    }

    #[test]
    fn discontinuities_are_wall_clock_jumps_between_consecutive_segments() {
        let prev = Some((9, 10_000_000));
        assert!(!is_discontinuity(prev, 10, 10_000_000));
        assert!(!is_discontinuity(prev, 10, 10_900_000)); // jitter
        assert!(is_discontinuity(prev, 10, 25_000_000)); // paused 15 s
        assert!(is_discontinuity(prev, 10, 2_000_000)); // clock went back
                                                        // Segments skipped in between: the gap is explained, jump it instead.
        assert!(!is_discontinuity(prev, 14, 25_000_000));
        assert!(!is_discontinuity(None, 0, 25_000_000));
    }

    #[test]
    fn wall_map_follows_each_segment_even_when_stamps_drift() {
        let mut m = WallMap::default();
        assert_eq!(m.wall_at(1.0), None);
        m.record(2.2, 0.2, 1000.0);
        m.record(2.4, 0.2, 1000.2);
        // The encoder stalled 3 s: the next segment's stamp jumps, its media time does not.
        m.record(2.6, 0.2, 1003.4);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(m.wall_at(2.1), 1000.1));
        assert!(close(m.wall_at(2.3), 1000.3));
        assert!(close(m.wall_at(2.5), 1003.5));
        // Before the first recorded segment: extrapolated from it.
        assert!(close(m.wall_at(1.5), 999.5));
        m.clear();
        assert_eq!(m.wall_at(2.5), None);
        for i in 0..1000 {
            m.record(i as f64 * 0.2 + 0.2, 0.2, 5000.0 + i as f64 * 0.2);
        }
        assert_eq!(m.entries.len(), WALL_MAP_LEN);
    }

    #[test]
    fn stall_meter_counts_distinct_stalls() {
        let mut m = StallMeter::default();
        m.sample(0.0, 1.0, true);
        m.sample(250.0, 1.25, true);
        assert_eq!((m.stalls, m.stall_ms), (0, 0.0));
        m.sample(500.0, 1.25, true);
        m.sample(750.0, 1.25, true);
        assert!(m.is_stalled());
        m.sample(1000.0, 1.5, true);
        m.sample(1250.0, 1.5, true);
        assert_eq!((m.stalls, m.stall_ms), (2, 750.0));
        // Paused is not a stall.
        m.sample(1500.0, 1.5, false);
        m.sample(1750.0, 1.5, false);
        assert_eq!(m.stalls, 2);
    }
}
