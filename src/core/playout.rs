//! Playback order: a start point (the newest keyframe segment available), then every segment
//! in sequence order, each either played (complete and verified) or skipped when it missed its
//! deadline while the stream moved on.
//!
//! [`Playout`] owns the playback state and decides; it reads the segment store and writes
//! outputs and figures it is handed. The `impl Swarm` at the end only passes those in.

use super::api::{Output, PlayableSegment};
use super::stats::Stats;
use super::store::Store;
use super::swarm::Swarm;
use super::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// How long a segment the player has reached may still arrive before it is given up: the player
/// stalls meanwhile, so this is short; a segment that is that late is usually not on its way.
const PLAYHEAD_GRACE: Duration = Duration::from_millis(300);
/// A playhead report older than this is ignored (a throttled tab reports rarely).
const PLAYHEAD_FRESH: Duration = Duration::from_millis(1_000);

/// Playback state of a viewer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Playout {
    /// First segment to play, once chosen.
    start: Option<u64>,
    /// When the start was chosen.
    start_at: Instant,
    /// Next segment to hand to the player.
    next: u64,
    /// Local time of the first Play and the pts it played.
    t0: Option<(Instant, u64)>,
    /// The player's last [`super::Input::Playhead`]: when, and the pts it was at.
    playhead: Option<(Instant, u64)>,
    /// Init version last handed to the player.
    init_emitted: Option<u32>,
}

/// What playback reads of the rest of the peer at one moment.
pub(crate) struct Context<'a> {
    /// The swarm's time.
    pub now: Instant,
    /// The segments held.
    pub store: &'a Store,
    /// The newest segment known to exist: held, or advertised by a neighbour.
    pub newest_known: Option<u64>,
    /// The player's buffer ([`super::Config::playout_delay`]).
    pub delay: Duration,
}

impl Context<'_> {
    /// Whether anything newer than `seq` is known to exist (only then is `seq` ever skipped: a
    /// segment the source has not published yet is not late).
    fn newer_exists(&self, seq: u64) -> bool {
        self.newest_known.is_some_and(|n| n > seq)
    }
}

impl Playout {
    /// The first segment to play, once chosen.
    pub(crate) fn start(&self) -> Option<u64> {
        self.start
    }

    /// The next segment to hand to the player.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Something was played already (the schedule is fixed from then on).
    pub(crate) fn is_playing(&self) -> bool {
        self.t0.is_some()
    }

    /// The player reported its position at `now`: the frame captured at `pts_us`.
    pub(crate) fn set_playhead(&mut self, now: Instant, pts_us: u64) {
        self.playhead = Some((now, pts_us));
    }

    /// Chooses where playback starts: the newest verified keyframe segment at or above `floor`
    /// (the last few segments a neighbour holds complete; their headers are probed newest
    /// first).
    fn choose_start(&mut self, now: Instant, store: &Store, floor: u64) {
        if self.start.is_some() {
            return;
        }
        let pick = store
            .segments
            .range(floor..)
            .rev()
            .find(|(_, s)| s.header.header.keyframe)
            .map(|(seq, _)| *seq);
        if let Some(seq) = pick {
            self.start = Some(seq);
            self.next = seq;
            self.start_at = now;
        }
    }

    /// Local deadline of segment `seq`: first play time + pts offset + playout delay. The pts
    /// of a segment whose header is unknown is extrapolated from the nearest earlier header.
    pub(crate) fn deadline_of(&self, cx: &Context<'_>, seq: u64) -> Option<Instant> {
        let (t0, pts0) = self.t0?;
        let pts = match cx.store.segments.get(&seq) {
            Some(s) => s.header.header.pts_us,
            None => {
                let (&s, seg) = cx.store.segments.range(..seq).next_back()?;
                let h = &seg.header.header;
                h.pts_us
                    .saturating_add((seq - s).saturating_mul(h.duration_us as u64))
            }
        };
        let scheduled = t0 + Duration::from_micros(pts.saturating_sub(pts0)) + cx.delay;
        // The player's own position, when it reported one recently: it never makes a segment
        // wait longer than the schedule does, only less.
        let reached = self.playhead.and_then(|(at, ph)| {
            (cx.now.saturating_duration_since(at) <= PLAYHEAD_FRESH)
                .then(|| at + Duration::from_micros(pts.saturating_sub(ph)) + PLAYHEAD_GRACE)
        });
        Some(reached.map_or(scheduled, |r| r.min(scheduled)))
    }

