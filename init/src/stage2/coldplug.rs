//! Module coldplug without udev: read every device's `modalias` under
//! /sys/devices and load the modules whose modules.alias globs match.
//!
//! Loading a bus driver (virtio_pci) creates new devices (virtio0) with
//! their own modalias, so the walk repeats until a pass loads nothing new.

use std::collections::BTreeSet;
use std::path::Path;

use crate::modules::{self, LoadFailure, ModuleIndex};
use crate::sys::Sys;

/// How many walks of /sys/devices at most (each walk can reveal devices of
/// the next bus level).
const MAX_PASSES: usize = 5;

/// Every distinct `modalias` value under `sys_devices`.
pub fn collect_modaliases(sys_devices: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(sys_devices, 0, &mut out);
    out
}

fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Symlinks (subsystem, driver, device) point back into the tree.
        if kind.is_dir() {
            walk(&entry.path(), depth + 1, out);
        } else if kind.is_file() && entry.file_name() == "modalias" {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let text = text.trim();
                if !text.is_empty() {
                    out.insert(text.to_string());
                }
            }
        }
    }
}

/// Loads the modules for every device under `sys_devices`, pass after pass.
/// Returns the modules loaded and the failures.
pub fn coldplug(
    sys: &dyn Sys,
    index: &ModuleIndex,
    sys_devices: &Path,
    is_loaded: &dyn Fn(&str) -> bool,
) -> (Vec<String>, Vec<LoadFailure>) {
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..MAX_PASSES {
        let wanted: Vec<String> = collect_modaliases(sys_devices)
            .iter()
            .flat_map(|alias| index.modules_for_alias(alias))
            .filter(|m| tried.insert(m.clone()))
            .collect();
        if wanted.is_empty() {
            break;
        }
        let (l, f) = modules::load(sys, index, &wanted, is_loaded);
        loaded.extend(l);
        failed.extend(f);
    }
    (loaded, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use std::fs;

    #[test]
    fn finds_modaliases_and_loads_matching_modules() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dev = tmp.path().join("devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(&dev)?;
        fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )?;
        let other = tmp.path().join("devices/platform/serial8250");
        fs::create_dir_all(&other)?;
        fs::write(other.join("modalias"), "platform:serial8250\n")?;
        std::os::unix::fs::symlink(tmp.path().join("devices"), dev.join("loop"))?;

        let aliases = collect_modaliases(&tmp.path().join("devices"));
        assert_eq!(aliases.len(), 2);

        let index = ModuleIndex::parse(
            Path::new("/m"),
            "kernel/virtio_pci.ko: kernel/virtio.ko\nkernel/virtio.ko:\n",
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n",
        );
        let sys = FakeSys::new();
        let (loaded, failed) = coldplug(&sys, &index, &tmp.path().join("devices"), &|_| false);
        assert_eq!(loaded, ["virtio", "virtio_pci"]);
        assert!(failed.is_empty());
        // The second pass finds nothing new: each module is tried once.
        assert_eq!(sys.calls().len(), 2);
        Ok(())
    }
}
