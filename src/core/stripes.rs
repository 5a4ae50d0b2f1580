//! The push trees: the stream is split into `K` stripes (piece `(seq, i)` on stripe
//! `(seq + i) % K`); each viewer takes each stripe from one parent and forwards it to its own
//! stripe-children piece by piece. Parents are chosen by depth (hops from the source), then
//! spread over distinct neighbours, then RTT, then a seeded coin.

use super::api::DisconnectReason;
use super::id::PeerId;
use super::neighbour::CLASS_PUSH;
use super::swarm::Swarm;
use super::time::Instant;
use super::wire::{Message, NO_DEPTH};
use std::time::Duration;

/// Deepest depth a peer advertises as usable (its children would be at 254).
const MAX_DEPTH: u8 = NO_DEPTH - 2;
/// A neighbour that refused a subscription is not asked again for this long.
const REFUSED_BACKOFF: Duration = Duration::from_secs(3);
/// A parent abandoned for stalling is not asked again for this long.
const STALLED_BACKOFF: Duration = Duration::from_secs(15);
/// Share of its upload a viewer commits to stripe-children (the rest serves repairs).
const VIEWER_PUSH_SHARE: f64 = 0.85;
/// Share of its cap the source commits to stripe-children (the rest covers headers, control,
/// repairs and bursts, so pushes never queue behind the cap). At 0.9 (10 stripe-children at 3x,
/// 91% of the paced rate) eight browsers joining left a second of pushes queued at the source,
/// which its 9% spare took 10 s to drain: every viewer played a second later than it could. At
/// 0.7 (8, two copies) the same start-up queued under 0.4 s, gone in 4 s; the simulator's
/// latency and continuity did not move (BENCHMARKS.md, "source headroom").
const SOURCE_PUSH_SHARE: f64 = 0.7;
/// Assumed delay per tree hop (propagation plus forwarding), ms, for comparing parents.
const HOP_MS: u64 = 60;
/// Milliseconds a full piece takes on a 1 Mbit/s uplink.
const PIECE_MS_AT_1MBIT: u64 = (super::segment::PIECE_SIZE as u64 * 8) / 1000;
/// How often a viewer considers a better parent for one of its stripes.
const UPGRADE_INTERVAL: Duration = Duration::from_secs(1);
/// A new parent must promise at least this much less delay to be worth the switch, ms.
const UPGRADE_MARGIN_MS: u64 = 80;
/// Extra delay assumed for a parent forwarding a stripe that is not its primary one, ms: the
/// soft form of SplitStream's rule (a peer interior in one stripe tree, a leaf in the others)
/// makes children of one stripe gather at the same parents, so trees get wide, not deep.
const OFF_PRIMARY_PENALTY_MS: u64 = 60;
/// A stripe without a parent this long means the swarm lacks upload for us (capacity signal).
const SHORT_AFTER: Duration = Duration::from_secs(2);
/// Bitrate assumed before the first header tells the real one, kbit/s.
const DEFAULT_BITRATE_KBPS: u32 = 2500;

/// Per-stripe state of a viewer: where it receives the stripe from.
#[derive(Debug, Clone)]
pub(crate) struct StripeState {
    /// The accepted parent.
    pub parent: Option<PeerId>,
    /// A subscription sent and not yet answered: `(to, sent at)`.
    pub pending: Option<(PeerId, Instant)>,
    /// Hops from the source; [`NO_DEPTH`] when not receiving.
    pub depth: u8,
    /// Depth before the parent was lost: new parents are first sought above it (loop guard).
    pub old_depth: u8,
    /// Last time the parent delivered a piece of this stripe (or accepted us).
    pub last_push: Instant,
    /// When the current parent accepted us: it pushes what it receives from then on (and the
    /// newest segment it held), so older pieces of this stripe must be pulled.
    pub parent_since: Instant,
    /// Neighbours not to ask for this stripe until the given time (refused, stalled).
    pub avoid: Vec<(PeerId, Instant)>,
}

impl StripeState {
    /// Not receiving: `depth` is what a source or a viewer starts at.
    fn new(depth: u8) -> Self {
        StripeState {
            parent: None,
            pending: None,
            depth,
            old_depth: NO_DEPTH,
            last_push: Instant::ZERO,
            parent_since: Instant::ZERO,
            avoid: Vec::new(),
        }
    }

