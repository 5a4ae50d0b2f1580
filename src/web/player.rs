//! The MSE player: one `MediaSource` with one `SourceBuffer` for the init segment's MIME type,
//! fed the core's verified segments in order. The rules (rate, seeks, eviction, stalls) are in
//! [`crate::client::playback`]; this file applies them to the `<video>`.
//!
//! Timeline: the container's own timestamps are used as they are. The first segment appended
//! after (re)initialisation is probed: its wall-clock `pts_us` minus where MSE buffered it gives
//! the media-to-wall offset, so latency = wall now − wall time of the frame at `currentTime`
//! whatever origin the muxer used. Should the container carry epoch-scale timestamps, the
//! `timestampOffset` is rebased to keep `currentTime` small.

use super::peer::{with, WeakDriver};
use super::util::{self, callback, func, Callback};
use crate::client::jitter::JitterTarget;
use crate::client::playback::{
    decide, is_discontinuity, ready_to_start, start_seek, trim, Decision, LatencyConfig, Range,
    StallMeter, WallMap,
};
use crate::core::{InitSegment, PlayableSegment};
use std::collections::VecDeque;
use std::sync::Arc;
use web_sys::{
    HtmlVideoElement, MediaSource, MediaSourceReadyState, SourceBuffer, TimeRanges, Url,
};

/// Seconds of media kept behind the playhead; older data is evicted.
const KEEP_BEHIND_S: f64 = 20.0;
/// Evict in chunks of at least this many seconds.
const TRIM_CHUNK_S: f64 = 5.0;
/// Segments held while the SourceBuffer is busy or not open yet; beyond this the player drops
/// them and restarts at the next keyframe (the tab was frozen, say).
const MAX_QUEUE: usize = 120;
/// Re-initialisations allowed per minute before the player gives up with an error.
const MAX_REINITS_PER_MIN: usize = 5;
/// Container timestamps larger than this (s) are rebased to start near zero.
const REBASE_ABOVE_S: f64 = 1.0e6;

struct Chunk {
    data: Vec<u8>,
    /// Wall-clock pts of a media segment; `None` for the init segment.
    pts_us: Option<u64>,
    /// Duration of a media segment, µs.
    duration_us: u32,
}

/// Plays one stream into one `<video>`.
pub(crate) struct Player {
    video: HtmlVideoElement,
    me: WeakDriver,
    cfg: LatencyConfig,
    /// Sets `cfg.target` from how unevenly segments arrive; `None` when the page fixed it.
    jitter: Option<JitterTarget>,
    /// Wall-clock age of the newest segment's last frame when the core handed it over, ms: the
    /// delivery delay (capture, encode, every hop, verification), without the player's buffer.
    pub(crate) delivery_ms: Option<f64>,
    init: Option<Arc<InitSegment>>,
    ms: Option<MediaSource>,
    url: Option<String>,
    sb: Option<SourceBuffer>,
    ms_closures: Vec<Callback>,
    video_closures: Vec<Callback>,
    graveyard: Vec<Callback>,
    queue: VecDeque<Chunk>,
    need_keyframe: bool,
    /// Wall-clock seconds minus media seconds, once probed.
    wall_offset: Option<f64>,
    /// The first media segment since (re)init, awaiting its `updateend` to fix the offset.
    probe: Option<(f64, Vec<u8>)>,
    /// A rebase is in progress: everything buffered is being removed.
    rebasing: bool,
    started: bool,
    /// `play()` was called since the last (re)initialisation.
    play_requested: bool,
    pub(crate) stalls: StallMeter,
    last_trim_ms: f64,
    quota_hits: u32,
    reinits: VecDeque<f64>,
    pub(crate) reinit_count: u32,
    error: Option<String>,
    /// Where appended segments landed: media time to capture time.
    wall_map: WallMap,
    /// (wall start, duration) s of the media chunk being appended, recorded on `updateend`.
    appending: Option<(f64, f64)>,
    /// Sequence number and wall-clock end of the last segment received.
    last_segment: Option<(u64, u64)>,
    /// Swallows `play()` rejections (autoplay refused): the page offers a play button instead.
    ignore: Callback,
}

fn ranges(tr: Option<TimeRanges>) -> Vec<Range> {
    let Some(tr) = tr else { return Vec::new() };
    (0..tr.length())
        .filter_map(|i| {
            Some(Range {
                start: tr.start(i).ok()?,
                end: tr.end(i).ok()?,
            })
        })
        .collect()
}

