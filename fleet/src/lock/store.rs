//! The semaphores in etcd: one key per group,
//! `/berth/fleet-lock/groups/<group>`, holding a [`Semaphore`] as JSON,
//! never attached to a lease (a slot must outlive its holder's reboot).
//!
//! Every change is a compare-and-swap transaction on the key's
//! `mod_revision` (0 = create if absent) against the value just read with
//! a linearizable read, so two servers (or a server and an operator) can
//! never both write from the same state. A lost race is retried, read then
//! swap, a few times with a short random pause, then reported as
//! [`LockError::Conflict`].
//!
//! Without an etcd quorum the read fails first, so nothing is written and
//! the caller is told [`LockError::Unavailable`]. The one window left is a
//! quorum lost between the read and the swap: the swap may time out here
//! and still commit once the quorum is back. Then the client that was told
//! "unavailable" holds a slot it does not know of until it asks again
//! (recursive lock: granted at once) or an operator releases it; the swap
//! was computed from a real state, so there are never more holders than
//! slots.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::etcd::{Client, Compare, EtcdError, KeyValue, Op};

use super::semaphore::{Holder, LockDecision, Semaphore, UnlockDecision};

/// The prefix of every group's key.
pub const KEY_PREFIX: &str = "/berth/fleet-lock/groups/";

/// How many read-then-swap rounds a request gets before [`LockError::Conflict`].
const ATTEMPTS: u32 = 6;

/// The etcd key of `group` (a valid FleetLock group needs no escaping).
pub fn group_key(group: &str) -> Vec<u8> {
    format!("{KEY_PREFIX}{group}").into_bytes()
}

/// One group's semaphore as etcd holds it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupState {
    /// The group's name.
    pub group: String,
    /// Slots as last written into the key.
    pub slots: u32,
    /// Who holds a slot, with the time of the grant.
    pub holders: Vec<Holder>,
    /// The key's `mod_revision` (0: no key yet).
    pub mod_revision: i64,
}

/// What a granted lock request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// A slot was taken now.
    Granted,
    /// The client already held a slot.
    AlreadyHeld,
}

/// What a successful unlock request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// The client's slot was given back.
    Released,
    /// The client held no slot.
    NotHeld,
}

/// Why a lock, an unlock or a read of the semaphores failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Every slot of the group is held by someone else.
    #[error("all {slots} slot(s) of group {group:?} are held ({holders} holder(s))")]
    Full {
        /// The group.
        group: String,
        /// Slots configured.
        slots: u32,
        /// Holders now.
        holders: usize,
    },
    /// Other writers changed the key between every read and swap.
    #[error("group {group:?} changed under {attempts} attempts in a row; try again")]
    Conflict {
        /// The group.
        group: String,
        /// Rounds tried.
        attempts: u32,
    },
    /// etcd has no quorum or cannot be reached: nothing was granted.
    #[error("etcd is unavailable, nothing was changed: {0}")]
    Unavailable(EtcdError),
    /// etcd refused the request or answered something unexpected.
    #[error("etcd: {0}")]
    Etcd(EtcdError),
    /// The key holds something that is not a semaphore.
    #[error("{key} does not hold a semaphore: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it does not parse.
        message: String,
    },
}

impl From<EtcdError> for LockError {
    fn from(e: EtcdError) -> LockError {
        match e {
            // 14 unavailable, 4 deadline exceeded: no quorum in time.
            EtcdError::Unavailable(_) | EtcdError::Refused { code: 4 | 14, .. } => {
                LockError::Unavailable(e)
            }
            e => LockError::Etcd(e),
        }
    }
}

/// The semaphores of every group, in etcd.
#[derive(Debug)]
pub struct Store {
    client: Client,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pause(attempt: u32) {
    // A few milliseconds, growing, random so that racing servers drift apart.
    let ms = fastrand::u64(1..=5 * u64::from(attempt + 1));
    std::thread::sleep(Duration::from_millis(ms));
}

fn decode(kv: &KeyValue) -> Result<Semaphore, LockError> {
    Semaphore::from_json(&kv.value).map_err(|e| LockError::Corrupt {
        key: kv.key_str(),
        message: e.to_string(),
    })
}

impl Store {
    /// The semaphores reached through `client`.
    pub fn new(client: Client) -> Store {
        Store { client }
    }

    /// The etcd client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The group's semaphore and its key's `mod_revision` (0 and an empty
    /// semaphore of `slots` when the key does not exist).
    fn read(&self, group: &str, slots: u32) -> Result<(Semaphore, i64), LockError> {
        match self.client.get(&group_key(group))? {
            None => Ok((Semaphore::empty(slots), 0)),
            Some(kv) => Ok((decode(&kv)?, kv.mod_revision)),
        }
    }

