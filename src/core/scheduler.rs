//! Pull repair: what the push trees did not deliver in time is requested from neighbours that
//! hold it, deadline-first near the playhead and rarest-first farther ahead; requests time out
//! and are retried elsewhere.

use super::id::PeerId;
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most pieces outstanding at one neighbour: enough to fill a path, few enough that a slow
/// neighbour does not hold many pieces hostage until their timeout.
const MAX_OUTSTANDING: u32 = 24;
/// Pieces assumed for a request of a segment whose header is unknown.
const BLIND_COST: u32 = 8;
/// Segments within this of their deadline are pulled at once, push tree or not.
const URGENT: Duration = Duration::from_millis(700);
/// Headers asked for when looking for a start point: covers a keyframe interval of up to
/// this many segments.
pub(crate) const PROBE_SPAN: u64 = 10;
/// Most neighbours one segment's missing pieces are spread over.
const REQUEST_SPREAD: u32 = 3;
/// Bits of a full piece (its serialisation time at a neighbour's upload estimates its delay).
const PIECE_BITS: u64 = super::segment::PIECE_SIZE as u64 * 8;
/// Segments looked at beyond the playhead.
const LOOKAHEAD: u64 = 128;

/// The pull scheduler's own state: what it asked for without a header, and its start-point
/// probe.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    /// Segments asked for without knowing their header: `seq → (neighbour, sent at)`.
    blind: BTreeMap<u64, (PeerId, Instant)>,
    /// The newest segment whose headers were probed for a start point, and when.
    probe: Option<(u64, Instant)>,
}

impl Pulls {
    /// The header of `seq` arrived: its blind request, if any, `(neighbour, sent at)`.
    pub(crate) fn take_blind(&mut self, seq: u64) -> Option<(PeerId, Instant)> {
        self.blind.remove(&seq)
    }

    /// The window moved to `start`: older blind requests are moot.
    pub(crate) fn forget_below(&mut self, start: u64) {
        self.blind = self.blind.split_off(&start);
    }

    /// `peer` is gone: its blind requests with it.
    pub(crate) fn forget_peer(&mut self, peer: PeerId) {
        self.blind.retain(|_, (p, _)| *p != peer);
    }
}

/// A segment worth pulling: `(urgent, availability, seq, pieces)`.
type Candidate = (bool, u32, u64, u64);
/// Preference order of request targets (smaller is better).
type TargetKey = (bool, bool, u64, u64);

impl Swarm {
    fn request_timeout(&self, peer: &PeerId) -> Duration {
        let rtt = self
            .neighbours
            .get(peer)
            .map_or(Duration::from_millis(200), |n| n.rtt_or_default());
        rtt * 3 + Duration::from_millis(500)
    }

    /// A request to `peer` sent `at` is given up: it took too long, or the neighbour fell silent
    /// (a vanished peer would hold it until its timeout, for nothing).
    fn request_expired(&self, now: Instant, peer: &PeerId, at: Instant) -> bool {
        now.saturating_duration_since(at) > self.request_timeout(peer)
            || self.neighbours.get(peer).is_some_and(|n| n.silent(now))
    }

