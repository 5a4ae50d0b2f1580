//! The segmenter: encoded frames in (as WebCodecs hands them out), media segments out.
//!
//! Sans-IO like the core: nothing here reads a clock; the frames' own timestamps drive it.
//!
//! How frames become segments:
//! - The stream's origin is the first video keyframe (or, without video, the first audio
//!   frame); segment timestamps count from there, so the first segment starts at 0.
//! - A segment is closed when its video reaches the target duration, and a new one is always
//!   started at a video keyframe. A segment that starts with a keyframe is flagged `keyframe`;
//!   one cut by duration alone between keyframes is not.
//! - Each track's timeline is continuous: a sample's decode time is where the previous one ended,
//!   and its duration runs to the next frame's timestamp (or, when a frame carries a duration,
//!   to its own end). So the `tfdt` of segment n+1 is that of n plus its durations, and jitter
//!   or gaps in the input are absorbed by one sample instead of leaving holes MSE stalls on.
//! - A video frame without a duration is held until the next one arrives, which tells how long
//!   it lasts; frames with a duration (give `VideoFrame`s one) are placed at once.
//! - An audio frame goes into the segment covering its timestamp. A closed segment waits for
//!   audio to reach its end, but at most until the next segment closes, so a stalled audio
//!   encoder delays video by one segment at most; late audio then goes into a later segment.

use std::collections::VecDeque;

use super::error::{MediaError, TrackKind};
use super::mux::{Fmp4Muxer, Sample, TrackRun, AUDIO_TIMESCALE, VIDEO_TIMESCALE};

/// Default target segment duration: 200 ms.
pub const DEFAULT_TARGET_DURATION_US: u32 = 200_000;

/// Largest accepted frame. Far above any real encoder output; it keeps every box size well inside
/// the 32-bit fields.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// A segment is also closed once its media passes this size, whatever its duration.
const MAX_SEGMENT_BYTES: usize = 256 << 20;

/// Audio frames kept while waiting for the first video keyframe (about 10 s of 20 ms packets).
const MAX_PREROLL_FRAMES: usize = 512;

/// One encoded frame: an `EncodedVideoChunk` (length-prefixed NAL units, `avc` format) or an
/// `EncodedAudioChunk` (one raw Opus packet), copied out with `copyTo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The chunk's bytes.
    pub data: Vec<u8>,
    /// `chunk.timestamp`, microseconds.
    pub timestamp_us: u64,
    /// `chunk.duration` in microseconds, or 0 when the encoder gave none.
    pub duration_us: u32,
    /// `chunk.type == "key"`. Ignored for audio: every Opus packet is a sync sample.
    pub keyframe: bool,
}

/// A finished media segment: one `moof` + `mdat`, to append after the init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSegment {
    /// Sequence number, from 1, one more for each segment (also the `mfhd` sequence number,
    /// modulo 2^32).
    pub seq: u64,
    /// Presentation time of the segment's first sample, microseconds since the stream's origin.
    /// (With B-frames, [`Segmenter::push_video_reordered`]: the decode time of its first sample,
    /// which is where a keyframe presents when its composition offset is the first keyframe's.)
    pub pts_us: u64,
    /// Duration of the segment's primary track (video, or audio without video), microseconds.
    pub duration_us: u32,
    /// Whether the segment starts with a video keyframe, so a viewer can start decoding here.
    /// Always true for audio-only streams.
    pub keyframe: bool,
    /// The `moof` + `mdat` bytes.
    pub data: Vec<u8>,
}

/// One track's timeline.
#[derive(Debug)]
struct Track {
    kind: TrackKind,
    timescale: u32,
    track_id: u32,
    /// Timestamp (absolute µs) of the last accepted frame, for the monotonicity check.
    last_ts: Option<u64>,
    /// Timestamp (µs since origin) of the latest frame placed on the timeline or held.
    pushed_rel: Option<u64>,
    /// Where the committed samples end, in timescale ticks.
    end: Option<u64>,
    /// A frame waiting for its successor to learn its duration: (µs since origin, frame,
    /// composition offset in ticks).
    held: Option<(u64, EncodedFrame, i32)>,
    /// The last committed duration, in ticks: the guess for a final frame without a duration.
    last_duration: Option<u32>,
    /// The guess when there is nothing better (one frame at 30 fps, one 20 ms Opus packet).
    fallback_duration_us: u32,
}

