//! The deployment by tree id (`berth.tree=<id>`), for a command line that
//! cannot name a deployment: a signed unified kernel image is built once
//! per commit and lives inside it, so its `.cmdline` can name neither the
//! commit's checksum nor libostree's `ostree=/ostree/boot.N/…` link (which
//! goes stale). Every Berth OS tree carries its id in [`TREE_ID_PATH`];
//! stage 1 boots the deployment whose tree has the id the command line
//! names. `ostree=` wins when both are given.
//!
//! The deployments are looked for as libostree lays them out,
//! `ostree/deploy/<os>/deploy/<checksum>.<serial>`, without following a
//! symlink on the way, and the id file is read only when it is a small
//! regular file.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The tree's id file, inside a deployment. The other side (the builder
/// writes it) is `TREE_ID_PATH` in sysroot/src/contract.rs.
pub const TREE_ID_PATH: &str = "usr/lib/berth/tree-id";
/// Larger than any id file: one line of 32 characters.
const MAX_ID_FILE: u64 = 128;

/// Why no deployment was chosen by tree id.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// `berth.tree=` is not a tree id.
    #[error("berth.tree={0:?}: a tree id is exactly 32 lower-case hex characters")]
    BadId(String),
    /// No deployment's tree has the id.
    #[error(
        "no deployment has tree id {id} ({looked} {} looked at under {}/ostree/deploy)",
        if *looked == 1 { "deployment" } else { "deployments" },
        sysroot.display()
    )]
    NotFound {
        /// The id looked for.
        id: String,
        /// How many deployments were looked at.
        looked: usize,
        /// The physical root.
        sysroot: PathBuf,
    },
}

