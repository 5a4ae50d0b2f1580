//! Source restarts. A reloaded broadcaster page numbers its segments from 0 again under the
//! same key: a genuine header numbered at or behind our newest but captured after it means a
//! new session (the binding then rejoins as a fresh viewer, [`super::Output::SourceRestarted`]);
//! one captured before a header we hold with a lower number is from an older session, offered
//! by a neighbour that has not noticed yet. Within one session capture times grow with
//! sequence numbers, which is all either test needs.
//!
//! [`Session`] owns what this peer knows of sessions; the `impl Swarm` below acts on it.

use super::api::Output;
use super::id::PeerId;
use super::segment::SignedHeader;
use super::store::Store;
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::Message;
use std::sync::Arc;

/// The source's sessions as seen here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    /// [`Output::SourceRestarted`] was emitted.
    restarted: bool,
    /// The genuine header that showed the source restarted (from the detection on this swarm,
    /// or handed on by [`Swarm::rejoin`]): the newest session known, so that the older one is
    /// recognised even before any header of the new one is held, and shown to neighbours still
    /// following the older one.
    newest: Option<Arc<SignedHeader>>,
}

impl Session {
    /// Carried into the fresh viewer of a rejoin: the newest session, not the detection.
    pub(crate) fn handed_on(&self) -> Session {
        Session {
            restarted: false,
            newest: self.newest.clone(),
        }
    }

    /// Whether `signed` (not yet verified) would mean a new session of the source: numbered at
    /// or behind the newest header held, captured after it.
    pub(crate) fn is_restart(store: &Store, signed: &SignedHeader) -> bool {
        let Some(newest) = store.newest else {
            return false;
        };
        let Some(top) = store.segments.get(&newest) else {
            return false;
        };
        signed.header.seq <= newest && signed.header.pts_us > top.header.header.pts_us
    }

    /// Whether `signed` comes from an earlier session of the source than the one we follow:
    /// captured before a header we hold with a lower number (or before the session header a
    /// rejoin handed on, numbered below it). Neighbours that have not yet noticed a restart
    /// still hold and offer the old session's segments, under numbers beyond our newest or,
    /// when asked, under the numbers of ours; a viewer that rejoined must not play them.
    /// Ignored, not cut: the sender is behind, not lying.
    pub(crate) fn is_stale(&self, store: &Store, signed: &SignedHeader) -> bool {
        let (seq, pts) = (signed.header.seq, signed.header.pts_us);
        let older = |top: &SignedHeader| top.header.seq < seq && pts < top.header.pts_us;
        store
            .segments
            .range(..seq)
            .next_back()
            .is_some_and(|(_, below)| older(&below.header))
            || self.newest.as_ref().is_some_and(|top| older(top))
    }

    /// The header of our newest segment, else the session header handed on by a rejoin.
    fn newest_header(&self, store: &Store) -> Option<Arc<SignedHeader>> {
        store
            .newest
            .and_then(|n| store.segments.get(&n))
            .map(|s| s.header.clone())
            .or_else(|| self.newest.clone())
    }
}

impl Swarm {
    /// A neighbour announced segment `seq`, numbered behind our newest (or at it, and we lack
    /// it): if the source restarted, that is a segment of its new session (numbered from 0
    /// again), and the segment we hold under that number is the old session's. Its header
    /// settles it in one round trip (a restart is recognised by a later capture time), instead
    /// of waiting for a stripe to bring one, which never happens when the neighbours that
    /// follow the new session are not our parents. Asked once per neighbour, so a stale claim
    /// costs one small request; a viewer whose newest is old-session segment 45 and which
    /// holds segments 0..=45 of that session (it joined at the start) is told by its first
    /// new-session neighbour.
    pub(crate) fn probe_session(&mut self, peer: PeerId, seq: u64) {
        if self.is_source() || self.session.restarted {
            return;
        }
        let Some(newest) = self.store.newest else {
            return;
        };
        if seq > newest || (seq == newest && self.store.segments.contains_key(&seq)) {
            return;
        }
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.restart_probed || n.stale_session {
            return;
        }
        n.restart_probed = true;
        self.send(peer, &Message::Request { seq, pieces: 0 });
    }

    /// Whether `signed` (not yet verified) would mean the source restarted; the source itself
    /// never thinks so.
    pub(crate) fn is_restart(&self, signed: &SignedHeader) -> bool {
        !self.is_source() && Session::is_restart(&self.store, signed)
    }

