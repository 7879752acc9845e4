//! The shape of a Berth OS tree, as OSTree expects a bootable commit:
//! merged /usr, configuration defaults in /usr/etc (libostree copies them
//! to each deployment's /etc), the kernel in /usr/lib/modules/<kver>/,
//! an empty /var (the stateroot's /var is bound over it at boot), and the
//! top-level links of an OSTree host (/home -> var/home, /ostree ->
//! sysroot/ostree, ...).

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::fsutil::{merge_dir_into, remove_any};

/// Top-level directories that become links into /usr.
const MERGED: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Top-level links of an OSTree host (mutable state lives in /var).
const TOP_LINKS: &[(&str, &str)] = &[
    ("home", "var/home"),
    ("root", "var/roothome"),
    ("opt", "var/opt"),
    ("srv", "var/srv"),
    ("mnt", "var/mnt"),
    ("media", "run/media"),
    ("ostree", "sysroot/ostree"),
];

/// Empty top-level directories: mount points and the stateroot's /var.
/// No /etc: libostree refuses a commit with both /etc and /usr/etc.
const TOP_DIRS: &[&str] = &[
    "boot", "dev", "efi", "proc", "run", "sys", "sysroot", "tmp", "var",
];

/// Moves /bin, /sbin, /lib, /lib64 into /usr and leaves relative links.
pub fn merge_usr(root: &Path) -> io::Result<()> {
    for (top, usr) in MERGED {
        let from = root.join(top);
        let meta = std::fs::symlink_metadata(&from);
        if meta.as_ref().is_ok_and(|m| m.is_dir()) {
            merge_dir_into(&from, &root.join(usr))?;
        } else if meta.is_ok() {
            std::fs::remove_file(&from)?;
        }
        if root.join(usr).exists() {
            symlink(usr, &from)?;
        }
    }
    Ok(())
}

/// Moves `/boot/vmlinuz-<kver>` to `/usr/lib/modules/<kver>/vmlinuz` (and
/// the config next to it) and empties /boot. Returns the kernel version.
pub fn move_kernel(root: &Path) -> io::Result<String> {
    let boot = root.join("boot");
    let mut kver = None;
    for entry in std::fs::read_dir(&boot)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            if kver.is_some() {
                return Err(io::Error::other(
                    "more than one kernel in /boot: name one kernel package",
                ));
            }
            kver = Some(v.to_string());
        }
    }
    let kver =
        kver.ok_or_else(|| io::Error::other("the kernel package installed no /boot/vmlinuz-*"))?;
    let dest = root.join("usr/lib/modules").join(&kver);
    std::fs::create_dir_all(&dest)?;
    std::fs::rename(boot.join(format!("vmlinuz-{kver}")), dest.join("vmlinuz"))?;
    let config = boot.join(format!("config-{kver}"));
    if config.exists() {
        std::fs::rename(&config, dest.join("config"))?;
    }
    remove_any(&boot)?;
    std::fs::create_dir(&boot)?;
    Ok(kver)
}

/// Moves /etc to /usr/etc (the defaults of every deployment's /etc).
pub fn move_etc(root: &Path) -> io::Result<()> {
    let etc = root.join("etc");
    let usr_etc = root.join("usr/etc");
    if etc.is_dir() {
        merge_dir_into(&etc, &usr_etc)?;
    }
    std::fs::create_dir_all(&usr_etc)
}

/// Creates the top-level directories and links of an OSTree host,
/// replacing whatever the packages put there.
pub fn ostree_toplevel(root: &Path) -> io::Result<()> {
    for (name, target) in TOP_LINKS {
        remove_any(&root.join(name))?;
        symlink(target, root.join(name))?;
    }
    for dir in TOP_DIRS {
        let p = root.join(dir);
        if !p.is_dir() {
            remove_any(&p)?;
            std::fs::create_dir(&p)?;
        }
    }
    // /var of the commit stays empty: libostree never checks it out.
    for entry in std::fs::read_dir(root.join("var"))? {
        remove_any(&entry?.path())?;
    }
    for entry in std::fs::read_dir(root.join("tmp"))? {
        remove_any(&entry?.path())?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Links every busybox applet that no package provides to /usr/bin/busybox,
/// so the debug shell and simple services find `sh`, `ls`, `ip` ...
/// `applets` is `busybox --list-full` output (paths like `usr/bin/awk`).
pub fn link_busybox_applets(root: &Path, busybox: &str, applets: &str) -> io::Result<usize> {
    let mut linked = 0;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Applets under /bin and /sbin live in /usr on a merged system.
        let path = if applet.starts_with("usr/") {
            applet.to_string()
        } else {
            format!("usr/{applet}")
        };
        let dest = root.join(&path);
        if std::fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let Some(parent) = dest.parent() else {
            continue;
        };
        std::fs::create_dir_all(parent)?;
        let depth = path.matches('/').count();
        let target = format!("{}{}", "../".repeat(depth), busybox);
        symlink(target, &dest)?;
        linked += 1;
    }
    Ok(linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_links_and_keeps_files() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("bin/sh"), "sh").unwrap();
        merge_usr(r).unwrap();
        assert_eq!(
            std::fs::read_link(r.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(std::fs::read_to_string(r.join("usr/bin/sh")).unwrap(), "sh");
        assert!(!r.join("lib64").exists());
    }

    #[test]
    fn kernel_moves_under_usr_lib_modules() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("boot")).unwrap();
        std::fs::write(r.join("boot/vmlinuz-6.1.0-9-amd64"), "k").unwrap();
        std::fs::write(r.join("boot/System.map-6.1.0-9-amd64"), "m").unwrap();
        assert_eq!(move_kernel(r).unwrap(), "6.1.0-9-amd64");
        assert!(r.join("usr/lib/modules/6.1.0-9-amd64/vmlinuz").is_file());
        assert_eq!(std::fs::read_dir(r.join("boot")).unwrap().count(), 0);
    }

    #[test]
    fn toplevel_has_ostree_links_and_empty_var() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("var/lib/x")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/hostname"), "h").unwrap();
        move_etc(r).unwrap();
        ostree_toplevel(r).unwrap();
        assert_eq!(
            std::fs::read_link(r.join("ostree")).unwrap(),
            Path::new("sysroot/ostree")
        );
        assert_eq!(
            std::fs::read_link(r.join("home")).unwrap(),
            Path::new("var/home")
        );
        assert_eq!(std::fs::read_dir(r.join("var")).unwrap().count(), 0);
        assert!(r.join("usr/etc/hostname").is_file());
        assert!(!r.join("etc").exists());
    }

    #[test]
    fn busybox_applets_link_only_where_free() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/busybox"), "").unwrap();
        std::fs::write(r.join("usr/bin/ls"), "coreutils").unwrap();
        let n =
            link_busybox_applets(r, "usr/bin/busybox", "bin/sh\nusr/bin/ls\nsbin/ip\n").unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            std::fs::read_link(r.join("usr/bin/sh")).unwrap(),
            Path::new("../../usr/bin/busybox")
        );
        assert_eq!(
            std::fs::read_link(r.join("usr/sbin/ip")).unwrap(),
            Path::new("../../usr/bin/busybox")
        );
        assert_eq!(
            std::fs::read_to_string(r.join("usr/bin/ls")).unwrap(),
            "coreutils"
        );
    }
}
