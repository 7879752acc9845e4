//! Who signs what `berth build` publishes, and which public keys the image
//! carries for its host to check updates with.
//!
//! By default the repository's own key: a GnuPG home that the first build
//! into a repository creates **beside** it (`<repo>.signing/`, never inside:
//! `berth serve` publishes the repository directory, and a secret key in
//! it would be published with it), reused by every later build into the
//! same repository. A manifest can name a key kept elsewhere instead, or
//! turn signing off (`[update] verify = false`). docs/upgrades.md says how
//! to back the key up and rotate it.
//!
//! GnuPG does the cryptography (libostree 2022.7 verifies with gpgme, so
//! GPG is the mechanism); this module only runs `gpg` and hands libostree
//! the home directory.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use berth_sysroot::rollout::SignedDoc;
use ostree::gio;

use crate::command;
use crate::manifest::{Manifest, ManifestKey, UpdateTrust};

/// What a repository's key directory is called: `<repo>` plus this.
pub const KEY_DIR_SUFFIX: &str = ".signing";
/// The GnuPG home inside a key directory.
pub const GNUPG_DIR: &str = "gnupg";
/// The exported public keys inside a key directory (what images carry).
pub const PUBLIC_KEY_FILE: &str = "update-key.asc";
/// What a GnuPG home holds that signing needs (the rest is scratch).
const KEYRING_FILES: [&str; 4] = [
    "pubring.kbx",
    "pubring.gpg",
    "trustdb.gpg",
    "private-keys-v1.d",
];

/// Where a signing key came from, for the build summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The repository had no key: this build made one in this directory.
    Created(PathBuf),
    /// The repository's key, made by an earlier build, in this directory.
    Reused(PathBuf),
    /// `[update] gpg-homedir`, this directory.
    Manifest(PathBuf),
}

/// The key a build signs its commit and summary with.
#[derive(Debug, Clone)]
pub struct Signer {
    homedir: PathBuf,
    key_ids: Vec<String>,
    /// The newest creation time of the signing keys (unix seconds).
    keys_created: u64,
    public_key: Vec<u8>,
    /// Where the key came from.
    pub origin: KeyOrigin,
    /// Whether the home is the repository's own: then berth runs its own
    /// gpg-agent on it for each operation (see [`Session`]) and dates
    /// commit signatures deterministically.
    own: bool,
}

/// The key directory of the repository at `repo`: its sibling
/// `<repo>.signing`, so it travels with the repository when both are
/// copied, but is outside what is served.
pub fn key_dir(repo: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(repo)
        .with_context(|| format!("resolving the repository path {}", repo.display()))?;
    // `..` or `/`: no name of its own; the real directory's name then.
    let abs = match abs.file_name() {
        Some(_) => abs,
        None => abs
            .canonicalize()
            .with_context(|| format!("resolving {}", repo.display()))?,
    };
    let name = abs
        .file_name()
        .with_context(|| format!("the repository {} has no directory name", repo.display()))?;
    let mut dir_name = name.to_os_string();
    dir_name.push(KEY_DIR_SUFFIX);
    Ok(abs.with_file_name(dir_name))
}

/// The signer for a build of `m` into the repository at `repo`: `None`
/// with `verify = false`; the manifest's key; else the repository's own
/// key, created now if the repository has none.
pub fn prepare(m: &Manifest, repo: &Path) -> anyhow::Result<Option<Signer>> {
    match m.trust() {
        UpdateTrust::Off(_) => Ok(None),
        UpdateTrust::Manifest(k) => manifest_key(m, &k).map(Some),
        UpdateTrust::RepositoryKey => repository_key(repo).map(Some),
    }
}

