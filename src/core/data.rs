//! The data a neighbour offers and sends: availability claims, init segments, signed headers,
//! pieces and requests for pieces. Everything is verified before it is kept or forwarded; a
//! forgery cuts its sender off. A verified piece goes to the stripe's children at once.

use super::api::DisconnectReason;
use super::id::PeerId;
use super::identity::verify_piece;
use super::neighbour::{CLASS_PUSH, CLASS_REPLY, MAX_QUEUE};
use super::segment::{InitSegment, SignedHeader};
use super::store::{Segment, StoredPiece};
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::Message;
use bytes::Bytes;
use std::sync::Arc;

/// A claim this far beyond the newest verified header is a lie (or from another era).
const MAX_CLAIM_AHEAD: u64 = 256;

impl Swarm {
    pub(crate) fn advertised(&mut self, now: Instant, peer: PeerId, seq: u64) {
        if self.neighbours.get(&peer).is_some_and(|n| n.stale_session) {
            // An older session's numbers say nothing about where ours is.
            return;
        }
        // A claim far beyond the newest verified header is ignored.
        if self
            .store
            .newest
            .is_some_and(|n| seq > n.saturating_add(MAX_CLAIM_AHEAD))
        {
            return;
        }
        if self.max_advertised.is_none_or(|(m, _)| seq > m) {
            self.max_advertised = Some((seq, now));
        }
    }

