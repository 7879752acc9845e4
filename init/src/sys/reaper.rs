//! Reaping: collect every exited child with `waitpid(-1, WNOHANG)` in a loop
//! (SIGCHLD coalesces, so one signal can mean many exits), and describe how
//! each ended.

use std::fmt;

use rustix::process::WaitOptions;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Exit {
    /// exit 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The shell convention: the code, or 128 + signal.
    #[cfg(test)]
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Reaps every child that has ended, without blocking.
pub fn reap_all() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        let exit = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            // Stopped/continued are not reported without WUNTRACED.
            (None, None) => continue,
        };
        out.push((pid.as_raw_nonzero().get(), exit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_texts() {
        assert_eq!(Exit::Code(1).to_string(), "exit 1");
        assert_eq!(Exit::Signal(9).to_string(), "signal 9");
        assert_eq!(Exit::Signal(15).code(), 143);
        assert!(Exit::Code(0).success());
        assert!(!Exit::Signal(0).success());
    }
}
