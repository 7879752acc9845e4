//! An image's layers, checked and unpacked in order. Each layer blob is
//! checked against its descriptor (size, then digest) before it is read;
//! its uncompressed stream is hashed as it is unpacked and must be the
//! `diff_id` the image configuration names for it; and the whole image
//! may unpack to at most [`Limits::DEFAULT`] bytes and entries. A
//! decompression bomb (a few megabytes of gzip that inflate to terabytes,
//! or to millions of empty files) stops the build with an error instead
//! of filling the build machine.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::image::{self, ImageError, LocalImage};
use super::unpack::{self, UnpackError};

/// What one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of all its layers' tar streams.
    pub bytes: u64,
    /// Tar entries of all its layers (each costs an inode or more).
    pub entries: u64,
}

impl Limits {
    /// 8 GiB and a million entries: several times the largest images a
    /// container host runs (a Debian or Ubuntu base is some 80 MiB and
    /// 10 000 entries), and still well inside a build machine's disk.
    pub const DEFAULT: Limits = Limits {
        bytes: 8 << 30,
        entries: 1_000_000,
    };
}

/// Why an image's layers could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The configuration lists another number of `diff_ids` than the
    /// manifest has layers.
    #[error("the image has {layers} layers but its configuration lists {diff_ids} diff_ids")]
    DiffIdCount {
        /// Layers in the manifest.
        layers: usize,
        /// `rootfs.diff_ids` in the configuration.
        diff_ids: usize,
    },
    /// A layer's uncompressed content is not what the configuration says.
    #[error(
        "layer {layer}: its uncompressed content is sha256:{actual}, the configuration says {expected}"
    )]
    DiffIdMismatch {
        /// 1-based layer number.
        layer: usize,
        /// The configuration's `diff_id`.
        expected: String,
        /// What the stream hashes to.
        actual: String,
    },
    /// The layers unpack to more bytes than allowed.
    #[error("the image unpacks to more than {0} bytes: refusing it (a decompression bomb?)")]
    TooLarge(u64),
    /// The layers have more entries than allowed.
    #[error("the image has more than {0} entries: refusing it")]
    TooManyEntries(u64),
    /// A blob failed its checks.
    #[error("layer {layer}: {source}")]
    Blob {
        /// 1-based layer number.
        layer: usize,
        /// The cause.
        #[source]
        source: Box<ImageError>,
    },
    /// Unpacking failed.
    #[error("unpacking layer {layer} ({digest}): {source}")]
    Unpack {
        /// 1-based layer number.
        layer: usize,
        /// The layer's digest.
        digest: String,
        /// The cause.
        #[source]
        source: UnpackError,
    },
}

/// A reader that hashes and counts what passes, and fails once more than
/// `limit` bytes have passed.
struct Measured<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R> Measured<R> {
    fn over(&self) -> bool {
        self.count > self.limit
    }
}

