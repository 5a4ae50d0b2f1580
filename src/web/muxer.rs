//! The page's packager: WebCodecs output in, an init segment and signed-ready media segments out.
//!
//! The encoders tell their configuration only with their first output (`decoderConfig` in the
//! output metadata), and audio and video start at different moments, so this wrapper holds the
//! frames that arrive before every expected track is configured and builds the
//! [`Fmp4Muxer`] + [`Segmenter`] once they are. A changed configuration (for example a new
//! resolution) gives a new init segment while the timeline and segment numbers continue.
//!
//! Timestamps: the page stamps frames with their capture wall clock (µs since the Unix epoch).
//! The segmenter's fMP4 timeline starts at 0 at its origin (the first video keyframe, or the
//! first audio frame of an audio-only stream); every segment handed out carries both the wall
//! clock time of its first frame (`ptsUs`, what is published and signed) and its time on the
//! fMP4 timeline (`mediaPtsUs`), and [`Muxer::origin_us`] links the two.

use crate::media::{
    AudioTrackConfig, EncodedFrame, Fmp4Muxer, MediaError, MediaSegment, Segmenter, TrackKind,
    VideoTrackConfig,
};
use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

/// Frames kept while waiting for the encoders' configurations: at 30 fps plus 50 Opus packets a
/// second, about 7 s. An encoder that never reports its configuration must not grow the page's
/// memory without bound.
const MAX_WAITING_FRAMES: usize = 600;

/// Opus' decoding rate, whatever rate the encoder was fed.
const OPUS_RATE: u32 = 48_000;

