//! Containers end to end: images from a real local registry, an OCI
//! archive and a docker archive, built into the OS commit and run by crun
//! under berth-init. A stateless web container is reachable from the host
//! through QEMU port forwarding and runs as its image says, with its
//! limits and hardening (the device cgroup, 0700 roots, nosuid,nodev
//! volumes, masked paths, the pids limit); a killed container comes back
//! while the host's own services keep running; a stateful container keeps
//! its volume across reboots and an upgrade; a build with a bad image fails with a message
//! naming the container and the image, and writes nothing.
//!
//! The fixture (`berth_qemu_tests::containers`) writes the test images
//! from busybox-static, starts Debian's docker-registry on 127.0.0.1 and
//! generates the manifest from `qemu-tests/manifests/containers.toml.in`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_qemu_tests::command::{self, run};
use berth_qemu_tests::containers::{self, GREETING, INDEX_HTML, SUID_PROBE, Setup};
use berth_qemu_tests::oci::{self, Entry, ImageSpec};
use berth_qemu_tests::{
    Check, POWER_OFF_TIMEOUT, READY_TIMEOUT, UpdateServer, Vm, VmOptions, free_port, http,
    skip_unless_qemu, wait_until,
};

const TEMPLATE: &str = "qemu-tests/manifests/containers.toml.in";
const SHELL: Duration = berth_qemu_tests::SHELL_TIMEOUT;
/// A restart under TCG: backoff, crun delete, crun run, readiness.
const RESTART: Duration = Duration::from_secs(120);
/// A pull and deploy under TCG, with the ESP write.
const UPGRADE: Duration = Duration::from_secs(300);

/// Options that publish the web container's port 8080 on `port`.
fn published(port: u16) -> VmOptions {
    VmOptions {
        publish: vec![format!("{port}:8080").parse().unwrap()],
        ..VmOptions::default()
    }
}

/// `berthctl services --json`.
fn services(vm: &mut Vm) -> Vec<serde_json::Value> {
    let out = vm.sh("berthctl services --json");
    let start = out.find('[').unwrap_or(0);
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("services --json: {e}:\n{out}"))
}

fn service(list: &[serde_json::Value], name: &str) -> serde_json::Value {
    list.iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no service {name} in {list:?}"))
}

/// Polls `berthctl services` until `name` satisfies `done`.
fn wait_service(
    vm: &mut Vm,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(
        RESTART,
        Duration::from_secs(1),
        &format!("{name} to be {what}"),
        || {
            let s = service(&services(vm), name);
            Ok(if done(&s) {
                Check::Done(s)
            } else {
                Check::NotYet(s.to_string())
            })
        },
    )
    .unwrap()
}

/// The host PID of container `name`'s first process, from crun's state.
fn container_pid(vm: &mut Vm, name: &str) -> i64 {
    let out = vm.sh(&format!("crun state {name}"));
    let start = out.find('{').unwrap_or(0);
    let state: serde_json::Value = serde_json::from_str(&out[start..])
        .unwrap_or_else(|e| panic!("crun state {name}: {e}:\n{out}"));
    assert_eq!(state["status"], "running", "{state}");
    state["pid"].as_i64().unwrap()
}

/// Waits until this boot's console shows `text` anywhere (before or
/// after the ready line: services start in parallel).
fn wait_console(vm: &mut Vm, text: &str) {
    let what = format!("{text:?} on the console");
    wait_until(RESTART, Duration::from_millis(500), &what, || {
        let console = vm.console_text();
        Ok(if console.contains(text) {
            Check::Done(())
        } else {
            Check::NotYet(format!("the console:\n{console}"))
        })
    })
    .unwrap()
}

fn info_line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{body}"))
}

