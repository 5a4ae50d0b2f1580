//! The tracker client's schedule, per tracker: when to connect, reconnect (with backoff) and
//! announce again. What an announce carries is the node's business; this module only says when.

use crate::client::tracker::reconnect_delay_ms;
use crate::core::Instant;
use std::time::Duration;

/// Re-announce interval when the tracker names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest re-announce interval a tracker may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// While this peer has fewer neighbours than it wants, it re-announces (with fresh offers) at
/// least this often, whatever the tracker's interval: joining fast matters more for live video.
pub const HUNGRY_INTERVAL: Duration = Duration::from_secs(5);

/// A viewer whose live neighbours fell below what it had at its last announce re-announces at
/// once, but not more often than this. The neighbours it lost may have been its only path to
/// everyone holding data (viewers that joined first and were killed): the peers it learned
/// through them can no longer be reached through them, and waiting for the periodic announce
/// stalled playback for seconds.
pub const LOSS_REANNOUNCE: Duration = Duration::from_secs(1);

/// A tracker URL that cannot even be opened is retried this rarely (it never gets better; it
/// shows as unreachable).
pub const BAD_URL_RETRY: Duration = Duration::from_secs(60);

/// After `stopped` on a page that may come back (back/forward cache), reconnect this late.
pub const RESUME_DELAY: Duration = Duration::from_secs(1);

/// The socket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No socket; connect at the given time.
    Idle {
        /// When to connect.
        reconnect_at: Instant,
    },
    /// The platform is opening the socket.
    Connecting,
    /// Open. `announcing`: an announce waits for its offers to be made.
    Open {
        /// Offers are being made for an announce.
        announcing: bool,
    },
    /// Left for good (`close`).
    Stopped,
}

/// One tracker.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Its WebSocket URL.
    pub url: String,
    /// Socket state.
    pub link: Link,
    /// Reconnection attempts since the last open socket (backoff exponent).
    attempts: u32,
    /// Connection attempts that failed since the last success.
    pub failures: u32,
    /// The tracker's re-announce interval.
    interval: Duration,
    /// When the next periodic announce is due.
    announce_at: Option<Instant>,
    /// Peers in the swarm (seeders + leechers) as the tracker last said, us included.
    pub swarm_size: Option<usize>,
    /// When we last announced, and how many live neighbours we had then.
    announced: (Instant, usize),
}

impl Tracker {
    /// A tracker at `url`, connected at once.
    pub fn new(url: String) -> Self {
        Tracker {
            url,
            link: Link::Idle {
                reconnect_at: Instant::ZERO,
            },
            attempts: 0,
            failures: 0,
            interval: DEFAULT_INTERVAL,
            announce_at: None,
            swarm_size: None,
            announced: (Instant::ZERO, 0),
        }
    }

    /// The socket is open.
    pub fn is_open(&self) -> bool {
        matches!(self.link, Link::Open { .. })
    }

    /// Whether to open the socket now.
    pub fn connect_due(&self, now: Instant) -> bool {
        matches!(self.link, Link::Idle { reconnect_at } if now >= reconnect_at)
    }

    /// Whether an announce could go now, as `(periodic, lost)`: the periodic announce is due;
    /// live neighbours fell below what we had at the last one and [`LOSS_REANNOUNCE`] passed
    /// (the node decides whether a loss matters: only to viewers that want neighbours).
    pub fn announce_due(&self, now: Instant, live_neighbours: usize) -> (bool, bool) {
        if self.link != (Link::Open { announcing: false }) {
            return (false, false);
        }
        let lost = live_neighbours < self.announced.1
            && now.saturating_duration_since(self.announced.0) >= LOSS_REANNOUNCE;
        (self.announce_at.is_some_and(|at| now >= at), lost)
    }

    /// The platform was asked to open the socket.
    pub fn connecting(&mut self) {
        self.link = Link::Connecting;
    }

    /// The URL is unusable.
    pub fn bad_url(&mut self, now: Instant) {
        self.failures += 1;
        self.link = Link::Idle {
            reconnect_at: now + BAD_URL_RETRY,
        };
    }

    /// The socket opened.
    pub fn opened(&mut self) {
        self.link = Link::Open { announcing: false };
        self.attempts = 0;
        self.failures = 0;
    }

