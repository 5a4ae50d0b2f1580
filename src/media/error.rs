//! Errors of the packaging layer. Every bad input (a malformed avcC, a frame out of order, an
//! Annex-B buffer where length-prefixed NAL units were expected) is reported, never panicked on:
//! the broadcaster page can show it and keep encoding.

use thiserror::Error;

/// Which elementary stream an error or frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// The H.264 video track.
    Video,
    /// The Opus audio track.
    Audio,
}

impl core::fmt::Display for TrackKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
        })
    }
}

/// What went wrong while configuring the muxer or feeding frames to the segmenter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaError {
    /// Neither a video nor an audio track was configured: there is nothing to package.
    #[error("no track configured: give a video or an audio track (or both)")]
    NoTracks,
    /// The AVCDecoderConfigurationRecord (`decoderConfig.description`) is malformed.
    #[error("bad avcC: {reason}")]
    BadAvcc {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The codec string is not an `avc1.PPCCLL` string.
    #[error("bad codec string {codec:?}: expected avc1.PPCCLL (six hex digits)")]
    BadCodec {
        /// The string given.
        codec: String,
    },
    /// Width or height is zero.
    #[error("bad video size {width}x{height}")]
    BadVideoSize {
        /// Width in pixels.
        width: u16,
        /// Height in pixels.
        height: u16,
    },
    /// Only mono and stereo Opus (channel mapping family 0) are supported.
    #[error("unsupported Opus channel count {channels} (1 or 2 supported)")]
    UnsupportedChannels {
        /// The count given.
        channels: u8,
    },
    /// Opus sample rate of zero.
    #[error("bad audio sample rate {sample_rate}")]
    BadSampleRate {
        /// The rate given.
        sample_rate: u32,
    },
    /// An `OpusHead` header (as some encoders put in `decoderConfig.description`) is malformed.
    #[error("bad OpusHead: {reason}")]
    BadOpusHead {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An AAC AudioSpecificConfig (the FLV AAC sequence header) is malformed or unsupported.
    #[error("bad AAC AudioSpecificConfig: {reason}")]
    BadAudioSpecificConfig {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A composition time offset (presentation minus decode time) beyond ±35 minutes: the
    /// signed 32-bit `trun` field in microseconds cannot hold it, and no encoder reorders so far.
    #[error("video composition offset {offset_us} µs at {timestamp_us} µs is out of range")]
    BadCompositionOffset {
        /// The frame's decode timestamp.
        timestamp_us: u64,
        /// The offset given.
        offset_us: i64,
    },
    /// [`crate::media::Segmenter::set_muxer`] was given a muxer with a different set of tracks:
    /// the track ids, and so every viewer's `SourceBuffer`, would change mid-stream.
    #[error("the new muxer has different tracks than the current one")]
    TrackLayoutChanged,
    /// A frame was pushed for a track the muxer was not configured with.
    #[error("no {track} track configured")]
    NoSuchTrack {
        /// The track the frame was pushed for.
        track: TrackKind,
    },
    /// A frame's timestamp is not after the previous frame's of the same track. Video frames
    /// carry decode timestamps (WebCodecs H.264 has no B-frames, so there they equal the
    /// presentation ones; reordered streams go through `push_video_reordered`).
    #[error("{track} timestamp {got_us} µs is not after the previous {prev_us} µs")]
    NonMonotonicTimestamp {
        /// The track.
        track: TrackKind,
        /// The previous frame's timestamp.
        prev_us: u64,
        /// The rejected frame's timestamp.
        got_us: u64,
    },
    /// The first video frame must be a keyframe: nothing before it could be decoded.
    #[error("first video frame (at {timestamp_us} µs) is not a keyframe")]
    FirstFrameNotKeyframe {
        /// The rejected frame's timestamp.
        timestamp_us: u64,
    },
    /// A frame's payload is empty, too large, or (video) not a sequence of length-prefixed NAL
    /// units matching the avcC's length size (for example an Annex-B buffer).
    #[error("bad {track} frame at {timestamp_us} µs: {reason}")]
    BadFrame {
        /// The track.
        track: TrackKind,
        /// The rejected frame's timestamp.
        timestamp_us: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}
