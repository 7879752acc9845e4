//! Owning a QEMU process: waiting with a deadline, stopping it politely
//! (SIGTERM lets QEMU restore the terminal), and killing it if its owner
//! goes away first.

use std::io;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How often a deadline wait looks at the child.
const POLL: Duration = Duration::from_millis(20);

/// How long QEMU gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process that is killed when this value is dropped, so a
/// failing caller never leaves a VM running.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    reaped: Option<ExitStatus>,
}

impl KillOnDrop {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop {
            child,
            reaped: None,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait()?;
        }
        Ok(self.reaped)
    }

    /// Waits until the process exits or `deadline` passes (`None`).
    pub fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns the exit
    /// status.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // The process may exit between the check and the signal: ESRCH
        // is then harmless, the wait below reaps it.
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        if let Some(status) = self.wait_until(Instant::now() + grace)? {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.reaped = Some(status);
        Ok(status)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn deadline_wait_returns_none_then_stop_terminates() {
        let mut p = KillOnDrop::new(Command::new("sleep").arg("30").spawn().unwrap());
        let started = Instant::now();
        assert_eq!(
            p.wait_until(Instant::now() + Duration::from_millis(100))
                .unwrap(),
            None
        );
        let status = p.stop(STOP_GRACE).unwrap();
        assert!(!status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn drop_kills_the_process() {
        let p = KillOnDrop::new(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = p.id();
        drop(p);
        // Reaped by the drop: the pid no longer names our child.
        let alive = std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"));
        assert!(!alive);
    }

    #[test]
    fn exit_status_is_seen() {
        let mut p = KillOnDrop::new(Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap());
        let status = p
            .wait_until(Instant::now() + Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(7));
    }
}
