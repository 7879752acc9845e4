//! One group's reboot semaphore as a value, and what a lock or an unlock
//! does to it. No I/O here: [`super::store`] reads the value from etcd,
//! asks these functions what to write, and writes it by compare-and-swap.

use serde::{Deserialize, Serialize};

/// A group's semaphore, as stored (JSON) in its etcd key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// How many hosts of the group may hold a slot at once, as the last
    /// writer's configuration said (rewritten at every write, so a changed
    /// configuration shows here at the next lock or unlock).
    pub slots: u32,
    /// Who holds a slot, sorted by id.
    #[serde(default)]
    pub holders: Vec<Holder>,
}

/// A client holding a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The client's FleetLock id.
    pub id: String,
    /// When the slot was granted, in seconds since the Unix epoch.
    pub since: u64,
}

/// What a lock request does to a semaphore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockDecision {
    /// The client already holds a slot: success, nothing to write.
    AlreadyHeld,
    /// A free slot: write this semaphore (the client added, `slots`
    /// rewritten from the configuration).
    Grant(Semaphore),
    /// Every slot is taken: refuse, nothing to write.
    Full {
        /// Holders now.
        holders: usize,
        /// Slots the configuration allows.
        slots: u32,
    },
}

/// What an unlock request does to a semaphore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockDecision {
    /// The client holds no slot: success, nothing to write.
    NotHeld,
    /// Write this semaphore (the client removed, `slots` rewritten).
    Release(Semaphore),
}

impl Semaphore {
    /// A semaphore with `slots` slots and no holder (a group whose key does
    /// not exist yet).
    pub fn empty(slots: u32) -> Semaphore {
        Semaphore {
            slots,
            holders: Vec::new(),
        }
    }

    /// Whether `id` holds a slot.
    pub fn holds(&self, id: &str) -> bool {
        self.holders.iter().any(|h| h.id == id)
    }

    /// A lock by `id` with `slots` configured, at `now` (Unix seconds).
    ///
    /// Recursive: a holder asking again succeeds without a write. A new
    /// holder gets a slot only while there are fewer holders than `slots`;
    /// when the configuration shrank below the current holders, they keep
    /// their slots and nobody new gets one until enough have left.
    pub fn lock(&self, id: &str, slots: u32, now: u64) -> LockDecision {
        if self.holds(id) {
            return LockDecision::AlreadyHeld;
        }
        if self.holders.len() >= slots as usize {
            return LockDecision::Full {
                holders: self.holders.len(),
                slots,
            };
        }
        let mut holders = self.holders.clone();
        holders.push(Holder {
            id: id.to_string(),
            since: now,
        });
        holders.sort_by(|a, b| a.id.cmp(&b.id));
        LockDecision::Grant(Semaphore { slots, holders })
    }

    /// An unlock by `id` with `slots` configured: only the holder itself is
    /// removed; unlocking what one does not hold succeeds without a write.
    pub fn unlock(&self, id: &str, slots: u32) -> UnlockDecision {
        if !self.holds(id) {
            return UnlockDecision::NotHeld;
        }
        UnlockDecision::Release(Semaphore {
            slots,
            holders: self
                .holders
                .iter()
                .filter(|h| h.id != id)
                .cloned()
                .collect(),
        })
    }

    /// The stored form (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn from_json(bytes: &[u8]) -> Result<Semaphore, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Semaphore) -> Vec<&str> {
        s.holders.iter().map(|h| h.id.as_str()).collect()
    }

    fn granted(d: LockDecision) -> Semaphore {
        match d {
            LockDecision::Grant(s) => s,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn a_lock_takes_a_free_slot_and_holders_stay_sorted() {
        let s = Semaphore::empty(3);
        let s = granted(s.lock("b", 3, 10));
        let s = granted(s.lock("a", 3, 11));
        assert_eq!(ids(&s), ["a", "b"]);
        assert_eq!(
            s.holders[0],
            Holder {
                id: "a".into(),
                since: 11
            }
        );
        assert_eq!(s.slots, 3);
    }

    #[test]
    fn a_holder_locking_again_succeeds_without_a_write() {
        let s = granted(Semaphore::empty(1).lock("a", 1, 10));
        assert_eq!(s.lock("a", 1, 99), LockDecision::AlreadyHeld);
        // Even when full, and even after the slots shrank to nothing new.
        assert_eq!(s.lock("a", 0, 99), LockDecision::AlreadyHeld);
    }

    #[test]
    fn a_full_semaphore_refuses_a_new_client() {
        let s = granted(Semaphore::empty(1).lock("a", 1, 10));
        assert_eq!(
            s.lock("b", 1, 11),
            LockDecision::Full {
                holders: 1,
                slots: 1
            }
        );
        // Ids are case-sensitive.
        assert!(matches!(s.lock("A", 1, 11), LockDecision::Full { .. }));
    }

    #[test]
    fn only_the_holder_is_removed_and_not_holding_is_fine() {
        let s = granted(Semaphore::empty(2).lock("a", 2, 1));
        let s = granted(s.lock("b", 2, 2));
        assert_eq!(s.unlock("c", 2), UnlockDecision::NotHeld);
        let UnlockDecision::Release(after) = s.unlock("a", 2) else {
            panic!("a holds a slot")
        };
        assert_eq!(ids(&after), ["b"]);
        assert_eq!(after.unlock("a", 2), UnlockDecision::NotHeld);
    }

    #[test]
    fn slots_from_the_configuration_are_rewritten_at_every_write() {
        // The key says 1 (an older configuration); the configuration says 3.
        let stale = granted(Semaphore::empty(1).lock("a", 1, 1));
        let s = granted(stale.lock("b", 3, 2));
        assert_eq!(s.slots, 3);
        let UnlockDecision::Release(s) = s.unlock("a", 5) else {
            panic!("a holds a slot")
        };
        assert_eq!(s.slots, 5);
    }

    #[test]
    fn shrunk_slots_keep_holders_but_admit_nobody_until_below() {
        let mut s = Semaphore::empty(3);
        for id in ["a", "b", "c"] {
            s = granted(s.lock(id, 3, 1));
        }
        // Now configured with 1 slot: three holders keep theirs.
        assert_eq!(ids(&s), ["a", "b", "c"]);
        assert!(matches!(s.lock("d", 1, 2), LockDecision::Full { .. }));
        let UnlockDecision::Release(s) = s.unlock("a", 1) else {
            panic!()
        };
        assert!(matches!(s.lock("d", 1, 2), LockDecision::Full { .. }));
        let UnlockDecision::Release(s) = s.unlock("b", 1) else {
            panic!()
        };
        // One holder, one slot: still full.
        assert!(matches!(s.lock("d", 1, 2), LockDecision::Full { .. }));
        let UnlockDecision::Release(s) = s.unlock("c", 1) else {
            panic!()
        };
        assert_eq!(ids(&granted(s.lock("d", 1, 3))), ["d"]);
    }

    #[test]
    fn the_stored_form_round_trips_and_tolerates_missing_holders() {
        let s = granted(Semaphore::empty(2).lock("a", 2, 7));
        let json = s.to_json();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"slots": 2, "holders": [{"id": "a", "since": 7}]})
        );
        assert_eq!(Semaphore::from_json(&json).unwrap(), s);
        assert_eq!(
            Semaphore::from_json(br#"{"slots": 4}"#).unwrap(),
            Semaphore::empty(4)
        );
        assert!(Semaphore::from_json(b"not json").is_err());
    }
}
