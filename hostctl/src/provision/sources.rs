//! Where per-host data comes from, as a VM or cloud gives it: a NoCloud
//! seed (a FAT or ISO 9660 volume labelled `cidata`, with `user-data` and
//! `meta-data`, as `cloud-localds` makes) and QEMU's fw_cfg
//! (`opt/org.berth/config`, a `#cloud-config` document; `berth run
//! --config FILE` passes one).

use std::path::Path;

use anyhow::Context;
pub use berth_hostapi::provisioning::{FW_CFG_FILE, cidata_devices};

/// Raw provisioning data from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Where it came from, for messages.
    pub source: String,
    /// user-data text.
    pub user_data: String,
    /// meta-data text (empty for fw_cfg).
    pub meta_data: String,
}

/// The fw_cfg document, if QEMU was given one.
pub fn fw_cfg(root: &Path) -> Option<Seed> {
    let text = std::fs::read_to_string(root.join(FW_CFG_FILE)).ok()?;
    Some(Seed {
        source: "fw_cfg opt/org.berth/config".into(),
        user_data: text,
        meta_data: String::new(),
    })
}

/// Mounts `dev` read-only (ISO 9660 or vfat), reads the seed files and
/// unmounts it.
pub fn read_cidata(dev: &Path, mount_dir: &Path) -> anyhow::Result<Seed> {
    use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};
    std::fs::create_dir_all(mount_dir)
        .with_context(|| format!("creating {}", mount_dir.display()))?;
    let mut mounted = false;
    let mut last = None;
    for fstype in ["iso9660", "vfat"] {
        match mount(
            dev,
            mount_dir,
            fstype,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ) {
            Ok(()) => {
                mounted = true;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if !mounted {
        return Err(anyhow::anyhow!("mounting {}: {:?}", dev.display(), last));
    }
    let read = |name: &str| std::fs::read_to_string(mount_dir.join(name)).unwrap_or_default();
    let seed = Seed {
        source: format!("NoCloud seed {}", dev.display()),
        user_data: read("user-data"),
        meta_data: read("meta-data"),
    };
    unmount(mount_dir, UnmountFlags::empty())
        .with_context(|| format!("unmounting {}", mount_dir.display()))?;
    Ok(seed)
}
