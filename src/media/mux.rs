//! The fragmented-MP4 writer: one init segment (ftyp + moov) and, per media segment, one
//! `moof` + `mdat` pair holding a run of samples per track.
//!
//! Layout choices, and why:
//! - Video runs at a 1 MHz timescale, so WebCodecs' microsecond timestamps go in exactly; Opus
//!   runs at 48 kHz as the Opus-in-ISOBMFF spec asks, so every 20 ms packet is 960 ticks.
//! - Every `traf` uses `default-base-is-moof` and a `tfdt`, so a segment is self-contained: a
//!   viewer who joins mid-stream appends the init segment and any keyframe segment, in any order
//!   MSE accepts, with no state carried from earlier fragments.
//! - Per-sample duration, size and flags are all written in `trun` (no defaults in `tfhd`/`trex`):
//!   a few bytes per sample buy a format any parser reads without looking elsewhere.

use super::boxes::{BoxWriter, UNITY_MATRIX};
use super::config::{check_codec, AudioCodec, AudioTrackConfig, AvcConfig, VideoTrackConfig};
use super::error::MediaError;

/// Timescale of the video track: microseconds, WebCodecs' unit.
pub const VIDEO_TIMESCALE: u32 = 1_000_000;
/// Timescale of an Opus track: Opus always decodes at 48 kHz. (An AAC track runs at its sample
/// rate: [`AudioTrackConfig::timescale`].)
pub const AUDIO_TIMESCALE: u32 = 48_000;

/// `sample_flags` of a sync sample: depends on no other sample.
pub(crate) const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// `sample_flags` of a non-sync sample: depends on others, `sample_is_non_sync_sample` set.
pub(crate) const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// One sample ready to be written: its place on the track's timeline and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Decode time in track timescale units (continuous: previous decode time + duration).
    pub decode: u64,
    /// Duration in track timescale units (at least 1).
    pub duration: u32,
    /// Composition time offset: presentation minus decode time, in track timescale units.
    /// Non-zero only for video with B-frames (samples are stored in decode order).
    pub composition_offset: i32,
    /// Whether the sample is a sync sample (keyframe; every Opus packet is one).
    pub sync: bool,
    /// The frame's presentation time in microseconds since the stream's origin; decides which
    /// segment an audio frame belongs to.
    pub ts_us: u64,
    /// The encoded frame.
    pub data: Vec<u8>,
}

/// The samples of one track that go into one fragment.
pub(crate) struct TrackRun<'a> {
    pub track_id: u32,
    pub samples: &'a [Sample],
}

/// Writes the init segment and media fragments for one video and/or one audio track.
#[derive(Debug, Clone)]
pub struct Fmp4Muxer {
    video: Option<(VideoTrackConfig, AvcConfig)>,
    audio: Option<AudioTrackConfig>,
}

impl Fmp4Muxer {
    /// A muxer for the given tracks (at least one). Validates the avcC, the codec string and
    /// the audio parameters now, so a bad encoder configuration fails before any segment exists.
    pub fn new(
        video: Option<VideoTrackConfig>,
        audio: Option<AudioTrackConfig>,
    ) -> Result<Self, MediaError> {
        if video.is_none() && audio.is_none() {
            return Err(MediaError::NoTracks);
        }
        let video = match video {
            Some(v) => {
                check_codec(&v.codec)?;
                if v.width == 0 || v.height == 0 {
                    return Err(MediaError::BadVideoSize {
                        width: v.width,
                        height: v.height,
                    });
                }
                let avc = AvcConfig::parse(&v.avcc)?;
                Some((v, avc))
            }
            None => None,
        };
        if let Some(a) = &audio {
            a.validate()?;
        }
        Ok(Fmp4Muxer { video, audio })
    }

    /// The type to give `MediaSource.addSourceBuffer` / `isTypeSupported`, e.g.
    /// `video/mp4; codecs="avc1.42001f,opus"` or `video/mp4; codecs="avc1.64001f,mp4a.40.2"`
    /// (or `audio/mp4; codecs="opus"` without video).
    pub fn mime_type(&self) -> String {
        match (&self.video, &self.audio) {
            (Some((v, _)), Some(a)) => {
                format!("video/mp4; codecs=\"{},{}\"", v.codec, a.codec_string())
            }
            (Some((v, _)), None) => format!("video/mp4; codecs=\"{}\"", v.codec),
            (None, Some(a)) => format!("audio/mp4; codecs=\"{}\"", a.codec_string()),
            (None, None) => "audio/mp4".to_owned(),
        }
    }

    /// Ticks per second of the audio track, if there is one (see [`AudioTrackConfig::timescale`]).
    pub fn audio_timescale(&self) -> Option<u32> {
        self.audio.as_ref().map(AudioTrackConfig::timescale)
    }

