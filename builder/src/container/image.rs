//! Getting a container image: skopeo copies it from any source a user has
//! (a registry, an OCI layout, an OCI or docker archive) into one OCI
//! layout in the cache, which keeps every blob by digest (so unchanged
//! layers are not fetched twice); then the image's manifest and config are
//! read back from that layout, each blob checked against its descriptor's
//! size and digest before it is used, and never read whole into memory
//! beyond a small cap.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::command::{self, CommandError};

/// The largest manifest or image configuration read (as containerd's
/// limit on manifests).
pub const MAX_METADATA_BLOB: u64 = 4 << 20;

/// The transports `[[container]] image` accepts, as skopeo names them.
pub const TRANSPORTS: [&str; 4] = ["docker://", "oci:", "oci-archive:", "docker-archive:"];

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// skopeo failed (missing image, unreachable registry, bad archive).
    #[error(transparent)]
    Fetch(#[from] CommandError),
    /// A blob's content does not match its digest.
    #[error("blob {digest} does not match its digest (got sha256:{actual})")]
    DigestMismatch {
        /// The expected digest.
        digest: String,
        /// What the content hashes to.
        actual: String,
    },
    /// A blob's length is not the one its descriptor gives.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's length.
        actual: u64,
    },
    /// A manifest or configuration larger than [`MAX_METADATA_BLOB`].
    #[error("blob {digest} ({size} bytes) is larger than the {limit} bytes accepted for it")]
    TooLarge {
        /// The blob's digest.
        digest: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The image is for another platform.
    #[error("the image is for {os}/{arch}, not linux/amd64")]
    Platform {
        /// Its OS.
        os: String,
        /// Its architecture.
        arch: String,
    },
    /// The layout or a blob is malformed.
    #[error("{0}")]
    Malformed(String),
    /// Reading the layout failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An image in the cache layout.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// Digest of the image manifest (`sha256:...`).
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
}

/// Copies `image` (a skopeo image reference) into the OCI layout `layout`
/// under `tag`, for linux/amd64. `tls_verify` false allows plain-HTTP
/// registries (a local test registry).
pub fn fetch(
    image: &str,
    layout: &Path,
    tag: &str,
    tls_verify: bool,
) -> Result<LocalImage, ImageError> {
    std::fs::create_dir_all(layout).map_err(|source| ImageError::Io {
        what: format!("creating {}", layout.display()),
        source,
    })?;
    let mut cmd = Command::new("skopeo");
    cmd.arg("copy")
        .arg("--quiet")
        .arg("--override-arch=amd64")
        .arg("--override-os=linux");
    if !tls_verify && image.starts_with("docker://") {
        cmd.arg("--src-tls-verify=false");
    }
    cmd.arg(image)
        .arg(format!("oci:{}:{tag}", layout.display()));
    command::run(&format!("fetching {image}"), &mut cmd)?;
    open(layout, tag)
}

/// Reads image `tag` from the OCI layout at `layout`.
pub fn open(layout: &Path, tag: &str) -> Result<LocalImage, ImageError> {
    let index = ImageIndex::from_file(layout.join("index.json")).map_err(|e| {
        ImageError::Malformed(format!("reading {}/index.json: {e}", layout.display()))
    })?;
    let desc = index
        .manifests()
        .iter()
        .rev()
        .find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .is_some_and(|n| n == tag)
        })
        .ok_or_else(|| {
            ImageError::Malformed(format!("no image tagged {tag} in {}", layout.display()))
        })?;
    let manifest_bytes = read_blob(layout, desc)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| ImageError::Malformed(format!("the image manifest is not valid: {e}")))?;
    let config_bytes = read_blob(layout, manifest.config())?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| ImageError::Malformed(format!("the image configuration is not valid: {e}")))?;
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if os != "linux" || arch != "amd64" {
        return Err(ImageError::Platform { os, arch });
    }
    Ok(LocalImage {
        layout: layout.to_path_buf(),
        manifest_digest: desc.digest().to_string(),
        manifest,
        config,
    })
}

/// The path of a blob in a layout.
pub fn blob_path(layout: &Path, desc: &Descriptor) -> PathBuf {
    let d = desc.digest();
    layout
        .join("blobs")
        .join(d.algorithm().to_string())
        .join(d.digest())
}

/// Opens a blob after checking that its length is the descriptor's.
fn open_blob(layout: &Path, desc: &Descriptor) -> Result<std::fs::File, ImageError> {
    let path = blob_path(layout, desc);
    let io = |source| ImageError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let file = std::fs::File::open(&path).map_err(io)?;
    let actual = file.metadata().map_err(io)?.len();
    if actual != desc.size() {
        return Err(ImageError::SizeMismatch {
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual,
        });
    }
    Ok(file)
}

