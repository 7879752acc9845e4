//! A host's update remote and how the host pulls from it: the trust rules
//! shared by the first install (which writes the remote into the image)
//! and `berthctl upgrade` (which pulls through it).
//!
//! With a key, libostree checks the GPG signature of every commit and of
//! the summary (which lists the refs and the static deltas), so neither
//! can be forged or swapped for an unsigned one by the network or the
//! server. Whatever the key, a pull refuses a commit older than the
//! booted one (a replayed old version) and one whose `ostree.ref-binding`
//! names other refs (another image's commit put under this ref).

use ostree::prelude::*;
use ostree::{gio, glib};

use crate::SysrootError;

/// Commit metadata key holding the refs a commit was built for
/// (libostree's `OSTREE_COMMIT_META_KEY_REF_BINDING`).
pub const REF_BINDING: &str = "ostree.ref-binding";

/// Adds the update remote `name` at `url` to `repo`. With a key, commits
/// and the summary must be signed by it: `gpgkeypath` names the
/// ASCII-armored key file inside the OS tree, so a host trusts the keys
/// its booted version carries, and a new version can bring new ones.
pub fn add(
    repo: &ostree::Repo,
    name: &str,
    url: &str,
    gpg_key_in_tree: Option<&str>,
) -> Result<(), SysrootError> {
    let opts = glib::VariantDict::new(None);
    let verify = gpg_key_in_tree.is_some();
    opts.insert_value("gpg-verify", &verify.to_variant());
    opts.insert_value("gpg-verify-summary", &verify.to_variant());
    if let Some(path) = gpg_key_in_tree {
        opts.insert_value("gpgkeypath", &path.to_variant());
    }
    repo.remote_add(name, Some(url), Some(&opts.end()), gio::Cancellable::NONE)
        .map_err(|e| SysrootError::ostree(format!("adding remote {name} ({url})"), e))
}

/// How a host pulls its next version.
#[derive(Debug, Clone, Copy)]
pub struct Pull<'a> {
    /// The ref to pull (the booted deployment's origin ref).
    pub branch: &'a str,
    /// The booted commit: nothing older than it is accepted.
    pub booted: &'a str,
    /// Accept a commit older than the booted one (an explicit downgrade).
    pub allow_downgrade: bool,
    /// Fetch only the commit object (to see what is offered).
    pub commit_only: bool,
    /// Pull this commit of the ref rather than whatever the summary names
    /// at the time of the pull: the one the update agent checked (its
    /// rollout, its failure record). The same checks apply to it.
    pub commit: Option<&'a str>,
}

impl Pull<'_> {
    /// The options for `ostree_repo_pull_with_options`.
    ///
    /// `timestamp-check-from-rev` compares with the booted commit, not with
    /// the ref's last pulled value (`timestamp-check`): after a rollback
    /// the host may take the version it rolled back from again, but never
    /// anything older than what runs. libostree refuses an equal timestamp
    /// on another commit too, so builds stamp each commit after its parent.
    pub fn options(&self) -> glib::Variant {
        let opts = glib::VariantDict::new(None);
        opts.insert_value("refs", &[self.branch].to_variant());
        if let Some(commit) = self.commit {
            opts.insert_value("override-commit-ids", &[commit].to_variant());
        }
        let flags = if self.commit_only {
            ostree::RepoPullFlags::COMMIT_ONLY
        } else {
            ostree::RepoPullFlags::NONE
        };
        opts.insert_value("flags", &(flags.bits() as i32).to_variant());
        if !self.allow_downgrade {
            opts.insert_value("timestamp-check-from-rev", &self.booted.to_variant());
        }
        // libostree's default, written out because it is what refuses a
        // commit bound to another ref: it must never be turned off.
        opts.insert_value("disable-verify-bindings", &false.to_variant());
        opts.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrades_are_refused_unless_allowed() {
        let pull = Pull {
            branch: "berth/x/x86_64",
            booted: "abc",
            allow_downgrade: false,
            commit_only: false,
            commit: None,
        };
        let opts = glib::VariantDict::new(Some(&pull.options()));
        assert_eq!(
            opts.lookup::<String>("timestamp-check-from-rev")
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            opts.lookup::<bool>("disable-verify-bindings").unwrap(),
            Some(false)
        );
        let allowed = Pull {
            allow_downgrade: true,
            ..pull
        };
        let opts = glib::VariantDict::new(Some(&allowed.options()));
        assert_eq!(
            opts.lookup::<String>("timestamp-check-from-rev").unwrap(),
            None
        );
        assert_eq!(
            opts.lookup::<Vec<String>>("refs").unwrap(),
            Some(vec!["berth/x/x86_64".to_string()])
        );
        assert_eq!(
            opts.lookup::<Vec<String>>("override-commit-ids").unwrap(),
            None
        );
        let pinned = Pull {
            commit: Some("def"),
            ..pull
        };
        let opts = glib::VariantDict::new(Some(&pinned.options()));
        assert_eq!(
            opts.lookup::<Vec<String>>("override-commit-ids").unwrap(),
            Some(vec!["def".to_string()])
        );
    }
}
