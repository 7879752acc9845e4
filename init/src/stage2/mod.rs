//! Stage 2, PID 1 in the booted deployment: the remaining mounts, host
//! configuration, hostname, modules, ESP and efivarfs, sysctls, /var,
//! network, then the supervisor until shutdown.
//!
//! Expected in the deployment: /usr/lib/berth/host.json (the host
//! configuration), /lib/modules/<release>/ (modules.dep, modules.alias),
//! /etc/passwd and /etc/group for service users, optionally /bin/sh (debug
//! shell), `ip` (static network) and /usr/bin/berthctl (boot check).
//!
//! This directory holds what only stage 2 runs before and beside the
//! supervisor: [`bless`] (boot counting), [`coldplug`], [`growroot`],
//! [`network`], [`sysctl`], [`oneshot`] (provisioning) and [`fault`]
//! (fault injection). What stage 1 uses too is at the top of the crate;
//! the supervisor has its own directory.

mod bless;
mod boot_options;
mod coldplug;
mod fault;
mod growroot;
mod machine_id;
mod network;
mod oneshot;
mod sysctl;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_hostapi::config::{HOST_CONFIG_PATH, HostConfig, Readiness, Restart, Service};
use berth_hostapi::control::CONTROL_SOCKET_PATH;

use crate::blockdev::{self, BlockPaths};
use crate::cmdline::Cmdline;
use crate::modules::{self, ModuleIndex};
use crate::supervisor::spawn::is_executable;
use crate::supervisor::{Options, Supervisor, UnitSpec};
use crate::sys::signals::Signals;
use crate::sys::{MountFlags, Sys};
use crate::{failure, mounts, shutdown, watchdog};

/// Where service logs go.
pub const LOG_DIR: &str = "/var/log/berth";
/// Where the ESP is mounted.
pub const ESP_MOUNT: &str = "/efi";
/// The optional boot-check command, run once after the mounts.
pub const BERTHCTL: &str = "/usr/bin/berthctl";
/// A trial boot's deadline when the configuration gives none.
pub const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(300);
/// Modules for mounting the ESP (file systems are not found by coldplug);
/// those the kernel has built in are simply not in modules.dep.
const ESP_MODULES: [&str; 4] = ["vfat", "nls_cp437", "nls_ascii", "nls_utf8"];

/// Modules provisioning reads its data with: ISO 9660 NoCloud seeds (FAT
/// ones use the ESP's) and QEMU's fw_cfg. Loaded when the image has them
/// (every image keeps them); a file system type is not a device, so
/// coldplug would not load them.
const PROVISIONING_MODULES: [&str; 2] = ["isofs", "qemu_fw_cfg"];

