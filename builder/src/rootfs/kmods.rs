//! Kernel modules: which ones an image keeps, which ones its initramfs
//! carries, and the dependency closure of both from `modules.dep`
//! (written by `depmod -b`, from the kmod package of the build host).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::{self, CommandError};

/// Modules every image keeps: virtual and common real storage and network
/// drivers, the file systems Berth uses (ext4 root, vfat ESP, efivarfs,
/// ISO 9660 provisioning seeds, overlay), fw_cfg provisioning, and what
/// containers need (veth, bridge), the ACPI power button (button, evdev),
/// and watchdogs for berth-init to arm: the kernel's software one
/// (softdog) and QEMU's emulated Intel 6300ESB (i6300esb), which coldplug
/// loads when the device is there.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "sd_mod",
    "sr_mod",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "ext4",
    "crc32c_generic",
    "crc32c_intel",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "efivarfs",
    "isofs",
    "overlay",
    "loop",
    "qemu_fw_cfg",
    "veth",
    "bridge",
    "br_netfilter",
    "button",
    "evdev",
    "softdog",
    "i6300esb",
];

/// Modules the initramfs carries: only what reaching the root partition
/// takes (the storage drivers and ext4 with the checksum it needs).
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "ext4",
    "crc32c_generic",
    // Stage 1 reads LoaderDevicePartUUID to find the root when the
    // command line names none (a Secure Boot image's signed one).
    "efivarfs",
];

/// The parsed `modules.dep` of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    /// Module name (underscores) to its path relative to the modules dir.
    pub paths: BTreeMap<String, String>,
    /// Module name to the names it depends on.
    pub deps: BTreeMap<String, Vec<String>>,
}

/// The module name of a `.ko` path: file stem with '-' as '_'.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Parses `modules.dep` text (`path: dep-path dep-path ...`).
    pub fn parse(text: &str) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(path);
            idx.paths.insert(name.clone(), path.trim().to_string());
            idx.deps
                .insert(name, deps.split_whitespace().map(module_name).collect());
        }
        idx
    }

    /// Reads `<modules_dir>/modules.dep`.
    pub fn load(modules_dir: &Path) -> std::io::Result<ModuleIndex> {
        Ok(ModuleIndex::parse(&std::fs::read_to_string(
            modules_dir.join("modules.dep"),
        )?))
    }

    /// `wanted` and everything they depend on; names not in the index
    /// (built into the kernel, or absent) are skipped and returned apart.
    pub fn closure<'a>(
        &self,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> (BTreeSet<String>, Vec<String>) {
        let mut out = BTreeSet::new();
        let mut unknown = Vec::new();
        let mut stack: Vec<String> = wanted.into_iter().map(|w| w.replace('-', "_")).collect();
        while let Some(name) = stack.pop() {
            if out.contains(&name) {
                continue;
            }
            match self.deps.get(&name) {
                Some(deps) => {
                    stack.extend(deps.iter().cloned());
                    out.insert(name);
                }
                None => unknown.push(name),
            }
        }
        (out, unknown)
    }

    /// `modules.dep` text for a subset (same lines, in index order).
    pub fn subset_dep(&self, keep: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for name in keep {
            if let (Some(path), Some(deps)) = (self.paths.get(name), self.deps.get(name)) {
                let dep_paths: Vec<&str> = deps
                    .iter()
                    .filter_map(|d| self.paths.get(d).map(String::as_str))
                    .collect();
                out.push_str(path);
                out.push(':');
                for d in dep_paths {
                    out.push(' ');
                    out.push_str(d);
                }
                out.push('\n');
            }
        }
        out
    }
}

/// Runs `depmod -b <root> <kver>` so `<root>/lib/modules/<kver>` gets its
/// index files.
pub fn depmod(root: &Path, kver: &str) -> Result<(), CommandError> {
    command::run(
        "indexing kernel modules",
        Command::new("depmod").arg("-b").arg(root).arg(kver),
    )
    .map(|_| ())
}

/// Deletes every module of `modules_dir` not in `keep`; returns how many
/// were removed.
pub fn prune(
    modules_dir: &Path,
    index: &ModuleIndex,
    keep: &BTreeSet<String>,
) -> std::io::Result<usize> {
    let mut removed = 0;
    for (name, rel) in &index.paths {
        if !keep.contains(name) {
            let p: PathBuf = modules_dir.join(rel);
            match std::fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/fs/jbd2/jbd2.ko:\n\
kernel/fs/mbcache.ko:\n\
kernel/lib/crc16.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio.ko:\n\
kernel/crypto/crc32c-generic.ko:\n";

    #[test]
    fn closure_follows_dependencies() {
        let idx = ModuleIndex::parse(DEP);
        let (set, unknown) = idx.closure(["ext4", "crc32c-generic", "ext5"]);
        let names: Vec<&str> = set.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            ["crc16", "crc32c_generic", "ext4", "jbd2", "mbcache"]
        );
        assert_eq!(unknown, ["ext5"]);
    }

    #[test]
    fn subset_dep_keeps_only_chosen_lines() {
        let idx = ModuleIndex::parse(DEP);
        let (set, _) = idx.closure(["virtio_blk"]);
        assert_eq!(
            idx.subset_dep(&set),
            "kernel/drivers/virtio/virtio.ko:\nkernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n"
        );
    }

    #[test]
    fn names_normalise_dashes() {
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko"),
            "crc32c_generic"
        );
        assert_eq!(module_name("x/y.ko.xz"), "y");
    }
}
