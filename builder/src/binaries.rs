//! Finding the host programs Berth puts into images: the static
//! `berth-init` and `berthctl`, built from this workspace.

use std::path::{Path, PathBuf};

use crate::error::InputError;
use crate::rootfs::overlay::HostBinaries;

/// Where `berth` looks for its host programs: `$BERTH_INIT` /
/// `$BERTH_BERTHCTL`, else next to the `berth` executable (an install),
/// else the static build of the same Cargo target directory
/// (`target/x86_64-unknown-linux-gnu/<profile>/berth-init`, as
/// `scripts/build` makes it).
pub fn find() -> anyhow::Result<HostBinaries> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let profile = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let static_dir = dir
        .parent()
        .map(|t| t.join("x86_64-unknown-linux-gnu").join(&profile))
        .unwrap_or_default();
    let init = pick(
        "BERTH_INIT",
        &[static_dir.join("berth-init"), dir.join("berth-init")],
        |p| is_static_elf(p).unwrap_or(false),
    )
    .ok_or_else(|| {
        InputError(format!(
            "no statically linked berth-init found (looked at $BERTH_INIT, {} and {}): run scripts/build",
            static_dir.join("berth-init").display(),
            dir.join("berth-init").display()
        ))
    })?;
    let berthctl =
        pick("BERTH_BERTHCTL", &[dir.join("berthctl")], |p| p.is_file()).ok_or_else(|| {
            InputError(format!(
                "no berthctl found (looked at $BERTH_BERTHCTL and {}): run scripts/build",
                dir.join("berthctl").display()
            ))
        })?;
    Ok(HostBinaries { init, berthctl })
}

/// `berth-fleetlock`, which `[fleet-lock-server]` images carry:
/// `$BERTH_FLEETLOCK`, else next to the `berth` executable (where
/// `scripts/build` and an install put it).
pub fn find_fleetlock() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("berth-fleetlock");
    pick("BERTH_FLEETLOCK", std::slice::from_ref(&beside), |p| {
        p.is_file()
    })
    .ok_or_else(|| {
        InputError(format!(
            "[fleet-lock-server] needs berth-fleetlock (looked at $BERTH_FLEETLOCK and {}): run scripts/build",
            beside.display()
        ))
        .into()
    })
}

fn pick(env: &str, candidates: &[PathBuf], ok: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().find(|p| ok(p)).cloned()
}

/// Whether `path` is an x86-64 ELF executable without a program
/// interpreter (PT_INTERP), i.e. one that runs in an initramfs with no
/// libraries. Reads the ELF header by hand: 20 lines do not warrant an
/// ELF crate.
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    // ELF magic, 64-bit, little-endian.
    if data.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        match u32_at(off) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_not_static() {
        // /bin/sh on Debian is dynamically linked.
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(t.path()).unwrap());
    }

    #[test]
    fn busybox_static_is_static() {
        // Debian's busybox-static package (installed by install-deps).
        assert!(is_static_elf(Path::new("/bin/busybox")).unwrap());
    }
}