/// Why stage 2 could not bring the host up.
#[derive(Debug, thiserror::Error)]
pub enum Stage2Error {
    /// Blocking signals or opening the signalfd failed.
    #[error("setting up signal handling")]
    Signals(#[source] std::io::Error),
    /// An API mount failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// The host configuration is missing or broken.
    #[error("loading the host configuration")]
    Config(#[from] berth_hostapi::config::ConfigError),
}

/// The API mounts of stage 2 (those moved over from stage 1 are skipped).
pub fn api_mounts(sys: &dyn Sys, root: &Path) -> Result<(), mounts::MountError> {
    mounts::mount_all(sys, root, mounts::STAGE2_MOUNTS)
}

/// The mounts that need modules first: efivarfs (UEFI boots only), then
/// the ESP at /efi (FAT: only root may read it). Failures are returned as
/// messages: the host runs without them.
pub fn firmware_mounts(sys: &dyn Sys, uefi: bool, esp: Option<&Path>) -> Vec<String> {
    let mut errors = Vec::new();
    if uefi {
        if let Err(e) = mounts::mount_one(sys, Path::new("/"), &mounts::EFIVARFS) {
            errors.push(berth_hostapi::error_chain::one_line(&e));
        }
    }
    let Some(device) = esp else {
        errors.push(format!(
            "no ESP found on the root disk; {ESP_MOUNT} not mounted"
        ));
        return errors;
    };
    let target = PathBuf::from(ESP_MOUNT);
    if sys.is_mountpoint(&target) {
        return errors;
    }
    let mounted = sys.mkdir(&target, 0o700).and_then(|()| {
        sys.mount(
            &device.to_string_lossy(),
            &target,
            "vfat",
            // dirsync: renames on the ESP reach the disk whole and in order
            // (docs/upgrades.md, "Power cuts").
            MountFlags::ESP,
            "umask=0077,shortname=mixed",
        )
    });
    match mounted {
        Ok(()) => crate::say!("mounted ESP {} on {ESP_MOUNT}", device.display()),
        Err(e) => errors.push(format!(
            "mounting vfat {} on {ESP_MOUNT}: {e}",
            device.display()
        )),
    }
    errors
}

/// Symlinks devtmpfs does not make.
fn dev_links() {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

/// The directories the host needs in /var, made on every boot (the
/// stateroot /var starts empty): (path, mode).
pub const VAR_DIRS: [(&str, u32); 8] = [
    ("var/log", 0o755),
    ("var/log/berth", 0o755),
    ("var/lib", 0o755),
    ("var/lib/berth", 0o755),
    ("var/cache", 0o755),
    ("var/tmp", 0o1777),
    ("var/spool", 0o755),
    ("var/opt", 0o755),
];

/// Top-level links an OSTree tree may point into /var (`home → var/home`).
const VAR_LINKS: [&str; 7] = ["home", "root", "srv", "mnt", "opt", "media", "usr/local"];

/// Creates [`VAR_DIRS`] under `root`, and the /var targets of [`VAR_LINKS`].
pub fn ensure_var_dirs(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut errors = Vec::new();
    let mut dirs: Vec<(PathBuf, u32)> = VAR_DIRS.iter().map(|(p, m)| (root.join(p), *m)).collect();
    for link in VAR_LINKS {
        let path = root.join(link);
        if let Ok(target) = std::fs::read_link(&path) {
            let base = path.parent().unwrap_or(root);
            let resolved = if target.is_absolute() {
                root.join(target.strip_prefix("/").unwrap_or(&target))
            } else {
                base.join(&target)
            };
            let normal: PathBuf = resolved.components().fold(PathBuf::new(), |mut acc, c| {
                match c {
                    std::path::Component::ParentDir => {
                        acc.pop();
                    }
                    other => acc.push(other),
                }
                acc
            });
            let mode = if link == "root" { 0o700 } else { 0o755 };
            if normal.starts_with(root.join("var")) {
                dirs.push((normal, mode));
            }
        }
    }
    for (dir, mode) in dirs {
        if dir.is_dir() {
            continue;
        }
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)));
        if let Err(e) = made {
            errors.push(format!("creating {}: {e}", dir.display()));
        }
    }
    errors
}

/// `service`, unless the configuration has one of that name: `berth build`
/// lists the DHCP client's service itself, made by the same constructor
/// ([`berth_hostapi::services::dhcp`]), so stage 2 adds it only to a
/// configuration that lacks it.
fn unless_configured(config: &HostConfig, service: Option<Service>) -> Option<Service> {
    service.filter(|svc| !config.services.iter().any(|s| s.name == svc.name))
}

/// The services stage 2 adds to the manifest's.
fn extra_units(config: &HostConfig, cmdline: &Cmdline, dhcp: Option<Service>) -> Vec<UnitSpec> {
    let mut out = Vec::new();
    if let Some(svc) = dhcp {
        out.push(UnitSpec {
            service: svc,
            tty: None,
        });
    }
    if is_executable(Path::new(BERTHCTL)) {
        out.push(UnitSpec {
            service: Service {
                name: "boot-check".into(),
                command: vec![BERTHCTL.into(), "boot-check".into()],
                restart: Restart::Never,
                ready: Readiness::Exited,
                required: false,
                ..Service::default()
            },
            tty: None,
        });
    }
    if (config.debug_shell || cmdline.debug) && Path::new(failure::SHELL).exists() {
        let mut env = std::collections::BTreeMap::new();
        env.insert("PS1".to_string(), "(berth debug) # ".to_string());
        out.push(UnitSpec {
            service: Service {
                name: "debug-shell".into(),
                command: vec![failure::SHELL.into()],
                env,
                restart: Restart::Always,
                required: false,
                // An interactive shell ignores SIGTERM.
                stop_signal: "SIGHUP".into(),
                stop_timeout_ms: 2000,
                backoff_initial_ms: 200,
                backoff_max_ms: 5000,
                ..Service::default()
            },
            tty: Some(failure::console_tty()),
        });
    }
    out
}

