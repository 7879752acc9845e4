//! The lock service without HTTP: a FleetLock request in, an outcome or a
//! [`ApiError`] out, with the counters the metrics show.
//!
//! A request that needs no write (a full group, a recursive lock, an
//! unlock of nothing) is answered from one linearizable read. The writes
//! of one group are taken one at a time inside one server (a gate per
//! group), so a busy server does not race itself on the group's key;
//! compare-and-swap still decides between servers. A write waits for its
//! turn at most [`GATE_WAIT`], then is answered `conflict`.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{ClientParams, valid_group};

use super::config::Config;
use super::store::{GroupState, LockError, Locked, Store, Unlocked};

/// How long a request waits for an earlier one on the same group.
pub const GATE_WAIT: Duration = Duration::from_secs(10);

/// A refused request: HTTP status, FleetLock error kind, message.
///
/// The kinds, a fixed set: `bad_request` (400, or 413 for a body over the
/// limit), `invalid_client_identity` (400), `unknown_group` (400),
/// `semaphore_full` (409), `conflict` (409), `etcd_unavailable` (503),
/// `internal` (500), `not_found` (404), `method_not_allowed` (405).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {value}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The kind (bounded cardinality: clients count errors by it).
    pub kind: &'static str,
    /// A message for humans.
    pub value: String,
}

impl ApiError {
    /// An error of `status` and `kind`.
    pub fn new(status: u16, kind: &'static str, value: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            value: value.into(),
        }
    }
}

impl From<LockError> for ApiError {
    fn from(e: LockError) -> ApiError {
        let (status, kind) = match &e {
            LockError::Full { .. } => (409, "semaphore_full"),
            LockError::Conflict { .. } => (409, "conflict"),
            LockError::Unavailable(_) => (503, "etcd_unavailable"),
            LockError::Etcd(_) | LockError::Corrupt { .. } => (500, "internal"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

/// The two FleetLock operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /v1/pre-reboot`: RecursiveLock.
    PreReboot,
    /// `POST /v1/steady-state`: UnlockIfHeld.
    SteadyState,
}

impl Endpoint {
    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::PreReboot => "pre-reboot",
            Endpoint::SteadyState => "steady-state",
        }
    }
}

/// What a successful request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A slot was taken.
    Granted,
    /// The client held a slot already.
    AlreadyHeld,
    /// The client's slot was given back.
    Released,
    /// The client held no slot.
    NotHeld,
}

impl Outcome {
    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::AlreadyHeld => "already_held",
            Outcome::Released => "released",
            Outcome::NotHeld => "not_held",
        }
    }
}

/// One group's turn-taking inside this server.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    free: Condvar,
}

struct Turn<'a>(&'a Gate);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.0.busy.lock() {
            *busy = false;
        }
        self.0.free.notify_one();
    }
}

impl Gate {
    fn enter(&self, limit: Duration) -> Option<Turn<'_>> {
        let deadline = Instant::now() + limit;
        let mut busy = self.busy.lock().ok()?;
        while *busy {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self.free.wait_timeout(busy, left).ok()?.0;
        }
        *busy = true;
        Some(Turn(self))
    }
}

/// The lock service: configuration, the semaphores in etcd, counters.
pub struct Service {
    config: Config,
    store: Store,
    gates: BTreeMap<String, Gate>,
    counts: Mutex<BTreeMap<(Endpoint, &'static str), u64>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("groups", &self.config.groups)
            .finish_non_exhaustive()
    }
}

/// One group as the read-only views show it: configuration and etcd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupView {
    /// The group's name.
    pub group: String,
    /// Slots in this server's configuration (`None`: a key in etcd for a
    /// group this server does not serve).
    pub configured_slots: Option<u32>,
    /// Slots as the key records them (the configured ones if no key yet).
    pub slots: u32,
    /// Who holds a slot.
    pub holders: Vec<super::semaphore::Holder>,
    /// The key's `mod_revision` (0: no key yet).
    pub mod_revision: i64,
}

