//! Measures a root tree before it is copied into ext4: how many blocks and
//! inodes it takes, and which path names each inode (for the timestamp
//! pass in `ext4.rs`).
//!
//! The size is an estimate on the safe side, used to refuse a too-small
//! disk before anything is written; mke2fs has the last word.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DiskError;
use super::layout::MIB;

/// ext4 block size Berth uses (`mke2fs -b 4096`).
pub(crate) const BLOCK: u64 = 4096;
/// Bytes per inode mke2fs is configured with (`inode_ratio`).
pub(crate) const INODE_RATIO: u64 = 16384;
/// Blocks per block group (8 × block size).
const BLOCKS_PER_GROUP: u64 = 32768;
/// On-disk inode size.
const INODE_SIZE: u64 = 256;
/// Inodes 1..=10 are reserved; 11 is lost+found.
const RESERVED_INODES: u64 = 11;
/// Share of blocks kept for root (`reserved_ratio`, percent).
pub(crate) const RESERVED_PERCENT: u64 = 5;
/// Free space the booted host gets beyond the reserve.
const HEADROOM: u64 = 16 * MIB;
/// Room for extended attributes inside a 256-byte inode (after the
/// 128-byte base, the 32-byte extra fields and the 4-byte xattr header).
const INLINE_XATTR_ROOM: u64 = 92;
/// Symlink targets shorter than this live in the inode.
const FAST_SYMLINK_MAX: u64 = 59;

/// One inode of the tree, named by one of its paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeInode {
    /// Path relative to the tree root (empty for the root itself).
    pub path: PathBuf,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// What a tree takes on ext4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TreeScan {
    /// 4 KiB blocks for file data, directories, long symlinks and
    /// external xattr blocks.
    pub data_blocks: u64,
    /// Every inode once, hard links counted once, root included.
    pub inodes: Vec<TreeInode>,
}

/// Estimates the size an ext4 root partition needs to hold `tree`, with
/// Berth's mke2fs settings: 4 KiB blocks, hard links counted once, one
/// inode per 16 KiB, the journal mke2fs picks, bitmaps, inode tables and
/// group descriptors, 5% reserved for root and 16 MiB of headroom.
pub fn root_bytes_needed(tree: &Path) -> Result<u64, DiskError> {
    Ok(scan(tree)?.bytes_needed())
}

/// Walks `root`, counting blocks and collecting one path per inode.
pub(crate) fn scan(root: &Path) -> Result<TreeScan, DiskError> {
    let mut scan = TreeScan::default();
    let mut seen_links = HashSet::new();
    let meta =
        std::fs::symlink_metadata(root).map_err(DiskError::io("reading the root tree at", root))?;
    if !meta.is_dir() {
        return Err(DiskError::Io {
            action: "reading the root tree at",
            path: root.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    walk(root, PathBuf::new(), &meta, &mut scan, &mut seen_links)?;
    Ok(scan)
}

fn walk(
    root: &Path,
    rel: PathBuf,
    meta: &std::fs::Metadata,
    scan: &mut TreeScan,
    seen_links: &mut HashSet<(u64, u64)>,
) -> Result<(), DiskError> {
    let full = root.join(&rel);
    if rel.as_os_str().as_encoded_bytes().contains(&b'\n') {
        return Err(DiskError::UnsupportedName { path: full });
    }
    // mke2fs -d keeps hard links of regular files only: every name of a
    // hard-linked symlink (OSTree checkouts link symlink objects too)
    // becomes an inode of its own, to count and to stamp.
    if meta.is_file() && meta.nlink() > 1 && !seen_links.insert((meta.dev(), meta.ino())) {
        return Ok(()); // another name of an inode already counted
    }
    scan.data_blocks += xattr_blocks(&full);
    scan.inodes.push(TreeInode {
        path: rel.clone(),
        mtime: meta.mtime(),
    });
    let ft = meta.file_type();
    if ft.is_file() {
        let blocks = meta.len().div_ceil(BLOCK);
        // One extent index block per 128 MiB covers fragmented large files.
        scan.data_blocks += blocks + blocks / BLOCKS_PER_GROUP;
    } else if ft.is_symlink() {
        if meta.len() > FAST_SYMLINK_MAX {
            scan.data_blocks += 1;
        }
    } else if ft.is_dir() {
        let mut names: Vec<OsString> = Vec::new();
        for entry in std::fs::read_dir(&full).map_err(DiskError::io("reading directory", &full))? {
            names.push(
                entry
                    .map_err(DiskError::io("reading directory", &full))?
                    .file_name(),
            );
        }
        scan.data_blocks += dir_blocks(names.iter().map(|n| n.len() as u64));
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let child_full = root.join(&child);
            let child_meta = std::fs::symlink_metadata(&child_full)
                .map_err(DiskError::io("reading", &child_full))?;
            walk(root, child, &child_meta, scan, seen_links)?;
        }
    }
    Ok(())
}

/// Blocks a directory with entries of these name lengths takes: 8 bytes
/// plus the name rounded to 4 per entry, blocks assumed half full (hashed
/// directories split), and an index block once it outgrows one block.
fn dir_blocks(name_lens: impl Iterator<Item = u64>) -> u64 {
    let bytes: u64 = 24 + name_lens.map(|n| 8 + n.next_multiple_of(4)).sum::<u64>();
    if bytes <= BLOCK - 12 {
        1
    } else {
        bytes.div_ceil(BLOCK / 2) + 1
    }
}

/// 1 when the inode's xattrs do not fit inside it, else 0.
fn xattr_blocks(path: &Path) -> u64 {
    let Ok(list_len) = rustix::fs::llistxattr_query(path) else {
        return 0; // no xattr support here: there is nothing to copy either
    };
    if list_len == 0 {
        return 0;
    }
    let mut names = vec![0u8; list_len];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return 1; // changed under us: assume the worst
    };
    let mut room = 0;
    for name in names[..len.min(list_len)]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let value_len = rustix::fs::lgetxattr_query(path, name).unwrap_or(0) as u64;
        room += 16 + (name.len() as u64).next_multiple_of(4) + value_len.next_multiple_of(4);
    }
    u64::from(room > INLINE_XATTR_ROOM)
}