/// Loads the modules of the configuration, of the ESP, and of the devices.
fn load_modules(sys: &dyn Sys, config: &HostConfig) {
    let dir = ModuleIndex::dir_for_running_kernel(Path::new("/"));
    let index = match ModuleIndex::load(&dir) {
        Ok(i) => i,
        Err(e) => {
            crate::say!(
                "no module coldplug: {}",
                berth_hostapi::error_chain::one_line(&e)
            );
            return;
        }
    };
    for name in &config.modules {
        if !index.contains(name) && !modules::is_loaded(&modules::normalize(name)) {
            crate::say!("module {name}: not in modules.dep");
        }
    }
    let mut wanted: Vec<String> = config.modules.clone();
    wanted.extend(ESP_MODULES.iter().map(|s| s.to_string()));
    wanted.extend(
        PROVISIONING_MODULES
            .iter()
            .filter(|m| index.contains(m))
            .map(|s| s.to_string()),
    );
    if Path::new("/sys/firmware/efi").exists() {
        wanted.push("efivarfs".into());
    }
    // Loaded even when coldplug finds a real watchdog: an unopened softdog
    // does nothing.
    if config.watchdog_timeout_ms > 0 && index.contains(watchdog::SOFTDOG_MODULE) {
        wanted.push(watchdog::SOFTDOG_MODULE.into());
    }
    let (mut loaded, mut failed) = modules::load(sys, &index, &wanted, &modules::is_loaded);
    let (l, f) = coldplug::coldplug(sys, &index, Path::new("/sys/devices"), &modules::is_loaded);
    loaded.extend(l);
    failed.extend(f);
    crate::say!("loaded {} modules", loaded.len());
    for f in failed {
        crate::say!("loading module {}: {}", f.name, f.error);
    }
}

/// On a Secure Boot host, keeps the firmware's extra boot options for
/// systemd-boot on the ESP of `disk` ([`boot_options`]). Best effort: a
/// host without them boots the same, it only waits in the firmware after
/// two refused images instead of going on.
fn retry_boot_options(paths: &BlockPaths, disk: &str) {
    let efivars = Path::new(crate::efivars::EFIVARS_DIR);
    if !boot_options::secure_boot(efivars) {
        return;
    }
    let Some(esp) = blockdev::disk_partitions(paths, disk)
        .ok()
        .and_then(|p| p.into_iter().find(|e| e.type_guid == crate::gpt::ESP_TYPE))
    else {
        return;
    };
    match boot_options::ensure(efivars, &esp) {
        Ok(wrote) if !wrote.is_empty() => crate::say!(
            "secure boot: wrote the firmware's retry options for systemd-boot ({})",
            wrote.join(", ")
        ),
        Ok(_) => {}
        Err(e) => crate::say!("secure boot: writing the firmware's boot options: {e}"),
    }
}

/// The root partition the kernel command line names, and its disk. For
/// `root=gpt-auto` (no `root=`) it reads `LoaderDevicePartUUID` from the
/// efivarfs stage 1 mounted to find the same root (it came over with /sys).
fn root_partition(paths: &BlockPaths, cmdline: &Cmdline) -> Option<blockdev::Found> {
    blockdev::find_root(paths, cmdline.root.as_ref()?).ok()
}

