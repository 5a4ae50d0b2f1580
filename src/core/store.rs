//! The segments a peer holds within its window: verified headers and verified pieces, the
//! init segments they decode with, and the window that bounds them.

use super::bitfield::SeqBits;
use super::id::PeerId;
use super::segment::{InitSegment, SignedHeader};
use super::time::Instant;
use super::wire::{encode_piece, piece_message_len, Message, MAX_BITFIELD_BYTES};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Init segments kept: the newest few versions (segments still in the window may need an
/// older one than the newest).
const MAX_INITS: usize = 4;
/// Most segments kept behind the newest, whatever their capture times say.
const MAX_SPAN: u64 = 1024;

/// What a peer holds of the stream. Invariant: nothing below `window_start` is kept, so
/// nothing below it is fetched or sent.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Segments whose header is verified, by sequence number.
    pub segments: BTreeMap<u64, Segment>,
    /// Complete segments (for bitfields).
    pub complete: SeqBits,
    /// Nothing below this seq is kept, fetched or sent.
    pub window_start: u64,
    /// Newest segment whose header is verified.
    pub newest: Option<u64>,
    /// Verified init segments by version, the newest [`MAX_INITS`].
    pub inits: BTreeMap<u32, Arc<InitSegment>>,
}

impl Store {
    /// Keeps a verified header's segment; true when it is the newest now.
    pub(crate) fn insert(&mut self, seg: Segment) -> bool {
        let seq = seg.header.header.seq;
        self.segments.insert(seq, seg);
        if self.newest.is_none_or(|n| seq > n) {
            self.newest = Some(seq);
            true
        } else {
            false
        }
    }

    /// Drops segments captured more than `window` before the newest one (and any more than
    /// [`MAX_SPAN`] behind it); returns them, whose outstanding requests the caller forgets.
    /// `window_start` moves past them.
    pub(crate) fn slide(&mut self, window: Duration) -> Vec<(u64, Segment)> {
        let mut gone = Vec::new();
        let Some(newest) = self.newest else {
            return gone;
        };
        let Some(top) = self.segments.get(&newest) else {
            return gone;
        };
        let cutoff = top
            .header
            .header
            .pts_us
            .saturating_sub(window.as_micros() as u64);
        let mut start = self.window_start;
        while let Some(entry) = self.segments.first_entry() {
            let seq = *entry.key();
            if (entry.get().header.header.pts_us < cutoff && seq < newest)
                || newest - seq > MAX_SPAN
            {
                gone.push((seq, entry.remove()));
                start = start.max(seq + 1);
            } else {
                break;
            }
        }
        if start != self.window_start {
            self.window_start = start;
            self.complete.forget_below(start);
        }
        gone
    }