/// Largest integer a JS number holds exactly (2^53 − 1); wall-clock µs stay far below it.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Why the packager refused an input. Shown in the broadcaster page; the page keeps encoding.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MuxerError {
    /// A timestamp or duration that is negative, fractional beyond µs, NaN or too large.
    #[error("{what} {value} is not a whole number of microseconds in 0..2^53")]
    BadTime {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A frame for a track this muxer was created without.
    #[error("no {0} track was announced when the muxer was created")]
    TrackNotExpected(TrackKind),
    /// Too many frames arrived before the encoders reported their configurations.
    #[error("{MAX_WAITING_FRAMES} frames arrived before every track was configured")]
    ConfigNeverCame,
    /// The packaging layer rejected the configuration or a frame.
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// Packages WebCodecs output into fMP4 (H.264 + Opus) init and media segments.
#[wasm_bindgen]
pub struct Muxer {
    target_us: u32,
    want_video: bool,
    want_audio: bool,
    video: Option<VideoTrackConfig>,
    audio: Option<AudioTrackConfig>,
    segmenter: Option<Segmenter>,
    /// Frames that came before every expected track was configured, in arrival order.
    waiting: Vec<(TrackKind, EncodedFrame)>,
    /// The init segment not yet taken by the page: `(mime, bytes)`.
    init: Option<(String, Vec<u8>)>,
}

#[wasm_bindgen]
impl Muxer {
    /// A muxer closing segments after `segment_us` µs, for a stream that will have a video
    /// track, an audio track, or both (`video`, `audio`). Packaging starts once each announced
    /// track is configured.
    #[wasm_bindgen(constructor)]
    pub fn new(segment_us: u32, video: bool, audio: bool) -> Result<Muxer, JsError> {
        if !video && !audio {
            return Err(MuxerError::Media(MediaError::NoTracks).into());
        }
        Ok(Muxer {
            target_us: segment_us.max(1),
            want_video: video,
            want_audio: audio,
            video: None,
            audio: None,
            segmenter: None,
            waiting: Vec::new(),
            init: None,
        })
    }

    /// The video track from `VideoEncoder` output metadata: `decoderConfig.codec`, the coded
    /// size, and `decoderConfig.description` (the avcC; the encoder must use `avc: {format:
    /// "avc"}`). Giving the same configuration again does nothing. Returns the segments a change
    /// of configuration finished (publish them before the new init segment from
    /// [`Muxer::take_init`]).
    #[wasm_bindgen(js_name = setVideoConfig)]
    pub fn set_video_config(
        &mut self,
        codec: String,
        width: u16,
        height: u16,
        description: Vec<u8>,
    ) -> Result<Array, JsError> {
        if !self.want_video {
            return Err(MuxerError::TrackNotExpected(TrackKind::Video).into());
        }
        let config = VideoTrackConfig {
            codec,
            width,
            height,
            avcc: description,
        };
        if self.video.as_ref() == Some(&config) {
            return Ok(Array::new());
        }
        self.reconfigure(Some(config), self.audio.clone())
            .map_err(JsError::from)
    }

    /// The audio track from `AudioEncoder` (Opus): the sample rate and channel count it was
    /// configured with, and `decoderConfig.description` when the encoder gives one (an
    /// `OpusHead`, whose pre-skip is then used). Returns the segments a change of configuration
    /// finished, like [`Muxer::set_video_config`].
    #[wasm_bindgen(js_name = setAudioConfig)]
    pub fn set_audio_config(
        &mut self,
        sample_rate: u32,
        channels: u8,
        description: Option<Vec<u8>>,
    ) -> Result<Array, JsError> {
        if !self.want_audio {
            return Err(MuxerError::TrackNotExpected(TrackKind::Audio).into());
        }
        let mut config = match description {
            Some(head) if !head.is_empty() => {
                AudioTrackConfig::from_opus_head(&head).map_err(MuxerError::from)?
            }
            _ => AudioTrackConfig::new(sample_rate, channels),
        };
        // The capture rate (44.1 kHz from many files and microphones) is informational for Opus,
        // which always decodes at 48 kHz; Chromium's MP4 parser refuses a `dOps` whose input
        // rate differs from the sample entry's, so the track always says 48 kHz.
        config.sample_rate = OPUS_RATE;
        if self.audio.as_ref() == Some(&config) {
            return Ok(Array::new());
        }
        self.reconfigure(self.video.clone(), Some(config))
            .map_err(JsError::from)
    }

    /// Adds an `EncodedVideoChunk` (its bytes, `timestamp`, `duration` or 0, `type == "key"`).
    /// Returns the segments it finished: `[{seq, ptsUs, mediaPtsUs, durationUs, keyframe,
    /// data}]`.
    #[wasm_bindgen(js_name = pushVideo)]
    pub fn push_video(
        &mut self,
        timestamp_us: f64,
        duration_us: f64,
        keyframe: bool,
        data: Vec<u8>,
    ) -> Result<Array, JsError> {
        let frame = frame(timestamp_us, duration_us, keyframe, data)?;
        self.push(TrackKind::Video, frame).map_err(JsError::from)
    }

    /// Adds an `EncodedAudioChunk` (one Opus packet). Returns the segments it finished.
    #[wasm_bindgen(js_name = pushAudio)]
    pub fn push_audio(
        &mut self,
        timestamp_us: f64,
        duration_us: f64,
        data: Vec<u8>,
    ) -> Result<Array, JsError> {
        let frame = frame(timestamp_us, duration_us, true, data)?;
        self.push(TrackKind::Audio, frame).map_err(JsError::from)
    }

    /// The init segment made since the last call, as `{mime, data}`, or `undefined`. Publish it
    /// after the segments returned by the call that made it (those belong to the previous
    /// configuration) and before any segment returned later.
    #[wasm_bindgen(js_name = takeInit)]
    pub fn take_init(&mut self) -> JsValue {
        match self.init.take() {
            Some((mime, data)) => {
                let obj = Object::new();
                set(&obj, "mime", &JsValue::from_str(&mime));
                set(&obj, "data", &Uint8Array::from(data.as_slice()));
                obj.into()
            }
            None => JsValue::UNDEFINED,
        }
    }

    /// Closes the open segment now and returns every finished segment (end of the broadcast).
    pub fn flush(&mut self) -> Array {
        let out = Array::new();
        if let Some(seg) = self.segmenter.as_mut() {
            seg.flush();
        }
        self.drain(&out);
        out
    }

    /// The MIME type for `MediaSource.isTypeSupported` / `addSourceBuffer`, once configured.
    #[wasm_bindgen(getter, js_name = mimeType)]
    pub fn mime_type(&self) -> Option<String> {
        self.segmenter.as_ref().map(|s| s.muxer().mime_type())
    }

    /// Wall-clock µs of time 0 on the fMP4 timeline, once the first frame is packaged.
    #[wasm_bindgen(getter, js_name = originUs)]
    pub fn origin_us(&self) -> Option<f64> {
        self.segmenter
            .as_ref()
            .and_then(Segmenter::origin_us)
            .map(|o| o as f64)
    }

    /// Whether every announced track is configured and frames are being packaged.
    #[wasm_bindgen(getter)]
    pub fn ready(&self) -> bool {
        self.segmenter.is_some()
    }
}

impl Muxer {
    /// Builds the muxer once every announced track is known. A change after that goes to the
    /// running segmenter ([`Segmenter::set_muxer`]): it finishes the open segment and keeps the
    /// timeline and sequence numbers going, so viewers append the new init and carry on.
    fn reconfigure(
        &mut self,
        video: Option<VideoTrackConfig>,
        audio: Option<AudioTrackConfig>,
    ) -> Result<Array, MuxerError> {
        let complete =
            (!self.want_video || video.is_some()) && (!self.want_audio || audio.is_some());
        let finished = Array::new();
        if complete {
            let muxer = Fmp4Muxer::new(video.clone(), audio.clone())?;
            let init = (muxer.mime_type(), muxer.init_segment());
            match self.segmenter.as_mut() {
                Some(seg) => seg.set_muxer(muxer)?,
                None => self.segmenter = Some(Segmenter::new(muxer, self.target_us)),
            }
            // Segments of the old configuration go out before the new init segment.
            self.drain(&finished);
            self.init = Some(init);
        }
        self.video = video;
        self.audio = audio;
        if complete {
            // Frames held while waiting: a bad one is dropped, the rest still go in.
            for (kind, frame) in std::mem::take(&mut self.waiting) {
                let _ = self.feed(kind, frame);
            }
        }
        Ok(finished)
    }

    fn push(&mut self, kind: TrackKind, frame: EncodedFrame) -> Result<Array, MuxerError> {
        let expected = match kind {
            TrackKind::Video => self.want_video,
            TrackKind::Audio => self.want_audio,
        };
        if !expected {
            return Err(MuxerError::TrackNotExpected(kind));
        }
        let out = Array::new();
        if self.segmenter.is_none() {
            if self.waiting.len() >= MAX_WAITING_FRAMES {
                return Err(MuxerError::ConfigNeverCame);
            }
            self.waiting.push((kind, frame));
            return Ok(out);
        }
        self.feed(kind, frame)?;
        self.drain(&out);
        Ok(out)
    }

    /// Gives one frame to the running segmenter.
    fn feed(&mut self, kind: TrackKind, frame: EncodedFrame) -> Result<(), MuxerError> {
        let Some(seg) = self.segmenter.as_mut() else {
            return Ok(());
        };
        match kind {
            TrackKind::Video => seg.push_video(frame)?,
            TrackKind::Audio => seg.push_audio(frame)?,
        }
        Ok(())
    }

    fn drain(&mut self, out: &Array) {
        if let Some(seg) = self.segmenter.as_mut() {
            let origin = seg.origin_us().unwrap_or(0);
            while let Some(s) = seg.poll_segment() {
                out.push(&segment_object(&s, origin));
            }
        }
    }
}

fn micros(what: &'static str, value: f64) -> Result<u64, MuxerError> {
    if value.is_finite() && (0.0..=MAX_SAFE_INTEGER).contains(&value) && value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(MuxerError::BadTime { what, value })
    }
}

