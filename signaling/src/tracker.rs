//! Swarm state: who is in which swarm, on which connection, and which offers are awaiting an
//! answer. No I/O: operations return the messages to deliver, and the connection tasks deliver
//! them (after the lock is released). Time comes in as an argument.
//!
//! Invariants:
//! - a `(info_hash, peer_id)` is registered at most once, owned by exactly one connection; a
//!   second connection announcing the same pair takes it over (a reconnecting client);
//! - offers go to distinct peers, never back to the offering peer;
//! - an answer is delivered only if the answering connection was sent the offer it answers
//!   (same swarm, same `offer_id`, from the same peer on the same connection);
//! - an empty swarm is removed at once, so `swarms.len()` counts live swarms only.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Kind;
use crate::protocol::{self, Announce, Event, Id20, Scrape, ScrapeStats};

/// Offers remembered per receiving connection for answer validation; older ones are forgotten
/// first. A connection answers an offer only after reading it, and everything queued ahead of
/// it (our send queue, then both kernels' socket buffers, easily a few hundred messages on a
/// busy connection) is read first: 128, the earlier bound, made aquatic_ws_load_test's answers
/// fail, since it answers offers read hundreds of messages after we queued them. 1,024 covers
/// that; an entry is 16 bytes and the list grows only with offers actually sent, so an idle
/// connection pays nothing and a flooded one at most 16 KiB.
pub const MAX_PENDING_OFFERS: usize = 1024;

/// How long an offer can be answered, seconds (aquatic_ws's `max_offer_age`; the reference
/// client gives up on an offer after 50 s).
pub const OFFER_TTL_SECS: u32 = 120;

/// One message queued for a connection.
#[derive(Debug)]
pub struct Out {
    /// The JSON text frame.
    pub text: String,
    /// What it is (for the out-metrics).
    pub kind: Kind,
    /// When the relayed offer/answer was read from its sender; `None` for replies.
    pub relayed_at: Option<Instant>,
}

pub use crate::outbox::{Outbox as ConnHandle, SendOutcome};

/// Limits the tracker enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Offers per announce.
    pub max_offers: usize,
    /// Peers per swarm.
    pub max_peers_per_swarm: usize,
    /// Swarms per server.
    pub max_swarms: usize,
    /// `(info_hash, peer_id)` registrations per connection.
    pub max_swarms_per_connection: usize,
    /// Swarms returned by a scrape.
    pub max_scrape: usize,
    /// Announce interval told to clients, seconds.
    pub interval_secs: u64,
}

/// Why the tracker refused an announce. `Display` is the `failure reason`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// More offers than [`Limits::max_offers`].
    #[error("too many offers (max {0})")]
    TooManyOffers(usize),
    /// The swarm has [`Limits::max_peers_per_swarm`] peers.
    #[error("swarm is full")]
    SwarmFull,
    /// The server has [`Limits::max_swarms`] swarms.
    #[error("too many swarms on this server")]
    TooManySwarms,
    /// This connection is in [`Limits::max_swarms_per_connection`] swarms.
    #[error("too many swarms on this connection")]
    TooManySwarmsPerConnection,
    /// An answer to an offer this connection was never sent (dropped silently: the protocol has
    /// no reply to answers).
    #[error("answer does not match an offer sent to this connection")]
    AnswerUnmatched,
}

impl Refusal {
    /// The `reason` label of the rejected-messages metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::TooManyOffers(_) => "too_many_offers",
            Refusal::SwarmFull => "swarm_full",
            Refusal::TooManySwarms => "too_many_swarms",
            Refusal::TooManySwarmsPerConnection => "too_many_swarms_per_connection",
            Refusal::AnswerUnmatched => "answer_unmatched",
        }
    }
}

/// What to send another connection; encoded by [`Delivery::encode`] after the tracker's lock
/// is released (encoding copies the SDP, the bulk of the work, and the lock is shared by every
/// connection).
pub enum Relay {
    /// The announce's offer at this index.
    Offer(usize),
    /// The announce's answer.
    Answer,
}

/// A message for another connection.
pub struct Delivery {
    /// The receiver.
    pub to: Arc<ConnHandle>,
    /// What it gets.
    pub relay: Relay,
}