    /// Writes `new` if the key is still at `mod_revision`; whether it was.
    fn swap(&self, group: &str, mod_revision: i64, new: &Semaphore) -> Result<bool, LockError> {
        let key = group_key(group);
        let put = Op::Put {
            key: key.clone(),
            value: new.to_json(),
            lease: 0,
        };
        let outcome = self
            .client
            .txn(&[Compare::ModRevision(key, mod_revision)], &[put], &[])?;
        Ok(outcome.succeeded)
    }

    /// What a lock by `id` would do now, from one linearizable read and
    /// without writing: `Ok(Some(AlreadyHeld))`, `Err(Full)`, or
    /// `Ok(None)` when a slot is free (then [`Store::lock`] takes it, if
    /// nobody was faster).
    pub fn peek_lock(
        &self,
        group: &str,
        id: &str,
        slots: u32,
    ) -> Result<Option<Locked>, LockError> {
        let (current, _) = self.read(group, slots)?;
        match current.lock(id, slots, now()) {
            LockDecision::AlreadyHeld => Ok(Some(Locked::AlreadyHeld)),
            LockDecision::Full { holders, slots } => Err(LockError::Full {
                group: group.to_string(),
                slots,
                holders,
            }),
            LockDecision::Grant(_) => Ok(None),
        }
    }

    /// Whether `id` holds a slot of `group` now (one linearizable read).
    pub fn holds(&self, group: &str, id: &str) -> Result<bool, LockError> {
        let (current, _) = self.read(group, 1)?;
        Ok(current.holds(id))
    }

    /// FleetLock's RecursiveLock: a slot of `group` (configured with
    /// `slots`) for `id`, or success if it holds one already.
    pub fn lock(&self, group: &str, id: &str, slots: u32) -> Result<Locked, LockError> {
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                pause(attempt);
            }
            let (current, rev) = self.read(group, slots)?;
            match current.lock(id, slots, now()) {
                LockDecision::AlreadyHeld => return Ok(Locked::AlreadyHeld),
                LockDecision::Full { holders, slots } => {
                    return Err(LockError::Full {
                        group: group.to_string(),
                        slots,
                        holders,
                    });
                }
                LockDecision::Grant(new) => {
                    if self.swap(group, rev, &new)? {
                        return Ok(Locked::Granted);
                    }
                }
            }
        }
        Err(LockError::Conflict {
            group: group.to_string(),
            attempts: ATTEMPTS,
        })
    }

    /// FleetLock's UnlockIfHeld: gives back `id`'s slot of `group`
    /// (configured with `slots`, which the write records); success too
    /// when it holds none.
    pub fn unlock(&self, group: &str, id: &str, slots: u32) -> Result<Unlocked, LockError> {
        self.remove(group, id, Some(slots))
    }

    /// An operator's release of `id`'s slot in `group`, whatever the
    /// client thinks (a host that died holding it). Keeps the slots the
    /// key records. For `berth fleet unlock GROUP ID`.
    pub fn release(&self, group: &str, id: &str) -> Result<Unlocked, LockError> {
        self.remove(group, id, None)
    }

    fn remove(&self, group: &str, id: &str, slots: Option<u32>) -> Result<Unlocked, LockError> {
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                pause(attempt);
            }
            let Some(kv) = self.client.get(&group_key(group))? else {
                return Ok(Unlocked::NotHeld);
            };
            let current = decode(&kv)?;
            match current.unlock(id, slots.unwrap_or(current.slots)) {
                UnlockDecision::NotHeld => return Ok(Unlocked::NotHeld),
                UnlockDecision::Release(new) => {
                    if self.swap(group, kv.mod_revision, &new)? {
                        return Ok(Unlocked::Released);
                    }
                }
            }
        }
        Err(LockError::Conflict {
            group: group.to_string(),
            attempts: ATTEMPTS,
        })
    }

    /// One group's state (`None` when its key does not exist yet).
    pub fn group(&self, group: &str) -> Result<Option<GroupState>, LockError> {
        match self.client.get(&group_key(group))? {
            None => Ok(None),
            Some(kv) => state(group, &kv).map(Some),
        }
    }

    /// Every group that has a key, by name, read at one revision. For
    /// `berth fleet locks`.
    pub fn groups(&self) -> Result<Vec<GroupState>, LockError> {
        let range = self.client.prefix(KEY_PREFIX.as_bytes())?;
        range.kvs.iter().map(group_state).collect()
    }
}

/// The semaphore a key under [`KEY_PREFIX`] holds, named after its key;
/// for readers of a prefix read, such as the fleet view.
pub fn group_state(kv: &KeyValue) -> Result<GroupState, LockError> {
    let key = kv.key_str();
    let group = key.strip_prefix(KEY_PREFIX).unwrap_or(&key).to_string();
    state(&group, kv)
}

fn state(group: &str, kv: &KeyValue) -> Result<GroupState, LockError> {
    let s = decode(kv)?;
    Ok(GroupState {
        group: group.to_string(),
        slots: s.slots,
        holders: s.holders,
        mod_revision: kv.mod_revision,
    })
}
