//! A small, strict ISO BMFF reader: walks boxes and reads what a player or a test needs to check
//! an fMP4 stream (tracks and codec configuration from the init segment; sequence numbers,
//! decode times, sample sizes, flags and byte ranges from media segments).
//!
//! It reads untrusted bytes (segments received from peers), so every length is checked against
//! what is there and every problem is a [`ParseError`]; it never panics, whatever the input
//! (a proptest and the `mp4_parse` fuzz target check that).

use core::fmt;
use core::ops::Range;

use thiserror::Error;

/// A box type such as `moof`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCC(pub [u8; 4]);

impl fmt::Display for FourCC {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for FourCC {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCC({self})")
    }
}

impl PartialEq<&[u8; 4]> for FourCC {
    fn eq(&self, other: &&[u8; 4]) -> bool {
        &self.0 == *other
    }
}

/// Why some bytes are not a well-formed (or supported) fMP4 stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The input ends inside a box or field.
    #[error("truncated {what}: needed {needed} bytes, got {got}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        got: u64,
    },
    /// A box's size field is smaller than its header.
    #[error("box {kind} at offset {offset} has invalid size {size}")]
    BadBoxSize {
        /// The box type.
        kind: FourCC,
        /// Offset of the box in the input.
        offset: usize,
        /// The declared size.
        size: u64,
    },
    /// A required box is absent.
    #[error("no {child} box in {parent}")]
    Missing {
        /// Where it was looked for (`file` for the top level).
        parent: &'static str,
        /// The box type looked for.
        child: &'static str,
    },
    /// A full box has a version this reader does not know.
    #[error("unsupported {kind} version {version}")]
    UnsupportedVersion {
        /// The box type.
        kind: FourCC,
        /// Its version.
        version: u8,
    },
    /// A field has an impossible value.
    #[error("invalid {what}")]
    Invalid {
        /// Which field.
        what: &'static str,
    },
    /// A sample's bytes, as located by `tfhd`/`trun`, are not inside the fragment's `mdat`.
    #[error("sample of track {track_id} at offset {offset} (+{size}) is outside the mdat")]
    SampleOutOfBounds {
        /// The track.
        track_id: u32,
        /// Computed offset of the sample in the input.
        offset: i128,
        /// Its size.
        size: u32,
    },
}

/// Bounds-checked big-endian reads over a byte slice.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let remaining = self.data.len() - self.pos;
        if n > remaining {
            return Err(ParseError::Truncated {
                what: self.what,
                needed: (self.pos as u64).saturating_add(n as u64),
                got: self.data.len() as u64,
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// One box: its type, where it is, and its payload (the bytes after the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Box<'a> {
    /// The box type.
    pub kind: FourCC,
    /// Offset of the box's first byte in the outermost input.
    pub offset: usize,
    /// Header length (8, 16 with a 64-bit size, plus 16 for `uuid`).
    pub header_len: usize,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Mp4Box<'a> {
    /// Total size of the box including its header.
    pub fn size(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// Byte range of the whole box in the outermost input.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.size()
    }

    /// Byte range of the payload in the outermost input.
    pub fn payload_range(&self) -> Range<usize> {
        self.offset + self.header_len..self.offset + self.size()
    }

    /// The boxes inside this one (for container boxes).
    pub fn children(&self) -> BoxIter<'a> {
        BoxIter {
            data: self.payload,
            pos: 0,
            base: self.offset + self.header_len,
            done: false,
        }
    }

    /// The first child of the given type.
    pub fn child(&self, kind: &[u8; 4]) -> Result<Option<Mp4Box<'a>>, ParseError> {
        find(self.children(), kind)
    }

    /// For a full box: version, flags and the rest of the payload.
    pub fn full(&self) -> Result<(u8, u32, &'a [u8]), ParseError> {
        let mut r = Reader::new(self.payload, "full box header");
        let vf = r.u32()?;
        Ok(((vf >> 24) as u8, vf & 0x00ff_ffff, &self.payload[4..]))
    }
}

/// Iterates over consecutive boxes; stops after the first error.
#[derive(Debug, Clone)]
pub struct BoxIter<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    done: bool,
}

/// The top-level boxes of `data`.
pub fn boxes(data: &[u8]) -> BoxIter<'_> {
    BoxIter {
        data,
        pos: 0,
        base: 0,
        done: false,
    }
}

