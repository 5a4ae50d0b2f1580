//! FLV tag bodies, as RTMP carries them in video and audio messages (Adobe FLV spec v10.1
//! §E.4.2 and §E.4.3.1, plus the "Enhanced RTMP" extended header): which codec, whether it is a
//! sequence header or a frame, and the frame's composition time.
//!
//! Only H.264 and AAC are supported. Anything else gets an error naming the OBS setting to
//! change, since that is where a streamer fixes it.

use std::fmt;

/// What to change in OBS when the video codec is not H.264.
pub const OBS_VIDEO_HINT: &str =
    "set OBS Settings > Output > Encoder to x264 or NVENC H.264 (swarmcast ingests H.264 only)";
/// What to change in OBS when the audio codec is not AAC.
pub const OBS_AUDIO_HINT: &str =
    "set OBS Settings > Output > Audio Encoder to AAC (swarmcast ingests AAC only)";

/// A video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// AVCPacketType 0: the AVCDecoderConfigurationRecord (SPS, PPS).
    SequenceHeader(&'a [u8]),
    /// AVCPacketType 1: one frame of length-prefixed NAL units.
    Frame {
        /// Frame type 1 (keyframe).
        keyframe: bool,
        /// Presentation minus decode time, milliseconds (signed 24-bit).
        composition_ms: i32,
        /// The NAL units.
        data: &'a [u8],
    },
    /// AVCPacketType 2, or a video info/command frame: nothing to package.
    Ignored,
}

/// An audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// AACPacketType 0: the AudioSpecificConfig.
    SequenceHeader(&'a [u8]),
    /// AACPacketType 1: one raw AAC frame.
    Frame(&'a [u8]),
}

/// Why a tag cannot be ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagError {
    /// A codec other than H.264 / AAC; the message says what to change in OBS.
    UnsupportedCodec {
        /// The codec seen, e.g. "HEVC (enhanced RTMP)" or "MP3".
        codec: String,
        /// The setting to change.
        hint: &'static str,
    },
    /// The body is too short or has a reserved value.
    Malformed(&'static str),
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::UnsupportedCodec { codec, hint } => {
                write!(f, "unsupported codec {codec}: {hint}")
            }
            TagError::Malformed(why) => write!(f, "malformed FLV tag: {why}"),
        }
    }
}

impl std::error::Error for TagError {}

/// Parses a video message body.
pub fn parse_video(body: &[u8]) -> Result<VideoTag<'_>, TagError> {
    let first = *body.first().ok_or(TagError::Malformed("empty video tag"))?;
    if first & 0x80 != 0 {
        // Enhanced RTMP: IsExHeader, then a FourCC naming the codec.
        let fourcc = body
            .get(1..5)
            .ok_or(TagError::Malformed("truncated enhanced-RTMP video header"))?;
        let codec = match fourcc {
            b"hvc1" => "HEVC (enhanced RTMP)".to_owned(),
            b"av01" => "AV1 (enhanced RTMP)".to_owned(),
            b"vp09" => "VP9 (enhanced RTMP)".to_owned(),
            b"avc1" => "H.264 in enhanced-RTMP framing".to_owned(),
            other => format!("{} (enhanced RTMP)", String::from_utf8_lossy(other)),
        };
        return Err(TagError::UnsupportedCodec {
            codec,
            hint: OBS_VIDEO_HINT,
        });
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    if frame_type == 5 {
        return Ok(VideoTag::Ignored); // video info / command frame
    }
    if codec_id != 7 {
        let codec = match codec_id {
            2 => "Sorenson H.263",
            3 => "Screen video",
            4 => "VP6",
            5 => "VP6 with alpha",
            6 => "Screen video v2",
            12 => "HEVC (FLV codec id 12)",
            _ => "unknown",
        };
        return Err(TagError::UnsupportedCodec {
            codec: format!("{codec} (codec id {codec_id})"),
            hint: OBS_VIDEO_HINT,
        });
    }
    if body.len() < 5 {
        return Err(TagError::Malformed("AVC video tag shorter than 5 bytes"));
    }
    let cts = (i32::from(body[2]) << 16) | (i32::from(body[3]) << 8) | i32::from(body[4]);
    let composition_ms = (cts << 8) >> 8; // sign-extend 24 bits
    let data = &body[5..];
    match body[1] {
        0 => Ok(VideoTag::SequenceHeader(data)),
        1 if data.is_empty() => Ok(VideoTag::Ignored),
        1 => Ok(VideoTag::Frame {
            keyframe: frame_type == 1,
            composition_ms,
            data,
        }),
        2 => Ok(VideoTag::Ignored), // end of sequence
        _ => Err(TagError::Malformed("reserved AVCPacketType")),
    }
}

