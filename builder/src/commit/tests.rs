//! Commits and publishing against real libostree repositories, and what a
//! host's pull (the remote and pull options `berthctl upgrade` uses)
//! makes of what was published: signed, bound to its ref, newer than
//! what runs.

use std::path::{Path, PathBuf};

use super::*;
use crate::signing;
use berth_sysroot::remote;

pub(crate) const REF: &str = "berth/test/x86_64";

/// Serialises these tests within one test process (`cargo test` runs
/// tests as threads; nextest as processes): libostree signs and verifies
/// through gpgme, whose first use is not thread-safe.
pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test repository and its inputs (the rollout tests use it too).
pub(crate) struct Fixture {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    base: PathBuf,
    overlay: PathBuf,
    pub(crate) repo: PathBuf,
    roots: PathBuf,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("base/usr/lib")).unwrap();
        std::fs::write(root.join("base/usr/lib/libx.so"), "base").unwrap();
        std::fs::create_dir_all(root.join("overlay/usr/lib")).unwrap();
        Fixture {
            base: root.join("base"),
            overlay: root.join("overlay"),
            repo: root.join("repo"),
            roots: root.join("roots.json"),
            root,
            _dir: dir,
            _serial: serial,
        }
    }

    fn spec<'a>(&'a self, ostree_ref: &'a str, version: &'a str) -> CommitSpec<'a> {
        CommitSpec {
            repo: &self.repo,
            ostree_ref,
            base: CachedTree {
                dir: &self.base,
                roots: &self.roots,
            },
            containers: &[],
            overlay: &self.overlay,
            version,
            subject: "test",
            // The same time for every build, as with SOURCE_DATE_EPOCH.
            timestamp: 1_700_000_000,
            id_files: &[],
        }
    }

    /// Commits `version` (its os-release says so) under `ostree_ref`.
    fn commit(&self, ostree_ref: &str, version: &str) -> CommitResult {
        std::fs::write(
            self.overlay.join("usr/lib/os-release"),
            format!("VERSION_ID={version}\n"),
        )
        .unwrap();
        commit(&self.spec(ostree_ref, version)).unwrap()
    }

    /// Commits, signs and publishes, as a build does.
    pub(crate) fn build(
        &self,
        ostree_ref: &str,
        version: &str,
        signer: Option<&Signer>,
    ) -> CommitResult {
        let c = self.commit(ostree_ref, version);
        if let Some(s) = signer {
            sign(&self.repo, &c, s).unwrap();
        }
        publish(&self.repo, ostree_ref, &c, signer).unwrap();
        c
    }

    pub(crate) fn repo(&self) -> ostree::Repo {
        open_or_create(&self.repo).unwrap()
    }

    /// What the server side changes by hand: points `REF` at `commit` and
    /// writes the summary, signed by `signer` or not.
    fn point_ref(&self, commit: &str, signer: Option<&Signer>) {
        let repo = self.repo();
        let none = gio::Cancellable::NONE;
        repo.set_ref_immediate(None, REF, Some(commit), none)
            .unwrap();
        repo.regenerate_summary(None, none).unwrap();
        if let Some(s) = signer {
            s.sign_summary(&repo).unwrap();
        }
    }
}

fn head(repo: &ostree::Repo, rev: &str) -> Option<String> {
    repo.resolve_rev(rev, true).unwrap().map(|s| s.to_string())
}

#[test]
fn an_unchanged_build_keeps_the_commit_and_a_change_makes_a_child() {
    let f = Fixture::new();
    let first = f.build(REF, "1", None);
    assert!(!first.unchanged && first.parent.is_none());

    let again = f.commit(REF, "1");
    assert!(again.unchanged, "{again:?}");
    assert_eq!(again.checksum, first.checksum);
    assert!(!publish(&f.repo, REF, &again, None).unwrap().delta);

    let changed = f.commit(REF, "2");
    assert!(!changed.unchanged);
    assert!(publish(&f.repo, REF, &changed, None).unwrap().delta);
    assert_eq!(changed.parent.as_deref(), Some(first.checksum.as_str()));

    // The same tree under another version is a new commit too.
    std::fs::write(f.overlay.join("usr/lib/os-release"), "VERSION_ID=2\n").unwrap();
    let renamed = commit(&f.spec(REF, "2.1")).unwrap();
    assert!(!renamed.unchanged);
    publish(&f.repo, REF, &renamed, None).unwrap();
    assert_eq!(renamed.parent.as_deref(), Some(changed.checksum.as_str()));
    // And building it again keeps it, naming its own parent.
    let kept = commit(&f.spec(REF, "2.1")).unwrap();
    assert!(kept.unchanged);
    assert_eq!(kept.checksum, renamed.checksum);
    assert_eq!(kept.parent.as_deref(), Some(changed.checksum.as_str()));
}

