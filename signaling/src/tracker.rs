//! Swarm state: who is in which swarm, on which connection, and which offers are awaiting an
//! answer. No I/O: operations return the messages to deliver, and the connection tasks deliver
//! them (after the locks are released). Time comes in as an argument.
//!
//! Concurrency: swarms are sharded by info_hash, each shard behind its own lock; what a
//! connection registered is kept by its own task (a [`Member`]); the offers a connection may
//! answer are kept in its outbox ([`crate::offers`]). One lock over everything made the two
//! worker threads wait on each other under aquatic_ws_load_test (10,000 swarms): futex waits and
//! wake-ups on it were ~7 % of the server's CPU.
//!
//! Invariants:
//! - a `(info_hash, peer_id)` is registered at most once, owned by exactly one connection; a
//!   second connection announcing the same pair takes it over (a reconnecting client) only
//!   from the same client address (see [`Refusal::PeerIdInUse`]), and only within its own
//!   per-connection limit;
//! - every registration is charged to its connection's address ([`crate::budget`]), and
//!   given back when it leaves its swarm however that happens;
//! - offers go to distinct peers, never back to the offering peer;
//! - an answer is delivered only if the answering connection was sent the offer it answers
//!   (same swarm, same `offer_id`, from the same peer on the same connection);
//! - an empty swarm is removed at once, so the swarm count counts live swarms only.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::budget::{AddrBudget, AddrKey};
use crate::metrics::Kind;
use crate::protocol::{self, Announce, Event, Id20, Scrape, ScrapeStats};

pub use crate::offers::{MAX_PENDING_OFFERS, OFFER_TTL_SECS};

/// Swarm shards. With two worker threads and thousands of swarms, 64 makes two announces
/// meeting on one lock rare; each shard is a cache line of its own.
const SHARDS: usize = 64;

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
    /// Registrations per client address (IPv4, or IPv6 /64), over all its connections.
    pub max_peers_per_address: usize,
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
    /// This connection's address holds [`Limits::max_peers_per_address`] registrations.
    #[error("too many peers from this address")]
    TooManyPeersFromAddress,
    /// The peer_id is registered in this swarm by a connection from another address. A
    /// takeover (the reconnect path) is allowed from the same address only: peer ids are not
    /// secret (every offer relayed carries its sender's), and taking one over took the
    /// victim's membership and its next offers (issue 24).
    #[error("peer_id is in use by another connection")]
    PeerIdInUse,
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
            Refusal::TooManyPeersFromAddress => "too_many_peers_from_address",
            Refusal::PeerIdInUse => "peer_id_in_use",
            Refusal::AnswerUnmatched => "answer_unmatched",
        }
    }
}

/// What to send another connection; encoded by [`Delivery::encode`] after the shard's lock is
/// released (encoding copies the SDP, the bulk of the work, and the lock is shared by every
/// connection of the shard's swarms).
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

/// The announce reply's figures (encoded by [`Reply::encode`] outside the shard's lock).
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
    /// `conn.id`, kept inline: checking the owner must not touch the connection's cache line.
    conn_id: u64,
    conn: Arc<ConnHandle>,
    /// The address its registration is charged to.
    addr: AddrKey,
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

    fn stats(&self) -> ScrapeStats {
        ScrapeStats {
            complete: self.complete,
            incomplete: self.peers.len() - self.complete,
            downloaded: self.downloaded,
        }
    }
}

/// One connection's part in the tracker, owned by the connection's task and handed to every
/// call that acts for it.
pub struct Member {
    handle: Arc<ConnHandle>,
    /// The connection's client address.
    addr: AddrKey,
    /// `(info_hash, peer_id)` this connection registered. Entries taken over by another
    /// connection or expired since stay until [`Tracker::prune`] (for the per-connection
    /// limit) or the connection leaves (where removal checks the owner).
    regs: Vec<(Id20, Id20)>,
    /// [`Tracker::sweeps`] when `regs` was last pruned.
    pruned_at: u64,
}

/// The maps' hasher: foldhash, seeded per process (see Cargo.toml).
type Fast = foldhash::fast::RandomState;

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

/// The swarms of one shard, and the shard's own random picks.
struct ShardInner {
    swarms: HashMap<Id20, Swarm, Fast>,
    rng: Rng,
}

