//! Verified boot under OVMF's Secure Boot firmware, on one persistent disk
//! whose variable store starts in setup mode: the image enrolls its own
//! keys at the first boot and from then on the firmware checks
//! systemd-boot and every unified kernel image it starts. One VM walks
//! through it all, to keep the suite's boots few:
//!
//! 1. enrollment, then a verified boot: `SecureBoot` = 1, the kernel
//!    locked down, the root found by the Discoverable Partitions
//!    Specification and the deployment by its tree id;
//! 2. an upgrade to v2 under Secure Boot, with an `options` line slipped
//!    into its boot entry: the signed command line is the one that runs;
//! 3. a v3 whose image on the ESP was tampered with (one byte changed),
//!    stripped of its signature, or signed by another key: the firmware
//!    refuses each, the tries run out, and the host comes back on v2 by
//!    itself;
//! 4. a version built without `[secure-boot]`: the host refuses to deploy
//!    it (the firmware would refuse its kernel);
//! 5. a signed v4 whose kernel panics: accepted by the firmware, it fails
//!    its three tries and the host comes back on v2 by itself.
//!
//! An image without `[secure-boot]` boots as before: every other test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_qemu_tests::command::{run, run_text};
use berth_qemu_tests::vm::deployment_with_role as role;
use berth_qemu_tests::{
    Check, READY_TIMEOUT, UpdateServer, Vm, VmOptions, image, skip_unless_qemu, wait_until,
};

/// A pull and deploy under TCG, with the ESP write.
const UPGRADE: Duration = Duration::from_secs(300);
/// Enrollment (systemd-boot writes db, KEK, PK, then a cold reset) and
/// the first verified boot: the firmware hashes every image it loads.
const FIRST_BOOT: Duration = Duration::from_secs(400);

/// The ESP as the host mounts it.
const ESP: &str = "/efi";

/// A persistent disk on Secure Boot firmware whose variable store starts
/// in setup mode.
fn options(server: &UpdateServer) -> VmOptions {
    VmOptions {
        persistent_copy: true,
        secure_boot: true,
        guest_forwards: vec![server.forward()],
        ..VmOptions::default()
    }
}

