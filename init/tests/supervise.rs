//! The supervisor, run as `berth-init supervise` with real child processes
//! (sh, sleep, busybox): restart policies, backoff, `after`, readiness,
//! logs, reaping, stop escalation, hooks and the control socket.

mod common;

use std::time::{Duration, Instant};

use berth_hostapi::config::{Readiness, Restart};
use berth_hostapi::control::{Request, Response, ShutdownAction};
use common::{Result, Supervisor, sh};

const T: Duration = Duration::from_secs(15);

#[test]
fn restart_always_backs_off_exponentially_up_to_the_cap() -> Result {
    let dir = tempfile::tempdir()?;
    let starts = dir.path().join("starts");
    let mut svc = sh(
        "crash",
        &format!("cat /proc/uptime >> {}; exit 3", starts.display()),
    );
    svc.backoff_initial_ms = 100;
    svc.backoff_max_ms = 400;
    svc.required = false;
    let sup = Supervisor::start_in(dir, vec![svc])?;
    sup.wait_until("six starts", T, || {
        common::parse_uptimes(&std::fs::read_to_string(&starts).unwrap_or_default()).len() >= 6
    })?;
    let times = common::parse_uptimes(&std::fs::read_to_string(&starts)?);
    let gaps: Vec<u64> = times
        .windows(2)
        .filter_map(|w| w.get(1)?.checked_sub(*w.first()?))
        .collect();
    // Delays 100, 200, 400, 400, 400 ms; /proc/uptime has 10 ms steps.
    for (gap, delay) in gaps.iter().zip([100u64, 200, 400, 400, 400]) {
        assert!(
            *gap + 10 >= delay,
            "gap {gap} ms shorter than backoff {delay} ms: {gaps:?}"
        );
        assert!(
            *gap < delay + 1000,
            "gap {gap} ms far above backoff {delay} ms: {gaps:?}"
        );
    }
    let console = sup.console();
    assert!(console.contains("crash: exited (exit 3)"), "{console}");
    assert!(
        console.contains("crash: restarting in 400 ms (crash loop"),
        "{console}"
    );
    let st = sup.status("crash")?;
    assert!(
        st.restarts >= 5 && st.last_exit.as_deref() == Some("exit 3"),
        "{st:?}"
    );
    Ok(())
}

#[test]
fn on_failure_and_never_policies() -> Result {
    let mut ok_once = sh("ok-once", "exit 0");
    ok_once.restart = Restart::OnFailure;
    let mut fails = sh("fails", "exit 1");
    fails.restart = Restart::OnFailure;
    fails.backoff_initial_ms = 50;
    let mut never = sh("never", "exit 2");
    never.restart = Restart::Never;
    let mut missing = sh("missing", "");
    missing.command = vec!["/nonexistent/program".into()];
    missing.restart = Restart::Never;
    let sup = Supervisor::start(vec![ok_once, fails, never, missing])?;
    let st = sup.wait_for_status("ok-once", T, |s| s.state == "exited")?;
    assert_eq!((st.restarts, st.last_exit.as_deref()), (0, Some("exit 0")));
    let st = sup.wait_for_status("never", T, |s| s.state == "failed")?;
    assert_eq!((st.restarts, st.last_exit.as_deref()), (0, Some("exit 2")));
    sup.wait_for_status("fails", T, |s| s.restarts >= 2)?;
    let st = sup.wait_for_status("missing", T, |s| s.state == "failed")?;
    assert_eq!(st.restarts, 0);
    assert!(
        sup.console()
            .contains("missing: starting /nonexistent/program: No such file or directory")
    );
    // Still down a while later: exited/failed services are not restarted.
    let st = sup.status("ok-once")?;
    assert_eq!((st.state.as_str(), st.restarts), ("exited", 0));
    Ok(())
}