impl Player {
    /// `adaptive`: the buffer target follows the arrivals, starting from `cfg.target`.
    pub(crate) fn new(
        video: HtmlVideoElement,
        me: WeakDriver,
        cfg: LatencyConfig,
        adaptive: bool,
    ) -> Self {
        Player {
            video,
            me,
            cfg,
            jitter: adaptive.then(JitterTarget::default),
            delivery_ms: None,
            init: None,
            ms: None,
            url: None,
            sb: None,
            ms_closures: Vec::new(),
            video_closures: Vec::new(),
            graveyard: Vec::new(),
            queue: VecDeque::new(),
            need_keyframe: true,
            wall_offset: None,
            probe: None,
            rebasing: false,
            started: false,
            play_requested: false,
            stalls: StallMeter::default(),
            last_trim_ms: 0.0,
            quota_hits: 0,
            reinits: VecDeque::new(),
            reinit_count: 0,
            error: None,
            last_segment: None,
            wall_map: WallMap::default(),
            appending: None,
            ignore: callback(|_| {}),
        }
    }

    /// Hooks the `<video>`'s error event (decode errors re-initialise).
    pub(crate) fn attach(&mut self) {
        let w = self.me.clone();
        let on_error = callback(move |_| {
            with(&w, |d| {
                if let Some(p) = d.player.as_mut() {
                    p.on_video_error();
                }
            });
        });
        self.video.set_onerror(func(&on_error));
        self.video_closures.push(on_error);
    }

    /// The stream starts over (the peer rejoined): wait for a new init segment.
    pub(crate) fn forget_stream(&mut self) {
        self.teardown_source();
        self.init = None;
        self.last_segment = None;
        self.queue.clear();
        self.need_keyframe = true;
        self.wall_offset = None;
        self.wall_map.clear();
        self.appending = None;
        self.probe = None;
        self.rebasing = false;
        self.started = false;
        self.play_requested = false;
    }

    /// A verified init segment: (re)build the MediaSource when it is new.
    pub(crate) fn on_init(&mut self, init: Arc<InitSegment>) -> Result<(), String> {
        if self
            .init
            .as_ref()
            .is_some_and(|i| i.version == init.version && i.mime == init.mime)
            && self.ms.is_some()
        {
            return Ok(());
        }
        if !MediaSource::is_type_supported(&init.mime) {
            let msg = format!(
                "This browser cannot play the stream's format ({}).",
                init.mime
            );
            self.error = Some(msg.clone());
            return Err(msg);
        }
        self.init = Some(init);
        self.reset();
        Ok(())
    }

    /// New MediaSource; playback resumes from the next keyframe segment.
    fn reset(&mut self) {
        self.teardown_source();
        let ms = match MediaSource::new() {
            Ok(ms) => ms,
            Err(e) => {
                self.error = Some(format!("MediaSource failed: {e:?}"));
                return;
            }
        };
        let w = self.me.clone();
        let on_open = callback(move |_| {
            with(&w, |d| {
                if let Some(p) = d.player.as_mut() {
                    p.on_source_open();
                }
            });
        });
        ms.set_onsourceopen(func(&on_open));
        self.ms_closures.push(on_open);
        match Url::create_object_url_with_source(&ms) {
            Ok(url) => {
                self.video.set_src(&url);
                self.url = Some(url);
            }
            Err(e) => self.error = Some(format!("MediaSource URL failed: {e:?}")),
        }
        self.ms = Some(ms);
        self.queue.clear();
        self.need_keyframe = true;
        self.wall_offset = None;
        self.wall_map.clear();
        self.appending = None;
        self.probe = None;
        self.rebasing = false;
        self.started = false;
        self.play_requested = false;
        self.quota_hits = 0;
    }

    fn teardown_source(&mut self) {
        if let Some(sb) = self.sb.take() {
            sb.set_onupdateend(None);
            sb.set_onerror(None);
        }
        if let Some(ms) = self.ms.take() {
            ms.set_onsourceopen(None);
        }
        if let Some(url) = self.url.take() {
            let _ = Url::revoke_object_url(&url);
        }
        self.graveyard.append(&mut self.ms_closures);
    }