    /// A verified header of a new session came from `peer`: passed on to every other
    /// neighbour before this state is dropped (those that have not noticed yet do so at once,
    /// whoever they are connected to: a viewer whose only path to the new session is through
    /// us would otherwise wait for silence), and the binding told to rejoin. Once.
    pub(crate) fn on_new_session(&mut self, peer: PeerId, signed: SignedHeader) {
        if self.session.restarted {
            return;
        }
        self.session.restarted = true;
        let others: Vec<PeerId> = self.established().filter(|p| *p != peer).collect();
        self.send_each(&others, &Message::Header(signed.clone()));
        self.session.newest = Some(Arc::new(signed));
        self.outputs.push_back(Output::SourceRestarted);
    }

    /// Whether `signed` comes from an earlier session than ours (see [`Session::is_stale`]).
    pub(crate) fn is_stale_session(&self, signed: &SignedHeader) -> bool {
        self.session.is_stale(&self.store, signed)
    }

    /// `peer` offered a header of an older session: it has not noticed that the source
    /// restarted. It is shown our newest header once (a genuine header of the newer session
    /// makes it notice and rejoin), and from then on what it advertises or pushes is ignored,
    /// not held against it: it is behind, not lying.
    pub(crate) fn on_stale_session(&mut self, peer: PeerId) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.stale_session {
            return;
        }
        n.stale_session = true;
        if let Some(top) = self.session.newest_header(&self.store) {
            self.send(peer, &Message::Header((*top).clone()));
        }
        // Its numbers may have pushed the highest advertised segment beyond our session's.
        let now: Instant = self.now;
        self.max_advertised = self
            .neighbours
            .values()
            .filter(|n| !n.stale_session)
            .filter_map(|n| n.haves.max())
            .max()
            .map(|m| (m, self.max_advertised.map_or(now, |(_, at)| at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::StreamKey;
    use crate::core::segment::{SegmentHeader, SegmentMeta};
    use crate::core::store::Segment;
    use bytes::Bytes;

    fn header(key: &StreamKey, seq: u64, pts_us: u64) -> SignedHeader {
        let meta = SegmentMeta {
            pts_us,
            duration_us: 200_000,
            keyframe: true,
        };
        key.sign_header(SegmentHeader::describe(seq, 1, meta, pts_us, &[7; 10]))
    }

    fn store_with(key: &StreamKey, segs: &[(u64, u64)]) -> Store {
        let mut store = Store::default();
        for &(seq, pts) in segs {
            store.insert(Segment::new(
                Arc::new(header(key, seq, pts)),
                Bytes::new(),
                Instant::ZERO,
            ));
        }
        store
    }

    #[test]
    fn a_later_capture_under_an_old_number_is_a_restart() {
        let key = StreamKey::from_secret([5; 32]);
        let store = store_with(&key, &[(40, 8_000_000), (41, 8_200_000)]);
        // Renumbered from 0, captured later: the broadcaster reloaded.
        assert!(Session::is_restart(&store, &header(&key, 0, 9_000_000)));
        // A replay of an old header, or the next segment, is not.
        assert!(!Session::is_restart(&store, &header(&key, 40, 8_000_000)));
        assert!(!Session::is_restart(&store, &header(&key, 42, 8_400_000)));
        assert!(!Session::is_restart(&Store::default(), &header(&key, 0, 1)));
    }

    #[test]
    fn an_earlier_capture_above_a_held_number_is_a_stale_session() {
        let key = StreamKey::from_secret([6; 32]);
        // We follow the new session: segments 0 and 1, captured at 9 s.
        let store = store_with(&key, &[(0, 9_000_000), (1, 9_200_000)]);
        let session = Session::default();
        assert!(session.is_stale(&store, &header(&key, 45, 8_000_000)));
        assert!(!session.is_stale(&store, &header(&key, 2, 9_400_000)));
        // After a rejoin nothing is held yet, but the handed-on header still tells.
        let handed = Session {
            restarted: true,
            newest: Some(Arc::new(header(&key, 0, 9_000_000))),
        }
        .handed_on();
        assert!(!handed.restarted);
        assert!(handed.is_stale(&Store::default(), &header(&key, 45, 8_000_000)));
        assert_eq!(
            handed
                .newest_header(&Store::default())
                .map(|h| h.header.seq),
            Some(0)
        );
    }
}