impl Delivery {
    /// The message, from the announce that produced it, read at `now`.
    pub fn encode(&self, a: &Announce, now: Instant) -> Option<Out> {
        let (text, kind) = match self.relay {
            Relay::Offer(i) => (
                protocol::encode_offer(a.offers.get(i)?, &a.peer_id, &a.info_hash),
                Kind::Offer,
            ),
            Relay::Answer => (
                protocol::encode_answer(a.answer.as_ref()?, &a.peer_id, &a.info_hash),
                Kind::Answer,
            ),
        };
        Some(Out {
            text,
            kind,
            relayed_at: Some(now),
        })
    }
}

/// The announce reply's figures (encoded by [`Reply::encode`] outside the lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Announce interval, seconds.
    pub interval_secs: u64,
    /// Seeders.
    pub complete: usize,
    /// Leechers.
    pub incomplete: usize,
}

impl Reply {
    /// The JSON reply for swarm `info_hash`.
    pub fn encode(&self, info_hash: &Id20) -> String {
        protocol::encode_announce_reply(
            info_hash,
            self.interval_secs,
            self.complete,
            self.incomplete,
        )
    }
}

/// The result of an accepted announce.
#[derive(Default)]
pub struct Outcome {
    /// The reply to the announcing connection (none for answers).
    pub reply: Option<Reply>,
    /// Forwarded offers or the routed answer.
    pub deliveries: Vec<Delivery>,
    /// Offers or answers not sent because the receiver's queue was full (drop policy).
    pub dropped: usize,
}

struct Peer {
    peer_id: Id20,
    conn: Arc<ConnHandle>,
    seeder: bool,
    last_seen: Instant,
}

#[derive(Default)]
struct Swarm {
    /// Dense, for O(1) random picks; `index` maps peer_id to position.
    peers: Vec<Peer>,
    index: HashMap<Id20, usize, Fast>,
    complete: usize,
    downloaded: u64,
}

impl Swarm {
    fn remove_at(&mut self, i: usize) -> Peer {
        let p = self.peers.swap_remove(i);
        self.index.remove(&p.peer_id);
        if let Some(moved) = self.peers.get(i) {
            self.index.insert(moved.peer_id, i);
        }
        if p.seeder {
            self.complete -= 1;
        }
        p
    }
}

/// An offer forwarded to a connection, awaiting its answer: a keyed hash of
/// `(info_hash, offer_id, offerer peer_id, offerer connection)` (with a per-process SipHash key
/// a client cannot aim for collisions) and when it was sent (seconds since the tracker's
/// epoch): 16 bytes per entry.
struct Pending {
    key: u64,
    at_secs: u32,
}

struct ConnState {
    handle: Arc<ConnHandle>,
    /// `(info_hash, peer_id)` this connection registered (possibly taken over since).
    regs: Vec<(Id20, Id20)>,
    /// Offers sent, oldest first: the eviction order. Entries answered since stay until
    /// evicted (their key is gone from `answerable`).
    pending: VecDeque<Pending>,
    /// Key to send time of the offers still answerable. A map, not a scan of `pending`: a
    /// reader that lags hundreds of messages behind answers offers near the ring's far end,
    /// and scanning 1,024 entries per answer was a visible share of the tracker's time under
    /// aquatic_ws_load_test.
    answerable: HashMap<u64, u32, KeyHash>,
}

/// The maps' hasher: foldhash, seeded per process (see Cargo.toml).
type Fast = foldhash::fast::RandomState;

/// The pending-offer keys are keyed SipHash outputs already: hashing them again buys nothing.
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

/// Small fast PRNG (wyrand); peer picks need spread, not cryptographic strength.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// All swarms of one server.
pub struct Tracker {
    limits: Limits,
    swarms: HashMap<Id20, Swarm, Fast>,
    conns: HashMap<u64, ConnState, Fast>,
    peers: usize,
    rng: Rng,
    hasher: RandomState,
    /// Origin of [`Pending::at_secs`]: the first time the tracker was handed.
    epoch: Option<Instant>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(limits: Limits) -> Tracker {
        let hasher = RandomState::new();
        let seed = hasher.hash_one(0x5eed_u64);
        Tracker {
            limits,
            swarms: HashMap::default(),
            conns: HashMap::default(),
            peers: 0,
            rng: Rng(seed),
            hasher,
            epoch: None,
        }
    }

    /// Live swarms.
    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    /// Peers over all swarms.
    pub fn peer_count(&self) -> usize {
        self.peers
    }

