//! The `berthctl` library: everything the `berthctl` command does, callable
//! from tests. It talks to berth-init over its control socket (services,
//! logs, restart, reboot: [`control`]) and to libostree and the ESP
//! (status, upgrade, rollback, the update [`agent`], and the boot-time
//! steps `boot-check` and `provision`), and to the fleet's etcd (the host
//! registry and service discovery: [`fleet`]).
//!
//! It does not parse arguments or choose exit codes for errors: that is
//! the `berthctl` binary's `main.rs`, over [`cli`].

pub mod agent;
pub mod bootcheck;
pub mod cli;
pub mod control;
pub mod firmware;
pub mod fleet;
mod host;
pub mod identity;
pub mod provision;
pub mod rollback;
pub mod status;
pub mod upgrade;
