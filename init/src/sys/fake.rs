//! A [`Sys`] that records each call as a line of text instead of making it,
//! so tests assert the exact order of boot and shutdown steps.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{MountFlags, ShutdownAction, Sys};

/// Records calls; can be told which paths are mount points and which call
/// should fail.
#[derive(Debug, Default)]
pub struct FakeSys {
    calls: RefCell<Vec<String>>,
    mountpoints: RefCell<BTreeSet<PathBuf>>,
    fail_on: RefCell<Option<String>>,
    /// Replaced by "" in recorded paths (a test's temporary directory).
    strip: Option<String>,
}

impl FakeSys {
    /// A fake that records paths as given.
    pub fn new() -> FakeSys {
        FakeSys::default()
    }

    /// A fake that records paths with the prefix `root` removed.
    pub fn with_root(root: &Path) -> FakeSys {
        FakeSys {
            strip: Some(root.display().to_string()),
            ..FakeSys::default()
        }
    }

    /// Pretends something is already mounted at `path`.
    pub fn mounted(self, path: &str) -> FakeSys {
        self.mountpoints.borrow_mut().insert(PathBuf::from(path));
        self
    }

    /// Makes the first call whose text starts with `prefix` fail with EIO.
    pub fn fail_on(self, prefix: &str) -> FakeSys {
        *self.fail_on.borrow_mut() = Some(prefix.to_string());
        self
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn p(&self, path: &Path) -> String {
        let text = path.display().to_string();
        match self.strip.as_deref().and_then(|p| text.strip_prefix(p)) {
            Some("") => "/".to_string(),
            Some(rest) => rest.to_string(),
            None => text,
        }
    }

    fn record(&self, call: String) -> io::Result<()> {
        let fail = {
            let mut guard = self.fail_on.borrow_mut();
            match guard.as_deref() {
                Some(prefix) if call.starts_with(prefix) => {
                    *guard = None;
                    true
                }
                _ => false,
            }
        };
        self.calls.borrow_mut().push(call);
        if fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

impl Sys for FakeSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        let opts = if data.is_empty() {
            flags.to_string()
        } else {
            format!("{flags},{data}")
        };
        self.record(format!(
            "mount -t {fstype} {source} {} -o {opts}",
            self.p(target)
        ))?;
        self.mountpoints.borrow_mut().insert(target.to_path_buf());
        Ok(())
    }
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.record(format!("bind {} {}", self.p(source), self.p(target)))
    }
    fn remount_bind(&self, target: &Path, readonly: bool) -> io::Result<()> {
        let mode = if readonly { "ro" } else { "rw" };
        self.record(format!("remount-bind {} {mode}", self.p(target)))
    }
    fn remount_fs_readonly(&self, target: &Path) -> io::Result<()> {
        self.record(format!("remount-ro {}", self.p(target)))
    }
    fn move_mount(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.record(format!("move {} {}", self.p(source), self.p(target)))
    }
    fn make_private(&self, target: &Path, recursive: bool) -> io::Result<()> {
        let op = if recursive { "rprivate" } else { "private" };
        self.record(format!("{op} {}", self.p(target)))
    }
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        let op = if detach { "umount-lazy" } else { "umount" };
        self.record(format!("{op} {}", self.p(target)))
    }
    fn is_mountpoint(&self, target: &Path) -> bool {
        self.mountpoints.borrow().contains(target)
    }
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir {} {mode:o}", self.p(path)))
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("rmdir {}", self.p(path)))
    }
    fn touch(&self, path: &Path) -> io::Result<()> {
        self.record(format!("touch {}", self.p(path)))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", self.p(path)))
    }
    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chroot {}", self.p(path)))
    }
    fn clear_initramfs(&self, keep: &Path) -> io::Result<()> {
        self.record(format!("clear-initramfs keep={}", self.p(keep)))
    }
    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("insmod {}", self.p(path)))
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"))
    }
    fn kill_all(&self, signal: i32) -> io::Result<()> {
        self.record(format!("kill-all {signal}"))
    }
    fn wait_all_children(&self, timeout: Duration) -> bool {
        let _ = self.record(format!("wait-children {}ms", timeout.as_millis()));
        true
    }
    fn sync(&self) {
        let _ = self.record("sync".to_string());
    }
    fn reboot(&self, action: ShutdownAction) -> io::Result<()> {
        self.record(format!("reboot {action:?}"))
    }
    fn exec(&self, path: &Path) -> io::Error {
        let _ = self.record(format!("exec {}", self.p(path)));
        io::Error::from_raw_os_error(libc::ENOENT)
    }
}
