//! Leaving the initramfs: move the API mounts into the new root, free the
//! initramfs, make the new root `/` (MS_MOVE + chroot: pivot_root does not
//! work on the initramfs rootfs) and exec stage 2.
//!
//! The order is util-linux/busybox switch_root's, with systemd's move of
//! /proc, /sys, /dev and /run first (so /run/ostree-booted survives).

use std::path::Path;

use crate::sys::Sys;

/// The mounts carried into the new root.
pub const MOVED_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Why switching root failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SwitchError {
    /// What was being done.
    pub what: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn step(what: impl Into<String>, result: std::io::Result<()>) -> Result<(), SwitchError> {
    result.map_err(|source| SwitchError {
        what: what.into(),
        source,
    })
}

/// Switches to `new_root` and execs `init` (a path inside it). Returns only
/// on failure. Freeing the initramfs is best effort: a failure costs memory,
/// not the boot.
pub fn switch_root(sys: &dyn Sys, new_root: &Path, init: &Path) -> SwitchError {
    match switch(sys, new_root) {
        Ok(()) => {
            // Lines still queued for the console would die with this
            // process image (bounded wait).
            crate::console::drain();
            SwitchError {
                what: format!("executing {}", init.display()),
                source: sys.exec(init),
            }
        }
        Err(e) => e,
    }
}

fn switch(sys: &dyn Sys, new_root: &Path) -> Result<(), SwitchError> {
    for mount in MOVED_MOUNTS {
        let target = new_root.join(mount.trim_start_matches('/'));
        if sys.move_mount(Path::new(mount), &target).is_err() {
            // Not there to move (or no mount point): never leave it behind.
            let _ = sys.unmount(Path::new(mount), true);
        }
    }
    step(
        format!("entering {}", new_root.display()),
        sys.chdir(new_root),
    )?;
    if let Err(e) = sys.clear_initramfs(new_root) {
        crate::say!("not freeing the initramfs: {e}");
    }
    step(
        format!("moving {} to /", new_root.display()),
        sys.move_mount(new_root, Path::new("/")),
    )?;
    step("chroot into the new root", sys.chroot(Path::new(".")))?;
    step("entering /", sys.chdir(Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn moves_api_mounts_frees_initramfs_then_execs() {
        let sys = FakeSys::new();
        let err = switch_root(
            &sys,
            Path::new("/sysroot"),
            Path::new("/usr/lib/berth/berth-init"),
        );
        assert_eq!(
            sys.calls(),
            [
                "move /dev /sysroot/dev",
                "move /proc /sysroot/proc",
                "move /sys /sysroot/sys",
                "move /run /sysroot/run",
                "chdir /sysroot",
                "clear-initramfs keep=/sysroot",
                "move /sysroot /",
                "chroot .",
                "chdir /",
                "exec /usr/lib/berth/berth-init",
            ]
        );
        // The fake exec fails, which is reported with the path.
        assert_eq!(err.what, "executing /usr/lib/berth/berth-init");
    }

    #[test]
    fn a_failed_move_stops_before_exec() {
        let sys = FakeSys::new().fail_on("move /sysroot /");
        let err = switch_root(&sys, Path::new("/sysroot"), Path::new("/sbin/init"));
        assert_eq!(err.what, "moving /sysroot to /");
        assert!(!sys.calls().iter().any(|c| c.starts_with("exec")));
    }
}