#[test]
fn after_waits_for_readiness_and_ready_line_waits_for_required() -> Result {
    let dir = tempfile::tempdir()?;
    let flag = dir.path().join("a-ready");
    let result = dir.path().join("b-result");
    let mut a = sh(
        "a",
        &format!("sleep 0.7; touch {}; exec sleep 1000", flag.display()),
    );
    a.ready = Readiness::Exec {
        command: vec!["test".into(), "-e".into(), flag.display().to_string()],
    };
    let mut b = sh(
        "b",
        &format!(
            "if test -e {}; then echo ok > {r}; else echo early > {r}; fi; exec sleep 1000",
            flag.display(),
            r = result.display()
        ),
    );
    b.after = vec!["a".into()];
    let mut looping = sh("looping", "exit 1");
    looping.required = false;
    let sup = Supervisor::start_in(dir, vec![b, a, looping])?;
    let early = sup.services()?;
    let b_state = early
        .iter()
        .find(|s| s.name == "b")
        .map(|s| s.state.clone());
    if !sup.path("a-ready").exists() {
        assert_eq!(b_state.as_deref(), Some("waiting"), "{early:?}");
        assert!(!sup.console().contains("berth-init: ready"));
    }
    sup.wait_until("the ready line", T, || {
        sup.console().contains("berth-init: ready")
    })?;
    assert_eq!(std::fs::read_to_string(sup.path("b-result"))?.trim(), "ok");
    let console = sup.console();
    let ready_line = console
        .lines()
        .find(|l| l.starts_with("berth-init: ready"))
        .unwrap_or_default();
    assert!(
        ready_line.starts_with("berth-init: ready image=test version=0.0.1 services=3 boot="),
        "{ready_line}"
    );
    // Printed once, though the crash-looping service keeps going.
    sup.wait_for_status("looping", T, |s| s.restarts >= 2)?;
    assert_eq!(sup.console().matches("berth-init: ready").count(), 1);
    Ok(())
}

#[test]
fn a_crash_looping_required_service_keeps_the_host_from_ready() -> Result {
    // `started`, yet it exits at once: it must never count as ready, or a
    // broken new version would be blessed.
    let crash = sh("crash", "exit 3");
    let steady = sh("steady", "exec sleep 1000");
    let sup = Supervisor::start(vec![crash, steady])?;
    sup.wait_for_status("steady", T, |s| s.state == "ready")?;
    sup.wait_for_status("crash", T, |s| s.restarts >= 4)?;
    let console = sup.console();
    assert!(!console.contains("berth-init: ready"), "{console}");
    assert!(!console.contains("crash: ready"), "{console}");
    assert!(
        console.contains("steady: ready (running for 1s)"),
        "{console}"
    );
    Ok(())
}

#[test]
fn tcp_and_exited_readiness() -> Result {
    let port = common::free_port()?;
    let mut web = sh(
        "web",
        &format!("sleep 0.5; exec busybox nc -ll -p {port} -e /bin/cat"),
    );
    web.ready = Readiness::Tcp { port };
    let mut once = sh("setup", "sleep 0.3; exit 0");
    once.ready = Readiness::Exited;
    once.restart = Restart::Never;
    let sup = Supervisor::start(vec![web, once])?;
    sup.wait_until("the ready line", T, || {
        sup.console().contains("berth-init: ready")
    })?;
    assert_eq!(sup.status("web")?.state, "ready");
    assert_eq!(sup.status("setup")?.state, "exited");
    // The host became ready only after both services did.
    let console = sup.console();
    let pos = |what: &str| console.find(what);
    let ready = pos("berth-init: ready");
    assert!(
        pos(&format!("web: ready (port {port} accepts connections)")) < ready,
        "{console}"
    );
    assert!(pos("setup: exited (exit 0)") < ready, "{console}");
    Ok(())
}

#[test]
fn ready_line_comes_at_once_without_required_services() -> Result {
    let mut svc = sh("optional", "exec sleep 1000");
    svc.required = false;
    svc.ready = Readiness::Exec {
        command: vec!["false".into()],
    };
    let sup = Supervisor::start(vec![svc])?;
    sup.wait_until("the ready line", T, || {
        sup.console().contains("berth-init: ready")
    })?;
    assert_eq!(sup.status("optional")?.state, "running");
    Ok(())
}

#[test]
fn output_is_prefixed_logged_and_rotated() -> Result {
    // About 1.3 MB of output: one rotation at 1 MiB.
    let svc = sh("chatty", "seq 1 200000; echo done; exec sleep 1000");
    let sup = Supervisor::start(vec![svc])?;
    let log = sup.log_dir.join("chatty.log");
    sup.wait_until("the last line in the log", T, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.ends_with("done\n"))
    })?;
    let old = std::fs::read_to_string(sup.log_dir.join("chatty.log.1"))?;
    let current = std::fs::read_to_string(&log)?;
    assert!(old.len() as u64 <= 1 << 20 && current.len() as u64 <= 1 << 20);
    assert!(!sup.log_dir.join("chatty.log.2").exists());
    // The two files hold consecutive lines.
    let last_old: u64 = old.lines().last().unwrap_or_default().parse()?;
    let first_new: u64 = current.lines().next().unwrap_or_default().parse()?;
    assert_eq!(first_new, last_old + 1);
    assert!(sup.console().contains("\n[chatty] 200000\n"));
    Ok(())
}

