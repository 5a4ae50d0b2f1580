//! Finding neighbours beyond the tracker: peer exchange (neighbours name their neighbours),
//! connection attempts to the peers learned so, and the relay of their signalling through the
//! neighbour that named them.
//!
//! [`Discovery`] owns who is known, who is being connected to and who is banned; the
//! `impl Swarm` below turns messages into its changes and its choices into outputs.

use super::api::{DisconnectReason, Output};
use super::id::PeerId;
use super::neighbour::FLOOD_RELAYS_PER_SEC;
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::{Message, MAX_PEX_PEERS, MAX_SIGNAL_SIZE};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A `Connect` not followed by `Connected` within this is forgotten.
const CONNECT_EXPIRY: Duration = Duration::from_secs(15);
/// Peer-exchange period.
pub(crate) const PEX_INTERVAL: Duration = Duration::from_secs(20);
/// A peer asked to connect to (or connecting to us) is not offered to again for this long.
const CONNECT_BACKOFF: Duration = Duration::from_secs(60);
/// Most peers remembered from exchanges; beyond, the lowest ids are forgotten (bounded memory).
const MAX_KNOWN: usize = 256;

/// The peers this one knows of besides its neighbours.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    /// Peers learned by exchange → the neighbour that told us (relay for signalling).
    known: BTreeMap<PeerId, PeerId>,
    /// `Connect` outputs awaiting `Connected`.
    connecting: BTreeMap<PeerId, Instant>,
    /// Peers we asked to connect to before: not again before the given time.
    backoff: BTreeMap<PeerId, Instant>,
    /// Cut off for misbehaviour: never accepted, learned or connected to again this session.
    banned: BTreeSet<PeerId>,
    /// When peers are next exchanged with every neighbour (`ZERO`: never yet).
    next_exchange: Instant,
}

impl Discovery {
    /// Whether `peer` was cut off for misbehaviour.
    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains(peer)
    }

    /// A transport to `peer` opened: no longer an attempt.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        self.connecting.remove(peer);
    }

    /// `Connect`s still awaiting their `Connected`.
    pub(crate) fn attempts(&self) -> usize {
        self.connecting.len()
    }

    /// `peer` misbehaved: banned, and forgotten as a candidate.
    pub(crate) fn ban(&mut self, peer: PeerId) {
        self.banned.insert(peer);
        self.known.remove(&peer);
    }

    /// `peer` is no longer a neighbour: what it told us cannot be relayed through it.
    pub(crate) fn forget_neighbour(&mut self, peer: PeerId) {
        self.known.retain(|cand, via| *via != peer && *cand != peer);
    }

    /// Forgets attempts that never connected and backoffs that ran out.
    fn expire(&mut self, now: Instant) {
        self.connecting
            .retain(|_, at| now.saturating_duration_since(*at) < CONNECT_EXPIRY);
        self.backoff.retain(|_, until| *until > now);
    }

    /// Remembers peers `via` named (not ourselves, not the banned), within [`MAX_KNOWN`].
    fn learn(&mut self, local: PeerId, via: PeerId, peers: Vec<PeerId>) {
        for p in peers {
            if p != local && !self.banned.contains(&p) {
                self.known.entry(p).or_insert(via);
            }
        }
        while self.known.len() > MAX_KNOWN {
            self.known.pop_first();
        }
    }
}

impl Swarm {
    /// Sends `peer` a random sample of our other neighbours, so that different neighbours
    /// learn different peers.
    pub(crate) fn send_pex(&mut self, peer: PeerId) {
        let mut peers: Vec<PeerId> = self.established().filter(|p| *p != peer).collect();
        while peers.len() > MAX_PEX_PEERS {
            let i = self.rng.below(peers.len() as u64) as usize;
            peers.swap_remove(i);
        }
        if !peers.is_empty() {
            self.send(peer, &Message::Peers { peers });
        }
    }

    /// Periodic: every [`PEX_INTERVAL`] (not at the first tick: a new neighbour gets peers
    /// with its handshake), peers go to each of `peers`; stale attempts are forgotten and new
    /// ones started while below the target degree.
    pub(crate) fn discover(&mut self, now: Instant, peers: &[PeerId]) {
        if now >= self.discovery.next_exchange {
            let first = self.discovery.next_exchange == Instant::ZERO;
            self.discovery.next_exchange = now + PEX_INTERVAL;
            if !first {
                for p in peers {
                    self.send_pex(*p);
                }
            }
        }
        self.discovery.expire(now);
        self.connect_more(now);
    }

