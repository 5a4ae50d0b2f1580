//! How much the player must hold ahead of the playhead, from how unevenly segments arrive.
//!
//! Segment `i`, captured over `[e_i - dur_i, e_i]`, reaches the player `d_i` after its end. If the
//! player shows media `L` behind capture, segment `i` is needed at `e_i - dur_i + L`, so `L` must
//! be at least `d_i + dur_i` for every `i`. The steady part of `d` costs latency whatever the
//! buffer; only its spread has to be buffered. Holding `ahead` on average (the rate controller
//! keeps it within `target ± deadband`), `L ≈ ahead + d_median + dur / 2`, which gives the
//! target below. A fixed 1 s buffer wasted most of a second on a quiet LAN, where segments
//! arrive within a few tens of milliseconds of each other (BENCHMARKS.md).

use std::collections::VecDeque;

/// Arrivals remembered, seconds of wall time: a late arrival raises the target at once and is
/// forgotten after this long without another.
const WINDOW_S: f64 = 10.0;
/// Arrivals needed before the target follows them (two seconds of 200 ms segments).
const MIN_SAMPLES: usize = 10;
/// Margin on top of the computed need, seconds.
const SAFETY_S: f64 = 0.1;

/// Recent arrivals and the buffer target they call for.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterTarget {
    /// (arrival, delay after the segment's end, duration), seconds, oldest first.
    arrivals: VecDeque<(f64, f64, f64)>,
    /// Lowest target: a floor for what arrivals cannot show in advance (a broadcaster page
    /// starved of CPU for half a second, a parent dying), where 200 ms segments leave little.
    pub min: f64,
    /// Highest target: an outage longer than this (a parent killed, seconds to re-route) is
    /// met by a stall and the gap rules, not by holding every viewer that far behind for the
    /// whole window afterwards (a 3 s ceiling kept survivors 2.6–3.4 s behind live for 10 s).
    pub max: f64,
}

impl Default for JitterTarget {
    fn default() -> Self {
        JitterTarget {
            arrivals: VecDeque::new(),
            min: 0.5,
            max: 1.5,
        }
    }
}

impl JitterTarget {
    /// A segment of `duration` s arrived at `now` (s), `delay` s after its last frame's capture.
    pub fn record(&mut self, now: f64, delay: f64, duration: f64) {
        while self.arrivals.front().is_some_and(|a| a.0 < now - WINDOW_S) {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back((now, delay, duration));
    }

    /// Buffer to hold ahead of the playhead, seconds, for a rate controller with `deadband`;
    /// `None` until enough segments arrived to tell.
    pub fn target(&self, deadband: f64) -> Option<f64> {
        if self.arrivals.len() < MIN_SAMPLES {
            return None;
        }
        let mut delays: Vec<f64> = self.arrivals.iter().map(|a| a.1).collect();
        delays.sort_by(f64::total_cmp);
        let median = delays[delays.len() / 2];
        let worst = delays[delays.len() - 1];
        let dur = self.arrivals.iter().map(|a| a.2).fold(0.0, f64::max);
        let need = (worst - median) + dur / 2.0 + deadband + SAFETY_S;
        Some(need.clamp(self.min, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(t: &mut JitterTarget, from: f64, n: usize, delay: impl Fn(usize) -> f64) {
        for i in 0..n {
            t.record(from + i as f64 * 0.2, delay(i), 0.2);
        }
    }

    #[test]
    fn waits_for_enough_arrivals() {
        let mut t = JitterTarget::default();
        steady(&mut t, 0.0, MIN_SAMPLES - 1, |_| 0.1);
        assert_eq!(t.target(0.15), None);
        t.record(2.0, 0.1, 0.2);
        assert!(t.target(0.15).is_some());
    }

    #[test]
    fn even_arrivals_give_the_floor_a_steady_delay_costs_nothing() {
        let mut t = JitterTarget::default();
        // However late, as long as every segment is equally late: 0.1 + 0.15 + 0.1 < floor.
        steady(&mut t, 0.0, 50, |_| 0.8);
        assert_eq!(t.target(0.15), Some(0.5));
    }

    #[test]
    fn a_late_arrival_raises_the_target_at_once_and_is_forgotten_after_the_window() {
        let mut t = JitterTarget::default();
        steady(&mut t, 0.0, 50, |i| 0.1 + (i % 3) as f64 * 0.02);
        let calm = t.target(0.15).unwrap();
        t.record(10.0, 1.1, 0.2); // one segment a second later than the others
        let after = t.target(0.15).unwrap();
        assert!(
            (after - (1.1 - 0.12 + 0.1 + 0.15 + 0.1)).abs() < 1e-9,
            "{after}"
        );
        assert_eq!(calm, 0.5);
        steady(&mut t, 10.2, 49, |_| 0.1);
        assert!(t.target(0.15).unwrap() > 1.0, "forgotten too soon");
        steady(&mut t, 20.2, 5, |_| 0.1);
        assert_eq!(t.target(0.15), Some(0.5));
    }

    #[test]
    fn clamped_to_the_ceiling() {
        let mut t = JitterTarget::default();
        steady(&mut t, 0.0, 20, |i| if i == 5 { 9.0 } else { 0.1 });
        assert_eq!(t.target(0.15), Some(1.5));
    }
}