impl Track {
    fn new(kind: TrackKind, track_id: u32, audio_timescale: u32) -> Self {
        let (timescale, fallback_duration_us) = match kind {
            TrackKind::Video => (VIDEO_TIMESCALE, 33_333),
            TrackKind::Audio => (audio_timescale, 20_000),
        };
        Track {
            kind,
            timescale,
            track_id,
            last_ts: None,
            pushed_rel: None,
            end: None,
            held: None,
            last_duration: None,
            fallback_duration_us,
        }
    }

    /// Microseconds to ticks, rounded to nearest. Converting absolute times (not durations)
    /// means rounding never accumulates.
    fn ticks(&self, us: u64) -> u64 {
        let t = (u128::from(us) * u128::from(self.timescale) + 500_000) / 1_000_000;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Ticks to microseconds, rounded to nearest.
    fn us(&self, ticks: u64) -> u64 {
        let ts = u128::from(self.timescale);
        let t = (u128::from(ticks) * 1_000_000 + ts / 2) / ts;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Puts a frame on the timeline right where the previous sample ended. It lasts until the
    /// next frame's timestamp if known, else until its own end, else as long as the last one.
    fn commit(
        &mut self,
        rel_us: u64,
        frame: EncodedFrame,
        next_rel_us: Option<u64>,
        composition_offset: i32,
    ) -> Sample {
        let start = self.end.unwrap_or_else(|| self.ticks(rel_us));
        let until = match next_rel_us {
            Some(next) => self.ticks(next),
            None if frame.duration_us > 0 => {
                self.ticks(rel_us.saturating_add(u64::from(frame.duration_us)))
            }
            None => start
                .saturating_add(u64::from(self.last_duration.unwrap_or_else(|| {
                    self.ticks(u64::from(self.fallback_duration_us)) as u32
                }))),
        };
        // Overlapping input (a timestamp before the previous frame's end) would give zero or
        // negative durations: such a sample gets one tick and the timeline catches up after it.
        let duration = until.saturating_sub(start).clamp(1, u64::from(u32::MAX)) as u32;
        self.end = Some(start.saturating_add(u64::from(duration)));
        self.last_duration = Some(duration);
        Sample {
            decode: start,
            duration,
            composition_offset,
            sync: frame.keyframe || self.kind == TrackKind::Audio,
            ts_us: rel_us,
            data: frame.data,
        }
    }
}

/// Samples collected for one segment.
#[derive(Debug, Default)]
struct Building {
    video: Vec<Sample>,
    audio: Vec<Sample>,
}

/// A segment whose video is complete, waiting for its audio.
#[derive(Debug)]
struct Closed {
    samples: Building,
    start_us: u64,
    end_us: u64,
    keyframe: bool,
}

/// Cuts a stream of encoded frames into media segments. See the module documentation for the
/// rules; in short: push frames as the encoders output them, then poll segments until `None`.
///
/// ```
/// use swarmcast::media::{EncodedFrame, Fmp4Muxer, Segmenter, AudioTrackConfig};
/// let muxer = Fmp4Muxer::new(None, Some(AudioTrackConfig::new(48_000, 2)))?;
/// let init = muxer.init_segment(); // append first
/// let mut seg = Segmenter::new(muxer, 200_000);
/// for i in 0..20u64 {
///     let packet = EncodedFrame { data: vec![0xfc; 40], timestamp_us: i * 20_000, duration_us: 20_000, keyframe: true };
///     seg.push_audio(packet)?;
/// }
/// seg.flush();
/// let first = seg.poll_segment().expect("200 ms of audio make a segment");
/// assert_eq!((first.seq, first.pts_us, first.duration_us), (1, 0, 200_000));
/// # assert!(!init.is_empty());
/// # Ok::<(), swarmcast::media::MediaError>(())
/// ```
#[derive(Debug)]
pub struct Segmenter {
    muxer: Fmp4Muxer,
    target_us: u64,
    /// Absolute timestamp (µs) that becomes 0 on the output timeline.
    origin: Option<u64>,
    /// Composition offset (µs) of the keyframe that fixed the origin: subtracted from every
    /// video frame's, so that keyframe presents at 0 and the timelines of both tracks agree.
    origin_offset_us: i64,
    video: Option<Track>,
    audio: Option<Track>,
    /// Audio that arrived before the first video keyframe fixed the origin.
    preroll: VecDeque<EncodedFrame>,
    open: Building,
    pending: VecDeque<Closed>,
    ready: VecDeque<MediaSegment>,
    next_seq: u64,
}

impl Segmenter {
    /// A segmenter writing through `muxer`, closing segments once they last
    /// `target_duration_us` (see [`DEFAULT_TARGET_DURATION_US`]).
    pub fn new(muxer: Fmp4Muxer, target_duration_us: u32) -> Self {
        let video = muxer
            .video_track_id()
            .map(|id| Track::new(TrackKind::Video, id, AUDIO_TIMESCALE));
        let audio_timescale = muxer.audio_timescale().unwrap_or(AUDIO_TIMESCALE);
        let audio = muxer
            .audio_track_id()
            .map(|id| Track::new(TrackKind::Audio, id, audio_timescale));
        Segmenter {
            muxer,
            target_us: u64::from(target_duration_us),
            origin: None,
            origin_offset_us: 0,
            video,
            audio,
            preroll: VecDeque::new(),
            open: Building::default(),
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// The muxer, for [`Fmp4Muxer::init_segment`] and [`Fmp4Muxer::mime_type`].
    pub fn muxer(&self) -> &Fmp4Muxer {
        &self.muxer
    }

    /// The input timestamp (µs) that is 0 on the output timeline: the first video keyframe's
    /// (the first audio frame's without video). `None` until that frame has been pushed. Adding
    /// it to a segment's `pts_us` gives the encoder's (for example wall-clock) time back.
    pub fn origin_us(&self) -> Option<u64> {
        self.origin
    }

    /// Switches to a new muxer, for an encoder whose configuration changed (a new avcC after a
    /// resolution change): the current segment is flushed first, so no segment mixes the two,
    /// and the timeline and sequence numbers continue. Publish the new muxer's init segment
    /// before the segments that follow. The new muxer must have the same tracks.
    pub fn set_muxer(&mut self, muxer: Fmp4Muxer) -> Result<(), MediaError> {
        if muxer.video_track_id() != self.muxer.video_track_id()
            || muxer.audio_track_id() != self.muxer.audio_track_id()
            || muxer.audio_timescale() != self.muxer.audio_timescale()
        {
            return Err(MediaError::TrackLayoutChanged);
        }
        self.flush();
        self.muxer = muxer;
        Ok(())
    }

    /// The target segment duration in microseconds.
    pub fn target_duration_us(&self) -> u32 {
        self.target_us as u32
    }

    /// Adds a video frame. Frames must come in increasing timestamp order and the first must be
    /// a keyframe; a rejected frame leaves the segmenter as it was.
    pub fn push_video(&mut self, frame: EncodedFrame) -> Result<(), MediaError> {
        self.push_video_reordered(frame, 0)
    }

    /// Adds a video frame of a stream with B-frames (x264 over RTMP, say): frames come in
    /// decode order, `frame.timestamp_us` is the decode timestamp (increasing) and
    /// `composition_offset_us` the presentation timestamp minus it (FLV's CompositionTime).
    /// The offsets are written per sample in `trun`, shifted so the first keyframe presents at
    /// the output timeline's 0; the result may be negative, which `trun` version 1 allows.
    pub fn push_video_reordered(
        &mut self,
        frame: EncodedFrame,
        composition_offset_us: i64,
    ) -> Result<(), MediaError> {
        let origin_offset = if self.origin.is_none() {
            composition_offset_us
        } else {
            self.origin_offset_us
        };
        let offset = composition_offset_us
            .checked_sub(origin_offset)
            .and_then(|o| i32::try_from(o).ok())
            .ok_or(MediaError::BadCompositionOffset {
                timestamp_us: frame.timestamp_us,
                offset_us: composition_offset_us,
            })?;
        let avc = self.muxer.avc().ok_or(MediaError::NoSuchTrack {
            track: TrackKind::Video,
        })?;
        let bad = |reason| MediaError::BadFrame {
            track: TrackKind::Video,
            timestamp_us: frame.timestamp_us,
            reason,
        };
        if frame.data.len() > MAX_FRAME_BYTES {
            return Err(bad("larger than MAX_FRAME_BYTES"));
        }
        avc.check_frame(&frame.data).map_err(bad)?;
        let Some(track) = self.video.as_mut() else {
            return Err(MediaError::NoSuchTrack {
                track: TrackKind::Video,
            });
        };
        if let Some(prev) = track.last_ts {
            if frame.timestamp_us <= prev {
                return Err(MediaError::NonMonotonicTimestamp {
                    track: TrackKind::Video,
                    prev_us: prev,
                    got_us: frame.timestamp_us,
                });
            }
        }
        let starting = self.origin.is_none();
        if starting && !frame.keyframe {
            return Err(MediaError::FirstFrameNotKeyframe {
                timestamp_us: frame.timestamp_us,
            });
        }
        let origin = *self.origin.get_or_insert(frame.timestamp_us);
        self.origin_offset_us = origin_offset;
        track.last_ts = Some(frame.timestamp_us);
        let rel = frame.timestamp_us - origin;
        track.pushed_rel = Some(rel);

        if let Some((held_rel, held, held_offset)) = track.held.take() {
            let sample = track.commit(held_rel, held, Some(rel), held_offset);
            self.add_primary_video(sample);
        }
        if frame.keyframe && !self.open.video.is_empty() {
            self.close_open();
        }
        if let Some(track) = self.video.as_mut() {
            if frame.duration_us > 0 {
                let sample = track.commit(rel, frame, None, offset);
                self.add_primary_video(sample);
            } else {
                track.held = Some((rel, frame, offset));
            }
        }

        if starting {
            for audio in std::mem::take(&mut self.preroll) {
                self.place_audio_frame(audio);
            }
        }
        self.drain_ready(false);
        Ok(())
    }

    /// Adds an audio frame (an Opus packet, or a raw AAC frame without ADTS header). Packets must come in increasing timestamp order. Packets from before
    /// the first video keyframe are dropped once it arrives (nothing to show them with).
    pub fn push_audio(&mut self, frame: EncodedFrame) -> Result<(), MediaError> {
        let has_video = self.video.is_some();
        let Some(track) = self.audio.as_mut() else {
            return Err(MediaError::NoSuchTrack {
                track: TrackKind::Audio,
            });
        };
        let bad = |reason| MediaError::BadFrame {
            track: TrackKind::Audio,
            timestamp_us: frame.timestamp_us,
            reason,
        };
        if frame.data.is_empty() {
            return Err(bad("empty frame"));
        }
        if frame.data.len() > MAX_FRAME_BYTES {
            return Err(bad("larger than MAX_FRAME_BYTES"));
        }
        if let Some(prev) = track.last_ts {
            if frame.timestamp_us <= prev {
                return Err(MediaError::NonMonotonicTimestamp {
                    track: TrackKind::Audio,
                    prev_us: prev,
                    got_us: frame.timestamp_us,
                });
            }
        }
        track.last_ts = Some(frame.timestamp_us);
        if self.origin.is_none() {
            if has_video {
                if self.preroll.len() >= MAX_PREROLL_FRAMES {
                    self.preroll.pop_front();
                }
                self.preroll.push_back(frame);
                return Ok(());
            }
            self.origin = Some(frame.timestamp_us);
        }
        self.place_audio_frame(frame);
        self.drain_ready(false);
        Ok(())
    }

    /// Closes the current segment now, even if shorter than the target, and makes every
    /// finished segment available to [`Segmenter::poll_segment`] without waiting for audio.
    /// A held frame without a duration gets the previous frame's duration. Use it at the end of
    /// a broadcast, or to cut a segment at a moment the caller chooses.
    pub fn flush(&mut self) {
        if let Some(track) = self.video.as_mut() {
            if let Some((rel, frame, offset)) = track.held.take() {
                let sample = track.commit(rel, frame, None, offset);
                self.add_primary_video(sample);
            }
        }
        if let Some(track) = self.audio.as_mut() {
            if let Some((rel, frame, _)) = track.held.take() {
                let sample = track.commit(rel, frame, None, 0);
                self.place_audio_sample(sample);
            }
        }
        self.close_open();
        if self.video.is_some() && self.open.video.is_empty() && !self.open.audio.is_empty() {
            // Audio after the last video frame: a segment of its own, not a keyframe one.
            let samples = std::mem::take(&mut self.open);
            let (start_us, end_us) = self.span(TrackKind::Audio, &samples.audio);
            self.pending.push_back(Closed {
                samples,
                start_us,
                end_us,
                keyframe: false,
            });
        }
        self.drain_ready(true);
    }

    /// The next finished segment, in order, if any.
    pub fn poll_segment(&mut self) -> Option<MediaSegment> {
        self.ready.pop_front()
    }

    /// Audio frame with the origin known: drop it if before the origin, else put it on the
    /// timeline (now if it has a duration, else once the next one arrives).
    fn place_audio_frame(&mut self, frame: EncodedFrame) {
        let (Some(origin), Some(track)) = (self.origin, self.audio.as_mut()) else {
            return;
        };
        let Some(rel) = frame.timestamp_us.checked_sub(origin) else {
            return;
        };
        track.pushed_rel = Some(rel);
        let mut samples = Vec::with_capacity(2);
        if let Some((held_rel, held, _)) = track.held.take() {
            samples.push(track.commit(held_rel, held, Some(rel), 0));
        }
        if frame.duration_us > 0 {
            samples.push(track.commit(rel, frame, None, 0));
        } else {
            track.held = Some((rel, frame, 0));
        }
        for s in samples {
            self.place_audio_sample(s);
        }
    }

    /// An audio sample goes into the first waiting segment that ends after it starts, else into
    /// the open one. Without video, audio is the primary track and drives segment closing.
    fn place_audio_sample(&mut self, sample: Sample) {
        if self.video.is_none() {
            self.open.audio.push(sample);
            if self.open_is_full(TrackKind::Audio) {
                self.close_open();
            }
            return;
        }
        match self.pending.iter_mut().find(|c| sample.ts_us < c.end_us) {
            Some(closed) => closed.samples.audio.push(sample),
            None => self.open.audio.push(sample),
        }
    }

    fn add_primary_video(&mut self, sample: Sample) {
        self.open.video.push(sample);
        if self.open_is_full(TrackKind::Video) {
            self.close_open();
        }
    }

    fn open_is_full(&self, kind: TrackKind) -> bool {
        let samples = match kind {
            TrackKind::Video => &self.open.video,
            TrackKind::Audio => &self.open.audio,
        };
        let (start, end) = self.span(kind, samples);
        end - start >= self.target_us
            || samples.iter().map(|s| s.data.len()).sum::<usize>() >= MAX_SEGMENT_BYTES
    }

    /// Start and end (µs since origin) of a run of samples.
    fn span(&self, kind: TrackKind, samples: &[Sample]) -> (u64, u64) {
        let track = match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        };
        match (track, samples.first(), samples.last()) {
            (Some(t), Some(first), Some(last)) => (
                t.us(first.decode),
                t.us(last.decode.saturating_add(u64::from(last.duration))),
            ),
            _ => (0, 0),
        }
    }

    /// Moves the open segment to the waiting queue, if it has samples of the primary track.
    /// Audio that runs past its end moves on into the next segment.
    fn close_open(&mut self) {
        let kind = if self.video.is_some() {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let primary = match kind {
            TrackKind::Video => &self.open.video,
            TrackKind::Audio => &self.open.audio,
        };
        let Some(first) = primary.first() else {
            return;
        };
        let keyframe = first.sync;
        let (start_us, end_us) = self.span(kind, primary);
        let mut samples = std::mem::take(&mut self.open);
        if kind == TrackKind::Video {
            let split = samples
                .audio
                .iter()
                .position(|s| s.ts_us >= end_us)
                .unwrap_or(samples.audio.len());
            self.open.audio = samples.audio.split_off(split);
        }
        self.pending.push_back(Closed {
            samples,
            start_us,
            end_us,
            keyframe,
        });
    }

    /// Emits waiting segments whose audio is complete (or all of them, when flushing).
    fn drain_ready(&mut self, all: bool) {
        while let Some(front) = self.pending.front() {
            let audio_done = match (&self.video, &self.audio) {
                (Some(_), Some(audio)) => {
                    let covered = audio.end.map(|e| audio.us(e)).unwrap_or(0);
                    audio.pushed_rel.is_some_and(|p| p >= front.end_us)
                        || covered >= front.end_us
                        || self.pending.len() > 1
                }
                _ => true,
            };
            if !(all || audio_done) {
                break;
            }
            let Some(closed) = self.pending.pop_front() else {
                break;
            };
            self.emit(closed);
        }
    }

    fn emit(&mut self, closed: Closed) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut runs = Vec::with_capacity(2);
        if let Some(v) = &self.video {
            runs.push(TrackRun {
                track_id: v.track_id,
                samples: &closed.samples.video,
            });
        }
        if let Some(a) = &self.audio {
            runs.push(TrackRun {
                track_id: a.track_id,
                samples: &closed.samples.audio,
            });
        }
        let data = self.muxer.fragment(seq as u32, &runs);
        self.ready.push_back(MediaSegment {
            seq,
            pts_us: closed.start_us,
            duration_us: u32::try_from(closed.end_us - closed.start_us).unwrap_or(u32::MAX),
            keyframe: closed.keyframe,
            data,
        });
    }
}
