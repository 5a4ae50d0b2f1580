//! One published stream, sans-IO: FLV video/audio tag bodies with their RTMP timestamps in,
//! init segments and media segments out (through `swarmcast::media`'s segmenter and muxer).
//!
//! What it absorbs so the segmenter sees a clean stream:
//! - Tracks: decided when the first coded frame arrives, from the sequence headers seen by then
//!   (OBS and ffmpeg send both first), so audio-only and video-only streams work.
//! - SPS/PPS or AAC config changes: a new muxer ([`Segmenter::set_muxer`]) and a new init
//!   segment, which the caller publishes before the segments that follow.
//! - Timestamps: RTMP's start anywhere (the segmenter's origin is the first keyframe); a track
//!   whose timestamp goes backwards or jumps more than [`MAX_JUMP_US`] ahead (an encoder restart,
//!   a wrap) is rebased to continue one frame after its last one.
//! - Video frames before the first keyframe are dropped (nothing could decode them).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use swarmcast::media::{
    AudioTrackConfig, EncodedFrame, Fmp4Muxer, MediaError, MediaSegment, Segmenter,
    VideoTrackConfig, DEFAULT_TARGET_DURATION_US,
};

use crate::flv::{parse_audio, parse_video, AudioTag, TagError, VideoTag};
use crate::sps::picture_size;

/// A forward jump in a track's timestamps larger than this is treated as a discontinuity.
pub const MAX_JUMP_US: u64 = 10_000_000;

/// What the pipeline produced, in the order to publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An init segment: the first one, or a new one after a codec configuration change.
    Init {
        /// 1 for the first, one more for each change.
        index: u32,
        /// `ftyp` + `moov`.
        data: Vec<u8>,
        /// The MSE type, e.g. `video/mp4; codecs="avc1.64001f,mp4a.40.2"`.
        mime: String,
    },
    /// A media segment, to append after the latest init segment.
    Segment(MediaSegment),
}

/// Why the stream cannot go on (the connection is closed with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// A tag the ingest does not take (codec) or cannot read.
    Tag(TagError),
    /// The media layer refused a configuration or frame.
    Media(MediaError),
    /// An AVC sequence header whose avcC or SPS cannot be read.
    BadVideoConfig(&'static str),
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestError::Tag(e) => e.fmt(f),
            IngestError::Media(MediaError::TrackLayoutChanged) => write!(
                f,
                "the stream's tracks or audio sample rate changed mid-stream: stop and restart \
                 the stream in OBS"
            ),
            IngestError::Media(e) => write!(f, "media error: {e}"),
            IngestError::BadVideoConfig(why) => write!(f, "bad AVC sequence header: {why}"),
        }
    }
}

impl std::error::Error for IngestError {}

impl From<TagError> for IngestError {
    fn from(e: TagError) -> Self {
        IngestError::Tag(e)
    }
}

impl From<MediaError> for IngestError {
    fn from(e: MediaError) -> Self {
        IngestError::Media(e)
    }
}

/// Maps one track's RTMP millisecond timestamps onto a strictly increasing µs timeline.
#[derive(Debug)]
struct Clock {
    offset_us: i64,
    last_us: Option<u64>,
    nominal_frame_us: u64,
    rebases: u32,
}

impl Clock {
    fn new(nominal_frame_us: u64) -> Self {
        Clock {
            offset_us: 0,
            last_us: None,
            nominal_frame_us,
            rebases: 0,
        }
    }

    fn map(&mut self, timestamp_ms: u32) -> u64 {
        let raw = i64::from(timestamp_ms) * 1000 + self.offset_us;
        let out = match self.last_us {
            Some(last) if raw <= last as i64 || raw as u64 > last + MAX_JUMP_US => {
                let next = last + self.nominal_frame_us;
                self.offset_us += next as i64 - raw;
                self.rebases += 1;
                next
            }
            // The first timestamp sets a positive base; later ones stay above it.
            _ => raw.max(0) as u64,
        };
        self.last_us = Some(out);
        out
    }
}

/// Counters for the log line at the end of a stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Video frames given to the segmenter.
    pub video_frames: u64,
    /// Audio frames given to the segmenter.
    pub audio_frames: u64,
    /// Frames dropped: video before the first keyframe, or a track without a sequence header.
    pub dropped_frames: u64,
    /// Timestamp discontinuities absorbed (both tracks).
    pub rebases: u32,
    /// Init segments produced.
    pub init_segments: u32,
    /// Media segments produced.
    pub segments: u64,
}

