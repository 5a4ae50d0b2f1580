//! The offers a connection was sent and may answer: the receiving side of answer validation
//! (an answer is routed only if its connection was sent the offer it answers). Kept in the
//! receiver's [`Outbox`](crate::outbox::Outbox), under a lock of its own, rather than in a
//! map of all connections: the offerer's task records each offer for a receiver it already
//! holds, without a lookup and without the swarm's lock.

use std::collections::{HashMap, VecDeque};

/// Offers remembered per receiving connection; older ones are forgotten first. A connection
/// answers an offer only after reading it, and everything queued ahead of it (our send queue,
/// then both kernels' socket buffers, easily a few hundred messages on a busy connection) is
/// read first: 128, the earlier bound, made aquatic_ws_load_test's answers fail, since it
/// answers offers read hundreds of messages after we queued them. 1,024 covers that; an entry
/// is 16 bytes and the list grows only with offers actually sent, so an idle connection pays
/// nothing and a flooded one at most 16 KiB.
pub const MAX_PENDING_OFFERS: usize = 1024;

/// How long an offer can be answered, seconds (aquatic_ws's `max_offer_age`; the reference
/// client gives up on an offer after 50 s).
pub const OFFER_TTL_SECS: u32 = 120;

/// An offer sent, awaiting its answer: a keyed hash of `(info_hash, offer_id, offerer peer_id,
/// offerer connection)` (keyed per process, so a client cannot aim for collisions) and when it
/// was sent (seconds since the tracker's epoch): 16 bytes per entry.
struct Pending {
    key: u64,
    at_secs: u32,
}

/// One connection's answerable offers.
#[derive(Default)]
pub struct OfferBook {
    /// Offers sent, oldest first: the eviction order. Entries answered since stay until
    /// evicted (their key is gone from `answerable`).
    pending: VecDeque<Pending>,
    /// Key to send time of the offers still answerable. A map, not a scan of `pending`: a
    /// reader that lags hundreds of messages behind answers offers near the ring's far end,
    /// and scanning 1,024 entries per answer was a visible share of the tracker's time under
    /// aquatic_ws_load_test.
    answerable: HashMap<u64, u32, KeyHash>,
}

impl OfferBook {
    /// Records an offer sent at `at_secs`, forgetting the oldest beyond the bounds.
    pub fn remember(&mut self, key: u64, at_secs: u32) {
        while let Some(p) = self.pending.front() {
            if self.pending.len() < MAX_PENDING_OFFERS
                && at_secs.saturating_sub(p.at_secs) <= OFFER_TTL_SECS
            {
                break;
            }
            if self.answerable.get(&p.key) == Some(&p.at_secs) {
                self.answerable.remove(&p.key);
            }
            self.pending.pop_front();
        }
        self.pending.push_back(Pending { key, at_secs });
        self.answerable.insert(key, at_secs);
    }

    /// Whether the offer `key` was sent and is still answerable at `now_secs`; it is not
    /// answerable again afterwards.
    pub fn take(&mut self, key: u64, now_secs: u32) -> bool {
        self.answerable
            .remove(&key)
            .is_some_and(|at| now_secs.saturating_sub(at) <= OFFER_TTL_SECS)
    }
}

/// The keys are keyed SipHash outputs already: hashing them again buys nothing.
type KeyHash = std::hash::BuildHasherDefault<IdentityHasher>;

/// Passes a `u64` through (see [`KeyHash`]).
#[derive(Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
