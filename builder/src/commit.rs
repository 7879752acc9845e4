//! The OSTree side of a build, in two steps.
//!
//! [`commit`] writes the base tree and the overlay together into the
//! archive repository as a commit whose parent is the ref's current
//! commit (metadata `version`, and `ostree.ref-binding` naming the ref so
//! that no host takes it under another ref), and [`sign`] signs it (the
//! image carries the signature: `ostree admin status` on a host wants
//! it). Its objects are content-addressed and no host can find them yet:
//! the ref does not move.
//!
//! [`publish`], called only when the disk image is complete, writes the
//! static delta from the parent, moves the ref, and writes and signs the
//! summary (keeping the other refs' rollout documents). So a build that
//! fails offers hosts nothing, and any static HTTP server can serve the
//! repository.

use std::path::Path;

use anyhow::Context;
use ostree::prelude::*;
use ostree::{gio, glib};

use crate::signing::Signer;

/// The ref an image is committed under.
pub fn ostree_ref(name: &str) -> String {
    format!("berth/{name}/x86_64")
}

/// A written commit (not yet published).
#[derive(Debug, Clone)]
pub struct CommitResult {
    /// Its checksum.
    pub checksum: String,
    /// The previous commit of the ref, if any.
    pub parent: Option<String>,
    /// The ref's commit already had this tree and version: it was kept and
    /// nothing was written (no identical "new version" for hosts).
    pub unchanged: bool,
    /// The commit's timestamp: the build's, or one second after the
    /// parent's when the build's is not later.
    pub timestamp: u64,
    /// The build's timestamp was not after the parent's: the commit got
    /// the parent's plus one instead.
    pub bumped: bool,
}

/// What [`publish`] did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Whether a static delta from the parent was written.
    pub delta: bool,
    /// The keys that signed the commit and the summary (none: unsigned).
    pub signed_by: Vec<String>,
}

/// What to commit.
#[derive(Debug, Clone)]
pub struct CommitSpec<'a> {
    /// Archive repository (created when missing).
    pub repo: &'a Path,
    /// Ref to move.
    pub ostree_ref: &'a str,
    /// The cached package tree: committed once per repository, then reused
    /// by its tree checksum.
    pub base: CachedTree<'a>,
    /// Containers' cached root file systems, placed at
    /// `usr/lib/berth/containers/<name>/rootfs`.
    pub containers: &'a [(String, CachedTree<'a>)],
    /// Berth's own files, committed on top of everything (they win).
    pub overlay: &'a Path,
    /// Commit metadata `version`.
    pub version: &'a str,
    /// Commit subject.
    pub subject: &'a str,
    /// Commit timestamp (unix seconds); raised to one second after the
    /// parent's if it is not later, since hosts refuse a commit that is
    /// not newer than the one they run.
    pub timestamp: u64,
    /// Paths in the tree (from its root) of files that may differ from
    /// the parent's without making a new version: the tree id, which
    /// includes the build time, so that a rebuild of the same inputs
    /// keeps the parent (see [`CommitResult::unchanged`]). A signed image
    /// does not belong here: its signature may be by another key.
    pub id_files: &'a [String],
}

/// A directory that does not change between builds (it lives in the
/// cache), with the file remembering its tree checksums per repository.
#[derive(Debug, Clone, Copy)]
pub struct CachedTree<'a> {
    /// The directory.
    pub dir: &'a Path,
    /// Where its tree checksums are remembered.
    pub roots: &'a Path,
}

/// Opens the archive repository at `path`, creating it when missing.
pub fn open_or_create(path: &Path) -> anyhow::Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    if path.join("config").exists() {
        repo.open(gio::Cancellable::NONE)
            .with_context(|| format!("opening the OSTree repository {}", path.display()))?;
    } else {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
            .with_context(|| {
                format!(
                    "creating an archive OSTree repository in {}",
                    path.display()
                )
            })?;
    }
    Ok(repo)
}

