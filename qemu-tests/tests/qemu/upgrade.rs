//! Atomic upgrades with automatic rollback, each a real multi-boot
//! scenario on one persistent disk: upgrade and come back on the new
//! version with /var and an admin's /etc edit kept; roll back by hand; a
//! new version whose kernel panics, and one whose PID 1 hangs (reset by
//! the watchdog), both undone by systemd-boot's boot counting with no one
//! touching the host (one that never gets ready, and the refusal to
//! upgrade from its trial boot, are in agent.rs, where the update agent
//! takes it). And what a host refuses
//! from its update server: unsigned or wrongly signed commits, an unsigned
//! summary, an older version, another image's commit. Power cuts during
//! an upgrade are in power_cuts.rs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_qemu_tests::command::{run, run_stdout};
use berth_qemu_tests::vm::deployment_with_role as role;
use berth_qemu_tests::{
    READY_TIMEOUT, UpdateServer, Vm, VmOptions, fixture, image, skip_unless_qemu,
};

/// A pull and deploy under TCG, with the ESP write.
const UPGRADE: Duration = Duration::from_secs(300);

fn options(server: &UpdateServer) -> VmOptions {
    VmOptions {
        persistent_copy: true,
        guest_forwards: vec![server.forward()],
        ..VmOptions::default()
    }
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
    vm.sh("echo precious > /var/lib/precious");
    vm.sh("echo '10.9.9.9 admin-added' >> /etc/hosts");
    let v1_cmdline = vm.sh("cat /proc/cmdline");
    let check = vm.sh("berthctl upgrade --check");
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
    let os = vm.sh("grep VERSION_ID /usr/lib/os-release");
    assert_eq!(os.trim(), "VERSION_ID=2.0.0");
    // The kernel arguments are v2's own; neither names the partition or
    // the deployment's path: stage 1 found the root by its partition type
    // and the deployment by the tree id, v2's now.
    let v2_cmdline = vm.sh("cat /proc/cmdline");
    let tree = |c: &str| {
        c.split_whitespace()
            .find_map(|a| a.strip_prefix("berth.tree="))
            .map(String::from)
    };
    for c in [&v1_cmdline, &v2_cmdline] {
        assert!(!c.contains("root=") && !c.contains("ostree="), "{c}");
    }
    let v2_tree = vm.sh("cat /usr/lib/berth/tree-id");
    assert_eq!(
        tree(&v2_cmdline).as_deref(),
        Some(v2_tree.trim()),
        "{v2_cmdline}"
    );
    assert_ne!(tree(&v1_cmdline), tree(&v2_cmdline), "{v1_cmdline}");
    assert!(
        !v1_cmdline.contains("berth.root_timeout=31"),
        "{v1_cmdline}"
    );
    assert!(
        v2_cmdline.contains("panic=10 berth.root_timeout=31"),
        "{v2_cmdline}"
    );
    assert_eq!(vm.sh("cat /var/lib/precious").trim(), "precious");
    assert!(
        vm.sh("cat /etc/hosts").contains("admin-added"),
        "the admin's /etc edit was lost"
    );
    let st = vm.status_json();
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    assert_eq!(role(&st, "rollback").unwrap()["version"], "1.0.0", "{st}");
    // Ready, so berth-init blessed the entry: no boot counter left.
    assert_eq!(role(&st, "booted").unwrap()["boot_state"], "good", "{st}");
    let entries = vm.sh("ls /efi/loader/entries");
    assert!(!entries.contains('+'), "{entries}");

    vm.send_line("berthctl rollback --reboot").unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=1.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let st = vm.status_json();
    assert_eq!(role(&st, "booted").unwrap()["version"], "1.0.0", "{st}");
    assert_eq!(vm.sh("cat /var/lib/precious").trim(), "precious");
}

