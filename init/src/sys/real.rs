//! The real [`Sys`]: rustix calls, plus [`crate::sys::ffi`] where rustix has no
//! wrapper.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags as RxFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::WaitOptions;
use rustix::system::RebootCommand;

use super::ffi;
use super::{MountFlags, ShutdownAction, Sys};
use crate::mounts;

/// The machine itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// finit_module flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

fn rx_flags(flags: MountFlags) -> RxFlags {
    let mut out = RxFlags::empty();
    if flags.nosuid {
        out |= RxFlags::NOSUID;
    }
    if flags.nodev {
        out |= RxFlags::NODEV;
    }
    if flags.noexec {
        out |= RxFlags::NOEXEC;
    }
    if flags.rdonly {
        out |= RxFlags::RDONLY;
    }
    if flags.dirsync {
        out |= RxFlags::DIRSYNC;
    }
    out
}

impl Sys for RealSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        let data = std::ffi::CString::new(data)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
        let data: Option<&CStr> = if data.is_empty() {
            None
        } else {
            Some(data.as_c_str())
        };
        rustix::mount::mount(source, target, fstype, rx_flags(flags), data)?;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        rustix::mount::mount_bind(source, target)?;
        Ok(())
    }

    fn remount_bind(&self, target: &Path, readonly: bool) -> io::Result<()> {
        let mut flags = RxFlags::BIND;
        if readonly {
            flags |= RxFlags::RDONLY;
        }
        rustix::mount::mount_remount(target, flags, "")?;
        Ok(())
    }

    fn remount_fs_readonly(&self, target: &Path) -> io::Result<()> {
        rustix::mount::mount_remount(target, RxFlags::RDONLY, "")?;
        Ok(())
    }

    fn move_mount(&self, source: &Path, target: &Path) -> io::Result<()> {
        rustix::mount::mount_move(source, target)?;
        Ok(())
    }

    fn make_private(&self, target: &Path, recursive: bool) -> io::Result<()> {
        let mut flags = MountPropagationFlags::PRIVATE;
        if recursive {
            flags |= MountPropagationFlags::REC;
        }
        rustix::mount::mount_change(target, flags)?;
        Ok(())
    }

    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        let flags = if detach {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        rustix::mount::unmount(target, flags)?;
        Ok(())
    }

    fn is_mountpoint(&self, target: &Path) -> bool {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|text| {
                mounts::mountinfo_targets(&text)
                    .iter()
                    .any(|t| Path::new(t) == target)
            })
            .unwrap_or(false)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(drop)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        rustix::process::chroot(path)?;
        Ok(())
    }

    fn clear_initramfs(&self, keep: &Path) -> io::Result<()> {
        let fs = rustix::fs::statfs("/")?;
        #[allow(clippy::unnecessary_cast)]
        let magic = fs.f_type as i64;
        if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
            return Err(io::Error::other(
                "/ is not an initramfs (ramfs or tmpfs); not deleting it",
            ));
        }
        let dev = fs::symlink_metadata("/")?.dev();
        remove_contents(Path::new("/"), dev, keep);
        Ok(())
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let file = fs::File::open(path)?;
        let name = path.to_string_lossy();
        let flags = if name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".gz") {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        match rustix::system::finit_module(&file, c"", flags) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        rustix::system::sethostname(name.as_bytes())?;
        Ok(())
    }

    fn kill_all(&self, signal: i32) -> io::Result<()> {
        ffi::kill_all(signal)
    }

    fn wait_all_children(&self, timeout: Duration) -> bool {
        let deadline = crate::sys::clock::from_now(timeout);
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return true, // ECHILD: nobody left
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn reboot(&self, action: ShutdownAction) -> io::Result<()> {
        let cmd = match action {
            ShutdownAction::Reboot => RebootCommand::Restart,
            ShutdownAction::Halt => RebootCommand::Halt,
            ShutdownAction::Poweroff => RebootCommand::PowerOff,
        };
        ffi::reboot_in_child(cmd)
    }

    fn exec(&self, path: &Path) -> io::Error {
        Command::new(path).exec()
    }
}

/// Deletes everything under `dir` that is on device `dev`, except `keep`
/// (busybox switch_root's delete_contents). Errors are skipped: what cannot
/// be freed only costs memory.
fn remove_contents(dir: &Path, dev: u64, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if meta.dev() != dev {
                continue; // a mount point of another file system
            }
            remove_contents(&path, dev, keep);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}