#[test]
fn orphaned_grandchildren_are_reaped() -> Result {
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("orphan.pid");
    // The subshell starts a sleep and exits: the sleep is orphaned and
    // re-parented to the supervisor (a subreaper).
    let svc = sh(
        "forker",
        &format!(
            "(sleep 1 & echo $! > {}); exec sleep 1000",
            pidfile.display()
        ),
    );
    let sup = Supervisor::start_in(dir, vec![svc])?;
    let mut orphan = 0;
    sup.wait_until("the orphan's pid", T, || {
        orphan = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        orphan > 0 && common::parent_of(orphan) == Some(sup.pid() as i32)
    })?;
    // Once it exits it must disappear, not stay a zombie.
    sup.wait_until("the orphan to be reaped", T, || {
        !common::process_exists(orphan)
    })?;
    Ok(())
}

#[test]
fn stop_timeout_escalates_to_sigkill() -> Result {
    let mut svc = sh(
        "stubborn",
        "trap '' TERM; echo up; while :; do sleep 1; done",
    );
    svc.stop_timeout_ms = 500;
    let sup = Supervisor::start(vec![svc])?;
    let first = sup.wait_for_status("stubborn", T, |s| s.state == "ready")?;
    // The trap is set once it said so.
    sup.wait_until("the trap", T, || sup.console().contains("[stubborn] up"))?;
    let asked = Instant::now();
    assert_eq!(
        sup.request(&Request::Restart {
            name: "stubborn".into()
        })?,
        [Response::Ok]
    );
    let again = sup.wait_for_status("stubborn", T, |s| s.restarts == 1 && s.state == "ready")?;
    assert!(asked.elapsed() >= Duration::from_millis(500));
    assert_eq!(again.last_exit.as_deref(), Some("signal 9"));
    assert_ne!(again.pid, first.pid);
    assert!(
        sup.console()
            .contains("stubborn: did not stop in time; sending SIGKILL")
    );
    if let Some(pid) = first.pid {
        assert!(!common::process_exists(pid));
    }
    Ok(())
}

#[test]
fn dirs_pre_start_and_post_stop_run_around_each_run() -> Result {
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("trace");
    let t = trace.display().to_string();
    let volume = dir.path().join("volumes/web");
    let mut svc = sh(
        "hooked",
        &format!(
            "test -d {} && echo main >> {t}; sleep 0.2; exit 1",
            volume.display()
        ),
    );
    svc.pre_start = vec![vec!["sh".into(), "-c".into(), format!("echo pre >> {t}")]];
    svc.post_stop = vec![vec!["sh".into(), "-c".into(), format!("echo post >> {t}")]];
    svc.restart = Restart::OnFailure;
    svc.dirs = vec![volume.display().to_string()];
    let mut bad_pre = sh("bad-pre", "echo never-runs");
    bad_pre.pre_start = vec![vec!["false".into()]];
    bad_pre.restart = Restart::Never;
    bad_pre.required = false;
    let sup = Supervisor::start_in(dir, vec![svc, bad_pre])?;
    sup.wait_until("two runs", T, || {
        std::fs::read_to_string(&trace).is_ok_and(|t| t.lines().count() >= 6)
    })?;
    let text = std::fs::read_to_string(&trace)?;
    let lines: Vec<&str> = text.lines().take(6).collect();
    assert_eq!(lines, ["pre", "main", "post", "pre", "main", "post"]);
    assert!(
        sup.path("volumes/web").is_dir(),
        "dirs are made before the start"
    );
    sup.wait_for_status("bad-pre", T, |s| s.state == "failed")?;
    assert!(!sup.console().contains("[bad-pre] never-runs"));
    assert!(
        sup.console()
            .contains("bad-pre: pre-start command 1 failed (exit 1)")
    );
    Ok(())
}