/// Checks the manifest's key before anything is built: the public key
/// file is an armored key and the GnuPG home holds the secret key.
fn manifest_key(m: &Manifest, k: &ManifestKey) -> anyhow::Result<Signer> {
    let public_path = m.base_dir().join(&k.public.value);
    let public_key = std::fs::read(&public_path).map_err(|e| {
        m.error_at(
            &k.public.key,
            &k.public.span,
            format!("cannot read {}: {e}", public_path.display()),
        )
    })?;
    if !public_key.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        return Err(m
            .error_at(
                &k.public.key,
                &k.public.span,
                format!(
                    "{} is not an ASCII-armored public key",
                    public_path.display()
                ),
            )
            .into());
    }
    let homedir = m.base_dir().join(&k.homedir.value);
    if !homedir.is_dir() {
        return Err(m
            .error_at(
                &k.homedir.key,
                &k.homedir.span,
                format!("{} is not a directory", homedir.display()),
            )
            .into());
    }
    let id = k.key_id.value.trim_start_matches("0x").to_ascii_uppercase();
    let keys = secret_signing_keys(&homedir)?;
    if !keys.iter().any(|(fpr, _)| fpr.ends_with(&id)) {
        return Err(m
            .error_at(
                &k.key_id.key,
                &k.key_id.span,
                format!(
                    "{} holds no usable secret signing key {}",
                    homedir.display(),
                    k.key_id.value
                ),
            )
            .into());
    }
    Ok(Signer {
        origin: KeyOrigin::Manifest(homedir.clone()),
        homedir,
        key_ids: vec![k.key_id.value.clone()],
        keys_created: 0,
        public_key,
        own: false,
    })
}

/// The repository's own key, made on the first build into it. Every
/// secret key in its GnuPG home signs, and every public key in it goes
/// into the image: adding a key there is how it is rotated.
pub fn repository_key(repo: &Path) -> anyhow::Result<Signer> {
    let dir = key_dir(repo)?;
    let created = ensure_key_dir(&dir)?;
    let homedir = dir.join(GNUPG_DIR);
    // Listing secret keys starts an agent: in a session, stopped after.
    let keys = secret_signing_keys(&Session::mirror(&homedir, None)?.home)?;
    if keys.is_empty() {
        anyhow::bail!(
            "{} holds no usable secret signing key: restore the key directory from its backup \
             (hosts trust only the keys their version carries)",
            homedir.display()
        );
    }
    let public_key = export_public(&homedir)?;
    let public_path = dir.join(PUBLIC_KEY_FILE);
    if std::fs::read(&public_path).ok().as_deref() != Some(public_key.as_slice()) {
        write_atomic(&public_path, &public_key)?;
    }
    Ok(Signer {
        origin: if created {
            KeyOrigin::Created(dir)
        } else {
            KeyOrigin::Reused(dir)
        },
        homedir,
        keys_created: keys.iter().map(|(_, t)| *t).max().unwrap_or(0),
        key_ids: keys.into_iter().map(|(fpr, _)| fpr).collect(),
        public_key,
        own: true,
    })
}