    fn on_source_open(&mut self) {
        let (Some(ms), Some(init)) = (self.ms.as_ref(), self.init.clone()) else {
            return;
        };
        if self.sb.is_some() {
            return;
        }
        let sb = match ms.add_source_buffer(&init.mime) {
            Ok(sb) => sb,
            Err(e) => {
                self.error = Some(format!(
                    "This browser cannot play the stream's format ({}): {}",
                    init.mime,
                    util::error_name(&e)
                ));
                return;
            }
        };
        let w = self.me.clone();
        let on_end = callback(move |_| {
            with(&w, |d| {
                if let Some(p) = d.player.as_mut() {
                    p.on_update_end();
                }
            });
        });
        let w = self.me.clone();
        let on_err = callback(move |_| {
            with(&w, |d| {
                if let Some(p) = d.player.as_mut() {
                    p.reinit("SourceBuffer error");
                }
            });
        });
        sb.set_onupdateend(func(&on_end));
        sb.set_onerror(func(&on_err));
        self.ms_closures.extend([on_end, on_err]);
        self.sb = Some(sb);
        self.queue.push_front(Chunk {
            data: init.data.clone(),
            pts_us: None,
            duration_us: 0,
        });
        self.feed();
    }

    /// The next verified segment.
    pub(crate) fn on_segment(&mut self, seg: PlayableSegment) {
        let end_s = (seg.pts_us + u64::from(seg.duration_us)) as f64 / 1e6;
        let now_s = util::wall_ms() / 1000.0;
        self.delivery_ms = Some((now_s - end_s) * 1000.0);
        let Some(init) = self.init.as_ref() else {
            return;
        };
        if self.wall_offset.is_none() {
            util::debug(&format!(
                "segment {} pts {} ms keyframe {} ({} bytes)",
                seg.seq,
                seg.pts_us / 1000,
                seg.keyframe,
                seg.data.len()
            ));
        }
        if seg.init_version != init.version {
            return; // decodes with another init, which will arrive before it matters
        }
        if let (Some(j), true) = (self.jitter.as_mut(), self.play_requested) {
            // Only once playing: the start-up burst is old by design (fast start).
            j.record(now_s, now_s - end_s, f64::from(seg.duration_us) / 1e6);
        }
        let prev = self.last_segment.replace((
            seg.seq,
            seg.pts_us.saturating_add(u64::from(seg.duration_us)),
        ));
        if is_discontinuity(prev, seg.seq, seg.pts_us) && self.sb.is_some() {
            util::debug(&format!(
                "timeline break at segment {}: new MediaSource",
                seg.seq
            ));
            self.reset();
        }
        if self.need_keyframe {
            if !seg.keyframe {
                return;
            }
            self.need_keyframe = false;
        }
        if self.queue.len() >= MAX_QUEUE {
            self.queue.retain(|c| c.pts_us.is_none());
            self.need_keyframe = !seg.keyframe;
            if !seg.keyframe {
                return;
            }
        }
        self.queue.push_back(Chunk {
            data: seg.data,
            pts_us: Some(seg.pts_us),
            duration_us: seg.duration_us,
        });
        self.feed();
    }

    /// A segment the core gave up on: the hole it leaves is jumped by the tick's gap rule.
    pub(crate) fn on_skip(&mut self, _seq: u64) {}

    fn busy(&self) -> bool {
        match (&self.sb, &self.ms) {
            (Some(sb), Some(ms)) => {
                sb.updating() || ms.ready_state() != MediaSourceReadyState::Open
            }
            _ => true,
        }
    }

    /// Appends the next queued chunk if the SourceBuffer is idle.
    fn feed(&mut self) {
        if self.busy() || self.rebasing {
            return;
        }
        let Some(mut chunk) = self.queue.pop_front() else {
            return;
        };
        if let (Some(pts), None, None) = (chunk.pts_us, self.wall_offset, &self.probe) {
            self.probe = Some((pts as f64 / 1e6, chunk.data.clone()));
        }
        let Some(sb) = self.sb.as_ref() else { return };
        self.appending = chunk
            .pts_us
            .map(|p| (p as f64 / 1e6, f64::from(chunk.duration_us) / 1e6));
        if let Err(e) = sb.append_buffer_with_u8_array(&mut chunk.data) {
            self.appending = None;
            let name = util::error_name(&e);
            if name == "QuotaExceededError" && self.quota_hits < 3 {
                // Full: evict everything but the last couple of seconds behind the playhead,
                // then retry the same chunk on updateend.
                self.quota_hits += 1;
                self.queue.push_front(chunk);
                let keep_from = self.current_time() - 2.0;
                if keep_from > 0.0 {
                    let _ = sb.remove(0.0, keep_from);
                }
            } else {
                self.reinit(&format!("appendBuffer failed: {name}"));
            }
        }
    }

