//! The `fleet-lock` strategy: a reboot slot from a FleetLock server, as
//! Zincati takes one, with one difference that matters for a fleet.
//!
//! Once a boot is blessed the agent reports `steady-state` (gives back a
//! slot it may hold) until the server says yes, and takes no update
//! before that. Before rebooting into a version it deployed, it asks
//! `pre-reboot` until granted; then it records the slot in [`HELD_PATH`]
//! (the commit it rebooted from and the version it rebooted into) and
//! reboots. The next blessed boot of that version gives the slot back.
//! But when that version failed and the host came back to the old one,
//! the agent does **not** give it back: it keeps the slot and says so, so
//! a bad release stops at the first host instead of walking through the
//! group. A newer version taken later under the same slot (the lock is
//! recursive), or an operator's unlock on the server, frees it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_fleet::protocol::{Client, ClientError};
use serde::{Deserialize, Serialize};

use super::state::{Phase, Status, Version};
use crate::upgrade::short;

/// The slot this host took to reboot, kept across that reboot: present
/// from the grant until a blessed boot of another version gives it back.
pub const HELD_PATH: &str = "/var/lib/berth/update-agent/fleet-lock-held";
/// How long one FleetLock request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A FleetLock server, as the agent uses it (a trait so tests can answer
/// for it).
pub trait Lock {
    /// `pre-reboot`: take a slot (or keep the one held).
    fn pre_reboot(&self) -> Result<(), ClientError>;
    /// `steady-state`: give the slot back if held.
    fn steady_state(&self) -> Result<(), ClientError>;
}

impl Lock for Client {
    fn pre_reboot(&self) -> Result<(), ClientError> {
        Client::pre_reboot(self)
    }

    fn steady_state(&self) -> Result<(), ClientError> {
        Client::steady_state(self)
    }
}

/// What [`HELD_PATH`] says: the slot was granted while `from` was booted,
/// to reboot into `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The commit booted when the slot was granted.
    pub from: String,
    /// The version rebooted into.
    pub to: Version,
}

/// The `fleet_lock` part of the agent's status (read by the fleet
/// registry: keep the names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockStatus {
    /// The server's base URL.
    pub url: String,
    /// The reboot group.
    pub group: String,
    /// The client id sent (the app-specific host id).
    pub id: String,
    /// Whether this host holds a slot, as far as it knows (an operator may
    /// have freed it on the server since).
    pub holding: bool,
    /// Held after the version it was taken for failed or was rolled back:
    /// the group waits for this host.
    #[serde(default)]
    pub kept: bool,
    /// Why it holds one, e.g. `failed update to 3.0.0 (c0ffee…)`.
    pub reason: Option<String>,
    /// The server's last refusal or the last transport error, until a
    /// request succeeds.
    pub last_error: Option<String>,
    /// Its kind (`failed_lock`, `client_failed_request`, …).
    #[serde(default)]
    pub last_error_kind: Option<String>,
}

/// The boot as far as the slot is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Boot {
    /// The booted commit.
    pub booted: String,
    /// The deployment that boots next, if it is not the booted one: its
    /// commit, and whether its boot tries ran out.
    pub next: Option<(String, bool)>,
}

/// What to do about the slot at the start of a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Report steady state: nothing is held, or the version the slot was
    /// taken for is booted and blessed (or another is: a person moved on).
    Release,
    /// Keep it.
    Hold {
        /// The version it was taken for failed or was rolled back (rather
        /// than waiting to be booted).
        kept: bool,
        /// For the status, e.g. `failed update to 3.0.0 (c0ffee…)`.
        reason: String,
    },
}

