//! The connection table: every transport attempt or open channel of one node, by the
//! [`ConnId`] the node gave it, with the rules that say which attempt survives when two exist
//! between the same two peers.

use super::ConnId;
use crate::client::links::keep_newer_duplicate;
use crate::core::{Instant, PeerId};
use std::collections::BTreeMap;
use std::time::Duration;

/// A connection that never opened is given up after this long.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection attempt older than this that has not opened gives way to a fresh offer between
/// the same two peers. Attempts open in well under a second on a LAN; a relayed offer between
/// two browsers sometimes never connects, and while it waited out [`SETUP_TIMEOUT`] it kept the
/// pair from connecting any other way: viewers whose bridge to the source died stalled 10-11 s
/// with the source answering nobody (departure-bridge e2e in CI).
pub const STUCK_SETUP: Duration = Duration::from_secs(3);

/// A connection the transport calls interrupted (ICE "disconnected") for this long is closed: a
/// neighbour whose tab was killed never closes its channels, and waiting for ICE to declare
/// "failed" takes far longer than a live stream's buffer.
pub const INTERRUPTED_GRACE: Duration = Duration::from_secs(3);

/// A tracker offer nobody answered is given up after this long: trackers forward offers at
/// once, so an answer that has not come by then will not come.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted beyond the core's `max_degree` (attempts that will fail or lose a
/// duplicate tie-break must not crowd out the ones that will not).
pub const SETUP_SLACK: usize = 8;

/// How a connection was set up: where its answer goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Our offer, sent with an announce to tracker `.0`.
    TrackerOffer(usize),
    /// Our answer to an offer tracker `tracker` forwarded; it goes back with `offer_id`.
    TrackerAnswer {
        /// The tracker.
        tracker: usize,
        /// The offer's id, echoed back.
        offer_id: String,
    },
    /// Through a common neighbour (the core's relayed signalling).
    Relay,
}

/// One connection attempt or open channel.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Known at once for answers and relayed offers; for tracker offers when the answer comes.
    pub peer: Option<PeerId>,
    /// This side made the offer.
    pub offerer: bool,
    /// The core was told `Connected`.
    pub open: bool,
    /// How it was set up.
    pub via: Via,
    /// When the node created it.
    pub created: Instant,
    /// The offerer has handed the answer to the platform.
    pub answered: bool,
    /// Since when the transport says it is interrupted.
    pub interrupted: Option<Instant>,
    /// Our tracker offer went out under this `offer_id` (binary string) and awaits its answer.
    pub offer_id: Option<String>,
}

impl Conn {
    /// An attempt that has not opened in [`STUCK_SETUP`].
    pub fn stuck(&self, now: Instant) -> bool {
        !self.open && now.saturating_duration_since(self.created) > STUCK_SETUP
    }

    /// Given up: interrupted too long, never opened, or an offer nobody answered.
    pub fn stale(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.created);
        let lost = self
            .interrupted
            .is_some_and(|t| now.saturating_duration_since(t) > INTERRUPTED_GRACE);
        lost || (!self.open
            && (age > SETUP_TIMEOUT || (self.peer.is_none() && age > OFFER_TIMEOUT)))
    }
}

/// What [`Conns::claim`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The connection is now the one to the peer; `replaced` was closed for it.
    Kept {
        /// The older connection to the same peer that gave way, if any.
        replaced: Option<ConnId>,
    },
    /// The connection lost the tie-break (or is gone); the caller closes it.
    Lost,
}

/// All connections of one node.
#[derive(Debug, Default)]
pub struct Conns {
    conns: BTreeMap<ConnId, Conn>,
    by_peer: BTreeMap<PeerId, ConnId>,
    next: u64,
}

