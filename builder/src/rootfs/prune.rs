//! What a container host does not need: documentation, manual pages,
//! locales, shell completions, package-manager state, and the files of
//! the packages Debian's kernel package pulls in only to build an
//! initramfs on the machine (Berth builds its own, at build time).

use std::path::Path;
use std::process::Command;

use super::fsutil::remove_any;
use crate::command::{self, CommandError};

/// Directories removed whole (paths as the packages ship them).
pub const PRUNED_DIRS: &[&str] = &[
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/share/pixmaps",
    "usr/share/menu",
    "usr/share/gdb",
    "usr/share/initramfs-tools",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/share/pam-configs",
    "usr/include",
    "var/cache",
    "var/lib/apt",
    "var/lib/dpkg",
    "var/log",
    "etc/initramfs-tools",
    "etc/kernel",
    "etc/apt",
    "etc/dpkg",
    "dev",
    "boot/grub",
];

/// Packages whose files are removed unless the manifest asks for them by
/// name: the kernel package's initramfs machinery and what only it needs.
pub const DROPPED_PACKAGES: &[&str] = &[
    "initramfs-tools",
    "initramfs-tools-core",
    "klibc-utils",
    "libklibc",
    "linux-base",
    "cpio",
    "logsave",
    "udev",
    "adduser",
    "passwd",
    "debconf",
];

/// Removes the pruned directories and, under `usr/share/doc`, everything
/// but the copyright files (licences stay with the binaries they cover).
pub fn prune_paths(root: &Path) -> std::io::Result<()> {
    for dir in PRUNED_DIRS {
        remove_any(&root.join(dir))?;
    }
    remove_static_libraries(&root.join("usr/lib"))?;
    let doc = root.join("usr/share/doc");
    if doc.is_dir() {
        for pkg in std::fs::read_dir(&doc)? {
            let pkg = pkg?.path();
            if !pkg.is_dir() {
                remove_any(&pkg)?;
                continue;
            }
            for f in std::fs::read_dir(&pkg)? {
                let f = f?;
                if f.file_name() != "copyright" {
                    remove_any(&f.path())?;
                }
            }
        }
    }
    Ok(())
}

/// Paths (files and symlinks, relative, no leading "./") a .deb installs.
pub fn deb_files(deb: &Path) -> Result<Vec<String>, CommandError> {
    let listing = command::run_stdout(
        "listing a package's files",
        Command::new("dpkg-deb").arg("--contents").arg(deb),
    )?;
    Ok(listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(listing_path)
        .filter(|p| !p.is_empty())
        .collect())
}

/// Static libraries (`*.a`) link programs at build time; a host never does.
fn remove_static_libraries(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            remove_static_libraries(&path)?;
        } else if path.extension().is_some_and(|e| e == "a") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The path of one `dpkg-deb --contents` line:
/// `-rw-r--r-- root/root    1234 2023-01-01 00:00 ./usr/bin/x [-> target]`
/// (five columns of varying width, then the path).
fn listing_path(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    for _ in 0..5 {
        let end = rest.find(char::is_whitespace)?;
        rest = rest[end..].trim_start();
    }
    let path = rest.split(" -> ").next()?.trim();
    Some(path.trim_start_matches("./").to_string())
}

/// Removes the files of each dropped package (found by name among the
/// extracted `.deb`s) from the tree at `root`; returns the packages dropped.
pub fn drop_packages(
    root: &Path,
    debs: &[(String, std::path::PathBuf)],
    keep: &[String],
) -> Result<Vec<String>, CommandError> {
    let mut dropped = Vec::new();
    for (name, deb) in debs {
        if !DROPPED_PACKAGES.contains(&name.as_str()) || keep.iter().any(|k| k == name) {
            continue;
        }
        for f in deb_files(deb)? {
            let p = root.join(&f);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_file(&p);
            }
        }
        dropped.push(name.clone());
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines() {
        assert_eq!(
            listing_path("-rw-r--r-- root/root     12345 2023-01-01 00:00 ./usr/lib/udev/hwdb.bin")
                .as_deref(),
            Some("usr/lib/udev/hwdb.bin")
        );
        assert_eq!(
            listing_path("lrwxrwxrwx root/root         0 2023-01-01 00:00 ./bin/x -> y").as_deref(),
            Some("bin/x")
        );
        assert_eq!(listing_path("garbage"), None);
    }

    #[test]
    fn docs_keep_only_copyright() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("usr/share/doc/pkg");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("copyright"), "c").unwrap();
        std::fs::write(d.join("changelog.gz"), "x").unwrap();
        std::fs::create_dir_all(t.path().join("usr/share/man/man1")).unwrap();
        prune_paths(t.path()).unwrap();
        assert!(d.join("copyright").exists());
        assert!(!d.join("changelog.gz").exists());
        assert!(!t.path().join("usr/share/man").exists());
    }
}
