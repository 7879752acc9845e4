//! The initramfs: a zstd-compressed cpio (newc) archive holding the static
//! `berth-init` as `/init` and only the kernel modules needed to reach the
//! root partition, with a `modules.dep` for exactly those.
//!
//! Entries are written in sorted order with fixed owners, inode numbers
//! and timestamps, so the same inputs give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use cpio::newc;

use crate::rootfs::kmods::{INITRAMFS_MODULES, ModuleIndex};

/// `/etc/initrd-release` of every initramfs. It names no version on
/// purpose: a new OS version with the same kernel and berth-init then has
/// the very same initramfs, which an upgrade need not download again.
pub const INITRD_RELEASE: &str = "NAME=\"Berth initramfs\"\nID=berth\nVARIANT_ID=initrd\n";

/// zstd level: good ratio, still fast on two cores.
const ZSTD_LEVEL: i32 = 12;

/// What goes into the archive, by path (sorted), before encoding.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its mode bits.
    Dir(u32),
    /// A regular file with its mode bits and contents.
    File(u32, Vec<u8>),
    /// A character device (mode bits, major, minor).
    CharDev(u32, u32, u32),
    /// A symbolic link to its target.
    Symlink(String),
}

impl Archive {
    /// Adds a directory and its missing parents.
    pub fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert(Entry::Dir(0o755));
        }
    }

    /// Adds a member (and its parent directories).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// The paths in the archive, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Encodes the archive as uncompressed cpio newc with every mtime set to
    /// `mtime`.
    pub fn encode(&self, mtime: u32) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for (i, (path, entry)) in self.entries.iter().enumerate() {
            // Inode 0 is special to some readers; count from 1.
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let b = newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(mtime);
            let (b, data): (newc::Builder, &[u8]) = match entry {
                Entry::Dir(mode) => (b.mode(0o040000 | mode).nlink(2), &[]),
                Entry::File(mode, data) => (b.mode(0o100000 | mode).nlink(1), data),
                Entry::CharDev(mode, major, minor) => (
                    b.mode(0o020000 | mode)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
                Entry::Symlink(target) => (b.mode(0o120777).nlink(1), target.as_bytes()),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| std::io::Error::other(format!("{path} is too large for cpio")))?;
            let mut w = b.write(&mut out, size);
            w.write_all(data)?;
            w.finish()?;
        }
        newc::trailer(&mut out)?;
        Ok(out)
    }
}

/// The initramfs contents for kernel `kver` of the tree at `root`, with
/// `init` (the static berth-init binary) as `/init`. Returns the archive
/// and the names of the modules it carries.
pub fn contents(
    root: &Path,
    kver: &str,
    init: &[u8],
    os_release: &str,
) -> std::io::Result<(Archive, Vec<String>)> {
    let modules_dir = root.join("usr/lib/modules").join(kver);
    let index = ModuleIndex::load(&modules_dir)?;
    let (keep, _builtin) = index.closure(INITRAMFS_MODULES.iter().copied());
    let mut a = Archive::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "sysroot",
        "usr/lib/modules",
    ] {
        a.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before init can mount
    // devtmpfs.
    a.add("dev/console", Entry::CharDev(0o600, 5, 1));
    a.add("dev/null", Entry::CharDev(0o666, 1, 3));
    a.add("init", Entry::File(0o755, init.to_vec()));
    // systemd's convention for "this is an initrd": berth-init runs stage 1.
    a.add(
        "etc/initrd-release",
        Entry::File(0o644, os_release.as_bytes().to_vec()),
    );
    a.add("lib", Entry::Symlink("usr/lib".into()));
    let mdir = format!("usr/lib/modules/{kver}");
    a.add(
        &format!("{mdir}/modules.dep"),
        Entry::File(0o644, index.subset_dep(&keep).into_bytes()),
    );
    for name in &keep {
        if let Some(rel) = index.paths.get(name) {
            let data = std::fs::read(modules_dir.join(rel))?;
            a.add(&format!("{mdir}/{rel}"), Entry::File(0o644, data));
        }
    }
    Ok((a, keep.into_iter().collect()))
}

/// Compresses a cpio archive with zstd (the Debian kernel decompresses it).
pub fn compress(cpio: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(cpio, ZSTD_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_sorted_with_parents_and_reads_back() {
        let mut a = Archive::default();
        a.add("usr/lib/x.ko", Entry::File(0o644, b"ko".to_vec()));
        a.add("init", Entry::File(0o755, b"#!init".to_vec()));
        a.add("dev/console", Entry::CharDev(0o600, 5, 1));
        a.add("lib", Entry::Symlink("usr/lib".into()));
        let paths: Vec<&str> = a.paths().collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "usr",
                "usr/lib",
                "usr/lib/x.ko"
            ]
        );

        let bytes = a.encode(1_700_000_000).unwrap();
        assert_eq!(
            bytes,
            a.encode(1_700_000_000).unwrap(),
            "encoding is deterministic"
        );
        let mut r = std::io::Cursor::new(bytes);
        let mut seen = Vec::new();
        loop {
            let entry = newc::Reader::new(&mut r).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let e = entry.entry();
            seen.push((
                e.name().to_string(),
                e.mode(),
                e.mtime(),
                e.rdev_major(),
                e.rdev_minor(),
            ));
            entry.finish().unwrap();
        }
        assert_eq!(
            seen[1],
            ("dev/console".to_string(), 0o020600, 1_700_000_000, 5, 1)
        );
        assert_eq!(seen[2].1, 0o100755);
        assert_eq!(seen[3].1, 0o120777);
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn compressed_archive_decompresses() {
        let mut a = Archive::default();
        a.add("init", Entry::File(0o755, vec![7; 10_000]));
        let cpio = a.encode(0).unwrap();
        let z = compress(&cpio).unwrap();
        assert!(z.len() < cpio.len());
        assert_eq!(zstd::stream::decode_all(&z[..]).unwrap(), cpio);
    }

    #[test]
    fn contents_carry_only_the_root_modules() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("usr/lib/modules/6.1");
        std::fs::create_dir_all(m.join("kernel/fs")).unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/fs/ext4.ko: kernel/fs/jbd2.ko\nkernel/fs/jbd2.ko:\nkernel/fs/vfat.ko:\n",
        )
        .unwrap();
        for k in ["ext4", "jbd2", "vfat"] {
            std::fs::write(m.join(format!("kernel/fs/{k}.ko")), k).unwrap();
        }
        let (a, mods) = contents(t.path(), "6.1", b"init", "NAME=Berth\n").unwrap();
        assert_eq!(mods, ["ext4", "jbd2"]);
        let paths: Vec<&str> = a.paths().collect();
        assert!(paths.contains(&"usr/lib/modules/6.1/kernel/fs/ext4.ko"));
        assert!(!paths.contains(&"usr/lib/modules/6.1/kernel/fs/vfat.ko"));
        assert!(paths.contains(&"etc/initrd-release"));
    }
}
