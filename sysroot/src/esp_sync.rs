//! Bringing a mounted ESP in line with an [`EspPlan`], in an order that
//! keeps the ESP bootable if the power is cut at any moment:
//!
//! 1. kernel and initramfs of every planned deployment are copied first,
//!    each under a temporary name, flushed, then renamed into place;
//! 2. then the boot entries are written (temporary name, flush, rename),
//!    the new deployment's entry last of the new files so it never points
//!    at files that are not there; an existing entry keeps its file name,
//!    so its boot counter survives;
//! 3. only then are entries of deployments that are gone removed, and
//!    their folders after them.
//!
//! Every write is durable on Linux's FAT driver, not just on ext4. vfat
//! keeps a file's size and first cluster in its directory entry, and a
//! rename creates the new entry with size 0 and no cluster until the
//! file's inode is written back; fsync of the directory writes that empty
//! entry and never the file's inode. So after the rename the file is
//! synced again through its new name (which writes its size and first
//! cluster into the new entry), and only then the directory. A cut before
//! that second sync finds the old name (or the temporary) still intact on
//! disk, because the rename had not reached it. berth-init's blessing
//! renames an entry by the same rule.
//! docs/upgrades.md ("Power cuts") has the whole sequence.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::SysrootError;
use crate::contract::{ENTRIES_DIR, EspData, EspFile, EspPlan, KERNELS_DIR, esp_files};
use crate::esp_check::{Problem, same_contents};
use crate::esp_state::{entry_files, entry_names, temporaries};
use crate::fault;

/// What [`apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Files copied onto the ESP.
    pub copied: Vec<String>,
    /// Entry files written (new or changed).
    pub entries_written: Vec<String>,
    /// Entry files and folders removed.
    pub removed: Vec<String>,
}

impl SyncReport {
    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.copied.is_empty() && self.entries_written.is_empty() && self.removed.is_empty()
    }
}

/// Applies `plan` to the ESP mounted at `esp`. The deployment whose id is
/// `trial` gets a boot counter (`+3`) if its entry is new; every other new
/// entry is written as good. Files already holding the planned bytes are
/// left alone.
pub fn apply(esp: &Path, plan: &EspPlan, trial: Option<&str>) -> Result<SyncReport, SysrootError> {
    let mut report = SyncReport::default();
    // 1. Files, then 2. entries: existing ones first (they only change
    // rank), the trial one last.
    let files = esp_files(plan, trial, &entry_names(esp));
    for f in &files.boot_files {
        if write_if_changed(esp, f)? {
            report.copied.push(f.path.clone());
        }
    }
    for f in &files.entries {
        if write_if_changed(esp, f)? {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            report.entries_written.push(name.to_string());
        }
    }

    let entries_dir = esp.join(ENTRIES_DIR);
    // 3. Clean up what no planned entry uses: second names of an entry,
    // entries of deployments that are gone, then their folders.
    let keep: BTreeSet<&str> = plan
        .entries
        .iter()
        .map(|e| e.deployment_id.as_str())
        .collect();
    let mut removed_entries = false;
    for (id, names) in entry_files(esp) {
        let extra = if keep.contains(id.as_str()) { 1 } else { 0 };
        for name in names.iter().skip(extra) {
            remove(&entries_dir.join(name.file_name()))?;
            report
                .removed
                .push(format!("{ENTRIES_DIR}/{}", name.file_name()));
            removed_entries = true;
        }
    }
    sync_dir(&entries_dir)?;
    if removed_entries {
        fault::point("removed the entries no deployment uses");
    }
    let kernels = esp.join(KERNELS_DIR);
    if let Ok(dirs) = std::fs::read_dir(&kernels) {
        for d in dirs.filter_map(Result::ok) {
            let id = d.file_name().to_string_lossy().into_owned();
            if !keep.contains(id.as_str()) {
                std::fs::remove_dir_all(d.path())
                    .map_err(|e| SysrootError::io(format!("removing {}", d.path().display()), e))?;
                report.removed.push(format!("{KERNELS_DIR}/{id}"));
                fault::point(&format!("removed {KERNELS_DIR}/{id}"));
            }
        }
        sync_dir(&kernels)?;
    }
    Ok(report)
}

