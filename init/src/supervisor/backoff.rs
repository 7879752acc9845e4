//! Restart delays: start at `backoff_initial_ms`, double after each quick
//! exit up to `backoff_max_ms`, and start over once a run lasted
//! [`STABLE_AFTER`].

use std::time::Duration;

/// A run at least this long counts as healthy: the next delay is the
/// initial one again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The restart delay of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `initial_ms` doubling to `max_ms` (raised to
    /// `initial_ms` if smaller).
    pub fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        let initial = Duration::from_millis(initial_ms);
        let max = Duration::from_millis(max_ms.max(initial_ms));
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next start, after a run of `ran_for`.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= STABLE_AFTER {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Whether the delays have reached the cap (a crash loop).
    pub fn at_cap(&self, delay: Duration) -> bool {
        delay >= self.max && self.max > self.initial
    }

    /// Back to the initial delay (after a manual restart).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_then_resets_after_a_stable_run() {
        let quick = Duration::from_millis(50);
        let mut b = Backoff::new(100, 1000);
        let delays: Vec<u128> = (0..6).map(|_| b.on_exit(quick).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert!(b.at_cap(Duration::from_millis(1000)));
        assert_eq!(b.on_exit(STABLE_AFTER).as_millis(), 100);
        assert_eq!(b.on_exit(quick).as_millis(), 200);
        b.reset();
        assert_eq!(b.on_exit(quick).as_millis(), 100);
    }

    #[test]
    fn odd_settings_stay_bounded() {
        let mut b = Backoff::new(500, 10);
        assert_eq!(b.on_exit(Duration::ZERO).as_millis(), 500);
        assert_eq!(b.on_exit(Duration::ZERO).as_millis(), 500);
        let mut z = Backoff::new(0, 0);
        assert_eq!(z.on_exit(Duration::ZERO), Duration::ZERO);
    }
}