    fn on_update_end(&mut self) {
        let Some(sb) = self.sb.clone() else { return };
        if self.rebasing {
            // Everything removed: shift the timeline and append the probe again.
            self.rebasing = false;
            if let Some((_, data)) = self.probe.clone() {
                self.queue.push_front(Chunk {
                    data,
                    pts_us: None,
                    duration_us: 0,
                });
            }
            self.probe = None;
            self.feed();
            return;
        }
        if let Some((pts_s, data)) = self.probe.clone() {
            let buffered = ranges(sb.buffered().ok());
            if let Some(first) = buffered.first() {
                if first.start > REBASE_ABOVE_S {
                    // Epoch-scale container times: rebase so currentTime stays small.
                    let offset = sb.timestamp_offset() - first.start;
                    self.wall_offset = Some(pts_s);
                    self.probe = Some((pts_s, data));
                    self.rebasing = true;
                    if sb.remove(0.0, f64::INFINITY).is_ok() {
                        sb.set_timestamp_offset(offset);
                    } else {
                        self.rebasing = false;
                    }
                    return;
                }
                self.wall_offset = Some(pts_s - first.start);
                util::debug(&format!(
                    "timeline: segment at {} ms wall buffered from {} ms media ({} ranges)",
                    (pts_s * 1000.0) as i64,
                    (first.start * 1000.0) as i64,
                    buffered.len()
                ));
                self.probe = None;
            }
        }
        self.quota_hits = 0;
        if let Some((wall, dur)) = self.appending.take() {
            if let Some(last) = ranges(sb.buffered().ok()).last() {
                self.wall_map.record(last.end, dur, wall);
            }
        }
        if !self.started {
            let buffered = ranges(sb.buffered().ok());
            if let Some(last) = buffered.last() {
                // Fast start: at the newest keyframe segment, target latency from its end.
                let to = (last.end - self.cfg.target).max(last.start);
                self.video.set_current_time(to);
                self.started = true;
            }
        }
        self.maybe_start();
        self.feed();
    }

    /// Calls `play()` once enough is buffered (see [`ready_to_start`]).
    fn maybe_start(&mut self) {
        if !self.started || self.play_requested {
            return;
        }
        // Segments still waiting for the SourceBuffer: start once they are in, so that
        // `start_seek` sees the real edge. At start-up the core hands over a keyframe's whole
        // group at once while the first appends are slow (decoder set-up on a busy machine);
        // starting on the first one played 3.4 s behind live until the excess rule seeked
        // (a swarm e2e run, BENCHMARKS.md).
        if self.queue.iter().any(|c| c.pts_us.is_some()) {
            return;
        }
        let buffered = ranges(Some(self.video.buffered()));
        let current = self.current_time();
        if ready_to_start(&buffered, current, &self.cfg) {
            if let Some(to) = start_seek(&buffered, current, &self.cfg) {
                self.video.set_current_time(to);
            }
            self.play_requested = true;
            self.play();
        }
    }

    fn play(&self) {
        if let Ok(p) = self.video.play() {
            // Autoplay refusal is the page's to handle (it shows a play button); swallow it here.
            let _ = p.catch(&self.ignore);
        }
    }

    fn on_video_error(&mut self) {
        let code = self.video.error().map(|e| e.code()).unwrap_or(0);
        // 4 = MEDIA_ERR_SRC_NOT_SUPPORTED before anything played: the format, not the data.
        if code == 4 && !self.started {
            if let Some(init) = &self.init {
                self.error = Some(format!(
                    "This browser cannot play the stream's format ({}).",
                    init.mime
                ));
                return;
            }
        }
        self.reinit(&format!("media error {code}"));
    }

    /// Starts over from the next keyframe with a fresh MediaSource (decode error, full buffer).
    pub(crate) fn reinit(&mut self, why: &str) {
        let now = util::now_ms();
        while self.reinits.front().is_some_and(|&t| now - t > 60_000.0) {
            self.reinits.pop_front();
        }
        if self.reinits.len() >= MAX_REINITS_PER_MIN {
            self.error = Some(format!("Playback keeps failing ({why})."));
            return;
        }
        util::warn(&format!("player re-initialising: {why}"));
        self.reinits.push_back(now);
        self.reinit_count += 1;
        if self.init.is_some() {
            self.reset();
        }
    }

