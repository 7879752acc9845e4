//! Unpacking OCI image layers into a root file system, in order, with the
//! OCI whiteout rules (`.wh.NAME` deletes NAME from lower layers,
//! `.wh..wh..opq` empties a directory of lower layers' entries), hard
//! links and symlinks, and without ever writing outside the root: paths
//! are resolved the way a chroot would see them (an absolute symlink or a
//! `..` cannot climb above the root), and an entry whose own path has a
//! `..` is refused, as is a whiteout that names its own directory or its
//! parent. A layer is hostile input: how many entries it may add is
//! capped by the caller, a metadata entry (PAX header, GNU long name) is
//! read into memory only up to [`MAX_META_ENTRY`], and set-user-ID and
//! set-group-ID bits are dropped from its files (every container runs with
//! no-new-privileges, where they do nothing, and the files also sit in
//! the host's OSTree repository, which any user of the host can read).
//!
//! Written by hand (on the `tar` crate) because the unpackers on crates.io
//! either follow symlinks out of the root or skip the OCI whiteout rules.
//! The `tar` crate is used in raw mode, its metadata entries handled by
//! [`super::tarmeta`]: in its own mode it reads a PAX header of any
//! declared size whole.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

pub use super::tarmeta::MAX_META_ENTRY;
use super::tarmeta::{Pending, take_meta};

/// The whiteout prefix of the OCI image spec.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";
/// How many symlinks one lookup may follow (as Linux's MAXSYMLINKS).
const MAX_LINKS: usize = 40;
/// The set-user-ID and set-group-ID bits, dropped from regular files.
const SET_ID_BITS: u32 = 0o6000;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer names a path that leaves the root.
    #[error("layer entry \"{0}\" has a '..' component: refusing to unpack it")]
    Escape(String),
    /// A whiteout that names no entry of its directory (`.wh.`, `.wh..`,
    /// `.wh...`): applied, it would delete the directory or its parent.
    #[error("layer entry \"{0}\" is a whiteout of its own directory or its parent: refusing it")]
    BadWhiteout(String),
    /// Too many symlinks while resolving a path.
    #[error("too many levels of symbolic links resolving \"{0}\"")]
    Loop(String),
    /// The image has more entries than the caller's budget.
    #[error("the image has more entries than allowed")]
    TooManyEntries,
    /// A PAX header or GNU long name larger than [`MAX_META_ENTRY`].
    #[error("a layer metadata entry of {0} bytes (more than {MAX_META_ENTRY})")]
    MetaTooLarge(u64),
    /// A tar feature that is refused rather than guessed at.
    #[error("layer entry \"{path}\": {what} is not supported")]
    Unsupported {
        /// The entry.
        path: String,
        /// The feature.
        what: &'static str,
    },
    /// Reading the archive or writing the tree failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let what = what.into();
    move |source| UnpackError::Io { what, source }
}

/// The normal components of an archive path, refusing `..`.
fn clean(path: &Path) -> Result<Vec<std::ffi::OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(UnpackError::Escape(path.display().to_string())),
        }
    }
    Ok(out)
}

