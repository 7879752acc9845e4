//! `berthctl provision`, run by berth-init at boot before the services:
//! per-host data from a NoCloud seed or QEMU fw_cfg (hostname, users with
//! SSH keys, files, extra service environment) applied once per instance
//! and recorded in /var; plus the SSH keys the image itself names for root
//! at every boot. An invalid document is reported and skipped: it never
//! fails the boot. docs/provisioning.md describes the formats.

pub mod apply;
pub mod document;
pub mod sources;

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The record of what was applied (instance id, source).
pub const RECORD: &str = "var/lib/berth/provisioned";
pub use berth_hostapi::provisioning::IMAGE_ROOT_KEYS;

/// What a provisioning run found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No seed and no fw_cfg document.
    NoData,
    /// This instance's data was applied at an earlier boot.
    AlreadyApplied(String),
    /// Applied now.
    Applied(apply::Applied),
    /// The document was invalid and skipped.
    Skipped(String),
}

/// Runs provisioning against the system mounted at `root`.
pub fn run(root: &Path) -> anyhow::Result<Outcome> {
    install_image_keys(root)?;
    let seed = match sources::fw_cfg(root) {
        Some(s) => Some(s),
        None => match sources::cidata_devices(root).first() {
            Some(dev) => Some(sources::read_cidata(dev, &root.join("run/berth/cidata"))?),
            None => None,
        },
    };
    let Some(seed) = seed else {
        return Ok(Outcome::NoData);
    };
    let meta = match document::parse_meta(&seed.meta_data) {
        Ok(m) => m,
        Err(e) => return Ok(skip(&seed, &format!("meta-data: {e}"))),
    };
    let user = match document::parse_user(&seed.user_data) {
        Ok(u) => u,
        Err(e) => return Ok(skip(&seed, &format!("user-data: {e}"))),
    };
    let instance = meta.instance_id.clone().unwrap_or_else(|| {
        let digest = Sha256::new()
            .chain_update(seed.user_data.as_bytes())
            .chain_update(seed.meta_data.as_bytes())
            .finalize();
        format!(
            "sha256:{}",
            digest
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    });
    let record = root.join(RECORD);
    if std::fs::read_to_string(&record).is_ok_and(|r| r.lines().next() == Some(instance.as_str())) {
        return Ok(Outcome::AlreadyApplied(instance));
    }
    for key in user.other.keys() {
        println!(
            "berth: provisioning: {}: \"{key}\" is not supported by Berth; ignored",
            seed.source
        );
    }
    let hostname = user
        .hostname
        .clone()
        .or(meta.local_hostname.clone())
        .filter(|h| document::valid_hostname(h));
    let applied = match apply::document(root, &user, hostname.as_deref()) {
        Ok(a) => a,
        Err(e) => return Ok(skip(&seed, &format!("{e:#}"))),
    };
    if let Some(h) = &applied.hostname {
        // The live hostname too (berth-init set the image's earlier).
        if root == Path::new("/") {
            rustix::system::sethostname(h.as_bytes()).context("setting the hostname")?;
        }
    }
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&record, format!("{instance}\n{}\n", seed.source))
        .with_context(|| format!("writing {}", record.display()))?;
    println!(
        "berth: provisioning: applied {} from {}: hostname {}, {} user(s), {} key(s), {} file(s), environment for {} service(s)",
        instance,
        seed.source,
        applied.hostname.as_deref().unwrap_or("unchanged"),
        applied.users.len(),
        applied.keys,
        applied.files.len(),
        applied.service_env.len()
    );
    Ok(Outcome::Applied(applied))
}

fn skip(seed: &sources::Seed, why: &str) -> Outcome {
    println!("berth: provisioning: {} skipped: {why}", seed.source);
    Outcome::Skipped(why.to_string())
}

/// Puts the image's own root keys (manifest `[ssh] authorized-keys`) into
/// root's authorized_keys, at every boot (keys already there stay).
fn install_image_keys(root: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(root.join(IMAGE_ROOT_KEYS)) else {
        return Ok(());
    };
    let keys: Vec<String> = text
        .lines()
        .map(String::from)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let home = apply::root_home(root)?;
    apply::authorized_keys(&home, &keys, 0, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("var/roothome")).unwrap();
        std::fs::create_dir_all(r.join("sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config"))
            .unwrap();
        std::os::unix::fs::symlink("var/roothome", r.join("root")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(r.join("etc/hostname"), "berth\n").unwrap();
        t
    }

    #[test]
    fn fw_cfg_document_applies_once() {
        let t = host();
        let r = t.path();
        std::fs::write(
            r.join(sources::FW_CFG_FILE),
            "#cloud-config\nhostname: node-9\n",
        )
        .unwrap();
        assert!(
            matches!(run(r).unwrap(), Outcome::Applied(ref a) if a.hostname.as_deref() == Some("node-9"))
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "node-9\n"
        );
        std::fs::write(r.join("etc/hostname"), "changed-by-admin\n").unwrap();
        assert!(matches!(run(r).unwrap(), Outcome::AlreadyApplied(_)));
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "changed-by-admin\n"
        );
    }

    #[test]
    fn invalid_documents_are_skipped_not_fatal() {
        let t = host();
        let r = t.path();
        std::fs::write(
            r.join(sources::FW_CFG_FILE),
            "#cloud-config\nhostname: [oops\n",
        )
        .unwrap();
        assert!(matches!(run(r).unwrap(), Outcome::Skipped(_)));
        assert!(!r.join(RECORD).exists());
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "berth\n"
        );
    }

    #[test]
    fn no_data_is_fine_and_image_keys_are_installed() {
        let t = host();
        let r = t.path();
        std::fs::remove_dir_all(r.join("sys")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib/berth/ssh")).unwrap();
        std::fs::write(r.join(IMAGE_ROOT_KEYS), "ssh-ed25519 KEY image\n").unwrap();
        assert_eq!(run(r).unwrap(), Outcome::NoData);
        assert_eq!(
            std::fs::read_to_string(r.join("var/roothome/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 KEY image\n"
        );
    }
}