/// The slot's fate, from the held record, the boot and the commits that
/// failed on this host.
pub fn slot(held: Option<&Held>, boot: &Boot, failed: &[String]) -> Slot {
    let Some(h) = held else {
        return Slot::Release;
    };
    if h.from != boot.booted || h.to.commit == boot.booted {
        return Slot::Release;
    }
    let what = format!("{} ({})", h.to.version, short(&h.to.commit));
    let next = boot.next.as_ref().filter(|(c, _)| *c == h.to.commit);
    if failed.contains(&h.to.commit) || next.is_some_and(|(_, bad)| *bad) {
        Slot::Hold {
            kept: true,
            reason: format!("failed update to {what}"),
        }
    } else if next.is_some() {
        Slot::Hold {
            kept: false,
            reason: format!("rebooting into {what}"),
        }
    } else {
        Slot::Hold {
            kept: true,
            reason: format!("rolled-back update to {what}"),
        }
    }
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The held record, if any (an unreadable one counts as none).
pub fn load_held(root: &Path) -> Option<Held> {
    let bytes = std::fs::read(under(root, HELD_PATH)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the held record (atomically).
pub fn save_held(root: &Path, held: &Held) -> std::io::Result<()> {
    let path = under(root, HELD_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(held).map_err(std::io::Error::other)?;
    berth_sysroot::esp_sync::write_atomic(&path, &json).map_err(std::io::Error::other)
}

/// Removes the held record.
pub fn clear_held(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(under(root, HELD_PATH)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What the start of a tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Go on with the check.
    Go,
    /// Steady state was not reported yet: try again after this long.
    Retry(Duration),
}

/// The agent's FleetLock client and what it learnt in this boot.
pub struct Fleet<L> {
    lock: L,
    /// Steady state was reported in this boot.
    released: bool,
    backoff: Duration,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl<L: Lock> Fleet<L> {
    /// The strategy over `lock`; steady-state retries back off from
    /// `first_backoff` up to `max_backoff`.
    pub fn new(lock: L, first_backoff: Duration, max_backoff: Duration) -> Fleet<L> {
        Fleet {
            lock,
            released: false,
            backoff: first_backoff,
            first_backoff,
            max_backoff: max_backoff.max(first_backoff),
        }
    }

    /// At the start of a tick of a blessed boot: keeps the slot, or gives
    /// it back (until the server says yes, nothing else happens).
    pub fn start(&mut self, root: &Path, boot: &Boot, failed: &[String], st: &mut Status) -> Start {
        let held = load_held(root);
        let f = fleet_status(st);
        match slot(held.as_ref(), boot, failed) {
            Slot::Hold { kept, reason } => {
                f.holding = true;
                f.kept = kept;
                f.reason = Some(reason);
                Start::Go
            }
            Slot::Release if self.released => {
                f.holding = false;
                f.kept = false;
                f.reason = None;
                Start::Go
            }
            Slot::Release => match self
                .lock
                .steady_state()
                .map_err(|e| (e.kind().to_string(), e.to_string()))
            {
                Ok(()) => match clear_held(root) {
                    Ok(()) => {
                        self.released = true;
                        self.backoff = self.first_backoff;
                        f.holding = false;
                        f.kept = false;
                        f.reason = None;
                        f.last_error = None;
                        f.last_error_kind = None;
                        eprintln!("berthctl agent: fleet lock: steady state reported");
                        Start::Go
                    }
                    Err(e) => self.retry(st, "local", format!("removing {HELD_PATH}: {e}")),
                },
                Err((kind, text)) => self.retry(st, &kind, text),
            },
        }
    }

    fn retry(&mut self, st: &mut Status, kind: &str, text: String) -> Start {
        let wait = super::jittered(self.backoff);
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        let f = fleet_status(st);
        let group = f.group.clone();
        f.last_error = Some(text.clone());
        f.last_error_kind = Some(kind.to_string());
        let why = format!(
            "reporting steady state to the fleet lock (group {group}) before taking updates: {text}; again in {}s",
            wait.as_secs()
        );
        if st.state != Phase::ReportingSteadyState {
            eprintln!("berthctl agent: {why}");
        }
        st.set(Phase::ReportingSteadyState, why);
        Start::Retry(wait)
    }

    /// Before rebooting from `booted` into `target`: asks for the slot.
    /// `Ok(true)` once granted and recorded (reboot now), `Ok(false)` when
    /// refused (the status says so; ask again at the next tick).
    pub fn ask(
        &mut self,
        root: &Path,
        booted: &str,
        target: &Version,
        st: &mut Status,
    ) -> std::io::Result<bool> {
        match self.lock.pre_reboot() {
            Ok(()) => {
                let held = Held {
                    from: booted.to_string(),
                    to: target.clone(),
                };
                // Before the reboot: else a failed boot would not keep it.
                save_held(root, &held)?;
                let f = fleet_status(st);
                f.holding = true;
                f.kept = false;
                f.reason = Some(format!(
                    "rebooting into {} ({})",
                    target.version,
                    short(&target.commit)
                ));
                f.last_error = None;
                f.last_error_kind = None;
                Ok(true)
            }
            Err(e) => {
                let f = fleet_status(st);
                let group = f.group.clone();
                f.last_error = Some(e.to_string());
                f.last_error_kind = Some(e.kind().to_string());
                let why = format!(
                    "{} is deployed; waiting for a reboot slot in group {group}: {}",
                    target.version, e
                );
                if st.state != Phase::WaitingForSlot {
                    eprintln!("berthctl agent: {why}");
                }
                st.set(Phase::WaitingForSlot, why);
                Ok(false)
            }
        }
    }
}

/// The status's `fleet_lock` part (made empty if missing: the agent sets
/// it at start).
fn fleet_status(st: &mut Status) -> &mut FleetLockStatus {
    st.fleet_lock.get_or_insert_with(|| FleetLockStatus {
        url: String::new(),
        group: String::new(),
        id: String::new(),
        holding: false,
        kept: false,
        reason: None,
        last_error: None,
        last_error_kind: None,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const OLD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const NEW: &str = "c0ffee0000000000000000000000000000000000000000000000000000000000";
    const NEWER: &str = "beef000000000000000000000000000000000000000000000000000000000000";

    fn v(version: &str, commit: &str) -> Version {
        Version {
            version: version.into(),
            commit: commit.into(),
        }
    }

    fn held(to: &Version) -> Held {
        Held {
            from: OLD.into(),
            to: to.clone(),
        }
    }

    fn boot(booted: &str, next: Option<(&str, bool)>) -> Boot {
        Boot {
            booted: booted.into(),
            next: next.map(|(c, b)| (c.into(), b)),
        }
    }

    #[test]
    fn the_slot_is_given_back_unless_the_update_it_was_taken_for_failed() {
        let new = v("3.0.0", NEW);
        // Nothing held: report steady state (a slot held since a crash).
        assert_eq!(slot(None, &boot(OLD, None), &[]), Slot::Release);
        // Booted into the new version (blessed, or the agent would wait).
        assert_eq!(
            slot(Some(&held(&new)), &boot(NEW, None), &[]),
            Slot::Release
        );
        // Back on the old one, the new one recorded as failed: kept.
        let failed = vec![NEW.to_string()];
        assert_eq!(
            slot(Some(&held(&new)), &boot(OLD, None), &failed),
            Slot::Hold {
                kept: true,
                reason: "failed update to 3.0.0 (c0ffee000000)".into()
            }
        );
        // Its tries ran out, boot-check has not recorded it yet: kept too.
        assert!(matches!(
            slot(Some(&held(&new)), &boot(OLD, Some((NEW, true))), &[]),
            Slot::Hold { kept: true, .. }
        ));
        // Granted, and the reboot is still to come: held, not kept.
        assert_eq!(
            slot(Some(&held(&new)), &boot(OLD, Some((NEW, false))), &[]),
            Slot::Hold {
                kept: false,
                reason: "rebooting into 3.0.0 (c0ffee000000)".into()
            }
        );
        // Back on the old one without a failure record: rolled back.
        assert!(matches!(
            slot(Some(&held(&new)), &boot(OLD, None), &[]),
            Slot::Hold { kept: true, reason } if reason.starts_with("rolled-back update to 3.0.0")
        ));
        // A third version is booted (a person moved on): given back.
        assert_eq!(
            slot(Some(&held(&new)), &boot(NEWER, None), &failed),
            Slot::Release
        );
    }

    /// A FleetLock server answering from scripts.
    #[derive(Default)]
    struct Script {
        pre_reboot: RefCell<Vec<Result<(), ClientError>>>,
        steady_state: RefCell<Vec<Result<(), ClientError>>>,
        calls: RefCell<Vec<&'static str>>,
    }

    impl Lock for &Script {
        fn pre_reboot(&self) -> Result<(), ClientError> {
            self.calls.borrow_mut().push("pre-reboot");
            self.pre_reboot.borrow_mut().remove(0)
        }
        fn steady_state(&self) -> Result<(), ClientError> {
            self.calls.borrow_mut().push("steady-state");
            self.steady_state.borrow_mut().remove(0)
        }
    }

    fn refused() -> ClientError {
        ClientError::Refused {
            url: "http://fl/v1/pre-reboot".into(),
            status: 500,
            kind: "failed_lock".into(),
            value: "all 1 semaphore slots currently locked".into(),
        }
    }

    fn fleet(s: &Script) -> Fleet<&Script> {
        Fleet::new(s, Duration::from_secs(10), Duration::from_secs(300))
    }

    #[test]
    fn no_update_before_steady_state_is_reported_once_this_boot() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let s = Script::default();
        s.steady_state.borrow_mut().extend([
            Err(ClientError::Transport {
                url: "http://fl/v1/steady-state".into(),
                message: "connection refused".into(),
            }),
            Ok(()),
        ]);
        let mut f = fleet(&s);
        let mut st = Status::new("fleet-lock");
        let b = boot(OLD, None);
        let Start::Retry(wait) = f.start(r, &b, &[], &mut st) else {
            panic!("went on without steady state")
        };
        assert!(wait >= Duration::from_secs(10) && wait <= Duration::from_secs(11));
        assert_eq!(st.state, Phase::ReportingSteadyState);
        let fl = st.fleet_lock.clone().unwrap();
        assert_eq!(fl.last_error_kind.as_deref(), Some("client_failed_request"));
        // The back-off doubles.
        assert_eq!(f.backoff, Duration::from_secs(20));
        assert_eq!(f.start(r, &b, &[], &mut st), Start::Go);
        assert_eq!(st.fleet_lock.as_ref().unwrap().last_error, None);
        // Once per boot.
        assert_eq!(f.start(r, &b, &[], &mut st), Start::Go);
        assert_eq!(*s.calls.borrow(), ["steady-state", "steady-state"]);
    }

    #[test]
    fn a_failed_update_keeps_the_slot_and_a_newer_one_frees_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let new = v("3.0.0", NEW);
        let s = Script::default();
        s.steady_state.borrow_mut().extend([Ok(()), Ok(())]);
        s.pre_reboot
            .borrow_mut()
            .extend([Err(refused()), Ok(()), Ok(())]);

        // Boot 1, on OLD: steady state, then 3.0.0 is deployed.
        let mut f = fleet(&s);
        let mut st = Status::new("fleet-lock");
        assert_eq!(f.start(r, &boot(OLD, None), &[], &mut st), Start::Go);
        assert!(!f.ask(r, OLD, &new, &mut st).unwrap());
        assert_eq!(st.state, Phase::WaitingForSlot);
        assert!(st.message.contains("failed_lock"), "{}", st.message);
        assert_eq!(load_held(r), None);
        assert!(f.ask(r, OLD, &new, &mut st).unwrap());
        assert_eq!(load_held(r), Some(held(&new)));
        assert!(st.fleet_lock.as_ref().unwrap().holding);

        // Boot 2: 3.0.0 failed, the host is back on OLD. No steady state.
        let mut f = fleet(&s);
        let mut st = Status::new("fleet-lock");
        let failed = vec![NEW.to_string()];
        assert_eq!(f.start(r, &boot(OLD, None), &failed, &mut st), Start::Go);
        let fl = st.fleet_lock.clone().unwrap();
        assert!(fl.holding && fl.kept, "{fl:?}");
        assert_eq!(
            fl.reason.as_deref(),
            Some("failed update to 3.0.0 (c0ffee000000)")
        );
        // 3.1.0 comes: the slot is still ours (recursive lock).
        let newer = v("3.1.0", NEWER);
        assert!(f.ask(r, OLD, &newer, &mut st).unwrap());
        assert_eq!(load_held(r).unwrap().to, newer);

        // Boot 3: 3.1.0 is blessed; the slot goes back and the record too.
        let mut f = fleet(&s);
        let mut st = Status::new("fleet-lock");
        assert_eq!(f.start(r, &boot(NEWER, None), &failed, &mut st), Start::Go);
        assert_eq!(load_held(r), None);
        assert!(!st.fleet_lock.unwrap().holding);
        assert_eq!(
            *s.calls.borrow(),
            [
                "steady-state",
                "pre-reboot",
                "pre-reboot",
                "pre-reboot",
                "steady-state"
            ]
        );
    }
}
