//! First boot: one image becomes different machines. A NoCloud seed made by
//! `cloud-localds` (a `cidata` volume on a second disk) names the host,
//! gives root an SSH key that then logs in through QEMU port forwarding
//! (Debian's OpenSSH client against the image's dropbear), writes a file
//! and gives a service extra environment; on a disk grown to 4 GiB the root
//! grows to fill it. A second VM from the same image, given other data
//! through QEMU fw_cfg (what `berth run --config` passes), is another
//! machine that the first one's key does not open. An invalid seed is
//! reported and skipped, and the host still gets ready. The image's own
//! keys are revocable: a host upgraded from an image whose manifest has
//! key A to one with only key B refuses A, and a key from the
//! provisioning data still logs in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use berth_qemu_tests::command::{output, run};
use berth_qemu_tests::{
    Check, READY_TIMEOUT, UpdateServer, Vm, VmOptions, free_port, image, skip_unless_qemu,
    wait_until, workspace_root,
};

const MANIFEST: &str = "qemu-tests/manifests/provision.toml";
const SHELL: Duration = berth_qemu_tests::SHELL_TIMEOUT;
/// An SSH login under TCG: key exchange and host key generation at the
/// first connection are slow in an emulated guest.
const SSH_TIMEOUT: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;

/// An ed25519 key pair made by ssh-keygen: (private key file, public line).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key))
    .unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// A committed test key (qemu-tests/keys/NAME), copied to a 0600 file in
