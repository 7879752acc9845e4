//! Tests of the harness itself, with no Berth image: the accelerator
//! probe answers in time, and a VM's console can be waited on and typed
//! into (OVMF's built-in UEFI shell stands in for a guest).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_qemu_tests::{Vm, VmOptions, skip_unless_qemu};

#[test]
fn kvm_probe_answers_within_its_timeout() {
    skip_unless_qemu!();
    let started = Instant::now();
    let choice = berth::run::choose_accel(berth::run::Accel::Auto, Path::new("qemu-system-x86_64"));
    let took = started.elapsed();
    println!("{choice} in {took:.2?}");
    assert!(
        took < berth::run::accel::PROBE_TIMEOUT + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        choice.reason.contains("KVM probe") || choice.reason.contains("/dev/kvm"),
        "{choice}"
    );
}

/// A blank disk: OVMF finds nothing to boot and starts its UEFI shell on
/// the serial console.
fn blank_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("blank.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    disk
}

#[test]
fn console_waits_and_typing_work_on_the_uefi_shell() {
    skip_unless_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let options = VmOptions {
        memory_mib: 256,
        cpus: 1,
        ..VmOptions::default()
    };
    let mut vm = Vm::boot(&blank_disk(dir.path()), options).unwrap();
    vm.wait_for("UEFI Interactive Shell", Duration::from_secs(120))
        .unwrap();
    vm.wait_for("Shell>", Duration::from_secs(60)).unwrap();
    vm.send_line("echo harness-says-hi").unwrap();
    // First the shell echoes what was typed, then the command prints it.
    let typed = vm
        .wait_for("harness-says-hi", Duration::from_secs(30))
        .unwrap();
    assert!(typed.ends_with("echo harness-says-hi"), "{typed:?}");
    let printed = vm
        .wait_for("\nharness-says-hi", Duration::from_secs(30))
        .unwrap();
    assert!(!printed.contains("echo"), "{printed:?}");
    // `reset -s` powers the machine off: QEMU exits on its own.
    vm.send_line("reset -s").unwrap();
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(
        log.contains("UEFI Interactive Shell"),
        "the raw log is kept"
    );
    assert!(
        vm.console_text().contains("BdsDxe"),
        "the text starts at the firmware"
    );
}

#[test]
fn dropping_the_vm_kills_qemu() {
    skip_unless_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let options = VmOptions {
        memory_mib: 128,
        cpus: 1,
        ..VmOptions::default()
    };
    let vm = Vm::boot(&blank_disk(dir.path()), options).unwrap();
    let proc_dir = format!("/proc/{}", vm.pid());
    assert!(Path::new(&proc_dir).exists());
    drop(vm);
    assert!(
        !Path::new(&proc_dir).exists(),
        "QEMU still running after drop"
    );
}

#[test]
fn a_private_copy_survives_power_off_and_boots_again() {
    skip_unless_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let image = blank_disk(dir.path());
    let options = VmOptions {
        memory_mib: 256,
        cpus: 1,
        persistent_copy: true,
        ..VmOptions::default()
    };
    let mut vm = Vm::boot(&image, options.clone()).unwrap();
    assert_ne!(vm.disk(), image, "the VM runs on its own copy");
    vm.wait_for("Shell>", Duration::from_secs(120)).unwrap();
    vm.send_line("reset -s").unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let mut vm = vm.reboot_from(options).unwrap();
    assert!(vm.disk().is_file());
    vm.wait_for("UEFI Interactive Shell", Duration::from_secs(120))
        .unwrap();
}
