//! What PID 1 does when boot fails: say what failed and why, then either an
//! emergency shell on the console (debug boots with a /bin/sh) or a reboot
//! after a delay, so that boot counting can fall back. Never an exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::supervisor::spawn::{self, Output, SpawnSpec};
use crate::sys::{ShutdownAction, Sys};

/// How long the failure message stays on screen before the reboot.
pub(crate) const REBOOT_DELAY: Duration = Duration::from_secs(10);
/// The emergency shell.
pub(crate) const SHELL: &str = "/bin/sh";

/// The terminal behind /dev/console (the last entry of
/// /sys/class/tty/console/active), so a shell there gets job control;
/// /dev/console when it cannot be told.
pub(crate) fn console_tty() -> PathBuf {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    match active.split_whitespace().last() {
        Some(name) if Path::new("/dev").join(name).exists() => Path::new("/dev").join(name),
        _ => PathBuf::from(crate::console::CONSOLE_PATH),
    }
}

/// Runs an interactive shell on the console and waits for it to exit.
fn emergency_shell() {
    let argv = [SHELL.to_string()];
    let env = [("PS1".to_string(), "(berth emergency) # ".to_string())]
        .into_iter()
        .collect();
    let tty = console_tty();
    let spec = SpawnSpec {
        argv: &argv,
        env: &env,
        working_dir: None,
        identity: None,
        output: Output::Tty(&tty),
    };
    match spawn::spawn(&spec) {
        Ok(s) => {
            // Reap everything until the shell itself is gone.
            while let Ok(Some((pid, _))) =
                rustix::process::wait(rustix::process::WaitOptions::empty())
            {
                if pid.as_raw_nonzero().get() == s.pid {
                    break;
                }
            }
        }
        Err(e) => crate::say!("starting {SHELL} on {}: {e}", tty.display()),
    }
}

/// Reports a failed boot and never returns: emergency shell when `debug`
/// and a shell exists, then a reboot after [`REBOOT_DELAY`].
pub(crate) fn fail(sys: &dyn Sys, what: &str, debug: bool) -> ! {
    crate::say!("boot failed: {what}");
    if debug {
        if Path::new(SHELL).exists() {
            crate::say!("starting an emergency shell on the console; exit it to reboot");
            emergency_shell();
        } else {
            crate::say!("debug is on but this image has no {SHELL}");
        }
    }
    crate::say!("rebooting in {} s", REBOOT_DELAY.as_secs());
    std::thread::sleep(REBOOT_DELAY);
    crate::shutdown::shutdown(sys, ShutdownAction::Reboot)
}

/// The panic hook of PID 1: a last resort, since PID 1 must not panic.
/// Prints the panic and reboots after `REBOOT_DELAY`; unwinding out of
/// PID 1 would be a kernel panic.
pub fn install_panic_hook(pid1: bool) {
    std::panic::set_hook(Box::new(move |info| {
        crate::say!("internal error: {info}");
        if pid1 {
            crate::say!("rebooting in {} s", REBOOT_DELAY.as_secs());
            std::thread::sleep(REBOOT_DELAY);
            crate::console::drain();
            rustix::fs::sync();
            let _ = crate::sys::ffi::reboot_in_child(rustix::system::RebootCommand::Restart);
            crate::shutdown::sleep_forever();
        }
    }));
}