/// Grows the root partition and its file system to fill the disk
/// ([`growroot`]); a failure is reported and the boot goes on with
/// the root as it is.
fn grow_root(paths: &BlockPaths, root: Option<&blockdev::Found>) {
    let Some(root) = root else {
        crate::say!("growing the root: the root partition was not found");
        return;
    };
    let mib = |bytes: u64| bytes >> 20;
    // /sysroot is read-only (sysroot.readonly) and the resize ioctl needs a
    // writable mount of the file system: /var is one.
    match growroot::grow(paths, root, Path::new("/var")) {
        Ok(report) => {
            if let Some((old, new)) = report.partition {
                crate::say!(
                    "root partition grown from {} MiB to {} MiB",
                    mib(old),
                    mib(new)
                );
            }
            if let Some((old, new)) = report.filesystem {
                crate::say!(
                    "root file system grown from {} MiB to {} MiB",
                    mib(old),
                    mib(new)
                );
            }
        }
        Err(e) => crate::say!(
            "growing the root: {}",
            berth_hostapi::error_chain::one_line(&e)
        ),
    }
}

/// Arms the watchdog with the configuration's timeout (none when 0); a
/// host without one runs on, saying so.
fn arm_watchdog(config: &HostConfig) {
    if config.watchdog_timeout_ms == 0 {
        return;
    }
    let timeout = Duration::from_millis(config.watchdog_timeout_ms);
    match watchdog::arm(Path::new(watchdog::SYSFS_DIR), Path::new("/dev"), timeout) {
        Ok(what) => crate::say!("watchdog: armed {what}"),
        Err(e) => crate::say!(
            "watchdog: {}; running without one",
            berth_hostapi::error_chain::one_line(&e)
        ),
    }
}

/// Converts "ready within `deadline` of boot" into an Instant.
fn deadline_from_boot(deadline: Duration) -> Instant {
    crate::sys::clock::from_now(deadline.saturating_sub(crate::sys::clock::since_boot()))
}

/// Where provisioning leaves extra environment for services.
pub const ENV_DIR: &str = "/etc/berth/env";

/// How long provisioning may take before the boot goes on without it.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(60);

/// The hostname: /etc/hostname (the image's, or what the admin or the
/// provisioning data wrote there), else the host configuration's.
fn set_hostname(sys: &dyn Sys, config: &HostConfig) {
    let from_etc = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let from_etc = from_etc.trim();
    let hostname = if !from_etc.is_empty() {
        from_etc
    } else if !config.hostname.is_empty() {
        &config.hostname
    } else {
        "berth"
    };
    if let Err(e) = sys.set_hostname(hostname) {
        crate::say!("setting hostname {hostname}: {e}");
    }
}

/// Runs `berthctl provision` (per-host data) to completion before any
/// service starts, when the image has berthctl and there is data for it.
/// Its failure, or a run past [`PROVISION_TIMEOUT`], is reported and the
/// boot goes on. Returns whether it ran and succeeded.
fn provision() -> bool {
    // Most boots have nothing to provision: spare them the start of a
    // dynamically linked program (about half a second under emulation).
    if !is_executable(Path::new(BERTHCTL))
        || !berth_hostapi::provisioning::data_present(Path::new("/"))
    {
        return false;
    }
    let argv = [BERTHCTL.to_string(), "provision".to_string()];
    match oneshot::run(&argv, PROVISION_TIMEOUT) {
        Ok(status) if status.success() => true,
        Ok(status) => {
            crate::say!("provisioning: berthctl provision failed ({status}); going on");
            false
        }
        Err(e) => {
            crate::say!("provisioning: {e}; going on");
            false
        }
    }
}