impl TreeScan {
    /// Bytes of a root partition that holds this tree: see
    /// [`root_bytes_needed`].
    pub(crate) fn bytes_needed(&self) -> u64 {
        let inodes = self.inodes.len() as u64 + RESERVED_INODES;
        // lost+found takes 4 blocks; the rest depends on the total, so
        // iterate to a fixed point (it converges in a few rounds).
        let used_by_files = self.data_blocks + 4;
        let mut total = used_by_files;
        for _ in 0..32 {
            let used = used_by_files + overhead_blocks(total);
            let with_reserve = (used * 100).div_ceil(100 - RESERVED_PERCENT) + HEADROOM / BLOCK;
            // Enough blocks that the inode ratio yields enough inodes.
            let next = with_reserve.max(inodes * INODE_RATIO / BLOCK);
            if next <= total {
                break;
            }
            total = next;
        }
        (total * BLOCK).next_multiple_of(MIB)
    }
}

/// Blocks ext4 uses for itself on a file system of `total` blocks:
/// journal, bitmaps, inode tables, superblock and descriptor copies with
/// room reserved for online growth.
fn overhead_blocks(total: u64) -> u64 {
    let groups = total.div_ceil(BLOCKS_PER_GROUP);
    let inode_tables = (total * BLOCK / INODE_RATIO) * INODE_SIZE / BLOCK;
    // 64-byte descriptors; resize_inode reserves for 1024x growth, at
    // most 1024 blocks.
    let gdt = (groups * 64).div_ceil(BLOCK);
    let reserved_gdt = ((total.saturating_mul(1024).min(1 << 32)).div_ceil(BLOCKS_PER_GROUP) * 64)
        .div_ceil(BLOCK)
        .saturating_sub(gdt)
        .min(1024);
    let copies = (0..groups).filter(|&g| has_super_copy(g)).count() as u64;
    journal_blocks(total) + groups * 2 + inode_tables + copies * (1 + gdt + reserved_gdt)
}

/// Groups 0, 1 and powers of 3, 5 and 7 hold superblock copies
/// (`sparse_super`).
fn has_super_copy(group: u64) -> bool {
    let power_of = |base: u64| {
        let mut n = base;
        while n < group {
            n *= base;
        }
        n == group
    };
    group <= 1 || power_of(3) || power_of(5) || power_of(7)
}

/// The journal mke2fs 1.47 creates for a file system of `total` blocks
/// (`ext2fs_default_journal_size`).
fn journal_blocks(total: u64) -> u64 {
    match total {
        0..2048 => 0,
        2048..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("objects")).unwrap();
        std::fs::write(root.join("objects/a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(root.join("objects/a"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("objects/a", root.join("sym")).unwrap();
        let scan = scan(root).unwrap();
        let paths: Vec<_> = scan
            .inodes
            .iter()
            .map(|i| i.path.to_str().unwrap())
            .collect();
        // Sorted walk: "link" is met first and names the shared inode.
        assert_eq!(paths, ["", "link", "objects", "sym"]);
        // 3 blocks of data, one block per directory.
        assert_eq!(scan.data_blocks, 3 + 2);
    }

    #[test]
    fn a_file_is_not_a_tree() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(scan(file.path()).is_err());
    }

    #[test]
    fn estimate_covers_data_reserve_and_journal() {
        let tiny = TreeScan {
            data_blocks: 10,
            inodes: vec![],
        };
        let small = tiny.bytes_needed();
        // 16 MiB headroom, 4 MiB journal, a few MiB of tables.
        assert!((20 * MIB..=32 * MIB).contains(&small), "{small}");
        let gib = TreeScan {
            data_blocks: 262_144,
            inodes: vec![],
        };
        let needed = gib.bytes_needed();
        // 1 GiB of data: + 5% reserve + 64 MiB journal + ~1.6% tables.
        assert!(needed > 1024 * MIB * 105 / 100 + 64 * MIB, "{needed}");
        assert!(needed < 1024 * MIB * 115 / 100 + 64 * MIB, "{needed}");
        assert_eq!(needed % MIB, 0);
    }

    #[test]
    fn many_small_files_need_inodes_not_blocks() {
        let inodes = vec![
            TreeInode {
                path: PathBuf::new(),
                mtime: 0
            };
            100_000
        ];
        let scan = TreeScan {
            data_blocks: 0,
            inodes,
        };
        // 100k inodes at one per 16 KiB: over 1.5 GiB.
        assert!(scan.bytes_needed() >= 100_011 * INODE_RATIO);
    }

    #[test]
    fn directory_blocks_grow_with_entries() {
        assert_eq!(dir_blocks([1, 2, 3].into_iter()), 1);
        let big = dir_blocks(std::iter::repeat_n(64, 1000));
        assert!(big > 72_000 / 4096, "{big}");
    }

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..30).filter(|&g| has_super_copy(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27]);
    }
}