fn frame(
    timestamp_us: f64,
    duration_us: f64,
    keyframe: bool,
    data: Vec<u8>,
) -> Result<EncodedFrame, JsError> {
    let timestamp_us = micros("timestamp", timestamp_us)?;
    let duration_us = micros("duration", duration_us)?;
    let duration_us = u32::try_from(duration_us).map_err(|_| MuxerError::BadTime {
        what: "duration",
        value: duration_us as f64,
    })?;
    Ok(EncodedFrame {
        data,
        timestamp_us,
        duration_us,
        keyframe,
    })
}

fn segment_object(s: &MediaSegment, origin_us: u64) -> JsValue {
    let obj = Object::new();
    set(&obj, "seq", &JsValue::from_f64(s.seq as f64));
    set(
        &obj,
        "ptsUs",
        &JsValue::from_f64(origin_us.saturating_add(s.pts_us) as f64),
    );
    set(&obj, "mediaPtsUs", &JsValue::from_f64(s.pts_us as f64));
    set(
        &obj,
        "durationUs",
        &JsValue::from_f64(f64::from(s.duration_us)),
    );
    set(&obj, "keyframe", &JsValue::from_bool(s.keyframe));
    set(&obj, "data", &Uint8Array::from(s.data.as_slice()));
    obj.into()
}

fn set(obj: &Object, key: &str, value: &JsValue) {
    // Reflect.set on a fresh plain object cannot fail.
    let _ = Reflect::set(obj, &JsValue::from_str(key), value);
}
