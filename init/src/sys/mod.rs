//! The system layer, under everything else, in both stages and the
//! supervisor: the kernel's interfaces and nothing of Berth's policy.
//!
//! This module: the system calls that change the machine during boot and
//! shutdown (mounts, switch root, module loading, reboot), behind one
//! trait. [`RealSys`] makes the calls; [`fake::FakeSys`] (tests only)
//! records them, so the exact order of stage 1, stage 2 and shutdown is
//! unit-tested without root, after youki's `libcontainer/src/syscall/`.
//!
//! Beside it: [`ffi`] (the few raw calls rustix lacks), [`signals`] (the
//! blocked mask and the signalfd), [`reaper`] (wait statuses) and
//! [`clock`] (boot-time clocks).

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

pub(crate) use real::RealSys;

pub(crate) mod clock;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod ffi;
mod real;
pub(crate) mod reaper;
pub(crate) mod signals;

/// The flags of a file-system mount, as data (printable in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    /// MS_NOSUID
    pub nosuid: bool,
    /// MS_NODEV
    pub nodev: bool,
    /// MS_NOEXEC
    pub noexec: bool,
    /// MS_RDONLY
    pub rdonly: bool,
    /// MS_DIRSYNC: directory changes are written synchronously (the ESP:
    /// on vfat a rename then writes the new entry whole before the old
    /// one is removed).
    pub dirsync: bool,
}

impl MountFlags {
    /// No flags.
    pub const NONE: MountFlags = MountFlags {
        nosuid: false,
        nodev: false,
        noexec: false,
        rdonly: false,
        dirsync: false,
    };
    /// nosuid,nodev,noexec: the usual for kernel file systems.
    pub const SECURE: MountFlags = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: true,
        rdonly: false,
        dirsync: false,
    };
    /// nosuid,nodev: the usual for tmpfs.
    pub const NOSUID_NODEV: MountFlags = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: false,
        rdonly: false,
        dirsync: false,
    };
    /// nosuid,noexec (devpts).
    pub const NOSUID_NOEXEC: MountFlags = MountFlags {
        nosuid: true,
        nodev: false,
        noexec: true,
        rdonly: false,
        dirsync: false,
    };
    /// nosuid,nodev,noexec,dirsync: the ESP.
    pub const ESP: MountFlags = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: true,
        rdonly: false,
        dirsync: true,
    };
    /// nosuid (devtmpfs).
    pub const NOSUID: MountFlags = MountFlags {
        nosuid: true,
        nodev: false,
        noexec: false,
        rdonly: false,
        dirsync: false,
    };
}

impl fmt::Display for MountFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.rdonly, "ro"),
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
            (self.noexec, "noexec"),
            (self.dirsync, "dirsync"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("defaults")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// What happens at the end of a shutdown (mirrors the control protocol).
pub use berth_hostapi::control::ShutdownAction;

/// The system calls of boot and shutdown. Every method is one step that
/// tests can see; none of them reads files (callers do that themselves).
pub trait Sys {
    /// mount(2) of a file system: `mount -t fstype source target -o flags,data`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    /// A bind mount of `source` on `target` (not recursive).
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()>;
    /// Remounts the bind mount at `target` read-only or read-write; only that
    /// mount point changes, not the file system.
    fn remount_bind(&self, target: &Path, readonly: bool) -> io::Result<()>;
    /// Remounts the file system at `target` read-only (its superblock: the
    /// journal is flushed and the file system marked clean).
    fn remount_fs_readonly(&self, target: &Path) -> io::Result<()>;
    /// MS_MOVE of the mount at `source` to `target`.
    fn move_mount(&self, source: &Path, target: &Path) -> io::Result<()>;
    /// Makes the mount at `target` private (recursively or not).
    fn make_private(&self, target: &Path, recursive: bool) -> io::Result<()>;
    /// umount2(2); `detach` = MNT_DETACH.
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()>;
    /// Whether something is mounted exactly at `target` (a query, not recorded).
    fn is_mountpoint(&self, target: &Path) -> bool;
    /// mkdir -p with `mode` for the last component; existing is fine.
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// rmdir(2).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file if it does not exist.
    fn touch(&self, path: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// Deletes the initramfs contents under `/`, staying on its device and
    /// leaving `keep` (the new root) alone; refuses unless `/` is a ramfs
    /// or tmpfs, like switch_root.
    fn clear_initramfs(&self, keep: &Path) -> io::Result<()>;
    /// Loads the kernel module file at `path` (finit_module); an already
    /// loaded module is success.
    fn load_module(&self, path: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Sends `signal` to every process but PID 1.
    fn kill_all(&self, signal: i32) -> io::Result<()>;
    /// Reaps children until none are left or `timeout` passes; returns
    /// whether none are left.
    fn wait_all_children(&self, timeout: Duration) -> bool;
    /// sync(2).
    fn sync(&self);
    /// reboot(2) (from a forked child, so PID 1 itself never ends).
    fn reboot(&self, action: ShutdownAction) -> io::Result<()>;
    /// execve(2) of `path` with argv `[path]`; returns only on failure.
    fn exec(&self, path: &Path) -> io::Error;
}
