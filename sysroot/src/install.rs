//! The first install: a fresh OSTree sysroot in a directory, laid out
//! exactly as libostree lays out a host (`ostree admin init-fs`, `os-init`,
//! `deploy`), with one deployment of a commit pulled from an archive repo.
//! The builder then turns that directory into the root file system.

use std::path::Path;

use ostree::prelude::*;
use ostree::{gio, glib};

use crate::SysrootError;
use crate::contract::Kargs;
use crate::deployment::{DeploymentInfo, STATEROOT, describe};

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallSpec<'a> {
    /// The archive repository holding the commit.
    pub source_repo: &'a Path,
    /// The commit to deploy.
    pub commit: &'a str,
    /// Its ref, e.g. `berth/minimal/x86_64`: the deployment's origin, and
    /// the ref the image's repository records for it.
    pub ostree_ref: &'a str,
    /// The host's OSTree remote (name, URL), written to the image's repo so
    /// `berthctl upgrade` knows where to pull from; the deployment's origin
    /// then names `remote:ref`.
    pub remote: Option<(&'a str, &'a str)>,
    /// Where the OS tree holds the ASCII-armored public key the remote's
    /// commits and summary must be signed by (an absolute path on the
    /// host); `None`: the remote accepts unsigned updates.
    pub remote_gpg_key: Option<&'a str>,
    /// Kernel arguments of the deployment.
    pub kargs: &'a Kargs,
}

/// Creates a sysroot in the empty directory `root` and deploys the commit
/// `spec.ostree_ref` points at. Returns the deployment.
pub fn install(root: &Path, spec: &InstallSpec) -> Result<DeploymentInfo, SysrootError> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(root)));
    let none = gio::Cancellable::NONE;
    sysroot.ensure_initialized(none).map_err(|e| {
        SysrootError::ostree(format!("initializing a sysroot in {}", root.display()), e)
    })?;
    sysroot
        .load(none)
        .map_err(|e| SysrootError::ostree("loading the new sysroot", e))?;
    sysroot
        .init_osname(STATEROOT, none)
        .map_err(|e| SysrootError::ostree(format!("creating stateroot {STATEROOT}"), e))?;

    let repo = sysroot.repo();
    configure_repo(&repo)?;
    pull_local(&repo, spec.source_repo, spec.commit)?;
    let commit = spec.commit;
    repo.set_ref_immediate(None, spec.ostree_ref, Some(commit), none)
        .map_err(|e| SysrootError::ostree(format!("setting {}", spec.ostree_ref), e))?;

    let refspec = match spec.remote {
        Some((name, url)) => {
            crate::remote::add(&repo, name, url, spec.remote_gpg_key)?;
            // Record the ref under the remote too, as a pull from it would.
            repo.set_ref_immediate(Some(name), spec.ostree_ref, Some(commit), none)
                .map_err(|e| SysrootError::ostree("setting the remote ref", e))?;
            format!("{name}:{}", spec.ostree_ref)
        }
        None => spec.ostree_ref.to_string(),
    };
    let origin = sysroot.origin_new_from_refspec(&refspec);
    let deployment = crate::contract::deploy(&sysroot, commit, &origin, None, spec.kargs)?;
    // The fresh sysroot holds nothing to clean; libostree's cleanup runs as
    // it would after any deployment.
    sysroot
        .cleanup(none)
        .map_err(|e| SysrootError::ostree("cleaning the new sysroot", e))?;
    // libostree seals deployments with chattr +i; the builder must be able
    // to delete its work tree, and the flag does not survive mke2fs anyway.
    sysroot
        .deployment_set_mutable(&deployment, true, none)
        .map_err(|e| SysrootError::ostree("unsealing the deployment", e))?;
    describe(root, 0, &deployment, false)
}

/// `sysroot.bootloader=none`: libostree writes only its own BLS
/// bookkeeping under /boot; Berth writes the ESP. `sysroot.readonly=true`:
/// the booted host mounts /sysroot read-only (the repository's objects are
/// hard-linked into every deployment, so a writable /sysroot would let any
/// owner of an image file change the OS in place); berthctl makes it
/// writable in its own mount namespace while it holds the sysroot lock.
fn configure_repo(repo: &ostree::Repo) -> Result<(), SysrootError> {
    let config = repo.copy_config();
    config.set_string("sysroot", "bootloader", "none");
    config.set_boolean("sysroot", "readonly", true);
    repo.write_config(&config)
        .map_err(|e| SysrootError::ostree("writing the sysroot repo config", e))
}

/// Pulls `rev` (a ref or a commit checksum) from the repo at `source`
/// (like `ostree pull-local`).
pub fn pull_local(repo: &ostree::Repo, source: &Path, rev: &str) -> Result<(), SysrootError> {
    let source = source
        .canonicalize()
        .map_err(|e| SysrootError::io(format!("resolving {}", source.display()), e))?;
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &[rev].to_variant());
    opts.insert_value("depth", &0i32.to_variant());
    let url = format!("file://{}", source.display());
    repo.pull_with_options(&url, &opts.end(), None, gio::Cancellable::NONE)
        .map_err(|e| SysrootError::ostree(format!("pulling {rev} from {}", source.display()), e))
}
