//! berth-init as PID 1 of a booted image: services of every kind start in
//! `after` order with their readiness checks, exiting and killed services
//! come back, a crash loop does not keep the host from ready, `berthctl`
//! reports, restarts and follows logs, `berthctl poweroff` and the ACPI
//! power button leave a clean file system, and PID 1 stays small (the
//! footprint in docs/init.md).
//!
//! The images: qemu-tests/manifests/services.toml (eight services, DHCP,
//! sysctls, hostname), debug.toml (the minimal image with a console shell)
//! and ten-services.toml.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_hostapi::control::ServiceStatus;
use berth_qemu_tests::{
    Check, POWER_OFF_TIMEOUT, READY_TIMEOUT, Vm, VmOptions, image, skip_unless_qemu, wait_until,
};

const SERVICES: &str = "qemu-tests/manifests/services.toml";
/// One shell command in the guest (TCG, a busy machine).
const SHELL: Duration = berth_qemu_tests::SHELL_TIMEOUT;
/// How long a service may take to reach a state: restart delays back off
/// up to 4 s in services.toml, and TCG is slow.
const SETTLE: Duration = Duration::from_secs(120);
/// PID 1's resident set after boot must stay below this (docs/init.md).
const RSS_LIMIT_KIB: u64 = 2048;

/// Console lines that mean something went badly wrong in the guest.
const BADNESS: [&str; 6] = [
    "Kernel panic",
    "Oops:",
    "BUG:",
    "WARNING: CPU:",
    "Attempted to kill init",
    "berth-init: panic",
];

fn assert_no_badness(console: &str) {
    for bad in BADNESS {
        assert!(!console.contains(bad), "the console shows {bad:?}");
    }
}

fn boot(manifest: &str, options: VmOptions) -> (Vm, String) {
    let image = image(Path::new(manifest));
    let mut vm = Vm::boot(&image, options).unwrap();
    let ready = vm.wait_for_ready(READY_TIMEOUT).unwrap();
    (vm, ready)
}

/// `berthctl services --json`, on one line so that console noise cannot
/// split it (a line berth-init prints may still follow it on that line).
/// A berth-init line can still land in the middle of it on the shared
/// serial console; then it asks again.
fn services(vm: &mut Vm) -> Vec<ServiceStatus> {
    let mut last = String::new();
    for _ in 0..5 {
        let out = vm.sh("berthctl services --json | tr -d '\\n'; echo");
        let line = out
            .lines()
            .find(|l| l.starts_with("[  {") || l == &"[]")
            .unwrap_or_else(|| panic!("no JSON in {out:?}"));
        let mut values = serde_json::Deserializer::from_str(line).into_iter();
        match values.next() {
            Some(Ok(services)) => return services,
            other => last = format!("{other:?}: {line}"),
        }
    }
    panic!("no clean JSON in five tries; the last: {last}")
}

/// Polls `berthctl services` until service `name` satisfies `ok`.
fn wait_service(
    vm: &mut Vm,
    name: &str,
    what: &str,
    ok: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    wait_until(
        SETTLE,
        Duration::from_secs(1),
        &format!("{name} to be {what}"),
        || {
            let all = services(vm);
            let found = all.iter().find(|s| s.name == name);
            Ok(match found.filter(|s| ok(s)) {
                Some(s) => Check::Done(s.clone()),
                None => Check::NotYet(format!("{found:?}")),
            })
        },
    )
    .unwrap()
}

/// Polls `cmd` in the guest until its output satisfies `ok`.
fn wait_output(vm: &mut Vm, cmd: &str, ok: impl Fn(&str) -> bool) -> String {
    let what = format!("the expected output of `{cmd}`");
    wait_until(SETTLE, Duration::from_secs(1), &what, || {
        let (code, out) = vm.run_shell(cmd, SHELL).unwrap();
        Ok(if code == 0 && ok(&out) {
            Check::Done(out)
        } else {
            Check::NotYet(format!("{out:?} (exit {code})"))
        })
    })
    .unwrap()
}

