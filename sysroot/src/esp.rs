//! What the ESP must hold for a list of deployments: systemd-boot, its
//! loader.conf, one folder per deployment with its kernel and initramfs,
//! and one Boot Loader Specification entry per deployment.
//!
//! This module only plans (data); the builder writes the plan into a FAT
//! image and `berthctl` applies it to the mounted ESP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::bls::{Assessment, BootEntry, EntryName};
use crate::deployment::DeploymentInfo;

/// Where systemd-boot lives in every deployment (package systemd-boot-efi).
pub const SYSTEMD_BOOT_IN_TREE: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The removable-media path firmware boots without NVRAM entries.
pub const SYSTEMD_BOOT_ON_ESP: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's configuration on the ESP.
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// Folder of the boot entries on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Folder holding one sub-folder per deployment.
pub const KERNELS_DIR: &str = "berth";

/// loader.conf: no menu (servers boot unattended), no editor (no kernel
/// command-line edits at the console), and no `default`: systemd-boot then
/// takes the first good entry by sort key, so a failed entry (boot counter
/// at 0) falls behind the previous one by itself.
pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";

/// A file to copy onto the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Path on the ESP, without a leading '/'.
    pub esp_path: String,
    /// Where to read it from.
    pub source: PathBuf,
}

/// A boot entry to write onto the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// File name without boot counter and `.conf`.
    pub stem: String,
    /// Its contents.
    pub entry: BootEntry,
    /// The deployment it boots.
    pub deployment_id: String,
}

/// Everything the ESP should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspPlan {
    /// Kernels, initramfs images and the boot loader.
    pub files: Vec<PlannedFile>,
    /// Boot entries, in libostree's order.
    pub entries: Vec<PlannedEntry>,
}

/// The boot entry stem of a deployment: `berth-<checksum>.<serial>`.
pub fn entry_stem(d: &DeploymentInfo) -> String {
    format!("berth-{}", d.id())
}

/// The ESP folder of a deployment: `berth/<checksum>.<serial>`.
pub fn deployment_folder(d: &DeploymentInfo) -> String {
    format!("{KERNELS_DIR}/{}", d.id())
}

/// The boot entry of deployment `d` at position `rank` in the order.
pub fn boot_entry(d: &DeploymentInfo, rank: usize) -> BootEntry {
    let folder = deployment_folder(d);
    BootEntry {
        title: format!(
            "{} ({})",
            d.pretty_name,
            &d.checksum[..d.checksum.len().min(12)]
        ),
        version: d.version.clone(),
        // Ranks are zero-padded so that "berth-10" does not sort before "berth-2".
        sort_key: format!("berth-{rank:03}"),
        linux: format!("/{folder}/vmlinuz"),
        initrd: format!("/{folder}/initramfs.img"),
        options: d.cmdline(),
    }
}

/// Plans the ESP of a first install: `deployments` (libostree's order) of
/// the sysroot at `root`, systemd-boot taken from the first one (a first
/// install is known good).
pub fn plan(root: &Path, deployments: &[DeploymentInfo]) -> EspPlan {
    plan_with_loader(root, deployments, deployments.first())
}

/// The deployment whose systemd-boot belongs on the ESP: the first, in
/// libostree's order, whose entry is blessed (no boot counter) and that is
/// not the `trial` one being written now. A new deployment's boot loader
/// replaces the old one only once that deployment has proven itself:
/// boot counting lives in the binary that would be replaced. `None` when
/// no deployment qualifies (then the ESP's boot loader is left as it is).
pub fn boot_loader_source<'a>(
    deployments: &'a [DeploymentInfo],
    entries: &BTreeMap<String, EntryName>,
    trial: Option<&str>,
) -> Option<&'a DeploymentInfo> {
    deployments.iter().find(|d| {
        let id = d.id();
        Some(id.as_str()) != trial
            && entries
                .get(&id)
                .is_some_and(|n| n.assessment() == Assessment::Good)
    })
}

/// Plans the ESP for `deployments` (libostree's order) of the sysroot at
/// `root`, with systemd-boot taken from `loader` (none: the ESP's boot
/// loader is not part of the plan and stays as it is).
pub fn plan_with_loader(
    root: &Path,
    deployments: &[DeploymentInfo],
    loader: Option<&DeploymentInfo>,
) -> EspPlan {
    let mut files = Vec::new();
    if let Some(from) = loader {
        files.push(PlannedFile {
            esp_path: SYSTEMD_BOOT_ON_ESP.into(),
            source: root.join(from.dir()).join(SYSTEMD_BOOT_IN_TREE),
        });
    }
    let mut entries = Vec::new();
    for (rank, d) in deployments.iter().enumerate() {
        let folder = deployment_folder(d);
        files.push(PlannedFile {
            esp_path: format!("{folder}/vmlinuz"),
            source: root.join(&d.kernel),
        });
        files.push(PlannedFile {
            esp_path: format!("{folder}/initramfs.img"),
            source: root.join(&d.initramfs),
        });
        entries.push(PlannedEntry {
            stem: entry_stem(d),
            entry: boot_entry(d, rank),
            deployment_id: d.id(),
        });
    }
    EspPlan { files, entries }
}