    /// Periodic: forgets requests that took too long, remembering whom not to ask first again.
    pub(crate) fn expire_requests(&mut self, now: Instant) {
        let timeouts: Vec<(u64, PeerId)> = self
            .store
            .segments
            .iter()
            .flat_map(|(seq, seg)| seg.requests.iter().map(move |r| (*seq, r.0, r.2)))
            .filter(|(_, p, at)| self.request_expired(now, p, *at))
            .map(|(seq, p, _)| (seq, p))
            .collect();
        for (seq, p) in timeouts {
            let seg = self.store.segments.get_mut(&seq).expect("listed");
            seg.drop_requests_of(p);
            if !seg.tried.contains(&p) {
                seg.tried.push(p);
            }
            if let Some(n) = self.neighbours.get_mut(&p) {
                if let Some(m) = n.requests.remove(&seq) {
                    n.requested_pieces = n.requested_pieces.saturating_sub(m.count_ones());
                }
                self.send(p, &Message::Cancel { seq });
            }
        }
        let blind_timeouts: Vec<(u64, PeerId)> = self
            .pulls
            .blind
            .iter()
            .filter(|(_, (p, at))| self.request_expired(now, p, *at))
            .map(|(seq, (p, _))| (*seq, *p))
            .collect();
        for (seq, p) in blind_timeouts {
            self.pulls.blind.remove(&seq);
            if let Some(n) = self.neighbours.get_mut(&p) {
                n.requested_pieces = n.requested_pieces.saturating_sub(BLIND_COST);
            }
        }
    }

    /// Requests what is missing between the playhead and the newest known segment.
    pub(crate) fn schedule_pulls(&mut self, now: Instant) {
        if self.is_source() {
            return;
        }
        if self.playout.start().is_none() {
            return self.probe(now);
        }
        let from = self.playout.next().max(self.store.window_start);
        let newest = self.store.newest.unwrap_or(0);
        let top = newest.max(self.max_advertised.map_or(0, |(m, _)| m));
        if top < from {
            return;
        }
        // Per stripe: segments whose header we verified before the stripe's current parent took
        // us on will not be pushed (a parent pushes what it gets after accepting, plus its newest
        // segment); a stripe without a parent pushes nothing.
        let pushed_since: Vec<Option<Instant>> = (0..self.k)
            .map(|s| {
                let st = &self.trees.stripes[s];
                st.parent.map(|_| st.parent_since)
            })
            .collect();
        let mut cands: Vec<Candidate> = Vec::new();
        for seq in from..=top.min(from + LOOKAHEAD) {
            if self.store.complete.contains(seq) {
                continue;
            }
            let urgent = self.deadline_of(seq).is_some_and(|d| d <= now + URGENT);
            let avail = self.availability(seq);
            if avail == 0 {
                continue;
            }
            match self.store.segments.get(&seq) {
                Some(seg) => {
                    let mut missing = seg.full & !seg.have & !seg.requested;
                    if missing == 0 {
                        continue;
                    }
                    let overdue =
                        now.saturating_duration_since(seg.learned_at) >= self.config.pull_grace;
                    if !urgent && !overdue {
                        let unpushed = (0..self.k)
                            .filter(|s| pushed_since[*s].is_none_or(|t| seg.learned_at < t))
                            .fold(0u64, |m, s| m | self.stripe_mask(seq, s));
                        missing &= unpushed;
                    }
                    if missing != 0 {
                        cands.push((urgent, avail, seq, missing));
                    }
                }
                None => {
                    if self.pulls.blind.contains_key(&seq) {
                        continue;
                    }
                    let adv_overdue = self.max_advertised.is_some_and(|(_, at)| {
                        now.saturating_duration_since(at) >= self.config.pull_grace
                    });
                    if seq < newest || urgent || adv_overdue {
                        cands.push((urgent, avail, seq, u64::MAX));
                    }
                }
            }
        }
        // Deadline order for urgent segments, rarest first (then oldest) for the rest.
        cands.sort_by_key(
            |&(urgent, avail, seq, _)| {
                if urgent {
                    (0, 0, seq)
                } else {
                    (1, avail, seq)
                }
            },
        );
        for (_, _, seq, pieces) in cands {
            self.request(now, seq, pieces);
        }
    }

    /// Neighbours advertising `seq` complete.
    fn availability(&self, seq: u64) -> u32 {
        self.neighbours
            .values()
            .filter(|n| n.is_established() && !n.stale_session && n.haves.contains(seq))
            .count() as u32
    }

