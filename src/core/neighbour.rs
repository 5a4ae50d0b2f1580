//! What one peer knows about one neighbour: handshake facts, availability, stripe relations,
//! the outgoing data queue and the transport's backlog.

use super::bitfield::SeqBits;
use super::id::PeerId;
use super::time::Instant;
use super::wire::Role;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Queue class of a fresh piece pushed to a stripe-child: goes before any requested piece.
pub(crate) const CLASS_PUSH: u8 = 0;
/// Queue class of a piece a neighbour requested: served by deadline (oldest segment first).
pub(crate) const CLASS_REPLY: u8 = 1;

/// Most queued items per neighbour; beyond this, new pushes and requests are dropped (the
/// neighbour pulls them elsewhere), which bounds memory whatever it asks.
pub(crate) const MAX_QUEUE: usize = 1024;

/// A live neighbour is heard several times a second (a `Have` for each segment it completes,
/// a `Ping` on an otherwise idle link, see [`IDLE_PING`]); silent this long, it is treated as
/// gone for requests and parent choice, well before its transport is declared dead.
pub(crate) const SUSPECT_SILENCE: Duration = Duration::from_millis(1_000);
/// Silent this long, a neighbour is dropped: a killed tab or a pulled cable sends no goodbye, and
/// browsers take 5–30 s to call such a connection failed.
pub(crate) const DEAD_SILENCE: Duration = Duration::from_millis(4_000);
/// A child silent this long gives up its stripe slots (a dead one would hold them until dropped).
/// Longer than [`SUSPECT_SILENCE`]: a live child whose tab is starved of CPU for a second must not
/// lose its stripes (it would then avoid its parent for seconds).
pub(crate) const RELEASE_SILENCE: Duration = Duration::from_millis(2_500);
/// A link we have sent nothing on for this long gets a `Ping`, so the other side hears from us.
pub(crate) const IDLE_PING: Duration = Duration::from_millis(500);

/// Most messages per second a neighbour may send (pieces at 8 Mbit/s are ~60/s).
pub(crate) const FLOOD_MESSAGES_PER_SEC: u32 = 4000;
/// Most relayed signalling messages per second per neighbour.
pub(crate) const FLOOD_RELAYS_PER_SEC: u32 = 32;
/// One outgoing data item: `(class, seq, index)`. Ordered so that pushes come first, then
/// requests, each oldest segment first (deadline order).
pub(crate) type QueueItem = (u8, u64, u16);

/// Where a neighbour is in its life: its transport is open in both states (a closed one leaves
/// the table). Only a handshake is accepted from a neighbour still `Handshaking`; what its
/// handshake said exists only once it is `Established`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Our handshake went out; its handshake has not arrived yet.
    Handshaking,
    /// Its handshake arrived and was valid.
    Established {
        /// What it says it is.
        role: Role,
        /// Upload it offers, kbit/s.
        upload_kbps: u32,
    },
}