#[test]
fn control_socket_services_restart_logs_and_errors() -> Result {
    let svc = sh(
        "talker",
        "echo hello; echo world; while read x; do :; done; exec sleep 1000",
    );
    let ticker = sh(
        "ticker",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    );
    let sup = Supervisor::start(vec![svc, ticker])?;
    sup.wait_until("talker's log", T, || {
        std::fs::read_to_string(sup.log_dir.join("talker.log")).is_ok_and(|t| t.contains("world"))
    })?;
    let services = sup.services()?;
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["talker", "ticker"]);
    assert!(
        services
            .iter()
            .all(|s| s.kind == "process" && s.pid.is_some())
    );

    let logs = sup.request(&Request::Logs {
        name: "talker".into(),
        lines: 1,
        follow: false,
    })?;
    assert_eq!(
        logs,
        [Response::LogLine {
            line: "world".into()
        }]
    );

    // Follow: the tail, then new lines as they come.
    let followed = sup.request_n(
        &Request::Logs {
            name: "ticker".into(),
            lines: 1,
            follow: true,
        },
        4,
    )?;
    let lines: Vec<String> = followed
        .iter()
        .filter_map(|r| match r {
            Response::LogLine { line } => Some(line.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 4, "{followed:?}");
    let numbers: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w.get(1) > w.first()),
        "{lines:?}"
    );

    let before = sup.status("talker")?;
    assert_eq!(
        sup.request(&Request::Restart {
            name: "talker".into()
        })?,
        [Response::Ok]
    );
    let after = sup.wait_for_status("talker", T, |s| {
        s.restarts == 1 && s.pid.is_some() && s.pid != before.pid
    })?;
    // `started`: "running" at first, "ready" once it stayed up a moment.
    assert!(
        ["running", "ready"].contains(&after.state.as_str()),
        "{after:?}"
    );
    sup.wait_for_status("talker", T, |s| s.state == "ready" && s.pid == after.pid)?;

    for bad in [
        Request::Restart {
            name: "nope".into(),
        },
        Request::Logs {
            name: "nope".into(),
            lines: 5,
            follow: false,
        },
    ] {
        let answer = sup.request(&bad)?;
        assert!(
            matches!(answer.as_slice(), [Response::Error { message }] if message.contains("nope")),
            "{answer:?}"
        );
    }
    // Garbage gets an error line too.
    let mut stream = std::os::unix::net::UnixStream::connect(&sup.socket)?;
    std::io::Write::write_all(&mut stream, b"{\"op\":\"bogus\"}\n")?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text)?;
    assert!(text.starts_with("{\"type\":\"error\""), "{text}");
    Ok(())
}

#[test]
fn shutdown_stops_services_in_reverse_order_and_exits() -> Result {
    let first = sh("first", "exec sleep 1000");
    let mut second = sh("second", "exec sleep 1000");
    second.after = vec!["first".into()];
    let mut third = sh("third", "trap 'exit 0' TERM; while :; do sleep 0.1; done");
    third.after = vec!["second".into()];
    let mut sup = Supervisor::start(vec![third, first, second])?;
    sup.wait_until("the ready line", T, || {
        sup.console().contains("berth-init: ready")
    })?;
    let pids: Vec<i32> = sup.services()?.iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 3);
    let asked = Instant::now();
    assert_eq!(
        sup.request(&Request::Shutdown {
            action: ShutdownAction::Poweroff
        })?,
        [Response::Ok]
    );
    let status = sup.wait_exit(T)?;
    assert!(status.success(), "{status:?}");
    // Each stopped on its stop signal, well before its 3 s stop timeout.
    assert!(asked.elapsed() < Duration::from_millis(2500));
    let console = sup.console();
    assert!(console.contains("third: stopped (exit 0)"), "{console}");
    assert!(console.contains("second: stopped (signal 15)"), "{console}");
    assert!(console.contains("first: stopped (signal 15)"), "{console}");
    let pos = |what: &str| console.find(what);
    let (a, b, c) = (
        pos("third: stopping"),
        pos("second: stopping"),
        pos("first: stopping"),
    );
    assert!(a.is_some() && a < b && b < c, "{console}");
    assert!(pids.iter().all(|&p| !common::process_exists(p)));
    assert!(!sup.socket.exists());
    Ok(())
}

#[test]
fn sigterm_stops_everything_and_exits_zero() -> Result {
    let mut sup = Supervisor::start(vec![sh("sleeper", "exec sleep 1000")])?;
    let st = sup.wait_for_status("sleeper", T, |s| s.pid.is_some())?;
    let status = sup.terminate()?;
    assert!(status.success());
    assert!(sup.console().contains("received SIGTERM"));
    assert!(sup.console().contains("sleeper: stopped (signal 15)"));
    if let Some(pid) = st.pid {
        assert!(!common::process_exists(pid));
    }
    Ok(())
}

#[test]
fn absurd_numbers_in_the_configuration_do_not_crash_it() -> Result {
    let mut slow = sh("slow-backoff", "exit 1");
    slow.backoff_initial_ms = u64::MAX;
    slow.backoff_max_ms = u64::MAX;
    slow.required = false;
    let mut patient = sh("patient", "exec sleep 1000");
    patient.stop_timeout_ms = u64::MAX;
    let mut sup = Supervisor::start(vec![slow, patient])?;
    sup.wait_for_status("slow-backoff", T, |s| s.state == "backoff")?;
    // A restart request skips the (capped, huge) delay.
    assert_eq!(
        sup.request(&Request::Restart {
            name: "slow-backoff".into()
        })?,
        [Response::Ok]
    );
    sup.wait_for_status("slow-backoff", T, |s| s.restarts == 1)?;
    let status = sup.terminate()?;
    assert!(status.success(), "{}", sup.console());
    assert!(sup.console().contains("patient: stopped (signal 15)"));
    Ok(())
}
