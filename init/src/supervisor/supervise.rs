//! `berth-init supervise`: the supervisor as an ordinary, non-root process
//! (a child subreaper), for tests and development. No mounts, no reboot;
//! it exits after stopping its services.

use berth_hostapi::config::HostConfig;

use crate::cli::SuperviseOpts;
use crate::supervisor::{Options, Supervisor, UnitSpec};
use crate::sys::signals::Signals;

/// Runs the supervisor until a shutdown; returns the exit code.
pub fn run(opts: &SuperviseOpts) -> i32 {
    if let Some(tty) = &opts.console {
        if let Err(e) = crate::console::attach_console_at(tty) {
            crate::say!("opening the console {}: {e}", tty.display());
            return 1;
        }
    }
    let config = match HostConfig::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            crate::say!("{}", berth_hostapi::error_chain::one_line(&e));
            return 1;
        }
    };
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            crate::say!("setting up signal handling: {e}");
            return 1;
        }
    };
    // Orphans of the services are re-parented to us, as to PID 1.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        crate::say!("becoming a child subreaper: {e}");
    }
    let specs = config
        .services
        .iter()
        .cloned()
        .map(|service| UnitSpec { service, tty: None })
        .collect();
    let mut supervisor = Supervisor::new(
        specs,
        signals,
        Options {
            log_dir: opts.log_dir.clone(),
            socket: opts.socket.clone(),
            users_root: "/".into(),
            image: config.image.clone(),
            version: config.version.clone(),
            n_services: config.services.len(),
            ready_deadline: None,
            env_dir: None,
        },
        None,
    );
    let action = supervisor.run();
    drop(supervisor);
    crate::say!("all services stopped ({action:?} requested); exiting");
    crate::console::drain();
    0
}
