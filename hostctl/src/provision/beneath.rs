//! Paths beneath a host's root, resolved without following symbolic links.
//!
//! Provisioning writes as root into /etc and /var, where root inside a
//! container (through a volume) or an unprivileged user may have planted a
//! link such as `config -> /etc/shadow`. So every path is resolved from a
//! directory fd of the root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, directories are walked one
//! fd per step, and files are changed through fds (`fchmod`, `fchown`,
//! `renameat` inside an opened directory), so no later lookup can be
//! redirected. A link anywhere in a path is refused, never followed.
//!
//! The one exception is a link at the top of the root (`/root ->
//! var/roothome`, `/home -> var/home`, `/bin -> usr/bin` on an OSTree
//! host): those sit in the deployment's own root directory, which only the
//! image writes, and [`Beneath::canonical`] replaces such a first component
//! by its target, once, before any guard looks at the path.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a path beneath the root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path, or with a NUL byte.
    #[error("\"{0}\" is not an absolute path")]
    NotAbsolute(String),
    /// `..` that would leave the root.
    #[error("\"{0}\" leads out of the root")]
    AboveRoot(String),
    /// A symbolic link on the way, or the path itself is one.
    #[error("{0} is or passes through a symbolic link: refused (links are never followed)")]
    Symlink(String),
    /// Something on the way is not a directory.
    #[error("{0}: a part of it is not a directory")]
    NotDirectory(String),
    /// Not a regular file where one is needed.
    #[error("{0} is not a regular file")]
    NotRegular(String),
    /// Any other system call failure.
    #[error("{action} {path}: {errno}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To what.
        path: String,
        /// The error.
        errno: Errno,
    },
}

impl PathError {
    fn io(action: &'static str, path: impl std::fmt::Display, errno: Errno) -> PathError {
        match errno {
            Errno::LOOP | Errno::XDEV => PathError::Symlink(path.to_string()),
            Errno::NOTDIR => PathError::NotDirectory(path.to_string()),
            _ => PathError::Io {
                action,
                path: path.to_string(),
                errno,
            },
        }
    }
}

/// A normalised path beneath the root: its components, none empty, `.`
/// or `..`. The root itself has none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<String>);