/// The position of `what` in `text`; panics if absent.
fn pos(text: &str, what: &str) -> usize {
    text.find(what)
        .unwrap_or_else(|| panic!("{what:?} not on the console"))
}

#[test]
fn services_start_in_order_with_readiness_restarts_and_host_settings() {
    skip_unless_qemu!();
    let (mut vm, ready) = boot(SERVICES, VmOptions::default());
    // dhcp (added by the builder) and the eight of the manifest.
    assert!(
        ready.starts_with("berth-init: ready image=services version=1.0.0 services=9 boot="),
        "{ready}"
    );
    let console = vm.console_text();
    // `after` waits for readiness: a TCP port, and a command that succeeds.
    assert!(
        pos(
            &console,
            "berth-init: web: ready (port 8080 accepts connections)"
        ) < pos(&console, "berth-init: after-web: started"),
    );
    assert!(
        pos(&console, "berth-init: probed: ready")
            < pos(&console, "berth-init: after-probed: started"),
    );
    assert!(pos(&console, "[probed] probed-file-made") < pos(&console, "berth-init: ready"));
    assert_eq!(vm.sh("berthctl logs after-web"), "web-was-up");
    assert_eq!(
        vm.sh("cat /var/log/berth/after-probed.log"),
        "probe-file-was-there"
    );
    assert_eq!(vm.sh("berthctl logs as-nobody"), "uid=65534 gid=65534");

    // An exiting service is started again; its log keeps every run.
    let ticker = wait_service(&mut vm, "ticker", "restarted twice", |s| s.restarts >= 2);
    assert_eq!(ticker.last_exit.as_deref(), Some("exit 0"));
    let log = vm.sh("cat /var/log/berth/ticker.log");
    assert!(
        log.lines().filter(|l| l.starts_with("tick ")).count() >= 3,
        "{log}"
    );
    let tail = vm.sh("berthctl logs -n 2 ticker");
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("tick ")), "{tail}");

    // The crash loop goes on without blocking the others, and is never ready.
    let crash = wait_service(&mut vm, "crashloop", "restarted 3 times", |s| {
        s.restarts >= 3
    });
    assert_eq!(crash.last_exit.as_deref(), Some("exit 3"));
    assert!(!vm.console_text().contains("berth-init: crashloop: ready"));
    let all = services(&mut vm);
    for name in [
        "sleeper",
        "web",
        "after-web",
        "probed",
        "after-probed",
        "as-nobody",
    ] {
        let s = all.iter().find(|s| s.name == name);
        assert_eq!(s.map(|s| s.state.as_str()), Some("ready"), "{name}: {s:?}");
        assert!(
            s.is_some_and(|s| s.pid.is_some() && s.restarts == 0),
            "{s:?}"
        );
    }
    let boot_check = all.iter().find(|s| s.name == "boot-check");
    assert!(boot_check.is_some(), "{all:?}");
    let table = vm.sh("berthctl services");
    assert!(
        table.contains("NAME") && table.contains("RESTARTS"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("crashloop ")),
        "{table}"
    );

    // Host settings from the manifest.
    assert_eq!(vm.sh("hostname"), "svc-host");
    assert_eq!(
        vm.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/vm/swappiness"),
        "1\n13"
    );
    // QEMU's user network hands out 10.0.2.15 by DHCP.
    wait_output(&mut vm, "ip -4 addr show dev eth0", |o| {
        o.contains("inet 10.0.2.15/24")
    });
    wait_output(&mut vm, "ip route", |o| o.contains("default via 10.0.2.2"));
    assert_no_badness(&vm.console_text());
}

