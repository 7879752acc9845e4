//! `berthctl provision`, run by berth-init at boot before the services:
//! per-host data from a NoCloud seed or QEMU fw_cfg (hostname, users with
//! SSH keys, files, extra service environment) applied once per instance
//! and recorded in /var; plus the SSH keys the image itself names for root
//! at every boot. An invalid document is reported and skipped: it never
//! fails the boot. docs/provisioning.md describes the formats.

mod accounts;
mod base64;
mod beneath;
mod document;
mod keys;
mod plan;
mod sources;
mod txn;

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use beneath::Beneath;
pub use plan::{Applied, RECORD};

/// What a provisioning run found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No seed and no fw_cfg document.
    NoData,
    /// This instance's data was applied at an earlier boot.
    AlreadyApplied(String),
    /// Applied now.
    Applied(plan::Applied),
    /// The document was invalid or could not be written: nothing of it was
    /// changed (or, failing after its commit, the next run completes it).
    Skipped(String),
}

/// Runs provisioning against the system mounted at `root`.
pub fn run(root: &Path) -> anyhow::Result<Outcome> {
    run_with(root, txn::Faults::default())
}

/// [`run`], with failures injected into the document's transaction.
pub(crate) fn run_with(root: &Path, faults: txn::Faults) -> anyhow::Result<Outcome> {
    let host = Beneath::open(root)?;
    if let Some(done) = txn::recover(&host).context("finishing an interrupted run")? {
        println!("berth: provisioning: {done}");
    }
    install_image_keys(&host)?;
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
    let digest: String = Sha256::new()
        .chain_update(seed.user_data.as_bytes())
        .chain_update(seed.meta_data.as_bytes())
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let instance = meta
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", &digest[..32]));
    let recorded = host
        .read(&beneath::RelPath::parse(RECORD)?)
        .ok()
        .flatten()
        .map(|(d, _)| String::from_utf8_lossy(&d).into_owned());
    if recorded.is_some_and(|r| r.lines().next() == Some(instance.as_str())) {
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
    let record = plan::Record {
        instance: instance.clone(),
        source: seed.source.clone(),
        digest: format!("sha256:{digest}"),
    };
    // Everything checked and computed first: an error leaves no trace.
    let plan = match plan::document(&host, &user, hostname.as_deref(), &record) {
        Ok(p) => p,
        Err(e) => return Ok(skip(&seed, &format!("{e:#}"))),
    };
    if let Err(e) = txn::apply_with(&host, &plan.changes, faults) {
        return Ok(skip(&seed, &format!("applying: {e}")));
    }
    let applied = plan.applied;
    if let Some(h) = &applied.hostname {
        // The live hostname too (berth-init set the image's earlier).
        if root == Path::new("/") {
            rustix::system::sethostname(h.as_bytes()).context("setting the hostname")?;
        }
    }
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

/// Rewrites the block of the image's own root keys (manifest `[ssh]
/// authorized-keys`) in root's authorized_keys, at every boot: keys the
/// booted image no longer has are removed (see [`keys`]).
fn install_image_keys(host: &Beneath) -> anyhow::Result<()> {
    let changes = plan::image_keys(host).context("planning the image's SSH keys")?;
    if !changes.files.is_empty() {
        txn::apply(host, &changes).context("installing the image's SSH keys")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