/// Everything before the supervisor; returns it ready to run.
fn bring_up(sys: &dyn Sys, cmdline: &mut Cmdline) -> Result<Supervisor, Stage2Error> {
    let _ = std::env::set_current_dir("/");
    let signals = Signals::new().map_err(Stage2Error::Signals)?;
    // ctrl-alt-del sends SIGINT to PID 1 instead of an immediate reboot.
    let _ = rustix::system::reboot(rustix::system::RebootCommand::CadOff);
    // /proc, /sys, /dev first (stage 1 normally moved them over already).
    mounts::mount_all(
        sys,
        Path::new("/"),
        mounts::STAGE2_MOUNTS.get(..3).unwrap_or_default(),
    )?;
    crate::console::attach_console();
    *cmdline = Cmdline::read();
    crate::say!("stage 2");
    let config = HostConfig::load(Path::new(HOST_CONFIG_PATH))?;
    api_mounts(sys, Path::new("/"))?;
    if let Err(e) = mounts::mount_one(sys, Path::new("/"), &mounts::SECURITYFS) {
        crate::say!("{}", berth_hostapi::error_chain::one_line(&e));
    }
    dev_links();

    set_hostname(sys, &config);
    load_modules(sys, &config);
    arm_watchdog(&config);
    let paths = BlockPaths::default();
    let root = root_partition(&paths, cmdline);
    let esp = root
        .as_ref()
        .and_then(|r| blockdev::find_esp_on(&paths, &r.disk));
    for e in firmware_mounts(sys, Path::new("/sys/firmware/efi").exists(), esp.as_deref()) {
        crate::say!("{e}");
    }
    if let Some(root) = root.as_ref() {
        retry_boot_options(&paths, &root.disk);
    }
    for e in sysctl::apply(Path::new("/proc/sys"), &config.sysctls) {
        crate::say!("{e}");
    }
    for e in ensure_var_dirs(Path::new("/")) {
        crate::say!("{e}");
    }
    match machine_id::ensure(Path::new(berth_hostapi::machine_id::MACHINE_ID_PATH)) {
        Ok(machine_id::Outcome::Made(_)) => crate::say!("first boot: made the machine id"),
        Ok(machine_id::Outcome::Kept(_)) => {}
        Err(e) => crate::say!("making the machine id: {e}"),
    }
    if cmdline.root.is_some() {
        grow_root(&paths, root.as_ref());
    }
    watchdog::pet();
    network::loopback_up();
    if provision() {
        // The data may have named another hostname.
        set_hostname(sys, &config);
    }
    let dhcp = unless_configured(&config, network::configure(&config.network));

    let trial = match bless::boot_count(Path::new(crate::efivars::EFIVARS_DIR)) {
        bless::BootCount::Trial(t) => Some(t),
        bless::BootCount::Uncounted => None,
        bless::BootCount::Stale { counted, selected } => {
            crate::say!(
                "boot loader booted {selected}, not {counted} (left from a start the firmware refused): not on trial"
            );
            None
        }
    };
    let ready_deadline = trial.as_ref().map(|t| {
        let ms = match config.ready_deadline_ms {
            0 => DEFAULT_READY_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        crate::say!(
            "boot entry {} is on trial ({} tries left); must be ready within {}s of boot",
            t.entry,
            t.counted.left,
            ms.as_secs()
        );
        deadline_from_boot(ms)
    });
    let mut specs: Vec<UnitSpec> = config
        .services
        .iter()
        .cloned()
        .map(|service| UnitSpec { service, tty: None })
        .collect();
    specs.extend(extra_units(&config, cmdline, dhcp));
    let fault = cmdline.fault;
    let on_ready: Box<dyn FnMut()> = Box::new(move || {
        if fault == Some(crate::cmdline::Fault::Pid1Hang) {
            fault::hang("after the ready line, before blessing the boot");
        }
        if let Some(t) = &trial {
            match bless::bless(Path::new(ESP_MOUNT), t) {
                Ok(Some(path)) => crate::say!("boot is good: blessed {}", path.display()),
                Ok(None) => crate::say!("boot is good: {} already blessed", t.entry),
                Err(e) => crate::say!(
                    "blessing the boot: {}",
                    berth_hostapi::error_chain::one_line(&e)
                ),
            }
        }
    });
    let opts = Options {
        log_dir: PathBuf::from(LOG_DIR),
        socket: Some(PathBuf::from(CONTROL_SOCKET_PATH)),
        users_root: PathBuf::from("/"),
        image: config.image.clone(),
        version: config.version.clone(),
        n_services: config.services.len(),
        ready_deadline,
        env_dir: Some(PathBuf::from(ENV_DIR)),
    };
    let mut supervisor = Supervisor::new(specs, signals, opts, Some(on_ready));
    supervisor.watch_power_buttons(crate::supervisor::powerbutton::open_all(
        Path::new("/sys/class/input"),
        Path::new("/dev"),
    ));
    Ok(supervisor)
}

/// Runs stage 2; never returns.
pub fn run(sys: &dyn Sys) -> ! {
    let mut cmdline = Cmdline::default();
    match bring_up(sys, &mut cmdline) {
        Ok(mut supervisor) => {
            let action = supervisor.run();
            drop(supervisor); // closes log files and the control socket
            shutdown::shutdown(sys, action)
        }
        Err(e) => failure::fail(
            sys,
            &berth_hostapi::error_chain::one_line(&e),
            cmdline.debug,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn stage2_mount_order() -> Result<(), mounts::MountError> {
        // What stage 1 moved over is already there.
        let sys = FakeSys::new()
            .mounted("/dev")
            .mounted("/proc")
            .mounted("/sys")
            .mounted("/run");
        api_mounts(&sys, Path::new("/"))?;
        let errors = firmware_mounts(&sys, true, Some(Path::new("/dev/vda1")));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            sys.calls(),
            [
                "mkdir /dev/pts 755",
                "mount -t devpts devpts /dev/pts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000",
                "mkdir /dev/shm 755",
                "mount -t tmpfs tmpfs /dev/shm -o nosuid,nodev,mode=1777",
                "mkdir /tmp 755",
                "mount -t tmpfs tmpfs /tmp -o nosuid,nodev,mode=1777",
                "mkdir /sys/fs/cgroup 755",
                "mount -t cgroup2 cgroup2 /sys/fs/cgroup -o nosuid,nodev,noexec,nsdelegate",
                "mkdir /sys/firmware/efi/efivars 755",
                "mount -t efivarfs efivarfs /sys/firmware/efi/efivars -o nosuid,nodev,noexec",
                "mkdir /efi 700",
                "mount -t vfat /dev/vda1 /efi -o nosuid,nodev,noexec,dirsync,umask=0077,shortname=mixed",
            ]
        );
        Ok(())
    }

    #[test]
    fn var_dirs_and_link_targets_are_created() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir()?;
        std::os::unix::fs::symlink("var/home", tmp.path().join("home"))?;
        std::fs::create_dir_all(tmp.path().join("usr"))?;
        std::os::unix::fs::symlink("../var/usrlocal", tmp.path().join("usr/local"))?;
        std::os::unix::fs::symlink("/etc/elsewhere", tmp.path().join("srv"))?;
        let errors = ensure_var_dirs(tmp.path());
        assert!(errors.is_empty(), "{errors:?}");
        for dir in ["var/log/berth", "var/lib/berth", "var/home", "var/usrlocal"] {
            assert!(tmp.path().join(dir).is_dir(), "{dir}");
        }
        assert!(!tmp.path().join("etc/elsewhere").exists());
        let mode = std::fs::metadata(tmp.path().join("var/tmp"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
        Ok(())
    }

    #[test]
    fn the_dhcp_client_is_added_only_to_a_configuration_without_it() {
        let client = ["udhcpc", "-f", "-i", "eth0"].map(String::from);
        let dhcp = || Some(berth_hostapi::services::dhcp(&client));
        let web = Service {
            name: "web".into(),
            command: vec!["httpd".into()],
            ..Service::default()
        };
        // As berth build writes it: the client is there already.
        let built = HostConfig {
            services: vec![berth_hostapi::services::dhcp(&client), web.clone()],
            ..HostConfig::default()
        };
        assert_eq!(unless_configured(&built, dhcp()), None);
        let without = HostConfig {
            services: vec![web],
            ..HostConfig::default()
        };
        assert_eq!(unless_configured(&without, dhcp()), dhcp());
        assert_eq!(unless_configured(&without, None), None);
    }
}