impl Service {
    /// The service for `config`, using `store`.
    pub fn new(config: Config, store: Store) -> Service {
        let gates = config
            .groups
            .iter()
            .map(|g| (g.name.clone(), Gate::default()))
            .collect();
        Service {
            config,
            store,
            gates,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The semaphores.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks `params` and runs `endpoint` for them; counts the outcome.
    pub fn handle(&self, endpoint: Endpoint, params: &ClientParams) -> Result<Outcome, ApiError> {
        let result = self.run(endpoint, params);
        self.count(
            endpoint,
            match &result {
                Ok(o) => o.name(),
                Err(e) => e.kind,
            },
        );
        result
    }

    /// Counts a request that did not get as far as [`Service::handle`]
    /// (bad header or body).
    pub fn count(&self, endpoint: Endpoint, outcome: &'static str) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((endpoint, outcome)).or_default() += 1;
        }
    }

    /// The request counters: (endpoint, outcome) → count.
    pub fn counts(&self) -> BTreeMap<(Endpoint, &'static str), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn run(&self, endpoint: Endpoint, params: &ClientParams) -> Result<Outcome, ApiError> {
        if params.id.is_empty() {
            return Err(ApiError::new(
                400,
                "invalid_client_identity",
                "client_params.id is empty",
            ));
        }
        if !valid_group(&params.group) {
            return Err(ApiError::new(
                400,
                "invalid_client_identity",
                format!(
                    "client_params.group {:?} does not match ^[a-zA-Z0-9.-]+$",
                    params.group
                ),
            ));
        }
        let (Some(slots), Some(gate)) = (
            self.config.slots(&params.group),
            self.gates.get(&params.group),
        ) else {
            return Err(ApiError::new(
                400,
                "unknown_group",
                format!("group {:?} is not configured on this server", params.group),
            ));
        };
        // Answers that need no write come from a read, outside the gate:
        // a full group's pollers do not queue behind the writers.
        match endpoint {
            Endpoint::PreReboot => {
                if self
                    .store
                    .peek_lock(&params.group, &params.id, slots)?
                    .is_some()
                {
                    return Ok(Outcome::AlreadyHeld);
                }
            }
            Endpoint::SteadyState => {
                if !self.store.holds(&params.group, &params.id)? {
                    return Ok(Outcome::NotHeld);
                }
            }
        }
        let Some(_turn) = gate.enter(GATE_WAIT) else {
            return Err(ApiError::new(
                409,
                "conflict",
                format!(
                    "group {:?} stayed busy on this server for {GATE_WAIT:?}; try again",
                    params.group
                ),
            ));
        };
        match endpoint {
            Endpoint::PreReboot => match self.store.lock(&params.group, &params.id, slots)? {
                Locked::Granted => Ok(Outcome::Granted),
                Locked::AlreadyHeld => Ok(Outcome::AlreadyHeld),
            },
            Endpoint::SteadyState => match self.store.unlock(&params.group, &params.id, slots)? {
                Unlocked::Released => Ok(Outcome::Released),
                Unlocked::NotHeld => Ok(Outcome::NotHeld),
            },
        }
    }

    /// Every configured group, and every group with a key in etcd, read
    /// now.
    pub fn view(&self) -> Result<Vec<GroupView>, ApiError> {
        let states = self.store.groups()?;
        let mut views: BTreeMap<String, GroupView> = states
            .into_iter()
            .map(|s: GroupState| {
                let view = GroupView {
                    configured_slots: self.config.slots(&s.group),
                    group: s.group.clone(),
                    slots: s.slots,
                    holders: s.holders,
                    mod_revision: s.mod_revision,
                };
                (s.group, view)
            })
            .collect();
        for g in &self.config.groups {
            views.entry(g.name.clone()).or_insert_with(|| GroupView {
                group: g.name.clone(),
                configured_slots: Some(g.slots),
                slots: g.slots,
                holders: Vec::new(),
                mod_revision: 0,
            });
        }
        Ok(views.into_values().collect())
    }
}
