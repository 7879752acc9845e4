//! The OCI runtime configuration (`config.json`) of a container bundle,
//! made with the oci-spec crate: the image's process settings (or the
//! manifest's), a read-only root with tmpfs /tmp and /run, Docker's default
//! capability set, no-new-privileges, the default seccomp profile of
//! containers-common (the one podman and crun use), Docker's device cgroup
//! and masked paths, namespaces, cgroup v2 limits and the manifest's
//! volumes.

use std::collections::{BTreeMap, HashSet};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

/// Docker's default capability set.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Where the build machine has containers-common's default seccomp profile.
pub const SECCOMP_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// The character devices a container may read and write (type, major,
/// minor; `None` for any minor), after the device cgroup denied all: the
/// nodes the runtime puts in `/dev` and nothing else, as Docker's default
/// list. Without a deny-all rule crun installs no device filter at all,
/// and container root could `mknod` a node for the host's disk and read or
/// rewrite it.
pub const ALLOWED_DEVICES: [(char, i64, Option<i64>, &str); 9] = [
    ('c', 1, Some(3), "null"),
    ('c', 1, Some(5), "zero"),
    ('c', 1, Some(7), "full"),
    ('c', 1, Some(8), "random"),
    ('c', 1, Some(9), "urandom"),
    ('c', 5, Some(0), "tty"),
    ('c', 5, Some(1), "console"),
    ('c', 5, Some(2), "ptmx"),
    ('c', 136, None, "pts/*"),
];

/// Paths the runtime hides (a read-only empty tmpfs over a directory,
/// /dev/null over a file): Docker's default list, with
/// `/sys/devices/virtual/powercap` (energy counters, a side channel on
/// what other processes compute: CVE-2020-8694; Docker masks it since
/// version 25) and `/proc/interrupts`, as recent Docker releases do.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths bound read-only over themselves: Docker's default list.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default `pids.max` of a container (manifest key `pids-limit`):
/// Podman's default, enough for any ordinary service, few enough that a
/// fork bomb in one container cannot take the host's PIDs.
pub const DEFAULT_PIDS_LIMIT: i64 = 2048;

/// The largest `pids-limit`: the kernel's own ceiling for PIDs on 64-bit
/// (`PID_MAX_LIMIT`).
pub const MAX_PIDS_LIMIT: i64 = 4 * 1024 * 1024;

/// The mount options of a volume inside the container: a device node or a
/// set-id program that container root writes there must not work, there
/// or anywhere else.
pub const VOLUME_OPTIONS: [&str; 4] = ["rbind", "rw", "nosuid", "nodev"];

/// How a container reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace.
    Host,
    /// A namespace of its own with only loopback.
    None,
}

/// A persistent volume: host directory bound at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Volume name (directory under the container's volume folder).
    pub name: String,
    /// Where it appears in the container.
    pub target: String,
}

/// Everything the runtime configuration is made from.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name (hostname in its UTS namespace).
    pub name: String,
    /// Program and arguments.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// uid and gid.
    pub user: (u32, u32),
    /// Network mode.
    pub network: NetworkMode,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in CPUs (0.5 = half a CPU).
    pub cpus: Option<f64>,
    /// `pids.max`: how many processes and threads the container may have.
    pub pids_limit: i64,
    /// Volumes and the host directory holding them.
    pub volumes: Vec<Volume>,
    /// Host directory of this container's volumes.
    pub volume_dir: String,
}

/// Where a container's volumes live on the host: under /var, so they
/// survive upgrades and rollbacks, and below the volume root that
/// berth-init keeps at mode 0700.
pub fn volume_dir(container: &str) -> String {
    format!("{}/{container}", berth_hostapi::config::VOLUMES_ROOT)
}

/// The environment: the image's, then the manifest's on top, with a PATH.
pub fn merge_env(image: &[String], manifest: &BTreeMap<String, String>) -> Vec<String> {
    let mut vars: Vec<(String, String)> = image
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (k, v) in manifest {
        vars.retain(|(ek, _)| ek != k);
        vars.push((k.clone(), v.clone()));
    }
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn mount(
    dest: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
) -> Result<LinuxDeviceCgroup, oci_spec::OciSpecError> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(typ)
        .access("rwm");
    if let Some(major) = major {
        b = b.major(major);
    }
    if let Some(minor) = minor {
        b = b.minor(minor);
    }
    b.build()
}