impl Signer {
    /// The ASCII-armored public keys an image carries to check updates.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Puts the public keys into the OS tree at `root`, where the image's
    /// remote reads them (`gpgkeypath`): a host trusts the keys of the
    /// version it runs.
    pub fn install_public_key(&self, root: &Path) -> anyhow::Result<()> {
        let path = root.join(berth_hostapi::UPDATE_KEY_PATH.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, &self.public_key)
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The ids (fingerprints for the repository key) that sign.
    pub fn key_ids(&self) -> &[String] {
        &self.key_ids
    }

    /// Signs `checksum` with every key. Signatures an earlier, failed
    /// build left on this same (unpublished) commit are replaced, since
    /// libostree refuses to sign twice with one key.
    ///
    /// With the repository's key the signature is dated `timestamp` (the
    /// commit's), or the keys' creation if that is later (a signature may
    /// not predate its key): Ed25519 signatures are deterministic, so the
    /// same commit gets the same signature bytes, and an image, which
    /// carries its commit's signature, stays reproducible.
    pub fn sign_commit(
        &self,
        repo: &ostree::Repo,
        checksum: &str,
        timestamp: u64,
    ) -> anyhow::Result<()> {
        let none = gio::Cancellable::NONE;
        repo.write_commit_detached_metadata(checksum, None, none)
            .with_context(|| format!("clearing old signatures of {checksum}"))?;
        let date = timestamp.max(self.keys_created);
        let session = self.session(Some(&format!("faked-system-time {date}!\n")))?;
        for id in &self.key_ids {
            repo.sign_commit(checksum, id, Some(&session.home_str()), none)
                .with_context(|| format!("signing commit {checksum} with GPG key {id}"))?;
        }
        Ok(())
    }

    /// Signs the repository's summary (as regenerated last) with every
    /// key, dated now.
    pub fn sign_summary(&self, repo: &ostree::Repo) -> anyhow::Result<()> {
        let ids: Vec<&str> = self.key_ids.iter().map(String::as_str).collect();
        let session = self.session(None)?;
        repo.add_gpg_signature_summary(&ids, Some(&session.home_str()), gio::Cancellable::NONE)
            .with_context(|| format!("signing the summary with GPG key(s) {}", ids.join(", ")))
    }

    /// Signs a rollout document with every key, dated now, as hosts
    /// check it (`berth_sysroot::rollout::verify`).
    pub fn sign_rollout(&self, repo: &ostree::Repo, doc: &[u8]) -> anyhow::Result<SignedDoc> {
        let ids: Vec<&str> = self.key_ids.iter().map(String::as_str).collect();
        let session = self.session(None)?;
        berth_sysroot::rollout::sign(repo, doc, &ids, &session.home_str()).with_context(|| {
            format!(
                "signing the rollout document with GPG key(s) {}",
                ids.join(", ")
            )
        })
    }

    /// A session on the key: berth's own for the repository's key; the
    /// manifest's home as it is (its keys may need the user's own agent,
    /// with a passphrase it caches).
    fn session(&self, gpg_conf: Option<&str>) -> anyhow::Result<Session> {
        if self.own {
            Session::mirror(&self.homedir, gpg_conf)
        } else {
            Ok(Session {
                home: self.homedir.clone(),
                _dir: None,
                stop_agent: false,
            })
        }
    }
}

/// Makes the key directory `dir` unless it exists; true when made now.
///
/// The key is made in a temporary sibling and renamed into place: a
/// rename onto an existing, non-empty directory fails, so of two builds
/// racing to make the first key one wins and the other uses its key.
/// No build ever sees a half-made key directory.
fn ensure_key_dir(dir: &Path) -> anyhow::Result<bool> {
    if dir.join(GNUPG_DIR).is_dir() {
        return Ok(false);
    }
    if dir.exists() {
        anyhow::bail!(
            "{} exists but has no {GNUPG_DIR}/ in it: restore the repository's key directory \
             from its backup, or remove it to make a new key",
            dir.display()
        );
    }
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent directory", dir.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".berth-new-key-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary key directory in {}", parent.display()))?;
    private_dir(tmp.path())?;
    let home = tmp.path().join(GNUPG_DIR);
    std::fs::create_dir(&home).with_context(|| format!("creating {}", home.display()))?;
    private_dir(&home)?;
    {
        let session = Session::link(&home)?;
        command::run(
            "making the repository's signing key",
            gpg(&session.home).args([
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Berth update signing key",
                "ed25519",
                "sign",
                "never",
            ]),
        )?;
    }
    let public = export_public(&home)?;
    std::fs::write(tmp.path().join(PUBLIC_KEY_FILE), &public)
        .with_context(|| format!("writing the public key into {}", tmp.path().display()))?;
    let made = tmp.keep();
    match std::fs::rename(&made, dir) {
        Ok(()) => {
            sync_dir(parent);
            Ok(true)
        }
        Err(_) if dir.join(GNUPG_DIR).is_dir() => {
            // Another build made the key first: use that one.
            let _ = std::fs::remove_dir_all(&made);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&made);
            Err(e).with_context(|| format!("moving the new key to {}", dir.display()))
        }
    }
}

/// Fingerprints and creation times of the secret keys in `home` that can
/// sign (not revoked, expired or disabled), from gpg's listing.
fn secret_signing_keys(home: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let listing = command::run_stdout(
        "listing the signing keys",
        gpg(home).args(["--with-colons", "--list-secret-keys"]),
    )?;
    Ok(parse_signing_keys(&listing))
}

/// The usable signing keys of a `--with-colons --list-secret-keys`
/// listing: each `sec` record whose validity is not revoked, expired,
/// disabled or invalid and whose capabilities say it can sign, with its
/// creation time and the `fpr` record that follows it.
fn parse_signing_keys(listing: &str) -> Vec<(String, u64)> {
    let mut keys = Vec::new();
    let mut pending: Option<u64> = None;
    for line in listing.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"sec") => {
                let validity = fields.get(1).copied().unwrap_or("");
                let caps = fields.get(11).copied().unwrap_or("");
                let usable = !["r", "e", "d", "i"].contains(&validity) && caps.contains('S');
                let created = fields.get(5).and_then(|t| t.parse().ok()).unwrap_or(0);
                pending = usable.then_some(created);
            }
            Some(&"fpr") => {
                if let (Some(created), Some(fpr)) =
                    (pending.take(), fields.get(9).filter(|f| !f.is_empty()))
                {
                    keys.push(((*fpr).to_string(), created));
                }
            }
            Some(&"ssb") => pending = None,
            _ => {}
        }
    }
    keys
}