/// A neighbour's state.
#[derive(Debug)]
pub(crate) struct Neighbour {
    /// When the transport opened.
    pub connected_at: Instant,
    /// Handshaking or established (with what the handshake said).
    pub link: Link,
    /// Its depth on each stripe (from its last `Status`); empty before the first.
    pub depths: Vec<u8>,
    /// Stripe-child slots it says it still has.
    pub free: u16,
    /// Upload from which it would displace a child for us when full.
    pub displace_kbps: u32,
    /// Complete segments it holds (from `Bitfield` and `Have`).
    pub haves: SeqBits,
    /// Segments whose header went out on this connection.
    pub headers_sent: SeqBits,
    /// Newest init version sent to it.
    pub init_sent: u32,
    /// Data waiting for transport room.
    pub queue: BTreeSet<QueueItem>,
    /// Bytes the transport holds: last reported `Buffered` plus what was emitted since.
    pub in_flight: usize,
    /// The binding reports `Buffered` for it; until then its transport is not throttled.
    pub buffered_known: bool,
    /// Bit `s`: it subscribed stripe `s` from us.
    pub child_stripes: u64,
    /// Bit `s`: we receive stripe `s` from it.
    pub parent_stripes: u64,
    /// Our outstanding requests to it: segment → piece bitmask.
    pub requests: BTreeMap<u64, u64>,
    /// Number of pieces in `requests`.
    pub requested_pieces: u32,
    /// Smoothed round-trip time.
    pub srtt: Option<Duration>,
    /// Next ping due.
    pub next_ping: Instant,
    /// Payload bytes sent to it / received from it.
    pub bytes_up: u64,
    /// Payload bytes received from it.
    pub bytes_down: u64,
    /// Last time it gave us a new piece or we sent it one.
    pub last_useful: Instant,
    /// Start of the current one-second flood window and messages seen in it.
    pub flood_window: Instant,
    /// Messages received in the flood window.
    pub flood_msgs: u32,
    /// Relays received in the flood window.
    pub flood_relays: u32,
    /// Last time anything arrived from it (liveness: a vanished peer goes silent long before
    /// its transport is declared dead).
    pub last_heard: Instant,
    /// Last time we sent it anything (an idle link gets a ping so that it hears from us).
    pub last_sent: Instant,
    /// We asked it for one header to check whether the source restarted (once per neighbour: a
    /// stale claim costs one small request).
    pub restart_probed: bool,
    /// It offered a header of an older session of the source than ours: it has not noticed a
    /// restart yet. It was shown our newer header; its advertisements and pieces are ignored.
    pub stale_session: bool,
}

impl Neighbour {
    pub(crate) fn new(now: Instant) -> Self {
        Neighbour {
            connected_at: now,
            link: Link::Handshaking,
            depths: Vec::new(),
            free: 0,
            displace_kbps: u32::MAX,
            haves: SeqBits::default(),
            headers_sent: SeqBits::default(),
            init_sent: 0,
            queue: BTreeSet::new(),
            in_flight: 0,
            buffered_known: false,
            child_stripes: 0,
            parent_stripes: 0,
            requests: BTreeMap::new(),
            requested_pieces: 0,
            srtt: None,
            next_ping: now,
            bytes_up: 0,
            bytes_down: 0,
            last_useful: now,
            flood_window: now,
            flood_msgs: 0,
            flood_relays: 0,
            last_heard: now,
            last_sent: now,
            restart_probed: false,
            stale_session: false,
        }
    }

    /// Its handshake arrived and was valid.
    pub(crate) fn is_established(&self) -> bool {
        matches!(self.link, Link::Established { .. })
    }

    /// The handshake was valid: from now on it may send anything.
    pub(crate) fn establish(&mut self, role: Role, upload_kbps: u32) {
        self.link = Link::Established { role, upload_kbps };
    }

    /// What it says it is; a viewer until its handshake says otherwise.
    pub(crate) fn role(&self) -> Role {
        match self.link {
            Link::Established { role, .. } => role,
            Link::Handshaking => Role::Viewer,
        }
    }

    /// It said it is the source.
    pub(crate) fn is_source(&self) -> bool {
        self.role() == Role::Source
    }

    /// Upload it offers, kbit/s; nothing until its handshake says how much.
    pub(crate) fn upload_kbps(&self) -> u32 {
        match self.link {
            Link::Established { upload_kbps, .. } => upload_kbps,
            Link::Handshaking => 0,
        }
    }

    /// Notes one message from it at `now`; false when that is more than
    /// [`FLOOD_MESSAGES_PER_SEC`] within the current one-second window (a flood).
    pub(crate) fn heard(&mut self, now: Instant) -> bool {
        self.last_heard = now;
        if now.saturating_duration_since(self.flood_window) >= Duration::from_secs(1) {
            self.flood_window = now;
            self.flood_msgs = 0;
            self.flood_relays = 0;
        }
        self.flood_msgs += 1;
        self.flood_msgs <= FLOOD_MESSAGES_PER_SEC
    }

    /// It cancelled its request for `seq`: the pieces of it still queued for it are dropped.
    pub(crate) fn cancel_replies(&mut self, seq: u64) {
        let doomed: Vec<_> = self
            .queue
            .range((CLASS_REPLY, seq, 0)..=(CLASS_REPLY, seq, u16::MAX))
            .copied()
            .collect();
        for item in doomed {
            self.queue.remove(&item);
        }
    }

