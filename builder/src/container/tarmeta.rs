//! The metadata entries of a layer's tar stream: GNU long names and long
//! link targets, PAX headers (paths, owners, sizes). The `tar` crate, in
//! its own mode, reads one of any declared size into memory whole, so a
//! few bytes of gzip could make the build allocate gigabytes. Berth reads
//! layers in the crate's raw mode and handles these entries here, each
//! at most [`MAX_META_ENTRY`] bytes, carrying what they say over to the
//! entry they describe.

use std::io::Read;

use super::unpack::{UnpackError, io_err};

/// The largest metadata entry (a PAX header, a GNU long name or long
/// link target) read into memory: Go's archive/tar, which Docker and
/// containerd unpack with, refuses larger ones too.
pub const MAX_META_ENTRY: u64 = 1 << 20;

/// What the metadata entries before an entry say about it: its path and
/// link target (longer than a tar header holds), its owner (larger than
/// a header holds) and, in a PAX header, its size.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) path: Option<Vec<u8>>,
    pub(super) link: Option<Vec<u8>>,
    pub(super) size: Option<u64>,
    pub(super) uid: Option<u64>,
    pub(super) gid: Option<u64>,
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Reads `entry` into `pending` when it is a metadata entry (returning
/// true), refusing one larger than [`MAX_META_ENTRY`].
pub(super) fn take_meta<R: Read>(
    entry: &mut tar::Entry<R>,
    pending: &mut Pending,
) -> Result<bool, UnpackError> {
    let kind = entry.header().entry_type();
    let local_pax = kind.is_pax_local_extensions();
    if !(local_pax
        || kind.is_pax_global_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink())
    {
        return Ok(false);
    }
    let size = entry
        .header()
        .entry_size()
        .map_err(io_err("reading a layer entry header"))?;
    if size > MAX_META_ENTRY {
        return Err(UnpackError::MetaTooLarge(size));
    }
    let mut data = Vec::new();
    entry
        .read_to_end(&mut data)
        .map_err(io_err("reading a layer metadata entry"))?;
    if kind.is_gnu_longname() {
        pending.path = Some(trim_nul(data));
    } else if kind.is_gnu_longlink() {
        pending.link = Some(trim_nul(data));
    } else if local_pax {
        let number = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|t| t.parse().ok());
        for ext in tar::PaxExtensions::new(&data) {
            let ext = ext.map_err(io_err("reading a PAX header"))?;
            let value = ext.value_bytes();
            match ext.key() {
                Ok("path") => pending.path = Some(value.to_vec()),
                Ok("linkpath") => pending.link = Some(value.to_vec()),
                Ok("size") => pending.size = number(value),
                Ok("uid") => pending.uid = number(value),
                Ok("gid") => pending.gid = number(value),
                _ => {}
            }
        }
    }
    // A global PAX header (`g`) holds nothing Berth uses.
    Ok(true)
}

/// Tar streams written header by header, for the tests of the unpacker.
#[cfg(test)]
pub(crate) mod fixtures {
    /// A raw tar stream: `blocks` (headers with their data), then the end.
    pub fn raw_tar(blocks: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in blocks {
            out.extend(h.as_bytes());
            out.extend(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend([0u8; 1024]);
        out
    }

    pub fn meta_header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        h
    }

    pub fn file_header(path: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(size);
        h.set_cksum();
        h
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{file_header, meta_header, raw_tar};
    use super::*;
    use crate::container::unpack::unpack_layer;
    use std::path::Path;

    fn unpack(root: &Path, tar: impl Read) -> Result<(), UnpackError> {
        unpack_layer(root, tar, &mut u64::MAX.clone())
    }

    #[test]
    fn long_names_pax_paths_and_owners_are_kept() {
        let long_dir = "d".repeat(150);
        let long_file = format!("{long_dir}/{}", "f".repeat(120));
        let long_target = format!("/{}", "t".repeat(200));
        let mut b = tar::Builder::new(Vec::new());
        // GNU long name ('L') and long link ('K') entries, as tar-rs writes.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(4);
        b.append_data(&mut h, &long_file, &b"long"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", &long_target).unwrap();
        // A PAX header ('x') naming the next entry and its owner, as Go's
        // archive/tar (Docker, BuildKit) writes.
        let pax_path = format!("p/{}", "x".repeat(130));
        b.append_pax_extensions([
            ("path", pax_path.as_bytes()),
            ("uid", b"3000000".as_slice()),
            ("size", b"3".as_slice()),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("p/short").unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"pax"[..]).unwrap();
        let data = b.into_inner().unwrap();

        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("p")).unwrap();
        unpack(r, &data[..]).unwrap();
        assert_eq!(std::fs::read(r.join(&long_file)).unwrap(), b"long");
        assert_eq!(
            std::fs::read_link(r.join("link")).unwrap(),
            Path::new(&long_target)
        );
        assert_eq!(std::fs::read(r.join(&pax_path)).unwrap(), b"pax");
        assert!(!r.join("p/short").exists(), "the PAX path wins");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(r.join(&pax_path)).unwrap().uid(),
            3_000_000
        );
    }

    #[test]
    fn huge_metadata_entries_are_refused() {
        // A PAX header and a GNU long name declaring 2 MiB: tar-rs's own
        // mode reads either into memory whole, whatever its size.
        for kind in [tar::EntryType::XHeader, tar::EntryType::GNULongName] {
            let size = 2 << 20;
            let data = raw_tar(&[
                (meta_header(kind, size), vec![b'a'; size as usize]),
                (file_header("f", 0o644, 1), b"x".to_vec()),
            ]);
            let root = tempfile::tempdir().unwrap();
            let err = unpack(root.path(), &data[..]).unwrap_err();
            assert!(
                matches!(err, UnpackError::MetaTooLarge(n) if n == size),
                "{kind:?}: {err}"
            );
            assert!(!root.path().join("f").exists());
        }
    }

    #[test]
    fn tar_features_that_would_desync_are_refused() {
        // A PAX size that disagrees with the header.
        let record = b"19 size=9000000000\n".to_vec();
        let data = raw_tar(&[
            (
                meta_header(tar::EntryType::XHeader, record.len() as u64),
                record,
            ),
            (file_header("big", 0o644, 1), b"x".to_vec()),
        ]);
        let root = tempfile::tempdir().unwrap();
        let err = unpack(root.path(), &data[..]).unwrap_err();
        assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
        // A GNU sparse file whose map continues in extension blocks.
        let mut h = tar::Header::new_gnu();
        h.set_path("sparse").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.as_gnu_mut().unwrap().set_is_extended(true);
        h.set_cksum();
        let err = unpack(root.path(), &raw_tar(&[(h, vec![0; 512])])[..]).unwrap_err();
        assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
    }
}