impl RelPath {
    /// Parses an absolute path, normalising it lexically: `//usr/x`,
    /// `/./usr/x` and `/etc/../usr/x` all become `usr/x`. Lexical `..` is
    /// exact here because no link is ever followed.
    pub fn parse(path: &str) -> Result<RelPath, PathError> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(PathError::NotAbsolute(path.to_string()));
        }
        let mut parts: Vec<String> = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::AboveRoot(path.to_string()));
                    }
                }
                c => parts.push(c.to_string()),
            }
        }
        Ok(RelPath(parts))
    }

    /// The components.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// The first component (`etc` of `/etc/motd`).
    pub fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// The directory holding this path (the root for `/x`).
    pub fn parent(&self) -> Option<RelPath> {
        let (_, dir) = self.0.split_last()?;
        Some(RelPath(dir.to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// This path with `name` appended (one component).
    pub fn join(&self, name: &str) -> RelPath {
        let mut p = self.0.clone();
        p.push(name.to_string());
        RelPath(p)
    }

    /// The relative form openat2 takes (`.` for the root).
    fn rel(&self) -> String {
        if self.0.is_empty() {
            ".".into()
        } else {
            self.0.join("/")
        }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.join("/"))
    }
}

/// An existing file's mode and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The root of a host, held open, through which every path is resolved.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

impl Beneath {
    /// Opens `root` (trusted: `/` on a host, a temporary tree in tests).
    pub fn open(root: &Path) -> Result<Beneath, PathError> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PathError::io("opening", root.display(), e))?;
        Ok(Beneath {
            fd,
            path: root.to_path_buf(),
        })
    }

    /// The root's own path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `p` with a top-level link of the image replaced by its target
    /// (`/root/x` -> `/var/roothome/x`); links below the top stay refused.
    pub fn canonical(&self, p: &RelPath) -> Result<RelPath, PathError> {
        let Some(first) = p.first() else {
            return Ok(p.clone());
        };
        let target = match rustix::fs::readlinkat(&self.fd, first, Vec::new()) {
            Ok(t) => t,
            // Not a link (or not there): the path as it is.
            Err(Errno::INVAL | Errno::NOENT) => return Ok(p.clone()),
            Err(e) => return Err(PathError::io("reading the link", format!("/{first}"), e)),
        };
        let target = target.to_string_lossy().into_owned();
        let target = RelPath::parse(&format!("/{}", target.trim_start_matches('/')))?;
        let mut parts = target.0;
        parts.extend(p.0.iter().skip(1).cloned());
        Ok(RelPath(parts))
    }

    fn open_at(
        &self,
        dir: BorrowedFd<'_>,
        rel: &str,
        flags: OFlags,
        shown: &RelPath,
    ) -> Result<OwnedFd, PathError> {
        rustix::fs::openat2(
            dir,
            rel,
            // RESOLVE_NO_SYMLINKS refuses a link as the last component
            // too (ELOOP); O_NOFOLLOW would turn that into ENOTDIR for
            // directories.
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| PathError::io("opening", shown, e))
    }

    /// Opens the directory `p`.
    pub fn open_dir(&self, p: &RelPath) -> Result<OwnedFd, PathError> {
        self.open_at(
            self.fd.as_fd(),
            &p.rel(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            p,
        )
    }

    /// Whether the directory `p` exists; `Ok(false)` when some component
    /// is missing, an error when one is a link or not a directory.
    pub fn dir_exists(&self, p: &RelPath) -> Result<bool, PathError> {
        match self.open_dir(p) {
            Ok(_) => Ok(true),
            Err(PathError::Io {
                errno: Errno::NOENT,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads the regular file `p`: `None` if it does not exist.
    pub fn read(&self, p: &RelPath) -> Result<Option<(Vec<u8>, Meta)>, PathError> {
        // O_NONBLOCK: a FIFO planted in place of a file must not hang us.
        let fd = match self.open_at(
            self.fd.as_fd(),
            &p.rel(),
            OFlags::RDONLY | OFlags::NONBLOCK,
            p,
        ) {
            Ok(fd) => fd,
            Err(PathError::Io {
                errno: Errno::NOENT,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| PathError::io("examining", p, e))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(PathError::NotRegular(p.to_string()));
        }
        let mut data = Vec::new();
        File::from(fd).read_to_end(&mut data).map_err(|e| {
            PathError::io("reading", p, Errno::from_io_error(&e).unwrap_or(Errno::IO))
        })?;
        Ok(Some((data, meta(&st))))
    }

    /// What is at `p` now: `None` if nothing, else its metadata; a link
    /// (anywhere) or a non-regular file is an error.
    pub fn probe_file(&self, p: &RelPath) -> Result<Option<Meta>, PathError> {
        let Some(parent) = p.parent() else {
            return Err(PathError::NotRegular(p.to_string()));
        };
        if !self.dir_exists(&parent)? {
            return Ok(None);
        }
        let dir = self.open_dir(&parent)?;
        let name = p.file_name().unwrap_or(".");
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::RegularFile => Ok(Some(meta(&st))),
                rustix::fs::FileType::Symlink => Err(PathError::Symlink(p.to_string())),
                _ => Err(PathError::NotRegular(p.to_string())),
            },
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(PathError::io("examining", p, e)),
        }
    }

    /// Makes the directory `p` if it is missing, each missing component
    /// as it goes: the last one with `mode` and `owner`, those above it
    /// 0755 root. Returns the directories it made, from the top.
    pub fn make_dir(
        &self,
        p: &RelPath,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<Vec<RelPath>, PathError> {
        let mut made = Vec::new();
        let mut cur = self.open_dir(&RelPath(Vec::new()))?;
        let mut at = RelPath(Vec::new());
        for (i, name) in p.0.iter().enumerate() {
            at = at.join(name);
            let last = i + 1 == p.0.len();
            let next =
                match self.open_at(cur.as_fd(), name, OFlags::RDONLY | OFlags::DIRECTORY, &at) {
                    Ok(fd) => fd,
                    Err(PathError::Io {
                        errno: Errno::NOENT,
                        ..
                    }) => {
                        rustix::fs::mkdirat(&cur, name.as_str(), Mode::from_raw_mode(0o700))
                            .map_err(|e| PathError::io("creating", &at, e))?;
                        made.push(at.clone());
                        let fd = self.open_at(
                            cur.as_fd(),
                            name,
                            OFlags::RDONLY | OFlags::DIRECTORY,
                            &at,
                        )?;
                        let (m, (u, g)) = if last { (mode, owner) } else { (0o755, (0, 0)) };
                        set_owner_mode(&fd, u, g, m)
                            .map_err(|e| PathError::io("setting up", &at, e))?;
                        fd
                    }
                    Err(e) => return Err(e),
                };
            cur = next;
        }
        Ok(made)
    }

    /// Writes `data` to a new file `tmp` in the directory `dir` (a stale
    /// one of that name is removed first), owned by `uid:gid` with `mode`,
    /// and flushes it to disk.
    pub fn stage(
        &self,
        dir: &RelPath,
        tmp: &str,
        data: &[u8],
        mode: u32,
        (uid, gid): (u32, u32),
    ) -> Result<(), PathError> {
        let dfd = self.open_dir(dir)?;
        let shown = dir.join(tmp);
        match rustix::fs::unlinkat(&dfd, tmp, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(PathError::io("removing", &shown, e)),
        }
        let fd = rustix::fs::openat(
            &dfd,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| PathError::io("creating", &shown, e))?;
        let mut f = File::from(fd);
        f.write_all(data).map_err(|e| {
            PathError::io(
                "writing",
                &shown,
                Errno::from_io_error(&e).unwrap_or(Errno::IO),
            )
        })?;
        // chown first: it clears set-id bits that the chmod then sets.
        set_owner_mode(&f, uid, gid, mode).map_err(|e| PathError::io("setting up", &shown, e))?;
        rustix::fs::fsync(&f).map_err(|e| PathError::io("flushing", &shown, e))?;
        Ok(())
    }

    /// Renames `tmp` over `name`, both in `dir` (the entry `name` is
    /// replaced, never followed). `Ok(false)` if `tmp` is gone already.
    pub fn rename(&self, dir: &RelPath, tmp: &str, name: &str) -> Result<bool, PathError> {
        let dfd = self.open_dir(dir)?;
        match rustix::fs::renameat(&dfd, tmp, &dfd, name) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(PathError::io("renaming into place", dir.join(name), e)),
        }
    }

    /// Removes the file `name` in `dir`, if there.
    pub fn remove(&self, dir: &RelPath, name: &str) -> Result<(), PathError> {
        let dfd = match self.open_dir(dir) {
            Ok(fd) => fd,
            Err(PathError::Io {
                errno: Errno::NOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dfd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(PathError::io("removing", dir.join(name), e)),
        }
    }

    /// Removes the directory `p` if it is there and empty.
    pub fn remove_empty_dir(&self, p: &RelPath) -> Result<(), PathError> {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Ok(());
        };
        let dfd = match self.open_dir(&parent) {
            Ok(fd) => fd,
            Err(PathError::Io {
                errno: Errno::NOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dfd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST) => Ok(()),
            Err(e) => Err(PathError::io("removing", p, e)),
        }
    }

    /// Flushes the directory `p` (after renames in it).
    pub fn sync_dir(&self, p: &RelPath) -> Result<(), PathError> {
        let fd = self.open_dir(p)?;
        rustix::fs::fsync(&fd).map_err(|e| PathError::io("flushing", p, e))
    }
}

fn meta(st: &rustix::fs::Stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

/// fchown then fchmod on an open fd: nothing is looked up by name.
fn set_owner_mode(fd: impl AsFd, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    let (u, g) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    rustix::fs::fchown(&fd, Some(u), Some(g))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, symlink};

    #[test]
    fn paths_normalise_before_any_guard() {
        for p in [
            "//usr/x",
            "/./usr/x",
            "/usr/../usr/x",
            "/etc/../usr//x/",
            "/usr/./x",
        ] {
            assert_eq!(RelPath::parse(p).unwrap().parts(), ["usr", "x"], "{p}");
        }
        assert!(matches!(
            RelPath::parse("/../etc/x"),
            Err(PathError::AboveRoot(_))
        ));
        assert!(matches!(
            RelPath::parse("etc/x"),
            Err(PathError::NotAbsolute(_))
        ));
        assert_eq!(
            RelPath::parse("/etc/motd").unwrap().to_string(),
            "/etc/motd"
        );
    }

    fn tree() -> (tempfile::TempDir, Beneath) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("var/roothome")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/vol")).unwrap();
        std::fs::write(r.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        symlink("var/roothome", r.join("root")).unwrap();
        let b = Beneath::open(r).unwrap();
        (t, b)
    }

    #[test]
    fn top_level_links_of_the_image_are_followed_once() {
        let (_t, b) = tree();
        let p = b
            .canonical(&RelPath::parse("/root/.ssh/x").unwrap())
            .unwrap();
        assert_eq!(p.to_string(), "/var/roothome/.ssh/x");
        let p = b.canonical(&RelPath::parse("/etc/x").unwrap()).unwrap();
        assert_eq!(p.to_string(), "/etc/x");
    }

    #[test]
    fn links_below_the_top_are_refused_and_their_targets_untouched() {
        let (t, b) = tree();
        let r = t.path();
        // A link to a file of the host, planted in a volume.
        symlink("/etc/shadow", r.join("var/lib/vol/config")).unwrap();
        symlink("../../../etc/shadow", r.join("var/lib/vol/rel")).unwrap();
        // A link as an intermediate directory.
        symlink("../../etc", r.join("var/lib/vol/dir")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), "outside\n").unwrap();
        symlink(outside.path(), r.join("var/lib/vol/out")).unwrap();
        for p in [
            "/var/lib/vol/config",
            "/var/lib/vol/rel",
            "/var/lib/vol/dir/shadow",
            "/var/lib/vol/out/f",
        ] {
            let rel = RelPath::parse(p).unwrap();
            assert!(
                matches!(b.read(&rel), Err(PathError::Symlink(_))),
                "read {p}: {:?}",
                b.read(&rel)
            );
            let probe = b.probe_file(&rel);
            assert!(
                matches!(probe, Err(PathError::Symlink(_))),
                "probe {p}: {probe:?}"
            );
            let parent = rel.parent().unwrap();
            let made = b.make_dir(&rel, 0o755, (0, 0));
            assert!(
                matches!(made, Err(PathError::Symlink(_))),
                "mkdir {p}: {made:?}"
            );
            if parent.to_string() != "/var/lib/vol" {
                let staged = b.stage(&parent, ".x", b"evil", 0o644, (0, 0));
                assert!(matches!(staged, Err(PathError::Symlink(_))), "stage {p}");
            }
        }
        assert_eq!(
            std::fs::read_to_string(r.join("etc/shadow")).unwrap(),
            "root:*:1::::::\n"
        );
        assert_eq!(
            std::fs::read_to_string(outside.path().join("f")).unwrap(),
            "outside\n"
        );
        assert!(!r.join("etc/.x").exists());
        assert!(!outside.path().join(".x").exists());
    }

    #[test]
    fn staged_files_replace_a_planted_link_instead_of_writing_through_it() {
        let (t, b) = tree();
        let r = t.path();
        symlink("/etc/shadow", r.join("var/lib/vol/config")).unwrap();
        let dir = RelPath::parse("/var/lib/vol").unwrap();
        b.stage(&dir, ".config.new", b"mine\n", 0o640, (0, 0))
            .unwrap();
        assert!(b.rename(&dir, ".config.new", "config").unwrap());
        let m = std::fs::symlink_metadata(r.join("var/lib/vol/config")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_to_string(r.join("etc/shadow")).unwrap(),
            "root:*:1::::::\n"
        );
    }

    #[test]
    fn make_dir_sets_the_last_components_owner_and_mode() {
        let (t, b) = tree();
        let r = t.path();
        let p = RelPath::parse("/var/home/ops/.ssh").unwrap();
        let made = b.make_dir(&p, 0o700, (1234, 1234)).unwrap();
        assert_eq!(made.len(), 3);
        let m = std::fs::metadata(r.join("var/home/ops/.ssh")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o700, 1234, 1234));
        let m = std::fs::metadata(r.join("var/home")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
        assert!(b.make_dir(&p, 0o700, (0, 0)).unwrap().is_empty());
    }
}