/// One VM for the stateless checks: the web page from the host, the
/// containers as their images and the manifest say, `berthctl services`
/// and `logs`; then killed containers come back while the host's own
/// service keeps running.
#[test]
fn web_container_serves_the_host_and_killed_containers_come_back() {
    skip_unless_qemu!();
    let image = containers::image(Path::new(TEMPLATE));
    let port = free_port().unwrap();
    let mut vm = Vm::boot(&image, published(port)).unwrap();
    vm.wait_for_ready(READY_TIMEOUT).unwrap();
    let heartbeat = service(&services(&mut vm), "heartbeat");

    // From the host, through QEMU's port forwarding.
    let index = http::get_until(port, "/", 200, Duration::from_secs(60)).unwrap();
    assert_eq!((index.status, index.body.as_str()), (200, INDEX_HTML));
    let old = http::get(port, "/old.html", Duration::from_secs(30)).unwrap();
    assert_eq!(
        old.status, 404,
        "a whiteout in the image's top layer deletes it"
    );

    // What the container sees of itself (a CGI script of the image).
    let info = http::get(port, "/cgi-bin/info", Duration::from_secs(30)).unwrap();
    assert_eq!(info.status, 200, "{info:?}");
    let body = info.body;
    let greeting = GREETING.split_once('=').unwrap().1;
    assert_eq!(info_line(&body, "greeting="), greeting, "image Env");
    assert_eq!(info_line(&body, "site="), "berth", "manifest env");
    assert_eq!(info_line(&body, "uid="), "33", "image User www");
    assert_eq!(info_line(&body, "memory.max="), "67108864", "memory = 64M");
    assert_eq!(info_line(&body, "cpu.max="), "50000 100000", "cpus = 0.5");
    assert_eq!(info_line(&body, "root="), "read-only");
    assert_eq!(info_line(&body, "tmp="), "writable", "tmpfs /tmp");
    assert_eq!(info_line(&body, "NoNewPrivs:"), "1");
    assert_eq!(info_line(&body, "Seccomp:"), "2", "a seccomp filter");
    assert_eq!(
        info_line(&body, "CapBnd:"),
        "00000000a80425fb",
        "Docker's default capabilities"
    );
    assert_eq!(
        info_line(&body, "CapEff:"),
        "0000000000000000",
        "a non-root user has none"
    );
    assert_eq!(info_line(&body, "CapAmb:"), "0000000000000000");

    // The same from the guest: the container's cgroup, its root.
    assert_eq!(
        vm.sh("cat /sys/fs/cgroup/berth/web/memory.max").trim(),
        "67108864"
    );
    assert_eq!(
        vm.sh("cat /sys/fs/cgroup/berth/web/cpu.max").trim(),
        "50000 100000"
    );
    let (code, out) = vm
        .run_shell("crun exec --user 0 web touch /written", SHELL)
        .unwrap();
    assert_ne!(code, 0, "root could write to the container's /: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(
        vm.sh("crun exec --user 0 web sh -c 'echo ok > /tmp/t && cat /tmp/t'")
            .trim(),
        "ok"
    );
    assert_eq!(vm.sh("crun exec web hostname").trim(), "web");
    // Namespaces: its own pid, mount, ipc, uts; the host's network.
    let pid = container_pid(&mut vm, "web");
    for ns in ["pid", "mnt", "ipc", "uts"] {
        let (host, container) = (
            vm.sh(&format!("readlink /proc/1/ns/{ns}")),
            vm.sh(&format!("readlink /proc/{pid}/ns/{ns}")),
        );
        assert_ne!(host, container, "{ns} namespace shared with the host");
    }
    assert_eq!(
        vm.sh("readlink /proc/1/ns/net"),
        vm.sh(&format!("readlink /proc/{pid}/ns/net")),
        "network = host"
    );
    // network = "none": loopback only.
    let links = vm.sh("crun exec counter cat /proc/net/dev");
    assert!(links.contains("lo:") && !links.contains("eth0"), "{links}");

    confinement_holds(&mut vm);

    // berthctl knows them as containers, with state, PID and logs.
    let list = services(&mut vm);
    for name in ["web", "counter", "idle"] {
        let s = service(&list, name);
        assert_eq!(s["kind"], "container", "{s}");
        assert_eq!(s["state"], "ready", "{s}");
        assert!(s["pid"].as_i64().is_some_and(|p| p > 1), "{s}");
        assert_eq!(s["restarts"], 0, "{s}");
    }
    // The table a user reads says so too.
    let table = vm.sh("berthctl services");
    for name in ["web", "counter", "idle"] {
        let row: Vec<&str> = table
            .lines()
            .map(str::split_whitespace)
            .map(Iterator::collect)
            .find(|r: &Vec<&str>| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{table}"));
        assert_eq!(row[1..3], ["container", "ready"], "{table}");
    }
    let logs = vm.sh("berthctl logs counter");
    assert!(
        logs.contains(&format!("counter: start 1 in /tmp, {greeting}")),
        "command override keeps the image's WorkingDir and Env:\n{logs}"
    );
    assert!(
        vm.sh("berthctl logs idle").contains("idle up in /tmp"),
        "the docker archive's Entrypoint + Cmd ran"
    );

    // The container's own process dies: crun exits, berth-init restarts it.
    let web = container_pid(&mut vm, "web");
    vm.sh(&format!("kill -9 {web}"));
    let s = wait_service(&mut vm, "web", "restarted and ready", |s| {
        s["restarts"] == 1 && s["state"] == "ready"
    });
    assert_eq!(s["last_exit"], "exit 137", "{s}");
    assert_ne!(container_pid(&mut vm, "web"), web);
    let page = http::get_until(port, "/", 200, RESTART).unwrap();
    assert_eq!(page.body, INDEX_HTML);

    // crun itself dies: its container is left running with its state in
    // /run/crun, and the restart must clean that up, not fail on it.
    let idle_crun = service(&services(&mut vm), "idle")["pid"].as_i64().unwrap();
    let idle = container_pid(&mut vm, "idle");
    vm.sh(&format!("kill -9 {idle_crun}"));
    wait_service(&mut vm, "idle", "restarted and ready", |s| {
        s["restarts"] == 1 && s["state"] == "ready"
    });
    let new_idle = container_pid(&mut vm, "idle");
    assert_ne!(new_idle, idle);
    let (code, _) = vm
        .run_shell(&format!("test -d /proc/{idle}"), SHELL)
        .unwrap();
    assert_ne!(code, 0, "the orphaned container {idle} still runs");
    let listed = vm.sh("crun list");
    assert_eq!(listed.matches("\nidle ").count(), 1, "{listed}");

    // `berthctl restart`: httpd, PID 1 of its namespace, ignores SIGTERM,
    // so this is the whole stop path: signal, stop-timeout, kill, delete.
    let (crun_pid, web) = (
        service(&services(&mut vm), "web")["pid"].clone(),
        container_pid(&mut vm, "web"),
    );
    vm.sh("berthctl restart web");
    wait_service(&mut vm, "web", "restarted by berthctl", |s| {
        s["restarts"] == 2 && s["state"] == "ready" && s["pid"] != crun_pid
    });
    assert_ne!(container_pid(&mut vm, "web"), web);
    let page = http::get_until(port, "/", 200, RESTART).unwrap();
    assert_eq!(page.body, INDEX_HTML);

    // Meanwhile the host's own service never stopped.
    let list = services(&mut vm);
    let now = service(&list, "heartbeat");
    assert_eq!(now["pid"], heartbeat["pid"], "{now}");
    assert_eq!(now["restarts"], 0, "{now}");
    assert_eq!(service(&list, "counter")["restarts"], 0);
}

/// What keeps container root in and host users out, on the booted host:
/// the device cgroup, the 0700 roots, volumes mounted nosuid,nodev, set-id
/// bits dropped from images, masked paths and the pids limit.
fn confinement_holds(vm: &mut Vm) {
    // Container root makes a node for the host's disk (major:minor from
    // sysfs) in /dev, in /tmp and in its volume, and reads it: nothing.
    // The host itself reads the disk, so the refusal is the container's.
    assert_eq!(vm.sh("head -c 512 /dev/vda | wc -c").trim(), "512");
    let probe = r#"crun exec counter sh -c 'set -- $(tr : " " < /sys/block/vda/dev); for d in /dev /tmp /data; do if mknod $d/disk b $1 $2 2>/dev/null; then if head -c 512 $d/disk >/tmp/out 2>/tmp/err; then echo "$d: read $(wc -c </tmp/out) bytes"; else echo "$d: refused: $(cat /tmp/err)"; fi; rm -f $d/disk; else echo "$d: mknod refused"; fi; done'"#;
    let out = vm.sh(probe);
    for dir in ["/dev", "/tmp", "/data"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{dir}: ")))
            .unwrap_or_else(|| panic!("no {dir} line in:\n{out}"));
        assert!(
            line.contains("refused"),
            "container root read the host's disk through {dir}:\n{out}"
        );
    }
    // The standard devices still work.
    assert_eq!(
        vm.sh("crun exec counter sh -c 'head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok'"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["4", "4", "null-ok"]
    );
    // Volumes are mounted nosuid,nodev in the container.
    let mount = vm.sh("crun exec counter grep ' /data ' /proc/self/mounts");
    for option in ["nosuid", "nodev"] {
        assert!(mount.contains(option), "/data without {option}: {mount}");
    }

    // The bundles and the volume root are root's alone.
    let modes = vm.sh("stat -c '%a %U %n' /usr/lib/berth/containers /usr/lib/berth/containers/web /usr/lib/berth/containers/web/config.json /var/lib/berth/volumes",
    );
    let modes: Vec<&str> = modes.lines().map(str::trim).collect();
    assert_eq!(
        modes,
        [
            "700 root /usr/lib/berth/containers",
            "700 root /usr/lib/berth/containers/web",
            "600 root /usr/lib/berth/containers/web/config.json",
            "700 root /var/lib/berth/volumes",
        ]
    );
    // Container root leaves a set-user-ID root shell in its volume; a
    // host user (nobody) can neither run it nor read the bundles.
    vm.sh("crun exec counter sh -c 'cp /bin/busybox /data/sh && chmod 4755 /data/sh'");
    assert_eq!(
        vm.sh("stat -c '%a %U' /var/lib/berth/volumes/counter/data/sh")
            .trim(),
        "4755 root",
        "the set-user-ID program is really there"
    );
    let user = vm.sh("busybox su -s /bin/sh nobody -c 'id -u; for p in /var/lib/berth/volumes/counter/data/sh /usr/lib/berth/containers/web/config.json /usr/lib/berth/containers/web/rootfs/bin/busybox; do if cat $p >/dev/null 2>&1; then echo reached $p; else echo refused $p; fi; done; if /var/lib/berth/volumes/counter/data/sh -c true 2>/dev/null; then echo ran the shell; else echo exec refused; fi'",
    );
    let user: Vec<&str> = user.lines().map(str::trim).collect();
    assert_eq!(
        user,
        [
            "65534",
            "refused /var/lib/berth/volumes/counter/data/sh",
            "refused /usr/lib/berth/containers/web/config.json",
            "refused /usr/lib/berth/containers/web/rootfs/bin/busybox",
            "exec refused",
        ]
    );
    vm.sh("rm /var/lib/berth/volumes/counter/data/sh");
    // An image's set-user-ID file arrives without the bit. Deployed files
    // are hard links to the objects of the host's OSTree repository, which
    // any host user can read: one inode, so the object has no bit either.
    let probe = vm.sh(&format!(
        "stat -c '%a %h' /usr/lib/berth/containers/idle/rootfs/{SUID_PROBE}"
    ));
    let (mode, links) = probe.trim().split_once(' ').unwrap();
    assert_eq!(mode, "755", "{SUID_PROBE} kept its set-id bit");
    assert!(
        links.parse::<u32>().is_ok_and(|n| n >= 2),
        "{SUID_PROBE} is not the repository's object: {probe}"
    );
    assert_eq!(
        vm.sh("find /usr/lib/berth/containers -type f -perm /6000")
            .trim(),
        "",
        "set-id files in the bundles (and so in /sysroot/ostree/repo)"
    );

    // Masked paths: /sys/firmware (which the host has) reads empty. QEMU
    // has no RAPL, so /sys/devices/virtual/powercap exists only on real
    // hardware: there it is masked the same way, by the same list.
    assert_ne!(vm.sh("ls -A /sys/firmware").trim(), "");
    assert_eq!(vm.sh("crun exec idle ls -A /sys/firmware").trim(), "");
    let (code, _) = vm
        .run_shell("test -e /sys/devices/virtual/powercap", SHELL)
        .unwrap();
    if code == 0 {
        assert_eq!(
            vm.sh("crun exec idle ls -A /sys/devices/virtual/powercap")
                .trim(),
            ""
        );
    }
    assert!(
        vm.sh("cat /usr/lib/berth/containers/idle/config.json")
            .contains("\"/sys/devices/virtual/powercap\""),
        "powercap is not in the masked paths"
    );

    // The pids limit: the default, the manifest's, and a fork loop that
    // runs into it.
    assert_eq!(
        vm.sh("cat /sys/fs/cgroup/berth/web/pids.max").trim(),
        "2048"
    );
    assert_eq!(vm.sh("cat /sys/fs/cgroup/berth/idle/pids.max").trim(), "32");
    let (_, forks) = vm
        .run_shell(
            "crun exec idle sh -c 'i=0; while [ $i -lt 64 ]; do sleep 61 & i=$((i+1)); done; echo all 64 started'",
            SHELL,
        )
        .unwrap();
    assert!(
        forks.contains("can't fork") && !forks.contains("all 64 started"),
        "64 processes in a container limited to 32:\n{forks}"
    );
    let events = vm.sh("cat /sys/fs/cgroup/berth/idle/pids.events");
    assert!(
        events
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "pids.events: {events}"
    );
    // The loop's sleeps fill the container (not even `crun exec` can fork
    // there): end them from the host, and the container is usable again.
    vm.sh(r#"for p in $(cat /sys/fs/cgroup/berth/idle/cgroup.procs); do [ "$(tr '\0' ' ' < /proc/$p/cmdline)" = "sleep 61 " ] && kill $p; done; true"#,
    );
    // Sooner than the sleeps would end by themselves.
    wait_until(
        Duration::from_secs(45),
        Duration::from_millis(500),
        "idle to take `crun exec` again after the kill (it stays full)",
        || {
            let (code, out) = vm.run_shell("crun exec idle true", SHELL).unwrap();
            Ok(if code == 0 {
                Check::Done(())
            } else {
                Check::NotYet(format!("exit {code}: {out}"))
            })
        },
    )
    .unwrap();
}

/// Powers off and checks the containers stopped in order: the stop
/// signal reaches a container that handles it (crun forwards it).
fn power_off_cleanly(vm: &mut Vm) {
    let mark = vm.console_text().len();
    vm.power_off_and_wait(POWER_OFF_TIMEOUT).unwrap();
    let shutdown = vm.console_text()[mark..].to_string();
    for line in [
        "[counter] counter stopping",
        "counter: stopped (exit 0)",
        "[idle] idle stopping",
        "idle: stopped (exit 0)",
        "web: stopped",
    ] {
        assert!(
            shutdown.contains(line),
            "no {line:?} at shutdown:\n{shutdown}"
        );
    }
}

#[test]
fn volumes_keep_their_data_across_reboots() {
    skip_unless_qemu!();
    let image = containers::image(Path::new(TEMPLATE));
    let options = VmOptions {
        persistent_copy: true,
        ..VmOptions::default()
    };
    let mut vm = Vm::boot(&image, options.clone()).unwrap();
    for boot in 1..=3 {
        if boot > 1 {
            power_off_cleanly(&mut vm);
            vm = vm.reboot_from(options.clone()).unwrap();
        }
        vm.wait_for_ready(READY_TIMEOUT).unwrap();
        wait_console(&mut vm, &format!("counter: start {boot} in /tmp"));
    }
    assert_eq!(
        vm.sh("cat /var/lib/berth/volumes/counter/data/count")
            .trim(),
        "3"
    );
    assert!(
        !vm.console_text().contains("recovery complete"),
        "ext4 replayed its journal: unclean shutdown"
    );
}

#[test]
fn containers_and_their_data_follow_an_upgrade() {
    skip_unless_qemu!();
    let setup = Setup::start().unwrap();
    let v1 = setup.image(Path::new(TEMPLATE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v2 = setup
        .manifest(Path::new(TEMPLATE), &dir.path().join("containers.toml"))
        .unwrap();
    let text = std::fs::read_to_string(&v2).unwrap();
    let text = text
        .replace("version = \"1.0.0\"", "version = \"2.0.0\"")
        .replace("SITE = \"berth\"", "SITE = \"berth-two\"");
    std::fs::write(&v2, text).unwrap();
    let server = UpdateServer::start(&v1).unwrap();
    server.publish(&v2).unwrap();
    drop(setup); // the registry is needed only to build

    let port = free_port().unwrap();
    let options = VmOptions {
        persistent_copy: true,
        guest_forwards: vec![server.forward()],
        ..published(port)
    };
    let mut vm = Vm::boot(&v1, options).unwrap();
    vm.wait_for("ready image=containers version=1.0.0", READY_TIMEOUT)
        .unwrap();
    wait_console(&mut vm, "counter: start 1 in");
    let info = http::get_until(port, "/cgi-bin/info", 200, RESTART).unwrap();
    assert_eq!(info_line(&info.body, "site="), "berth");

    vm.send_line("berthctl upgrade --reboot").unwrap();
    vm.wait_for("it boots next, on trial", UPGRADE).unwrap();
    vm.wait_for("ready image=containers version=2.0.0", READY_TIMEOUT * 2)
        .unwrap();
    wait_console(&mut vm, "counter: start 2 in");
    // The new version's container configuration, the same volume.
    let info = http::get_until(port, "/cgi-bin/info", 200, RESTART).unwrap();
    assert_eq!(info_line(&info.body, "site="), "berth-two");
    assert_eq!(
        vm.sh("cat /var/lib/berth/volumes/counter/data/count")
            .trim(),
        "2"
    );
}

/// What `berth build` must leave alone: the image file (same inode, size,
/// time) and the repository's ref, and no stray files next to them.
fn snapshot(out: &Path) -> (Vec<String>, (u64, u64, i64), String) {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let m = std::fs::metadata(out.join("containers.raw")).unwrap();
    let head = std::fs::read_to_string(out.join("repo/refs/heads/berth/containers/x86_64"))
        .unwrap_or_default();
    (names, (m.ino(), m.len(), m.mtime()), head)
}

/// A one-container manifest naming `image`.
fn broken_manifest(dir: &Path, image: &str) -> PathBuf {
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"containers\"\nversion = \"1.0.1\"\n\n[source]\npackages = [\"busybox-static\", \"crun\"]\n\n[[container]]\nname = \"broken\"\nimage = \"{image}\"\n"
        ),
    )
    .unwrap();
    path
}

/// A layout whose only layer blob no longer matches its digest.
fn corrupt_layout(dir: &Path) -> String {
    // Unique content: skopeo must not find the blob in the cache already.
    let unique = format!("{:?} {}", Instant::now(), std::process::id());
    let spec = ImageSpec {
        layers: vec![vec![Entry::File("id".into(), unique.into_bytes(), 0o644)]],
        cmd: vec!["/id".into()],
        ..ImageSpec::default()
    };
    let img = oci::write_layout(dir, "1", &spec).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest_path = dir.join("blobs/sha256").join(&manifest_digest[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = dir.join("blobs/sha256").join(&layer[7..]);
    let mut data = std::fs::read(&blob).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    img.reference()
}

#[test]
fn bad_images_fail_the_build_naming_container_and_image() {
    // No QEMU needed: only `berth build`, skopeo and the registry.
    let setup = Setup::start().unwrap();
    let good = setup.image(Path::new(TEMPLATE)).unwrap();
    let out = tempfile::tempdir().unwrap();
    run(Command::new("cp")
        .args(["-a", "--sparse=always", "--reflink=auto"])
        .arg(&good)
        .arg(good.with_file_name("repo"))
        .arg(out.path()))
    .unwrap();
    let before = snapshot(out.path());

    let inputs = tempfile::tempdir().unwrap();
    let arm = oci::write_layout(
        &inputs.path().join("arm"),
        "1",
        &ImageSpec {
            layers: vec![vec![Entry::File("hello".into(), b"hi".to_vec(), 0o755)]],
            cmd: vec!["/hello".into()],
            architecture: Some("arm64".into()),
            ..ImageSpec::default()
        },
    )
    .unwrap();
    let corrupt = corrupt_layout(&inputs.path().join("corrupt"));
    let port = setup.registry.port;
    let cases = [
        (
            format!("docker://127.0.0.1:{port}/demo/missing:1"),
            "manifest unknown",
        ),
        // Nothing listens on port 9 (discard) of loopback.
        (
            "docker://127.0.0.1:9/demo/httpd:1".into(),
            "connection refused",
        ),
        ("ftp://example.com/demo/httpd:1".into(), "known transport"),
        (
            format!("oci-archive:{}/none.tar", inputs.path().display()),
            "no such file",
        ),
        (arm.reference(), "linux/arm64, not linux/amd64"),
        (corrupt, "digest"),
    ];
    let build = |manifest: &Path, output: &Path| {
        command::output(
            Command::new(berth_qemu_tests::fixture::berth_bin())
                .arg("build")
                .arg(manifest)
                .arg("--output")
                .arg(output),
        )
        .unwrap()
    };
    // Into an output directory that does not exist yet: not even that
    // directory is created.
    let fresh = inputs.path().join("fresh-output");
    let result = build(&broken_manifest(inputs.path(), &cases[0].0), &fresh);
    assert_eq!(result.status.code(), Some(2));
    assert!(
        !fresh.exists(),
        "a failed build created {}",
        fresh.display()
    );

    for (image, why) in cases {
        let manifest = broken_manifest(inputs.path(), &image);
        let result = build(&manifest, out.path());
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{image}: {stderr}");
        assert!(
            stderr.contains("container \"broken\""),
            "{image}: the message does not name the container:\n{stderr}"
        );
        assert!(
            stderr.contains(&image),
            "{image}: the message does not name the image:\n{stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(why),
            "{image}: expected {why:?} in:\n{stderr}"
        );
        assert_eq!(
            snapshot(out.path()),
            before,
            "{image}: the build touched the output"
        );
    }
}