/// Writes the commit of `spec`; the ref stays where it is ([`publish`]
/// moves it).
pub fn commit(spec: &CommitSpec) -> anyhow::Result<CommitResult> {
    let none = gio::Cancellable::NONE;
    let repo = open_or_create(spec.repo)?;
    let parent = repo
        .resolve_rev(spec.ostree_ref, true)
        .with_context(|| format!("resolving {}", spec.ostree_ref))?
        .map(|s| s.to_string());

    // One sync before the ref moves instead of one per object; libostree
    // cleans up the staging directory of a build that died midway on the
    // next transaction.
    repo.set_disable_fsync(true);
    repo.prepare_transaction(none)
        .context("starting an OSTree transaction")?;
    // Host security labels of the build machine do not belong in the image.
    let modifier =
        ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::SKIP_XATTRS, None);
    let (contents, meta) = cached_tree(&repo, spec.repo, &spec.base, &modifier)?;
    let mtree = ostree::MutableTree::from_checksum(&repo, &contents, &meta);
    for (name, tree) in spec.containers {
        let (c, m) = cached_tree(&repo, spec.repo, tree, &modifier)?;
        // Directories the base lacks get the root's metadata until the
        // overlay's own directories replace it below. (Not through
        // `metadata_checksum()`: the binding reads the NULL of a new
        // directory as a string and crashes.)
        let path = ["usr", "lib", "berth", "containers", name.as_str(), "rootfs"];
        let dir = mtree
            .ensure_parent_dirs(&path, &meta)
            .with_context(|| format!("adding usr/lib/berth/containers/{name} to the commit"))?;
        let rootfs = dir
            .ensure_dir("rootfs")
            .context("adding a container root to the commit")?;
        if !rootfs.fill_empty_from_dirtree(&repo, &c, &m) {
            anyhow::bail!("the commit already has usr/lib/berth/containers/{name}/rootfs");
        }
    }
    repo.write_directory_to_mtree(
        &gio::File::for_path(spec.overlay),
        &mtree,
        Some(&modifier),
        none,
    )
    .with_context(|| format!("adding {} to the commit", spec.overlay.display()))?;
    let root = repo
        .write_mtree(&mtree, none)
        .context("writing the commit's trees")?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
    let unchanged = match parent.as_deref() {
        Some(p) if same_tree_and_version(&repo, p, &root, spec.version) => Some(p),
        Some(p) if same_but_for_the_id(&repo, &mtree, p, spec.id_files, spec.version)? => Some(p),
        _ => None,
    };
    if let Some(parent) = unchanged {
        repo.abort_transaction(none)
            .context("ending the OSTree transaction")?;
        let (grandparent, timestamp) = repo
            .load_commit(parent)
            .ok()
            .map(|(commit, _)| {
                (
                    ostree::commit_get_parent(&commit).map(|s| s.to_string()),
                    ostree::commit_get_timestamp(&commit),
                )
            })
            .unwrap_or((None, spec.timestamp));
        return Ok(CommitResult {
            checksum: parent.to_string(),
            parent: grandparent,
            unchanged: true,
            timestamp,
            bumped: false,
        });
    }
    let parent_time = match &parent {
        Some(p) => Some(
            repo.load_commit(p)
                .map(|(commit, _)| ostree::commit_get_timestamp(&commit))
                .with_context(|| format!("reading the parent commit {p}"))?,
        ),
        None => None,
    };
    let (timestamp, bumped) = commit_time(spec.timestamp, parent_time);
    let meta = glib::VariantDict::new(None);
    meta.insert_value("version", &spec.version.to_variant());
    meta.insert_value("ostree.bootable", &true.to_variant());
    // As `ostree commit --bind-ref` writes it: a host pulling ref R
    // refuses a commit whose binding does not list R.
    meta.insert_value(
        berth_sysroot::remote::REF_BINDING,
        &vec![spec.ostree_ref].to_variant(),
    );
    let checksum = repo
        .write_commit_with_time(
            parent.as_deref(),
            Some(spec.subject),
            None,
            Some(&meta.end()),
            &root,
            timestamp,
            none,
        )
        .context("writing the commit")?
        .to_string();
    repo.commit_transaction(none)
        .context("finishing the OSTree transaction")?;
    Ok(CommitResult {
        checksum,
        parent,
        unchanged: false,
        timestamp,
        bumped,
    })
}

/// The timestamp of a new commit: the build's, unless that is not after
/// the parent's (a fixed SOURCE_DATE_EPOCH, a clock set back): then one
/// second after the parent's, so every version is newer than the one
/// before it, as hosts require. Still a function of the inputs and the
/// parent, so reproducible builds stay reproducible.
pub fn commit_time(build: u64, parent: Option<u64>) -> (u64, bool) {
    match parent {
        Some(p) if build <= p => (p.saturating_add(1), true),
        _ => (build, false),
    }
}

