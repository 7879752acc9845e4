//! The supervisor with a console that never drains (a pseudo-terminal
//! whose master is never read, as a serial line flow-controlled off): a
//! service printing as fast as it can must not keep it from reaping,
//! restarting, answering the control socket or shutting down.

mod common;

use std::time::{Duration, Instant};

use common::{Result, Supervisor, sh};

const T: Duration = Duration::from_secs(15);

#[test]
fn a_console_that_never_drains_does_not_stall_the_supervisor() -> Result {
    // The master stays open and unread for the whole test.
    let (_master, tty) = common::pty()?;
    let mut chatty = sh("chatty", "exec yes 'a chatty service line'");
    chatty.required = false;
    let mut flapper = sh("flapper", "exit 1");
    flapper.required = false;
    let steady = sh("steady", "exec sleep 1000");
    let mut sup = Supervisor::start_with_console(vec![chatty, flapper, steady], &tty)?;

    // More than a MiB of output: far past what the terminal and the
    // console queue hold, so the console has been full for a while.
    let rotated = sup.log_dir.join("chatty.log.1");
    sup.wait_until("chatty's log to pass 1 MiB", T, || rotated.exists())?;
    let before = sup.status("flapper")?.restarts;

    // The control socket answers promptly, again and again.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        let services = sup.services()?;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(services.len(), 3, "{services:?}");
    }
    assert!(
        slowest < Duration::from_secs(2),
        "`services` took up to {slowest:?}"
    );
    // Exits are still reaped and restarted; readiness still advances.
    sup.wait_for_status("flapper", T, |s| s.restarts >= before + 3)?;
    sup.wait_for_status("steady", T, |s| s.state == "ready")?;
    // The log keeps what the console could not take.
    let log = std::fs::read_to_string(sup.log_dir.join("chatty.log"))?;
    assert!(log.lines().any(|l| l == "a chatty service line"));

    // And a shutdown completes.
    let status = sup.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