impl<'a> Iterator for BoxIter<'a> {
    type Item = Result<Mp4Box<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.data.len() {
            return None;
        }
        let result = self.read_one();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

impl<'a> BoxIter<'a> {
    fn read_one(&mut self) -> Result<Mp4Box<'a>, ParseError> {
        let rest = &self.data[self.pos..];
        let offset = self.base + self.pos;
        let mut r = Reader::new(rest, "box header");
        let size32 = r.u32()?;
        let mut kind = [0u8; 4];
        kind.copy_from_slice(r.take(4)?);
        let kind = FourCC(kind);
        let size = match size32 {
            0 => rest.len() as u64, // extends to the end of the enclosing data
            1 => r.u64()?,
            n => u64::from(n),
        };
        if &kind.0 == b"uuid" {
            r.skip(16)?;
        }
        let header_len = r.pos;
        if size < header_len as u64 {
            return Err(ParseError::BadBoxSize { kind, offset, size });
        }
        if size > rest.len() as u64 {
            return Err(ParseError::Truncated {
                what: "box",
                needed: size,
                got: rest.len() as u64,
            });
        }
        let size = size as usize;
        self.pos += size;
        Ok(Mp4Box {
            kind,
            offset,
            header_len,
            payload: &rest[header_len..size],
        })
    }
}

fn find<'a>(iter: BoxIter<'a>, kind: &[u8; 4]) -> Result<Option<Mp4Box<'a>>, ParseError> {
    for b in iter {
        let b = b?;
        if &b.kind.0 == kind {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

fn require<'a>(
    parent: &Mp4Box<'a>,
    kind: &'static [u8; 4],
    parent_name: &'static str,
    child_name: &'static str,
) -> Result<Mp4Box<'a>, ParseError> {
    parent.child(kind)?.ok_or(ParseError::Missing {
        parent: parent_name,
        child: child_name,
    })
}

/// Per-track sample defaults from `trex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrexDefaults {
    /// default_sample_description_index
    pub sample_description_index: u32,
    /// default_sample_duration
    pub duration: u32,
    /// default_sample_size
    pub size: u32,
    /// default_sample_flags
    pub flags: u32,
}

/// A track described by the init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// tkhd track_ID.
    pub track_id: u32,
    /// hdlr handler_type (`vide`, `soun`, ...).
    pub handler: FourCC,
    /// mdhd timescale (ticks per second).
    pub timescale: u32,
    /// Type of the first sample entry (`avc1`, `Opus`, `mp4a`, ...).
    pub sample_entry: FourCC,
    /// Width and height from a visual sample entry (0 otherwise).
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// Channel count from an audio sample entry (0 otherwise).
    pub channels: u16,
    /// Type and payload of the sample entry's first child box (`avcC`, `dOps`, `esds`, ...).
    pub config: Option<(FourCC, Vec<u8>)>,
    /// The track's `trex` defaults, if the init segment has an `mvex`.
    pub trex: Option<TrexDefaults>,
}

/// What an init segment declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSegment {
    /// ftyp major brand.
    pub major_brand: FourCC,
    /// The tracks, in `moov` order.
    pub tracks: Vec<TrackInfo>,
    /// Whether the `moov` has an `mvex` (required for fragments to follow).
    pub fragmented: bool,
}

impl InitSegment {
    /// The track with this id.
    pub fn track(&self, track_id: u32) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.track_id == track_id)
    }
}

