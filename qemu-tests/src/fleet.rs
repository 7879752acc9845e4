//! The fleet tests' fixture: Berth's FleetLock server (`berth-fleetlock`,
//! built beside `berth`) started on a free port against a given etcd, and
//! the `berth fleet` views an operator would run, as JSON.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::command::{run_stdout, run_text};
use crate::fixture::berth_bin;
use crate::updates::free_port;
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

/// The port the fleet test images' `fleet-lock-url` names on 10.0.2.100.
pub const LOCK_PORT: u16 = 8090;
/// The port the fleet test images' `[fleet] etcd` names on 10.0.2.100.
pub const ETCD_PORT: u16 = 2379;

/// `berth-fleetlock` next to the `berth` the tests run.
pub fn lock_server_bin() -> PathBuf {
    berth_bin().with_file_name("berth-fleetlock")
}

/// A running lock server; stopped on drop.
pub struct LockServer {
    /// The host port it listens on (127.0.0.1).
    pub port: u16,
    /// Its log (one line per request).
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl LockServer {
    /// Starts a server on 127.0.0.1 with one group, `default`, of `slots`
    /// slots, keeping its state in the etcd at `etcd` (a client URL).
    pub fn start(etcd: &str, slots: u32) -> Result<LockServer> {
        let dir = tempfile::tempdir().map_err(Error::io("creating the lock server directory"))?;
        let port = free_port()?;
        let config = dir.path().join("fleet-lock.toml");
        std::fs::write(
            &config,
            format!(
                "[service]\naddress = \"127.0.0.1\"\nport = {port}\n\n\
                 [etcd3]\nendpoints = [\"{etcd}\"]\n\n\
                 [[lock.groups]]\nname = \"default\"\nslots = {slots}\n"
            ),
        )
        .map_err(Error::io("writing the lock server config"))?;
        let log = dir.path().join("fleet-lock.log");
        let file =
            std::fs::File::create(&log).map_err(Error::io("creating the lock server log"))?;
        let err = file
            .try_clone()
            .map_err(Error::io("cloning a log handle"))?;
        let child = Command::new(lock_server_bin())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(Error::io("starting berth-fleetlock"))?;
        let server = LockServer {
            port,
            log,
            child,
            _dir: dir,
        };
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the lock server to listen",
            || {
                Ok(
                    match std::net::TcpStream::connect(("127.0.0.1", server.port)) {
                        Ok(_) => Check::Done(()),
                        Err(e) => Check::NotYet(e.to_string()),
                    },
                )
            },
        )?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