/// A plan for the ESP tests: one kernel (written into `src`) and one entry
/// per deployment id, ranked in the order given.
#[cfg(test)]
pub(crate) fn test_plan(src: &Path, ids: &[&str]) -> EspPlan {
    let mut files = vec![];
    let mut entries = vec![];
    for (rank, id) in ids.iter().enumerate() {
        let k = src.join(format!("{id}.vmlinuz"));
        std::fs::write(&k, format!("kernel {id}")).unwrap();
        files.push(PlannedFile {
            esp_path: format!("berth/{id}/vmlinuz"),
            source: k,
        });
        entries.push(PlannedEntry {
            stem: format!("berth-{id}"),
            deployment_id: id.to_string(),
            entry: BootEntry {
                title: id.to_string(),
                version: "1".into(),
                sort_key: format!("berth-{rank:03}"),
                linux: format!("/berth/{id}/vmlinuz"),
                initrd: String::new(),
                options: String::new(),
            },
        });
    }
    EspPlan { files, entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(checksum: &str, version: &str) -> DeploymentInfo {
        DeploymentInfo {
            index: 0,
            stateroot: "berth".into(),
            checksum: checksum.into(),
            serial: 0,
            version: version.into(),
            pretty_name: "Berth demo".into(),
            kargs: vec!["root=PARTUUID=p".into()],
            kernel: PathBuf::from(format!(
                "ostree/deploy/berth/deploy/{checksum}.0/usr/lib/modules/6.1/vmlinuz"
            )),
            initramfs: PathBuf::from(format!(
                "ostree/deploy/berth/deploy/{checksum}.0/usr/lib/modules/6.1/initramfs.img"
            )),
            booted: false,
            refspec: None,
        }
    }

    #[test]
    fn one_folder_and_one_entry_per_deployment_in_order() {
        let plan = plan(Path::new("/s"), &[dep("bbbb", "2"), dep("aaaa", "1")]);
        let paths: Vec<&str> = plan.files.iter().map(|f| f.esp_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "berth/bbbb.0/vmlinuz",
                "berth/bbbb.0/initramfs.img",
                "berth/aaaa.0/vmlinuz",
                "berth/aaaa.0/initramfs.img"
            ]
        );
        assert_eq!(
            plan.files[0].source,
            Path::new(
                "/s/ostree/deploy/berth/deploy/bbbb.0/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
            )
        );
        assert_eq!(plan.entries[0].stem, "berth-bbbb.0");
        assert_eq!(plan.entries[0].entry.sort_key, "berth-000");
        assert_eq!(plan.entries[1].entry.sort_key, "berth-001");
        assert!(plan.entries[0].entry.sort_key < plan.entries[1].entry.sort_key);
        assert_eq!(
            plan.entries[1].entry.options,
            "root=PARTUUID=p ostree=/ostree/deploy/berth/deploy/aaaa.0"
        );
        assert_eq!(plan.entries[1].entry.linux, "/berth/aaaa.0/vmlinuz");
    }

    #[test]
    fn the_boot_loader_comes_from_the_first_blessed_deployment() {
        let deps = [dep("bbbb", "2"), dep("aaaa", "1")];
        let mut entries = BTreeMap::new();
        entries.insert("aaaa.0".to_string(), EntryName::good("berth-aaaa.0"));
        // v2 is new (being written on trial): v1's loader stays.
        let src = boot_loader_source(&deps, &entries, Some("bbbb.0")).unwrap();
        assert_eq!(src.checksum, "aaaa");
        // v2 on trial, counted once: still v1's.
        entries.insert(
            "bbbb.0".to_string(),
            EntryName::parse("berth-bbbb.0+2-1.conf").unwrap(),
        );
        assert_eq!(
            boot_loader_source(&deps, &entries, None).unwrap().checksum,
            "aaaa"
        );
        // v2 blessed: its loader.
        entries.insert("bbbb.0".to_string(), EntryName::good("berth-bbbb.0"));
        assert_eq!(
            boot_loader_source(&deps, &entries, None).unwrap().checksum,
            "bbbb"
        );
        let plan = plan_with_loader(Path::new("/s"), &deps, Some(&deps[1]));
        assert_eq!(plan.files[0].esp_path, SYSTEMD_BOOT_ON_ESP);
        assert!(
            plan.files[0]
                .source
                .starts_with("/s/ostree/deploy/berth/deploy/aaaa.0")
        );
        // Nothing blessed: the plan leaves the boot loader alone.
        assert!(boot_loader_source(&deps, &BTreeMap::new(), None).is_none());
        let plan = plan_with_loader(Path::new("/s"), &deps, None);
        assert!(plan.files.iter().all(|f| f.esp_path != SYSTEMD_BOOT_ON_ESP));
    }

    #[test]
    fn loader_conf_sets_no_default() {
        assert!(!LOADER_CONF.contains("default"));
        assert!(LOADER_CONF.contains("timeout 0"));
    }
}