    /// Asks neighbours holding `seq` for `pieces` (all of them when the header is unknown).
    /// Known pieces are spread over up to [`REQUEST_SPREAD`] neighbours, each asked for a share,
    /// so that a segment arrives at the pace of several uplinks instead of one. Each share goes
    /// to the neighbour not yet tried for it, not the source (its upload is the scarcest), that
    /// would deliver it soonest: half its RTT plus its outstanding and new pieces at its upload.
    fn request(&mut self, now: Instant, seq: u64, pieces: u64) -> bool {
        if pieces == u64::MAX {
            let Some(peer) = self.request_target(now, seq, BLIND_COST) else {
                return false;
            };
            let n = self.neighbours.get_mut(&peer).expect("chosen");
            n.requested_pieces += BLIND_COST;
            self.pulls.blind.insert(seq, (peer, now));
            self.send(peer, &Message::Request { seq, pieces });
            return true;
        }
        let mut left = pieces;
        let mut shares = REQUEST_SPREAD.min(pieces.count_ones());
        let mut any = false;
        while left != 0 && shares > 0 {
            let take = left.count_ones().div_ceil(shares);
            let mut share = 0u64;
            let mut bits = left;
            for _ in 0..take {
                let i = bits.trailing_zeros();
                share |= 1 << i;
                bits &= bits - 1;
            }
            shares -= 1;
            let Some(peer) = self.request_target(now, seq, take) else {
                break;
            };
            left &= !share;
            any = true;
            let n = self.neighbours.get_mut(&peer).expect("chosen");
            n.requested_pieces += take;
            *n.requests.entry(seq).or_insert(0) |= share;
            let seg = self.store.segments.get_mut(&seq).expect("header known");
            seg.add_request(peer, share, now);
            self.send(peer, &Message::Request { seq, pieces: share });
        }
        any
    }

    /// The neighbour to ask for `cost` pieces of `seq` (see [`Swarm::request`]).
    fn request_target(&mut self, now: Instant, seq: u64, cost: u32) -> Option<PeerId> {
        let tried: &[PeerId] = self
            .store
            .segments
            .get(&seq)
            .map_or(&[], |s| s.tried.as_slice());
        let mut best: Option<(TargetKey, PeerId)> = None;
        for (id, n) in &self.neighbours {
            if !n.is_established()
                || n.silent(now)
                || n.stale_session
                || !n.haves.contains(seq)
                || (n.upload_kbps() == 0 && !n.is_source())
                || n.requested_pieces + cost > MAX_OUTSTANDING
            {
                continue;
            }
            let piece_us = PIECE_BITS * 1000 / n.upload_kbps().max(1) as u64;
            let eta_us = n.rtt_or_default().as_micros() as u64 / 2
                + (n.requested_pieces + cost) as u64 * piece_us;
            let key = (
                tried.contains(id),
                n.is_source(),
                eta_us,
                self.rng.next_u64(),
            );
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, *id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Before a start point is chosen: asks the nearest neighbour holding the newest complete
    /// segment for the headers of the last few segments (newest first), so that the newest
    /// keyframe segment among them is found in one round trip (fast start).
    fn probe(&mut self, now: Instant) {
        let Some((m, _)) = self.max_advertised else {
            return;
        };
        if let Some((seq, at)) = self.pulls.probe {
            if seq >= m && now.saturating_duration_since(at) < Duration::from_millis(1000) {
                return;
            }
        }
        let target = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.is_established() && !n.stale_session && n.haves.contains(m))
            .min_by_key(|(id, n)| (n.is_source(), n.rtt_or_default(), **id))
            .map(|(id, _)| *id);
        let Some(peer) = target else {
            return;
        };
        self.pulls.probe = Some((m, now));
        for seq in (m.saturating_sub(PROBE_SPAN - 1)..=m).rev() {
            if !self.store.segments.contains_key(&seq) && seq >= self.store.window_start {
                self.send(peer, &Message::Request { seq, pieces: 0 });
            }
        }
    }
}
