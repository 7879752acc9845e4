//! Test container images, written by hand as OCI image layouts: layers
//! are tar streams made here (gzip-compressed, every time stamp and owner
//! fixed), the image configuration and manifest are JSON made here, and
//! blobs are named by their sha256. The same inputs give the same bytes,
//! so an image's manifest digest identifies its content (the container
//! fixture puts it into the generated manifest, so a changed image is a
//! new fixture key).
//!
//! The demo images are busybox-static's `/bin/busybox` with a symlink per
//! applet, plus a small web site. Nothing here talks to a registry (see
//! [`crate::registry`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::command::run_stdout;
use crate::{Error, Result};

/// The host's static busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The OCI media types used here.
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file: path, content, mode.
    File(String, Vec<u8>, u32),
    /// A symbolic link: path, target.
    Symlink(String, String),
}

/// What an image is made of.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Layers, lowest first.
    pub layers: Vec<Vec<Entry>>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// The architecture (`None`: amd64).
    pub architecture: Option<String>,
}

/// An image written into an OCI layout.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The layout directory.
    pub dir: PathBuf,
    /// Its tag (`org.opencontainers.image.ref.name`).
    pub tag: String,
    /// `sha256:...` of its manifest.
    pub manifest_digest: String,
}

impl LayoutImage {
    /// The skopeo reference of the image: `oci:DIR:TAG`.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar stream of `entries` (owner root, time 0).
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let io = Error::io("writing a layer tar");
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let result = match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())
            }
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..])
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)
            }
        };
        result.map_err(Error::io("adding an entry to a layer tar"))?;
    }
    b.into_inner().map_err(io)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // flate2 writes mtime 0 and no file name: the output is reproducible.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)
        .map_err(Error::io("compressing a layer"))?;
    enc.finish().map_err(Error::io("compressing a layer"))
}

/// Stores `data` as a blob of the layout; returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<serde_json::Value> {
    let hex = sha256_hex(data);
    let path = dir.join("blobs/sha256").join(&hex);
    std::fs::write(&path, data).map_err(Error::io("writing a blob of an OCI layout"))?;
    Ok(json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": data.len(),
    }))
}

fn to_json(v: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Setup(format!("encoding JSON: {e}")))
}

/// Writes `spec` as image `tag` into a fresh OCI layout at `dir` (any
/// previous content is removed).
pub fn write_layout(dir: &Path, tag: &str, spec: &ImageSpec) -> Result<LayoutImage> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .map_err(Error::io("creating an OCI layout"))?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for entries in &spec.layers {
        let tar = layer_tar(entries)?;
        diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
        layers.push(put_blob(dir, LAYER_TYPE, &gzip(&tar)?)?);
    }
    let mut config = serde_json::Map::new();
    config.insert("Entrypoint".into(), json!(spec.entrypoint));
    config.insert("Cmd".into(), json!(spec.cmd));
    config.insert("Env".into(), json!(spec.env));
    if let Some(w) = &spec.working_dir {
        config.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &spec.user {
        config.insert("User".into(), json!(u));
    }
    let image_config = json!({
        "architecture": spec.architecture.as_deref().unwrap_or("amd64"),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config_desc = put_blob(dir, CONFIG_TYPE, &to_json(&image_config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc,
        "layers": layers,
    });
    let mut manifest_desc = put_blob(dir, MANIFEST_TYPE, &to_json(&manifest)?)?;
    let manifest_digest = manifest_desc["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    let index = json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    std::fs::write(dir.join("index.json"), to_json(&index)?)
        .map_err(Error::io("writing index.json"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(Error::io("writing oci-layout"))?;
    Ok(LayoutImage {
        dir: dir.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
    })
}

/// A layer with `/bin/busybox` (the host's busybox-static) and a symlink
/// `/bin/APPLET -> busybox` for each of its applets.
pub fn busybox_layer() -> Result<Vec<Entry>> {
    let binary = std::fs::read(BUSYBOX).map_err(|e| {
        Error::Setup(format!(
            "reading {BUSYBOX} (package busybox-static, scripts/install-deps): {e}"
        ))
    })?;
    let list = run_stdout(Command::new(BUSYBOX).arg("--list"))?;
    let mut applets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    let mut entries = vec![
        Entry::Dir("bin".into()),
        Entry::File("bin/busybox".into(), binary, 0o755),
    ];
    entries.extend(
        applets
            .into_iter()
            .map(|a| Entry::Symlink(format!("bin/{a}"), "busybox".into())),
    );
    Ok(entries)
}

/// `/etc/passwd` and `/etc/group` with root, `www` (33) and nobody.
pub fn users_layer() -> Vec<Entry> {
    vec![
        Entry::Dir("etc".into()),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
            0o644,
        ),
        Entry::File(
            "etc/group".into(),
            b"root:x:0:\nwww:x:33:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            layers: vec![
                vec![
                    Entry::Dir("www".into()),
                    Entry::File("www/old".into(), b"old".to_vec(), 0o644),
                ],
                vec![Entry::File("www/.wh.old".into(), Vec::new(), 0o644)],
            ],
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["true".into()],
            env: vec!["A=1".into()],
            working_dir: Some("/www".into()),
            user: Some("www".into()),
            architecture: None,
        }
    }

    #[test]
    fn layouts_are_reproducible_and_readable_by_the_builder() {
        let t = tempfile::tempdir().unwrap();
        let a = write_layout(&t.path().join("a"), "1", &spec()).unwrap();
        let b = write_layout(&t.path().join("b"), "1", &spec()).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        // berth's own reader accepts it: digests, platform, config.
        let img = berth::container::image::open(&a.dir, "1").unwrap();
        assert_eq!(img.manifest_digest, a.manifest_digest);
        assert_eq!(img.manifest.layers().len(), 2);
        let cfg = img.config.config().clone().unwrap();
        assert_eq!(cfg.user().as_deref(), Some("www"));
        assert_eq!(cfg.working_dir().as_deref(), Some("/www"));
        for layer in img.manifest.layers() {
            berth::container::image::layer_reader(&a.dir, layer).unwrap();
        }
    }
}