/// Parses an init segment: `ftyp` then `moov` (other top-level boxes are skipped).
pub fn parse_init_segment(data: &[u8]) -> Result<InitSegment, ParseError> {
    let mut ftyp = None;
    let mut moov = None;
    for b in boxes(data) {
        let b = b?;
        match &b.kind.0 {
            b"ftyp" if ftyp.is_none() => ftyp = Some(b),
            b"moov" if moov.is_none() => moov = Some(b),
            _ => {}
        }
    }
    let ftyp = ftyp.ok_or(ParseError::Missing {
        parent: "file",
        child: "ftyp",
    })?;
    let moov = moov.ok_or(ParseError::Missing {
        parent: "file",
        child: "moov",
    })?;
    let mut r = Reader::new(ftyp.payload, "ftyp");
    let mut major = [0u8; 4];
    major.copy_from_slice(r.take(4)?);

    let mut tracks = Vec::new();
    let mut mvex = None;
    for b in moov.children() {
        let b = b?;
        match &b.kind.0 {
            b"trak" => tracks.push(parse_trak(&b)?),
            b"mvex" => mvex = Some(b),
            _ => {}
        }
    }
    if tracks.is_empty() {
        return Err(ParseError::Missing {
            parent: "moov",
            child: "trak",
        });
    }
    if let Some(mvex) = mvex {
        for b in mvex.children() {
            let b = b?;
            if &b.kind.0 != b"trex" {
                continue;
            }
            let (_, _, body) = b.full()?;
            let mut r = Reader::new(body, "trex");
            let id = r.u32()?;
            let defaults = TrexDefaults {
                sample_description_index: r.u32()?,
                duration: r.u32()?,
                size: r.u32()?,
                flags: r.u32()?,
            };
            if let Some(t) = tracks.iter_mut().find(|t| t.track_id == id) {
                t.trex = Some(defaults);
            }
        }
    }
    Ok(InitSegment {
        major_brand: FourCC(major),
        tracks,
        fragmented: mvex.is_some(),
    })
}

fn parse_trak(trak: &Mp4Box<'_>) -> Result<TrackInfo, ParseError> {
    let tkhd = require(trak, b"tkhd", "trak", "tkhd")?;
    let (version, _, body) = tkhd.full()?;
    let mut r = Reader::new(body, "tkhd");
    match version {
        0 => r.skip(8)?,
        1 => r.skip(16)?,
        v => {
            return Err(ParseError::UnsupportedVersion {
                kind: tkhd.kind,
                version: v,
            })
        }
    }
    let track_id = r.u32()?;
    if track_id == 0 {
        return Err(ParseError::Invalid {
            what: "tkhd track_ID 0",
        });
    }

    let mdia = require(trak, b"mdia", "trak", "mdia")?;
    let mdhd = require(&mdia, b"mdhd", "mdia", "mdhd")?;
    let (version, _, body) = mdhd.full()?;
    let mut r = Reader::new(body, "mdhd");
    match version {
        0 => r.skip(8)?,
        1 => r.skip(16)?,
        v => {
            return Err(ParseError::UnsupportedVersion {
                kind: mdhd.kind,
                version: v,
            })
        }
    }
    let timescale = r.u32()?;
    if timescale == 0 {
        return Err(ParseError::Invalid {
            what: "mdhd timescale 0",
        });
    }
    let hdlr = require(&mdia, b"hdlr", "mdia", "hdlr")?;
    let (_, _, body) = hdlr.full()?;
    let mut r = Reader::new(body, "hdlr");
    r.skip(4)?;
    let mut handler = [0u8; 4];
    handler.copy_from_slice(r.take(4)?);
    let handler = FourCC(handler);

    let minf = require(&mdia, b"minf", "mdia", "minf")?;
    let stbl = require(&minf, b"stbl", "minf", "stbl")?;
    let stsd = require(&stbl, b"stsd", "stbl", "stsd")?;
    let (_, _, body) = stsd.full()?;
    let mut r = Reader::new(body, "stsd");
    if r.u32()? == 0 {
        return Err(ParseError::Missing {
            parent: "stsd",
            child: "sample entry",
        });
    }
    let entries = BoxIter {
        data: &body[4..],
        pos: 0,
        base: stsd.offset + stsd.header_len + 8,
        done: false,
    };
    let entry = entries.into_iter().next().ok_or(ParseError::Missing {
        parent: "stsd",
        child: "sample entry",
    })??;
    // SampleEntry: 6 reserved bytes + data_reference_index, then the visual (70 bytes) or audio
    // (20 bytes) fields, then child boxes.
    let mut r = Reader::new(entry.payload, "sample entry");
    r.skip(8)?;
    let (mut width, mut height, mut channels) = (0, 0, 0);
    let children_at = match &handler.0 {
        b"vide" => {
            r.skip(16)?;
            width = r.u16()?;
            height = r.u16()?;
            r.skip(50)?;
            Some(r.pos)
        }
        b"soun" => {
            r.skip(8)?;
            channels = r.u16()?;
            r.skip(10)?;
            Some(r.pos)
        }
        _ => None,
    };
    let config = match children_at {
        Some(at) => {
            let mut iter = BoxIter {
                data: &entry.payload[at..],
                pos: 0,
                base: entry.offset + entry.header_len + at,
                done: false,
            };
            match iter.next() {
                Some(b) => {
                    let b = b?;
                    Some((b.kind, b.payload.to_vec()))
                }
                None => None,
            }
        }
        None => None,
    };
    Ok(TrackInfo {
        track_id,
        handler,
        timescale,
        sample_entry: entry.kind,
        width,
        height,
        channels,
        config,
        trex: None,
    })
}