    /// Our availability as a `Bitfield` message: complete segments from the window's start
    /// (rounded down to a byte) up to the newest complete one, at most the protocol's size.
    pub(crate) fn bitfield(&self) -> Message {
        let base = self.window_start & !7;
        let top = self.complete.max().unwrap_or(0);
        let mut bits = Vec::new();
        if top >= base {
            let span = ((top - base + 1) as usize).min(MAX_BITFIELD_BYTES * 8);
            bits = vec![0u8; span.div_ceil(8)];
            for i in 0..span {
                if self.complete.contains(base + i as u64) {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
        }
        Message::Bitfield { base, bits }
    }

    /// Keeps a verified init segment, forgetting the oldest beyond [`MAX_INITS`].
    pub(crate) fn add_init(&mut self, init: Arc<InitSegment>) {
        self.inits.insert(init.version, init);
        while self.inits.len() > MAX_INITS {
            self.inits.pop_first();
        }
    }

    /// The newest init segment held, and its version.
    pub(crate) fn newest_init(&self) -> Option<(u32, &Arc<InitSegment>)> {
        self.inits.iter().next_back().map(|(v, i)| (*v, i))
    }
}

/// One verified piece, kept as its canonical encoded `Piece` message: forwarding it to any
/// number of neighbours, or holding it in their queues, clones a reference, never the bytes.
#[derive(Debug, Clone)]
pub(crate) struct StoredPiece {
    /// The whole `Piece` message, exactly as [`encode_piece`] writes it.
    msg: Bytes,
    /// Where the payload starts in `msg`.
    payload_at: usize,
}

impl StoredPiece {
    /// Encodes `payload` as piece `(seq, index)` (one copy).
    pub(crate) fn encode(seq: u64, index: u16, payload: &[u8]) -> Self {
        let msg = Bytes::from(encode_piece(seq, index, payload));
        StoredPiece {
            payload_at: msg.len() - payload.len(),
            msg,
        }
    }

    /// Keeps a received piece message as is when it is the canonical encoding of
    /// `(seq, index, payload)` with `payload` its tail (then nothing is copied); otherwise
    /// re-encodes it, so that what is forwarded is always canonical.
    pub(crate) fn from_received(msg: &Bytes, seq: u64, index: u16, payload: &[u8]) -> Self {
        let canonical = msg.len() == piece_message_len(seq, index, payload.len())
            && msg.len() >= payload.len()
            && msg[msg.len() - payload.len()..].as_ptr() == payload.as_ptr();
        if canonical {
            StoredPiece {
                payload_at: msg.len() - payload.len(),
                msg: msg.clone(),
            }
        } else {
            StoredPiece::encode(seq, index, payload)
        }
    }

    /// The piece's bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.msg[self.payload_at..]
    }

    /// The encoded message, shared.
    pub(crate) fn message(&self) -> Bytes {
        self.msg.clone()
    }

    /// Same bytes as `other`. Two references to one buffer are equal without reading it (the
    /// simulator's peers share buffers); otherwise the payloads are compared byte for byte.
    pub(crate) fn same_payload(&self, other: &[u8]) -> bool {
        let mine = self.payload();
        (mine.as_ptr() == other.as_ptr() && mine.len() == other.len()) || mine == other
    }
}

/// One segment whose signed header has been verified.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The verified header.
    pub header: Arc<SignedHeader>,
    /// The encoded `Message::Header`, made once and sent to every neighbour that needs it.
    pub header_msg: Bytes,
    /// Verified pieces; shared, never copied between neighbours' queues.
    pub pieces: Vec<Option<StoredPiece>>,
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
    pub(crate) fn new(header: Arc<SignedHeader>, header_msg: Bytes, now: Instant) -> Self {
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

    /// Records a request to `peer` for `pieces`, sent `now` (merged with one already
    /// outstanding there, which then counts from `now`).
    pub(crate) fn add_request(&mut self, peer: PeerId, pieces: u64, now: Instant) {
        if let Some(r) = self.requests.iter_mut().find(|r| r.0 == peer) {
            r.1 |= pieces;
            r.2 = now;
        } else {
            self.requests.push((peer, pieces, now));
        }
        self.requested |= pieces;
    }

    /// Forgets what was requested from `peer` (it is gone, or its request timed out).
    pub(crate) fn drop_requests_of(&mut self, peer: PeerId) {
        self.requests.retain(|r| r.0 != peer);
        self.requested = self.requests.iter().fold(0, |m, r| m | r.1);
    }

    /// Every piece is held.
    pub(crate) fn complete(&self) -> bool {
        self.have == self.full
    }

    /// The whole segment's bytes, in order (only meaningful when complete).
    pub(crate) fn assemble(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.header.len as usize);
        for p in self.pieces.iter().flatten() {
            out.extend_from_slice(p.payload());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::StreamKey;
    use crate::core::segment::{SegmentHeader, SegmentMeta};

    /// A verified-looking segment `seq` captured at `pts_us`, one piece.
    pub(crate) fn segment(key: &StreamKey, seq: u64, pts_us: u64) -> Segment {
        let meta = SegmentMeta {
            pts_us,
            duration_us: 200_000,
            keyframe: seq % 5 == 0,
        };
        let h = Arc::new(key.sign_header(SegmentHeader::describe(seq, 1, meta, pts_us, &[1; 10])));
        Segment::new(h, Bytes::new(), Instant::ZERO)
    }

    #[test]
    fn the_window_slides_behind_the_newest_capture_time() {
        let key = StreamKey::from_secret([3; 32]);
        let mut store = Store::default();
        for seq in 0..10 {
            assert!(store.insert(segment(&key, seq, seq * 200_000)));
            store.complete.insert(seq);
        }
        assert!(!store.insert(segment(&key, 4, 800_000)), "not newer");
        // Newest captured at 1.8 s; a 1 s window keeps what was captured from 0.8 s on.
        let gone: Vec<u64> = store
            .slide(Duration::from_secs(1))
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(gone, vec![0, 1, 2, 3]);
        assert_eq!(store.window_start, 4);
        assert!(store.complete.contains(4) && store.complete.contains(9));
        assert!(store.segments.keys().copied().eq(4..10));
        assert!(store.slide(Duration::from_secs(1)).is_empty());
        // The bitfield starts at the window rounded down to a byte and ends at the newest
        // complete segment.
        let Message::Bitfield { base, bits } = store.bitfield() else {
            panic!("not a bitfield");
        };
        assert_eq!((base, bits.len(), bits[1]), (0, 2, 0b0000_0011));
    }

    #[test]
    fn requests_merge_per_neighbour_and_leave_with_it() {
        let key = StreamKey::from_secret([5; 32]);
        let mut seg = segment(&key, 0, 0);
        let (a, b) = (PeerId([1; 20]), PeerId([2; 20]));
        seg.add_request(a, 0b001, Instant::from_millis(1));
        seg.add_request(b, 0b010, Instant::from_millis(2));
        seg.add_request(a, 0b100, Instant::from_millis(3));
        assert_eq!(seg.requests.len(), 2);
        assert_eq!(seg.requests[0], (a, 0b101, Instant::from_millis(3)));
        assert_eq!(seg.requested, 0b111);
        seg.drop_requests_of(a);
        assert_eq!(seg.requests, vec![(b, 0b010, Instant::from_millis(2))]);
        assert_eq!(seg.requested, 0b010);
    }

    #[test]
    fn only_the_newest_inits_are_kept() {
        let key = StreamKey::from_secret([4; 32]);
        let mut store = Store::default();
        assert!(store.newest_init().is_none());
        for v in 1..=6 {
            store.add_init(Arc::new(key.sign_init(
                v,
                "video/mp4".into(),
                vec![v as u8],
            )));
        }
        assert_eq!(
            store.inits.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(store.newest_init().map(|(v, _)| v), Some(6));
    }

    #[test]
    fn a_canonical_received_piece_is_kept_without_a_copy() {
        let msg = Bytes::from(encode_piece(300, 2, &[7u8; 1000]));
        let payload = &msg[msg.len() - 1000..];
        let p = StoredPiece::from_received(&msg, 300, 2, payload);
        assert_eq!(p.payload(), &[7u8; 1000][..]);
        assert_eq!(p.message().as_ptr(), msg.as_ptr());
        assert!(p.same_payload(&[7u8; 1000]));
        assert!(!p.same_payload(&[7u8; 999]));
    }

    #[test]
    fn a_non_canonical_piece_is_re_encoded() {
        // seq 0 spelled as a two-byte varint: decodes the same, is one byte longer.
        let mut raw = vec![4u8, 0x80, 0x00, 2, 3];
        raw.extend_from_slice(&[1, 2, 3]);
        let msg = Bytes::from(raw);
        let payload = &msg[msg.len() - 3..];
        let p = StoredPiece::from_received(&msg, 0, 2, payload);
        assert_eq!(p.message(), Bytes::from(encode_piece(0, 2, &[1, 2, 3])));
        assert_eq!(p.payload(), &[1, 2, 3]);
    }
}