/// The device cgroup: deny everything, then allow [`ALLOWED_DEVICES`].
/// (crun appends its own list, which also lets `mknod` make any node,
/// never open it, and allows /dev/net/tun, useless without
/// CAP_NET_ADMIN.)
pub fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, oci_spec::OciSpecError> {
    let mut rules = vec![device_rule(false, LinuxDeviceType::A, None, None)?];
    for (_, major, minor, _) in ALLOWED_DEVICES {
        rules.push(device_rule(true, LinuxDeviceType::C, Some(major), minor)?);
    }
    Ok(rules)
}

fn namespace(t: LinuxNamespaceType) -> Result<LinuxNamespace, oci_spec::OciSpecError> {
    LinuxNamespaceBuilder::default().typ(t).build()
}

/// Converts containers-common's seccomp profile (with its per-arch and
/// per-capability conditions) to the OCI runtime form for x86-64 and the
/// capabilities the container has, as podman does.
pub fn seccomp_from_profile(
    profile: &serde_json::Value,
    caps: &[&str],
) -> Result<LinuxSeccomp, String> {
    let arches = ["amd64", "x86_64", "x32", "386"];
    let list = |v: Option<&serde_json::Value>, key: &str| -> Vec<String> {
        v.and_then(|o| o.get(key))
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut syscalls = Vec::new();
    for rule in profile["syscalls"]
        .as_array()
        .ok_or("seccomp profile has no syscalls")?
    {
        let inc = rule.get("includes");
        let exc = rule.get("excludes");
        let inc_arch = list(inc, "arches");
        if !inc_arch.is_empty() && !inc_arch.iter().any(|a| arches.contains(&a.as_str())) {
            continue;
        }
        if list(exc, "arches")
            .iter()
            .any(|a| arches.contains(&a.as_str()))
        {
            continue;
        }
        let inc_caps = list(inc, "caps");
        if !inc_caps.is_empty() && !inc_caps.iter().all(|c| caps.contains(&c.as_str())) {
            continue;
        }
        if list(exc, "caps").iter().any(|c| caps.contains(&c.as_str())) {
            continue;
        }
        let mut out = serde_json::json!({ "names": rule["names"], "action": rule["action"] });
        if let Some(args) = rule
            .get("args")
            .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        {
            out["args"] = args.clone();
        }
        if let Some(e) = rule.get("errnoRet").filter(|e| !e.is_null()) {
            out["errnoRet"] = e.clone();
        }
        syscalls.push(out);
    }
    let mut oci = serde_json::json!({
        "defaultAction": profile["defaultAction"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    });
    if let Some(e) = profile.get("defaultErrnoRet").filter(|e| !e.is_null()) {
        oci["defaultErrnoRet"] = e.clone();
    }
    serde_json::from_value(oci).map_err(|e| format!("converting the seccomp profile: {e}"))
}

/// The capability names (`CAP_*`) of [`DEFAULT_CAPS`].
pub fn default_cap_names() -> Vec<String> {
    // oci-spec displays capabilities without their CAP_ prefix.
    DEFAULT_CAPS.iter().map(|c| format!("CAP_{c}")).collect()
}

/// Builds the runtime configuration.
pub fn build(
    c: &ContainerSpec,
    seccomp: Option<LinuxSeccomp>,
) -> Result<Spec, oci_spec::OciSpecError> {
    let caps: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(c.args.clone())
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .user(UserBuilder::default().uid(c.user.0).gid(c.user.1).build()?)
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                // Empty, as Docker has them since CVE-2022-24769: oci-spec's
                // defaults would hand KILL, NET_BIND_SERVICE and AUDIT_WRITE
                // to a non-root user as ambient capabilities.
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .build()?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=755"])?,
    ];
    if c.network == NetworkMode::Host {
        mounts.push(mount(
            "/etc/resolv.conf",
            "bind",
            "/etc/resolv.conf",
            &["rbind", "ro"],
        )?);
        mounts.push(mount("/etc/hosts", "bind", "/etc/hosts", &["rbind", "ro"])?);
    }
    for v in &c.volumes {
        let src = format!("{}/{}", c.volume_dir, v.name);
        mounts.push(mount(&v.target, "bind", &src, &VOLUME_OPTIONS)?);
    }
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid)?,
        namespace(LinuxNamespaceType::Mount)?,
        namespace(LinuxNamespaceType::Ipc)?,
        namespace(LinuxNamespaceType::Uts)?,
        namespace(LinuxNamespaceType::Cgroup)?,
    ];
    if c.network == NetworkMode::None {
        namespaces.push(namespace(LinuxNamespaceType::Network)?);
    }
    let mut resources = LinuxResourcesBuilder::default()
        .devices(device_rules()?)
        .pids(LinuxPidsBuilder::default().limit(c.pids_limit).build()?);
    if let Some(m) = c.memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).build()?);
    }
    if let Some(cpus) = c.cpus {
        let period = 100_000u64;
        let quota = (cpus * period as f64).round() as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota)
                .build()?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(format!("/berth/{}", c.name))
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec());
    if let Some(s) = seccomp {
        linux = linux.seccomp(s);
    }
    let mut spec = Spec::default();
    spec.set_hostname(Some(c.name.clone()));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()?,
    ));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux.build()?));
    Ok(spec)
}