/// One sample of a track fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleInfo {
    /// Decode time in track ticks (`tfdt` plus the durations before it).
    pub decode_time: u64,
    /// Duration in track ticks.
    pub duration: u32,
    /// Size in bytes.
    pub size: u32,
    /// `sample_flags`.
    pub flags: u32,
    /// Composition time offset (presentation time minus decode time), in ticks.
    pub composition_offset: i64,
    /// Offset of the sample's bytes in the input.
    pub offset: usize,
}

impl SampleInfo {
    /// A sync sample (keyframe): `sample_is_non_sync_sample` is clear.
    pub fn is_sync(&self) -> bool {
        self.flags & 0x0001_0000 == 0
    }

    /// The sample's byte range in the input.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.size as usize
    }
}

/// The samples of one track in one fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFragment {
    /// tfhd track_ID.
    pub track_id: u32,
    /// tfdt baseMediaDecodeTime, if present (without it, decode times count from 0).
    pub base_decode_time: Option<u64>,
    /// The samples, in decode order.
    pub samples: Vec<SampleInfo>,
}

impl TrackFragment {
    /// Decode time where the fragment's samples end.
    pub fn end_decode_time(&self) -> u64 {
        self.samples
            .last()
            .map(|s| s.decode_time.saturating_add(u64::from(s.duration)))
            .unwrap_or(self.base_decode_time.unwrap_or(0))
    }
}

/// One `moof` and its `mdat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// mfhd sequence_number.
    pub sequence_number: u32,
    /// Byte range of the `moof` in the input.
    pub moof: Range<usize>,
    /// Byte range of the `mdat` payload in the input.
    pub mdat: Range<usize>,
    /// A track fragment per `traf`.
    pub tracks: Vec<TrackFragment>,
}

impl Fragment {
    /// The fragment of the given track, if present.
    pub fn track(&self, track_id: u32) -> Option<&TrackFragment> {
        self.tracks.iter().find(|t| t.track_id == track_id)
    }
}

/// Parses a media segment (or a whole fragmented file after its init segment): every `moof`
/// with the `mdat` after it. Sample byte ranges are checked to lie within that `mdat`. `init`
/// supplies `trex` defaults for fields neither `tfhd` nor `trun` carry.
pub fn parse_media_segment(
    data: &[u8],
    init: Option<&InitSegment>,
) -> Result<Vec<Fragment>, ParseError> {
    let top: Vec<Mp4Box<'_>> = boxes(data).collect::<Result<_, _>>()?;
    let mut fragments = Vec::new();
    for (i, moof) in top.iter().enumerate() {
        if &moof.kind.0 != b"moof" {
            continue;
        }
        let mdat = top[i + 1..]
            .iter()
            .take_while(|b| &b.kind.0 != b"moof")
            .find(|b| &b.kind.0 == b"mdat")
            .ok_or(ParseError::Missing {
                parent: "fragment",
                child: "mdat",
            })?;
        fragments.push(parse_moof(moof, mdat.payload_range(), init)?);
    }
    if fragments.is_empty() {
        return Err(ParseError::Missing {
            parent: "file",
            child: "moof",
        });
    }
    Ok(fragments)
}

fn parse_moof(
    moof: &Mp4Box<'_>,
    mdat: Range<usize>,
    init: Option<&InitSegment>,
) -> Result<Fragment, ParseError> {
    let mfhd = require(moof, b"mfhd", "moof", "mfhd")?;
    let (_, _, body) = mfhd.full()?;
    let sequence_number = Reader::new(body, "mfhd").u32()?;
    let mut tracks = Vec::new();
    // Without base-data-offset or default-base-is-moof, a traf's data starts where the previous
    // traf's ended (the first one's at the moof).
    let mut previous_end = moof.offset as i128;
    for traf in moof.children() {
        let traf = traf?;
        if &traf.kind.0 != b"traf" {
            continue;
        }
        let tf = parse_traf(&traf, moof.offset, previous_end, &mdat, init)?;
        if let Some(last) = tf.samples.last() {
            previous_end = (last.offset + last.size as usize) as i128;
        }
        tracks.push(tf);
    }
    Ok(Fragment {
        sequence_number,
        moof: moof.range(),
        mdat,
        tracks,
    })
}

