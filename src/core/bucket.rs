//! Upload pacing: a token bucket in exact integer arithmetic (bytes × µs), so the source's cap
//! holds provably: over any span `T` it sends at most `burst + rate × T` plus one message.

use super::time::Instant;

/// A token bucket. Tokens are kept as byte·µs so refills never round away.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Refill rate, bytes per second.
    rate: u64,
    /// Most tokens kept, bytes.
    burst: u64,
    /// Current tokens × 1,000,000 (may go negative by what was sent on credit).
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket refilling at `rate` bytes/s up to `burst` bytes.
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: 0,
            last: now,
        }
    }

    /// Adds what accrued since the last call, then applies a new rate and burst from now on.
    pub(crate) fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let dt = now.as_micros().saturating_sub(self.last.as_micros()) as i128;
        self.last = self.last.max(now);
        self.tokens = (self.tokens + self.rate as i128 * dt).min(self.burst as i128 * 1_000_000);
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst as i128 * 1_000_000);
    }

    /// Data may go out now (possibly overdrawing by that one message).
    pub(crate) fn ready(&self) -> bool {
        self.tokens > 0
    }

    /// Charges `bytes` sent.
    pub(crate) fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as i128 * 1_000_000;
    }

    /// When [`TokenBucket::ready`] turns true again, if the rate allows it ever.
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        if self.ready() {
            return Some(self.last);
        }
        if self.rate == 0 {
            return None;
        }
        let us = (-self.tokens) / self.rate as i128 + 1;
        Some(Instant::from_micros(
            self.last
                .as_micros()
                .saturating_add(us.min(u64::MAX as i128) as u64),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_at_most_burst_plus_rate_times_time_plus_one_message() {
        let mut b = TokenBucket::new(1000, 500, Instant::ZERO);
        let mut sent = 0u64;
        let mut now = Instant::ZERO;
        for _ in 0..10_000 {
            now = Instant::from_micros(now.as_micros() + 997);
            b.refill(now, 1000, 500);
            while b.ready() {
                b.spend(300);
                sent += 300;
            }
        }
        let secs = now.as_micros() as f64 / 1e6;
        assert!(
            sent as f64 <= 500.0 + 1000.0 * secs + 300.0,
            "{sent} in {secs}s"
        );
        assert!(sent as f64 >= 1000.0 * secs - 600.0, "{sent} in {secs}s");
    }

    #[test]
    fn wakes_when_credit_is_repaid() {
        let mut b = TokenBucket::new(1_000_000, 10_000, Instant::ZERO);
        b.spend(5000);
        assert!(!b.ready());
        let at = b.ready_at().unwrap();
        assert_eq!(at.as_micros(), 5001);
        b.refill(at, 1_000_000, 10_000);
        assert!(b.ready());
        assert_eq!(TokenBucket::new(0, 0, Instant::ZERO).ready_at(), None);
    }
}
