//! Stage 1, in the initramfs: API mounts, kernel command line, modules,
//! the root partition, the OSTree deployment, switch root, exec stage 2.
//!
//! Expected in the initramfs: `/init` (this binary), `/etc/initrd-release`,
//! `/lib/modules/<release>/modules.dep` with the modules it lists
//! (uncompressed `.ko`, or compressed with kernel-side decompression), and
//! optionally `/bin/sh` for the emergency shell.
//!
//! This directory holds what only stage 1 runs: [`tree_id`] (choosing
//! the deployment by `berth.tree=`), [`prepare_root`] (the OSTree
//! deployment's mounts) and [`switch_root`] (leaving the initramfs). What stage 2 uses too (the command line, mounts, block
//! devices, modules) is at the top of the crate.

mod prepare_root;
mod switch_root;
mod tree_id;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::blockdev::{self, BlockPaths};
use crate::cmdline::{Cmdline, RootSpec};
use crate::modules::{self, ModuleIndex};
use crate::mounts;
use crate::sys::{MountFlags, Sys};

/// Where the physical root is mounted, and then the deployment.
pub const SYSROOT: &str = "/sysroot";
/// Stage 2, inside the deployment.
pub const STAGE2: &str = "/usr/lib/berth/berth-init";
/// Fallback if the deployment has no berth-init at the usual place.
pub const FALLBACK_INIT: &str = "/sbin/init";