fn parse_traf(
    traf: &Mp4Box<'_>,
    moof_offset: usize,
    previous_end: i128,
    mdat: &Range<usize>,
    init: Option<&InitSegment>,
) -> Result<TrackFragment, ParseError> {
    let tfhd = require(traf, b"tfhd", "traf", "tfhd")?;
    let (_, flags, body) = tfhd.full()?;
    let mut r = Reader::new(body, "tfhd");
    let track_id = r.u32()?;
    let base_offset = if flags & 0x1 != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    if flags & 0x2 != 0 {
        r.u32()?; // sample_description_index
    }
    let trex = init
        .and_then(|i| i.track(track_id))
        .and_then(|t| t.trex)
        .unwrap_or_default();
    let default_duration = if flags & 0x8 != 0 {
        r.u32()?
    } else {
        trex.duration
    };
    let default_size = if flags & 0x10 != 0 {
        r.u32()?
    } else {
        trex.size
    };
    let default_flags = if flags & 0x20 != 0 {
        r.u32()?
    } else {
        trex.flags
    };
    let mut data_pos: i128 = match base_offset {
        Some(b) => i128::from(b),
        None if flags & 0x2_0000 != 0 => moof_offset as i128,
        None => previous_end,
    };
    let base = data_pos;

    let base_decode_time = match traf.child(b"tfdt")? {
        Some(tfdt) => {
            let (version, _, body) = tfdt.full()?;
            let mut r = Reader::new(body, "tfdt");
            Some(match version {
                0 => u64::from(r.u32()?),
                1 => r.u64()?,
                v => {
                    return Err(ParseError::UnsupportedVersion {
                        kind: tfdt.kind,
                        version: v,
                    })
                }
            })
        }
        None => None,
    };
    let mut decode_time = base_decode_time.unwrap_or(0);
    let mut samples = Vec::new();
    for trun in traf.children() {
        let trun = trun?;
        if &trun.kind.0 != b"trun" {
            continue;
        }
        let (version, tflags, body) = trun.full()?;
        if version > 1 {
            return Err(ParseError::UnsupportedVersion {
                kind: trun.kind,
                version,
            });
        }
        let mut r = Reader::new(body, "trun");
        let count = r.u32()? as usize;
        if tflags & 0x1 != 0 {
            data_pos = base + i128::from(r.u32()? as i32);
        }
        let first_flags = if tflags & 0x4 != 0 {
            Some(r.u32()?)
        } else {
            None
        };
        let per_sample = [0x100, 0x200, 0x400, 0x800]
            .iter()
            .filter(|&&f| tflags & f != 0)
            .count()
            * 4;
        // The count comes from the input: bound it by the bytes that must back it before
        // allocating anything.
        let max = match per_sample {
            0 => 1 << 16,
            n => r.remaining() / n,
        };
        if count > max {
            return Err(ParseError::Invalid {
                what: "trun sample_count larger than its data",
            });
        }
        samples.reserve(count);
        for i in 0..count {
            let duration = if tflags & 0x100 != 0 {
                r.u32()?
            } else {
                default_duration
            };
            let size = if tflags & 0x200 != 0 {
                r.u32()?
            } else {
                default_size
            };
            let sflags = if tflags & 0x400 != 0 {
                r.u32()?
            } else if i == 0 {
                first_flags.unwrap_or(default_flags)
            } else {
                default_flags
            };
            let composition_offset = if tflags & 0x800 != 0 {
                let v = r.u32()?;
                if version == 0 {
                    i64::from(v)
                } else {
                    i64::from(v as i32)
                }
            } else {
                0
            };
            let end = data_pos + i128::from(size);
            if data_pos < mdat.start as i128 || end > mdat.end as i128 {
                return Err(ParseError::SampleOutOfBounds {
                    track_id,
                    offset: data_pos,
                    size,
                });
            }
            samples.push(SampleInfo {
                decode_time,
                duration,
                size,
                flags: sflags,
                composition_offset,
                offset: data_pos as usize,
            });
            decode_time = decode_time.saturating_add(u64::from(duration));
            data_pos = end;
        }
    }
    Ok(TrackFragment {
        track_id,
        base_decode_time,
        samples,
    })
}