/// Reads a manifest or configuration blob whole (at most
/// [`MAX_METADATA_BLOB`]), checking its size and digest.
pub fn read_blob(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    if desc.size() > MAX_METADATA_BLOB {
        return Err(ImageError::TooLarge {
            digest: desc.digest().to_string(),
            size: desc.size(),
            limit: MAX_METADATA_BLOB,
        });
    }
    let file = open_blob(layout, desc)?;
    let mut data = Vec::new();
    // The length was checked; the take guards against a file growing.
    file.take(MAX_METADATA_BLOB)
        .read_to_end(&mut data)
        .map_err(|source| ImageError::Io {
            what: format!("reading blob {}", desc.digest()),
            source,
        })?;
    verify(desc, &data)?;
    Ok(data)
}

/// Checks `data` against the descriptor's size and sha256 digest.
pub fn verify(desc: &Descriptor, data: &[u8]) -> Result<(), ImageError> {
    if data.len() as u64 != desc.size() {
        return Err(ImageError::SizeMismatch {
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual: data.len() as u64,
        });
    }
    let actual = hex(&Sha256::digest(data));
    check_digest(desc, actual)
}

fn check_digest(desc: &Descriptor, actual: String) -> Result<(), ImageError> {
    if desc.digest().digest() != actual {
        return Err(ImageError::DigestMismatch {
            digest: desc.digest().to_string(),
            actual,
        });
    }
    Ok(())
}

/// Checks a (layer) blob against its descriptor's size and digest,
/// streaming it: a layer is never read into memory whole.
pub fn verify_file(layout: &Path, desc: &Descriptor) -> Result<(), ImageError> {
    let mut file = open_blob(layout, desc)?;
    let mut hasher = Sha256::new();
    let copied = std::io::copy(&mut file, &mut hasher).map_err(|source| ImageError::Io {
        what: format!("reading blob {}", desc.digest()),
        source,
    })?;
    if copied != desc.size() {
        return Err(ImageError::SizeMismatch {
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual: copied,
        });
    }
    check_digest(desc, hex(&hasher.finalize()))
}

/// A layer's uncompressed tar stream, read from its blob as it goes.
/// Call [`verify_file`] first: this does not check the digest.
pub fn layer_reader(layout: &Path, desc: &Descriptor) -> Result<Box<dyn Read>, ImageError> {
    let mut file = BufReader::new(open_blob(layout, desc)?);
    Ok(match desc.media_type() {
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Box::new(flate2::bufread::MultiGzDecoder::new(file))
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(file).map_err(|source| ImageError::Io {
                what: "starting zstd decompression".into(),
                source,
            })?,
        ),
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Box::new(file),
        // docker-archive layers may arrive as plain tar under other names;
        // sniff gzip by its magic bytes.
        _ => {
            let head = file.fill_buf().map_err(|source| ImageError::Io {
                what: format!("reading blob {}", desc.digest()),
                source,
            })?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::bufread::MultiGzDecoder::new(file))
            } else {
                Box::new(file)
            }
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{DescriptorBuilder, Digest};
    use std::str::FromStr;

    #[test]
    fn digests_are_checked() {
        let data = b"hello";
        let good = hex(&Sha256::digest(data));
        let desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageLayer)
            .digest(Digest::from_str(&format!("sha256:{good}")).unwrap())
            .size(5u64)
            .build()
            .unwrap();
        verify(&desc, data).unwrap();
        let err = verify(&desc, b"Hello").unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        let err = verify(&desc, b"hello!").unwrap_err();
        assert!(
            err.to_string()
                .contains("is 6 bytes, its descriptor says 5"),
            "{err}"
        );
    }

    fn layout_with(data: &[u8], declared: u64) -> (tempfile::TempDir, Descriptor) {
        let t = tempfile::tempdir().unwrap();
        let hex = hex(&Sha256::digest(data));
        std::fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
        std::fs::write(t.path().join("blobs/sha256").join(&hex), data).unwrap();
        let desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageLayer)
            .digest(Digest::from_str(&format!("sha256:{hex}")).unwrap())
            .size(declared)
            .build()
            .unwrap();
        (t, desc)
    }

    #[test]
    fn blob_sizes_are_checked_against_the_descriptor() {
        let (t, desc) = layout_with(b"layer bytes", 11);
        verify_file(t.path(), &desc).unwrap();
        read_blob(t.path(), &desc).unwrap();
        // The right digest, the wrong size: refused before it is read.
        let (t, desc) = layout_with(b"layer bytes", 4);
        for err in [
            verify_file(t.path(), &desc).unwrap_err(),
            read_blob(t.path(), &desc).unwrap_err(),
        ] {
            assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
        }
        assert!(layer_reader(t.path(), &desc).is_err());
        // A manifest or configuration over the cap is not even opened.
        let (t, desc) = layout_with(b"{}", MAX_METADATA_BLOB + 1);
        let err = read_blob(t.path(), &desc).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    }
}
