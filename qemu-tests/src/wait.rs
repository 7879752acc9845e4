//! Polling with a deadline: [`wait_until`] looks at a condition again and
//! again (a guest's status, a port, a QMP answer) until it holds, and on
//! timeout fails with an error that names what it waited for, how long,
//! and what the last look saw.
//!
//! Console output is not polled: [`crate::Vm::wait_for`] wakes on each
//! new byte.

use std::time::{Duration, Instant};

use crate::{Error, Result};

/// When a wait gives up: a timeout from the start of the wait (a
/// [`Duration`]), or an [`Instant`] that several waits share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl From<Duration> for Deadline {
    fn from(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Self {
        Deadline(at)
    }
}

/// What one look at a waited-for condition found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check<T> {
    /// It holds; the wait returns this value.
    Done(T),
    /// Not yet. What the look saw (a status, an error), which the timeout
    /// error shows if this was the last look; empty if nothing useful.
    NotYet(String),
}

/// Calls `look` every `every` (after each look, the full interval) until it
/// gives [`Check::Done`], and returns that value. An `Err` from `look` ends
/// the wait at once with that error (a failure no retry can fix). Past
/// `until` it fails with [`Error::TimedOut`]: "waiting for `what`".
pub fn wait_until<T>(
    until: impl Into<Deadline>,
    every: Duration,
    what: &str,
    mut look: impl FnMut() -> Result<Check<T>>,
) -> Result<T> {
    let started = Instant::now();
    let Deadline(deadline) = until.into();
    loop {
        let seen = match look()? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::TimedOut {
                what: what.to_string(),
                after: now - started,
                last: seen,
            });
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(5);

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut looks = 0;
        let got = wait_until(Duration::from_secs(10), TICK, "three looks", || {
            looks += 1;
            Ok(if looks == 3 {
                Check::Done(looks * 10)
            } else {
                Check::NotYet(format!("look {looks}"))
            })
        })
        .unwrap();
        assert_eq!((got, looks), (30, 3));
    }

    #[test]
    fn a_timeout_names_the_wait_its_length_and_the_last_look() {
        let mut looks = 0;
        let started = Instant::now();
        let err = wait_until(Duration::from_millis(50), TICK, "the answer", || {
            looks += 1;
            Ok::<_, Error>(Check::<()>::NotYet(format!("look {looks} said no")))
        })
        .unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(looks >= 2, "{looks} looks");
        let msg = err.to_string();
        assert!(
            msg.starts_with("waiting for the answer: timed out after "),
            "{msg}"
        );
        assert!(
            msg.ends_with(&format!("; last seen: look {looks} said no")),
            "{msg}"
        );
        let Error::TimedOut { after, .. } = err else {
            panic!("{err}")
        };
        assert!(
            after >= Duration::from_millis(50) && after <= took,
            "{after:?}"
        );
    }

    #[test]
    fn nothing_seen_leaves_the_last_look_out() {
        let err = wait_until(Duration::ZERO, TICK, "a port", || {
            Ok(Check::<()>::NotYet(String::new()))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("waiting for a port: timed out after "),
            "{msg}"
        );
        assert!(!msg.contains("last seen"), "{msg}");
    }

    #[test]
    fn an_error_ends_the_wait_at_once() {
        let mut looks = 0;
        let err = wait_until(Duration::from_secs(10), TICK, "x", || {
            looks += 1;
            Err::<Check<()>, _>(Error::Setup("migration failed".into()))
        })
        .unwrap_err();
        assert_eq!(
            (looks, err.to_string()),
            (1, "migration failed".to_string())
        );
    }

    #[test]
    fn a_shared_deadline_that_has_passed_still_gets_one_look() {
        let deadline = Instant::now();
        let got = wait_until(deadline, TICK, "x", || Ok(Check::Done("first look")));
        assert_eq!(got.unwrap(), "first look");
        let mut looks = 0;
        let err = wait_until(deadline, TICK, "y", || {
            looks += 1;
            Ok(Check::<()>::NotYet("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(looks, 1);
    }
}
