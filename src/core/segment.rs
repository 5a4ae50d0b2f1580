//! The data model: one init segment (codec setup) and a sequence of media segments, each cut
//! into pieces small enough for a browser data channel message.
//!
//! The core is container-agnostic: it moves, verifies and orders bytes; what they mean (fMP4,
//! WebM) is the broadcaster's and the player's business.

use serde::{Deserialize, Serialize};

/// Payload bytes per piece. A `Piece` message (tag, seq, index, length prefix, payload) then stays
/// under 16 KiB, the message size every browser's data channel delivers unfragmented.
pub const PIECE_SIZE: usize = 16 * 1024 - 64;

/// Upper bound on pieces in one segment (about 1 MiB). A header announcing more is invalid, which
/// bounds what a peer buffers for one segment.
pub const MAX_PIECES_PER_SEGMENT: usize = 64;

/// Upper bound on an init segment's bytes: it travels in one message.
pub const MAX_INIT_SIZE: usize = 15 * 1024;

/// Upper bound on the MIME type string of an init segment.
pub const MAX_MIME_LEN: usize = 256;

/// What the broadcaster knows about a media segment it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Presentation time of the segment's first frame, µs on the media timeline.
    pub pts_us: u64,
    /// Duration of the segment, µs.
    pub duration_us: u32,
    /// The segment starts with a keyframe, so a viewer may start playback with it.
    pub keyframe: bool,
}

/// The signed description of one media segment. Signing the hashes of the pieces (not the
/// segment as a whole) lets a peer verify and forward each piece the moment it arrives, without
/// waiting for the rest of the segment: the source signs once per segment, everybody else checks
/// one signature per segment and one BLAKE3 hash per piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Position in the stream, from 0, without gaps at the source.
    pub seq: u64,
    /// Which init segment this segment decodes with.
    pub init_version: u32,
    /// Presentation time of the first frame, µs.
    pub pts_us: u64,
    /// Duration, µs.
    pub duration_us: u32,
    /// Starts with a keyframe.
    pub keyframe: bool,
    /// The source's clock when it published the segment, µs since the source's own origin. Peers
    /// use differences between these for pacing; it is not comparable with a peer's own clock.
    pub published_us: u64,
    /// Total bytes of the segment.
    pub len: u32,
    /// BLAKE3 of each piece, in order; the last piece may be shorter than [`PIECE_SIZE`].
    pub piece_hashes: Vec<[u8; 32]>,
}

impl SegmentHeader {
    /// Number of pieces.
    pub fn piece_count(&self) -> usize {
        self.piece_hashes.len()
    }

    /// Byte range of piece `index` within the segment, `None` when out of range.
    pub fn piece_range(&self, index: usize) -> Option<core::ops::Range<usize>> {
        if index >= self.piece_count() {
            return None;
        }
        let start = index * PIECE_SIZE;
        let end = (start + PIECE_SIZE).min(self.len as usize);
        Some(start..end)
    }

    /// The header is self-consistent: its piece count matches its length and stays within
    /// [`MAX_PIECES_PER_SEGMENT`]. Checked before the (costlier) signature.
    pub fn is_well_formed(&self) -> bool {
        let len = self.len as usize;
        len > 0
            && self.piece_count() <= MAX_PIECES_PER_SEGMENT
            && self.piece_count() == len.div_ceil(PIECE_SIZE)
    }

    /// Builds the (unsigned) header of a segment's bytes: cuts them into pieces and hashes each.
    pub fn describe(
        seq: u64,
        init_version: u32,
        meta: SegmentMeta,
        published_us: u64,
        data: &[u8],
    ) -> Self {
        SegmentHeader {
            seq,
            init_version,
            pts_us: meta.pts_us,
            duration_us: meta.duration_us,
            keyframe: meta.keyframe,
            published_us,
            len: data.len() as u32,
            piece_hashes: data
                .chunks(PIECE_SIZE)
                .map(|c| *blake3::hash(c).as_bytes())
                .collect(),
        }
    }
}

/// A segment header with the broadcaster's ed25519 signature over it (see
/// [`crate::core::StreamKey`] for exactly what is signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The header.
    pub header: SegmentHeader,
    /// ed25519 signature, 64 bytes as two halves (serde derives arrays up to 32 only).
    pub signature: [[u8; 32]; 2],
}

/// The codec setup every media segment of a given `version` decodes with, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSegment {
    /// Bumped by the broadcaster when the codec setup changes.
    pub version: u32,
    /// MIME type with codecs, e.g. `video/mp4; codecs="avc1.42001f,opus"`.
    pub mime: String,
    /// The container's init bytes (fMP4 `ftyp`+`moov`, or a WebM header).
    pub data: Vec<u8>,
    /// ed25519 signature over stream id, version, MIME type and BLAKE3 of `data`.
    pub signature: [[u8; 32]; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SegmentMeta {
        SegmentMeta {
            pts_us: 0,
            duration_us: 200_000,
            keyframe: true,
        }
    }

    #[test]
    fn pieces_cover_the_segment_exactly() {
        let data = vec![9u8; PIECE_SIZE * 2 + 5];
        let h = SegmentHeader::describe(3, 1, meta(), 0, &data);
        assert_eq!(h.piece_count(), 3);
        assert_eq!(h.piece_range(0), Some(0..PIECE_SIZE));
        assert_eq!(h.piece_range(2), Some(PIECE_SIZE * 2..PIECE_SIZE * 2 + 5));
        assert_eq!(h.piece_range(3), None);
        assert!(h.is_well_formed());
    }

    #[test]
    fn inconsistent_headers_are_not_well_formed() {
        let mut h = SegmentHeader::describe(0, 1, meta(), 0, &[1, 2, 3]);
        h.len = (PIECE_SIZE * 3) as u32;
        assert!(!h.is_well_formed());
        h.len = 0;
        assert!(!h.is_well_formed());
    }
}
