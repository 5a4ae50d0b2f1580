//! The send path: per-neighbour priority queues drained into transports that have room
//! (`Input::Buffered` below the budget), paced by the upload token bucket, dropping anything
//! that fell behind the window instead of sending it.

use super::api::Output;
use super::id::PeerId;
use super::neighbour::{QueueItem, CLASS_PUSH};
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::{Message, MAX_MESSAGE_SIZE};
use bytes::Bytes;

/// Share of its configured upload a viewer plans with. Transports carry framing (SCTP, DTLS,
/// UDP/IP headers) on top of our bytes, so a viewer paced at 100% of its uplink queues without
/// bound in its transport and every fresh piece waits behind stale ones. Measured with the
/// simulator at 1,000 viewers (BENCHMARKS.md, "pacing headroom"): planning with 85% of the
/// uplink took p95 delivery latency from 2.2 s to 0.9 s and continuity from 99.24% to 99.82%.
pub(crate) const USABLE_UPLINK_SHARE: f64 = 0.85;

/// Queueing delay the core lets build up in its transports altogether (see
/// [`Swarm::total_transport_budget`]).
const TRANSPORT_QUEUE: std::time::Duration = std::time::Duration::from_millis(30);

/// Order in which queue heads go out (smaller first): the item (class, then segment), then the
/// neighbour's upload, highest first, then a rotating tie-break.
type SendKey = (QueueItem, std::cmp::Reverse<u32>, u64);

impl Swarm {
    /// Upload this peer plans with, kbit/s: the source's configured upload as is (its cap is a
    /// multiple of the bitrate anyway), a viewer's reduced by [`USABLE_UPLINK_SHARE`].
    pub(crate) fn usable_upload_kbps(&self) -> u32 {
        if self.is_source() {
            self.config.upload_kbps
        } else {
            (self.config.upload_kbps as f64 * USABLE_UPLINK_SHARE) as u32
        }
    }

    /// Upload pacing rate, bytes/s: the source's cap (a multiple of the signed bitrate, and at
    /// most its configured upload), a viewer's configured upload.
    pub(crate) fn upload_rate(&self) -> u64 {
        let up = self.usable_upload_kbps() as u64 * 125;
        if self.is_source() {
            let cap = (self.config.source_cap_multiple as f64 * self.bitrate.kbps() as f64 * 125.0)
                as u64;
            if up > 0 {
                cap.min(up)
            } else {
                cap
            }
        } else {
            up
        }
    }

    /// Token-bucket rate (bytes/s) and depth (bytes). A viewer paces at its upload with a 50 ms
    /// burst: whatever the bucket lets out sits in its uplink ahead of the next fresh piece. The
    /// source's cap must hold over every second, keyframe segments included (they are several
    /// times the size of the others and used to burst it to ~3.2x over their second): a
    /// two-message burst, and the rate lowered by that burst plus the one message the bucket may
    /// overdraw, so that `rate × 1 s + burst + one message <= cap × 1 s`.
    fn pacing(&self) -> (u64, u64) {
        let rate = self.upload_rate();
        let msg = MAX_MESSAGE_SIZE as u64;
        if self.is_source() {
            let burst = 2 * msg;
            (rate.saturating_sub(burst + msg).max(rate / 2), burst)
        } else {
            (rate, (rate / 20).max(2 * msg))
        }
    }

    /// Bytes a neighbour's transport may hold before we stop feeding it: about 100 ms of our
    /// upload (every byte there delays the next fresh piece), at least one full message, at
    /// most [`super::Config::send_budget`].
    pub(crate) fn transport_budget(&self) -> usize {
        let by_rate = (self.upload_rate() / 10) as usize;
        by_rate.clamp(
            MAX_MESSAGE_SIZE,
            self.config.send_budget.max(MAX_MESSAGE_SIZE),
        )
    }

    /// Bytes all transports together may hold: about [`TRANSPORT_QUEUE`] of our upload, at least
    /// one full message. Data the core has not handed over yet can still be reordered (a fresh
    /// piece for a forwarding child overtakes a repair) or dropped when stale; data in a
    /// transport cannot, and each byte there delays every later piece (delay-based, as LEDBAT
    /// holds its queueing delay to a target).
    pub(crate) fn total_transport_budget(&self) -> usize {
        let by_rate =
            (self.upload_rate() as u128 * TRANSPORT_QUEUE.as_micros() / 1_000_000) as usize;
        by_rate.max(MAX_MESSAGE_SIZE)
    }