/// One published stream. Push tags, then poll outputs until `None`.
#[derive(Debug)]
pub struct Pipeline {
    video_config: Option<VideoTrackConfig>,
    audio_config: Option<AudioTrackConfig>,
    segmenter: Option<Segmenter>,
    video_clock: Clock,
    audio_clock: Clock,
    seen_keyframe: bool,
    outputs: VecDeque<Output>,
    stats: Stats,
    /// Arrival time and decode timestamp (µs, own timeline) of each video frame not yet in an
    /// output segment: for the tag-to-segment latency.
    arrivals: VecDeque<(u64, Instant)>,
    latencies: Vec<Duration>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    /// An empty stream.
    pub fn new() -> Self {
        Pipeline {
            video_config: None,
            audio_config: None,
            segmenter: None,
            video_clock: Clock::new(33_333),
            audio_clock: Clock::new(21_333),
            seen_keyframe: false,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            arrivals: VecDeque::new(),
            latencies: Vec::new(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.rebases = self.video_clock.rebases + self.audio_clock.rebases;
        s
    }

    /// For each video frame in a finished segment: the time from its tag's arrival (as given to
    /// [`Pipeline::push_video`]) to the segment's completion (as given to [`Pipeline::poll`]).
    pub fn latencies(&self) -> &[Duration] {
        &self.latencies
    }

    /// A video message body, arrived at `arrived`.
    pub fn push_video(
        &mut self,
        timestamp_ms: u32,
        body: &[u8],
        arrived: Instant,
    ) -> Result<(), IngestError> {
        match parse_video(body)? {
            VideoTag::Ignored => Ok(()),
            VideoTag::SequenceHeader(avcc) => self.set_video_config(avcc),
            VideoTag::Frame {
                keyframe,
                composition_ms,
                data,
            } => {
                if self.video_config.is_none() || (!keyframe && !self.seen_keyframe) {
                    self.stats.dropped_frames += 1;
                    return Ok(());
                }
                self.start_if_needed()?;
                let Some(seg) = self.segmenter.as_mut() else {
                    return Ok(());
                };
                if seg.muxer().video().is_none() {
                    self.stats.dropped_frames += 1; // tracks were fixed without video
                    return Ok(());
                }
                let dts = self.video_clock.map(timestamp_ms);
                let frame = EncodedFrame {
                    data: data.to_vec(),
                    timestamp_us: dts,
                    duration_us: 0,
                    keyframe,
                };
                seg.push_video_reordered(frame, i64::from(composition_ms) * 1000)?;
                self.seen_keyframe = true;
                self.stats.video_frames += 1;
                self.arrivals.push_back((dts, arrived));
                Ok(())
            }
        }
    }

    /// An audio message body.
    pub fn push_audio(&mut self, timestamp_ms: u32, body: &[u8]) -> Result<(), IngestError> {
        match parse_audio(body)? {
            AudioTag::SequenceHeader(asc) => {
                let config = AudioTrackConfig::aac(asc)?;
                if self.audio_config.as_ref() != Some(&config) {
                    self.audio_config = Some(config);
                    self.reconfigure()?;
                }
                Ok(())
            }
            AudioTag::Frame(data) => {
                if self.audio_config.is_none() {
                    self.stats.dropped_frames += 1;
                    return Ok(());
                }
                self.start_if_needed()?;
                let Some(seg) = self.segmenter.as_mut() else {
                    return Ok(());
                };
                if seg.muxer().audio().is_none() {
                    self.stats.dropped_frames += 1;
                    return Ok(());
                }
                let ts = self.audio_clock.map(timestamp_ms);
                seg.push_audio(EncodedFrame {
                    data: data.to_vec(),
                    timestamp_us: ts,
                    duration_us: 0,
                    keyframe: true,
                })?;
                self.stats.audio_frames += 1;
                Ok(())
            }
        }
    }

    /// The end of the stream: closes the last segment.
    pub fn finish(&mut self) {
        if let Some(seg) = self.segmenter.as_mut() {
            seg.flush();
        }
    }

    /// The next output, if any; `now` is when the caller takes it (for the latency figures).
    pub fn poll(&mut self, now: Instant) -> Option<Output> {
        self.drain_segmenter();
        let out = self.outputs.pop_front()?;
        if let (Output::Segment(s), Some(origin)) = (&out, self.segmenter.as_ref()?.origin_us()) {
            let end = origin + s.pts_us + u64::from(s.duration_us);
            while let Some(&(dts, at)) = self.arrivals.front() {
                if dts >= end {
                    break;
                }
                self.latencies.push(now.saturating_duration_since(at));
                self.arrivals.pop_front();
            }
        }
        Some(out)
    }

    /// Moves finished segments to the output queue, behind what is already there.
    fn drain_segmenter(&mut self) {
        if let Some(seg) = self.segmenter.as_mut() {
            while let Some(s) = seg.poll_segment() {
                self.stats.segments += 1;
                self.outputs.push_back(Output::Segment(s));
            }
        }
    }

    fn set_video_config(&mut self, avcc: &[u8]) -> Result<(), IngestError> {
        let config = video_config(avcc)?;
        if self.video_config.as_ref() != Some(&config) {
            self.video_config = Some(config);
            self.reconfigure()?;
        }
        Ok(())
    }

    /// A changed configuration after the tracks are fixed: switch muxers, new init segment.
    fn reconfigure(&mut self) -> Result<(), IngestError> {
        let Some(seg) = self.segmenter.as_mut() else {
            return Ok(());
        };
        let video = seg.muxer().video().and(self.video_config.clone());
        let audio = seg.muxer().audio().and(self.audio_config.clone());
        let muxer = Fmp4Muxer::new(video, audio)?;
        seg.set_muxer(muxer.clone())?;
        // set_muxer flushed the segments of the old configuration: they go out before the new
        // init segment.
        self.drain_segmenter();
        self.push_init(&muxer);
        Ok(())
    }

    fn start_if_needed(&mut self) -> Result<(), IngestError> {
        if self.segmenter.is_some() {
            return Ok(());
        }
        let muxer = Fmp4Muxer::new(self.video_config.clone(), self.audio_config.clone())?;
        self.push_init(&muxer);
        self.segmenter = Some(Segmenter::new(muxer, DEFAULT_TARGET_DURATION_US));
        Ok(())
    }

    fn push_init(&mut self, muxer: &Fmp4Muxer) {
        self.stats.init_segments += 1;
        self.outputs.push_back(Output::Init {
            index: self.stats.init_segments,
            data: muxer.init_segment(),
            mime: muxer.mime_type(),
        });
    }
}

/// The video track from an AVCDecoderConfigurationRecord: codec string from its profile and
/// level bytes, picture size from its first SPS.
fn video_config(avcc: &[u8]) -> Result<VideoTrackConfig, IngestError> {
    let bad = IngestError::BadVideoConfig;
    if avcc.len() < 8 || avcc[5] & 0x1f == 0 {
        return Err(bad("avcC too short or without SPS"));
    }
    let len = usize::from(u16::from_be_bytes([avcc[6], avcc[7]]));
    let sps = avcc.get(8..8 + len).ok_or(bad("truncated SPS"))?;
    let (width, height) = picture_size(sps).map_err(bad)?;
    let config = VideoTrackConfig {
        codec: format!("avc1.{:02x}{:02x}{:02x}", avcc[1], avcc[2], avcc[3]),
        width,
        height,
        avcc: avcc.to_vec(),
    };
    // Validate now (the whole record), so a bad header fails here and not at the first frame.
    Fmp4Muxer::new(Some(config.clone()), None)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_absorbs_jumps_and_restarts() {
        let mut c = Clock::new(33_333);
        assert_eq!(c.map(5000), 5_000_000);
        assert_eq!(c.map(5033), 5_033_000);
        // Encoder restart: back to 0, continues one frame later.
        assert_eq!(c.map(0), 5_066_333);
        assert_eq!(c.map(33), 5_099_333);
        // A jump of a minute ahead.
        assert_eq!(c.map(60_033), 5_132_666);
        assert_eq!(c.rebases, 2);
    }

    #[test]
    fn frames_without_headers_are_dropped_and_garbage_is_an_error() {
        let mut p = Pipeline::new();
        let now = Instant::now();
        p.push_video(0, &[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65], now)
            .unwrap();
        p.push_audio(0, &[0xaf, 1, 1, 2]).unwrap();
        assert_eq!(p.stats().dropped_frames, 2);
        assert!(p.poll(now).is_none());
        assert!(matches!(
            p.push_video(0, &[0x17, 0, 0, 0, 0, 1, 2, 3], now),
            Err(IngestError::BadVideoConfig(_))
        ));
        assert!(p.push_audio(0, &[0xaf, 0, 0xff]).is_err());
    }
}
