//! Where per-host provisioning data is found, shared by `berthctl
//! provision` (which reads and applies it) and berth-init (which runs
//! `berthctl provision` only when some is there, sparing every other boot
//! the start of a dynamically linked program).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// QEMU fw_cfg's provisioning file in sysfs (the qemu_fw_cfg module),
/// relative to the root.
pub const FW_CFG_FILE: &str = "sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config/raw";

/// SSH keys the image itself gives root (the manifest's `[ssh]`),
/// relative to the root.
pub const IMAGE_ROOT_KEYS: &str = "usr/lib/berth/ssh/authorized_keys";

/// The image keys installed in root's authorized_keys at the last boot,
/// relative to the root: while it lists any, every boot runs `berthctl
/// provision`, so that keys an upgrade dropped are removed even when the
/// new image has none.
pub const INSTALLED_IMAGE_KEYS: &str = "var/lib/berth/image-keys";

/// The journal of a provisioning run, relative to the root: left behind
/// only by a run that was cut short, which the next run finishes.
pub const JOURNAL: &str = "var/lib/berth/provision.journal";

/// Whether the system at `root` has anything for `berthctl provision`: a
/// fw_cfg document, a `cidata` volume, image SSH keys to install or
/// remove, or an interrupted run to finish.
pub fn data_present(root: &Path) -> bool {
    root.join(FW_CFG_FILE).exists()
        || root.join(IMAGE_ROOT_KEYS).exists()
        || std::fs::metadata(root.join(INSTALLED_IMAGE_KEYS)).is_ok_and(|m| m.len() > 0)
        || root.join(JOURNAL).exists()
        || !cidata_devices(root).is_empty()
}

/// The volume label of a FAT or ISO 9660 file system in `dev`, if any.
pub fn volume_label(dev: &Path) -> Option<String> {
    let mut f = std::fs::File::open(dev).ok()?;
    let mut boot = [0u8; 512];
    f.read_exact(&mut boot).ok()?;
    // FAT: the boot sector ends in 55 AA; the label sits at 0x47 (FAT32,
    // "FAT32   " at 0x52) or 0x2B (FAT12/16, "FAT" at 0x36).
    if boot[510] == 0x55 && boot[511] == 0xAA {
        if &boot[0x52..0x57] == b"FAT32" {
            return Some(trim_label(&boot[0x47..0x52]));
        }
        if &boot[0x36..0x39] == b"FAT" {
            return Some(trim_label(&boot[0x2B..0x36]));
        }
    }
    // ISO 9660: the primary volume descriptor at 32 KiB: type 1, "CD001",
    // the volume identifier at offset 40.
    let mut pvd = [0u8; 72];
    f.seek(SeekFrom::Start(0x8000)).ok()?;
    f.read_exact(&mut pvd).ok()?;
    if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
        return Some(trim_label(&pvd[40..72]));
    }
    None
}

fn trim_label(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Block devices whose file system is labelled `cidata` (any case).
pub fn cidata_devices(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/block")) else {
        return found;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = root.join("dev").join(&name);
        if volume_label(&dev).is_some_and(|l| l.eq_ignore_ascii_case("cidata")) {
            found.push(dev);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn labels_of_fat_and_iso_volumes() {
        let t = tempfile::tempdir().unwrap();
        let fat = t.path().join("fat.img");
        std::fs::File::create(&fat)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let ok = Command::new("mkfs.vfat")
            .args(["-n", "CIDATA"])
            .arg(&fat)
            .output()
            .unwrap();
        assert!(ok.status.success());
        assert_eq!(volume_label(&fat).as_deref(), Some("CIDATA"));
        // An ISO 9660 primary volume descriptor, written by hand.
        let iso = t.path().join("seed.iso");
        let mut data = vec![0u8; 0x8000 + 2048];
        data[0x8000] = 1;
        data[0x8001..0x8006].copy_from_slice(b"CD001");
        let label = *b"cidata                          ";
        data[0x8028..0x8048].copy_from_slice(&label);
        std::fs::write(&iso, data).unwrap();
        assert_eq!(volume_label(&iso).as_deref(), Some("cidata"));
        let empty = t.path().join("zero.img");
        std::fs::write(&empty, vec![0u8; 70000]).unwrap();
        assert_eq!(volume_label(&empty), None);
    }
}