    /// The configured video track.
    pub fn video(&self) -> Option<&VideoTrackConfig> {
        self.video.as_ref().map(|(v, _)| v)
    }

    /// The configured audio track.
    pub fn audio(&self) -> Option<&AudioTrackConfig> {
        self.audio.as_ref()
    }

    pub(crate) fn avc(&self) -> Option<&AvcConfig> {
        self.video.as_ref().map(|(_, a)| a)
    }

    /// Track id of the video track (1), if there is one.
    pub fn video_track_id(&self) -> Option<u32> {
        self.video.as_ref().map(|_| 1)
    }

    /// Track id of the audio track (2 after a video track, else 1), if there is one.
    pub fn audio_track_id(&self) -> Option<u32> {
        self.audio
            .as_ref()
            .map(|_| if self.video.is_some() { 2 } else { 1 })
    }

    /// The init segment: `ftyp` + `moov` describing the tracks, with empty sample tables and a
    /// `trex` per track (the samples come in fragments). Appended once before any media segment.
    pub fn init_segment(&self) -> Vec<u8> {
        let mut w = BoxWriter::new();
        let ftyp = w.start(b"ftyp");
        w.bytes(b"iso6");
        w.u32(0);
        for brand in [b"iso6", b"isom", b"mp41"] {
            w.bytes(brand);
        }
        w.end(ftyp);

        let moov = w.start(b"moov");
        let mvhd = w.start_full(b"mvhd", 0, 0);
        w.u32(0); // creation_time
        w.u32(0); // modification_time
        w.u32(1000); // timescale (movie-level durations only; all zero here)
        w.u32(0); // duration: unknown, live
        w.u32(0x0001_0000); // rate 1.0
        w.u16(0x0100); // volume 1.0
        w.zeros(2 + 8);
        for m in UNITY_MATRIX {
            w.u32(m);
        }
        w.zeros(6 * 4);
        w.u32(self.audio_track_id().or(self.video_track_id()).unwrap_or(1) + 1); // next_track_ID
        w.end(mvhd);

        if let Some((v, _)) = &self.video {
            self.write_video_trak(&mut w, v);
        }
        if let Some(a) = &self.audio {
            self.write_audio_trak(&mut w, a);
        }

        let mvex = w.start(b"mvex");
        for id in [self.video_track_id(), self.audio_track_id()]
            .into_iter()
            .flatten()
        {
            let trex = w.start_full(b"trex", 0, 0);
            w.u32(id);
            w.u32(1); // default_sample_description_index
            w.u32(0); // default_sample_duration
            w.u32(0); // default_sample_size
            w.u32(0); // default_sample_flags
            w.end(trex);
        }
        w.end(mvex);
        w.end(moov);
        w.buf
    }

    fn write_video_trak(&self, w: &mut BoxWriter, v: &VideoTrackConfig) {
        let trak = w.start(b"trak");
        write_tkhd(w, 1, false, v.width, v.height);
        let mdia = w.start(b"mdia");
        write_mdhd(w, VIDEO_TIMESCALE);
        write_hdlr(w, b"vide", b"VideoHandler\0");
        let minf = w.start(b"minf");
        let vmhd = w.start_full(b"vmhd", 0, 1);
        w.zeros(2 + 3 * 2); // graphicsmode, opcolor
        w.end(vmhd);
        write_dinf(w);
        let stbl = w.start(b"stbl");
        let stsd = w.start_full(b"stsd", 0, 0);
        w.u32(1);
        // VisualSampleEntry (ISO/IEC 14496-12 §12.1.3) + avcC (14496-15 §5.4.2).
        let avc1 = w.start(b"avc1");
        w.zeros(6);
        w.u16(1); // data_reference_index
        w.zeros(2 + 2 + 3 * 4); // pre_defined, reserved, pre_defined[3]
        w.u16(v.width);
        w.u16(v.height);
        w.u32(0x0048_0000); // 72 dpi
        w.u32(0x0048_0000);
        w.u32(0); // reserved
        w.u16(1); // frame_count
        w.zeros(32); // compressorname
        w.u16(0x0018); // depth
        w.u16(0xffff); // pre_defined = -1
        let avcc = w.start(b"avcC");
        w.bytes(&v.avcc);
        w.end(avcc);
        w.end(avc1);
        w.end(stsd);
        write_empty_sample_tables(w);
        w.end(stbl);
        w.end(minf);
        w.end(mdia);
        w.end(trak);
    }