    pub(crate) fn on_init(&mut self, now: Instant, peer: PeerId, init: InitSegment) {
        if self.store.inits.contains_key(&init.version) {
            return;
        }
        let ok = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.verify_init(&init).is_ok());
        if !ok {
            return self.cut(now, peer, DisconnectReason::Forged);
        }
        if self.is_source() {
            return;
        }
        let newest = self.store.inits.keys().next_back().copied().unwrap_or(0);
        let version = init.version;
        self.store.add_init(Arc::new(init));
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.init_sent = n.init_sent.max(version);
        }
        if version > newest {
            let peers: Vec<PeerId> = self.established().collect();
            for p in peers {
                self.send_init(p);
            }
        }
    }

    pub(crate) fn on_header(&mut self, now: Instant, peer: PeerId, signed: SignedHeader) {
        let seq = signed.header.seq;
        if self.is_restart(&signed) {
            // Checked cheaply first: a replayed old header has an older capture time and never
            // gets here, so only a genuine new session (or a forgery, cut) costs a verification.
            if !self.header_genuine(now, peer, &signed) {
                return;
            }
            return self.on_new_session(peer, signed);
        }
        if self.is_stale_session(&signed) {
            self.on_stale_session(peer);
            return;
        }
        if seq < self.store.window_start {
            return;
        }
        if let Some(seg) = self.store.segments.get(&seq) {
            if *seg.header == signed {
                return;
            }
        }
        if !self.header_genuine(now, peer, &signed) {
            return;
        }
        if self.store.segments.contains_key(&seq) || self.is_source() {
            // A second valid header for one seq would mean the source equivocates: keep the first.
            return;
        }
        self.insert_header(now, Arc::new(signed));
    }

    /// Checks a header's signature; a bad one cuts `peer` off as a forger.
    pub(crate) fn header_genuine(
        &mut self,
        now: Instant,
        peer: PeerId,
        signed: &SignedHeader,
    ) -> bool {
        let ok = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.verify_header(signed).is_ok());
        if !ok {
            self.cut(now, peer, DisconnectReason::Forged);
        }
        ok
    }

    /// Stores a verified header, updates the bitrate estimate and slides the window.
    pub(crate) fn insert_header(&mut self, now: Instant, signed: Arc<SignedHeader>) {
        let seq = signed.header.seq;
        let msg = Bytes::from(Message::Header((*signed).clone()).encode());
        let h = &signed.header;
        if let Some(kbps) = self
            .bitrate
            .add(h.len as u64, h.duration_us as u64, h.keyframe)
        {
            self.stats.bitrate_kbps = kbps;
        }
        let was_blind = self.pulls.take_blind(seq);
        let mut seg = Segment::new(signed, msg, now);
        if let Some((p, at)) = was_blind {
            // The blind request becomes an ordinary one for every piece.
            seg.add_request(p, seg.full, at);
            if let Some(n) = self.neighbours.get_mut(&p) {
                n.requests.insert(seq, seg.full);
                n.requested_pieces += seg.full.count_ones();
            }
        }
        if self.store.insert(seg) {
            self.stats.newest_seq = Some(seq);
            self.slide_window();
            self.status_dirty |= self.is_source() && self.bitrate.kbps() > 0;
        }
        if !self.is_source() {
            self.maybe_choose_start(now);
        }
    }

    /// Slides the store's window behind the newest segment, and forgets in every neighbour's
    /// state what fell out of it.
    pub(crate) fn slide_window(&mut self) {
        let before = self.store.window_start;
        for (seq, seg) in self.store.slide(self.config.window) {
            for (p, _, _) in seg.requests {
                if let Some(n) = self.neighbours.get_mut(&p) {
                    if let Some(m) = n.requests.remove(&seq) {
                        n.requested_pieces -= m.count_ones();
                    }
                }
            }
        }
        let start = self.store.window_start;
        if start != before {
            self.pulls.forget_below(start);
            for n in self.neighbours.values_mut() {
                n.forget_below(start);
            }
        }
    }

    pub(crate) fn on_piece(
        &mut self,
        now: Instant,
        peer: PeerId,
        seq: u64,
        index: u16,
        data: &[u8],
        shared: Option<&Bytes>,
    ) {
        if seq < self.store.window_start {
            return;
        }
        let idx = index as usize;
        let Some(seg) = self.store.segments.get(&seq) else {
            if self.neighbours.get(&peer).is_some_and(|n| n.stale_session) {
                // A piece of an older session, whose header we ignored.
                return;
            }
            return self.cut(
                now,
                peer,
                DisconnectReason::Protocol("piece before its header"),
            );
        };
        if idx >= seg.pieces.len() {
            return self.cut(
                now,
                peer,
                DisconnectReason::Protocol("piece index out of range"),
            );
        }
        let is_source = self.neighbours.get(&peer).is_some_and(|n| n.is_source());
        if let Some(held) = &seg.pieces[idx] {
            // Already held: compare rather than hash; a differing copy is a forgery all the same.
            if !held.same_payload(data) {
                return self.cut(now, peer, DisconnectReason::Forged);
            }
            self.stats.duplicate_bytes += data.len() as u64;
            let Some(n) = self.neighbours.established_mut(&peer) else {
                return;
            };
            n.bytes_down += data.len() as u64;
            self.note_parent_progress(now, peer, seq, idx);
            return;
        }
        if verify_piece(&seg.header.header, idx, data).is_err() {
            return self.cut(now, peer, DisconnectReason::Forged);
        }
        {
            let Some(n) = self.neighbours.established_mut(&peer) else {
                return;
            };
            n.bytes_down += data.len() as u64;
            n.last_useful = now;
        }
        if is_source {
            self.stats.bytes_from_source += data.len() as u64;
        } else {
            self.stats.bytes_from_peers += data.len() as u64;
        }
        self.note_parent_progress(now, peer, seq, idx);
        let piece = match shared {
            Some(msg) => StoredPiece::from_received(msg, seq, index, data),
            None => StoredPiece::encode(seq, index, data),
        };
        self.store_piece(seq, idx, piece, Some(peer));
    }

    /// Stores a verified piece; forwards it to the stripe's children at once; announces and
    /// cancels as the segment completes.
    pub(crate) fn store_piece(
        &mut self,
        seq: u64,
        idx: usize,
        data: StoredPiece,
        from: Option<PeerId>,
    ) {
        let k = self.k;
        let Some(seg) = self.store.segments.get_mut(&seq) else {
            return;
        };
        seg.pieces[idx] = Some(data);
        let bit = 1u64 << idx;
        seg.have |= bit;
        // Requests for this piece elsewhere are now moot.
        let mut cancels = Vec::new();
        if seg.requested & bit != 0 {
            for r in seg.requests.iter_mut() {
                if r.1 & bit != 0 {
                    r.1 &= !bit;
                    if Some(r.0) == from {
                        self.stats.pieces_pulled += 1;
                    } else if r.1 == 0 {
                        cancels.push(r.0);
                    }
                    if let Some(n) = self.neighbours.get_mut(&r.0) {
                        n.requested_pieces = n.requested_pieces.saturating_sub(1);
                        match n.requests.get_mut(&seq) {
                            Some(m) if *m & !bit == 0 => {
                                n.requests.remove(&seq);
                            }
                            Some(m) => *m &= !bit,
                            None => {}
                        }
                    }
                }
            }
            seg.requests.retain(|r| r.1 != 0);
            seg.requested &= !bit;
        }
        let complete = seg.complete();
        if complete {
            seg.tried.clear();
        }
        // Push to the stripe's children, except the one it came from and those holding it.
        let stripe = ((seq + idx as u64) % k as u64) as usize;
        let children = std::mem::take(&mut self.trees.children[stripe]);
        for c in &children {
            if Some(*c) == from {
                continue;
            }
            if let Some(n) = self.neighbours.get_mut(c) {
                if !n.haves.contains(seq) && n.queue.len() < MAX_QUEUE {
                    n.queue.insert((CLASS_PUSH, seq, idx as u16));
                }
            }
        }
        self.trees.children[stripe] = children;
        for p in cancels {
            self.send(p, &Message::Cancel { seq });
        }
        if complete {
            self.store.complete.insert(seq);
            let peers: Vec<PeerId> = self.established().collect();
            self.send_each(&peers, &Message::Have { seq });
        }
    }

    pub(crate) fn on_request(&mut self, peer: PeerId, seq: u64, pieces: u64) {
        let Some(seg) = self.store.segments.get(&seq) else {
            return;
        };
        if pieces == 0 {
            // Header only (a joining peer looking for a keyframe to start at): small, answered
            // at once by everyone.
            let msg = seg.header_msg.clone();
            let Some(n) = self.neighbours.established_mut(&peer) else {
                return;
            };
            if !n.headers_sent.contains(seq) {
                n.headers_sent.insert(seq);
                self.transmit(peer, msg, 0, false);
            }
            return;
        }
        if self.usable_upload_kbps() == 0 && !self.is_source() {
            return; // receive-only peers serve no pieces
        }
        let wanted = pieces & seg.have;
        let Some(n) = self.neighbours.established_mut(&peer) else {
            return;
        };
        let mut bits = wanted;
        while bits != 0 {
            let i = bits.trailing_zeros() as u16;
            bits &= bits - 1;
            if n.queue.len() >= MAX_QUEUE {
                break;
            }
            n.queue.insert((CLASS_REPLY, seq, i));
        }
    }
}