    /// Periodic control: rate, gap and live-edge seeks, eviction, stall accounting.
    /// `media_fresh`: segments are arriving; a broadcast that is off air is no stall.
    pub(crate) fn tick(&mut self, now: f64, media_fresh: bool) -> Result<(), String> {
        self.graveyard.clear();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let current = self.current_time();
        let expected = media_fresh && self.started && !self.video.paused() && !self.video.ended();
        let was_stalled = self.stalls.is_stalled();
        self.stalls.sample(now, current, expected);
        if self.stalls.is_stalled() != was_stalled {
            let ahead: Vec<(i64, i64)> = ranges(Some(self.video.buffered()))
                .iter()
                .map(|r| ((r.start * 1000.0) as i64, (r.end * 1000.0) as i64))
                .collect();
            util::debug(&format!(
                "stall {} at {} ms, buffered {ahead:?}, queued {}",
                if was_stalled { "ends" } else { "begins" },
                (current * 1000.0) as i64,
                self.queue.len()
            ));
        }
        if !self.started || self.rebasing {
            return Ok(());
        }
        self.maybe_start();
        if let Some(t) = self
            .jitter
            .as_ref()
            .and_then(|j| j.target(self.cfg.deadband))
        {
            self.cfg.target = t;
        }
        let buffered = ranges(Some(self.video.buffered()));
        match decide(&buffered, current, self.stalls.is_stalled(), &self.cfg) {
            Decision::Seek { to } => {
                // Whole milliseconds: float formatting would add kilobytes to the bundle.
                util::debug(&format!(
                    "seek {} ms -> {} ms",
                    (current * 1000.0) as i64,
                    (to * 1000.0) as i64
                ));
                self.video.set_current_time(to);
                self.video.set_playback_rate(1.0);
            }
            Decision::Play { rate } => {
                if (self.video.playback_rate() - rate).abs() > 0.005 {
                    self.video.set_playback_rate(rate);
                }
            }
            Decision::Wait => {}
        }
        if self.play_requested && self.video.paused() && !self.video.ended() && self.video.muted() {
            // A muted live player should never sit paused (e.g. after a bfcache restore).
            self.play();
        }
        if now - self.last_trim_ms > 2_000.0 && !self.busy() {
            self.last_trim_ms = now;
            if let (Some(r), Some(sb)) = (
                trim(&buffered, current, KEEP_BEHIND_S, TRIM_CHUNK_S),
                self.sb.as_ref(),
            ) {
                let _ = sb.remove(r.start.max(0.0), r.end);
            }
        }
        Ok(())
    }

    /// Playing: started and the playhead moving.
    pub(crate) fn is_playing(&self) -> bool {
        self.started && !self.stalls.is_stalled() && !self.video.paused()
    }

    pub(crate) fn current_time(&self) -> f64 {
        self.video.current_time()
    }

    /// Capture time (s since the epoch) of the frame at `currentTime`, once started.
    fn playhead_wall_s(&self) -> Option<f64> {
        if !self.started {
            return None;
        }
        let t = self.current_time();
        self.wall_map
            .wall_at(t)
            .or_else(|| self.wall_offset.map(|off| t + off))
    }

    /// Capture time of the frame at `currentTime`, µs, while playback runs (stalled or not);
    /// `None` before the start and while paused.
    pub(crate) fn playhead_pts_us(&self) -> Option<u64> {
        if !self.play_requested || self.video.paused() {
            return None;
        }
        let wall = self.playhead_wall_s()?;
        (wall > 0.0).then_some((wall * 1e6) as u64)
    }

    /// Wall-clock now minus the capture time of the frame at `currentTime`.
    pub(crate) fn latency_ms(&self) -> Option<f64> {
        Some(util::wall_ms() - self.playhead_wall_s()? * 1000.0)
    }

    /// Buffer the player currently aims to hold ahead of the playhead, ms.
    pub(crate) fn target_ms(&self) -> f64 {
        self.cfg.target * 1000.0
    }

    /// Segments waiting for the SourceBuffer.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Media buffered ahead of the playhead.
    pub(crate) fn buffer_ms(&self) -> f64 {
        let t = self.current_time();
        ranges(Some(self.video.buffered()))
            .iter()
            .find(|r| t >= r.start - 0.05 && t < r.end)
            .map_or(0.0, |r| (r.end - t) * 1000.0)
    }

    /// Detaches from the `<video>` (destroy).
    pub(crate) fn close(&mut self) {
        self.teardown_source();
        self.video.set_onerror(None);
        let _ = self.video.remove_attribute("src");
        self.video.load();
        self.graveyard.append(&mut self.video_closures);
        self.queue.clear();
    }
}
