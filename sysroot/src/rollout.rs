//! Staged rollouts inside an OSTree repository's summary.
//!
//! `berth rollout` publishes one signed document per ref (the JSON of
//! `berth_hostapi::update::Rollout`) as additional metadata of the
//! repository's summary: the static repository still needs no server of
//! its own, and a host that checks for updates reads it from the summary
//! it fetches anyway. Each document carries its own GPG signatures (as
//! `ostree_repo_gpg_sign_data` makes them), checked against the keys the
//! host's remote trusts, so a rollout is obeyed only when signed by the
//! repository's key even where the summary itself is not checked.
//!
//! The metadata key is [`META_PREFIX`] plus the ref; its value is
//! `(ayay)`: the document's bytes and their signatures (`a{sv}`, as a
//! summary's `.sig` file).

use std::collections::BTreeMap;

use ostree::prelude::*;
use ostree::{gio, glib};

use crate::SysrootError;

/// The summary metadata key of a ref's rollout: this plus the ref.
pub const META_PREFIX: &str = "berth.rollout.";

/// The type of an OSTree summary.
const SUMMARY_TYPE: &str = "(a(s(taya{sv}))a{sv})";

/// A document and its signatures, as published.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignedDoc {
    /// The document's bytes (JSON).
    pub doc: Vec<u8>,
    /// GPG signatures over `doc`, a serialized `a{sv}`.
    pub signatures: Vec<u8>,
}

/// What a summary says that updates need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Each ref and the commit it points at.
    pub refs: BTreeMap<String, String>,
    /// Each ref's rollout document, as found (not yet verified).
    pub rollouts: BTreeMap<String, SignedDoc>,
}

/// Reads a summary file's refs and rollout documents. Malformed input
/// gives what GLib makes of it (empty values), never a crash: the bytes
/// come from the network.
pub fn parse_summary(bytes: &[u8]) -> Summary {
    let ty = glib::VariantTy::new(SUMMARY_TYPE).expect("a valid type string");
    let v = glib::Variant::from_data_with_type(bytes, ty);
    let mut summary = Summary::default();
    let refs = v.child_value(0);
    for i in 0..refs.n_children() {
        let entry = refs.child_value(i);
        let Some(name) = entry.child_value(0).str().map(String::from) else {
            continue;
        };
        let csum = entry.child_value(1).child_value(1);
        let Some(bytes) = csum.fixed_array::<u8>().ok().filter(|b| b.len() == 32) else {
            continue;
        };
        summary.refs.insert(name, hex(bytes));
    }
    let meta = glib::VariantDict::new(Some(&v.child_value(1)));
    let doc_ty = glib::VariantTy::new("(ayay)").expect("a valid type string");
    for key in metadata_keys(&v.child_value(1)) {
        let Some(r) = key.strip_prefix(META_PREFIX) else {
            continue;
        };
        if let Some(value) = meta.lookup_value(&key, Some(doc_ty)) {
            let (doc, signatures): (Vec<u8>, Vec<u8>) = value.get().unwrap_or_default();
            summary
                .rollouts
                .insert(r.to_string(), SignedDoc { doc, signatures });
        }
    }
    summary
}

fn metadata_keys(dict: &glib::Variant) -> Vec<String> {
    (0..dict.n_children())
        .filter_map(|i| dict.child_value(i).child_value(0).str().map(String::from))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The additional summary metadata (`a{sv}`) that publishes `rollouts`
/// (ref → document), for `ostree_repo_regenerate_summary`.
pub fn metadata(rollouts: &BTreeMap<String, SignedDoc>) -> glib::Variant {
    let dict = glib::VariantDict::new(None);
    for (r, d) in rollouts {
        dict.insert_value(
            &format!("{META_PREFIX}{r}"),
            &(d.doc.clone(), d.signatures.clone()).to_variant(),
        );
    }
    dict.end()
}

/// Reads the summary file of the repository at `repo` (none yet: empty).
pub fn read_repo_summary(repo: &std::path::Path) -> Result<Summary, SysrootError> {
    match std::fs::read(repo.join("summary")) {
        Ok(bytes) => Ok(parse_summary(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Summary::default()),
        Err(e) => Err(SysrootError::io(
            format!("reading {}/summary", repo.display()),
            e,
        )),
    }
}

/// Signs `doc` with the GPG keys `key_ids` of the GnuPG home `homedir`.
pub fn sign(
    repo: &ostree::Repo,
    doc: &[u8],
    key_ids: &[&str],
    homedir: &str,
) -> Result<SignedDoc, SysrootError> {
    let sigs = repo
        .gpg_sign_data(
            &glib::Bytes::from(doc),
            None,
            key_ids,
            Some(homedir),
            gio::Cancellable::NONE,
        )
        .map_err(|e| SysrootError::ostree("signing the rollout document", e))?;
    Ok(SignedDoc {
        doc: doc.to_vec(),
        signatures: sigs.to_vec(),
    })
}

/// Checks that `doc` carries a valid signature by a key that remote
/// `remote` of `repo` trusts (its `gpgkeypath` or imported keys).
pub fn verify(repo: &ostree::Repo, remote: &str, doc: &SignedDoc) -> Result<(), SysrootError> {
    let result = repo
        .verify_summary(
            remote,
            &glib::Bytes::from(doc.doc.as_slice()),
            &glib::Bytes::from(doc.signatures.as_slice()),
            gio::Cancellable::NONE,
        )
        .map_err(|e| SysrootError::ostree("checking the rollout document's signature", e))?;
    result
        .require_valid_signature()
        .map_err(|e| SysrootError::ostree("checking the rollout document's signature", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_survive_a_regenerated_summary() {
        let t = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(t.path());
        repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
            .unwrap();
        let mut docs = BTreeMap::new();
        docs.insert(
            "berth/x/x86_64".to_string(),
            SignedDoc {
                doc: b"{\"a\":1}".to_vec(),
                signatures: vec![1, 2, 3],
            },
        );
        repo.regenerate_summary(Some(&metadata(&docs)), gio::Cancellable::NONE)
            .unwrap();
        let s = read_repo_summary(t.path()).unwrap();
        assert_eq!(s.rollouts, docs);
        assert!(s.refs.is_empty());
    }

    #[test]
    fn garbage_is_an_empty_summary() {
        assert_eq!(parse_summary(b"\x01\x02garbage"), Summary::default());
        assert_eq!(parse_summary(b""), Summary::default());
    }
}