/// Every public key in `home`, ASCII-armored.
fn export_public(home: &Path) -> anyhow::Result<Vec<u8>> {
    let out = command::run(
        "exporting the public signing key",
        gpg(home).args(["--armor", "--export"]),
    )?;
    if !out
        .stdout
        .starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    {
        anyhow::bail!("{} holds no public key to export", home.display());
    }
    Ok(out.stdout)
}

/// `gpg --homedir HOME --batch`, never asking anything.
fn gpg(home: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.arg("--homedir").arg(home).args(["--batch", "--no-tty"]);
    cmd
}

/// Use of a GnuPG home for one operation, with an agent of its own.
///
/// gpg-agent puts its sockets in the home directory (there is no
/// `/run/user/<uid>` for root on a build machine), and a socket path may
/// not be longer than 107 bytes: a repository a few directories deep
/// already makes `S.gpg-agent.browser` too long and the agent does not
/// start. So gpg is pointed at a short private directory under /tmp that
/// stands for the home:
///
/// - [`Session::link`], to make a key: a symlink to the home's parent
///   (libostree opens the home itself without following links; gpg does
///   not resolve the link, so the sockets are named by the short path);
/// - [`Session::mirror`], to use one: a fresh home holding links to the
///   key's keyrings and secret keys, and its own `gpg.conf` (how a signing
///   time is given to the gpg that libostree runs through gpgme). Each
///   build then has its own agent: concurrent builds never share one.
///
/// The agent is stopped afterwards: a build leaves no daemon behind.
struct Session {
    home: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop_agent: bool,
}

impl Session {
    /// A short private directory in /tmp itself, not $TMPDIR: the point
    /// is a short path.
    fn short_dir() -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("berth-gpg-")
            .tempdir_in("/tmp")
            .context("creating a directory for GnuPG's sockets in /tmp")
    }

    /// `home`, reached through a short link to its parent.
    fn link(home: &Path) -> anyhow::Result<Session> {
        let dir = Session::short_dir()?;
        let abs =
            std::path::absolute(home).with_context(|| format!("resolving {}", home.display()))?;
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            anyhow::bail!("{} is not a GnuPG home directory", home.display());
        };
        let link = dir.path().join("k");
        std::os::unix::fs::symlink(parent, &link)
            .with_context(|| format!("linking {} to {}", link.display(), parent.display()))?;
        Ok(Session {
            home: link.join(name),
            _dir: Some(dir),
            stop_agent: true,
        })
    }

    /// A short home holding links to `home`'s keys, and `gpg_conf`.
    fn mirror(home: &Path, gpg_conf: Option<&str>) -> anyhow::Result<Session> {
        let dir = Session::short_dir()?;
        private_dir(dir.path())?;
        let abs =
            std::path::absolute(home).with_context(|| format!("resolving {}", home.display()))?;
        for name in KEYRING_FILES {
            let target = abs.join(name);
            if target.exists() {
                let link = dir.path().join(name);
                std::os::unix::fs::symlink(&target, &link).with_context(|| {
                    format!("linking {} to {}", link.display(), target.display())
                })?;
            }
        }
        if let Some(conf) = gpg_conf {
            let path = dir.path().join("gpg.conf");
            std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Session {
            home: dir.path().to_path_buf(),
            _dir: Some(dir),
            stop_agent: true,
        })
    }

    fn home_str(&self) -> String {
        self.home.to_string_lossy().into_owned()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.stop_agent {
            // Best effort: with no agent running there is nothing to stop.
            let _ = command::run(
                "stopping gpg-agent",
                Command::new("gpgconf")
                    .arg("--homedir")
                    .arg(&self.home)
                    .args(["--kill", "gpg-agent"]),
            );
        }
    }
}

/// Makes `dir` readable by its owner only (GnuPG insists, and it holds
/// a secret key).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Writes `data` to `path` under a temporary name, then renames it
/// (mode 0644: what it writes is published or public).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, data)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests;