/// `dir`: ssh refuses a private key that others may read.
fn test_key(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join(name);
    std::fs::copy(workspace_root().join("qemu-tests/keys").join(name), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

/// A NoCloud seed image, as an operator makes one.
fn seed(dir: &Path, name: &str, user_data: &str, meta_data: &str) -> PathBuf {
    let user = dir.join(format!("{name}.user-data"));
    let meta = dir.join(format!("{name}.meta-data"));
    std::fs::write(&user, user_data).unwrap();
    std::fs::write(&meta, meta_data).unwrap();
    let img = dir.join(format!("{name}.img"));
    run(Command::new("cloud-localds")
        .arg(&img)
        .arg(&user)
        .arg(&meta))
    .unwrap();
    img
}

/// Runs `cmd` over SSH as root on the forwarded `port` with `key`.
fn ssh(port: u16, key: &Path, cmd: &str) -> Output {
    output(
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=60",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(key)
            .args(["-p", &port.to_string(), "root@127.0.0.1", cmd]),
    )
    .unwrap()
}

/// Logs in with `key` and runs `cmd`, retrying while the connection itself
/// fails (exit 255 before authentication, e.g. during host key generation).
fn ssh_ok(port: u16, key: &Path, cmd: &str) -> String {
    let what = format!("ssh {cmd:?} with {} to work", key.display());
    wait_until(SSH_TIMEOUT, Duration::from_secs(3), &what, || {
        let out = ssh(port, key, cmd);
        if out.status.success() {
            return Ok(Check::Done(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Permission denied"),
            "ssh {cmd:?} with {}: {:?}\n{err}",
            key.display(),
            out.status
        );
        Ok(Check::NotYet(format!("{:?}\n{err}", out.status)))
    })
    .unwrap()
}

/// A login with `key` is refused (authentication, not connection, fails).
fn assert_refused(port: u16, key: &Path) {
    let what = format!("a refusal for {}", key.display());
    wait_until(SSH_TIMEOUT, Duration::from_secs(3), &what, || {
        let out = ssh(port, key, "true");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} logged in", key.display());
        Ok(if err.contains("Permission denied") {
            Check::Done(())
        } else {
            Check::NotYet(err.into_owned())
        })
    })
    .unwrap()
}

/// Size of the root file system in bytes, from `df`.
fn root_size(vm: &mut Vm) -> u64 {
    let out = vm.sh("df -k /sysroot | tail -n 1").trim().to_string();
    let kib: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("df: {out}"));
    kib * 1024
}

#[test]
fn a_nocloud_seed_names_the_host_and_lets_its_key_in_and_the_root_fills_a_grown_disk() {
    skip_unless_qemu!();
    let image = image(Path::new(MANIFEST));
    let dir = tempfile::tempdir().unwrap();
    let (alpha_key, alpha_pub) = keypair(dir.path(), "alpha");
    let (other_key, _) = keypair(dir.path(), "other");
    let user_data = format!(
        "#cloud-config\nhostname: alpha\nssh_authorized_keys:\n  - {alpha_pub}\nwrite_files:\n  - path: /etc/motd\n    content: welcome to alpha\nberth:\n  service_env:\n    greeter:\n      GREETING: hello-alpha\n"
    );
    let seed = seed(dir.path(), "alpha", &user_data, "instance-id: alpha-1\n");
    let port = free_port().unwrap();
    let mut vm = Vm::boot(
        &image,
        VmOptions {
            extra_drives: vec![seed],
            disk_size: Some(4 * GIB),
            publish: vec![format!("{port}:22").parse().unwrap()],
            ..VmOptions::default()
        },
    )
    .unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let console = vm.console_text();
    assert!(
        console.contains("provisioning: applied alpha-1 from "),
        "{console}"
    );
    assert!(console.contains("root partition grown from"), "{console}");
    assert!(console.contains("root file system grown from"), "{console}");
    assert!(
        console.contains("greeter: GREETING=hello-alpha"),
        "{console}"
    );

    assert_eq!(vm.sh("hostname").trim(), "alpha");
    assert_eq!(vm.sh("cat /etc/motd").trim(), "welcome to alpha");
    assert!(
        vm.sh("cat /var/lib/berth/provisioned")
            .trim()
            .starts_with("alpha-1\n")
    );
    // The 1 GiB image on a 4 GiB disk: the root is the disk less the ESP
    // and ext4's own overhead.
    let size = root_size(&mut vm);
    assert!(
        size > 3 * GIB + GIB / 2 && size < 4 * GIB,
        "root is {size} bytes"
    );

    assert_eq!(ssh_ok(port, &alpha_key, "hostname"), "alpha");
    assert_refused(port, &other_key);
}

#[test]
fn another_vm_from_the_same_image_is_another_machine_through_fw_cfg() {
    skip_unless_qemu!();
    let image = image(Path::new(MANIFEST));
    let dir = tempfile::tempdir().unwrap();
    let (beta_key, beta_pub) = keypair(dir.path(), "beta");
    let (alpha_key, _) = keypair(dir.path(), "alpha");
    let config = dir.path().join("beta.yaml");
    std::fs::write(
        &config,
        format!(
            "#cloud-config\nhostname: beta\nusers:\n  - name: ops\n    ssh_authorized_keys: [{beta_pub}]\nssh_authorized_keys: [{beta_pub}]\n"
        ),
    )
    .unwrap();
    let port = free_port().unwrap();
    let mut vm = Vm::boot(
        &image,
        VmOptions {
            config: Some(config),
            publish: vec![format!("{port}:22").parse().unwrap()],
            ..VmOptions::default()
        },
    )
    .unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let console = vm.console_text();
    assert!(
        console.contains("provisioning: applied sha256:") && console.contains("fw_cfg"),
        "{console}"
    );
    // The image's own disk size: nothing to grow.
    assert!(!console.contains("root partition grown"), "{console}");
    assert_eq!(vm.sh("hostname").trim(), "beta");
    assert!(vm.sh("grep ^ops: /etc/passwd").trim().starts_with("ops:"));
    assert_eq!(ssh_ok(port, &beta_key, "hostname"), "beta");
    assert_refused(port, &alpha_key);
}

#[test]
fn an_invalid_seed_is_reported_and_skipped_and_the_host_gets_ready() {
    skip_unless_qemu!();
    let image = image(Path::new(MANIFEST));
    let dir = tempfile::tempdir().unwrap();
    let seed = seed(
        dir.path(),
        "broken",
        "#cloud-config\nhostname: [broken\n",
        "instance-id: broken-1\n",
    );
    let mut vm = Vm::boot(
        &image,
        VmOptions {
            extra_drives: vec![seed],
            ..VmOptions::default()
        },
    )
    .unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let console = vm.console_text();
    assert!(
        console.contains("provisioning: NoCloud") && console.contains("skipped: user-data:"),
        "{console}"
    );
    assert_eq!(vm.sh("hostname").trim(), "unprovisioned");
    let recorded = vm
        .run_shell("test -e /var/lib/berth/provisioned", SHELL)
        .unwrap();
    assert_ne!(recorded.0, 0, "an invalid document was recorded as applied");
}

/// Image keys are revocable and provisioned keys survive: v1's manifest
/// gives root key A, the fw_cfg document key C; after `berthctl upgrade
/// --reboot` to v2, whose manifest has only key B, A is refused and B and
/// C log in. One VM, two boots.
#[test]
fn an_upgrade_revokes_a_key_dropped_from_the_manifest_and_keeps_provisioned_ones() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/keys-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    server
        .publish(Path::new("qemu-tests/manifests/keys-v2.toml"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_a = test_key(dir.path(), "image-a");
    let key_b = test_key(dir.path(), "image-b");
    let (key_c, pub_c) = keypair(dir.path(), "provisioned-c");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!("#cloud-config\nssh_authorized_keys: [{pub_c}]\n"),
    )
    .unwrap();
    let port = free_port().unwrap();
    let mut vm = Vm::boot(
        &v1,
        VmOptions {
            persistent_copy: true,
            guest_forwards: vec![server.forward()],
            publish: vec![format!("{port}:22").parse().unwrap()],
            config: Some(config),
            ..VmOptions::default()
        },
    )
    .unwrap();
    vm.wait_for("berth-init: ready image=keys version=1.0.0", READY_TIMEOUT)
        .unwrap();
    assert_eq!(
        ssh_ok(port, &key_a, "grep ^VERSION_ID /etc/os-release"),
        "VERSION_ID=1.0.0"
    );
    assert_eq!(ssh_ok(port, &key_c, "echo c"), "c");
    assert_refused(port, &key_b);

    vm.send_line("berthctl upgrade --reboot").unwrap();
    vm.wait_for("it boots next, on trial", Duration::from_secs(300))
        .unwrap();
    vm.wait_for(
        "berth-init: ready image=keys version=2.0.0",
        READY_TIMEOUT * 2,
    )
    .unwrap();
    let keys = vm.sh("cat /root/.ssh/authorized_keys").trim().to_string();
    assert!(!keys.contains("image-a"), "{keys}");
    assert_refused(port, &key_a);
    assert_eq!(
        ssh_ok(port, &key_b, "grep ^VERSION_ID /etc/os-release"),
        "VERSION_ID=2.0.0"
    );
    assert_eq!(ssh_ok(port, &key_c, "echo c"), "c");
}