/// Signs a new commit with `signer` (an unchanged one is signed already).
pub fn sign(repo_path: &Path, committed: &CommitResult, signer: &Signer) -> anyhow::Result<()> {
    if committed.unchanged {
        return Ok(());
    }
    let repo = open_or_create(repo_path)?;
    signer.sign_commit(&repo, &committed.checksum, committed.timestamp)
}

/// Publishes the signed `committed` under `ostree_ref`: writes the static
/// delta from its parent (it carries the commit's signature, so after
/// [`sign`]), flushes the repository, moves the ref, regenerates the
/// summary with the rollout documents of the other refs and signs it
/// with `signer`. An unchanged commit is already published.
pub fn publish(
    repo_path: &Path,
    ostree_ref: &str,
    committed: &CommitResult,
    signer: Option<&Signer>,
) -> anyhow::Result<Published> {
    if committed.unchanged {
        return Ok(Published::default());
    }
    let none = gio::Cancellable::NONE;
    let repo = open_or_create(repo_path)?;
    let checksum = committed.checksum.as_str();
    let mut delta = false;
    if let Some(parent) = &committed.parent {
        // The parent may be gone (pruned); then hosts fetch objects.
        if repo.load_commit(parent).is_ok() {
            // No bsdiff parts: applying them with Debian 12's libostree
            // (2022.7) on a host's bare repository trips a GLib assertion
            // (g_file_input_stream_query_info on a non-file stream) and the
            // pull never finishes. Changed objects travel whole instead,
            // still compressed. (libostree also reads the parameters
            // without a NULL check, so the dictionary is needed anyway.)
            let params = glib::VariantDict::new(None);
            params.insert_value("bsdiff-enabled", &false.to_variant());
            let params = params.end();
            repo.static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(parent),
                checksum,
                None,
                Some(&params),
                none,
            )
            .with_context(|| format!("writing the static delta {parent} -> {checksum}"))?;
            delta = true;
        }
    }
    // The other refs' rollouts go on. This ref's document is for the
    // commit it pointed at, no longer the newest: it goes, and the new
    // commit is available to every host until `berth rollout` starts a
    // rollout of it (hosts would ignore a document for another commit
    // anyway; dropping it keeps the summary saying what applies).
    let mut rollouts = berth_sysroot::rollout::read_repo_summary(repo_path)?.rollouts;
    rollouts.remove(ostree_ref);
    // Everything the ref will point at is on disk before the ref moves.
    sync_repo(repo_path)?;
    repo.set_ref_immediate(None, ostree_ref, Some(checksum), none)
        .with_context(|| format!("moving {ostree_ref} to {checksum}"))?;
    crate::summary::regenerate(&repo, &rollouts, signer)?;
    sync_repo(repo_path)?;
    Ok(Published {
        delta,
        signed_by: signer.map(|s| s.key_ids().to_vec()).unwrap_or_default(),
    })
}

/// Whether commit `parent` has the same root tree (contents and metadata)
/// as `root` and the same `version`: then a build changed nothing, and a
/// new commit would only offer hosts an identical "upgrade".
fn same_tree_and_version(
    repo: &ostree::Repo,
    parent: &str,
    root: &ostree::RepoFile,
    version: &str,
) -> bool {
    let Ok((file, _)) = repo.read_commit(parent, gio::Cancellable::NONE) else {
        return false;
    };
    let Ok(previous) = file.downcast::<ostree::RepoFile>() else {
        return false;
    };
    if previous.ensure_resolved().is_err() || root.ensure_resolved().is_err() {
        return false;
    }
    let same_tree = previous.tree_get_contents_checksum().is_some()
        && previous.tree_get_contents_checksum() == root.tree_get_contents_checksum()
        && previous.tree_get_metadata_checksum() == root.tree_get_metadata_checksum();
    let previous_version = repo.load_commit(parent).ok().and_then(|(commit, _)| {
        glib::VariantDict::new(Some(&commit.child_value(0)))
            .lookup::<String>("version")
            .ok()
            .flatten()
    });
    same_tree && previous_version.as_deref() == Some(version)
}