impl<R: Read> Read for Measured<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.over() {
            return Err(io::Error::other("the image's size cap is reached"));
        }
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.over() {
            return Err(io::Error::other("the image's size cap is reached"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks every layer of `img`, lowest first, into `rootfs`.
pub fn unpack_all(img: &LocalImage, rootfs: &Path, limits: Limits) -> Result<(), LayerError> {
    let layers = img.manifest.layers();
    let diff_ids = img.config.rootfs().diff_ids();
    if layers.len() != diff_ids.len() {
        return Err(LayerError::DiffIdCount {
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut bytes_left = limits.bytes;
    let mut entries_left = limits.entries;
    for (i, (desc, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let layer = i + 1;
        let blob = |source| LayerError::Blob {
            layer,
            source: Box::new(source),
        };
        image::verify_file(&img.layout, desc).map_err(blob)?;
        let reader = image::layer_reader(&img.layout, desc).map_err(blob)?;
        let mut stream = Measured {
            inner: reader,
            hasher: Sha256::new(),
            count: 0,
            limit: bytes_left,
        };
        let unpacked = unpack::unpack_layer(rootfs, &mut stream, &mut entries_left);
        // The rest of the stream (the tar end blocks, or whatever a
        // hostile layer appends) counts and is hashed too.
        let drained = unpacked.and_then(|()| {
            io::copy(&mut stream, &mut io::sink())
                .map(drop)
                .map_err(|source| UnpackError::Io {
                    what: "reading the end of the layer".into(),
                    source,
                })
        });
        if stream.over() {
            return Err(LayerError::TooLarge(limits.bytes));
        }
        drained.map_err(|source| match source {
            UnpackError::TooManyEntries => LayerError::TooManyEntries(limits.entries),
            source => LayerError::Unpack {
                layer,
                digest: desc.digest().to_string(),
                source,
            },
        })?;
        bytes_left -= stream.count;
        let actual: String = stream
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if diff_id.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(LayerError::DiffIdMismatch {
                layer,
                expected: diff_id.clone(),
                actual,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn sha(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A tar stream with one file of `size` zero bytes and `extra` empty
    /// files.
    fn tar_of(size: u64, extra: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        b.append_data(&mut h, "zeros", io::repeat(0).take(size))
            .unwrap();
        for i in 0..extra {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            b.append_data(&mut h, format!("f{i}"), io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn blob(dir: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
        let hex = sha(data);
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    /// An OCI layout holding one image of gzip-compressed `tars`, whose
    /// configuration lists `diff_ids` (the true ones when `None`).
    fn image_of(dir: &Path, tars: &[Vec<u8>], diff_ids: Option<Vec<String>>) -> LocalImage {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let layers: Vec<_> = tars
            .iter()
            .map(|t| blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(t)))
            .collect();
        let diff_ids =
            diff_ids.unwrap_or_else(|| tars.iter().map(|t| format!("sha256:{}", sha(t))).collect());
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        let mut desc = blob(
            dir,
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        image::open(dir, "t").unwrap()
    }

    #[test]
    fn layers_unpack_when_their_diff_ids_match() {
        let t = tempfile::tempdir().unwrap();
        let img = image_of(&t.path().join("l"), &[tar_of(10, 1), tar_of(3, 2)], None);
        let root = t.path().join("root");
        unpack_all(&img, &root, Limits::DEFAULT).unwrap();
        assert_eq!(std::fs::metadata(root.join("zeros")).unwrap().len(), 3);
        assert!(root.join("f1").exists());
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let other = format!("sha256:{}", sha(b"another layer"));
        let img = image_of(&t.path().join("l"), &[tar_of(10, 0)], Some(vec![other]));
        let err = unpack_all(&img, &t.path().join("root"), Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(err, LayerError::DiffIdMismatch { layer: 1, .. }),
            "{err}"
        );
        let img = image_of(
            &t.path().join("m"),
            &[tar_of(1, 0), tar_of(2, 0)],
            Some(vec![]),
        );
        let err = unpack_all(&img, &t.path().join("root2"), Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(
                err,
                LayerError::DiffIdCount {
                    layers: 2,
                    diff_ids: 0
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        // 64 MiB of zeros: some 64 KiB of gzip.
        let t = tempfile::tempdir().unwrap();
        let bomb = tar_of(64 << 20, 0);
        let img = image_of(&t.path().join("l"), &[bomb], None);
        let compressed = img.manifest.layers()[0].size();
        assert!(compressed < 1 << 20, "{compressed}");
        let root = t.path().join("root");
        let limits = Limits {
            bytes: 4 << 20,
            entries: 100,
        };
        let err = unpack_all(&img, &root, limits).unwrap_err();
        assert!(
            matches!(err, LayerError::TooLarge(n) if n == 4 << 20),
            "{err}"
        );
        let written = std::fs::metadata(root.join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 4 << 20, "{written} bytes written");
        // The cap covers all layers together, and the entries too.
        let img = image_of(
            &t.path().join("m"),
            &[tar_of(3 << 20, 0), tar_of(3 << 20, 0)],
            None,
        );
        let err = unpack_all(&img, &t.path().join("root2"), limits).unwrap_err();
        assert!(matches!(err, LayerError::TooLarge(_)), "{err}");
        let img = image_of(&t.path().join("n"), &[tar_of(0, 60), tar_of(0, 60)], None);
        let err = unpack_all(&img, &t.path().join("root3"), limits).unwrap_err();
        assert!(matches!(err, LayerError::TooManyEntries(100)), "{err}");
        assert_eq!(
            err.to_string(),
            "the image has more than 100 entries: refusing it"
        );
    }

    #[test]
    fn a_blob_that_is_not_its_descriptor_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("l");
        let img = image_of(&dir, &[tar_of(10, 0)], None);
        let path = image::blob_path(&dir, &img.manifest.layers()[0]);
        let mut data = std::fs::read(&path).unwrap();
        data.push(0);
        std::fs::write(&path, &data).unwrap();
        let err = unpack_all(&img, &t.path().join("root"), Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(&err, LayerError::Blob { layer: 1, source } if matches!(**source, ImageError::SizeMismatch { .. })),
            "{err}"
        );
        data.pop();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let err = unpack_all(&img, &t.path().join("root"), Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(&err, LayerError::Blob { layer: 1, source } if matches!(**source, ImageError::DigestMismatch { .. })),
            "{err}"
        );
    }
}