/// Upgrades the VM (booted on v2, whose server is `server`) to the
/// version in `manifest`, which fails on every try; waits until the host
/// is back on v2 by itself and checks the failed commit is recorded and
/// not offered again.
fn failed_version_comes_back_to_v2(
    vm: &mut Vm,
    server: &UpdateServer,
    manifest: &str,
    version: &str,
) {
    let built = server.publish(Path::new(manifest)).unwrap();
    let commit = berth_qemu_tests::updates::built_commit(&built).unwrap();
    vm.send_line("berthctl upgrade --reboot").unwrap();
    vm.wait_for(&format!("deployed {version}"), UPGRADE)
        .unwrap();
    // Three tries, each ending in a reboot, then systemd-boot falls back.
    vm.wait_for(
        "berth-init: ready image=upgrade version=2.0.0",
        Duration::from_secs(900),
    )
    .unwrap();
    // boot-check (a one-shot at every boot, not waited for by the ready
    // line) records the failure; give it its moment.
    let st = vm.wait_failed_commit(&commit, Duration::from_secs(120));
    assert_eq!(role(&st, "booted").unwrap()["version"], "2.0.0", "{st}");
    let failed: Vec<&str> = st["failed_commits"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        failed.contains(&commit.as_str()),
        "{commit} not recorded as failed: {st}"
    );
    let again = vm.sh("berthctl upgrade");
    assert!(
        again.contains("failed to boot on this host before"),
        "{again}"
    );
    let st = vm.status_json();
    assert!(
        st["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["version"] != version),
        "{st}"
    );
}

#[test]
fn a_version_whose_kernel_panics_rolls_back_by_itself() {
    skip_unless_qemu!();
    let v2 = image(Path::new("qemu-tests/manifests/upgrade-v2.toml"));
    let server = UpdateServer::start(&v2).unwrap();
    let mut vm = Vm::boot(&v2, options(&server)).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=2.0.0",
        READY_TIMEOUT,
    )
    .unwrap();
    failed_version_comes_back_to_v2(
        &mut vm,
        &server,
        "qemu-tests/manifests/upgrade-v3-panic.toml",
        "3.0.1",
    );
    let console = vm.console_text();
    assert!(
        console.contains("Kernel panic"),
        "v3.0.1 was expected to panic"
    );
    assert!(
        console.contains("on trial"),
        "the new version was not booted on trial"
    );
}

#[test]
fn a_version_whose_pid1_hangs_is_reset_by_the_watchdog_and_rolls_back() {
    skip_unless_qemu!();
    let v2 = image(Path::new("qemu-tests/manifests/upgrade-v2.toml"));
    let server = UpdateServer::start(&v2).unwrap();
    let mut vm = Vm::boot(&v2, options(&server)).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=2.0.0",
        READY_TIMEOUT,
    )
    .unwrap();
    let console = vm.console_text();
    assert!(
        console.contains(
            "berth-init: watchdog: armed Software Watchdog (/dev/watchdog0), timeout 60 s"
        ),
        "v2 did not arm softdog with the default timeout"
    );

    // v3's PID 1 stops after its ready line, before blessing: only the
    // watchdog can end such a boot, three times, then v2 is back.
    let started = std::time::Instant::now();
    failed_version_comes_back_to_v2(
        &mut vm,
        &server,
        "qemu-tests/manifests/upgrade-v3-hang.toml",
        "3.0.2",
    );
    let console = vm.console_text();
    let tries = console
        .matches("berth-init: fault injection (berth.fault=pid1-hang): PID 1 stops here")
        .count();
    let resets = console.matches("softdog: Initiating system reboot").count();
    assert!(
        console.contains("watchdog: armed Software Watchdog (/dev/watchdog0), timeout 15 s"),
        "v3 did not arm its watchdog"
    );
    assert!(
        console.contains("berth-init: ready image=upgrade version=3.0.2"),
        "v3 never got as far as its ready line"
    );
    println!(
        "upgrade to the hanging v3 and back on v2 in {:.0?}: {tries} hangs, {resets} watchdog resets",
        started.elapsed()
    );
    assert!(tries >= 3, "PID 1 hung on {tries} tries, expected 3");
    assert!(
        resets >= tries,
        "{resets} watchdog resets for {tries} hangs"
    );
    assert!(
        !console.contains("boot is good: blessed"),
        "a hung boot was blessed"
    );
}