    /// When playback next needs attention (the next segment's deadline), if it is waiting.
    fn deadline(&self, cx: &Context<'_>) -> Option<Instant> {
        self.start?;
        let next = self.next;
        if cx.store.complete.contains(next) || !cx.newer_exists(next) {
            return None;
        }
        self.deadline_of(cx, next)
    }

    /// Plays what is ready, in order; skips what missed its deadline.
    fn advance(&mut self, cx: &Context<'_>, out: &mut VecDeque<Output>, stats: &mut Stats) {
        if self.start.is_none() {
            return;
        }
        let now = cx.now;
        let store = cx.store;
        if self.t0.is_none() {
            self.restart_if_stuck(now, store, cx.delay);
        }
        // Fell behind the window: what is gone is skipped.
        while self.next < store.window_start && self.t0.is_some() {
            self.skip(out, stats);
        }
        if self.t0.is_none() && self.next < store.window_start {
            self.next = store.window_start;
        }
        loop {
            let seq = self.next;
            if let Some(seg) = store.segments.get(&seq) {
                let v = seg.header.header.init_version;
                if seg.complete() {
                    if let Some(init) = store.inits.get(&v).cloned() {
                        if self.init_emitted != Some(v) {
                            self.init_emitted = Some(v);
                            out.push_back(Output::Init(init));
                        }
                        let h = &seg.header.header;
                        if self.t0.is_none() {
                            self.t0 = Some((now, h.pts_us));
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
                        stats.play_lag = Some(Duration::from_micros(
                            now.as_micros().saturating_sub(h.published_us),
                        ));
                        stats.segments_played += 1;
                        out.push_back(Output::Play(play));
                        self.next += 1;
                        continue;
                    }
                }
            }
            if self.t0.is_some()
                && cx.newer_exists(seq)
                && self.deadline_of(cx, seq).is_some_and(|d| now >= d)
            {
                self.skip(out, stats);
                continue;
            }
            break;
        }
    }

    fn skip(&mut self, out: &mut VecDeque<Output>, stats: &mut Stats) {
        let seq = self.next;
        stats.segments_skipped += 1;
        out.push_back(Output::Skip { seq });
        self.next += 1;
    }

    /// Before the first play: when the chosen start takes too long, start instead at a newer
    /// complete keyframe segment.
    fn restart_if_stuck(&mut self, now: Instant, store: &Store, delay: Duration) {
        if now.saturating_duration_since(self.start_at) < delay {
            return;
        }
        let from = self.next + 1;
        let newer = store
            .segments
            .range(from..)
            .rev()
            .find(|(_, s)| s.header.header.keyframe && s.complete())
            .map(|(seq, _)| *seq);
        if let Some(seq) = newer {
            self.start = Some(seq);
            self.next = seq;
            self.start_at = now;
        }
    }
}

impl Swarm {
    /// What playback reads of this swarm now.
    fn playout_context(&self) -> Context<'_> {
        let advertised = self.max_advertised.map(|(m, _)| m);
        Context {
            now: self.now,
            store: &self.store,
            newest_known: self.store.newest.max(advertised),
            delay: self.config.playout_delay,
        }
    }

    /// Chooses where playback starts, if not yet: among the last few segments a neighbour
    /// holds complete or newer.
    pub(crate) fn maybe_choose_start(&mut self, now: Instant) {
        let floor = self.max_advertised.map_or(0, |(m, _)| {
            m.saturating_sub(super::scheduler::PROBE_SPAN - 1)
        });
        self.playout.choose_start(now, &self.store, floor);
    }

    /// Local deadline of segment `seq` (see [`Playout::deadline_of`]).
    pub(crate) fn deadline_of(&self, seq: u64) -> Option<Instant> {
        self.playout.deadline_of(&self.playout_context(), seq)
    }

    /// When playback next needs attention, if it is waiting.
    pub(crate) fn playout_deadline(&self) -> Option<Instant> {
        self.playout.deadline(&self.playout_context())
    }

    /// Plays what is ready, in order; skips what missed its deadline.
    pub(crate) fn playout(&mut self, now: Instant) {
        debug_assert_eq!(now, self.now);
        let cx = Context {
            now: self.now,
            store: &self.store,
            newest_known: self.store.newest.max(self.max_advertised.map(|(m, _)| m)),
            delay: self.config.playout_delay,
        };
        self.playout
            .advance(&cx, &mut self.outputs, &mut self.stats);
    }
}
