//! The fleet tests' fixture: the ports the fleet images name, and the
//! `berth fleet` views an operator would run, as JSON or text.

use std::process::Command;

use crate::command::{run_stdout, run_text};
use crate::fixture::berth_bin;
use crate::{Error, Result};

/// The port the fleet test images' `fleet-lock-url` names on 10.0.2.100,
/// and the one the etcd host's lock server listens on
/// (manifests/etcd/fleet-lock.toml).
pub const LOCK_PORT: u16 = 8090;
/// The port the fleet test images' `[fleet] etcd` names on 10.0.2.100.
pub const ETCD_PORT: u16 = 2379;

/// `berth fleet <args…> --etcd <etcd> --json`, parsed.
pub fn fleet_json(etcd: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = run_stdout(
        Command::new(berth_bin())
            .arg("fleet")
            .args(args)
            .args(["--etcd", etcd, "--json"]),
    )?;
    serde_json::from_str(&out)
        .map_err(|e| Error::Setup(format!("berth fleet {args:?}: {e} in:\n{out}")))
}

/// `berth fleet <args…> --etcd <etcd>` as text.
pub fn fleet_text(etcd: &str, args: &[&str]) -> Result<String> {
    run_text(
        Command::new(berth_bin())
            .arg("fleet")
            .args(args)
            .args(["--etcd", etcd]),
    )
}
