//! The core's timer table (quinn-proto's `TimerTable`): one deadline per kind of wake-up,
//! re-armed from the state after every call that changes it, so that
//! [`super::Swarm::poll_timeout`] reads the earliest instead of recomputing it.

use super::time::Instant;

/// Why the core wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Periodic maintenance ([`super::maintenance::TICK`]), while there are neighbours or
    /// connection attempts to look after.
    Maintenance,
    /// The next segment's playout deadline: played or skipped then.
    Playout,
    /// Upload pacing: the token bucket lets queued data out again.
    Pacing,
}

impl Timer {
    const COUNT: usize = 3;

    fn index(self) -> usize {
        match self {
            Timer::Maintenance => 0,
            Timer::Playout => 1,
            Timer::Pacing => 2,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arms `timer` for `at`, or disarms it with `None`.
    pub(crate) fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer.index()] = at;
    }

    /// When `timer` fires, if armed.
    #[cfg(test)]
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_armed_timer_wins() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Maintenance, Some(Instant::from_millis(100)));
        t.set(Timer::Pacing, Some(Instant::from_millis(40)));
        assert_eq!(t.next(), Some(Instant::from_millis(40)));
        t.set(Timer::Pacing, None);
        assert_eq!(t.next(), Some(Instant::from_millis(100)));
        assert_eq!(t.get(Timer::Playout), None);
        t.set(Timer::Playout, Some(Instant::from_millis(100)));
        assert_eq!(t.next(), Some(Instant::from_millis(100)));
    }
}
