//! Reading a file of an unpacked image on the build machine as a process
//! chrooted into the image would see it. An image is hostile input: its
//! `etc/passwd` may be a symlink to `/dev/zero`, to the build machine's
//! own `/etc/shadow`, or a FIFO. `openat2(RESOLVE_IN_ROOT)` resolves every
//! symlink inside the root (an absolute target starts at the root, `..`
//! stops there) and refuses `/proc` magic links, so nothing outside the
//! image is ever opened; only a regular file is read, and only up to a
//! limit.

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a file of the image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// Opening or reading failed.
    #[error("reading /{path} of the image: {source}")]
    Io {
        /// The path inside the image.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It is a directory, a device, a FIFO or a socket.
    #[error("/{0} of the image is not a regular file")]
    NotRegular(String),
    /// It is larger than the caller accepts.
    #[error("/{path} of the image is larger than {limit} bytes")]
    TooLarge {
        /// The path inside the image.
        path: String,
        /// The limit.
        limit: u64,
    },
}

/// The content of `rel` inside `root`, or `None` when the image has no
/// such file. At most `limit` bytes: a larger file is an error.
pub fn read(root: &Path, rel: &Path, limit: u64) -> Result<Option<Vec<u8>>, InRootError> {
    let name = rel.display().to_string();
    let name = name.trim_start_matches('/').to_string();
    let io_err = |source: io::Error| InRootError::Io {
        path: name.clone(),
        source,
    };
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    // NONBLOCK: opening a FIFO must not wait for a writer (it is then
    // refused below, as not a regular file).
    let opened = rustix::fs::openat2(
        &dir,
        rel.strip_prefix("/").unwrap_or(rel),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(io_err(e.into())),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(InRootError::NotRegular(name));
    }
    let mut data = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() as u64 > limit {
        return Err(InRootError::TooLarge { path: name, limit });
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("usr/share")).unwrap();
        std::fs::write(r.join("usr/share/passwd"), "inside").unwrap();
        // A relative link inside the image works as in a chroot.
        symlink("../usr/share/passwd", r.join("etc/passwd")).unwrap();
        assert_eq!(
            read(r, Path::new("etc/passwd"), 100).unwrap().unwrap(),
            b"inside"
        );
        // Absolute and climbing links stay in the root: the host's file
        // is never read.
        let host = outside.path().join("secret");
        symlink(&host, r.join("etc/abs")).unwrap();
        symlink(
            "../../../../../../..".to_string() + host.to_str().unwrap(),
            r.join("etc/up"),
        )
        .unwrap();
        for link in ["etc/abs", "etc/up"] {
            assert!(
                read(r, Path::new(link), 100).unwrap().is_none(),
                "{link} reached the host's file"
            );
        }
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        // In the image's root, /dev/zero is the image's own (missing) file.
        symlink("/dev/zero", r.join("etc/passwd")).unwrap();
        assert!(read(r, Path::new("etc/passwd"), 100).unwrap().is_none());
        std::fs::write(r.join("etc/big"), vec![b'x'; 101]).unwrap();
        assert!(matches!(
            read(r, Path::new("etc/big"), 100),
            Err(InRootError::TooLarge { .. })
        ));
        assert!(matches!(
            read(r, Path::new("etc"), 100),
            Err(InRootError::NotRegular(_))
        ));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("etc/fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(matches!(
            read(r, Path::new("etc/fifo"), 100),
            Err(InRootError::NotRegular(_))
        ));
        assert!(read(r, Path::new("etc/none"), 100).unwrap().is_none());
    }
}
