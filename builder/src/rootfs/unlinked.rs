//! Shared libraries that nothing in the tree links. Debian packages ship
//! a library package whole: libicu72 brings libicui18n, libicuio and the
//! test libraries although the only user of ICU in an image (libxml2, via
//! libarchive, via libostree) links libicuuc alone. A host has no package
//! manager that could later add a user of them, so they are dead weight.
//!
//! The rule: a library file directly in the multiarch directory stays when
//! some ELF file of the tree needs it, directly or through other
//! libraries (`DT_NEEDED`), or when its package is one the manifest (or
//! Berth) names, or glibc's or libgcc's (they are loaded with dlopen:
//! NSS modules, libgcc_s for unwinding). Files in subdirectories (PAM,
//! SASL, GIO modules, plugins in general) are never removed: they are
//! loaded by path, and their own needs count like any program's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where Debian puts the architecture's shared libraries (after /usr merge).
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// Packages whose libraries stay whether or not anything links them.
pub const ALWAYS_KEPT: &[&str] = &["libc6", "libgcc-s1"];

/// What [`drop_unlinked`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// File names (in [`LIB_DIR`]) of the removed libraries, symlinks included.
    pub files: Vec<String>,
    /// Bytes of the regular files removed.
    pub bytes: u64,
}

/// The tree path a package's file lands at after the /usr merge
/// (`lib/x/y` -> `usr/lib/x/y`).
pub fn merged_path(packaged: &str) -> String {
    let p = packaged.trim_start_matches("./").trim_start_matches('/');
    for top in ["bin/", "sbin/", "lib/", "lib64/"] {
        if p.starts_with(top) {
            return format!("usr/{p}");
        }
    }
    p.to_string()
}

/// Removes the libraries of [`LIB_DIR`] that no ELF file in `root` needs
/// and that are not in `kept` (tree paths, see [`merged_path`]), with the
/// symlinks that named them.
pub fn drop_unlinked(root: &Path, kept: &BTreeSet<String>) -> std::io::Result<Removed> {
    let lib_dir = root.join(LIB_DIR);
    let Ok(entries) = std::fs::read_dir(&lib_dir) else {
        return Ok(Removed::default());
    };
    // Library files that may go, and every name (file or symlink) in the
    // directory with the real file it stands for.
    let mut candidates = BTreeSet::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            if let Ok(target) = std::fs::canonicalize(&path) {
                names.insert(name, target);
            }
        } else if ft.is_file() {
            let target = std::fs::canonicalize(&path)?;
            names.insert(name.clone(), target.clone());
            let tree_path = format!("{LIB_DIR}/{name}");
            if name.contains(".so") && !kept.contains(&tree_path) && is_elf(&path) {
                candidates.insert(target);
            }
        }
    }
    // Every other ELF file is a root.
    let mut reached: BTreeSet<PathBuf> = BTreeSet::new();
    let mut queue: Vec<PathBuf> = Vec::new();
    walk_files(root, &mut |path| {
        if let Ok(real) = std::fs::canonicalize(path) {
            if !candidates.contains(&real) && is_elf(&real) && reached.insert(real.clone()) {
                queue.push(real);
            }
        }
    })?;
    while let Some(file) = queue.pop() {
        for needed in needed_libraries(&file) {
            if let Some(target) = names.get(&needed) {
                if reached.insert(target.clone()) {
                    queue.push(target.clone());
                }
            }
        }
    }
    let mut removed = Removed::default();
    let dead: BTreeSet<&PathBuf> = candidates
        .iter()
        .filter(|c| !reached.contains(*c))
        .collect();
    for (name, target) in &names {
        if dead.contains(target) {
            let path = lib_dir.join(name);
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_file() {
                removed.bytes += meta.len();
            }
            std::fs::remove_file(&path)?;
            removed.files.push(name.clone());
        }
    }
    Ok(removed)
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The `DT_NEEDED` names of an ELF file (none when it cannot be parsed).
fn needed_libraries(path: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    match goblin::elf::Elf::parse(&bytes) {
        Ok(elf) => elf.libraries.iter().map(|s| s.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Calls `f` with every regular file under `dir` (symlinks not followed).
fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk_files(&entry.path(), f)?;
        } else if ft.is_file() {
            f(&entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A real shared library of the build machine, by soname.
    fn host_library(soname: &str) -> PathBuf {
        let p = Path::new("/usr/lib/x86_64-linux-gnu").join(soname);
        assert!(p.exists(), "{} is missing on this machine", p.display());
        std::fs::canonicalize(p).unwrap()
    }

    fn put_library(root: &Path, soname: &str) -> String {
        let real = host_library(soname);
        let file = real.file_name().unwrap().to_string_lossy().into_owned();
        let dir = root.join(LIB_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&real, dir.join(&file)).unwrap();
        if file != soname {
            symlink(&file, dir.join(soname)).unwrap();
        }
        file
    }

    #[test]
    fn libraries_nothing_links_go_the_others_stay() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // A program (this test binary: it needs libc and libgcc_s).
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), root.join("usr/bin/prog")).unwrap();
        let libc = put_library(root, "libc.so.6");
        let gcc = put_library(root, "libgcc_s.so.1");
        // zlib: nothing links it.
        let zlib = put_library(root, "libz.so.1");
        // A plugin in a subdirectory is a root and keeps what it needs... (it
        // is a copy of libz here, which needs libc only).
        std::fs::create_dir_all(root.join(LIB_DIR).join("plugins")).unwrap();
        std::fs::copy(
            host_library("libz.so.1"),
            root.join(LIB_DIR).join("plugins/p.so"),
        )
        .unwrap();
        let removed = drop_unlinked(root, &BTreeSet::new()).unwrap();
        let mut want = vec![zlib.clone(), "libz.so.1".to_string()];
        want.sort();
        want.dedup();
        let mut got = removed.files.clone();
        got.sort();
        assert_eq!(got, want);
        assert!(removed.bytes > 10_000, "{removed:?}");
        let lib = root.join(LIB_DIR);
        assert!(lib.join(&libc).exists() && lib.join(&gcc).exists());
        assert!(lib.join("plugins/p.so").exists());
        assert!(!lib.join("libz.so.1").exists());
        // Named (kept) packages' files stay, linked or not; a second run
        // has nothing to remove.
        let zlib2 = put_library(root, "libz.so.1");
        let kept = BTreeSet::from([format!("{LIB_DIR}/{zlib2}")]);
        assert_eq!(drop_unlinked(root, &kept).unwrap(), Removed::default());
        assert!(lib.join("libz.so.1").exists());
    }

    #[test]
    fn packaged_paths_follow_the_usr_merge() {
        assert_eq!(
            merged_path("./lib/x86_64-linux-gnu/libz.so.1"),
            "usr/lib/x86_64-linux-gnu/libz.so.1"
        );
        assert_eq!(
            merged_path("./usr/lib/x86_64-linux-gnu/libz.so.1"),
            "usr/lib/x86_64-linux-gnu/libz.so.1"
        );
        assert_eq!(merged_path("sbin/x"), "usr/sbin/x");
        assert_eq!(merged_path("./etc/x"), "etc/x");
    }
}