    /// The parent is gone (left, evicted us, stalled): no depth until a new one accepts, and
    /// the old depth kept for the loop guard.
    pub(crate) fn lose_parent(&mut self) {
        self.parent = None;
        self.old_depth = self.depth;
        self.depth = NO_DEPTH;
    }
}

/// This peer's place in the `K` stripe trees.
#[derive(Debug, Clone)]
pub(crate) struct Trees {
    /// Per stripe, where we receive it from.
    pub stripes: Vec<StripeState>,
    /// Per stripe, the neighbours that subscribed it from us (sorted).
    pub children: Vec<Vec<PeerId>>,
    /// When a better parent is next looked for.
    pub next_upgrade: Instant,
    /// Since when some stripe has had no parent (capacity signal).
    pub short_since: Option<Instant>,
}

impl Trees {
    /// `k` stripes at `depth` (0 on the source), no parents, no children.
    pub(crate) fn new(k: usize, depth: u8) -> Self {
        Trees {
            stripes: vec![StripeState::new(depth); k],
            children: vec![Vec::new(); k],
            next_upgrade: Instant::ZERO,
            short_since: None,
        }
    }

    /// Our depth in each tree, as `Status` and [`super::Stats::stripe_depths`] tell it.
    pub(crate) fn depths(&self) -> Vec<u8> {
        self.stripes.iter().map(|s| s.depth).collect()
    }

    /// Stripe-children subscriptions held, all stripes together.
    pub(crate) fn child_count(&self) -> usize {
        self.children.iter().map(Vec::len).sum()
    }
}

impl Swarm {
    /// Bits `i` of a segment that travel on stripe `s`.
    pub(crate) fn stripe_mask(&self, seq: u64, s: usize) -> u64 {
        let k = self.k as u64;
        let phase = (s as u64 + k - seq % k) % k;
        let mut m = 0u64;
        let mut i = phase;
        while i < 64 {
            m |= 1 << i;
            i += k;
        }
        m
    }

    /// The stripe `peer` preferably forwards, derived from its id so every neighbour computes it
    /// alike (SplitMix64 finalizer of its first 8 bytes, little-endian, modulo `K`).
    pub(crate) fn primary_stripe(&self, peer: &PeerId) -> usize {
        let mut b = [0u8; 8];
        b.copy_from_slice(&peer.0[..8]);
        (super::rng::mix(u64::from_le_bytes(b)) % self.k as u64) as usize
    }

    /// Stripe-child subscriptions this peer can carry: upload over the per-stripe bitrate.
    pub(crate) fn child_slots(&self) -> usize {
        let k = self.k as f64;
        let bitrate = if self.bitrate.kbps() > 0 {
            self.bitrate.kbps()
        } else {
            DEFAULT_BITRATE_KBPS
        } as f64;
        let per_stripe = bitrate / k;
        if self.is_source() {
            let by_cap =
                (self.config.source_cap_multiple as f64 * k * SOURCE_PUSH_SHARE).floor() as usize;
            let by_upload = if self.usable_upload_kbps() > 0 {
                (self.usable_upload_kbps() as f64 * SOURCE_PUSH_SHARE / per_stripe).floor() as usize
            } else {
                usize::MAX
            };
            by_cap.min(by_upload).max(1)
        } else if self.usable_upload_kbps() == 0 {
            0
        } else {
            ((self.usable_upload_kbps() as f64 * VIEWER_PUSH_SHARE / per_stripe).floor() as usize)
                .min(3 * self.k)
        }
    }

    pub(crate) fn child_count(&self) -> usize {
        self.trees.child_count()
    }

    /// Our `Status`: depth per stripe and free child slots.
    pub(crate) fn status_message(&self) -> Message {
        let free = self.child_slots().saturating_sub(self.child_count());
        let weakest = self
            .trees
            .children
            .iter()
            .flatten()
            .filter_map(|c| self.neighbours.get(c).map(|n| n.upload_kbps()))
            .min();
        Message::Status {
            depths: self.trees.depths(),
            free: free.min(u16::MAX as usize) as u16,
            displace_kbps: weakest.map_or(u32::MAX, |w| w.saturating_mul(2).max(1)),
        }
    }