/// `path` in `commit`'s tree, as `ostree cat` prints it.
fn cat(repo: &Path, commit: &str, path: &str) -> String {
    let out = std::process::Command::new("ostree")
        .arg("cat")
        .arg(format!("--repo={}", repo.display()))
        .args([commit, path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_rebuild_that_differs_only_in_its_tree_id_keeps_the_commit() {
    let f = Fixture::new();
    let ids = [
        "/usr/lib/berth/tree-id".to_string(),
        "/usr/lib/k/stamp".to_string(),
    ];
    let write = |path: &str, text: &str| {
        let p = f.overlay.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("usr/lib/os-release", "VERSION_ID=1\n");
    write("usr/lib/berth/tree-id", "aaaa\n");
    write("usr/lib/k/stamp", "stamp aaaa");
    let spec = CommitSpec {
        id_files: &ids,
        ..f.spec(REF, "1")
    };
    let first = commit(&spec).unwrap();
    publish(&f.repo, REF, &first, None).unwrap();

    // The same inputs built again: only the id and a stamp beside it
    // differ. The parent stays, with its own id.
    write("usr/lib/berth/tree-id", "bbbb\n");
    write("usr/lib/k/stamp", "stamp bbbb");
    let again = commit(&spec).unwrap();
    assert!(again.unchanged, "{again:?}");
    assert_eq!(again.checksum, first.checksum);
    assert_eq!(
        cat(&f.repo, &first.checksum, "/usr/lib/berth/tree-id"),
        "aaaa\n"
    );

    // A real change beside the new id: a child, which carries the new id
    // (the comparison put it back).
    write("usr/lib/libnew.so", "new");
    let child = commit(&spec).unwrap();
    assert!(!child.unchanged);
    assert_eq!(child.parent.as_deref(), Some(first.checksum.as_str()));
    assert_eq!(
        cat(&f.repo, &child.checksum, "/usr/lib/berth/tree-id"),
        "bbbb\n"
    );
    assert_eq!(
        cat(&f.repo, &child.checksum, "/usr/lib/k/stamp"),
        "stamp bbbb"
    );
    publish(&f.repo, REF, &child, None).unwrap();

    // A new version with the same files is new, id or not.
    write("usr/lib/berth/tree-id", "cccc\n");
    let newer = commit(&CommitSpec {
        id_files: &ids,
        ..f.spec(REF, "2")
    })
    .unwrap();
    assert!(!newer.unchanged);
    // And without id files, a new id alone is a change.
    let plain = commit(&f.spec(REF, "1")).unwrap();
    assert!(!plain.unchanged);
    // A parent without one of the files is not the same tree.
    drop(f);
    let f = Fixture::new();
    write_in(&f.overlay, "usr/lib/berth/tree-id", "aaaa\n");
    let first = f.build(REF, "1", None);
    write_in(&f.overlay, "usr/lib/berth/tree-id", "bbbb\n");
    write_in(&f.overlay, "usr/lib/k/stamp", "image");
    let spec = CommitSpec {
        id_files: &ids,
        ..f.spec(REF, "1")
    };
    let next = commit(&spec).unwrap();
    assert!(!next.unchanged);
    assert_eq!(next.parent.as_deref(), Some(first.checksum.as_str()));
}

fn write_in(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_commit_is_bound_to_its_ref_and_newer_than_its_parent() {
    let f = Fixture::new();
    let v1 = f.build(REF, "1", None);
    let v2 = f.build(REF, "2", None);
    // Both builds had the same timestamp; the second commit is later.
    assert_eq!((v1.timestamp, v1.bumped), (1_700_000_000, false));
    assert_eq!((v2.timestamp, v2.bumped), (1_700_000_001, true));
    let (commit, _) = f.repo().load_commit(&v2.checksum).unwrap();
    assert_eq!(ostree::commit_get_timestamp(&commit), 1_700_000_001);
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    assert_eq!(
        meta.lookup::<Vec<String>>(remote::REF_BINDING).unwrap(),
        Some(vec![REF.to_string()])
    );
    assert_eq!(
        commit_time(1_700_000_005, Some(1_700_000_001)),
        (1_700_000_005, false)
    );
    assert_eq!(commit_time(5, None), (5, false));
}

#[test]
fn a_commit_is_invisible_until_published() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let v1 = f.build(REF, "1", Some(&signer));
    let summary = std::fs::read(f.repo.join("summary")).unwrap();
    let sig = std::fs::read(f.repo.join("summary.sig")).unwrap();

    let v2 = f.commit(REF, "2");
    sign(&f.repo, &v2, &signer).unwrap();
    let repo = f.repo();
    assert!(repo.load_commit(&v2.checksum).is_ok());
    // Signed (the image carries the signature), but no delta, and the ref
    // and the summary as they were.
    assert!(
        repo.read_commit_detached_metadata(&v2.checksum, gio::Cancellable::NONE)
            .unwrap()
            .is_some()
    );
    assert!(
        !f.repo.join("deltas").exists()
            || std::fs::read_dir(f.repo.join("deltas"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(head(&repo, REF).as_deref(), Some(v1.checksum.as_str()));
    assert_eq!(std::fs::read(f.repo.join("summary")).unwrap(), summary);
    assert_eq!(std::fs::read(f.repo.join("summary.sig")).unwrap(), sig);

    let published = publish(&f.repo, REF, &v2, Some(&signer)).unwrap();
    assert!(published.delta);
    assert_eq!(published.signed_by, signer.key_ids());
    assert_eq!(head(&f.repo(), REF).as_deref(), Some(v2.checksum.as_str()));
    assert_ne!(std::fs::read(f.repo.join("summary")).unwrap(), summary);
}

/// A host's repository with the remote `name` trusting the keys in `key`
/// (a file), as the first install writes it.
pub(crate) fn host_remote(f: &Fixture, host: &ostree::Repo, name: &str, key: &[u8]) {
    let path = f.root.join(format!("{name}.asc"));
    std::fs::write(&path, key).unwrap();
    let url = format!("file://{}", f.repo.display());
    remote::add(host, name, &url, Some(path.to_str().unwrap())).unwrap();
}

pub(crate) fn host(f: &Fixture) -> ostree::Repo {
    let path = f.root.join("host");
    std::fs::create_dir_all(&path).unwrap();
    let repo = ostree::Repo::new_for_path(&path);
    repo.create(ostree::RepoMode::BareUser, gio::Cancellable::NONE)
        .unwrap();
    repo
}

/// Pulls `commit` into the host's repository, as the first install does.
fn host_has(host: &ostree::Repo, name: &str, commit: &str) {
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &[commit].to_variant());
    host.pull_with_options(name, &opts.end(), None, gio::Cancellable::NONE)
        .unwrap();
}

/// `berthctl upgrade`'s pull of `REF` from `remote` on a host that booted
/// `booted`.
fn pull(
    host: &ostree::Repo,
    name: &str,
    booted: &str,
    allow_downgrade: bool,
) -> Result<String, String> {
    let opts = remote::Pull {
        branch: REF,
        booted,
        allow_downgrade,
        commit_only: false,
        commit: None,
    };
    host.pull_with_options(name, &opts.options(), None, gio::Cancellable::NONE)
        .map_err(|e| e.to_string())?;
    Ok(head(host, &format!("{name}:{REF}")).unwrap_or_default())
}

#[test]
fn a_host_refuses_downgrades_other_refs_and_unsigned_summaries() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let host = host(&f);
    host_remote(&f, &host, "berth", signer.public_key());
    let v1 = f.build(REF, "1", Some(&signer));
    let v2 = f.build(REF, "2", Some(&signer));
    // The host was installed with v1 (timestamp-check-from-rev reads the
    // booted commit from the host's own repository).
    host_has(&host, "berth", &v1.checksum);
    assert_eq!(
        pull(&host, "berth", &v1.checksum, false),
        Ok(v2.checksum.clone())
    );
    let booted = v2.checksum.as_str();

    // The ref moved back to the signed v1, with a signed summary.
    f.point_ref(&v1.checksum, Some(&signer));
    let e = pull(&host, "berth", booted, false).unwrap_err();
    assert!(e.contains("chronologically older"), "{e}");
    assert_eq!(
        head(&host, &format!("berth:{REF}")).as_deref(),
        Some(booted)
    );
    // Asked for, the way back is open.
    assert_eq!(pull(&host, "berth", booted, true), Ok(v1.checksum.clone()));
    f.point_ref(booted, Some(&signer));
    assert_eq!(pull(&host, "berth", booted, false), Ok(booted.to_string()));

    // The ref points at a newer commit of another image, same key.
    let other = f.build("berth/other/x86_64", "9", Some(&signer));
    f.point_ref(&other.checksum, Some(&signer));
    let e = pull(&host, "berth", booted, true).unwrap_err();
    assert!(e.contains("ref binding"), "{e}");
    assert_eq!(
        head(&host, &format!("berth:{REF}")).as_deref(),
        Some(booted)
    );

    // A newer commit of this ref, but the summary is not signed.
    let v3 = f.build(REF, "3", None);
    assert!(!f.repo.join("summary.sig").exists());
    let e = pull(&host, "berth", booted, false).unwrap_err();
    assert!(e.contains("summary.sig"), "{e}");
    // Its summary signed, the unsigned commit itself is still refused.
    f.point_ref(&v3.checksum, Some(&signer));
    let e = pull(&host, "berth", booted, false).unwrap_err();
    assert!(e.to_lowercase().contains("signature"), "{e}");
    assert_eq!(
        head(&host, &format!("berth:{REF}")).as_deref(),
        Some(booted)
    );
}

/// Runs gpg on the repository's GnuPG home as docs/upgrades.md's key
/// rotation does, and stops the agent it started.
fn gpg(f: &Fixture, args: &[&str]) {
    let home = f.root.join("repo.signing/gnupg");
    {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::process::Command::new("gpgconf")
        .arg("--homedir")
        .arg(&home)
        .args(["--kill", "gpg-agent"])
        .status();
}

#[test]
fn a_rotated_key_signs_beside_the_old_one_until_hosts_carry_it() {
    let f = Fixture::new();
    let old = signing::repository_key(&f.repo).unwrap();
    let host = host(&f);
    // A host of a version that carries only the old key.
    host_remote(&f, &host, "old", old.public_key());
    let v1 = f.build(REF, "1", Some(&old));
    host_has(&host, "old", &v1.checksum);

    gpg(
        &f,
        &[
            "--quick-gen-key",
            "Berth update signing key 2",
            "ed25519",
            "sign",
            "never",
        ],
    );
    let both = signing::repository_key(&f.repo).unwrap();
    assert_eq!(both.key_ids().len(), 2, "{:?}", both.key_ids());
    assert!(both.key_ids().contains(&old.key_ids()[0]));
    // A host of the version that carries both keys.
    host_remote(&f, &host, "both", both.public_key());
    let v2 = f.build(REF, "2", Some(&both));
    assert_eq!(
        pull(&host, "old", &v1.checksum, false),
        Ok(v2.checksum.clone())
    );
    assert_eq!(
        pull(&host, "both", &v1.checksum, false),
        Ok(v2.checksum.clone())
    );

    // The old key retired: only the new one signs. Hosts that carry the
    // new key take it; hosts still on the old key alone cannot.
    gpg(
        &f,
        &["--yes", "--delete-secret-and-public-key", &old.key_ids()[0]],
    );
    let new = signing::repository_key(&f.repo).unwrap();
    assert_eq!(new.key_ids().len(), 1);
    assert_ne!(new.key_ids()[0], old.key_ids()[0]);
    let v3 = f.build(REF, "3", Some(&new));
    assert_eq!(
        pull(&host, "both", &v2.checksum, false),
        Ok(v3.checksum.clone())
    );
    let e = pull(&host, "old", &v2.checksum, false).unwrap_err();
    assert!(
        e.contains("public key not found") || e.to_lowercase().contains("signature"),
        "{e}"
    );
}

#[test]
fn the_same_commit_gets_the_same_signature() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let v1 = f.commit(REF, "1");
    let signature = || {
        f.repo()
            .read_commit_detached_metadata(&v1.checksum, gio::Cancellable::NONE)
            .unwrap()
            .unwrap()
            .data_as_bytes()
            .to_vec()
    };
    sign(&f.repo, &v1, &signer).unwrap();
    let first = signature();
    // A second apart: a signature dated "now" would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sign(&f.repo, &v1, &signer).unwrap();
    assert_eq!(signature(), first);
    // Hosts accept such signatures: the pulls in the tests above.
}

#[test]
fn publishing_keeps_other_refs_rollouts_and_drops_its_own() {
    use crate::rollout::{Action, RolloutOpts, Start, apply};
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let other = "berth/other/x86_64";
    f.build(REF, "1", Some(&signer));
    f.build(other, "1", Some(&signer));
    for r in [REF, other] {
        let opts = RolloutOpts {
            repo: f.repo.clone(),
            ostree_ref: r.to_string(),
            action: Some(Action::Start(Start {
                start: Some(1000),
                duration_secs: 100,
                start_fraction: 0.1,
            })),
            json: false,
        };
        apply(&opts, 1000).unwrap();
    }
    let docs = || {
        berth_sysroot::rollout::read_repo_summary(&f.repo)
            .unwrap()
            .rollouts
    };
    let before = docs();
    assert_eq!(before.len(), 2);

    // A new commit of the other ref: REF's document stays, byte for byte
    // (signatures too); the other ref's new commit has none.
    let v2 = f.build(other, "2", Some(&signer));
    let after = docs();
    assert_eq!(after.get(REF), before.get(REF));
    assert_eq!(after.get(other), None);
    let s = berth_sysroot::rollout::read_repo_summary(&f.repo).unwrap();
    assert_eq!(s.refs.get(other), Some(&v2.checksum));

    // A new commit of REF itself drops its document: available to all.
    f.build(REF, "2", Some(&signer));
    assert!(docs().is_empty(), "{:?}", docs().keys());
    // And the summary is signed as before.
    assert!(f.repo.join("summary.sig").exists());
}
