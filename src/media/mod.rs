//! Packaging: encoded frames in, init and media segments that MSE plays out.
//!
//! The broadcaster page feeds WebCodecs output through here: H.264 from `VideoEncoder`
//! (`avc: {format: "avc"}`: length-prefixed NAL units, avcC in `decoderConfig.description`) and
//! Opus from `AudioEncoder`, with microsecond timestamps. Out come a fragmented MP4 init segment
//! and a stream of `moof`+`mdat` media segments, each starting at a keyframe or cut at the
//! target duration, with continuous timestamps.
//!
//! The native ingest (`swarmcast-ingest`, RTMP from OBS/ffmpeg) feeds the same code with
//! x264 output that has B-frames ([`Segmenter::push_video_reordered`]: decode order plus a
//! composition offset per frame, written as signed `trun` offsets) and AAC
//! ([`AudioTrackConfig::aac`]: an `mp4a` track, codec string `mp4a.40.2`).
//!
//! ```text
//! let muxer = Fmp4Muxer::new(Some(VideoTrackConfig { codec, width, height, avcc }),
//!                            Some(AudioTrackConfig::new(48_000, 2)))?;
//! let mime = muxer.mime_type();          // video/mp4; codecs="avc1.42001f,opus"
//! let init = muxer.init_segment();       // ftyp + moov, appended once
//! let mut seg = Segmenter::new(muxer, DEFAULT_TARGET_DURATION_US);
//! seg.push_video(frame)?;  seg.push_audio(packet)?;   // as the encoders output them
//! while let Some(s) = seg.poll_segment() { /* sign, publish s.data (seq, pts_us, keyframe) */ }
//! seg.flush();                           // at the end: close the last segment
//! ```
//!
//! Everything is plain Rust without I/O, so it builds for wasm32 and is tested natively;
//! [`parse`] reads the result back (tests, and the player checking what it appends).

mod boxes;
mod config;
mod error;
mod mux;
pub mod parse;
mod segmenter;

pub use config::{AudioCodec, AudioTrackConfig, VideoTrackConfig};
pub use error::{MediaError, TrackKind};
pub use mux::{Fmp4Muxer, AUDIO_TIMESCALE, VIDEO_TIMESCALE};
pub use segmenter::{
    EncodedFrame, MediaSegment, Segmenter, DEFAULT_TARGET_DURATION_US, MAX_FRAME_BYTES,
};
