//! The harness for tests that boot real Berth images under QEMU.
//!
//! - [`Vm`]: boot an image the way `berth run` does (UEFI, virtio disk on a
//!   throw-away overlay, serial console), wait for console output, type
//!   commands, run shell commands with their exit codes, power off. Killed
//!   on drop; on failure the drop prints the QEMU command line and the
//!   whole console between banners.
//! - [`image`]: build a test image from a manifest once per content hash,
//!   shared by every test process (cargo-nextest runs each test in its
//!   own process), under `target/qemu-images/`.
//! - [`registry`], [`oci`], [`containers`]: a local OCI registry, test
//!   container images written by hand, and the container tests' fixture.
//! - [`command`]: outside tools run to completion, with the command line
//!   and its output in the error.
//! - [`wait_until`]: poll a condition with a deadline; the timeout error
//!   names what was waited for, how long, and the last thing seen.
//! - [`require_qemu`] / [`skip_unless_qemu!`]: tests say `skipped: why`
//!   when QEMU or OVMF is missing; `BERTH_REQUIRE_QEMU=1` (CI) makes that
//!   a failure.
//!
//! It has no tests of Berth itself; those live in `tests/`. Timeouts are
//! sized for TCG (no KVM): a UEFI boot to the ready line takes ~14 s.

use std::process::Command;
use std::time::Duration;

pub mod command;
mod console;
pub mod containers;
pub mod fixture;
pub mod fleet;
pub mod http;
pub mod oci;
pub mod qmp;
pub mod registry;
pub mod updates;
pub mod vm;
pub mod wait;

pub use fixture::{image, try_image, workspace_root};
pub use updates::{UpdateServer, free_port};
pub use vm::{POWER_OFF_TIMEOUT, READY_TIMEOUT, SHELL_TIMEOUT, Snapshot, Vm, VmOptions};
pub use wait::{Check, wait_until};

/// Why a harness step failed.
///
/// Its `Debug` is the message with its causes, so that `.unwrap()` in a
/// test prints what went wrong as a reader wants it (console tails on
/// their own lines, not one escaped string).
#[derive(thiserror::Error)]
pub enum Error {
    /// Preparing or starting the VM failed.
    #[error("{0}")]
    Setup(String),
    /// A file or pipe operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Firmware, overlay or accelerator preparation failed.
    #[error(transparent)]
    Run(#[from] berth::run::RunError),
    /// The console did not show what a test waited for.
    #[error("waiting for {pattern:?}: {why} after {after:.1?}; last console lines:\n{tail}")]
    Wait {
        /// The pattern (or event) waited for.
        pattern: String,
        /// How long the wait lasted.
        after: Duration,
        /// "timed out", "QEMU exited (...)".
        why: String,
        /// The end of the console.
        tail: String,
    },
    /// An outside program could not be started.
    #[error("could not run `{cmdline}` (is it installed? scripts/install-deps installs it)")]
    Spawn {
        /// The command line.
        cmdline: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An outside program ran and failed.
    #[error("`{cmdline}` failed ({status}){}", command::what_it_wrote(.stdout, .stderr))]
    Command {
        /// The command line.
        cmdline: String,
        /// Its exit status, as text.
        status: String,
        /// What it wrote to stdout.
        stdout: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A [`wait_until`] gave up.
    #[error("waiting for {what}: timed out after {after:.1?}{}", last_seen(.last))]
    TimedOut {
        /// What was waited for.
        what: String,
        /// How long the wait lasted.
        after: Duration,
        /// What the last look saw (empty: nothing useful).
        last: String,
    },
    /// Building a test image failed.
    #[error("building the test image from {manifest}: {reason}")]
    Fixture {
        /// The manifest.
        manifest: String,
        /// What went wrong (with the build's output).
        reason: String,
    },
}

fn last_seen(last: &str) -> String {
    if last.is_empty() {
        String::new()
    } else {
        format!("; last seen: {last}")
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl Error {
    fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { action, source }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why QEMU tests cannot run on this machine (`qemu-system-x86_64`,
/// `qemu-img` or OVMF missing), or `None` when they can.
pub fn require_qemu() -> Option<String> {
    for program in ["qemu-system-x86_64", "qemu-img"] {
        if command::run(Command::new(program).arg("--version")).is_err() {
            return Some(format!("{program} is not installed (scripts/install-deps)"));
        }
    }
    berth::run::Firmware::locate().err().map(|e| e.to_string())
}

/// Whether skips are failures: `BERTH_REQUIRE_QEMU=1`, as CI sets it.
pub fn skips_are_failures() -> bool {
    std::env::var("BERTH_REQUIRE_QEMU").is_ok_and(|v| v == "1")
}

/// Reports a skipped test: prints `skipped: <why>`, or panics when
/// [`skips_are_failures`].
pub fn skip(why: &str) {
    assert!(
        !skips_are_failures(),
        "BERTH_REQUIRE_QEMU=1, but this test would be skipped: {why}"
    );
    println!("skipped: {why}");
}

/// Returns from the calling test (with the given value, if any) after
/// reporting a skip when [`require_qemu`] gives a reason.
#[macro_export]
macro_rules! skip_unless_qemu {
    () => {
        if let Some(why) = $crate::require_qemu() {
            $crate::skip(&why);
            return;
        }
    };
    ($ret:expr) => {
        if let Some(why) = $crate::require_qemu() {
            $crate::skip(&why);
            return $ret;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_message_with_its_causes() {
        let e = Error::Io {
            action: "writing to the console",
            source: std::io::Error::other("broken pipe"),
        };
        assert_eq!(format!("{e:?}"), "writing to the console: broken pipe");
        let wait = Error::Setup("line one\nline two".into());
        assert_eq!(format!("{wait:?}"), "line one\nline two");
    }
}