    /// Adds a connection (before its first message).
    pub fn add_conn(&mut self, handle: Arc<ConnHandle>) {
        self.conns.insert(
            handle.id,
            ConnState {
                handle,
                regs: Vec::new(),
                pending: VecDeque::new(),
                answerable: HashMap::default(),
            },
        );
    }

    /// Removes a connection and every peer it still owns.
    pub fn remove_conn(&mut self, id: u64) {
        let Some(st) = self.conns.remove(&id) else {
            return;
        };
        for (ih, pid) in st.regs {
            self.remove_peer(&ih, &pid, Some(id));
        }
    }

    /// Removes `pid` from swarm `ih` if present and (when `owner` is given) owned by that
    /// connection. Returns whether a peer was removed.
    fn remove_peer(&mut self, ih: &Id20, pid: &Id20, owner: Option<u64>) -> bool {
        let Some(swarm) = self.swarms.get_mut(ih) else {
            return false;
        };
        let Some(&i) = swarm.index.get(pid) else {
            return false;
        };
        if owner.is_some_and(|o| swarm.peers[i].conn.id != o) {
            return false;
        }
        swarm.remove_at(i);
        self.peers -= 1;
        if swarm.peers.is_empty() {
            self.swarms.remove(ih);
        }
        true
    }

    fn offer_key(&self, info_hash: &Id20, offer_id: &str, from_peer: &Id20, from_conn: u64) -> u64 {
        self.hasher
            .hash_one((info_hash, offer_id, from_peer, from_conn))
    }