#[repr(align(64))]
struct Shard(Mutex<ShardInner>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardInner> {
        // A panic while holding the lock leaves consistent state (no operation panics
        // halfway by design); recover rather than poison every later announce.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// All swarms of one server.
pub struct Tracker {
    limits: Limits,
    shards: Box<[Shard]>,
    /// Which shard an info_hash is in (seeded: clients choose info_hashes).
    shard_of: Fast,
    /// Live swarms and peers over all shards. The swarm limit is checked against this
    /// without a global lock, so concurrent announces can pass it by at most one each.
    swarms: AtomicUsize,
    peers: AtomicUsize,
    /// Registrations per address.
    budget: AddrBudget,
    /// Calls to [`Tracker::expire`] so far: a member prunes its registrations at most once
    /// between two, so a client at its limit cannot make every announce a scan.
    sweeps: AtomicU64,
    hasher: RandomState,
    /// Origin of the offers' send times.
    epoch: Instant,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(limits: Limits) -> Tracker {
        let hasher = RandomState::new();
        let seed = hasher.hash_one(0x5eed_u64);
        let shards = (0..SHARDS as u64)
            .map(|i| {
                Shard(Mutex::new(ShardInner {
                    swarms: HashMap::default(),
                    rng: Rng(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                }))
            })
            .collect();
        Tracker {
            budget: AddrBudget::new(limits.max_peers_per_address),
            limits,
            shards,
            shard_of: Fast::default(),
            swarms: AtomicUsize::new(0),
            peers: AtomicUsize::new(0),
            sweeps: AtomicU64::new(0),
            hasher,
            epoch: Instant::now(),
        }
    }

    /// Live swarms.
    pub fn swarm_count(&self) -> usize {
        self.swarms.load(Relaxed)
    }

    /// Peers over all swarms.
    pub fn peer_count(&self) -> usize {
        self.peers.load(Relaxed)
    }

    /// Registrations charged to `addr` now.
    pub fn held_by(&self, addr: AddrKey) -> usize {
        self.budget.held(addr)
    }

    /// A connection from client address `addr` joins (before its first message).
    pub fn join(&self, handle: Arc<ConnHandle>, addr: AddrKey) -> Member {
        Member {
            handle,
            addr,
            regs: Vec::new(),
            pruned_at: self.sweeps.load(Relaxed),
        }
    }

    /// A connection leaves: every peer it still owns is removed.
    pub fn leave(&self, m: Member) {
        for (ih, pid) in m.regs {
            self.remove_peer(&mut self.shard(&ih), &ih, &pid, Some(m.handle.id));
        }
    }

    fn shard(&self, ih: &Id20) -> MutexGuard<'_, ShardInner> {
        let i = (self.shard_of.hash_one(ih) % SHARDS as u64) as usize;
        self.shards[i].lock()
    }

    /// Removes `pid` from swarm `ih` (in shard `sh`) if present and (when `owner` is given)
    /// owned by that connection. Returns whether a peer was removed.
    fn remove_peer(&self, sh: &mut ShardInner, ih: &Id20, pid: &Id20, owner: Option<u64>) -> bool {
        let Some(swarm) = sh.swarms.get_mut(ih) else {
            return false;
        };
        let Some(&i) = swarm.index.get(pid) else {
            return false;
        };
        if owner.is_some_and(|o| swarm.peers[i].conn_id != o) {
            return false;
        }
        let gone = swarm.remove_at(i);
        self.budget.give(gone.addr);
        self.peers.fetch_sub(1, Relaxed);
        if swarm.peers.is_empty() {
            sh.swarms.remove(ih);
            self.swarms.fetch_sub(1, Relaxed);
        }
        true
    }

    /// Drops the registrations `m` no longer owns (taken over or expired), and repeats (a peer
    /// that expired and announced again is listed twice).
    fn prune(&self, m: &mut Member) {
        let id = m.handle.id;
        m.regs.sort_unstable();
        m.regs.dedup();
        m.regs.retain(|(ih, pid)| {
            let sh = self.shard(ih);
            sh.swarms
                .get(ih)
                .and_then(|sw| sw.index.get(pid).map(|&i| sw.peers[i].conn_id == id))
                .unwrap_or(false)
        });
        m.pruned_at = self.sweeps.load(Relaxed);
    }

    fn offer_key(&self, info_hash: &Id20, offer_id: &str, from_peer: &Id20, from_conn: u64) -> u64 {
        self.hasher
            .hash_one((info_hash, offer_id, from_peer, from_conn))
    }

    /// `now` in whole seconds since the tracker's epoch.
    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Handles an announce from member `m` read at `now`.
    pub fn announce(&self, m: &mut Member, a: &Announce, now: Instant) -> Result<Outcome, Refusal> {
        if let Some(answer) = &a.answer {
            return self.route_answer(m, a, answer, now);
        }
        if a.offers.len() > self.limits.max_offers {
            return Err(Refusal::TooManyOffers(self.limits.max_offers));
        }
        let conn = m.handle.id;
        if a.event == Event::Stopped {
            let mut sh = self.shard(&a.info_hash);
            if self.remove_peer(&mut sh, &a.info_hash, &a.peer_id, Some(conn)) {
                m.regs.retain(|r| *r != (a.info_hash, a.peer_id));
            }
            let reply = self.reply(sh.swarms.get(&a.info_hash));
            return Ok(Outcome {
                reply: Some(reply),
                ..Outcome::default()
            });
        }
        if m.regs.len() >= self.limits.max_swarms_per_connection
            && m.pruned_at != self.sweeps.load(Relaxed)
        {
            self.prune(m);
        }
        let (reply, picks, dropped) = {
            let mut guard = self.shard(&a.info_hash);
            let ShardInner { swarms, rng } = &mut *guard;
            let swarm = self.upsert(swarms, m, a, now)?;
            let reply = self.reply(Some(swarm));
            let (picks, full) = if a.offers.is_empty() {
                (Vec::new(), 0)
            } else {
                pick(swarm, rng, a.offers.len(), &a.peer_id)
            };
            (reply, picks, full)
        };
        // The receivers' offer books are their own locks: filled after the shard's is released.
        let at_secs = self.secs(now);
        let deliveries = a
            .offers
            .iter()
            .zip(picks)
            .enumerate()
            .map(|(i, (offer, to))| {
                let key = self.offer_key(&a.info_hash, &offer.offer_id, &a.peer_id, conn);
                to.offers().remember(key, at_secs);
                Delivery {
                    to,
                    relay: Relay::Offer(i),
                }
            })
            .collect();
        Ok(Outcome {
            reply: Some(reply),
            deliveries,
            dropped,
        })
    }

    fn reply(&self, swarm: Option<&Swarm>) -> Reply {
        let stats = swarm.map_or_else(ScrapeStats::default, Swarm::stats);
        Reply {
            interval_secs: self.limits.interval_secs,
            complete: stats.complete,
            incomplete: stats.incomplete,
        }
    }

    /// Registers or refreshes `a`'s peer in its swarm; returns the swarm.
    fn upsert<'s>(
        &self,
        swarms: &'s mut HashMap<Id20, Swarm, Fast>,
        m: &mut Member,
        a: &Announce,
        now: Instant,
    ) -> Result<&'s mut Swarm, Refusal> {
        let conn = m.handle.id;
        let becomes_seeder = a.seeder || a.event == Event::Completed;
        let at_limit = m.regs.len() >= self.limits.max_swarms_per_connection;
        let swarm = match swarms.entry(a.info_hash) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if self.swarms.load(Relaxed) >= self.limits.max_swarms {
                    return Err(Refusal::TooManySwarms);
                }
                if at_limit {
                    return Err(Refusal::TooManySwarmsPerConnection);
                }
                // Charged before the swarm exists, so a refusal leaves no empty swarm.
                if !self.budget.take(m.addr) {
                    return Err(Refusal::TooManyPeersFromAddress);
                }
                self.swarms.fetch_add(1, Relaxed);
                let swarm = e.insert(Swarm::default());
                return Ok(self.insert_peer(swarm, m, a, now));
            }
        };
        if let Some(&i) = swarm.index.get(&a.peer_id) {
            let p = &mut swarm.peers[i];
            if p.conn_id != conn {
                // A takeover (a reconnecting client): from the same address, and within this
                // connection's own limit (the old owner's count of it is pruned later).
                if p.addr != m.addr {
                    return Err(Refusal::PeerIdInUse);
                }
                if at_limit {
                    return Err(Refusal::TooManySwarmsPerConnection);
                }
                p.conn = m.handle.clone();
                p.conn_id = conn;
                m.regs.push((a.info_hash, a.peer_id));
            }
            p.last_seen = now;
            if becomes_seeder && !p.seeder {
                p.seeder = true;
                swarm.complete += 1;
                if a.event == Event::Completed {
                    swarm.downloaded += 1;
                }
            }
            return Ok(swarm);
        }
        if swarm.peers.len() >= self.limits.max_peers_per_swarm {
            return Err(Refusal::SwarmFull);
        }
        if at_limit {
            return Err(Refusal::TooManySwarmsPerConnection);
        }
        if !self.budget.take(m.addr) {
            return Err(Refusal::TooManyPeersFromAddress);
        }
        Ok(self.insert_peer(swarm, m, a, now))
    }

    /// Adds `a`'s peer (new to `swarm`, already charged to `m`'s address).
    fn insert_peer<'s>(
        &self,
        swarm: &'s mut Swarm,
        m: &mut Member,
        a: &Announce,
        now: Instant,
    ) -> &'s mut Swarm {
        let becomes_seeder = a.seeder || a.event == Event::Completed;
        m.regs.push((a.info_hash, a.peer_id));
        swarm.index.insert(a.peer_id, swarm.peers.len());
        swarm.peers.push(Peer {
            peer_id: a.peer_id,
            conn_id: m.handle.id,
            conn: m.handle.clone(),
            addr: m.addr,
            seeder: becomes_seeder,
            last_seen: now,
        });
        if becomes_seeder {
            swarm.complete += 1;
            if a.event == Event::Completed {
                swarm.downloaded += 1;
            }
        }
        self.peers.fetch_add(1, Relaxed);
        swarm
    }

    fn route_answer(
        &self,
        m: &mut Member,
        a: &Announce,
        answer: &protocol::Answer,
        now: Instant,
    ) -> Result<Outcome, Refusal> {
        // The offerer must still be in the swarm; the connection it is on now is part of the
        // key, so an offer made on a connection since replaced cannot be answered.
        let to = {
            let sh = self.shard(&a.info_hash);
            sh.swarms.get(&a.info_hash).and_then(|s| {
                s.index
                    .get(&answer.to_peer_id)
                    .map(|&i| s.peers[i].conn.clone())
            })
        }
        .ok_or(Refusal::AnswerUnmatched)?;
        let key = self.offer_key(&a.info_hash, &answer.offer_id, &answer.to_peer_id, to.id);
        if !m.handle.offers().take(key, self.secs(now)) {
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
        let max = self.limits.max_scrape;
        let mut files: Vec<(Id20, ScrapeStats)> = Vec::new();
        if s.info_hashes.is_empty() {
            for shard in self.shards.iter() {
                let sh = shard.lock();
                let room = max.saturating_sub(files.len());
                files.extend(
                    sh.swarms
                        .iter()
                        .take(room)
                        .map(|(ih, sw)| (*ih, sw.stats())),
                );
                if files.len() >= max {
                    break;
                }
            }
        } else {
            for ih in s.info_hashes.iter().take(max) {
                let stats = self
                    .shard(ih)
                    .swarms
                    .get(ih)
                    .map_or_else(ScrapeStats::default, Swarm::stats);
                files.push((*ih, stats));
            }
        }
        protocol::encode_scrape(&files, self.limits.interval_secs)
    }

    /// Removes peers not re-announced within `ttl` of `now`. Returns how many.
    pub fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut sh = shard.lock();
            let mut emptied = 0;
            sh.swarms.retain(|_, sw| {
                let mut i = 0;
                while i < sw.peers.len() {
                    if now.saturating_duration_since(sw.peers[i].last_seen) > ttl {
                        let p = sw.remove_at(i);
                        self.budget.give(p.addr);
                        gone += 1;
                    } else {
                        i += 1;
                    }
                }
                if sw.peers.is_empty() {
                    emptied += 1;
                }
                !sw.peers.is_empty()
            });
            self.swarms.fetch_sub(emptied, Relaxed);
        }
        self.peers.fetch_sub(gone, Relaxed);
        self.sweeps.fetch_add(1, Relaxed);
        gone
    }
}