/// Whether `mtree` is `parent`'s tree at the same version but for the
/// files in `id_files`: a rebuild of the same inputs, whose only news is
/// a new tree id (it includes the build time). Compares by putting the
/// parent's objects in place of those files, then puts the new ones back.
/// A parent without one of the files is not the same.
fn same_but_for_the_id(
    repo: &ostree::Repo,
    mtree: &ostree::MutableTree,
    parent: &str,
    id_files: &[String],
    version: &str,
) -> anyhow::Result<bool> {
    let none = gio::Cancellable::NONE;
    if id_files.is_empty() {
        return Ok(false);
    }
    let Ok((file, _)) = repo.read_commit(parent, none) else {
        return Ok(false);
    };
    let mut swapped: Vec<(ostree::MutableTree, String, String)> = Vec::new();
    let mut comparable = true;
    for path in id_files {
        let path = path.trim_start_matches('/');
        let old = file.resolve_relative_path(path);
        if old.query_file_type(gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS, none)
            != gio::FileType::Regular
        {
            comparable = false;
            break;
        }
        let Ok(old) = old.downcast::<ostree::RepoFile>() else {
            comparable = false;
            break;
        };
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        // Down by lookup, which loads a directory still held as a
        // checksum (the cached base's); `MutableTree::walk` does not.
        let mut at = Some(mtree.clone());
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            at = at
                .and_then(|d| d.lookup(part).ok())
                .and_then(|(_, sub)| sub);
        }
        let Some(dir) = at else {
            comparable = false;
            break;
        };
        let Ok((Some(new), _)) = dir.lookup(name) else {
            comparable = false;
            break;
        };
        dir.replace_file(name, &old.checksum())
            .context("comparing the tree with its parent's")?;
        swapped.push((dir, name.to_string(), new.to_string()));
    }
    let same = comparable && {
        let root = repo
            .write_mtree(mtree, none)
            .context("writing the commit's trees")?;
        root.downcast::<ostree::RepoFile>()
            .is_ok_and(|r| same_tree_and_version(repo, parent, &r, version))
    };
    for (dir, name, new) in swapped {
        dir.replace_file(&name, &new)
            .context("restoring the tree id after comparing")?;
    }
    Ok(same)
}

/// The tree checksums (contents, metadata) of a cached directory in
/// `repo`. The first build into a repository reads and checksums every file
/// of it; later builds take the checksums remembered in `tree.roots` (when
/// the repository still has those objects), so an unchanged tree costs
/// nothing to commit again.
fn cached_tree(
    repo: &ostree::Repo,
    repo_path: &Path,
    tree: &CachedTree,
    modifier: &ostree::RepoCommitModifier,
) -> anyhow::Result<(String, String)> {
    let none = gio::Cancellable::NONE;
    let repo_key = repo_path
        .canonicalize()
        .unwrap_or_else(|_| repo_path.to_path_buf());
    let repo_key = repo_key.to_string_lossy().into_owned();
    let mut roots: std::collections::BTreeMap<String, (String, String)> =
        std::fs::read_to_string(tree.roots)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    if let Some((contents, meta)) = roots.get(&repo_key) {
        let present = repo
            .has_object(ostree::ObjectType::DirTree, contents, none)
            .unwrap_or(false)
            && repo
                .has_object(ostree::ObjectType::DirMeta, meta, none)
                .unwrap_or(false);
        if present {
            return Ok((contents.clone(), meta.clone()));
        }
    }
    let mtree = ostree::MutableTree::new();
    repo.write_directory_to_mtree(&gio::File::for_path(tree.dir), &mtree, Some(modifier), none)
        .with_context(|| format!("adding {} to the commit", tree.dir.display()))?;
    let root = repo.write_mtree(&mtree, none).context("writing a tree")?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
    root.ensure_resolved().context("resolving a tree")?;
    let (Some(contents), Some(meta)) = (
        root.tree_get_contents_checksum(),
        root.tree_get_metadata_checksum(),
    ) else {
        anyhow::bail!("libostree gave no checksum for {}", tree.dir.display());
    };
    let pair = (contents.to_string(), meta.to_string());
    roots.insert(repo_key, pair.clone());
    // Best effort: without it the next build just checksums the tree again.
    let _ = std::fs::write(
        tree.roots,
        serde_json::to_string_pretty(&roots).unwrap_or_default(),
    );
    Ok(pair)
}

/// Flushes the repository's file system once (fsync was off per object).
pub(crate) fn sync_repo(path: &Path) -> anyhow::Result<()> {
    let dir = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::syncfs(&dir).with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