/// Why stage 1 failed.
#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    /// An API mount failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// `root=` names nothing berth-init can find.
    #[error(
        "root= on the kernel command line is not root=PARTUUID=<uuid>, root=/dev/... or root=gpt-auto"
    )]
    NoRoot,
    /// No `root=`, and the boot loader did not say where it booted from.
    #[error("no root= and no LoaderDevicePartUUID: {0}")]
    NoLoaderDevice(String),
    /// The root partition did not appear.
    #[error(transparent)]
    RootTimeout(#[from] blockdev::RootTimeout),
    /// Mounting the root failed.
    #[error("mounting {device} ({fstype}) on /sysroot")]
    MountRoot {
        /// The device.
        device: PathBuf,
        /// Its file-system type.
        fstype: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `berth.tree=` named no deployment.
    #[error("choosing the deployment by tree id")]
    Tree(#[from] tree_id::TreeError),
    /// Setting up the deployment failed.
    #[error("setting up the OSTree deployment")]
    Prepare(#[from] prepare_root::PrepareError),
    /// Switching root or exec failed.
    #[error("switching root to /sysroot")]
    Switch(#[from] switch_root::SwitchError),
}

/// What stage 1 learned, for the failure handler.
#[derive(Debug, Default)]
pub struct Context {
    /// `berth.debug` or the deployment's `debug_shell`.
    pub debug: bool,
}

/// Where stage 1 looks: `/` and the real /sys and /dev on a machine; a
/// temporary tree in tests.
#[derive(Debug, Clone)]
pub struct Env {
    /// The initramfs root.
    pub root: PathBuf,
    /// Block devices.
    pub block: BlockPaths,
    /// The kernel command line.
    pub cmdline: Cmdline,
}

impl Env {
    /// The real machine (reads /proc/cmdline, so call after mounting /proc).
    pub fn real() -> Env {
        Env {
            root: PathBuf::from("/"),
            block: BlockPaths::default(),
            cmdline: Cmdline::read(),
        }
    }
}

/// Drivers tried first: a virtual machine's disks, and the root's file
/// system. When the root shows up after them, the drivers for physical
/// controllers are not loaded at all: probing an empty AHCI controller's
/// six ports alone costs most of a second under emulation, and a VM on
/// QEMU's q35 machine always has one.
const FIRST_MODULES: [&str; 6] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ext4",
    "crc32c_generic",
];

/// Loads `names` (all of the initramfs's when `None`) with their
/// dependencies, dependencies first.
fn load_modules(sys: &dyn Sys, index: &ModuleIndex, names: Option<&[String]>) {
    let names = names.map_or_else(|| index.all_in_load_order(), <[String]>::to_vec);
    let (loaded, failed) = modules::load(sys, index, &names, &modules::is_loaded);
    if !loaded.is_empty() {
        crate::say!("loaded {} modules", loaded.len());
    }
    for f in failed {
        crate::say!("loading module {}: {}", f.name, f.error);
    }
}

/// The initramfs's module index, if it has one.
fn module_index(root: &Path) -> Option<ModuleIndex> {
    let dir = ModuleIndex::dir_for_running_kernel(root);
    match ModuleIndex::load(&dir) {
        Ok(index) => Some(index),
        Err(e) => {
            crate::say!(
                "no modules loaded: {}",
                berth_hostapi::error_chain::one_line(&e)
            );
            None
        }
    }
}

/// The module efivarfs needs, when the kernel does not have it built in.
const EFIVARFS_MODULE: &str = "efivarfs";

/// For `root=gpt-auto`: mounts efivarfs and reads which ESP the boot
/// loader was started from.
fn loader_esp(sys: &dyn Sys, env: &Env) -> Result<String, Stage1Error> {
    if !env.root.join("sys/firmware/efi").exists() {
        return Err(Stage1Error::NoLoaderDevice(
            "not an EFI boot (no /sys/firmware/efi); name the root with root=PARTUUID=<uuid>"
                .into(),
        ));
    }
    mounts::mount_one(sys, &env.root, &mounts::EFIVARFS)?;
    crate::efivars::loader_device_part_uuid(&env.block.efivars).ok_or_else(|| {
        Stage1Error::NoLoaderDevice(format!(
            "the boot loader did not set it ({} has no LoaderDevicePartUUID-{}); name the root \
             with root=PARTUUID=<uuid>",
            env.block.efivars.display(),
            crate::efivars::LOADER_GUID
        ))
    })
}

/// Loads the first drivers, looks for the root once, and only when it is
/// not there yet loads every other driver and waits for it. For
/// `root=gpt-auto`, efivarfs first: the ESP the loader names picks the
/// disk.
fn find_root(sys: &dyn Sys, env: &Env, spec: &RootSpec) -> Result<blockdev::Found, Stage1Error> {
    let index = module_index(&env.root);
    if let Some(index) = &index {
        let mut first: Vec<String> = FIRST_MODULES.iter().map(|m| m.to_string()).collect();
        if *spec == RootSpec::GptAuto && index.contains(EFIVARFS_MODULE) {
            first.push(EFIVARFS_MODULE.into());
        }
        load_modules(sys, index, Some(&first));
    }
    let secs = env.cmdline.root_timeout.as_secs();
    match spec {
        RootSpec::PartUuid(uuid) => {
            crate::say!("waiting up to {secs}s for root PARTUUID={uuid}");
        }
        RootSpec::GptAuto => {
            let esp = loader_esp(sys, env)?;
            crate::say!(
                "no root=: waiting up to {secs}s for the x86-64 root partition on the disk of \
                 the ESP the boot loader booted from (PARTUUID={esp})"
            );
        }
        RootSpec::Path(_) => {}
    }
    // virtio_blk adds its disks and their partitions while it loads.
    let found = match blockdev::wait_for_root(&env.block, spec, Duration::ZERO) {
        Ok(found) => found,
        Err(_) => {
            if let Some(index) = &index {
                load_modules(sys, index, None);
            }
            blockdev::wait_for_root(&env.block, spec, env.cmdline.root_timeout)?
        }
    };
    if *spec == RootSpec::GptAuto {
        crate::say!(
            "root: {}, {}",
            found.device.display(),
            blockdev::describe_spec(&env.block, spec)
        );
    }
    Ok(found)
}

/// Reads `debug_shell` from the deployment's host configuration.
fn deployment_debug_shell(deploy: &Path) -> bool {
    let path = deploy.join(berth_hostapi::config::HOST_CONFIG_PATH.trim_start_matches('/'));
    berth_hostapi::config::HostConfig::load(&path).is_ok_and(|c| c.debug_shell)
}

/// Runs stage 1: API mounts, then everything else with the command line
/// read from /proc. Returns only on failure (success ends in exec).
pub fn run(sys: &dyn Sys, ctx: &mut Context) -> Stage1Error {
    if let Err(e) = mounts::mount_all(sys, Path::new("/"), mounts::STAGE1_MOUNTS) {
        return e.into();
    }
    crate::console::attach_console();
    let env = Env::real();
    ctx.debug = env.cmdline.debug;
    crate::say!("stage 1 (initramfs)");
    match boot(sys, &env, ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The deployment to boot, relative to the physical root: `ostree=`, else
/// the one `berth.tree=` names, else none (prepare-root says so).
fn deployment_target(sysroot: &Path, cmdline: &Cmdline) -> Result<Option<String>, Stage1Error> {
    if let Some(target) = &cmdline.ostree {
        return Ok(Some(target.clone()));
    }
    let Some(id) = &cmdline.tree else {
        return Ok(None);
    };
    let target = tree_id::find_deployment(sysroot, id)?;
    crate::say!("deployment {target}: its tree has id {id} (berth.tree=)");
    Ok(Some(target))
}

/// Everything after the API mounts: modules, root, deployment, switch root.
pub fn boot(
    sys: &dyn Sys,
    env: &Env,
    ctx: &mut Context,
) -> Result<std::convert::Infallible, Stage1Error> {
    let cmdline = &env.cmdline;
    let spec = cmdline.root.clone().ok_or(Stage1Error::NoRoot)?;
    let found = find_root(sys, env, &spec)?;
    let sysroot = env.root.join(SYSROOT.trim_start_matches('/'));
    let mount_root = sys.mkdir(&sysroot, 0o755).and_then(|()| {
        sys.mount(
            &found.device.to_string_lossy(),
            &sysroot,
            &cmdline.rootfstype,
            MountFlags::NONE,
            &cmdline.rootflags,
        )
    });
    mount_root.map_err(|source| Stage1Error::MountRoot {
        device: found.device.clone(),
        fstype: cmdline.rootfstype.clone(),
        source,
    })?;
    crate::say!("mounted {} on {SYSROOT}", found.device.display());

    let target = deployment_target(&sysroot, cmdline)?;
    if let Some(target) = target.as_deref() {
        if let Ok(deploy) = prepare_root::resolve_deployment(&sysroot, target) {
            ctx.debug |= deployment_debug_shell(&deploy);
        }
    }
    let run = env.root.join("run");
    let deploy = prepare_root::prepare_root(sys, &sysroot, &run, target.as_deref())?;
    crate::say!("booting deployment {}", deploy.display());

    // After prepare-root, the deployment is what /sysroot shows.
    let init = if sysroot.join(STAGE2.trim_start_matches('/')).exists() {
        STAGE2
    } else {
        FALLBACK_INIT
    };
    Err(switch_root::switch_root(sys, &sysroot, Path::new(init)).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use std::time::Duration;

    #[test]
    fn boot_finds_root_sets_up_deployment_and_switches() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = prepare_root::tests::physical_root(false)?;
        let block = crate::blockdev::tests::fake_machine(tmp.path())?;
        let deploy = tmp.path().join("sysroot").join(prepare_root::tests::DEPLOY);
        // The fake does not move mounts: put stage 2 where /sysroot shows it.
        std::fs::create_dir_all(tmp.path().join("sysroot/usr/lib/berth"))?;
        std::fs::write(tmp.path().join("sysroot/usr/lib/berth/berth-init"), "")?;
        let env = Env {
            root: tmp.path().to_path_buf(),
            block,
            cmdline: Cmdline::parse(&format!(
                "root=PARTUUID=6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab ostree=/{} berth.root_timeout=1",
                prepare_root::tests::DEPLOY
            )),
        };
        let sys = FakeSys::with_root(tmp.path());
        let mut ctx = Context::default();
        let err = boot(&sys, &env, &mut ctx)
            .err()
            .map(|e| berth_hostapi::error_chain::one_line(&e));
        // The fake exec "fails": that is the end of the recorded sequence.
        assert_eq!(
            err.as_deref(),
            Some(
                "switching root to /sysroot: executing /usr/lib/berth/berth-init: No such file or directory (os error 2)"
            )
        );
        let calls = sys.calls();
        let d = format!("/sysroot/{}", prepare_root::tests::DEPLOY);
        let dev = format!("{}/dev/vda2", tmp.path().display());
        let expected_start = [
            "mkdir /sysroot 755".to_string(),
            format!("mount -t ext4 {dev} /sysroot -o defaults"),
            "rprivate /".to_string(),
            format!("bind {d} {d}"),
        ];
        assert_eq!(
            calls.get(..4),
            Some(expected_start.as_slice()),
            "{calls:#?}"
        );
        assert!(calls.contains(&"touch /run/ostree-booted".to_string()));
        let tail = [
            "move /sysroot.tmp /sysroot",
            "rmdir /sysroot.tmp",
            "private /sysroot/sysroot",
            "move /dev /sysroot/dev",
            "move /proc /sysroot/proc",
            "move /sys /sysroot/sys",
            "move /run /sysroot/run",
            "chdir /sysroot",
            "clear-initramfs keep=/sysroot",
            "move /sysroot /",
            "chroot .",
            "chdir /",
            "exec /usr/lib/berth/berth-init",
        ];
        assert_eq!(
            calls.get(calls.len().saturating_sub(tail.len())..),
            Some(tail.map(String::from).as_slice())
        );
        assert!(deploy.is_dir());
        Ok(())
    }

    #[test]
    fn missing_root_times_out_naming_the_disks() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let block = crate::blockdev::tests::fake_machine(tmp.path())?;
        let mut cmdline = Cmdline::parse("root=PARTUUID=00000000-0000-0000-0000-000000000001");
        cmdline.root_timeout = Duration::from_millis(100);
        let env = Env {
            root: tmp.path().to_path_buf(),
            block,
            cmdline,
        };
        let sys = FakeSys::new();
        let err = boot(&sys, &env, &mut Context::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("block devices seen: vda"), "{err}");
        assert!(sys.calls().is_empty());
        Ok(())
    }

    /// vdb of the fake machine, made a second Berth disk: ESP and root.
    const VDB_ESP: &str = "22222222-0000-4000-8000-00000000000e";

    /// A machine with two Berth disks and three deployments (`abc.0`
    /// with tree id A, `def.0` and `def.1` with tree id B), booted from
    /// vdb's ESP, with `cmdline`.
    fn gpt_auto_machine(
        cmdline: &str,
    ) -> Result<(tempfile::TempDir, Env), Box<dyn std::error::Error>> {
        use crate::blockdev::tests::{fake_disk, fake_efivar};
        use tree_id::tests::{ID_A, ID_B, deployment};
        let tmp = prepare_root::tests::physical_root(false)?;
        let block = crate::blockdev::tests::fake_machine(tmp.path())?;
        fake_disk(
            tmp.path(),
            &block,
            "vdb",
            &[
                (crate::gpt::ESP_TYPE, VDB_ESP, 0),
                (
                    crate::gpt::ROOT_X86_64_TYPE,
                    "22222222-0000-4000-8000-000000000002",
                    0,
                ),
            ],
        )?;
        fake_efivar(&block, VDB_ESP)?;
        let sysroot = tmp.path().join("sysroot");
        deployment(&sysroot, "abc.0", ID_A)?;
        deployment(&sysroot, "def.0", ID_B)?;
        deployment(&sysroot, "def.1", ID_B)?;
        std::fs::create_dir_all(sysroot.join("usr/lib/berth"))?;
        std::fs::write(sysroot.join("usr/lib/berth/berth-init"), "")?;
        let mut cmdline = Cmdline::parse(cmdline);
        cmdline.root_timeout = Duration::from_millis(100);
        let env = Env {
            root: tmp.path().to_path_buf(),
            block,
            cmdline,
        };
        Ok((tmp, env))
    }

    fn boot_error(sys: &FakeSys, env: &Env) -> String {
        boot(sys, env, &mut Context::default())
            .err()
            .map(|e| berth_hostapi::error_chain::one_line(&e))
            .unwrap_or_default()
    }

    #[test]
    fn without_root_the_root_is_on_the_disk_of_the_loaders_esp()
    -> Result<(), Box<dyn std::error::Error>> {
        let ostree = format!("ostree=/{}", prepare_root::tests::DEPLOY);
        for cmdline in [format!("rw {ostree}"), format!("root=gpt-auto {ostree}")] {
            let (tmp, env) = gpt_auto_machine(&cmdline)?;
            let sys = FakeSys::with_root(tmp.path());
            let err = boot_error(&sys, &env);
            assert!(
                err.starts_with("switching root to /sysroot: executing"),
                "{err}"
            );
            let calls = sys.calls();
            let expected_start = [
                "mkdir /sys/firmware/efi/efivars 755".to_string(),
                "mount -t efivarfs efivarfs /sys/firmware/efi/efivars -o nosuid,nodev,noexec"
                    .to_string(),
                "mkdir /sysroot 755".to_string(),
                format!(
                    "mount -t ext4 {}/dev/vdb2 /sysroot -o defaults",
                    tmp.path().display()
                ),
            ];
            assert_eq!(
                calls.get(..4),
                Some(expected_start.as_slice()),
                "{cmdline}: {calls:#?}"
            );
        }
        Ok(())
    }

    #[test]
    fn gpt_auto_failures_say_why() -> Result<(), Box<dyn std::error::Error>> {
        let ostree = format!("ostree=/{}", prepare_root::tests::DEPLOY);

        // Not an EFI boot.
        let (tmp, env) = gpt_auto_machine(&ostree)?;
        std::fs::remove_dir_all(tmp.path().join("sys/firmware"))?;
        let sys = FakeSys::with_root(tmp.path());
        let err = boot_error(&sys, &env);
        assert_eq!(
            err,
            "no root= and no LoaderDevicePartUUID: not an EFI boot (no /sys/firmware/efi); \
             name the root with root=PARTUUID=<uuid>"
        );
        assert!(sys.calls().is_empty());

        // A loader that does not set the variable.
        let (tmp, env) = gpt_auto_machine(&ostree)?;
        std::fs::remove_file(env.block.efivars.join(format!(
            "LoaderDevicePartUUID-{}",
            crate::efivars::LOADER_GUID
        )))?;
        let sys = FakeSys::with_root(tmp.path());
        let err = boot_error(&sys, &env);
        assert!(
            err.starts_with("no root= and no LoaderDevicePartUUID: the boot loader did not set it"),
            "{err}"
        );
        assert_eq!(sys.calls().len(), 2, "only efivarfs was mounted");

        // The variable names a partition on no disk.
        let (tmp, env) = gpt_auto_machine(&ostree)?;
        crate::blockdev::tests::fake_efivar(&env.block, "33333333-0000-4000-8000-000000000000")?;
        let sys = FakeSys::with_root(tmp.path());
        let err = boot_error(&sys, &env);
        assert!(
            err.contains("(PARTUUID=33333333-0000-4000-8000-000000000000): not found"),
            "{err}"
        );
        assert!(
            err.contains("block devices seen: vda (GPT, 2 entries"),
            "{err}"
        );

        // The ESP's disk has no root partition.
        let (tmp, env) = gpt_auto_machine(&ostree)?;
        crate::blockdev::tests::fake_disk(
            tmp.path(),
            &env.block,
            "vdb",
            &[(crate::gpt::ESP_TYPE, VDB_ESP, 0)],
        )?;
        let sys = FakeSys::with_root(tmp.path());
        let err = boot_error(&sys, &env);
        assert!(
            err.contains(
                "vdb (GPT, 1 entries; kernel partitions: vdb1 vdb2): holds the ESP but no \
                 x86-64 root partition"
            ),
            "{err}"
        );
        assert_eq!(sys.calls().len(), 2, "only efivarfs was mounted");
        // A root= berth-init cannot follow is an error, not gpt-auto.
        let (tmp, env) = gpt_auto_machine(&format!("root=LABEL=x {ostree}"))?;
        let sys = FakeSys::with_root(tmp.path());
        let err = boot_error(&sys, &env);
        assert!(
            err.starts_with("root= on the kernel command line is not"),
            "{err}"
        );
        assert!(sys.calls().is_empty());
        Ok(())
    }

    #[test]
    fn a_signed_command_line_names_the_deployment_by_tree_id()
    -> Result<(), Box<dyn std::error::Error>> {
        use tree_id::tests::{ID_A, ID_B};
        for (cmdline, deploy) in [
            // The same commit deployed twice: the newer one.
            (format!("rw berth.tree={ID_B}"), "def.1"),
            (format!("root=gpt-auto berth.tree={ID_A}"), "abc.0"),
            // ostree= (a loader that passes a command line) wins.
            (
                format!("ostree=/ostree/deploy/berth/deploy/def.0 berth.tree={ID_A}"),
                "def.0",
            ),
        ] {
            let (tmp, env) = gpt_auto_machine(&cmdline)?;
            let sys = FakeSys::with_root(tmp.path());
            let err = boot_error(&sys, &env);
            assert!(
                err.starts_with("switching root to /sysroot: executing"),
                "{err}"
            );
            let calls = sys.calls();
            let d = format!("/sysroot/ostree/deploy/berth/deploy/{deploy}");
            assert_eq!(
                calls.get(4..6),
                Some(["rprivate /".to_string(), format!("bind {d} {d}")].as_slice()),
                "{cmdline}: {calls:#?}"
            );
            assert!(calls.contains(&"touch /run/ostree-booted".to_string()));
        }
        Ok(())
    }

    #[test]
    fn a_bad_or_unknown_tree_id_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let unknown = "f".repeat(32);
        for (arg, expected) in [
            (
                "berth.tree=DEADBEEF",
                "choosing the deployment by tree id: berth.tree=\"DEADBEEF\": a tree id is \
                 exactly 32 lower-case hex characters"
                    .to_string(),
            ),
            (
                &format!("berth.tree={unknown}"),
                format!(
                    "choosing the deployment by tree id: no deployment has tree id {unknown} \
                     (3 deployments looked at under ROOT/sysroot/ostree/deploy)"
                ),
            ),
        ] {
            let (tmp, env) = gpt_auto_machine(arg)?;
            let sys = FakeSys::with_root(tmp.path());
            let err = boot_error(&sys, &env);
            assert_eq!(
                err,
                expected.replace("ROOT", &tmp.path().display().to_string())
            );
            // The root was mounted; no deployment was touched.
            assert_eq!(sys.calls().len(), 4, "{:#?}", sys.calls());
        }
        Ok(())
    }
}