    pub(crate) fn update_depth_stats(&mut self) {
        self.stats.stripe_depths = self.trees.depths();
    }

    pub(crate) fn on_status(
        &mut self,
        now: Instant,
        peer: PeerId,
        depths: Vec<u8>,
        free: u16,
        displace_kbps: u32,
    ) {
        if depths.len() != self.k {
            return self.cut(
                now,
                peer,
                DisconnectReason::Protocol("stripe count mismatch"),
            );
        }
        let mut changed = false;
        for (st, &d) in self.trees.stripes.iter_mut().zip(&depths) {
            if st.parent == Some(peer) {
                let mine = if d > MAX_DEPTH { NO_DEPTH } else { d + 1 };
                if st.depth != mine {
                    st.depth = mine;
                    changed = true;
                }
            }
        }
        let Some(n) = self.neighbours.established_mut(&peer) else {
            return;
        };
        n.depths = depths;
        n.free = free;
        n.displace_kbps = displace_kbps;
        if changed {
            self.status_dirty = true;
            self.update_depth_stats();
        }
        if !self.is_source() {
            self.choose_parents(now);
        }
    }

    pub(crate) fn on_subscribe(&mut self, now: Instant, peer: PeerId, stripe: u8) {
        let s = stripe as usize;
        if s >= self.k {
            return self.cut(now, peer, DisconnectReason::Protocol("no such stripe"));
        }
        let bit = 1u64 << s;
        let depth = self.trees.stripes[s].depth;
        let Some(n) = self.neighbours.established(&peer) else {
            return;
        };
        let already = n.child_stripes & bit != 0;
        let slots = self.child_slots();
        let count = self.child_count();
        // A weak first-hop child would waste the source's scarce upload, but an idle slot wastes
        // it too: weak subscribers are taken while slots are free, and a stronger one evicts
        // them (below). Keeping slots back for forwarders that may never come left a swarm of
        // free riders with one viewer served where the cap allows two or three.
        // (The source once sent a subscriber to a child of its with free slots, for more peer
        // to peer in small swarms; a forger among its first children then had every honest
        // viewer routed through it: 12 s of starvation in the browser forgery test, still a 1 s
        // stall when limited to once per stripe. Removed: the source serves whom it can.)
        // A subscriber that cannot forward plays only if it gets every stripe: a parent takes a
        // new one only with room for all the stripes it still lacks, or to complete the set of
        // one it already feeds. Otherwise scarce upload is smeared over viewers who each get
        // three stripes of four and play nothing.
        let per_stripe = self.bitrate.kbps().max(1) / self.k as u32;
        let weak = n.upload_kbps() < per_stripe.saturating_mul(2);
        let lacking = (0..self.k)
            .filter(|t| n.depth(*t) == NO_DEPTH && n.child_stripes & (1 << t) == 0)
            .count()
            .max(1);
        let partial_only = self.is_source()
            && weak
            && n.child_stripes == 0
            && slots.saturating_sub(count) < lacking;
        let mut accept = already
            || (depth <= MAX_DEPTH
                && count < slots
                && self.trees.stripes[s].parent != Some(peer)
                && !partial_only);
        if !accept
            && depth <= MAX_DEPTH
            && self.trees.stripes[s].parent != Some(peer)
            && count >= slots
            && slots > 0
        {
            // Full: a much stronger peer takes the slot of our weakest child, which finds a
            // parent further down. Repeated at every level, this sorts the trees by upload:
            // wide forwarders near the source, weak peers at the leaves.
            accept = self.evict_weaker_than(n.upload_kbps());
        }
        if accept && !already {
            self.trees.children[s].push(peer);
            self.trees.children[s].sort_unstable();
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.child_stripes |= bit;
            }
            self.status_dirty = true;
            self.catch_up_child(peer, s);
        }
        self.send(
            peer,
            &Message::SubscribeAck {
                stripe,
                accepted: accept,
                depth,
            },
        );
    }

    /// Drops one stripe-child whose upload is at most half of `upload_kbps` (the weakest), telling
    /// it with `Unsubscribe`. True when a slot was freed.
    fn evict_weaker_than(&mut self, upload_kbps: u32) -> bool {
        let mut victim: Option<(u32, PeerId, usize)> = None;
        for (s, kids) in self.trees.children.iter().enumerate() {
            for c in kids {
                let up = self.neighbours.get(c).map_or(0, |n| n.upload_kbps());
                if up.saturating_mul(2) <= upload_kbps
                    && victim.as_ref().is_none_or(|v| (up, *c, s) < *v)
                {
                    victim = Some((up, *c, s));
                }
            }
        }
        let Some((_, c, s)) = victim else {
            return false;
        };
        self.trees.children[s].retain(|x| *x != c);
        if let Some(n) = self.neighbours.get_mut(&c) {
            n.child_stripes &= !(1 << s);
        }
        self.send(c, &Message::Unsubscribe { stripe: s as u8 });
        true
    }

    /// A new child gets the stripe's pieces of the newest segment at once, so it need not
    /// pull what is already in flight.
    fn catch_up_child(&mut self, peer: PeerId, s: usize) {
        let Some((&seq, seg)) = self.store.segments.last_key_value() else {
            return;
        };
        let mut bits = seg.have & self.stripe_mask(seq, s);
        let Some(n) = self.neighbours.established_mut(&peer) else {
            return;
        };
        if n.haves.contains(seq) {
            return;
        }
        while bits != 0 {
            let i = bits.trailing_zeros() as u16;
            bits &= bits - 1;
            n.queue.insert((CLASS_PUSH, seq, i));
        }
    }

    /// `Unsubscribe` from a child ends its subscription; from our parent on that stripe it
    /// means we were evicted (or the parent stops forwarding): find another parent at once.
    pub(crate) fn on_unsubscribe(&mut self, now: Instant, peer: PeerId, stripe: u8) {
        let s = stripe as usize;
        if s >= self.k {
            return;
        }
        let Some(n) = self.neighbours.established_mut(&peer) else {
            return;
        };
        if n.child_stripes & (1 << s) != 0 {
            n.child_stripes &= !(1 << s);
            self.trees.children[s].retain(|c| *c != peer);
            self.status_dirty = true;
        }
        if self.trees.stripes[s].parent == Some(peer) {
            n.parent_stripes &= !(1 << s);
            let st = &mut self.trees.stripes[s];
            st.lose_parent();
            st.avoid.push((peer, now + REFUSED_BACKOFF));
            self.status_dirty = true;
            self.update_depth_stats();
            self.choose_parents(now);
        }
    }

    pub(crate) fn on_subscribe_ack(
        &mut self,
        now: Instant,
        peer: PeerId,
        stripe: u8,
        accepted: bool,
        depth: u8,
    ) {
        let s = stripe as usize;
        if s >= self.k {
            return self.cut(now, peer, DisconnectReason::Protocol("no such stripe"));
        }
        let is_source = self.is_source();
        let st = &mut self.trees.stripes[s];
        if st.pending.map(|(p, _)| p) != Some(peer) {
            if accepted && st.parent != Some(peer) {
                // A late acceptance we no longer want: keep the parent's books right.
                self.send(peer, &Message::Unsubscribe { stripe });
            }
            return;
        }
        st.pending = None;
        if accepted && !is_source {
            if let Some(old) = st.parent.replace(peer) {
                // An upgrade: leave the old parent now that the new one feeds us.
                if let Some(n) = self.neighbours.get_mut(&old) {
                    n.parent_stripes &= !(1 << s);
                }
                self.send(old, &Message::Unsubscribe { stripe });
            }
            let st = &mut self.trees.stripes[s];
            st.depth = if depth > MAX_DEPTH {
                NO_DEPTH
            } else {
                depth + 1
            };
            st.last_push = now;
            st.parent_since = now;
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.parent_stripes |= 1 << s;
            }
            self.status_dirty = true;
            self.update_depth_stats();
        } else {
            st.avoid.push((peer, now + REFUSED_BACKOFF));
            if let Some(n) = self.neighbours.get_mut(&peer) {
                n.free = 0;
            }
            self.choose_parents(now);
        }
    }

    /// Subscribes every stripe that has neither a parent nor a pending subscription.
    pub(crate) fn choose_parents(&mut self, now: Instant) {
        if self.is_source() {
            return;
        }
        // A random first stripe, so that no stripe always gets the leftovers.
        let first = self.rng.below(self.k as u64) as usize;
        for j in 0..self.k {
            let s = (first + j) % self.k;
            let st = &self.trees.stripes[s];
            if st.parent.is_some() || st.pending.is_some() {
                continue;
            }
            let Some((_, best)) = self.best_parent(now, s, NO_DEPTH) else {
                continue;
            };
            self.trees.stripes[s].pending = Some((best, now));
            if let Some(n) = self.neighbours.get_mut(&best) {
                n.free = n.free.saturating_sub(1);
            }
            self.send(best, &Message::Subscribe { stripe: s as u8 });
        }
    }

    /// Estimated delay of stripe `s` through neighbour `n`, ms: hops from the source, the time
    /// its upload takes to serialise a piece, half its RTT. Used to choose and upgrade parents.
    fn parent_cost(n: &super::neighbour::Neighbour, s: usize, off_primary: bool) -> u64 {
        let hops = n.depth(s) as u64 * HOP_MS;
        let serialise = if n.upload_kbps() == 0 {
            PIECE_MS_AT_1MBIT
        } else {
            PIECE_MS_AT_1MBIT * 1000 / n.upload_kbps() as u64
        };
        let penalty = if off_primary && !n.is_source() {
            OFF_PRIMARY_PENALTY_MS
        } else {
            0
        };
        hops + 2 * serialise + n.rtt_or_default().as_millis() as u64 / 2 + penalty
    }

    /// The cheapest acceptable parent for stripe `s` shallower than `below` (our descendants
    /// are all deeper than us, so an upgrade never creates a loop given fresh depths).
    fn best_parent(&mut self, now: Instant, s: usize, below: u8) -> Option<(u64, PeerId)> {
        let bit = 1u64 << s;
        let st = &self.trees.stripes[s];
        let mine = self.usable_upload_kbps();
        let mut best: Option<((u64, u32, u64), PeerId)> = None;
        // Loop guard: after losing a parent, first look only at peers no deeper than we were
        // (our own descendants are all deeper); fall back to any candidate.
        for strict in [true, false] {
            if !strict && st.old_depth == NO_DEPTH {
                break;
            }
            for (id, n) in &self.neighbours {
                let d = n.depth(s);
                let off_primary = self.primary_stripe(id) != s;
                if !n.is_established()
                    || n.silent(now)
                    || d > MAX_DEPTH
                    || d >= below
                    || (n.free == 0 && mine < n.displace_kbps)
                    || n.child_stripes & bit != 0
                    || st.parent == Some(*id)
                    || (strict && st.old_depth != NO_DEPTH && d >= st.old_depth)
                    || st.avoid.iter().any(|(p, until)| p == id && *until > now)
                {
                    continue;
                }
                let key = (
                    Self::parent_cost(n, s, off_primary),
                    n.parent_stripes.count_ones(),
                    self.rng.next_u64(),
                );
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, *id));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.map(|((cost, _, _), id)| (cost, id))
    }

    /// Make-before-break: subscribes a markedly better parent while keeping the current one;
    /// the old one is dropped when the new one accepts.
    fn upgrade_parents(&mut self, now: Instant) {
        if now < self.trees.next_upgrade {
            return;
        }
        self.trees.next_upgrade = now + UPGRADE_INTERVAL;
        for s in 0..self.k {
            let st = &self.trees.stripes[s];
            let (Some(parent), None) = (st.parent, st.pending) else {
                continue;
            };
            let off = self.primary_stripe(&parent) != s;
            let Some(current) = self
                .neighbours
                .get(&parent)
                .map(|n| Self::parent_cost(n, s, off))
            else {
                continue;
            };
            let depth = st.depth;
            if let Some((cost, best)) = self.best_parent(now, s, depth) {
                if cost + UPGRADE_MARGIN_MS < current {
                    self.trees.stripes[s].pending = Some((best, now));
                    if let Some(n) = self.neighbours.get_mut(&best) {
                        n.free = n.free.saturating_sub(1);
                    }
                    self.send(best, &Message::Subscribe { stripe: s as u8 });
                }
            }
        }
    }

    /// A piece of stripe `s` came from `peer`: if it is that stripe's parent, it is alive.
    pub(crate) fn note_parent_progress(
        &mut self,
        now: Instant,
        peer: PeerId,
        seq: u64,
        idx: usize,
    ) {
        let s = ((seq + idx as u64) % self.k as u64) as usize;
        if self.trees.stripes[s].parent == Some(peer) {
            self.trees.stripes[s].last_push = now;
        }
    }

    /// Periodic: expires unanswered subscriptions, abandons stalled parents, fills gaps.
    pub(crate) fn check_stripes(&mut self, now: Instant) {
        for s in 0..self.k {
            self.trees.stripes[s]
                .avoid
                .retain(|(_, until)| *until > now);
            if let Some((p, at)) = self.trees.stripes[s].pending {
                let rtt = self.neighbours.get(&p).map(|n| n.rtt_or_default());
                let limit = rtt.map_or(Duration::ZERO, |r| r * 3 + Duration::from_millis(500));
                if now.saturating_duration_since(at) > limit {
                    self.trees.stripes[s].pending = None;
                    self.trees.stripes[s].avoid.push((p, now + REFUSED_BACKOFF));
                }
            }
            let Some(parent) = self.trees.stripes[s].parent else {
                continue;
            };
            let last = self.trees.stripes[s].last_push;
            if now.saturating_duration_since(last) <= self.config.stall_timeout {
                continue;
            }
            // A parent heard from not at all for a second is most likely gone (a killed tab says
            // no goodbye): left at once, even when nothing tells us what it should have sent (it
            // may have been our only source of news), rather than when it is declared dead.
            let parent_silent = self.neighbours.get(&parent).is_none_or(|n| n.silent(now));
            if parent_silent || self.stripe_overdue(now, s, last) {
                self.abandon_parent(now, s, parent);
            }
        }
        self.choose_parents(now);
        self.upgrade_parents(now);
        self.check_capacity(now);
    }

    /// Graceful degradation starts with saying so: a viewer missing a stripe parent for
    /// [`SHORT_AFTER`] (every neighbour's upload taken) reports
    /// [`super::Stats::capacity_short`], so that the player can show "not enough upload in this
    /// swarm" rather than an endless spinner. Who gets the scarce slots is decided by
    /// displacement (stronger uploads take weaker children's places at every level), so the
    /// viewers that forward stay served and the weakest starve first.
    fn check_capacity(&mut self, now: Instant) {
        // Without neighbours the problem is connectivity, not capacity.
        if self.neighbours.established_count() == 0
            || self.trees.stripes.iter().all(|st| st.parent.is_some())
        {
            self.trees.short_since = None;
            self.stats.capacity_short = false;
            return;
        }
        let since = *self.trees.short_since.get_or_insert(now);
        self.stats.capacity_short = now.saturating_duration_since(since) >= SHORT_AFTER;
    }

    /// A segment learned after `since` and older than the stall timeout has pieces on stripe
    /// `s`: the parent should have delivered some of them by now.
    fn stripe_overdue(&self, now: Instant, s: usize, since: Instant) -> bool {
        for (&seq, seg) in self.store.segments.iter().rev() {
            if seg.learned_at < since {
                break;
            }
            if now.saturating_duration_since(seg.learned_at) > self.config.stall_timeout
                && self.stripe_mask(seq, s) & seg.full != 0
            {
                return true;
            }
        }
        false
    }

    fn abandon_parent(&mut self, now: Instant, s: usize, parent: PeerId) {
        self.stats.stalls += 1;
        let st = &mut self.trees.stripes[s];
        st.lose_parent();
        st.avoid.push((parent, now + STALLED_BACKOFF));
        if let Some(n) = self.neighbours.get_mut(&parent) {
            n.parent_stripes &= !(1 << s);
        }
        self.send(parent, &Message::Unsubscribe { stripe: s as u8 });
        self.status_dirty = true;
        self.update_depth_stats();
    }
}
