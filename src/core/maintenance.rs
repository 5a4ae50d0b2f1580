//! Periodic maintenance, and the timer table [`Swarm::poll_timeout`] reads.
//!
//! Maintenance runs at most every [`TICK`] and does what needs no message to trigger it:
//! dropping silent neighbours, pinging idle links, peer exchange, stripe repair, pull repair,
//! pruning surplus neighbours and sending a changed `Status`.

use super::api::DisconnectReason;
use super::id::PeerId;
use super::neighbour::{CLASS_PUSH, DEAD_SILENCE, IDLE_PING, RELEASE_SILENCE};
use super::swarm::Swarm;
use super::time::Instant;
use super::timers::Timer;
use super::wire::{Message, RejectReason};
use std::time::Duration;

/// The maintenance period: stall checks, pulls, status updates.
pub(crate) const TICK: Duration = Duration::from_millis(100);

impl Swarm {
    /// Re-arms every timer from the state: maintenance while there are neighbours or
    /// connection attempts, the next playout deadline, and the pacing bucket while data waits
    /// for it.
    pub(crate) fn arm_timers(&mut self) {
        let looking_after = !self.neighbours.is_empty() || self.discovery.attempts() > 0;
        let maintenance = looking_after.then_some(self.next_tick);
        let playout = self.playout_deadline();
        let waiting = !self.bucket.ready() && self.neighbours.values().any(|n| !n.queue.is_empty());
        let pacing = if waiting {
            self.bucket.ready_at()
        } else {
            None
        };
        self.timers.set(Timer::Maintenance, maintenance);
        self.timers.set(Timer::Playout, playout);
        self.timers.set(Timer::Pacing, pacing);
    }

    pub(crate) fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        let dead: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.last_heard) > DEAD_SILENCE)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            self.drop_neighbour(now, p, DisconnectReason::Silent);
        }
        self.release_silent_children(now);
        let peers: Vec<PeerId> = self.established().collect();
        for p in &peers {
            if self.neighbours.get(p).is_some_and(|n| {
                now >= n.next_ping || now.saturating_duration_since(n.last_sent) >= IDLE_PING
            }) {
                self.ping(now, *p);
            }
        }
        self.discover(now, &peers);
        if !self.is_source() {
            self.check_stripes(now);
            self.expire_requests(now);
            self.schedule_pulls(now);
        }
        self.prune_surplus(now);
        if self.status_dirty {
            self.status_dirty = false;
            let status = self.status_message();
            self.send_each(&peers, &status);
        }
    }

    /// Children silent for [`RELEASE_SILENCE`] give up their stripe slots, before they are
    /// dropped: a dead child's slots would otherwise turn subscribers away. A live one that was
    /// only frozen is told with `Unsubscribe` and subscribes again.
    fn release_silent_children(&mut self, now: Instant) {
        let silent: Vec<(PeerId, u64)> = self
            .neighbours
            .iter()
            .filter(|(_, n)| {
                n.child_stripes != 0
                    && now.saturating_duration_since(n.last_heard) > RELEASE_SILENCE
            })
            .map(|(p, n)| (*p, n.child_stripes))
            .collect();
        for (p, stripes) in silent {
            for s in 0..self.k {
                if stripes & (1 << s) != 0 {
                    self.trees.children[s].retain(|c| *c != p);
                    self.send(p, &Message::Unsubscribe { stripe: s as u8 });
                }
            }
            if let Some(n) = self.neighbours.get_mut(&p) {
                n.child_stripes = 0;
                n.queue.retain(|(class, _, _)| *class != CLASS_PUSH);
            }
            self.status_dirty = true;
        }
    }

    /// At the degree limit, makes room for newcomers by dropping a neighbour that neither feeds
    /// nor is fed by us and has given nothing useful lately.
    fn prune_surplus(&mut self, now: Instant) {
        if self.neighbours.len() < self.config.max_degree {
            return;
        }
        let victim = self
            .neighbours
            .iter()
            .filter(|(_, n)| {
                n.is_established()
                    && !n.is_source()
                    && n.child_stripes == 0
                    && n.parent_stripes == 0
                    && now.saturating_duration_since(n.connected_at) > Duration::from_secs(10)
                    && now.saturating_duration_since(n.last_useful) > Duration::from_secs(5)
            })
            .min_by_key(|(id, n)| (n.last_useful, **id))
            .map(|(id, _)| *id);
        if let Some(v) = victim {
            self.send(
                v,
                &Message::Goodbye {
                    reason: RejectReason::Full,
                },
            );
            self.drop_neighbour(now, v, DisconnectReason::Useless);
        }
    }
}