    /// `now` in whole seconds since the tracker's epoch (set by the first call).
    fn secs(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Handles an announce from connection `conn` read at `now`.
    pub fn announce(&mut self, conn: u64, a: &Announce, now: Instant) -> Result<Outcome, Refusal> {
        if let Some(answer) = &a.answer {
            return self.route_answer(conn, a, answer, now);
        }
        if a.offers.len() > self.limits.max_offers {
            return Err(Refusal::TooManyOffers(self.limits.max_offers));
        }
        if !self.conns.contains_key(&conn) {
            return Ok(Outcome::default());
        }
        if a.event == Event::Stopped {
            if self.remove_peer(&a.info_hash, &a.peer_id, Some(conn)) {
                if let Some(st) = self.conns.get_mut(&conn) {
                    st.regs.retain(|r| *r != (a.info_hash, a.peer_id));
                }
            }
            return Ok(Outcome {
                reply: Some(self.reply(&a.info_hash)),
                deliveries: Vec::new(),
                dropped: 0,
            });
        }
        self.upsert(conn, a, now)?;
        let reply = Some(self.reply(&a.info_hash));
        let mut deliveries = Vec::with_capacity(a.offers.len());
        let mut dropped = 0;
        if !a.offers.is_empty() {
            let (picks, full) = self.pick(&a.info_hash, a.offers.len(), &a.peer_id);
            dropped = full;
            let at_secs = self.secs(now);
            for (i, (offer, to)) in a.offers.iter().zip(picks).enumerate() {
                let key = self.offer_key(&a.info_hash, &offer.offer_id, &a.peer_id, conn);
                if let Some(st) = self.conns.get_mut(&to.id) {
                    while let Some(p) = st.pending.front() {
                        if st.pending.len() < MAX_PENDING_OFFERS
                            && at_secs.saturating_sub(p.at_secs) <= OFFER_TTL_SECS
                        {
                            break;
                        }
                        if st.answerable.get(&p.key) == Some(&p.at_secs) {
                            st.answerable.remove(&p.key);
                        }
                        st.pending.pop_front();
                    }
                    st.pending.push_back(Pending { key, at_secs });
                    st.answerable.insert(key, at_secs);
                }
                deliveries.push(Delivery {
                    to,
                    relay: Relay::Offer(i),
                });
            }
        }
        Ok(Outcome {
            reply,
            deliveries,
            dropped,
        })
    }

    fn reply(&self, ih: &Id20) -> Reply {
        let (complete, incomplete) = self.counts(ih);
        Reply {
            interval_secs: self.limits.interval_secs,
            complete,
            incomplete,
        }
    }

    fn counts(&self, ih: &Id20) -> (usize, usize) {
        self.swarms
            .get(ih)
            .map_or((0, 0), |s| (s.complete, s.peers.len() - s.complete))
    }

    fn upsert(&mut self, conn: u64, a: &Announce, now: Instant) -> Result<(), Refusal> {
        let becomes_seeder = a.seeder || a.event == Event::Completed;
        let swarm_count = self.swarms.len();
        let regs_len = self.conns.get(&conn).map_or(0, |c| c.regs.len());
        let swarm = match self.swarms.entry(a.info_hash) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if swarm_count >= self.limits.max_swarms {
                    return Err(Refusal::TooManySwarms);
                }
                if regs_len >= self.limits.max_swarms_per_connection {
                    return Err(Refusal::TooManySwarmsPerConnection);
                }
                e.insert(Swarm::default())
            }
        };
        if let Some(&i) = swarm.index.get(&a.peer_id) {
            let p = &mut swarm.peers[i];
            if p.conn.id != conn {
                // Taken over by this connection (a reconnecting client).
                if let Some(st) = self.conns.get_mut(&conn) {
                    p.conn = st.handle.clone();
                    st.regs.push((a.info_hash, a.peer_id));
                }
            }
            p.last_seen = now;
            if becomes_seeder && !p.seeder {
                p.seeder = true;
                swarm.complete += 1;
                if a.event == Event::Completed {
                    swarm.downloaded += 1;
                }
            }
            return Ok(());
        }
        if swarm.peers.len() >= self.limits.max_peers_per_swarm {
            return Err(Refusal::SwarmFull);
        }
        if regs_len >= self.limits.max_swarms_per_connection {
            if swarm.peers.is_empty() {
                self.swarms.remove(&a.info_hash);
            }
            return Err(Refusal::TooManySwarmsPerConnection);
        }
        // The caller checked the connection is known; its handle is cloned only here, for a
        // new peer (an announce from a known peer, the usual case, touches no reference count).
        let Some(st) = self.conns.get_mut(&conn) else {
            if swarm.peers.is_empty() {
                self.swarms.remove(&a.info_hash);
            }
            return Ok(());
        };
        st.regs.push((a.info_hash, a.peer_id));
        let handle = st.handle.clone();
        swarm.index.insert(a.peer_id, swarm.peers.len());
        swarm.peers.push(Peer {
            peer_id: a.peer_id,
            conn: handle,
            seeder: becomes_seeder,
            last_seen: now,
        });
        if becomes_seeder {
            swarm.complete += 1;
            if a.event == Event::Completed {
                swarm.downloaded += 1;
            }
        }
        self.peers += 1;
        Ok(())
    }

    /// Up to `k` distinct peers of swarm `ih` other than `exclude`, at random: the
    /// connections of those with room for an offer, and how many had none (their offer is
    /// dropped; checked here so a full receiver costs no reference count traffic).
    ///
    /// Only the sending peer is excluded, not its connection: WebTorrent clients share one
    /// socket per tracker URL among all their torrents (and peer ids), exactly as the reference
    /// server assumes.
    fn pick(&mut self, ih: &Id20, k: usize, exclude: &Id20) -> (Vec<Arc<ConnHandle>>, usize) {
        let Some(swarm) = self.swarms.get(ih) else {
            return (Vec::new(), 0);
        };
        let mut full = 0;
        let mut take = |out: &mut Vec<Arc<ConnHandle>>, conn: &Arc<ConnHandle>| {
            if conn.has_room() {
                out.push(conn.clone());
            } else {
                full += 1;
            }
        };
        let n = swarm.peers.len();
        let mut out: Vec<Arc<ConnHandle>> = Vec::with_capacity(k);
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        if n <= 4 * k + 16 {
            // Small swarm: partial Fisher-Yates over the eligible indices.
            let mut idx: Vec<usize> = (0..n)
                .filter(|&i| swarm.peers[i].peer_id != *exclude)
                .collect();
            for j in 0..k.min(idx.len()) {
                let r = j + self.rng.below(idx.len() - j);
                idx.swap(j, r);
                take(&mut out, &swarm.peers[idx[j]].conn);
            }
        } else {
            // Large swarm: rejection sampling; with n > 4k the expected tries are < 2k.
            let mut tries = 0;
            while chosen.len() < k && tries < 16 * k {
                tries += 1;
                let i = self.rng.below(n);
                if swarm.peers[i].peer_id == *exclude || chosen.contains(&i) {
                    continue;
                }
                chosen.push(i);
                take(&mut out, &swarm.peers[i].conn);
            }
        }
        (out, full)
    }

    fn route_answer(
        &mut self,
        conn: u64,
        a: &Announce,
        answer: &protocol::Answer,
        now: Instant,
    ) -> Result<Outcome, Refusal> {
        // The offerer must still be in the swarm; the connection it is on now is part of the
        // key, so an offer made on a connection since replaced cannot be answered.
        let to = self
            .swarms
            .get(&a.info_hash)
            .and_then(|s| s.index.get(&answer.to_peer_id).map(|&i| &s.peers[i]))
            .map(|p| p.conn.clone())
            .ok_or(Refusal::AnswerUnmatched)?;
        let key = self.offer_key(&a.info_hash, &answer.offer_id, &answer.to_peer_id, to.id);
        let now_secs = self.secs(now);
        let st = self.conns.get_mut(&conn).ok_or(Refusal::AnswerUnmatched)?;
        let at_secs = st.answerable.remove(&key).ok_or(Refusal::AnswerUnmatched)?;
        if now_secs.saturating_sub(at_secs) > OFFER_TTL_SECS {
            return Err(Refusal::AnswerUnmatched);
        }
        if !to.has_room() {
            return Ok(Outcome {
                dropped: 1,
                ..Outcome::default()
            });
        }
        Ok(Outcome {
            reply: None,
            dropped: 0,
            deliveries: vec![Delivery {
                to,
                relay: Relay::Answer,
            }],
        })
    }

    /// The scrape reply; an empty list means all swarms, capped at [`Limits::max_scrape`].
    pub fn scrape(&self, s: &Scrape) -> String {
        let stats = |sw: Option<&Swarm>| {
            sw.map_or_else(ScrapeStats::default, |sw| ScrapeStats {
                complete: sw.complete,
                incomplete: sw.peers.len() - sw.complete,
                downloaded: sw.downloaded,
            })
        };
        let files: Vec<(Id20, ScrapeStats)> = if s.info_hashes.is_empty() {
            self.swarms
                .iter()
                .take(self.limits.max_scrape)
                .map(|(ih, sw)| (*ih, stats(Some(sw))))
                .collect()
        } else {
            s.info_hashes
                .iter()
                .take(self.limits.max_scrape)
                .map(|ih| (*ih, stats(self.swarms.get(ih))))
                .collect()
        };
        protocol::encode_scrape(&files, self.limits.interval_secs)
    }

    /// Removes peers not re-announced within `ttl` of `now`. Returns how many.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut gone: Vec<(Id20, Id20, u64)> = Vec::new();
        for (ih, sw) in &self.swarms {
            for p in &sw.peers {
                if now.saturating_duration_since(p.last_seen) > ttl {
                    gone.push((*ih, p.peer_id, p.conn.id));
                }
            }
        }
        for (ih, pid, conn) in &gone {
            self.remove_peer(ih, pid, Some(*conn));
            if let Some(st) = self.conns.get_mut(conn) {
                st.regs.retain(|r| *r != (*ih, *pid));
            }
        }
        gone.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;

    fn limits() -> Limits {
        Limits {
            max_offers: 10,
            max_peers_per_swarm: 100,
            max_swarms: 10,
            max_swarms_per_connection: 4,
            max_scrape: 10,
            interval_secs: 120,
        }
    }

    fn conn(t: &mut Tracker, id: u64) {
        t.add_conn(Arc::new(ConnHandle::new(id, None, 8, false)));
    }

    fn announce(ih: u8, pid: u8, offers: usize) -> Announce {
        let msg = serde_json::json!({
            "action": "announce",
            "info_hash": Id20([ih; 20]).to_binary_string(),
            "peer_id": Id20([pid; 20]).to_binary_string(),
            "offers": (0..offers).map(|i| serde_json::json!({
                "offer": {"type": "offer", "sdp": format!("sdp {pid} {i}")},
                "offer_id": format!("o{pid}-{i}"),
            })).collect::<Vec<_>>(),
        });
        match crate::protocol::parse(msg.to_string().as_bytes()) {
            Ok(Request::Announce(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offers_go_to_distinct_others_and_answers_back() {
        let mut t = Tracker::new(limits());
        let now = Instant::now();
        (1..=5).for_each(|i| conn(&mut t, i));
        for i in 1..=4u8 {
            t.announce(u64::from(i), &announce(9, i, 0), now).unwrap();
        }
        let a5 = announce(9, 5, 10);
        let out = t.announce(5, &a5, now).unwrap();
        let mut to: Vec<u64> = out.deliveries.iter().map(|d| d.to.id).collect();
        to.sort_unstable();
        assert_eq!(
            to,
            vec![1, 2, 3, 4],
            "4 others, each once, never the sender"
        );
        // Peer on conn 1 answers the offer it got.
        let offer_to_1 = out.deliveries.iter().find(|d| d.to.id == 1).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&offer_to_1.encode(&a5, now).unwrap().text).unwrap();
        let mut ans = announce(9, 1, 0);
        ans.answer = Some(protocol::Answer {
            to_peer_id: Id20([5; 20]),
            offer_id: v["offer_id"].as_str().unwrap().to_owned(),
            answer: serde_json::value::RawValue::from_string("{\"type\":\"answer\"}".into())
                .unwrap(),
        });
        let out = t.announce(1, &ans, now).unwrap();
        assert!(out.reply.is_none());
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(out.deliveries[0].to.id, 5);
        // The same answer again (replay) or from a connection never sent the offer is refused.
        let mut again = announce(9, 2, 0);
        again.answer = Some(protocol::Answer {
            to_peer_id: Id20([5; 20]),
            offer_id: v["offer_id"].as_str().unwrap().to_owned(),
            answer: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        });
        assert_eq!(
            t.announce(2, &again, now).err(),
            Some(Refusal::AnswerUnmatched)
        );
    }

    #[test]
    fn limits_and_cleanup() {
        let mut t = Tracker::new(limits());
        let now = Instant::now();
        conn(&mut t, 1);
        for ih in 0..4 {
            t.announce(1, &announce(ih, 1, 0), now).unwrap();
        }
        assert_eq!(
            t.announce(1, &announce(4, 1, 0), now).err(),
            Some(Refusal::TooManySwarmsPerConnection)
        );
        assert_eq!(t.swarm_count(), 4);
        assert_eq!(
            t.announce(1, &announce(0, 1, 11), now).err(),
            Some(Refusal::TooManyOffers(10))
        );
        t.remove_conn(1);
        assert_eq!((t.swarm_count(), t.peer_count()), (0, 0));
        conn(&mut t, 2);
        t.announce(2, &announce(0, 2, 0), now).unwrap();
        assert_eq!(
            t.expire(now + Duration::from_secs(10), Duration::from_secs(5)),
            1
        );
        assert_eq!(t.peer_count(), 0);
    }

    /// The answer to the newest offer sent to a connection is matched however many offers
    /// it was sent since, up to [`MAX_PENDING_OFFERS`]; older and expired ones are not.
    #[test]
    fn pending_offers_are_bounded_by_count_and_age() {
        let mut t = Tracker::new(limits());
        let now = Instant::now();
        conn(&mut t, 1);
        conn(&mut t, 2);
        t.announce(1, &announce(9, 1, 0), now).unwrap();
        let answer = |offer_id: String| {
            let mut ans = announce(9, 1, 0);
            ans.answer = Some(protocol::Answer {
                to_peer_id: Id20([2; 20]),
                offer_id,
                answer: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            });
            ans
        };
        // Conn 2 sends one offer per announce to conn 1 (the only other peer), with distinct
        // ids: more than the bound in all.
        let n = MAX_PENDING_OFFERS + 10;
        for i in 0..n {
            let mut a = announce(9, 2, 1);
            a.offers[0].offer_id = format!("x{i}");
            assert_eq!(t.announce(2, &a, now).unwrap().deliveries.len(), 1);
        }
        // The oldest ten are forgotten; the 11th oldest and the newest still match.
        assert_eq!(
            t.announce(1, &answer("x9".into()), now).err(),
            Some(Refusal::AnswerUnmatched)
        );
        assert_eq!(
            t.announce(1, &answer("x10".into()), now)
                .unwrap()
                .deliveries
                .len(),
            1
        );
        assert_eq!(
            t.announce(1, &answer(format!("x{}", n - 1)), now)
                .unwrap()
                .deliveries
                .len(),
            1
        );
        // An offer is answered once.
        assert_eq!(
            t.announce(1, &answer("x10".into()), now).err(),
            Some(Refusal::AnswerUnmatched)
        );
        // Past the offer TTL nothing matches.
        let late = now + Duration::from_secs(u64::from(OFFER_TTL_SECS) + 2);
        assert_eq!(
            t.announce(1, &answer("x11".into()), late).err(),
            Some(Refusal::AnswerUnmatched)
        );
    }
}
