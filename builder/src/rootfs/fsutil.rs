//! Small file-tree helpers the rootfs steps share: moving trees, removing
//! paths that may not exist, measuring a tree with hard links counted once.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Removes a file, symlink or whole directory; a missing path is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves everything in directory `from` into directory `to` (created if
/// needed). An entry that exists on both sides is merged when both are
/// directories; otherwise the one already in `to` wins and the other is
/// dropped (for merged /usr: Debian ships the same file under both only
/// as compatibility copies).
pub fn merge_dir_into(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        match std::fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(&src, &dst)?,
            Err(e) => return Err(e),
            Ok(dm) => {
                let sm = std::fs::symlink_metadata(&src)?;
                if sm.is_dir() && dm.is_dir() {
                    merge_dir_into(&src, &dst)?;
                } else {
                    remove_any(&src)?;
                }
            }
        }
    }
    std::fs::remove_dir(from)
}

/// Bytes used by the files of a tree (hard links counted once) and the
/// number of inodes.
pub fn tree_usage(root: &Path) -> io::Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let m = entry.metadata()?;
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            inodes += 1;
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() {
                bytes += m.len();
            }
        }
    }
    Ok((bytes, inodes))
}

/// Removes empty directories below `root` (not `root` itself), deepest first.
pub fn remove_empty_dirs(root: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let p = entry.path();
            remove_empty_dirs(&p)?;
            if std::fs::read_dir(&p)?.next().is_none() {
                std::fs::remove_dir(&p)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_existing_and_merges_directories() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("bin");
        let b = t.path().join("usr/bin");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir_all(b.join("sub")).unwrap();
        std::fs::write(a.join("only-in-bin"), "1").unwrap();
        std::fs::write(a.join("both"), "bin").unwrap();
        std::fs::write(b.join("both"), "usr").unwrap();
        std::fs::write(a.join("sub/x"), "x").unwrap();
        merge_dir_into(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(b.join("only-in-bin")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(b.join("both")).unwrap(), "usr");
        assert_eq!(std::fs::read_to_string(b.join("sub/x")).unwrap(), "x");
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), vec![0u8; 1000]).unwrap();
        std::fs::hard_link(t.path().join("f"), t.path().join("g")).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        assert_eq!(tree_usage(t.path()).unwrap(), (1000, 2));
    }

    #[test]
    fn empty_dirs_go() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(t.path().join("k")).unwrap();
        std::fs::write(t.path().join("k/f"), "").unwrap();
        remove_empty_dirs(t.path()).unwrap();
        assert!(!t.path().join("a").exists());
        assert!(t.path().join("k/f").exists());
        remove_any(&t.path().join("nope")).unwrap();
    }
}