impl Conns {
    /// A new attempt; registered under `peer` when it is known.
    pub fn insert(
        &mut self,
        now: Instant,
        peer: Option<PeerId>,
        offerer: bool,
        via: Via,
    ) -> ConnId {
        let id = ConnId(self.next);
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                peer,
                offerer,
                open: false,
                via,
                created: now,
                answered: false,
                interrupted: None,
                offer_id: None,
            },
        );
        if let Some(p) = peer {
            self.by_peer.insert(p, id);
        }
        id
    }

    /// Connection `id`.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    /// Connection `id`, to change.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// The connection registered for `peer` (open or being set up).
    pub fn of_peer(&self, peer: &PeerId) -> Option<ConnId> {
        self.by_peer.get(peer).copied()
    }

    /// The open connection to `peer`.
    pub fn open_to(&self, peer: &PeerId) -> Option<ConnId> {
        self.of_peer(peer)
            .filter(|id| self.conns.get(id).is_some_and(|c| c.open))
    }

    /// Forgets `id`; returns it.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        if let Some(p) = c.peer {
            if self.by_peer.get(&p) == Some(&id) {
                self.by_peer.remove(&p);
            }
        }
        Some(c)
    }

    /// Records that our offer `id` went out under `offer_id`.
    pub fn offered(&mut self, offer_id: String, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.offer_id = Some(offer_id);
        }
    }

    /// The offer `offer_id` was answered: its connection, once.
    pub fn take_offer(&mut self, offer_id: &str) -> Option<ConnId> {
        // A few offers at a time: a scan is all it takes (and one map type less in the bundle).
        let (id, c) = self
            .conns
            .iter_mut()
            .find(|(_, c)| c.offer_id.as_deref() == Some(offer_id))?;
        c.offer_id = None;
        Some(*id)
    }

    /// Our tracker offers still waiting for an answer.
    pub fn offers_out(&self) -> usize {
        self.conns.values().filter(|c| c.offer_id.is_some()).count()
    }

    /// Connections, set up or open.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No connection at all.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections the core was told are open.
    pub fn open_count(&self) -> usize {
        self.conns.values().filter(|c| c.open).count()
    }

    /// Connections (open or being set up) made through a tracker.
    pub fn via_tracker(&self) -> usize {
        self.conns
            .values()
            .filter(|c| !matches!(c.via, Via::Relay))
            .count()
    }

    /// Every connection id.
    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Connections to give up at `now`.
    pub fn stale(&self, now: Instant) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.stale(now))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Makes `id` the connection to `peer` (`local` is this node). When another exists (both
    /// sides offered at once), both ends keep the one offered by the smaller peer id, so they
    /// agree without talking; an older attempt stuck for [`STUCK_SETUP`] always gives way.
    pub fn claim(&mut self, now: Instant, local: PeerId, id: ConnId, peer: PeerId) -> Claim {
        if !self.conns.contains_key(&id) {
            return Claim::Lost;
        }
        let replaced = match self.by_peer.get(&peer).copied() {
            None => None,
            Some(other) if other == id => return Claim::Kept { replaced: None },
            Some(other) => {
                let (Some(new), Some(old)) = (self.conns.get(&id), self.conns.get(&other)) else {
                    return Claim::Lost;
                };
                if old.stuck(now) || keep_newer_duplicate(local, peer, new.offerer, old.offerer) {
                    Some(other)
                } else {
                    return Claim::Lost;
                }
            }
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.peer = Some(peer);
        }
        self.by_peer.insert(peer, id);
        Claim::Kept { replaced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = PeerId([1; 20]);
    const B: PeerId = PeerId([2; 20]);

    #[test]
    fn duplicates_resolve_to_the_smaller_ids_offer_and_stuck_attempts_give_way() {
        let t0 = Instant::ZERO;
        // At A (smaller id): B's offer answered first (conn y), then our own offer x answered.
        let mut c = Conns::default();
        let y = c.insert(t0, Some(B), false, Via::Relay);
        let x = c.insert(t0, None, true, Via::TrackerOffer(0));
        assert_eq!(c.claim(t0, A, x, B), Claim::Kept { replaced: Some(y) });
        // At B: A's offer answered (x'), then B's own offer y' answered: y' loses.
        let mut c = Conns::default();
        let x2 = c.insert(t0, Some(A), false, Via::Relay);
        let y2 = c.insert(t0, None, true, Via::TrackerOffer(0));
        assert_eq!(c.claim(t0, B, y2, A), Claim::Lost);
        assert_eq!(c.of_peer(&A), Some(x2));
        // ...unless x' is stuck.
        let later = t0 + STUCK_SETUP + Duration::from_millis(1);
        assert_eq!(c.claim(later, B, y2, A), Claim::Kept { replaced: Some(x2) });
    }

    #[test]
    fn attempts_expire_by_their_kind() {
        let mut c = Conns::default();
        let t0 = Instant::ZERO;
        let offer = c.insert(t0, None, true, Via::TrackerOffer(0));
        let relay = c.insert(t0, Some(A), true, Via::Relay);
        assert!(c.stale(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            c.stale(t0 + OFFER_TIMEOUT + Duration::from_millis(1)),
            vec![offer]
        );
        assert_eq!(
            c.stale(t0 + SETUP_TIMEOUT + Duration::from_millis(1)),
            vec![offer, relay]
        );
        c.offered("o".into(), offer);
        assert_eq!(c.remove(offer).map(|c| c.offerer), Some(true));
        assert_eq!(c.take_offer("o"), None);
    }
}
