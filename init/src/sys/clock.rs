//! Time arithmetic that cannot panic (`Instant + Duration` panics on
//! overflow, and durations come from the configuration and the command
//! line), and the time since boot.

use std::time::{Duration, Instant};

/// A year: "never" for practical purposes.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + d`, capped at a year from now.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// `Instant::now() + d`, capped.
pub fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

/// Time since the kernel started (CLOCK_BOOTTIME, suspend included).
pub fn since_boot() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FAR);
        assert_eq!(
            after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert!(since_boot() > Duration::ZERO);
    }
}