/// Writes `f` onto the ESP at `esp` unless it already holds those bytes.
/// Returns whether it wrote.
fn write_if_changed(esp: &Path, f: &EspFile) -> Result<bool, SysrootError> {
    let dest = esp.join(&f.path);
    let data = match &f.data {
        EspData::File(source) => {
            if same_contents(&dest, source) {
                return Ok(false);
            }
            std::fs::read(source)
                .map_err(|e| SysrootError::io(format!("reading {}", source.display()), e))?
        }
        EspData::Bytes(bytes) => {
            if std::fs::read(&dest).is_ok_and(|t| t == *bytes) {
                return Ok(false);
            }
            bytes.clone()
        }
    };
    write_atomic(&dest, &data)?;
    Ok(true)
}

/// Makes the ESP at `esp` what `plan` says after an interrupted write:
/// removes temporary files, then [`apply`]s the plan (which rewrites
/// missing, empty and stale entries, copies kernels that are missing or
/// differ, and drops second names of an entry). Returns the problems found
/// before, and what was changed.
pub fn repair(
    esp: &Path,
    plan: &EspPlan,
    trial: Option<&str>,
) -> Result<(Vec<Problem>, SyncReport), SysrootError> {
    let problems = crate::esp_check::check(esp, plan);
    let mut report = SyncReport::default();
    if problems.is_empty() {
        return Ok((problems, report));
    }
    for path in temporaries(esp) {
        remove(&esp.join(&path))?;
        report.removed.push(path);
    }
    let applied = apply(esp, plan, trial)?;
    report.copied.extend(applied.copied);
    report.entries_written.extend(applied.entries_written);
    report.removed.extend(applied.removed);
    Ok((problems, report))
}