    /// A neighbour's `Peers`.
    pub(crate) fn on_peers(&mut self, peer: PeerId, peers: Vec<PeerId>) {
        self.discovery.learn(self.local, peer, peers);
    }

    /// Below the target degree: asks the binding to connect to peers learned by exchange.
    fn connect_more(&mut self, now: Instant) {
        let mut want = self.wanted_neighbours();
        let d = &mut self.discovery;
        if want == 0 || d.known.is_empty() {
            return;
        }
        let mut cands: Vec<PeerId> = d
            .known
            .keys()
            .filter(|p| {
                !self.neighbours.contains_key(p)
                    && !d.connecting.contains_key(p)
                    && !d.backoff.contains_key(p)
                    && !d.banned.contains(p)
            })
            .copied()
            .collect();
        while want > 0 && !cands.is_empty() {
            let i = self.rng.below(cands.len() as u64) as usize;
            let p = cands.swap_remove(i);
            d.connecting.insert(p, now);
            d.backoff.insert(p, now + CONNECT_BACKOFF);
            self.outputs.push_back(Output::Connect { peer: p });
            want -= 1;
        }
    }

    /// A `Relay` from neighbour `peer`: signalling for us (handed to the binding) or from
    /// `peer` itself for one of our neighbours (passed on). Anything else is dropped.
    pub(crate) fn on_relay(
        &mut self,
        now: Instant,
        peer: PeerId,
        from: PeerId,
        to: PeerId,
        payload: Vec<u8>,
    ) {
        {
            let Some(n) = self.neighbours.established_mut(&peer) else {
                return;
            };
            n.flood_relays += 1;
            if n.flood_relays > FLOOD_RELAYS_PER_SEC {
                return self.cut(now, peer, DisconnectReason::Flood);
            }
        }
        if to == self.local {
            let d = &mut self.discovery;
            if !d.banned.contains(&from) {
                // The answer goes back the way the offer came, even if no peer exchange named
                // `from` to us yet.
                d.known.entry(from).or_insert(peer);
                // It is connecting to us: do not also offer to it (glare).
                d.backoff.insert(from, now + CONNECT_BACKOFF);
                self.outputs.push_back(Output::Signal { from, payload });
            }
        } else if from == peer && self.neighbours.established(&to).is_some() {
            self.send(to, &Message::Relay { from, to, payload });
        }
    }

    /// The binding's signalling for `to`: relayed through the neighbour that named it.
    pub(crate) fn on_send_signal(&mut self, to: PeerId, payload: Vec<u8>) {
        if payload.len() > MAX_SIGNAL_SIZE {
            return;
        }
        let via = self
            .discovery
            .known
            .get(&to)
            .copied()
            .filter(|v| self.neighbours.established(v).is_some());
        if let Some(via) = via {
            let from = self.local;
            self.send(via, &Message::Relay { from, to, payload });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PeerId {
        let mut b = [0u8; 20];
        b[..2].copy_from_slice(&n.to_be_bytes());
        PeerId(b)
    }

    #[test]
    fn learning_skips_ourselves_and_the_banned_and_stays_bounded() {
        let mut d = Discovery::default();
        d.ban(id(2));
        d.learn(id(0), id(9), vec![id(0), id(1), id(2)]);
        assert_eq!(d.known.keys().copied().collect::<Vec<_>>(), vec![id(1)]);
        // The first neighbour to name a peer stays its relay.
        d.learn(id(0), id(8), vec![id(1)]);
        assert_eq!(d.known.get(&id(1)), Some(&id(9)));
        d.learn(id(0), id(9), (10..400).map(id).collect());
        assert_eq!(d.known.len(), MAX_KNOWN);
        // Losing the relay loses what it named.
        d.forget_neighbour(id(9));
        assert!(d.known.is_empty());
    }

    #[test]
    fn attempts_and_backoffs_expire() {
        let mut d = Discovery::default();
        let t0 = Instant::from_millis(1_000);
        d.connecting.insert(id(1), t0);
        d.backoff.insert(id(1), t0 + CONNECT_BACKOFF);
        d.expire(t0 + CONNECT_EXPIRY - Duration::from_millis(1));
        assert!(d.connecting.contains_key(&id(1)));
        d.expire(t0 + CONNECT_EXPIRY);
        assert!(d.connecting.is_empty());
        assert!(d.backoff.contains_key(&id(1)));
        d.expire(t0 + CONNECT_BACKOFF);
        assert!(d.backoff.is_empty());
    }
}
