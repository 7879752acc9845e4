//! Applying a set of changes all or nothing, through a journal.
//!
//! berth-init kills `berthctl provision` after 60 s and the power may go at
//! any moment, so a document must leave either the old files or the new
//! ones. The changes (every file's full new contents, computed and checked
//! before this module is called) are written in three steps:
//!
//! 1. the journal (`/var/lib/berth/provision.journal`) is written in state
//!    `staging`, naming every directory to make and every temporary file;
//! 2. the directories are made, and each file's new contents written to a
//!    temporary beside its target and flushed; then the journal switches to
//!    `committed` (an atomic rename): this is the commit point;
//! 3. each temporary is renamed over its target, and the journal removed.
//!
//! The next run finds a left-over journal first: `staging` is rolled back
//! (temporaries and new empty directories removed), `committed` is rolled
//! forward (the temporaries still there renamed). Renames are idempotent,
//! and an appended file's new contents were computed once, so an `append`
//! never lands twice.

use serde::{Deserialize, Serialize};

use super::beneath::{Beneath, PathError, RelPath};

/// The journal, relative to the root.
pub const JOURNAL: &str = berth_hostapi::provisioning::JOURNAL;

/// A file to write: its full new contents, mode and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Where.
    pub path: RelPath,
    /// The whole new contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// uid and gid.
    pub owner: (u32, u32),
}

/// A directory to make (it does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirChange {
    /// Where.
    pub path: RelPath,
    /// Permission bits.
    pub mode: u32,
    /// uid and gid.
    pub owner: (u32, u32),
}

/// Everything one transaction does: directories first (parents before
/// children), then files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Directories to make.
    pub dirs: Vec<DirChange>,
    /// Files to replace or create.
    pub files: Vec<FileChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Staging,
    Committed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    dir: String,
    tmp: String,
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    state: State,
    dirs: Vec<String>,
    files: Vec<Entry>,
}

/// Why a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// A path or file operation failed.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The journal on disk is not one this program wrote.
    #[error("{JOURNAL} is not readable: {0}")]
    Journal(String),
    /// A failure after the commit point: the changes are decided, and the
    /// next run renames what is left.
    #[error("{0} (the changes are committed: the next run completes them)")]
    Unfinished(Box<TxnError>),
    /// A failure made on purpose by a test ([`Faults`]).
    #[error("injected: {0}")]
    Injected(&'static str),
}

/// Failures a test asks for, to prove the journal's promises.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Staging the n-th file (from 0) fails with an I/O error.
    pub fail_staging_at: Option<usize>,
    /// The process "dies" (returns without cleaning up) after this many
    /// renames of the commit.
    pub die_after_renames: Option<usize>,
}

fn tmp_name(name: &str) -> String {
    format!(".{name}.berth-provision")
}

fn journal_path() -> Result<RelPath, PathError> {
    RelPath::parse(&format!("/{JOURNAL}"))
}

fn entries(changes: &Changes) -> Result<Vec<(RelPath, Entry)>, PathError> {
    changes
        .files
        .iter()
        .map(|f| {
            let (Some(dir), Some(name)) = (f.path.parent(), f.path.file_name()) else {
                return Err(PathError::NotRegular(f.path.to_string()));
            };
            Ok((
                dir.clone(),
                Entry {
                    dir: dir.to_string(),
                    tmp: tmp_name(name),
                    name: name.to_string(),
                },
            ))
        })
        .collect()
}

fn write_journal(root: &Beneath, j: &Journal) -> Result<(), TxnError> {
    let path = journal_path()?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(TxnError::Journal("no journal path".into()));
    };
    root.make_dir(&dir, 0o755, (0, 0))?;
    let data = serde_json::to_vec(j).map_err(|e| TxnError::Journal(e.to_string()))?;
    let tmp = tmp_name(name);
    root.stage(&dir, &tmp, &data, 0o600, (0, 0))?;
    root.rename(&dir, &tmp, name)?;
    root.sync_dir(&dir)?;
    Ok(())
}