/// Whether `id` is a tree id: 32 lower-case hex characters.
pub fn is_tree_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One deployment directory: `ostree/deploy/<os>/deploy/<checksum>.<serial>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Deployment {
    serial: u32,
    os: String,
    name: String,
}

impl Deployment {
    /// The path relative to the physical root, as `ostree=` gives it.
    fn target(&self) -> String {
        format!("/ostree/deploy/{}/deploy/{}", self.os, self.name)
    }
}

/// The subdirectories of `dir` (not following symlinks), sorted by name.
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Every deployment under the physical root `sysroot`, in (os, name) order.
fn deployments(sysroot: &Path) -> Vec<Deployment> {
    let deploy = sysroot.join("ostree/deploy");
    let mut out = Vec::new();
    for os in subdirs(&deploy) {
        for name in subdirs(&deploy.join(&os).join("deploy")) {
            let serial = name
                .rsplit_once('.')
                .and_then(|(csum, serial)| (!csum.is_empty()).then_some(serial))
                .and_then(|serial| serial.parse().ok());
            if let Some(serial) = serial {
                out.push(Deployment {
                    serial,
                    os: os.clone(),
                    name,
                });
            }
        }
    }
    out
}

/// Reads the tree id of the deployment at `dir`: no symlink followed from
/// `dir` on, the file regular and small, the id its first line.
fn read_tree_id(dir: &Path) -> Option<String> {
    let mut path = dir.to_path_buf();
    let parents = Path::new(TREE_ID_PATH).parent()?;
    for component in parents.components() {
        path.push(component);
        if !std::fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
    }
    // O_NONBLOCK: a FIFO in its place must not stop PID 1 on open.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(TREE_ID_PATH))
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_ID_FILE {
        return None;
    }
    let mut text = String::new();
    file.by_ref()
        .take(MAX_ID_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The deployment whose tree has id `id`, as a path relative to the
/// physical root `sysroot` (what `ostree=` would name). When several
/// have it (the same commit deployed twice, `<checksum>.0` and
/// `<checksum>.1`), the highest serial: libostree gives a new deployment
/// of a commit the next free serial, so that is the newest.
pub fn find_deployment(sysroot: &Path, id: &str) -> Result<String, TreeError> {
    if !is_tree_id(id) {
        return Err(TreeError::BadId(id.to_string()));
    }
    let all = deployments(sysroot);
    let deploy = sysroot.join("ostree/deploy");
    all.iter()
        .filter(|d| {
            let dir = deploy.join(&d.os).join("deploy").join(&d.name);
            read_tree_id(&dir).as_deref() == Some(id)
        })
        .max()
        .map(Deployment::target)
        .ok_or_else(|| TreeError::NotFound {
            id: id.to_string(),
            looked: all.len(),
            sysroot: sysroot.to_path_buf(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub(crate) const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    pub(crate) const ID_B: &str = "0123456789abcdef0123456789abcdef";

    /// Adds deployment `name` of stateroot `berth` whose tree has id `id`.
    pub(crate) fn deployment(sysroot: &Path, name: &str, id: &str) -> std::io::Result<PathBuf> {
        let dir = sysroot.join("ostree/deploy/berth/deploy").join(name);
        for sub in ["usr/lib/berth", "etc", "var", "sysroot"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(dir.join(TREE_ID_PATH), format!("{id}\n"))?;
        Ok(dir)
    }

    #[test]
    fn picks_the_tree_and_then_the_newest_serial() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let a = "1".repeat(64);
        let b = "2".repeat(64);
        deployment(root, &format!("{a}.0"), ID_A)?;
        deployment(root, &format!("{b}.0"), ID_B)?;
        deployment(root, &format!("{b}.1"), ID_B)?;
        // An origin file beside them, as libostree writes it.
        fs::write(
            root.join(format!("ostree/deploy/berth/deploy/{b}.1.origin")),
            "",
        )?;
        assert_eq!(
            find_deployment(root, ID_A)?,
            format!("/ostree/deploy/berth/deploy/{a}.0")
        );
        assert_eq!(
            find_deployment(root, ID_B)?,
            format!("/ostree/deploy/berth/deploy/{b}.1")
        );
        Ok(())
    }

    #[test]
    fn bad_ids_and_misses_are_errors() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let a = "1".repeat(64);
        let dir = deployment(root, &format!("{a}.0"), ID_A)?;
        for bad in [
            "",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &ID_A[1..],
            "../../x",
        ] {
            let err = find_deployment(root, bad).err().map(|e| e.to_string());
            assert_eq!(
                err,
                Some(format!(
                    "berth.tree={bad:?}: a tree id is exactly 32 lower-case hex characters"
                ))
            );
        }
        let err = find_deployment(root, ID_B).err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "no deployment has tree id {ID_B} (1 deployment looked at under {}/ostree/deploy)",
                root.display()
            ))
        );
        // A symlinked id file does not count, nor does a big one.
        let id_file = dir.join(TREE_ID_PATH);
        fs::remove_file(&id_file)?;
        fs::write(root.join("elsewhere"), ID_A)?;
        std::os::unix::fs::symlink(root.join("elsewhere"), &id_file)?;
        assert!(find_deployment(root, ID_A).is_err());
        fs::remove_file(&id_file)?;
        fs::write(&id_file, format!("{ID_A}\n{}", " ".repeat(200)))?;
        assert!(find_deployment(root, ID_A).is_err());
        // Nor does a tree reached through a symlinked directory: the
        // deployment itself, or its /usr.
        let elsewhere = deployment(&root.join("x"), "t.0", ID_B)?;
        let deploy = root.join("ostree/deploy/berth/deploy");
        std::os::unix::fs::symlink(&elsewhere, deploy.join(format!("{}.0", "3".repeat(64))))?;
        fs::create_dir(deploy.join("u.0"))?;
        std::os::unix::fs::symlink(elsewhere.join("usr"), deploy.join("u.0/usr"))?;
        let err = find_deployment(root, ID_B).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("(2 deployments looked at")),
            "{err:?}"
        );
        Ok(())
    }
}