/// Parses an audio message body.
pub fn parse_audio(body: &[u8]) -> Result<AudioTag<'_>, TagError> {
    let first = *body.first().ok_or(TagError::Malformed("empty audio tag"))?;
    let format = first >> 4;
    if format != 10 {
        let codec = match format {
            0 | 3 => "linear PCM",
            1 => "ADPCM",
            2 | 14 => "MP3",
            4..=6 => "Nellymoser",
            7 | 8 => "G.711",
            9 => "an enhanced-RTMP codec (Opus, FLAC, AC-3...)",
            11 => "Speex",
            _ => "unknown",
        };
        return Err(TagError::UnsupportedCodec {
            codec: format!("{codec} (sound format {format})"),
            hint: OBS_AUDIO_HINT,
        });
    }
    let packet_type = *body
        .get(1)
        .ok_or(TagError::Malformed("AAC audio tag shorter than 2 bytes"))?;
    let data = &body[2..];
    match packet_type {
        0 => Ok(AudioTag::SequenceHeader(data)),
        1 if data.is_empty() => Err(TagError::Malformed("empty AAC frame")),
        1 => Ok(AudioTag::Frame(data)),
        _ => Err(TagError::Malformed("reserved AACPacketType")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avc_frames_and_headers() {
        let key = [0x17, 1, 0xff, 0xff, 0xdf, 0, 0, 0, 1, 0x65];
        assert_eq!(
            parse_video(&key),
            Ok(VideoTag::Frame {
                keyframe: true,
                composition_ms: -33,
                data: &key[5..]
            })
        );
        assert_eq!(
            parse_video(&[0x17, 0, 0, 0, 0, 1, 2]),
            Ok(VideoTag::SequenceHeader(&[1, 2][..]))
        );
        let inter = [0x27, 1, 0, 0, 66, 0, 0, 0, 1, 0x41];
        assert!(matches!(
            parse_video(&inter),
            Ok(VideoTag::Frame {
                keyframe: false,
                composition_ms: 66,
                ..
            })
        ));
        assert!(matches!(parse_video(&[]), Err(TagError::Malformed(_))));
        assert!(matches!(
            parse_video(&[0x17, 1]),
            Err(TagError::Malformed(_))
        ));
    }

    #[test]
    fn unsupported_codecs_name_the_obs_setting() {
        for body in [
            &[0x90, b'h', b'v', b'c', b'1'][..],
            b"\x90av01",
            b"\x90vp09",
            &[0x1c, 0],
        ] {
            let err = parse_video(body).unwrap_err();
            assert!(err.to_string().contains("x264 or NVENC H.264"), "{err}");
        }
        for body in [&[0x2f, 0][..], &[0xb6, 0], &[0x9f, 0]] {
            let err = parse_audio(body).unwrap_err();
            assert!(err.to_string().contains("Audio Encoder to AAC"), "{err}");
        }
        assert!(parse_audio(&[0x2f])
            .unwrap_err()
            .to_string()
            .contains("MP3"));
        assert!(parse_audio(&[0xb6])
            .unwrap_err()
            .to_string()
            .contains("Speex"));
    }

    #[test]
    fn aac_frames_and_headers() {
        assert_eq!(
            parse_audio(&[0xaf, 0, 0x11, 0x90]),
            Ok(AudioTag::SequenceHeader(&[0x11, 0x90][..]))
        );
        assert_eq!(parse_audio(&[0xaf, 1, 9]), Ok(AudioTag::Frame(&[9][..])));
        assert!(parse_audio(&[0xaf]).is_err());
        assert!(parse_audio(&[0xaf, 1]).is_err());
    }
}