/// `config.json` text of `spec`, the same for the same spec: oci-spec
/// keeps capabilities in hash sets, whose order changes from one run to
/// the next, so their lists are sorted (the OS commit must be
/// reproducible).
pub fn to_json(spec: &Spec) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(serde_json::Value::as_object_mut)
    {
        for list in caps.values_mut() {
            if let Some(items) = list.as_array_mut() {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "web".into(),
            args: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: (0, 0),
            network: NetworkMode::Host,
            memory: Some(128 << 20),
            cpus: Some(0.5),
            pids_limit: 300,
            volumes: vec![Volume {
                name: "data".into(),
                target: "/data".into(),
            }],
            volume_dir: volume_dir("web"),
        }
    }

    #[test]
    fn config_has_the_limits_and_hardening() {
        let s = build(&spec(), None).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            ns,
            ["pid", "mount", "ipc", "uts", "cgroup"],
            "host network: no network namespace"
        );
        let mounts = json["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["source"], "/var/lib/berth/volumes/web/data");
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs")
        );
        let mut none = spec();
        none.network = NetworkMode::None;
        let s = build(&none, None).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert!(
            json["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        );
    }

    #[test]
    fn devices_are_denied_but_the_standard_few() {
        let json = serde_json::to_value(build(&spec(), None).unwrap()).unwrap();
        let rules = json["linux"]["resources"]["devices"].as_array().unwrap();
        // First: deny everything, of any type (crun reads the list in
        // order, the last matching rule deciding).
        assert_eq!(
            rules[0],
            serde_json::json!({"allow": false, "type": "a", "access": "rwm"})
        );
        let allowed: Vec<String> = rules[1..]
            .iter()
            .map(|r| {
                assert_eq!(r["allow"], true, "{r}");
                assert_eq!(r["type"], "c", "only character devices: {r}");
                let minor = r["minor"].as_i64().map_or("*".into(), |m| m.to_string());
                format!("{}:{minor} {}", r["major"], r["access"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            allowed,
            [
                "1:3 rwm",
                "1:5 rwm",
                "1:7 rwm",
                "1:8 rwm",
                "1:9 rwm",
                "5:0 rwm",
                "5:1 rwm",
                "5:2 rwm",
                "136:* rwm"
            ]
        );
        // /dev is where the allowed nodes live: no set-id programs there.
        let mounts = json["mounts"].as_array().unwrap();
        let dev = mounts.iter().find(|m| m["destination"] == "/dev").unwrap();
        assert!(
            dev["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "nosuid"),
            "{dev}"
        );
    }

    #[test]
    fn volumes_are_nosuid_and_nodev() {
        let json = serde_json::to_value(build(&spec(), None).unwrap()).unwrap();
        let mounts = json["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        let options: Vec<&str> = data["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        for want in ["rbind", "rw", "nosuid", "nodev"] {
            assert!(options.contains(&want), "{want} missing: {data}");
        }
    }

    #[test]
    fn masked_paths_and_the_pids_limit() {
        let json = serde_json::to_value(build(&spec(), None).unwrap()).unwrap();
        let masked: Vec<&str> = json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        for path in [
            "/sys/devices/virtual/powercap",
            "/sys/firmware",
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
        ] {
            assert!(masked.contains(&path), "{path} is not masked: {masked:?}");
        }
        let readonly = json["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(readonly.iter().any(|p| p == "/proc/sys"), "{readonly:?}");
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 300);
    }

    #[test]
    fn no_inheritable_or_ambient_capabilities() {
        let json = serde_json::to_value(build(&spec(), None).unwrap()).unwrap();
        let caps = &json["process"]["capabilities"];
        assert_eq!(caps["inheritable"], serde_json::json!([]));
        assert_eq!(caps["ambient"], serde_json::json!([]));
    }

    #[test]
    fn config_json_is_reproducible() {
        let first = to_json(&build(&spec(), None).unwrap()).unwrap();
        for _ in 0..8 {
            assert_eq!(to_json(&build(&spec(), None).unwrap()).unwrap(), first);
        }
        let json: serde_json::Value = serde_json::from_str(&first).unwrap();
        let bounding: Vec<&str> = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let mut sorted = bounding.clone();
        sorted.sort();
        assert_eq!(bounding, sorted);
    }

    #[test]
    fn env_merges_and_overrides() {
        let env = merge_env(
            &["A=1".into(), "B=2".into()],
            &BTreeMap::from([("B".into(), "3".into())]),
        );
        assert_eq!(env[0].split('=').next(), Some("PATH"));
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"B=3".to_string()));
        assert!(!env.contains(&"B=2".to_string()));
    }

    #[test]
    fn seccomp_profile_conditions_are_resolved() {
        let profile = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
                {"names": ["arm_only"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"arches": ["arm64"]}, "excludes": {}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"arches": ["amd64"]}, "excludes": {}},
                {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": ["CAP_SYS_BOOT"]}, "excludes": {}},
                {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": ["CAP_CHOWN"]}, "excludes": {}}
            ]
        });
        let names = default_cap_names();
        let caps: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = seccomp_from_profile(&profile, &caps).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        let allowed: Vec<&str> = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["names"][0].as_str().unwrap())
            .collect();
        assert_eq!(allowed, ["read", "arch_prctl", "chown"]);
        assert_eq!(json["defaultErrnoRet"], 38);
    }

    #[test]
    fn the_real_profile_converts() {
        let text = std::fs::read_to_string(SECCOMP_PROFILE)
            .expect("containers-common's seccomp.json (install-deps installs it)");
        let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names = default_cap_names();
        let caps: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = seccomp_from_profile(&profile, &caps).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        let rules = json["syscalls"].as_array().unwrap();
        let action_of = |name: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .map(|r| r["action"].as_str().unwrap())
                .collect()
        };
        assert_eq!(action_of("read"), ["SCMP_ACT_ALLOW"]);
        assert_eq!(action_of("arch_prctl"), ["SCMP_ACT_ALLOW"]);
        assert_eq!(
            action_of("chroot"),
            ["SCMP_ACT_ALLOW"],
            "CAP_SYS_CHROOT is in Docker's set"
        );
        assert_eq!(
            action_of("delete_module"),
            ["SCMP_ACT_ERRNO"],
            "no CAP_SYS_MODULE: loading modules is refused"
        );
        assert_eq!(action_of("kexec_load"), ["SCMP_ACT_ERRNO"]);
        assert!(
            action_of("arm_fadvise64_64").is_empty(),
            "other architectures' rules are dropped"
        );
    }
}