    fn write_audio_trak(&self, w: &mut BoxWriter, a: &AudioTrackConfig) {
        let id = self.audio_track_id().unwrap_or(1);
        let trak = w.start(b"trak");
        write_tkhd(w, id, true, 0, 0);
        let mdia = w.start(b"mdia");
        write_mdhd(w, a.timescale());
        write_hdlr(w, b"soun", b"SoundHandler\0");
        let minf = w.start(b"minf");
        let smhd = w.start_full(b"smhd", 0, 0);
        w.zeros(4); // balance, reserved
        w.end(smhd);
        write_dinf(w);
        let stbl = w.start(b"stbl");
        let stsd = w.start_full(b"stsd", 0, 0);
        w.u32(1);
        match &a.codec {
            AudioCodec::Opus => write_opus_entry(w, a),
            AudioCodec::Aac {
                audio_specific_config,
                ..
            } => write_mp4a_entry(w, id, a, audio_specific_config),
        }
        w.end(stsd);
        write_empty_sample_tables(w);
        w.end(stbl);
        w.end(minf);
        w.end(mdia);
        w.end(trak);
    }

    /// One `moof` + `mdat`: a `traf` per non-empty run, samples laid out in the `mdat` in run
    /// order. The caller guarantees each run is non-empty or skips it, and that the total stays
    /// below 4 GiB (the segmenter bounds frame sizes).
    pub(crate) fn fragment(&self, sequence_number: u32, runs: &[TrackRun<'_>]) -> Vec<u8> {
        let mut w = BoxWriter::new();
        let moof = w.start(b"moof");
        let mfhd = w.start_full(b"mfhd", 0, 0);
        w.u32(sequence_number);
        w.end(mfhd);
        let mut offset_fields = Vec::with_capacity(runs.len());
        for run in runs.iter().filter(|r| !r.samples.is_empty()) {
            let traf = w.start(b"traf");
            let tfhd = w.start_full(b"tfhd", 0, 0x02_0000); // default-base-is-moof
            w.u32(run.track_id);
            w.end(tfhd);
            let tfdt = w.start_full(b"tfdt", 1, 0);
            w.u64(run.samples[0].decode);
            w.end(tfdt);
            // data-offset, sample-duration, sample-size, sample-flags present, and with B-frames
            // sample-composition-time-offset, signed (version 1) so the keyframe that starts
            // the stream can present at its decode time while the B-frames after it present
            // before theirs.
            let reordered = run.samples.iter().any(|s| s.composition_offset != 0);
            let trun = if reordered {
                w.start_full(b"trun", 1, 0x00_0f01)
            } else {
                w.start_full(b"trun", 0, 0x00_0701)
            };
            w.u32(run.samples.len() as u32);
            offset_fields.push(w.buf.len());
            w.u32(0); // data_offset, patched below
            for s in run.samples {
                w.u32(s.duration);
                w.u32(s.data.len() as u32);
                w.u32(if s.sync {
                    SYNC_SAMPLE_FLAGS
                } else {
                    NON_SYNC_SAMPLE_FLAGS
                });
                if reordered {
                    w.u32(s.composition_offset as u32);
                }
            }
            w.end(trun);
            w.end(traf);
        }
        w.end(moof);
        let mdat = w.start(b"mdat");
        let mut data_at = w.buf.len();
        for (run, field) in runs
            .iter()
            .filter(|r| !r.samples.is_empty())
            .zip(offset_fields)
        {
            w.patch_u32(field, (data_at - moof) as u32);
            for s in run.samples {
                w.bytes(&s.data);
                data_at += s.data.len();
            }
        }
        w.end(mdat);
        w.buf
    }
}

fn write_tkhd(w: &mut BoxWriter, track_id: u32, audio: bool, width: u16, height: u16) {
    let tkhd = w.start_full(b"tkhd", 0, 0x3); // enabled, in movie
    w.u32(0); // creation_time
    w.u32(0); // modification_time
    w.u32(track_id);
    w.u32(0); // reserved
    w.u32(0); // duration
    w.zeros(8);
    w.u16(0); // layer
    w.u16(0); // alternate_group
    w.u16(if audio { 0x0100 } else { 0 }); // volume
    w.u16(0);
    for m in UNITY_MATRIX {
        w.u32(m);
    }
    w.u32(u32::from(width) << 16);
    w.u32(u32::from(height) << 16);
    w.end(tkhd);
}

fn write_mdhd(w: &mut BoxWriter, timescale: u32) {
    let mdhd = w.start_full(b"mdhd", 0, 0);
    w.u32(0);
    w.u32(0);
    w.u32(timescale);
    w.u32(0); // duration
    w.u16(0x55c4); // language "und"
    w.u16(0);
    w.end(mdhd);
}

fn write_hdlr(w: &mut BoxWriter, handler: &[u8; 4], name: &[u8]) {
    let hdlr = w.start_full(b"hdlr", 0, 0);
    w.u32(0);
    w.bytes(handler);
    w.zeros(12);
    w.bytes(name);
    w.end(hdlr);
}

fn write_dinf(w: &mut BoxWriter) {
    let dinf = w.start(b"dinf");
    let dref = w.start_full(b"dref", 0, 0);
    w.u32(1);
    let url = w.start_full(b"url ", 0, 1); // media data in this file
    w.end(url);
    w.end(dref);
    w.end(dinf);
}

fn write_empty_sample_tables(w: &mut BoxWriter) {
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = w.start_full(kind, 0, 0);
        w.u32(0);
        w.end(b);
    }
    let stsz = w.start_full(b"stsz", 0, 0);
    w.u32(0); // sample_size
    w.u32(0); // sample_count
    w.end(stsz);
}

