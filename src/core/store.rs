//! The segments a peer holds within its window: verified headers and verified pieces.

use super::id::PeerId;
use super::segment::SignedHeader;
use super::time::Instant;
use std::sync::Arc;

/// One segment whose signed header has been verified.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The verified header.
    pub header: Arc<SignedHeader>,
    /// The encoded `Message::Header`, made once and sent to every neighbour that needs it.
    pub header_msg: Arc<[u8]>,
    /// Verified pieces; shared, never copied between neighbours' queues.
    pub pieces: Vec<Option<Arc<[u8]>>>,
    /// Bit `i`: piece `i` is held.
    pub have: u64,
    /// Bit `i` set for every piece of the segment.
    pub full: u64,
    /// When the header was first verified here.
    pub learned_at: Instant,
    /// Our outstanding requests for it: `(neighbour, pieces, sent at)`.
    pub requests: Vec<(PeerId, u64, Instant)>,
    /// Pieces in any of `requests`.
    pub requested: u64,
    /// Neighbours whose request for it timed out: asked last.
    pub tried: Vec<PeerId>,
}

impl Segment {
    pub(crate) fn new(header: Arc<SignedHeader>, header_msg: Arc<[u8]>, now: Instant) -> Self {
        let n = header.header.piece_count();
        Segment {
            header,
            header_msg,
            pieces: vec![None; n],
            have: 0,
            full: mask(n),
            learned_at: now,
            requests: Vec::new(),
            requested: 0,
            tried: Vec::new(),
        }
    }

    /// Every piece is held.
    pub(crate) fn complete(&self) -> bool {
        self.have == self.full
    }

    /// The whole segment's bytes, in order (only meaningful when complete).
    pub(crate) fn assemble(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.header.len as usize);
        for p in self.pieces.iter().flatten() {
            out.extend_from_slice(p);
        }
        out
    }
}

/// Bitmask of the first `n` pieces.
pub(crate) fn mask(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}
