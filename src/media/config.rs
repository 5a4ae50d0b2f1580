//! Track configurations, as the browser's encoders describe their output.

use super::error::MediaError;

/// The H.264 track, from `VideoEncoder`'s `decoderConfig` (configured with `avc: {format: "avc"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrackConfig {
    /// The codec string, e.g. `avc1.42001f` (`decoderConfig.codec`). Goes into the MIME type.
    pub codec: String,
    /// Coded width in pixels.
    pub width: u16,
    /// Coded height in pixels.
    pub height: u16,
    /// The AVCDecoderConfigurationRecord (`decoderConfig.description`): SPS and PPS, and the size
    /// of the NAL length prefixes the frames use.
    pub avcc: Vec<u8>,
}

/// The Opus track, from `AudioEncoder` (always decoded at 48 kHz).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrackConfig {
    /// The sample rate the encoder was fed (informational in the `dOps` box; the track itself
    /// always runs at 48 kHz as Opus does).
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo).
    pub channels: u8,
    /// Encoder delay in 48 kHz samples, which the decoder drops from the start (`dOps` PreSkip).
    /// libopus (used by Chromium's `AudioEncoder`) has 312 samples of lookahead.
    pub pre_skip: u16,
}

impl AudioTrackConfig {
    /// The pre-skip of libopus at 48 kHz (2.5 ms + 4 ms of lookahead), what Chromium's
    /// `AudioEncoder` produces.
    pub const LIBOPUS_PRE_SKIP: u16 = 312;

    /// An Opus track with libopus' pre-skip.
    pub fn new(sample_rate: u32, channels: u8) -> Self {
        AudioTrackConfig {
            sample_rate,
            channels,
            pre_skip: Self::LIBOPUS_PRE_SKIP,
        }
    }

    /// Reads an `OpusHead` identification header (RFC 7845 §5.1), which an encoder may hand
    /// out as `decoderConfig.description`, so the pre-skip is the encoder's real one.
    pub fn from_opus_head(head: &[u8]) -> Result<Self, MediaError> {
        let bad = |reason| MediaError::BadOpusHead { reason };
        if head.len() < 19 {
            return Err(bad("shorter than 19 bytes"));
        }
        if &head[..8] != b"OpusHead" {
            return Err(bad("missing OpusHead magic"));
        }
        if head[8] >> 4 != 0 {
            return Err(bad("unsupported major version"));
        }
        if head[18] != 0 {
            return Err(bad("channel mapping family other than 0"));
        }
        let cfg = AudioTrackConfig {
            channels: head[9],
            pre_skip: u16::from_le_bytes([head[10], head[11]]),
            sample_rate: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<(), MediaError> {
        if !(1..=2).contains(&self.channels) {
            return Err(MediaError::UnsupportedChannels {
                channels: self.channels,
            });
        }
        if self.sample_rate == 0 {
            return Err(MediaError::BadSampleRate {
                sample_rate: self.sample_rate,
            });
        }
        Ok(())
    }
}

/// The parts of an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) the muxer checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AvcConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    /// Size in bytes (1, 2 or 4) of the length prefix before each NAL unit in a frame.
    pub nal_length_size: u8,
}

impl AvcConfig {
    /// Validates the record, walking every SPS and PPS, so a truncated or garbage description is
    /// caught when the track is configured rather than by the viewer's decoder.
    pub fn parse(avcc: &[u8]) -> Result<Self, MediaError> {
        let bad = |reason| MediaError::BadAvcc { reason };
        if avcc.len() < 7 {
            return Err(bad("shorter than 7 bytes"));
        }
        if avcc[0] != 1 {
            return Err(bad("configurationVersion is not 1"));
        }
        let nal_length_size = (avcc[4] & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(bad("NAL length size of 3 bytes is not allowed"));
        }
        let num_sps = avcc[5] & 0x1f;
        if num_sps == 0 {
            return Err(bad("no SPS"));
        }
        let mut pos = 6;
        let read_sets = |count: usize, pos: &mut usize, nal_type: u8| -> Result<(), MediaError> {
            for _ in 0..count {
                let len_bytes = avcc
                    .get(*pos..*pos + 2)
                    .ok_or(bad("truncated parameter set length"))?;
                let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
                *pos += 2;
                let set = avcc
                    .get(*pos..*pos + len)
                    .ok_or(bad("truncated parameter set"))?;
                if set.is_empty() || set[0] & 0x1f != nal_type {
                    return Err(bad("parameter set has the wrong NAL unit type"));
                }
                *pos += len;
            }
            Ok(())
        };
        read_sets(num_sps as usize, &mut pos, 7)?;
        let num_pps = *avcc.get(pos).ok_or(bad("truncated before PPS count"))? as usize;
        pos += 1;
        if num_pps == 0 {
            return Err(bad("no PPS"));
        }
        read_sets(num_pps, &mut pos, 8)?;
        // High profiles may append chroma/bit-depth fields and SPS extensions; they are kept as
        // given (the whole record is copied into the init segment).
        Ok(AvcConfig {
            profile: avcc[1],
            compatibility: avcc[2],
            level: avcc[3],
            nal_length_size,
        })
    }

    /// Checks that `data` is a sequence of NAL units each with a `nal_length_size` prefix and
    /// nothing left over: this rejects Annex-B input (start codes) and truncated frames.
    pub fn check_frame(&self, data: &[u8]) -> Result<(), &'static str> {
        if data.is_empty() {
            return Err("empty frame");
        }
        let n = self.nal_length_size as usize;
        let mut pos = 0usize;
        while pos < data.len() {
            let prefix = data
                .get(pos..pos + n)
                .ok_or("truncated NAL length prefix (Annex-B input?)")?;
            let len = prefix
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            if len == 0 {
                return Err("zero-length NAL unit (Annex-B input?)");
            }
            pos = pos
                .checked_add(n + len)
                .filter(|&end| end <= data.len())
                .ok_or("NAL unit runs past the end of the frame (Annex-B input?)")?;
        }
        Ok(())
    }
}

/// Checks that a codec string is `avc1.` followed by six hex digits. (`avc3`, parameter sets in
/// band, would need a different sample entry; WebCodecs' `avc` format gives them out of band.)
pub(crate) fn check_codec(codec: &str) -> Result<(), MediaError> {
    let ok = codec.len() == 11
        && codec.starts_with("avc1.")
        && codec[5..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(MediaError::BadCodec {
            codec: codec.to_owned(),
        })
    }
}