#[test]
fn killed_services_come_back_and_berthctl_restarts_and_follows() {
    skip_unless_qemu!();
    let (mut vm, _) = boot(SERVICES, VmOptions::default());

    let before = wait_service(&mut vm, "sleeper", "ready", |s| s.state == "ready");
    let pid = before.pid.unwrap();
    vm.sh(&format!("kill -9 {pid}"));
    let after = wait_service(&mut vm, "sleeper", "back", |s| {
        s.state == "ready" && s.pid.is_some_and(|p| p != pid)
    });
    assert_eq!(
        (after.restarts, after.last_exit.as_deref()),
        (1, Some("signal 9"))
    );
    assert!(
        vm.console_text()
            .contains("berth-init: sleeper: exited (signal 9)")
    );

    // `berthctl restart`: a new process, ready again; the others untouched.
    let web = wait_service(&mut vm, "web", "ready", |s| s.state == "ready");
    let after_web = wait_service(&mut vm, "after-web", "ready", |s| s.state == "ready");
    vm.sh("berthctl restart web");
    let again = wait_service(&mut vm, "web", "restarted", |s| {
        s.state == "ready" && s.restarts == 1 && s.pid != web.pid
    });
    assert!(again.pid.is_some());
    let still = wait_service(&mut vm, "after-web", "ready", |s| s.state == "ready");
    assert_eq!(still.pid, after_web.pid);
    let (code, out) = vm.run_shell("berthctl restart nope", SHELL).unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("berthctl: error: no service \"nope\""),
        "{out}"
    );

    // `logs --follow` prints new lines as they come (-n 0: no old ones).
    let followed = vm.sh("(berthctl logs --follow -n 0 ticker > /tmp/follow & f=$!; i=0; \
         while [ $(grep -c '^tick ' /tmp/follow) -lt 2 ] && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done; \
         kill $f); cat /tmp/follow",
    );
    let ticks: Vec<&str> = followed
        .lines()
        .filter(|l| l.starts_with("tick "))
        .collect();
    assert!(ticks.len() >= 2, "{followed}");
    assert_ne!(ticks.first(), ticks.get(1), "{followed}");
    assert_no_badness(&vm.console_text());
}

