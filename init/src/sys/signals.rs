//! Signals for PID 1: everything blocked and read from one signalfd
//! (catatonit), what each signal means, and signal names for `stop_signal`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::Signal;

use crate::sys::ShutdownAction;
use crate::sys::ffi;

/// What berth-init does about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGCHLD: reap.
    Reap,
    /// Shut down, then reboot, halt or power off.
    Shutdown(ShutdownAction),
    /// Anything else.
    Ignore,
}

/// SIGTERM and SIGINT (ctrl-alt-del) reboot, SIGUSR1 halts, SIGUSR2 powers
/// off (busybox init's and systemd's meanings).
pub fn action_for(signal: i32) -> SignalAction {
    match signal {
        libc::SIGCHLD => SignalAction::Reap,
        libc::SIGTERM | libc::SIGINT => SignalAction::Shutdown(ShutdownAction::Reboot),
        libc::SIGUSR1 => SignalAction::Shutdown(ShutdownAction::Halt),
        libc::SIGUSR2 => SignalAction::Shutdown(ShutdownAction::Poweroff),
        _ => SignalAction::Ignore,
    }
}

/// The signalfd of PID 1 (or of the supervisor in `supervise` mode).
#[derive(Debug)]
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks all signals but the kernel's fault signals and opens a
    /// signalfd for the ones berth-init acts on. Call before any thread or
    /// child exists; children get an empty mask back (std does that).
    pub fn new() -> io::Result<Signals> {
        ffi::block_all_signals()?;
        let fd = ffi::signalfd(&[
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGHUP,
            libc::SIGPIPE,
        ])?;
        Ok(Signals { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every pending signal number (coalesced: one SIGCHLD may stand for
    /// many exits, so reaping always loops).
    pub fn drain(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 128]; // sizeof(struct signalfd_siginfo)
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n < 4 {
                break;
            }
            let mut signo = [0u8; 4];
            signo.copy_from_slice(buf.get(..4).unwrap_or(&[0; 4]));
            out.push(u32::from_ne_bytes(signo) as i32);
        }
        out
    }
}

const NAMES: [(&str, Signal); 12] = [
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("KILL", Signal::KILL),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("TERM", Signal::TERM),
    ("CONT", Signal::CONT),
    ("STOP", Signal::STOP),
    ("ALRM", Signal::ALARM),
    ("WINCH", Signal::WINCH),
    ("PWR", Signal::POWER),
];

/// Parses a signal name (`SIGTERM`, `TERM`, `sigterm`) or number (`15`).
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(n) = short.parse::<i32>() {
        return NAMES.iter().find(|(_, s)| s.as_raw() == n).map(|(_, s)| *s);
    }
    NAMES.iter().find(|(n, _)| *n == short).map(|(_, s)| *s)
}

/// The name of a signal number, e.g. `TERM`, for messages.
pub fn signal_name(signal: i32) -> String {
    NAMES
        .iter()
        .find(|(_, s)| s.as_raw() == signal)
        .map(|(n, _)| format!("SIG{n}"))
        .unwrap_or_else(|| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_meanings() {
        assert_eq!(
            action_for(libc::SIGTERM),
            SignalAction::Shutdown(ShutdownAction::Reboot)
        );
        assert_eq!(
            action_for(libc::SIGINT),
            SignalAction::Shutdown(ShutdownAction::Reboot)
        );
        assert_eq!(
            action_for(libc::SIGUSR1),
            SignalAction::Shutdown(ShutdownAction::Halt)
        );
        assert_eq!(
            action_for(libc::SIGUSR2),
            SignalAction::Shutdown(ShutdownAction::Poweroff)
        );
        assert_eq!(action_for(libc::SIGCHLD), SignalAction::Reap);
        assert_eq!(action_for(libc::SIGHUP), SignalAction::Ignore);
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::TERM));
        assert_eq!(parse_signal("int"), Some(Signal::INT));
        assert_eq!(parse_signal("9"), Some(Signal::KILL));
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
    }
}