/// Writes `data` to `path` through a temporary file in the same directory,
/// durably on vfat as on ext4: write the temporary and fsync it, rename it
/// into place, fsync it again through the new name (on vfat that writes
/// the new directory entry's size and first cluster), then fsync the
/// directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SysrootError> {
    let dir = path
        .parent()
        .ok_or_else(|| SysrootError::Layout(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| SysrootError::io(format!("creating {}", dir.display()), e))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let io = |what: &str, e| SysrootError::io(format!("{what} {}", tmp.display()), e);
    remove(&tmp)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(data).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    fault::point(&format!("wrote and synced {}", tmp.display()));
    std::fs::rename(&tmp, path).map_err(|e| {
        SysrootError::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    fault::point(&format!("renamed it to {}", path.display()));
    f.sync_all()
        .map_err(|e| SysrootError::io(format!("syncing {}", path.display()), e))?;
    drop(f);
    sync_dir(dir)?;
    fault::point(&format!("synced {} and its directory", path.display()));
    Ok(())
}

fn remove(path: &Path) -> Result<(), SysrootError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(SysrootError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SysrootError> {
    let f = std::fs::File::open(dir)
        .map_err(|e| SysrootError::io(format!("opening {}", dir.display()), e))?;
    // vfat accepts fsync on directories; it flushes the directory's clusters.
    f.sync_all()
        .map_err(|e| SysrootError::io(format!("syncing {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::test_plan as plan;

    fn names(esp: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(esp.join(ENTRIES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn upgrade_then_cleanup_keeps_counters_and_removes_old() {
        let src = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        // First install: v1, good.
        apply(esp.path(), &plan(src.path(), &["v1.0"]), None).unwrap();
        assert_eq!(names(esp.path()), ["berth-v1.0.conf"]);
        // Upgrade: v2 on trial first, v1 second.
        let r = apply(
            esp.path(),
            &plan(src.path(), &["v2.0", "v1.0"]),
            Some("v2.0"),
        )
        .unwrap();
        assert_eq!(names(esp.path()), ["berth-v1.0.conf", "berth-v2.0+3.conf"]);
        assert_eq!(
            r.entries_written.last().map(String::as_str),
            Some("berth-v2.0+3.conf")
        );
        let v1 =
            std::fs::read_to_string(esp.path().join(ENTRIES_DIR).join("berth-v1.0.conf")).unwrap();
        assert!(v1.contains("sort-key berth-001"));
        // systemd-boot counted one try.
        std::fs::rename(
            esp.path().join(ENTRIES_DIR).join("berth-v2.0+3.conf"),
            esp.path().join(ENTRIES_DIR).join("berth-v2.0+2-1.conf"),
        )
        .unwrap();
        // Another sync keeps the counted name.
        apply(
            esp.path(),
            &plan(src.path(), &["v2.0", "v1.0"]),
            Some("v2.0"),
        )
        .unwrap();
        assert_eq!(
            names(esp.path()),
            ["berth-v1.0.conf", "berth-v2.0+2-1.conf"]
        );
        // Next upgrade: v3 on trial, v2 kept, v1 removed with its folder.
        let r = apply(
            esp.path(),
            &plan(src.path(), &["v3.0", "v2.0"]),
            Some("v3.0"),
        )
        .unwrap();
        assert_eq!(
            names(esp.path()),
            ["berth-v2.0+2-1.conf", "berth-v3.0+3.conf"]
        );
        assert!(r.removed.contains(&"berth/v1.0".to_string()));
        assert!(!esp.path().join("berth/v1.0").exists());
        assert!(esp.path().join("berth/v3.0/vmlinuz").exists());
        assert!(esp.path().join(crate::contract::LOADER_CONF_PATH).exists());
        // No temporary files are left behind.
        assert!(names(esp.path()).iter().all(|n| !n.ends_with(".tmp")));
    }

    #[test]
    fn repair_rewrites_what_a_cut_left_and_keeps_counters() {
        let src = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        let e = esp.path();
        let p = plan(src.path(), &["v2.0", "v1.0"]);
        apply(e, &p, Some("v2.0")).unwrap();
        // Nothing to do on a synced ESP.
        let (problems, report) = repair(e, &p, Some("v2.0")).unwrap();
        assert!(problems.is_empty() && report.is_empty());
        // The field's case: v2's entry and kernel empty, a temporary left.
        std::fs::write(e.join("loader/entries/berth-v2.0+3.conf"), "").unwrap();
        std::fs::write(e.join("berth/v2.0/vmlinuz"), "").unwrap();
        std::fs::write(e.join("berth/v2.0/.vmlinuz.tmp"), "half").unwrap();
        let (problems, report) = repair(e, &p, Some("v2.0")).unwrap();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(report.entries_written, ["berth-v2.0+3.conf"]);
        assert_eq!(report.copied, ["berth/v2.0/vmlinuz"]);
        assert!(crate::esp_check::check(e, &p).is_empty());
        assert_eq!(
            std::fs::read_to_string(e.join("berth/v2.0/vmlinuz")).unwrap(),
            "kernel v2.0"
        );
        // A missing entry of the trial deployment comes back on trial; a
        // second name of a blessed entry goes.
        std::fs::remove_file(e.join("loader/entries/berth-v2.0+3.conf")).unwrap();
        std::fs::write(e.join("loader/entries/berth-v1.0+1-2.conf"), "x").unwrap();
        repair(e, &p, Some("v2.0")).unwrap();
        assert_eq!(names(e), ["berth-v1.0.conf", "berth-v2.0+3.conf"]);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a/b.conf");
        write_atomic(&path, b"one").unwrap();
        // A stale temporary from a cut does not stop the next write.
        std::fs::write(t.path().join("a/.b.conf.tmp"), "stale").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(t.path().join("a")).unwrap().count(), 1);
    }
}
