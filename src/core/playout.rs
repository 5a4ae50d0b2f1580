//! Playback order: a start point (the newest keyframe segment available), then every segment
//! in sequence order, each either played (complete and verified) or skipped when it missed its
//! deadline while the stream moved on.

use super::swarm::{Output, PlayableSegment, Swarm};
use super::time::Instant;
use std::time::Duration;

/// How long a segment the player has reached may still arrive before it is given up: the player
/// stalls meanwhile, so this is short; a segment that is that late is usually not on its way.
const PLAYHEAD_GRACE: Duration = Duration::from_millis(300);
/// A playhead report older than this is ignored (a throttled tab reports rarely).
const PLAYHEAD_FRESH: Duration = Duration::from_millis(1_000);

impl Swarm {
    /// Chooses where playback starts: the newest verified keyframe segment among the last few
    /// a neighbour holds complete or newer (their headers are probed newest first).
    pub(crate) fn maybe_choose_start(&mut self, now: Instant) {
        if self.playout.start.is_some() {
            return;
        }
        let floor = self.max_advertised.map_or(0, |(m, _)| {
            m.saturating_sub(super::scheduler::PROBE_SPAN - 1)
        });
        let pick = self
            .segments
            .range(floor..)
            .rev()
            .find(|(_, s)| s.header.header.keyframe)
            .map(|(seq, _)| *seq);
        if let Some(seq) = pick {
            self.playout.start = Some(seq);
            self.playout.next = seq;
            self.playout.start_at = now;
        }
    }

    /// Local deadline of segment `seq`: first play time + pts offset + playout delay. The pts
    /// of a segment whose header is unknown is extrapolated from the nearest earlier header.
    pub(crate) fn deadline_of(&self, seq: u64) -> Option<Instant> {
        let (t0, pts0) = self.playout.t0?;
        let pts = match self.segments.get(&seq) {
            Some(s) => s.header.header.pts_us,
            None => {
                let (&s, seg) = self.segments.range(..seq).next_back()?;
                let h = &seg.header.header;
                h.pts_us
                    .saturating_add((seq - s).saturating_mul(h.duration_us as u64))
            }
        };
        let scheduled =
            t0 + Duration::from_micros(pts.saturating_sub(pts0)) + self.config.playout_delay;
        // The player's own position, when it reported one recently: it never makes a segment
        // wait longer than the schedule does, only less.
        let reached = self.playout.playhead.and_then(|(at, ph)| {
            (self.now.saturating_duration_since(at) <= PLAYHEAD_FRESH)
                .then(|| at + Duration::from_micros(pts.saturating_sub(ph)) + PLAYHEAD_GRACE)
        });
        Some(reached.map_or(scheduled, |r| r.min(scheduled)))
    }

    /// Whether anything newer than `seq` is known to exist (only then is `seq` ever skipped: a
    /// segment the source has not published yet is not late).
    fn newer_exists(&self, seq: u64) -> bool {
        self.stats.newest_seq.is_some_and(|n| n > seq)
            || self.max_advertised.is_some_and(|(m, _)| m > seq)
    }

    /// When playback next needs attention (the next segment's deadline), if it is waiting.
    pub(crate) fn playout_deadline(&self) -> Option<Instant> {
        self.playout.start?;
        let next = self.playout.next;
        if self.complete.contains(next) || !self.newer_exists(next) {
            return None;
        }
        self.deadline_of(next)
    }

    /// Plays what is ready, in order; skips what missed its deadline.
    pub(crate) fn playout(&mut self, now: Instant) {
        if self.playout.start.is_none() {
            return;
        }
        if self.playout.t0.is_none() {
            self.restart_if_stuck(now);
        }
        // Fell behind the window: what is gone is skipped.
        while self.playout.next < self.window_start && self.playout.t0.is_some() {
            self.skip();
        }
        if self.playout.t0.is_none() && self.playout.next < self.window_start {
            self.playout.next = self.window_start;
        }
        loop {
            let seq = self.playout.next;
            if let Some(seg) = self.segments.get(&seq) {
                let v = seg.header.header.init_version;
                if seg.complete() {
                    if let Some(init) = self.inits.get(&v).cloned() {
                        if self.playout.init_emitted != Some(v) {
                            self.playout.init_emitted = Some(v);
                            self.outputs.push_back(Output::Init(init));
                        }
                        let h = &seg.header.header;
                        if self.playout.t0.is_none() {
                            self.playout.t0 = Some((now, h.pts_us));
                        }
                        let play = PlayableSegment {
                            seq,
                            init_version: v,
                            pts_us: h.pts_us,
                            duration_us: h.duration_us,
                            keyframe: h.keyframe,
                            published_us: h.published_us,
                            data: seg.assemble(),
                        };
                        self.stats.play_lag = Some(Duration::from_micros(
                            now.as_micros().saturating_sub(h.published_us),
                        ));
                        self.stats.segments_played += 1;
                        self.outputs.push_back(Output::Play(play));
                        self.playout.next += 1;
                        continue;
                    }
                }
            }
            if self.playout.t0.is_some()
                && self.newer_exists(seq)
                && self.deadline_of(seq).is_some_and(|d| now >= d)
            {
                self.skip();
                continue;
            }
            break;
        }
    }

    fn skip(&mut self) {
        let seq = self.playout.next;
        self.stats.segments_skipped += 1;
        self.outputs.push_back(Output::Skip { seq });
        self.playout.next += 1;
    }

    /// Before the first play: when the chosen start takes too long, start instead at a newer
    /// complete keyframe segment.
    fn restart_if_stuck(&mut self, now: Instant) {
        if now.saturating_duration_since(self.playout.start_at) < self.config.playout_delay {
            return;
        }
        let from = self.playout.next + 1;
        let newer = self
            .segments
            .range(from..)
            .rev()
            .find(|(_, s)| s.header.header.keyframe && s.complete())
            .map(|(seq, _)| *seq);
        if let Some(seq) = newer {
            self.playout.start = Some(seq);
            self.playout.next = seq;
            self.playout.start_at = now;
        }
    }
}