/// "Encapsulation of Opus in ISO Base Media File Format" §4.3.1: an AudioSampleEntry of type
/// 'Opus', samplerate 48000, then the dOps box.
fn write_opus_entry(w: &mut BoxWriter, a: &AudioTrackConfig) {
    let opus = w.start(b"Opus");
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(8); // reserved
    w.u16(u16::from(a.channels));
    w.u16(16); // samplesize
    w.zeros(4); // pre_defined, reserved
    w.u32(AUDIO_TIMESCALE << 16);
    // dOps §4.3.2: a plain box (not a full box), big-endian fields, unlike OpusHead.
    let dops = w.start(b"dOps");
    w.u8(0); // Version
    w.u8(a.channels); // OutputChannelCount
    w.u16(a.pre_skip);
    w.u32(a.sample_rate); // InputSampleRate
    w.u16(0); // OutputGain
    w.u8(0); // ChannelMappingFamily: mono/stereo, no mapping table
    w.end(dops);
    w.end(opus);
}

/// ISO/IEC 14496-14 §5.6: an AudioSampleEntry of type `mp4a` whose `esds` carries an
/// ES_Descriptor with the AudioSpecificConfig as DecoderSpecificInfo (what MSE and ffmpeg read).
fn write_mp4a_entry(w: &mut BoxWriter, track_id: u32, a: &AudioTrackConfig, asc: &[u8]) {
    let mp4a = w.start(b"mp4a");
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(8); // reserved
    w.u16(u16::from(a.channels.min(2)));
    w.u16(16); // samplesize
    w.zeros(4); // pre_defined, reserved
                // 16.16 fixed point; rates above 65535 Hz do not fit and are read from the config anyway.
    w.u32(if a.sample_rate <= 0xffff {
        a.sample_rate << 16
    } else {
        0
    });
    let esds = w.start_full(b"esds", 0, 0);
    // DecoderSpecificInfo (tag 5) inside DecoderConfigDescriptor (tag 4, 13 fixed bytes)
    // inside ES_Descriptor (tag 3, 3 fixed bytes), plus SLConfigDescriptor (tag 6, 1 byte).
    let dsi_len = asc.len();
    let dcd_len = 13 + descriptor_size(dsi_len);
    let es_len = 3 + descriptor_size(dcd_len) + descriptor_size(1);
    write_descriptor_header(w, 0x03, es_len);
    w.u16(track_id as u16); // ES_ID
    w.u8(0); // no stream dependence, URL or OCR stream
    write_descriptor_header(w, 0x04, dcd_len);
    w.u8(0x40); // objectTypeIndication: Audio ISO/IEC 14496-3 (AAC)
    w.u8((0x05 << 2) | 1); // streamType audio, upStream 0, reserved 1
    w.zeros(3); // bufferSizeDB: unknown
    w.u32(0); // maxBitrate: unknown
    w.u32(0); // avgBitrate: unknown (variable)
    write_descriptor_header(w, 0x05, dsi_len);
    w.bytes(asc);
    write_descriptor_header(w, 0x06, 1);
    w.u8(0x02); // predefined: MP4 file
    w.end(esds);
    w.end(mp4a);
}

/// Bytes of a descriptor with a payload of `len` bytes: tag, size field, payload.
fn descriptor_size(len: usize) -> usize {
    1 + descriptor_len_bytes(len) + len
}

fn descriptor_len_bytes(len: usize) -> usize {
    match len {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        _ => 4,
    }
}

/// A descriptor tag and its size in the expandable form (7 bits a byte, high bit = more).
fn write_descriptor_header(w: &mut BoxWriter, tag: u8, len: usize) {
    w.u8(tag);
    let n = descriptor_len_bytes(len);
    for i in (0..n).rev() {
        let more = if i > 0 { 0x80 } else { 0 };
        w.u8(((len >> (7 * i)) & 0x7f) as u8 | more);
    }
}