#[test]
fn berthctl_poweroff_stops_services_in_order_and_the_next_boot_is_clean() {
    skip_unless_qemu!();
    let options = VmOptions {
        persistent_copy: true,
        ..VmOptions::default()
    };
    let (mut vm, _) = boot(SERVICES, options.clone());
    wait_service(&mut vm, "ticker", "restarted", |s| s.restarts >= 1);
    let start = vm.console_text().len();
    vm.send_line("berthctl poweroff").unwrap();
    let status = vm.wait_exit(POWER_OFF_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU: {status}");
    let console = vm.console_text();
    let shutdown = &console[start..];
    // Reverse start order: a service stops before what it started after.
    let stopping = |name: &str| pos(shutdown, &format!("berth-init: {name}: stopping (pid"));
    assert!(stopping("after-web") < stopping("web"), "{shutdown}");
    assert!(stopping("after-probed") < stopping("probed"), "{shutdown}");
    for line in [
        "shutting down (Poweroff): stopping services",
        "berth-init: powering off",
    ] {
        assert!(shutdown.contains(line), "{line:?} missing:\n{shutdown}");
    }
    for bad in [
        "did not stop in time",
        "remounting / read-only:",
        "reboot(2):",
    ] {
        assert!(!shutdown.contains(bad), "{bad:?}:\n{shutdown}");
    }
    assert_no_badness(&console);

    let mut vm = vm.reboot_from(options).unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let console = vm.console_text();
    assert!(
        !console.contains("recovery complete") && !console.contains("orphan cleanup"),
        "ext4 found an unclean file system:\n{console}"
    );
    // The logs of the first boot survived in /var.
    let log = vm.sh("cat /var/log/berth/ticker.log");
    assert!(
        log.lines().filter(|l| l.starts_with("tick ")).count() >= 2,
        "{log}"
    );
    assert_no_badness(&vm.console_text());
}

#[test]
fn the_acpi_power_button_powers_the_host_off_cleanly() {
    skip_unless_qemu!();
    // What `virsh shutdown`, a cloud provider's "stop" or QEMU's
    // system_powerdown does: the kernel reports the press on the input
    // device "Power Button" (modules button and evdev, which every image
    // keeps and coldplug loads). The machine has a hardware watchdog,
    // which berth-init prefers to softdog (loaded first, so watchdog0).
    let options = VmOptions {
        devices: vec!["i6300esb".into()],
        ..VmOptions::default()
    };
    let (mut vm, _) = boot(SERVICES, options);
    assert!(
        vm.console_text()
            .contains("berth-init: watchdog: armed i6300ESB timer (/dev/watchdog1), timeout 60 s"),
        "the hardware watchdog was not armed"
    );
    let start = vm.console_text().len();
    vm.press_power_button().unwrap();
    let status = vm.wait_exit(POWER_OFF_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU: {status}");
    let console = vm.console_text();
    let shutdown = &console[start..];
    for line in [
        "shutting down (Poweroff): stopping services",
        "berth-init: web: stopping (pid",
        "berth-init: powering off",
    ] {
        assert!(shutdown.contains(line), "{line:?} missing:\n{shutdown}");
    }
    for bad in ["did not stop in time", "remounting / read-only:"] {
        assert!(!shutdown.contains(bad), "{bad:?}:\n{shutdown}");
    }
    assert_no_badness(&console);
}

/// What the footprint test reads in one guest.
#[derive(Debug)]
struct Footprint {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    binary_bytes: u64,
    /// From starting QEMU to the ready line (firmware included).
    wall: Duration,
    ready: String,
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// Boots `manifest`, waits until every service is settled, and reads
/// PID 1's memory and the size of berth-init in the image.
fn measure(manifest: &str, services: usize) -> Footprint {
    let image = image(Path::new(manifest));
    let started = Instant::now();
    let mut vm = Vm::boot(&image, VmOptions::default()).unwrap();
    let ready = vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let wall = started.elapsed();
    wait_service(&mut vm, "boot-check", "exited", |s| s.state == "exited");
    wait_output(&mut vm, "berthctl services", |o| {
        o.lines().filter(|l| l.contains(" ready ")).count() >= services
    });
    let status = vm.sh("grep -E '^(Vm|Rss)' /proc/1/status");
    let size = vm.sh("wc -c < /usr/lib/berth/berth-init");
    assert_no_badness(&vm.console_text());
    Footprint {
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        anon_kib: status_kib(&status, "RssAnon:"),
        file_kib: status_kib(&status, "RssFile:"),
        binary_bytes: size.trim().parse().unwrap(),
        wall,
        ready,
    }
}

#[test]
fn pid1_stays_under_2_mib_with_the_minimal_image_and_ten_services() {
    skip_unless_qemu!();
    let runs = [
        ("qemu-tests/manifests/debug.toml", 0),
        ("qemu-tests/manifests/ten-services.toml", 10),
    ];
    let mut report = String::new();
    for (manifest, services) in runs {
        let f = measure(manifest, services);
        let line = format!(
            "{manifest}: VmRSS {} KiB (anon {}, file {}), VmHWM {} KiB, berth-init {} bytes, \
             QEMU start to ready {:.1}s; {}\n",
            f.rss_kib,
            f.anon_kib,
            f.file_kib,
            f.hwm_kib,
            f.binary_bytes,
            f.wall.as_secs_f64(),
            f.ready
        );
        print!("{line}");
        report.push_str(&line);
        assert!(f.rss_kib < RSS_LIMIT_KIB, "{line}");
    }
    // For docs/init.md: the numbers of the last run.
    let out: PathBuf = berth_qemu_tests::workspace_root().join("target/qemu-images/footprint.txt");
    let _ = std::fs::write(out, report);
}
