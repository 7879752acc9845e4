//! Getting a container image: skopeo copies it from any source a user has
//! (a registry, an OCI layout, an OCI or docker archive) into one OCI
//! layout in the cache, which keeps every blob by digest (so unchanged
//! layers are not fetched twice); then the image's manifest and config are
//! read back from that layout, each blob checked against its digest.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::command::{self, CommandError};

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

/// Reads a blob whole, checking its digest.
pub fn read_blob(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(layout, desc);
    let data = std::fs::read(&path).map_err(|source| ImageError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    verify(desc, &data)?;
    Ok(data)
}

/// Checks `data` against the descriptor's sha256 digest.
pub fn verify(desc: &Descriptor, data: &[u8]) -> Result<(), ImageError> {
    let actual = hex(&Sha256::digest(data));
    if desc.digest().digest() != actual {
        return Err(ImageError::DigestMismatch {
            digest: desc.digest().to_string(),
            actual,
        });
    }
    Ok(())
}

/// A layer's uncompressed tar stream (after its digest was checked).
pub fn layer_reader(layout: &Path, desc: &Descriptor) -> Result<Box<dyn Read>, ImageError> {
    let data = read_blob(layout, desc)?;
    let cursor = std::io::Cursor::new(data);
    Ok(match desc.media_type() {
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Box::new(flate2::read::GzDecoder::new(cursor))
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Box::new(
            zstd::stream::read::Decoder::new(cursor).map_err(|source| ImageError::Io {
                what: "starting zstd decompression".into(),
                source,
            })?,
        ),
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Box::new(cursor),
        // docker-archive layers may arrive as plain tar under other names;
        // sniff gzip by its magic bytes.
        _ => {
            if cursor.get_ref().starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::read::GzDecoder::new(cursor))
            } else {
                Box::new(cursor)
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
        let err = verify(&desc, b"tampered").unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
    }
}
