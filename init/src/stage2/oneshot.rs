//! Running one command to completion before the supervisor starts (the
//! provisioning step): its output goes to the console, and it is killed if
//! it takes longer than its timeout, so it can never hold up the boot.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::sys::ffi::{ChildSetup, configure_child};

/// Why a one-shot command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    /// The command could not be started.
    #[error("starting {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("{program} did not finish within {}s and was killed", .timeout.as_secs())]
    Timeout {
        /// The program.
        program: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `argv` with the console as stdout and stderr (stdin closed) and
/// waits up to `timeout` for it.
pub fn run(argv: &[String], timeout: Duration) -> Result<ExitStatus, OneshotError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(argv.iter().skip(1)).stdin(Stdio::null());
    configure_child(
        &mut cmd,
        ChildSetup {
            new_session: true,
            controlling_tty: false,
            credentials: None,
        },
    );
    let mut child = cmd.spawn().map_err(|source| OneshotError::Spawn {
        program: program.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OneshotError::Timeout { program, timeout });
            }
            Ok(None) => {
                // Waiting with a deadline is progress.
                crate::watchdog::pet();
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(OneshotError::Wait { program, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn returns_the_exit_status() -> Result<(), OneshotError> {
        assert!(run(&sh("exit 0"), Duration::from_secs(10))?.success());
        assert_eq!(run(&sh("exit 3"), Duration::from_secs(10))?.code(), Some(3));
        Ok(())
    }

    #[test]
    fn kills_what_runs_too_long() {
        let started = Instant::now();
        let r = run(&sh("sleep 30"), Duration::from_millis(300));
        assert!(matches!(r, Err(OneshotError::Timeout { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let r = run(
            &["/nonexistent/berthctl".to_string()],
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(OneshotError::Spawn { .. })), "{r:?}");
    }
}