/// The value byte of UEFI global variable `name` as the guest reads it
/// (after efivarfs' four bytes of attributes), in hex.
fn efi_flag(vm: &mut Vm, name: &str) -> String {
    let bytes = vm.sh(&format!(
        "od -An -tx1 /sys/firmware/efi/efivars/{name}-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    ));
    bytes
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("{name}: {bytes:?}"))
        .to_string()
}

/// The unified kernel image of `commit` in the served repository.
fn uki_of(server: &UpdateServer, commit: &str, dir: &Path) -> PathBuf {
    let repo = server.repo.to_string_lossy().into_owned();
    let modules = run_text(Command::new("ostree").args([
        "ls",
        "--repo",
        &repo,
        "--nul-filenames-only",
        commit,
        "/usr/lib/modules",
    ]))
    .unwrap();
    let kver = modules
        .split('\0')
        .filter_map(|p| p.strip_prefix("/usr/lib/modules/"))
        .find(|k| !k.is_empty() && !k.contains('/'))
        .unwrap_or_else(|| panic!("no kernel in {commit}: {modules:?}"))
        .to_string();
    let out = dir.join("berth.efi");
    let bytes = Command::new("ostree")
        .args([
            "cat",
            "--repo",
            &repo,
            commit,
            &format!("/usr/lib/modules/{kver}/berth.efi"),
        ])
        .output()
        .unwrap();
    assert!(bytes.status.success(), "ostree cat: {bytes:?}");
    std::fs::write(&out, bytes.stdout).unwrap();
    out
}

#[test]
fn a_secure_boot_host_enrolls_its_keys_boots_verified_upgrades_and_refuses_tampered_images() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/secure-boot-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    let mut vm = Vm::boot(&v1, options(&server)).unwrap();

    // 1. Enrollment at the first boot, then a verified boot.
    vm.wait_for(
        "berth-init: ready image=secure-boot version=1.0.0",
        FIRST_BOOT,
    )
    .unwrap();
    assert_eq!(efi_flag(&mut vm, "SecureBoot"), "01");
    assert_eq!(efi_flag(&mut vm, "SetupMode"), "00");
    let lockdown = vm.sh("cat /sys/kernel/security/lockdown");
    assert!(lockdown.contains("[integrity]"), "{lockdown}");
    let console = vm.console_text();
    assert!(
        console.contains("Enrolling secure boot keys from directory: \\loader\\keys\\auto"),
        "{console}"
    );
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "{console}"
    );
    assert!(
        console.contains("Kernel is locked down from EFI Secure Boot"),
        "{console}"
    );
    let st = vm.status_json();
    assert_eq!(st["secure_boot"]["state"], "enforcing", "{st}");
    // The signed command line names neither the disk nor libostree's
    // boot directory: stage 1 found both itself.
    let cmdline = vm.sh("cat /proc/cmdline");
    assert!(cmdline.contains("berth.tree="), "{cmdline}");
    assert!(!cmdline.contains("root="), "{cmdline}");
    assert!(!cmdline.contains("ostree="), "{cmdline}");
    assert!(
        console.contains("the x86-64 root partition on the disk of the ESP"),
        "{console}"
    );
    // berth-init gave the firmware its extra boot options for
    // systemd-boot, so that refused images are tried down in one power-on.
    assert!(
        console.contains("secure boot: wrote the firmware's retry options for systemd-boot"),
        "{console}"
    );
    let conf = vm.sh(&format!("cat {ESP}/loader/loader.conf"));
    assert!(conf.contains("editor no"), "{conf}");

    // 2. v2 under Secure Boot; a command line added to its entry is
    // ignored by the stub.
    let built = server
        .publish(Path::new("qemu-tests/manifests/secure-boot-v2.toml"))
        .unwrap();
    let v2_commit = berth_qemu_tests::updates::built_commit(&built).unwrap();
    vm.send_line("berthctl upgrade").unwrap();
    vm.wait_for("it boots next, on trial", UPGRADE).unwrap();
    let entry = vm.sh(&format!("ls {ESP}/loader/entries/ | grep '+3.conf'"));
    let entry = entry.trim();
    assert!(entry.contains(&v2_commit), "{entry}");
    vm.sh(&format!(
        "echo 'options berth.injected=1 init=/bin/sh' >> {ESP}/loader/entries/{entry} && sync"
    ));
    vm.send_line("berthctl reboot").unwrap();
    vm.wait_for(
        "berth-init: ready image=secure-boot version=2.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let cmdline = vm.sh("cat /proc/cmdline");
    assert!(!cmdline.contains("berth.injected"), "{cmdline}");
    let st = vm.status_json();
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    assert_eq!(st["secure_boot"]["state"], "enforcing", "{st}");

    // 3. v3, refused by the firmware in three forms, one per try.
    let built = server
        .publish(Path::new("qemu-tests/manifests/secure-boot-v3.toml"))
        .unwrap();
    let v3_commit = berth_qemu_tests::updates::built_commit(&built).unwrap();
    let work = tempfile::tempdir().unwrap();
    let signed = uki_of(&server, &v3_commit, work.path());
    let unsigned = work.path().join("unsigned.efi");
    std::fs::copy(&signed, &unsigned).unwrap();
    run(Command::new("sbattach").arg("--remove").arg(&unsigned)).unwrap();
    let other = work.path().join("other-key");
    run(Command::new(berth_qemu_tests::fixture::berth_bin())
        .args(["keys", "generate"])
        .arg(&other))
    .unwrap();
    let foreign = work.path().join("foreign.efi");
    run(Command::new("sbsign")
        .arg("--key")
        .arg(other.join("db.key"))
        .arg("--cert")
        .arg(other.join("db.crt"))
        .arg("--output")
        .arg(&foreign)
        .arg(&unsigned))
    .unwrap();
    // The guest fetches them from the update server.
    for f in [&unsigned, &foreign] {
        std::fs::copy(f, server.repo.join(f.file_name().unwrap())).unwrap();
    }
    vm.send_line("berthctl upgrade").unwrap();
    vm.wait_for("it boots next, on trial", UPGRADE).unwrap();
    let v3_id = vm.sh(&format!(
        "ls {ESP}/berth | grep {}",
        &v3_commit[..v3_commit.len().min(64)]
    ));
    let v3_id = v3_id.trim().to_string();
    let dir = format!("{ESP}/berth/{v3_id}");
    // The deployed image with one byte flipped in the middle (the
    // kernel), its entry down to one try; then two more entries ranked
    // right after it, one try each: the image without its signature and
    // the one signed by a key the firmware does not know.
    let script = format!(
        "(set -e; f={dir}/berth.efi; size=$(stat -c %s $f); \
         off=$((size / 2)); b=$(dd if=$f bs=1 skip=$off count=1 2>/dev/null | od -An -tu1 | tr -d ' '); \
         printf \"\\\\$(printf %o $(( (b + 1) % 256 )))\" | dd of=$f bs=1 seek=$off conv=notrunc 2>/dev/null; \
         wget -q -O {dir}/unsigned.efi http://10.0.2.100:8080/unsigned.efi; \
         wget -q -O {dir}/foreign.efi http://10.0.2.100:8080/foreign.efi; \
         cd {ESP}/loader/entries; e=$(ls | grep '+3.conf'); \
         for k in foreign unsigned; do \
           sed -e \"s|/berth.efi|/$k.efi|\" -e \"s|^sort-key .*|sort-key berth-000$k|\" $e > berth-0$k+1.conf; \
         done; mv $e ${{e%+3.conf}}+1.conf; sync; echo tampered)"
    );
    let out = vm.sh(&script);
    assert!(out.contains("tampered"), "{out}");
    vm.send_line("berthctl reboot").unwrap();
    // Each refused image costs one try; then v2 again, with no one
    // touching the host.
    vm.wait_for(
        "berth-init: ready image=secure-boot version=2.0.0",
        Duration::from_secs(900),
    )
    .unwrap();
    let console = vm.console_text();
    for image in ["berth.efi", "foreign.efi", "unsigned.efi"] {
        assert!(
            console.contains(&format!("{v3_id}\\{image}: Access Denied")),
            "{image} not refused:\n{console}"
        );
    }
    // The firmware went on to berth-init's boot options after its own.
    assert!(
        console.contains("BdsDxe: loading Boot0B00 \"Berth (systemd-boot)\""),
        "{console}"
    );
    let refused: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("Error loading") || l.contains("BdsDxe: loading"))
        .collect();
    println!("the boot that refused v3:\n{}", refused.join("\n"));
    // systemd-boot left LoaderBootCountPath naming the last refused entry
    // (it sets it only for a counted entry, and the firmware did not reset
    // between its starts). v2's entry is already blessed: this boot is no
    // trial, and nothing refused may be blessed.
    let fallback = console
        .rsplit("berthctl reboot")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        fallback.contains("boot loader booted berth-") && fallback.contains("not on trial"),
        "{fallback}"
    );
    assert!(!fallback.contains("is on trial"), "{fallback}");
    assert!(!fallback.contains("boot is good: blessed"), "{fallback}");
    // boot-check records v3 as failed and writes the ESP from the plan:
    // v3's entry and the two stray ones go, v2's stays.
    let ready_v2 = "berth-init: ready image=secure-boot version=2.0.0";
    wait_until(
        Duration::from_secs(120),
        Duration::from_secs(2),
        "boot-check to finish after the fallback",
        || {
            let c = vm.console_text();
            let after = c.rsplit(ready_v2).next().unwrap_or_default().to_string();
            Ok(if after.contains("berth-init: boot-check: exited") {
                Check::Done(())
            } else {
                Check::NotYet(after)
            })
        },
    )
    .unwrap();
    let entries = vm.sh(&format!("ls {ESP}/loader/entries/"));
    let names: Vec<&str> = entries.split_whitespace().collect();
    assert!(
        names.len() == 1 && names[0].contains(v2_commit.as_str()) && !names[0].contains('+'),
        "{entries}"
    );
    let st = vm.status_json();
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    assert_eq!(st["secure_boot"]["state"], "enforcing", "{st}");
    assert!(
        st["failed_commits"]
            .as_array()
            .is_some_and(|f| f.iter().any(|c| c == v3_commit.as_str())),
        "{st}"
    );

    // 4. A version built without [secure-boot]: the host refuses to
    // deploy it, before anything reaches the ESP.
    let entries_before = vm.sh(&format!("ls {ESP}/loader/entries/"));
    let built = server
        .publish(Path::new("qemu-tests/manifests/secure-boot-unsigned.toml"))
        .unwrap();
    let unsigned_commit = berth_qemu_tests::updates::built_commit(&built).unwrap();
    let (code, out) = vm.run_shell("berthctl upgrade", UPGRADE).unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Secure Boot enforcing, and 3.5.0 (")
            && out.contains("no signed unified kernel image"),
        "{out}"
    );
    assert_eq!(vm.sh(&format!("ls {ESP}/loader/entries/")), entries_before);
    let st = vm.status_json();
    let deployed = st["deployments"].as_array().unwrap();
    assert!(
        deployed
            .iter()
            .all(|d| d["commit"] != unsigned_commit.as_str()),
        "{st}"
    );

    // 5. A signed v4 whose kernel panics: the firmware accepts it, it
    // fails three times, and the host comes back on v2 by itself, with
    // Secure Boot on, as without it.
    let built = server
        .publish(Path::new("qemu-tests/manifests/secure-boot-v4-panic.toml"))
        .unwrap();
    let v4_commit = berth_qemu_tests::updates::built_commit(&built).unwrap();
    vm.send_line("berthctl upgrade --reboot").unwrap();
    vm.wait_for("deployed 4.0.0", UPGRADE).unwrap();
    vm.wait_for(
        "berth-init: ready image=secure-boot version=2.0.0",
        Duration::from_secs(900),
    )
    .unwrap();
    let console = vm.console_text();
    let v4_boots = console.split("deployed 4.0.0").nth(1).unwrap_or_default();
    assert_eq!(
        v4_boots.matches("Kernel panic").count(),
        3,
        "v4 was expected to panic once per try:\n{v4_boots}"
    );
    assert!(!v4_boots.contains("Access Denied"), "{v4_boots}");
    let st = vm.wait_failed_commit(&v4_commit, Duration::from_secs(120));
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    assert_eq!(st["secure_boot"]["state"], "enforcing", "{st}");
}
