//! The summary of a repository Berth publishes: regenerated with the
//! rollout documents it carries (additional metadata, as
//! `berth_sysroot::rollout` lays them out) and signed. `berth build`
//! writes it when a ref moves, `berth rollout` when a document changes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use berth_sysroot::rollout::SignedDoc;
use ostree::gio;

use crate::signing::Signer;

/// The summary's file name in a repository.
const SUMMARY: &str = "summary";
/// Its signatures' file name.
const SUMMARY_SIG: &str = "summary.sig";

/// Regenerates the summary of `repo` from its refs, with `rollouts`
/// (ref → signed document), and signs it with `signer`.
pub fn regenerate(
    repo: &ostree::Repo,
    rollouts: &BTreeMap<String, SignedDoc>,
    signer: Option<&Signer>,
) -> anyhow::Result<()> {
    let meta = berth_sysroot::rollout::metadata(rollouts);
    // Regenerating removes the old summary.sig: unsigned until signed.
    repo.regenerate_summary(Some(&meta), gio::Cancellable::NONE)
        .context("regenerating the summary")?;
    if let Some(signer) = signer {
        signer.sign_summary(repo)?;
    }
    Ok(())
}

/// A repository's summary and its signatures as they were, to put back
/// when writing new ones failed halfway (a new summary without its
/// signature is one every verifying host refuses).
#[derive(Debug, Clone)]
pub struct Saved {
    summary: Option<Vec<u8>>,
    sig: Option<Vec<u8>>,
}

impl Saved {
    /// Reads both files of the repository at `repo` (either may be absent).
    pub fn read(repo: &Path) -> anyhow::Result<Saved> {
        Ok(Saved {
            summary: read_optional(&repo.join(SUMMARY))?,
            sig: read_optional(&repo.join(SUMMARY_SIG))?,
        })
    }

    /// Writes both back as they were read, each replaced atomically.
    pub fn restore(&self, repo: &Path) -> anyhow::Result<()> {
        for (name, bytes) in [(SUMMARY, &self.summary), (SUMMARY_SIG, &self.sig)] {
            let path = repo.join(name);
            match bytes {
                Some(b) => crate::signing::write_atomic(&path, b)?,
                None => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                },
            }
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_puts_back_both_files_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        std::fs::write(repo.join(SUMMARY), "old summary").unwrap();
        let saved = Saved::read(repo).unwrap();
        // A regeneration that got as far as a new summary without its
        // signature, where there was no signature before either.
        std::fs::write(repo.join(SUMMARY), "new summary").unwrap();
        std::fs::write(repo.join(SUMMARY_SIG), "new sig").unwrap();
        saved.restore(repo).unwrap();
        assert_eq!(std::fs::read(repo.join(SUMMARY)).unwrap(), b"old summary");
        assert!(!repo.join(SUMMARY_SIG).exists());

        std::fs::write(repo.join(SUMMARY_SIG), "old sig").unwrap();
        let saved = Saved::read(repo).unwrap();
        std::fs::write(repo.join(SUMMARY), "newer").unwrap();
        std::fs::remove_file(repo.join(SUMMARY_SIG)).unwrap();
        saved.restore(repo).unwrap();
        assert_eq!(std::fs::read(repo.join(SUMMARY)).unwrap(), b"old summary");
        assert_eq!(std::fs::read(repo.join(SUMMARY_SIG)).unwrap(), b"old sig");
    }
}