    /// Our window moved to `start`: nothing older is tracked or sent any more.
    pub(crate) fn forget_below(&mut self, start: u64) {
        self.haves.forget_below(start);
        self.headers_sent.forget_below(start);
        let stale: Vec<_> = self
            .queue
            .iter()
            .filter(|(_, s, _)| *s < start)
            .copied()
            .collect();
        for it in stale {
            self.queue.remove(&it);
        }
    }

    /// Nothing has come from it for [`SUSPECT_SILENCE`]: do not wait on it for anything.
    pub(crate) fn silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) > SUSPECT_SILENCE
    }

    /// The transport has room for more data under `budget`.
    pub(crate) fn has_room(&self, budget: usize) -> bool {
        !self.buffered_known || self.in_flight < budget
    }

    /// Depth on stripe `s` as advertised, [`super::wire::NO_DEPTH`] when unknown.
    pub(crate) fn depth(&self, s: usize) -> u8 {
        self.depths.get(s).copied().unwrap_or(super::wire::NO_DEPTH)
    }

    /// Round-trip estimate with a conservative default before the first sample.
    pub(crate) fn rtt_or_default(&self) -> Duration {
        self.srtt.unwrap_or(Duration::from_millis(200))
    }

    /// Folds in one round-trip sample (EWMA 1/8, as TCP).
    pub(crate) fn rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }
}

/// The neighbour table: every open transport, by peer. A map with the life-cycle queries on
/// top, so that a message handler gets an established neighbour or nothing, never an
/// `expect("established")`.
#[derive(Debug, Default)]
pub(crate) struct Neighbours(BTreeMap<PeerId, Neighbour>);

impl Neighbours {
    /// `peer` if its handshake is done.
    pub(crate) fn established(&self, peer: &PeerId) -> Option<&Neighbour> {
        self.0.get(peer).filter(|n| n.is_established())
    }

    /// `peer` if its handshake is done, to change.
    pub(crate) fn established_mut(&mut self, peer: &PeerId) -> Option<&mut Neighbour> {
        self.0.get_mut(peer).filter(|n| n.is_established())
    }

    /// The established neighbours' ids, in id order.
    pub(crate) fn established_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.0
            .iter()
            .filter(|(_, n)| n.is_established())
            .map(|(id, _)| *id)
    }

    /// How many are established.
    pub(crate) fn established_count(&self) -> usize {
        self.0.values().filter(|n| n.is_established()).count()
    }
}

impl<'a> IntoIterator for &'a Neighbours {
    type Item = (&'a PeerId, &'a Neighbour);
    type IntoIter = std::collections::btree_map::Iter<'a, PeerId, Neighbour>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::ops::Deref for Neighbours {
    type Target = BTreeMap<PeerId, Neighbour>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Neighbours {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_says_what_it_is_only_once_established() {
        let mut n = Neighbour::new(Instant::ZERO);
        assert!(!n.is_established());
        assert_eq!((n.role(), n.upload_kbps()), (Role::Viewer, 0));
        n.establish(Role::Source, 6_000);
        assert!(n.is_established() && n.is_source());
        assert_eq!(n.upload_kbps(), 6_000);
        let mut table = Neighbours::default();
        table.insert(PeerId([1; 20]), Neighbour::new(Instant::ZERO));
        table.insert(PeerId([2; 20]), n);
        assert!(table.established(&PeerId([1; 20])).is_none());
        assert!(table.established_mut(&PeerId([2; 20])).is_some());
        assert_eq!(
            table.established_ids().collect::<Vec<_>>(),
            vec![PeerId([2; 20])]
        );
        assert_eq!(table.established_count(), 1);
    }

    #[test]
    fn more_than_the_flood_limit_in_a_second_is_a_flood() {
        let mut n = Neighbour::new(Instant::ZERO);
        let t = Instant::from_millis(10);
        for _ in 0..FLOOD_MESSAGES_PER_SEC {
            assert!(n.heard(t));
        }
        assert!(!n.heard(t));
        assert_eq!(n.last_heard, t);
        // A new second, a new allowance.
        assert!(n.heard(t + Duration::from_secs(1)));
    }
}
