//! Opens a file beneath the repository without following a symlink
//! anywhere on the way, so nothing inside the repository (a symlink to
//! /etc/shadow, to a directory outside, or even to a file inside) makes
//! the server read what it was not asked to publish.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6) does it in
//! one call. Where it is missing (`ENOSYS` from an older kernel or a
//! seccomp filter) the path is walked one component at a time with
//! `O_NOFOLLOW`, which refuses the same symlinks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a file is not served.
#[derive(Debug)]
pub enum Refusal {
    /// Nothing there, or a directory: 404.
    NotFound,
    /// A symlink on the way, or not a regular file: 403.
    Forbidden,
    /// Out of file descriptors: 503, try again.
    Busy,
    /// Anything else (an I/O error): 500.
    Failed(io::Error),
}

/// The repository's directory, held open: every lookup starts from it,
/// so renaming or replacing the path given on the command line does not
/// move what is served.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    /// Cleared after openat2 was found missing, so each later lookup
    /// walks without trying it again.
    openat2: AtomicBool,
}

impl Root {
    /// Opens `path` (the operator's; a symlink here is followed).
    pub fn open(path: &Path) -> io::Result<Root> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            dir,
            openat2: AtomicBool::new(true),
        })
    }

    /// Opens the regular file at `relative` (plain names only, as
    /// [`super::target::relative_path`] makes them) and returns it with
    /// its length.
    pub fn open_file(&self, relative: &Path) -> Result<(File, u64), Refusal> {
        if relative.as_os_str().is_empty() {
            return Err(Refusal::NotFound);
        }
        let fd = self.open_beneath(relative).map_err(refusal)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| Refusal::Failed(e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Ok((File::from(fd), stat.st_size as u64)),
            FileType::Directory => Err(Refusal::NotFound),
            _ => Err(Refusal::Forbidden),
        }
    }

    fn open_beneath(&self, relative: &Path) -> rustix::io::Result<OwnedFd> {
        if self.openat2.load(Ordering::Relaxed) {
            match rustix::fs::openat2(
                &self.dir,
                relative,
                FILE_FLAGS,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::NOSYS) => self.openat2.store(false, Ordering::Relaxed),
                result => return result,
            }
        }
        open_walking(&self.dir, relative)
    }
}

/// How a served file is opened: read-only, and without blocking on a FIFO
/// or taking a terminal (those are refused after the `fstat`).
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);

/// The fallback for kernels without openat2: one `openat` per component,
/// each with `O_NOFOLLOW`, so a symlink anywhere fails with `ELOOP`.
/// Only plain names are taken (no `..`, no root), so the walk cannot
/// climb out of `dir`.
fn open_walking(dir: &OwnedFd, relative: &Path) -> rustix::io::Result<OwnedFd> {
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            _ => return Err(Errno::XDEV),
        }
    }
    let Some((last, parents)) = names.split_last() else {
        return Err(Errno::NOENT);
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let at = current.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
        // O_PATH | O_NOFOLLOW opens a symlink itself (with O_DIRECTORY
        // it would fail as ENOTDIR, hiding that it was a symlink).
        let next = rustix::fs::openat(
            at,
            *name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match FileType::from_raw_mode(rustix::fs::fstat(&next)?.st_mode) {
            FileType::Directory => current = Some(next),
            FileType::Symlink => return Err(Errno::LOOP),
            _ => return Err(Errno::NOTDIR),
        }
    }
    let at = current.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
    rustix::fs::openat(at, *last, FILE_FLAGS | OFlags::NOFOLLOW, Mode::empty())
}

fn refusal(errno: Errno) -> Refusal {
    match errno {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => Refusal::NotFound,
        // ELOOP: a symlink; EXDEV: a way out of the repository.
        Errno::LOOP | Errno::XDEV | Errno::ACCESS | Errno::PERM => Refusal::Forbidden,
        Errno::MFILE | Errno::NFILE | Errno::NOMEM => Refusal::Busy,
        other => Refusal::Failed(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// repo/ with a file, a subdirectory and every kind of symlink, and a
    /// secret next to it.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("objects/ab")).unwrap();
        std::fs::write(repo.join("config"), "[core]\n").unwrap();
        std::fs::write(repo.join("objects/ab/cd.file"), "object").unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "secret").unwrap();
        symlink(dir.path().join("outside/secret"), repo.join("out-file")).unwrap();
        symlink(dir.path().join("outside"), repo.join("out-dir")).unwrap();
        symlink("config", repo.join("in-file")).unwrap();
        symlink("objects", repo.join("in-dir")).unwrap();
        symlink("../outside/secret", repo.join("objects/up")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            repo.join("fifo"),
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        dir
    }

    fn read(root: &Root, path: &str) -> Result<String, Refusal> {
        let (mut file, len) = root.open_file(Path::new(path))?;
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text.len() as u64, len);
        Ok(text)
    }

    fn check(root: &Root) {
        assert_eq!(read(root, "config").unwrap(), "[core]\n");
        assert_eq!(read(root, "objects/ab/cd.file").unwrap(), "object");
        for path in [
            "out-file",
            "out-dir/secret",
            "in-file",
            "in-dir/ab/cd.file",
            "objects/up",
            "fifo",
        ] {
            assert!(
                matches!(read(root, path), Err(Refusal::Forbidden)),
                "{path}: {:?}",
                read(root, path)
            );
        }
        for path in ["missing", "objects", "config/x", ""] {
            assert!(
                matches!(read(root, path), Err(Refusal::NotFound)),
                "{path}: {:?}",
                read(root, path)
            );
        }
    }

    #[test]
    fn openat2_refuses_every_symlink() {
        let dir = tree();
        let root = Root::open(&dir.path().join("repo")).unwrap();
        check(&root);
        assert!(
            root.openat2.load(Ordering::Relaxed),
            "this kernel has openat2, the test must run through it"
        );
    }

    #[test]
    fn the_walk_without_openat2_refuses_the_same() {
        let dir = tree();
        let root = Root::open(&dir.path().join("repo")).unwrap();
        root.openat2.store(false, Ordering::Relaxed);
        check(&root);
    }
}