    /// Hands queued data to transports with room while the bucket and the total transport budget
    /// allow, best item first: fresh pushes before requested pieces, the oldest segment first,
    /// and among equals the neighbour with the most upload (it forwards to the most others), then
    /// round-robin.
    pub(crate) fn flush(&mut self, now: Instant) {
        let (rate, burst) = self.pacing();
        self.bucket.refill(now, rate, burst);
        // Most inputs find nothing queued: check before collecting (no allocation then).
        if !self
            .neighbours
            .values()
            .any(|n| n.is_established() && !n.queue.is_empty())
        {
            return;
        }
        let budget = self.transport_budget();
        let total_budget = self.total_transport_budget();
        // A neighbour gone silent (a killed tab) never drains its transport: counted, its
        // backlog would hold every other transport at zero until it is dropped.
        let mut total: usize = self
            .neighbours
            .values()
            .filter(|n| n.buffered_known && !n.silent(now))
            .map(|n| n.in_flight)
            .sum();
        let rr = self.rr;
        self.rr = self.rr.wrapping_add(1);
        loop {
            if !self.bucket.ready() || total >= total_budget {
                return;
            }
            let mut best: Option<(SendKey, PeerId)> = None;
            for (id, n) in &self.neighbours {
                if !n.is_established() || n.silent(now) || !n.has_room(budget) {
                    continue;
                }
                let Some(&item) = n.queue.first() else {
                    continue;
                };
                let spin = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes")) ^ rr;
                let key = (item, std::cmp::Reverse(n.upload_kbps()), spin);
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, *id));
                }
            }
            let Some(((item, _, _), p)) = best else {
                return;
            };
            let n = self.neighbours.get_mut(&p).expect("chosen");
            n.queue.pop_first();
            let before = n.in_flight;
            self.send_item(now, p, item);
            if let Some(n) = self.neighbours.get(&p) {
                if n.buffered_known {
                    total += n.in_flight.saturating_sub(before);
                }
            }
        }
    }

    /// Sends one queued piece (with its header first if this connection has not had it), or
    /// drops it when stale, unsubscribed or already held by the neighbour.
    fn send_item(&mut self, now: Instant, peer: PeerId, (class, seq, index): QueueItem) {
        if seq < self.store.window_start {
            return;
        }
        let k = self.k as u64;
        let Some(seg) = self.store.segments.get(&seq) else {
            return;
        };
        let Some(Some(piece)) = seg.pieces.get(index as usize) else {
            return;
        };
        let piece = piece.clone();
        let header_msg = seg.header_msg.clone();
        let n = self.neighbours.get_mut(&peer).expect("caller checked");
        if n.haves.contains(seq) {
            return;
        }
        if class == CLASS_PUSH {
            let s = (seq + index as u64) % k;
            if n.child_stripes & (1 << s) == 0 {
                return;
            }
        }
        n.last_useful = now;
        if !n.headers_sent.contains(seq) {
            n.headers_sent.insert(seq);
            self.transmit(peer, header_msg, 0, true);
        }
        let len = piece.payload().len();
        self.transmit(peer, piece.message(), len, true);
    }

    /// Encodes and emits a control message at once (control is never queued behind data).
    pub(crate) fn send(&mut self, peer: PeerId, msg: &Message) {
        let data = Bytes::from(msg.encode());
        self.transmit(peer, data, 0, false);
    }

    /// Sends one control message to each of `peers`, encoded once (the buffer is shared).
    pub(crate) fn send_each(&mut self, peers: &[PeerId], msg: &Message) {
        if peers.is_empty() {
            return;
        }
        let data = Bytes::from(msg.encode());
        for p in peers {
            self.transmit(*p, data.clone(), 0, false);
        }
    }

    /// Emits one encoded message, accounting it (`payload` bytes of it are piece data; `is_data`
    /// for pieces and headers, which a viewer's upload pacing covers).
    pub(crate) fn transmit(&mut self, peer: PeerId, data: Bytes, payload: usize, is_data: bool) {
        let len = data.len();
        self.stats.wire_bytes_up += len as u64;
        self.stats.bytes_up += payload as u64;
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.in_flight += len;
            n.bytes_up += payload as u64;
            n.last_sent = self.now;
        }
        if self.is_source() {
            // The source's cap covers everything it sends, control included.
            self.bucket.spend(len);
        } else if is_data {
            self.bucket.spend(len);
        }
        self.outputs.push_back(Output::Transmit { peer, data });
    }
}
