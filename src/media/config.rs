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

/// The audio codec of a track.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AudioCodec {
    /// Opus, as the browser's `AudioEncoder` produces (`Opus` sample entry with `dOps`).
    #[default]
    Opus,
    /// AAC, as OBS/ffmpeg send over RTMP (`mp4a` sample entry with `esds`).
    Aac {
        /// The AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1): the AAC sequence header of an
        /// FLV stream, or the DecoderSpecificInfo of an MP4's `esds`. Copied into the `esds`.
        audio_specific_config: Vec<u8>,
        /// The audio object type it declares (2 = AAC-LC), for the `mp4a.40.N` codec string.
        object_type: u8,
    },
}

/// The audio track: Opus from `AudioEncoder` (always decoded at 48 kHz), or AAC from an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrackConfig {
    /// The sample rate the encoder was fed (for Opus informational in the `dOps` box, the track
    /// itself always runs at 48 kHz as Opus does; for AAC the track's timescale).
    pub sample_rate: u32,
    /// Opus: 1 (mono) or 2 (stereo); AAC: 1 to 7 (the channel configuration).
    pub channels: u8,
    /// Encoder delay in 48 kHz samples, which the decoder drops from the start (`dOps` PreSkip).
    /// libopus (used by Chromium's `AudioEncoder`) has 312 samples of lookahead. Opus only.
    pub pre_skip: u16,
    /// The codec; [`AudioCodec::Opus`] unless made by [`AudioTrackConfig::aac`].
    pub codec: AudioCodec,
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
            codec: AudioCodec::Opus,
        }
    }

    /// An AAC track from its AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), the payload of an
    /// FLV AAC sequence header. Reads the object type, sample rate and channel configuration
    /// from it, so a truncated or unsupported config fails before any segment exists.
    pub fn aac(audio_specific_config: &[u8]) -> Result<Self, MediaError> {
        let bad = |reason| MediaError::BadAudioSpecificConfig { reason };
        if audio_specific_config.len() < 2 {
            return Err(bad("shorter than 2 bytes"));
        }
        // 5 bits object type, 4 bits sampling frequency index, (24 bits explicit frequency if
        // the index is 15), 4 bits channel configuration.
        let bits = u64::from_be_bytes({
            let mut b = [0u8; 8];
            let n = audio_specific_config.len().min(8);
            b[..n].copy_from_slice(&audio_specific_config[..n]);
            b
        });
        let object_type = (bits >> 59) as u8;
        if object_type == 0 || object_type == 31 {
            return Err(bad("audio object type 0 or escaped (31) is not supported"));
        }
        let freq_index = ((bits >> 55) & 0xf) as usize;
        const RATES: [u32; 13] = [
            96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025,
            8_000, 7_350,
        ];
        let (sample_rate, channel_shift) = match freq_index {
            15 => {
                if audio_specific_config.len() < 5 {
                    return Err(bad("truncated explicit sampling frequency"));
                }
                (((bits >> 31) & 0xff_ffff) as u32, 27)
            }
            i if i < RATES.len() => (RATES[i], 51),
            _ => return Err(bad("reserved sampling frequency index")),
        };
        let channels = ((bits >> channel_shift) & 0xf) as u8;
        if !(1..=7).contains(&channels) {
            return Err(bad(
                "channel configuration 0 (in-band) or above 7 is not supported",
            ));
        }
        if sample_rate == 0 {
            return Err(MediaError::BadSampleRate { sample_rate });
        }
        Ok(AudioTrackConfig {
            sample_rate,
            channels,
            pre_skip: 0,
            codec: AudioCodec::Aac {
                audio_specific_config: audio_specific_config.to_vec(),
                object_type,
            },
        })
    }

    /// The MSE codec string of the track: `opus` or `mp4a.40.N` (RFC 6381 §3.3).
    pub fn codec_string(&self) -> String {
        match &self.codec {
            AudioCodec::Opus => "opus".to_owned(),
            AudioCodec::Aac { object_type, .. } => format!("mp4a.40.{object_type}"),
        }
    }

    /// Ticks per second of the track: 48 kHz for Opus, the sample rate for AAC (so a 1024-sample
    /// AAC frame is exactly 1024 ticks).
    pub fn timescale(&self) -> u32 {
        match self.codec {
            AudioCodec::Opus => 48_000,
            AudioCodec::Aac { .. } => self.sample_rate,
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
            codec: AudioCodec::Opus,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<(), MediaError> {
        if let AudioCodec::Aac {
            audio_specific_config,
            ..
        } = &self.codec
        {
            // Re-derive from the config so hand-built fields cannot disagree with it.
            let parsed = AudioTrackConfig::aac(audio_specific_config)?;
            if (parsed.sample_rate, parsed.channels) != (self.sample_rate, self.channels) {
                return Err(MediaError::BadAudioSpecificConfig {
                    reason: "sample rate or channels differ from the AudioSpecificConfig",
                });
            }
            return Ok(());
        }
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