/// A throw-away GnuPG home with one signing key; returns its fingerprint.
fn gpg_key(home: &Path, name: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        run_stdout(
            Command::new("gpg")
                .arg("--homedir")
                .arg(home)
                .args([
                    "--batch",
                    "--yes",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args),
        )
        .unwrap()
    };
    gpg(&[
        "--quick-gen-key",
        &format!("Berth test {name} <{name}@berth.test>"),
        "ed25519",
        "sign",
        "never",
    ]);
    let listing = gpg(&["--list-keys", "--with-colons"]);
    let fpr = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .map(|l| l.trim_matches(':').to_string())
        .unwrap();
    let public = gpg(&["--armor", "--export", &fpr]);
    std::fs::write(home.with_extension("pub.asc"), public).unwrap();
    fpr
}

/// A manifest whose hosts trust key a; signed by `signer` (GnuPG home,
/// key id), or not at all (`verify = false`).
fn signed_manifest(
    dir: &Path,
    file: &str,
    version: &str,
    signer: Option<(&str, &str)>,
) -> std::path::PathBuf {
    let sign = signer.map_or("verify = false\n".to_string(), |(home, fpr)| {
        format!("gpg-key = \"a.pub.asc\"\ngpg-homedir = \"{home}\"\ngpg-key-id = \"{fpr}\"\n")
    });
    let text = format!(
        "name = \"signed\"\nversion = \"{version}\"\n[source]\npackages = [\"busybox-static\"]\n\
         [host]\ndebug-shell = true\n[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n\
         [update]\nurl = \"http://10.0.2.100:8080\"\n{sign}"
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_signed_remote_refuses_unsigned_and_wrongly_signed_commits() {
    skip_unless_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_a = gpg_key(&d.join("a"), "a");
    let key_b = gpg_key(&d.join("b"), "b");
    let v1 = signed_manifest(d, "v1.toml", "1.0.0", Some(("a", &key_a)));
    run(Command::new(fixture::berth_bin())
        .arg("build")
        .arg(&v1)
        .arg("--output")
        .arg(d.join("out")))
    .unwrap();
    let image = d.join("out/signed.raw");
    let server = UpdateServer::start(&image).unwrap();
    let mut vm = Vm::boot(&image, options(&server)).unwrap();
    vm.wait_for(
        "berth-init: ready image=signed version=1.0.0",
        READY_TIMEOUT,
    )
    .unwrap();

    for (file, version, signer, why) in [
        ("unsigned.toml", "2.0.0", None, "unsigned"),
        (
            "other-key.toml",
            "2.0.1",
            Some(("b", key_b.as_str())),
            "signed by another key",
        ),
    ] {
        server
            .publish(&signed_manifest(d, file, version, signer))
            .unwrap();
        // The summary gets key a's signature too: what is refused here is
        // the commit itself (an unsigned summary is refused on its own,
        // see the test below).
        server.sign_summary(Some((&d.join("a"), &key_a))).unwrap();
        let (code, out) = vm.run_shell("berthctl upgrade", UPGRADE).unwrap();
        assert_ne!(code, 0, "a commit {why} was accepted:\n{out}");
        assert!(
            out.to_lowercase().contains("gpg") || out.contains("signature"),
            "{why}: {out}"
        );
        let st = vm.status_json();
        assert_eq!(
            st["deployments"].as_array().unwrap().len(),
            1,
            "{why}: something was deployed: {st}"
        );
    }
    // The same server with a commit signed by the right key is accepted.
    server
        .publish(&signed_manifest(
            d,
            "good.toml",
            "2.0.2",
            Some(("a", &key_a)),
        ))
        .unwrap();
    let out = vm.sh("berthctl upgrade");
    assert!(out.contains("deployed 2.0.2"), "{out}");
    for home in ["a", "b"] {
        let _ = run(Command::new("gpgconf")
            .arg("--homedir")
            .arg(d.join(home))
            .args(["--kill", "gpg-agent"]));
    }
}

/// The deployments as (commit, serial, role), to show nothing changed.
fn deployments(vm: &mut Vm) -> Vec<(String, i64, String)> {
    let st = vm.status_json();
    st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["commit"].as_str().unwrap_or_default().to_string(),
                d["serial"].as_i64().unwrap_or(-1),
                d["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs `berthctl upgrade ARGS`, which must fail saying `why`, and checks
/// that nothing was deployed.
fn refused(vm: &mut Vm, args: &str, why: &str) {
    let before = deployments(vm);
    let (code, out) = vm
        .run_shell(&format!("berthctl upgrade {args}"), UPGRADE)
        .unwrap();
    assert_ne!(code, 0, "accepted (expected: {why}):\n{out}");
    assert!(out.contains(why), "refused, but not for {why:?}:\n{out}");
    assert_eq!(deployments(vm), before, "something was deployed: {out}");
}

/// A host whose manifest says nothing about keys (the key `berth build`
/// made for the repository signs), on v2, offered by its server: the
/// signed v1 again, a newer commit of another image signed by the same
/// key, and an unsigned summary. It refuses all three and deploys
/// nothing; `--allow-downgrade` then takes it back to v1.
#[test]
fn a_host_refuses_downgrades_other_images_and_unsigned_summaries() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/upgrade-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    let reference = "berth/upgrade/x86_64";
    let v1_commit = server.rev(reference).unwrap();
    let built = server
        .publish(Path::new("qemu-tests/manifests/upgrade-v2.toml"))
        .unwrap();
    assert!(
        built.contains("signing    key") && !built.contains(", new,"),
        "v2 was not signed by v1's key:\n{built}"
    );
    // Another image, built into the same repository with the same key.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.toml");
    let v2_text = std::fs::read_to_string(
        fixture::workspace_root().join("qemu-tests/manifests/upgrade-v2.toml"),
    )
    .unwrap();
    std::fs::write(
        &other,
        v2_text
            .replace("name = \"upgrade\"", "name = \"other\"")
            .replace("version = \"2.0.0\"", "version = \"9.0.0\""),
    )
    .unwrap();
    server.publish(&other).unwrap();
    let other_commit = server.rev("berth/other/x86_64").unwrap();
    let v2_commit = server.rev(reference).unwrap();

    let mut vm = Vm::boot(&v1, options(&server)).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=1.0.0",
        READY_TIMEOUT,
    )
    .unwrap();
    vm.send_line("berthctl upgrade --reboot").unwrap();
    vm.wait_for("it boots next, on trial", UPGRADE).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=2.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let st = vm.status_json();
    assert_eq!(
        role(&st, "booted").unwrap()["commit"],
        v2_commit.as_str(),
        "{st}"
    );

    // (a) The ref moved back to the signed v1, the summary signed.
    server.point_ref(reference, &v1_commit).unwrap();
    server.sign_summary(None).unwrap();
    refused(&mut vm, "", "chronologically older");
    // (b) The ref on a newer commit of another image, signed by the same
    // key; --allow-downgrade so that only the ref binding can refuse it.
    server.point_ref(reference, &other_commit).unwrap();
    server.sign_summary(None).unwrap();
    refused(&mut vm, "--allow-downgrade", "ref binding");
    // (c) v1 again, but the summary is not signed.
    server.point_ref(reference, &v1_commit).unwrap();
    refused(&mut vm, "--allow-downgrade", "summary.sig");

    // Signed, and asked for: the way back.
    server.sign_summary(None).unwrap();
    let out = vm.sh("berthctl upgrade --allow-downgrade");
    assert!(out.contains("deployed 1.0.0"), "{out}");
    let st = vm.status_json();
    assert_eq!(
        role(&st, "pending").unwrap()["commit"],
        v1_commit.as_str(),
        "{st}"
    );
    assert_eq!(
        role(&st, "booted").unwrap()["commit"],
        v2_commit.as_str(),
        "{st}"
    );
}
