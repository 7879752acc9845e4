//! The default image boots the real chain (OVMF → systemd-boot → kernel +
//! initramfs → berth-init stage 1 → OSTree deployment → stage 2) to the
//! ready line, through `berth run`'s QEMU configuration and through a
//! plain QEMU + OVMF command line written here by hand.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_qemu_tests::command::run;
use berth_qemu_tests::{READY_TIMEOUT, Vm, VmOptions, image, skip_unless_qemu};

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

#[test]
fn minimal_image_boots_to_ready() {
    skip_unless_qemu!();
    let image = image(Path::new("manifests/minimal.toml"));
    let mut vm = Vm::boot(&image, VmOptions::default()).unwrap();
    let ready = vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let console = vm.console_text();
    // The real boot chain, in order.
    let order = [
        "EFI stub: Loaded initrd",
        "Linux version 6.1",
        // No root= on the command line: the root partition by its type,
        // the deployment by its tree id.
        "berth-init: no root=: waiting up to",
        "berth-init: root: /dev/vda2, the x86-64 root partition",
        "berth-init: mounted /dev/vda2 on /sysroot",
        "(berth.tree=)",
        "berth-init: booting deployment /sysroot/ostree/deploy/berth/deploy/",
        "berth-init: stage 2",
        "berth-init: ready image=minimal version=1.0.0",
    ];
    let mut at = 0;
    for step in order {
        let found = console[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order"));
        at += found + step.len();
    }
    // wait_for_ready returns the ready line itself.
    assert!(
        ready.starts_with("berth-init: ready image=minimal version=1.0.0 services=1 boot="),
        "{ready}"
    );
    assert_no_badness(&console);
}

/// OVMF, the image and a serial console: nothing from `berth run`.
#[test]
fn image_boots_with_a_plain_qemu_command_line() {
    skip_unless_qemu!();
    let image = image(Path::new("manifests/minimal.toml"));
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let overlay = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image)
        .arg(&overlay))
    .unwrap();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            log.push_str(&line);
            log.push('\n');
            if line.contains(berth_hostapi::READY_PREFIX) {
                let _ = tx.send(Ok(log.clone()));
                return;
            }
        }
        let _ = tx.send(Err(log));
    });
    let started = Instant::now();
    let result = rx.recv_timeout(READY_TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(Ok(_)) => println!("ready after {:.1?}", started.elapsed()),
        Ok(Err(log)) => panic!("QEMU ended before the ready line:\n{log}"),
        Err(_) => panic!("no ready line within {READY_TIMEOUT:?}"),
    }
}

#[test]
fn debug_shell_runs_commands_and_poweroff_is_clean() {
    skip_unless_qemu!();
    let image = image(Path::new("qemu-tests/manifests/debug.toml"));
    let options = VmOptions {
        persistent_copy: true,
        ..VmOptions::default()
    };
    let mut vm = Vm::boot(&image, options.clone()).unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let (code, os) = vm
        .run_shell("cat /etc/os-release", Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        os.contains("ID=berth") && os.contains("VERSION_ID=1.0.0"),
        "{os}"
    );
    let (code, hostname) = vm.run_shell("hostname", Duration::from_secs(30)).unwrap();
    assert_eq!((code, hostname.trim()), (0, "berth-test"));
    // The root is the OSTree deployment; /usr is read-only.
    let (code, _) = vm
        .run_shell("touch /usr/x", Duration::from_secs(30))
        .unwrap();
    assert_ne!(code, 0, "/usr must be read-only");
    let (code, _) = vm
        .run_shell("test -e /run/ostree-booted", Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 0);
    let (code, _) = vm
        .run_shell("echo kept > /var/kept && sync", Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 0);
    vm.power_off_and_wait(berth_qemu_tests::POWER_OFF_TIMEOUT)
        .unwrap();
    // The next boot finds a clean file system (no journal replay) and /var kept.
    let mut vm = vm.reboot_from(options).unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    assert!(
        !vm.console_text().contains("recovery complete"),
        "ext4 replayed its journal: unclean shutdown"
    );
    let (code, kept) = vm
        .run_shell("cat /var/kept", Duration::from_secs(30))
        .unwrap();
    assert_eq!((code, kept.trim()), (0, "kept"));
    assert_no_badness(&vm.console_text());
}