/// Resolves `rel` inside `root` as a process chrooted to `root` would:
/// symlinks are followed (absolute ones from `root`), `..` stops at
/// `root`. The last component is followed only when `follow_last`.
pub fn resolve_in_root(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf, UnpackError> {
    let mut pending: VecDeque<PathBuf> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        if pending.is_empty() && !follow_last {
            resolved = candidate;
            break;
        }
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(UnpackError::Loop(rel.display().to_string()));
                }
                let target = std::fs::read_link(&full)
                    .map_err(io_err(format!("reading link {}", full.display())))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(PathBuf::from(n)),
                        Component::ParentDir => pending.push_front(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Removes whatever is at `path` (not following a symlink there).
fn remove_at(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks one uncompressed layer `tar` stream into `root`. Each entry,
/// metadata entries too, takes one from `entries_left`; none left is an
/// error.
pub fn unpack_layer(
    root: &Path,
    tar: impl Read,
    entries_left: &mut u64,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(tar);
    // Paths (relative to root) this layer wrote: an opaque marker must not
    // delete them, only what lower layers left.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut opaque_dirs: Vec<PathBuf> = Vec::new();
    let mut pending = Pending::default();
    let entries = archive
        .entries()
        .map_err(io_err("reading layer"))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading a layer entry"))?;
        if *entries_left == 0 {
            return Err(UnpackError::TooManyEntries);
        }
        *entries_left -= 1;
        if take_meta(&mut entry, &mut pending)? {
            continue;
        }
        let meta = std::mem::take(&mut pending);
        let header = entry.header().clone();
        let path_bytes = meta
            .path
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let raw_path = PathBuf::from(OsStr::from_bytes(&path_bytes));
        let link_bytes = meta
            .link
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let entry_size = header
            .entry_size()
            .map_err(io_err("reading a layer entry header"))?;
        if meta.size.is_some_and(|s| s != entry_size) {
            // Only a file over 8 GiB needs one, far above the size cap.
            return Err(UnpackError::Unsupported {
                path: raw_path.display().to_string(),
                what: "a PAX size record",
            });
        }
        let parts = clean(&raw_path)?;
        let Some(name) = parts.last().cloned() else {
            continue;
        };
        let parent_rel: PathBuf = parts[..parts.len() - 1].iter().collect();
        let name_str = name.to_string_lossy().into_owned();

        if name_str == OPAQUE {
            opaque_dirs.push(parent_rel);
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) {
                // Other `.wh..wh.` names are aufs bookkeeping
                // (`.wh..wh.plnk`), no whiteouts: containerd skips them.
                continue;
            }
            if matches!(hidden, "" | "." | "..") {
                return Err(UnpackError::BadWhiteout(raw_path.display().to_string()));
            }
            let parent = resolve_in_root(root, &parent_rel, true)?;
            let victim = parent.join(hidden);
            remove_at(&victim)
                .map_err(io_err(format!("applying whiteout {}", raw_path.display())))?;
            continue;
        }

        let parent = resolve_in_root(root, &parent_rel, true)?;
        std::fs::create_dir_all(&parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
        let dest = parent.join(&name);
        let rel_dest = dest.strip_prefix(root).unwrap_or(&dest).to_path_buf();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let id = |pax: Option<u64>, hdr: io::Result<u64>| {
            pax.or(hdr.ok()).and_then(|v| u32::try_from(v).ok())
        };
        let uid = id(meta.uid, header.uid());
        let gid = id(meta.gid, header.gid());
        let what = || format!("unpacking {}", raw_path.display());
        let link_target = || -> Result<PathBuf, UnpackError> {
            let bytes = link_bytes.clone().ok_or_else(|| UnpackError::Io {
                what: what(),
                source: io::Error::other("link without a target"),
            })?;
            Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
        };
        match header.entry_type() {
            tar::EntryType::Directory => {
                if !std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    remove_at(&dest).map_err(io_err(what()))?;
                    std::fs::create_dir(&dest).map_err(io_err(what()))?;
                }
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err(what()))?;
                chown(&dest, uid, gid)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_at(&dest).map_err(io_err(what()))?;
                let mut f = std::fs::File::create(&dest).map_err(io_err(what()))?;
                io::copy(&mut entry, &mut f).map_err(io_err(what()))?;
                chown(&dest, uid, gid)?;
                // After chown (which clears set-id bits anyway), without
                // the set-id bits.
                std::fs::set_permissions(
                    &dest,
                    std::fs::Permissions::from_mode(mode & !SET_ID_BITS),
                )
                .map_err(io_err(what()))?;
            }
            tar::EntryType::Symlink => {
                let target = link_target()?;
                remove_at(&dest).map_err(io_err(what()))?;
                // The link itself may point anywhere: it is only ever
                // followed inside the container, or by resolve_in_root.
                symlink(&target, &dest).map_err(io_err(what()))?;
                lchown(&dest, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target = link_target()?;
                let target_parts = clean(&target)?;
                let target_rel: PathBuf = target_parts.iter().collect();
                let source = resolve_in_root(root, &target_rel, false)?;
                remove_at(&dest).map_err(io_err(what()))?;
                std::fs::hard_link(&source, &dest).map_err(io_err(what()))?;
            }
            tar::EntryType::GNUSparse if header.as_gnu().is_some_and(|g| g.is_extended()) => {
                // Its map continues in blocks that raw mode would read as
                // entries; Docker's and containerd's writers never make one.
                return Err(UnpackError::Unsupported {
                    path: raw_path.display().to_string(),
                    what: "a GNU sparse file with an extended map",
                });
            }
            // Device nodes, FIFOs: the runtime provides /dev; sparse files:
            // skipped, as before.
            _ => continue,
        }
        written.insert(rel_dest);
    }
    for dir in opaque_dirs {
        let full = resolve_in_root(root, &dir, true)?;
        let rel_dir = full.strip_prefix(root).unwrap_or(&full).to_path_buf();
        let Ok(children) = std::fs::read_dir(&full) else {
            continue;
        };
        for child in children.flatten() {
            let rel = rel_dir.join(child.file_name());
            if !written.iter().any(|w| w.starts_with(&rel)) {
                remove_at(&child.path())
                    .map_err(io_err(format!("emptying opaque {}", full.display())))?;
            }
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), UnpackError> {
    std::os::unix::fs::chown(path, uid, gid)
        .map_err(io_err(format!("setting the owner of {}", path.display())))
}

fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), UnpackError> {
    std::os::unix::fs::lchown(path, uid, gid)
        .map_err(io_err(format!("setting the owner of {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar stream from (path, kind) entries.
    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                E::File(p, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_bytes()).unwrap();
                }
                E::Sym(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                E::Hard(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    use crate::container::tarmeta::fixtures::{file_header, raw_tar};

    /// Unpacks with no entry cap.
    fn unpack(root: &Path, tar: impl Read) -> Result<(), UnpackError> {
        unpack_layer(root, tar, &mut u64::MAX.clone())
    }

    fn raw_layer_with_path(path: &str) -> Vec<u8> {
        // tar::Builder refuses '..' itself; write the name field by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend([b'x']);
        out.resize(1024, 0);
        out.extend([0u8; 1024]);
        out
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        unpack(
            r,
            &layer(&[
                E::Dir("etc"),
                E::File("etc/a", "1"),
                E::File("etc/b", "1"),
                E::Dir("data"),
                E::File("data/old", "old"),
                E::Dir("data/sub"),
                E::File("data/sub/deep", "x"),
            ])[..],
        )
        .unwrap();
        unpack(
            r,
            &layer(&[
                E::File("etc/.wh.a", ""),
                E::File("etc/b", "2"),
                E::File("data/new", "new"),
                E::File("data/.wh..wh..opq", ""),
            ])[..],
        )
        .unwrap();
        assert!(!r.join("etc/a").exists(), "whiteout removed a");
        assert_eq!(std::fs::read_to_string(r.join("etc/b")).unwrap(), "2");
        assert!(
            !r.join("data/old").exists(),
            "opaque dir hid the lower layer"
        );
        assert!(!r.join("data/sub").exists());
        assert_eq!(
            std::fs::read_to_string(r.join("data/new")).unwrap(),
            "new",
            "same-layer entries survive"
        );
        assert!(!r.join("data/.wh..wh..opq").exists());
    }

    #[test]
    fn hard_links_share_an_inode() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        unpack(
            root.path(),
            &layer(&[
                E::File("bin/busybox", "bb"),
                E::Hard("bin/sh", "bin/busybox"),
            ])[..],
        )
        .unwrap();
        let a = std::fs::metadata(root.path().join("bin/busybox")).unwrap();
        let b = std::fs::metadata(root.path().join("bin/sh")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
    }

    #[test]
    fn symlinks_cannot_lead_writes_outside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let out = outside.path().to_string_lossy().into_owned();
        // A layer plants symlinks to the host's directory, absolute and
        // relative, then writes "through" them.
        unpack(
            root.path(),
            &layer(&[
                E::Sym("abs", &out),
                E::Sym("rel", "../../../../../../../../../.."),
                E::File("abs/pwned", "x"),
                E::File("rel/tmp/pwned2", "x"),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing was written outside"
        );
        // The writes landed inside the root, where a chroot would put them.
        assert!(
            root.path()
                .join(out.trim_start_matches('/'))
                .join("pwned")
                .exists()
        );
        assert!(root.path().join("tmp/pwned2").exists());
        // The symlinks themselves stay as the image wants them.
        assert_eq!(
            std::fs::read_link(root.path().join("abs")).unwrap(),
            outside.path()
        );
    }

    #[test]
    fn hard_link_targets_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let err = unpack(
            root.path(),
            &layer(&[E::Hard("shadow", "../../../etc/shadow")])[..],
        );
        assert!(matches!(err, Err(UnpackError::Escape(_))), "{err:?}");
    }

    #[test]
    fn dot_dot_entries_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let err = unpack(root.path(), &raw_layer_with_path("../escape")[..]).unwrap_err();
        assert!(matches!(err, UnpackError::Escape(_)), "{err}");
        assert!(!root.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn resolve_clamps_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("/../../..", r.join("up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("bin/sh"), true).unwrap(),
            r.join("usr/bin/sh")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("up/etc"), true).unwrap(),
            r.join("etc")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("bin"), false).unwrap(),
            r.join("bin")
        );
        assert!(matches!(
            resolve_in_root(r, Path::new("loop/x"), true),
            Err(UnpackError::Loop(_))
        ));
    }

    #[test]
    fn whiteouts_of_their_own_directory_or_parent_are_refused() {
        // Nested, so that what the old unpacker deleted (the directory or
        // its parent) stays inside the test's root.
        for bad in [".wh.", ".wh..", ".wh..."] {
            let root = tempfile::tempdir().unwrap();
            let r = root.path();
            unpack(
                r,
                &layer(&[
                    E::Dir("a"),
                    E::Dir("a/b"),
                    E::File("a/b/keep", "1"),
                    E::File("a/other", "1"),
                ])[..],
            )
            .unwrap();
            let err = unpack(r, &layer(&[E::File(&format!("a/b/{bad}"), "")])[..]).unwrap_err();
            assert!(matches!(err, UnpackError::BadWhiteout(_)), "{bad}: {err}");
            assert!(r.join("a/b/keep").exists(), "{bad} deleted its directory");
            assert!(r.join("a/other").exists(), "{bad} deleted its parent");
        }
        // aufs bookkeeping names are skipped, neither applied nor kept.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        unpack(
            r,
            &layer(&[E::Dir(".wh..wh.plnk"), E::File("keep", "1")])[..],
        )
        .unwrap();
        assert!(r.join("keep").exists());
        assert!(!r.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn set_id_bits_are_dropped_from_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut dir = tar::Header::new_gnu();
        dir.set_path("shared").unwrap();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o2775);
        dir.set_size(0);
        dir.set_cksum();
        unpack(
            r,
            &raw_tar(&[
                (file_header("su", 0o4755, 2), b"#!".to_vec()),
                (file_header("wall", 0o2755, 2), b"#!".to_vec()),
                (dir, Vec::new()),
            ])[..],
        )
        .unwrap();
        let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("su"), 0o755, "set-user-ID kept");
        assert_eq!(mode("wall"), 0o755, "set-group-ID kept");
        assert_eq!(
            mode("shared"),
            0o2775,
            "a directory's set-group-ID is harmless"
        );
    }

    #[test]
    fn entries_are_capped() {
        let files: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<E> = files.iter().map(|f| E::File(f, "")).collect();
        let root = tempfile::tempdir().unwrap();
        let mut left = 10;
        let err = unpack_layer(root.path(), &layer(&entries)[..], &mut left).unwrap_err();
        assert!(matches!(err, UnpackError::TooManyEntries), "{err}");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 10);
        // The budget carries over from layer to layer.
        let mut left = 25;
        unpack_layer(root.path(), &layer(&entries)[..], &mut left).unwrap();
        assert_eq!(left, 5);
        let err = unpack_layer(root.path(), &layer(&entries)[..], &mut left).unwrap_err();
        assert!(matches!(err, UnpackError::TooManyEntries), "{err}");
    }
}