/// Up to `k` distinct peers of `swarm` other than `exclude`, at random: the connections of
/// those with room for an offer, and how many had none (their offer is dropped; checked here so
/// a full receiver costs no reference count traffic).
///
/// Only the sending peer is excluded, not its connection: WebTorrent clients share one socket
/// per tracker URL among all their torrents (and peer ids), exactly as the reference server
/// assumes.
fn pick(swarm: &Swarm, rng: &mut Rng, k: usize, exclude: &Id20) -> (Vec<Arc<ConnHandle>>, usize) {
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
    if n <= 4 * k + 16 {
        // Small swarm: partial Fisher-Yates over the eligible indices.
        let mut idx: Vec<usize> = (0..n)
            .filter(|&i| swarm.peers[i].peer_id != *exclude)
            .collect();
        for j in 0..k.min(idx.len()) {
            let r = j + rng.below(idx.len() - j);
            idx.swap(j, r);
            take(&mut out, &swarm.peers[idx[j]].conn);
        }
    } else {
        // Large swarm: rejection sampling; with n > 4k the expected tries are < 2k.
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        let mut tries = 0;
        while chosen.len() < k && tries < 16 * k {
            tries += 1;
            let i = rng.below(n);
            if swarm.peers[i].peer_id == *exclude || chosen.contains(&i) {
                continue;
            }
            chosen.push(i);
            take(&mut out, &swarm.peers[i].conn);
        }
    }
    (out, full)
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
            max_peers_per_address: 1000,
            max_scrape: 10,
            interval_secs: 120,
        }
    }

    fn conn(t: &Tracker, id: u64) -> Member {
        t.join(
            Arc::new(ConnHandle::new(id, None, 8, false)),
            AddrKey::unspecified(),
        )
    }

    fn announce(ih: u8, pid: u8, offers: usize) -> Announce<'static> {
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
            Ok(Request::Announce(a)) => a.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offers_go_to_distinct_others_and_answers_back() {
        let t = Tracker::new(limits());
        let now = Instant::now();
        let mut m: Vec<Member> = (0..=5).map(|i| conn(&t, i)).collect();
        for i in 1..=4u8 {
            t.announce(&mut m[usize::from(i)], &announce(9, i, 0), now)
                .unwrap();
        }
        let a5 = announce(9, 5, 10);
        let out = t.announce(&mut m[5], &a5, now).unwrap();
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
            offer_id: v["offer_id"].as_str().unwrap().to_owned().into(),
            answer: std::borrow::Cow::Owned(
                serde_json::value::RawValue::from_string("{\"type\":\"answer\"}".into()).unwrap(),
            ),
        });
        let out = t.announce(&mut m[1], &ans, now).unwrap();
        assert!(out.reply.is_none());
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(out.deliveries[0].to.id, 5);
        // The same answer again (replay) or from a connection never sent the offer is refused.
        let mut again = announce(9, 2, 0);
        again.answer = Some(protocol::Answer {
            to_peer_id: Id20([5; 20]),
            offer_id: v["offer_id"].as_str().unwrap().to_owned().into(),
            answer: std::borrow::Cow::Owned(
                serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            ),
        });
        assert_eq!(
            t.announce(&mut m[2], &again, now).err(),
            Some(Refusal::AnswerUnmatched)
        );
    }

    #[test]
    fn limits_and_cleanup() {
        let t = Tracker::new(limits());
        let now = Instant::now();
        let mut m1 = conn(&t, 1);
        for ih in 0..4 {
            t.announce(&mut m1, &announce(ih, 1, 0), now).unwrap();
        }
        assert_eq!(
            t.announce(&mut m1, &announce(4, 1, 0), now).err(),
            Some(Refusal::TooManySwarmsPerConnection)
        );
        assert_eq!(t.swarm_count(), 4);
        assert_eq!(
            t.announce(&mut m1, &announce(0, 1, 11), now).err(),
            Some(Refusal::TooManyOffers(10))
        );
        t.leave(m1);
        assert_eq!((t.swarm_count(), t.peer_count()), (0, 0));
        let mut m2 = conn(&t, 2);
        t.announce(&mut m2, &announce(0, 2, 0), now).unwrap();
        assert_eq!(
            t.expire(now + Duration::from_secs(10), Duration::from_secs(5)),
            1
        );
        assert_eq!((t.swarm_count(), t.peer_count()), (0, 0));
    }

    /// Registrations a connection lost (taken over, expired) stop counting against its limit
    /// after the next sweep, and its leaving never removes a peer another connection owns.
    #[test]
    fn lost_registrations_are_pruned_and_never_removed_for_the_new_owner() {
        let t = Tracker::new(limits());
        let now = Instant::now();
        let (mut m1, mut m2) = (conn(&t, 1), conn(&t, 2));
        for ih in 0..4 {
            t.announce(&mut m1, &announce(ih, 1, 0), now).unwrap();
        }
        // Conn 2 takes peer 1 of swarm 0 over (a reconnecting client).
        t.announce(&mut m2, &announce(0, 1, 0), now).unwrap();
        assert_eq!(t.peer_count(), 4);
        // Conn 1 still counts it until a sweep has run; then the slot is free again.
        assert_eq!(
            t.announce(&mut m1, &announce(7, 1, 0), now).err(),
            Some(Refusal::TooManySwarmsPerConnection)
        );
        assert_eq!(t.expire(now, Duration::from_secs(60)), 0);
        t.announce(&mut m1, &announce(7, 1, 0), now).unwrap();
        assert_eq!((t.swarm_count(), t.peer_count()), (5, 5));
        // Conn 1 leaves: its four peers go, the one conn 2 took over stays.
        t.leave(m1);
        assert_eq!((t.swarm_count(), t.peer_count()), (1, 1));
        let out = t.announce(&mut m2, &announce(0, 1, 0), now).unwrap();
        assert_eq!(
            out.reply,
            Some(Reply {
                interval_secs: 120,
                complete: 0,
                incomplete: 1
            })
        );
    }

    /// The answer to the newest offer sent to a connection is matched however many offers
    /// it was sent since, up to [`MAX_PENDING_OFFERS`]; older and expired ones are not.
    #[test]
    fn pending_offers_are_bounded_by_count_and_age() {
        let t = Tracker::new(limits());
        let now = Instant::now();
        let mut m1 = conn(&t, 1);
        let mut m2 = conn(&t, 2);
        t.announce(&mut m1, &announce(9, 1, 0), now).unwrap();
        let answer = |offer_id: String| {
            let mut ans = announce(9, 1, 0);
            ans.answer = Some(protocol::Answer {
                to_peer_id: Id20([2; 20]),
                offer_id: offer_id.into(),
                answer: std::borrow::Cow::Owned(
                    serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                ),
            });
            ans
        };
        // Conn 2 sends one offer per announce to conn 1 (the only other peer), with distinct
        // ids: more than the bound in all.
        let n = MAX_PENDING_OFFERS + 10;
        for i in 0..n {
            let mut a = announce(9, 2, 1);
            a.offers[0].offer_id = format!("x{i}").into();
            assert_eq!(t.announce(&mut m2, &a, now).unwrap().deliveries.len(), 1);
        }
        // The oldest ten are forgotten; the 11th oldest and the newest still match.
        assert_eq!(
            t.announce(&mut m1, &answer("x9".into()), now).err(),
            Some(Refusal::AnswerUnmatched)
        );
        assert_eq!(
            t.announce(&mut m1, &answer("x10".into()), now)
                .unwrap()
                .deliveries
                .len(),
            1
        );
        assert_eq!(
            t.announce(&mut m1, &answer(format!("x{}", n - 1)), now)
                .unwrap()
                .deliveries
                .len(),
            1
        );
        // An offer is answered once.
        assert_eq!(
            t.announce(&mut m1, &answer("x10".into()), now).err(),
            Some(Refusal::AnswerUnmatched)
        );
        // Past the offer TTL nothing matches.
        let late = now + Duration::from_secs(u64::from(OFFER_TTL_SECS) + 2);
        assert_eq!(
            t.announce(&mut m1, &answer("x11".into()), late).err(),
            Some(Refusal::AnswerUnmatched)
        );
    }
}