fn remove_journal(root: &Beneath) -> Result<(), TxnError> {
    let path = journal_path()?;
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        root.remove(&dir, name)?;
        root.sync_dir(&dir)?;
    }
    Ok(())
}

/// Applies `changes` all or nothing (see the module doc).
pub fn apply(root: &Beneath, changes: &Changes) -> Result<(), TxnError> {
    apply_with(root, changes, Faults::default())
}

/// [`apply`], failing where `faults` says.
pub fn apply_with(root: &Beneath, changes: &Changes, faults: Faults) -> Result<(), TxnError> {
    let files = entries(changes)?;
    let mut journal = Journal {
        state: State::Staging,
        dirs: changes.dirs.iter().map(|d| d.path.to_string()).collect(),
        files: files.iter().map(|(_, e)| e.clone()).collect(),
    };
    write_journal(root, &journal)?;
    if let Err(e) = stage(root, changes, &files, faults) {
        // Undo now; if that fails too, the journal makes the next run do it.
        let _ = rollback(root, &journal);
        return Err(e);
    }
    journal.state = State::Committed;
    write_journal(root, &journal)?;
    roll_forward(root, &journal, faults.die_after_renames)
        .and_then(|()| remove_journal(root))
        .map_err(|e| TxnError::Unfinished(Box::new(e)))
}

fn stage(
    root: &Beneath,
    changes: &Changes,
    files: &[(RelPath, Entry)],
    faults: Faults,
) -> Result<(), TxnError> {
    for d in &changes.dirs {
        root.make_dir(&d.path, d.mode, d.owner)?;
    }
    for (i, (f, (dir, e))) in changes.files.iter().zip(files).enumerate() {
        if faults.fail_staging_at == Some(i) {
            return Err(PathError::Io {
                action: "writing",
                path: dir.join(&e.tmp).to_string(),
                errno: rustix::io::Errno::IO,
            }
            .into());
        }
        root.stage(dir, &e.tmp, &f.data, f.mode, f.owner)?;
    }
    let mut synced: Vec<&RelPath> = Vec::new();
    for (dir, _) in files {
        if !synced.contains(&dir) {
            root.sync_dir(dir)?;
            synced.push(dir);
        }
    }
    Ok(())
}

/// Removes the temporaries, then the journal, then the directories made
/// (the journal's own among them, once it is gone): the old state.
fn rollback(root: &Beneath, j: &Journal) -> Result<(), TxnError> {
    for e in &j.files {
        let dir = RelPath::parse(&e.dir)?;
        root.remove(&dir, &e.tmp)?;
    }
    remove_journal(root)?;
    for d in j.dirs.iter().rev() {
        root.remove_empty_dir(&RelPath::parse(d)?)?;
    }
    Ok(())
}

fn roll_forward(root: &Beneath, j: &Journal, die_after: Option<usize>) -> Result<(), TxnError> {
    let mut dirs: Vec<RelPath> = Vec::new();
    for (i, e) in j.files.iter().enumerate() {
        if die_after == Some(i) {
            return Err(TxnError::Injected("died during the renames"));
        }
        let dir = RelPath::parse(&e.dir)?;
        root.rename(&dir, &e.tmp, &e.name)?;
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for d in &dirs {
        root.sync_dir(d)?;
    }
    Ok(())
}

/// Finishes what an interrupted run left: rolls a `staging` journal
/// back, a `committed` one forward. Returns what it did, if anything.
pub fn recover(root: &Beneath) -> Result<Option<&'static str>, TxnError> {
    let Some((data, _)) = root.read(&journal_path()?)? else {
        return Ok(None);
    };
    let j: Journal = serde_json::from_slice(&data).map_err(|e| TxnError::Journal(e.to_string()))?;
    match j.state {
        State::Staging => {
            rollback(root, &j)?;
            Ok(Some("rolled back an interrupted run"))
        }
        State::Committed => {
            roll_forward(root, &j, None)?;
            remove_journal(root)?;
            Ok(Some("completed an interrupted run"))
        }
    }
}
