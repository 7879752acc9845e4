//! The directories a service needs before each start: containers'
//! volumes, `VOLUMES_ROOT/<container>/<volume>`. Container root can write
//! anything into its volume (a set-user-ID copy of a shell, a device
//! node), so the volume root above them belongs to root with mode 0700,
//! as Docker keeps `/var/lib/docker` 0710: no other user of the host can
//! reach what is below. It is made so, or set back to it (a host
//! installed by an older Berth has it 0755), before every start, and a
//! symlink in its place is refused, never followed.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// The mode of the volume root.
pub const PRIVATE_MODE: u32 = 0o700;
/// The mode of a directory made below it (the volume itself: a non-root
/// user of the container may need to read it).
pub const DIR_MODE: u32 = 0o755;

/// Makes `dir` (parents too) when missing; when it lies below
/// `private_root`, that root is made or set back to root:root 0700 first.
pub fn prepare(private_root: &Path, dir: &Path) -> io::Result<()> {
    if dir.starts_with(private_root) {
        make_private(private_root)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// `root` as a directory owned by root with mode 0700, made when missing
/// (its parent with the usual 0755).
fn make_private(root: &Path) -> io::Result<()> {
    if let Some(parent) = root.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(PRIVATE_MODE).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // NOFOLLOW: a symlink here is an error (ELOOP), never a reason to
    // change the mode of what it points to.
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_uid != 0 || st.st_gid != 0 {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )?;
    }
    if st.st_mode & 0o7777 != PRIVATE_MODE {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> io::Result<u32> {
        Ok(std::fs::symlink_metadata(p)?.permissions().mode() & 0o7777)
    }

    #[test]
    fn the_volume_root_is_private_and_volumes_are_not() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let root = t.path().join("var/lib/berth/volumes");
        let volume = root.join("web/data");
        prepare(&root, &volume)?;
        assert!(volume.is_dir());
        assert_eq!(mode(&root)?, PRIVATE_MODE);
        assert_eq!(mode(&root.join("web"))?, DIR_MODE);
        assert_eq!(mode(&volume)?, DIR_MODE);
        assert_eq!(mode(&t.path().join("var/lib/berth"))?, DIR_MODE);
        Ok(())
    }

    #[test]
    fn an_older_hosts_open_root_is_closed() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let root = t.path().join("volumes");
        std::fs::create_dir(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        prepare(&root, &root.join("counter/data"))?;
        assert_eq!(mode(&root)?, PRIVATE_MODE);
        // Directories elsewhere are made as before, and do not touch it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        prepare(&root, &t.path().join("other/dir"))?;
        assert_eq!(mode(&root)?, 0o755);
        Ok(())
    }

    #[test]
    fn a_symlinked_root_is_refused_not_followed() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere)?;
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755))?;
        let root = t.path().join("volumes");
        std::os::unix::fs::symlink(&elsewhere, &root)?;
        let err = prepare(&root, &root.join("web/data"));
        assert!(err.is_err(), "a symlinked volume root was accepted");
        assert_eq!(mode(&elsewhere)?, 0o755, "the symlink's target changed");
        assert!(!elsewhere.join("web").exists());
        Ok(())
    }
}