    /// The socket closed or failed to open; `jitter` in `[0, 1)`. Returns the retry delay.
    pub fn closed(&mut self, now: Instant, jitter: f64) -> Option<Duration> {
        match self.link {
            Link::Idle { .. } | Link::Stopped => return None,
            Link::Connecting => self.failures += 1,
            Link::Open { .. } => {}
        }
        let delay =
            Duration::from_micros((reconnect_delay_ms(self.attempts, jitter) * 1000.0) as u64);
        self.attempts += 1;
        self.link = Link::Idle {
            reconnect_at: now + delay,
        };
        Some(delay)
    }

    /// An announce started making offers (`true`) or went out (`false`).
    pub fn set_announcing(&mut self, on: bool) {
        if let Link::Open { announcing } = &mut self.link {
            *announcing = on;
        }
    }

    /// An announce went out at `now` with `live` live neighbours; `hungry`: more neighbours are
    /// wanted than we have and the swarm has more peers.
    pub fn announced(&mut self, now: Instant, live: usize, hungry: bool) {
        self.set_announcing(false);
        self.announced = (now, live);
        let interval = if hungry {
            self.interval.min(HUNGRY_INTERVAL)
        } else {
            self.interval
        };
        self.announce_at = Some(now + interval);
    }

    /// The tracker's reply: its interval (seconds) and swarm counts.
    pub fn response(&mut self, interval_secs: Option<u32>, size: Option<u64>) {
        if let Some(n) = size {
            self.swarm_size = Some(n.min(usize::MAX as u64) as usize);
        }
        if let Some(secs) = interval_secs.filter(|&s| s > 0) {
            self.interval = Duration::from_secs(secs as u64).max(MIN_INTERVAL);
        }
    }

    /// Starts over (the node rejoined under a new id): reconnect at `now`.
    pub fn restart(&mut self, now: Instant) {
        self.link = Link::Idle { reconnect_at: now };
        self.attempts = 0;
        self.swarm_size = None;
        self.announced = (now, 0);
        self.announce_at = None;
    }

    /// `stopped` was sent; reconnect at `resume_at`, or never.
    pub fn stop(&mut self, resume_at: Option<Instant>) {
        self.link = match resume_at {
            Some(at) => Link::Idle { reconnect_at: at },
            None => Link::Stopped,
        };
    }

    /// The next time this tracker needs the node's attention.
    pub fn next_due(&self) -> Option<Instant> {
        match self.link {
            Link::Idle { reconnect_at } => Some(reconnect_at),
            Link::Open { announcing: false } => self.announce_at,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_and_failures_count_only_unopened_sockets() {
        let mut t = Tracker::new("ws://x".into());
        let t0 = Instant::ZERO;
        assert!(t.connect_due(t0));
        t.connecting();
        assert_eq!(t.closed(t0, 0.5), Some(Duration::from_secs(1)));
        assert_eq!(t.failures, 1);
        assert!(!t.connect_due(t0 + Duration::from_millis(999)));
        t.connecting();
        assert_eq!(t.closed(t0, 0.5), Some(Duration::from_secs(2)));
        t.connecting();
        t.opened();
        assert_eq!(t.failures, 0);
        // Closing an open socket is no failure; backoff starts over.
        assert_eq!(t.closed(t0, 0.5), Some(Duration::from_secs(1)));
        assert_eq!(t.failures, 0);
        assert_eq!(t.closed(t0, 0.5), None, "a second close is ignored");
    }

    #[test]
    fn hungry_peers_announce_sooner_and_losses_at_once() {
        let mut t = Tracker::new("ws://x".into());
        let t0 = Instant::from_millis(10_000);
        t.connecting();
        t.opened();
        t.response(Some(120), Some(3));
        t.announced(t0, 2, true);
        assert_eq!(t.next_due(), Some(t0 + HUNGRY_INTERVAL));
        assert_eq!(
            t.announce_due(t0 + Duration::from_millis(500), 1),
            (false, false)
        );
        assert_eq!(t.announce_due(t0 + LOSS_REANNOUNCE, 1), (false, true));
        assert_eq!(t.announce_due(t0 + HUNGRY_INTERVAL, 2), (true, false));
        t.announced(t0, 2, false);
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(120)));
        t.response(Some(1), None);
        t.announced(t0, 2, false);
        assert_eq!(t.next_due(), Some(t0 + MIN_INTERVAL));
    }
}
