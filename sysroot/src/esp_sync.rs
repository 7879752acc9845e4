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
//! FAT has no atomic rename-over of directories, but renaming a file
//! within a directory is atomic there too (systemd-boot relies on it for
//! boot counting).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::SysrootError;
use crate::bls::EntryName;
use crate::esp::{ENTRIES_DIR, EspPlan, KERNELS_DIR, LOADER_CONF, LOADER_CONF_PATH};
use crate::esp_state::entry_names;

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

/// Tries a new entry gets (systemd-boot Automatic Boot Assessment).
pub const NEW_ENTRY_TRIES: u32 = 3;

/// Applies `plan` to the ESP mounted at `esp`. The deployment whose id is
/// `trial` gets a boot counter (`+3`) if its entry is new; every other new
/// entry is written as good.
pub fn apply(esp: &Path, plan: &EspPlan, trial: Option<&str>) -> Result<SyncReport, SysrootError> {
    let mut report = SyncReport::default();
    // 1. Files.
    for f in &plan.files {
        let dest = esp.join(&f.esp_path);
        if same_size(&dest, &f.source) && f.esp_path != crate::esp::SYSTEMD_BOOT_ON_ESP {
            continue;
        }
        let data = std::fs::read(&f.source)
            .map_err(|e| SysrootError::io(format!("reading {}", f.source.display()), e))?;
        if std::fs::read(&dest).is_ok_and(|old| old == data) {
            continue;
        }
        write_atomic(&dest, &data)?;
        report.copied.push(f.esp_path.clone());
    }
    if std::fs::read(esp.join(LOADER_CONF_PATH)).map_or(true, |c| c != LOADER_CONF.as_bytes()) {
        write_atomic(&esp.join(LOADER_CONF_PATH), LOADER_CONF.as_bytes())?;
        report.copied.push(LOADER_CONF_PATH.into());
    }

    // 2. Entries: existing ones first (they only change rank), the trial one last.
    let existing = entry_names(esp);
    let entries_dir = esp.join(ENTRIES_DIR);
    let mut ordered: Vec<_> = plan.entries.iter().collect();
    ordered.sort_by_key(|e| Some(e.deployment_id.as_str()) == trial);
    for e in ordered {
        let name = match existing.get(&e.deployment_id) {
            Some(n) => n.clone(),
            None if Some(e.deployment_id.as_str()) == trial => {
                EntryName::on_trial(&e.stem, NEW_ENTRY_TRIES)
            }
            None => EntryName::good(&e.stem),
        };
        let path = entries_dir.join(name.file_name());
        let text = e.entry.render();
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue;
        }
        write_atomic(&path, text.as_bytes())?;
        report.entries_written.push(name.file_name());
    }

    // 3. Clean up what no planned entry uses: entries, then folders.
    let keep: BTreeSet<&str> = plan
        .entries
        .iter()
        .map(|e| e.deployment_id.as_str())
        .collect();
    for (id, name) in &existing {
        if !keep.contains(id.as_str()) {
            remove(&entries_dir.join(name.file_name()))?;
            report
                .removed
                .push(format!("{ENTRIES_DIR}/{}", name.file_name()));
        }
    }
    sync_dir(&entries_dir)?;
    let kernels = esp.join(KERNELS_DIR);
    if let Ok(dirs) = std::fs::read_dir(&kernels) {
        for d in dirs.filter_map(Result::ok) {
            let id = d.file_name().to_string_lossy().into_owned();
            if !keep.contains(id.as_str()) {
                std::fs::remove_dir_all(d.path())
                    .map_err(|e| SysrootError::io(format!("removing {}", d.path().display()), e))?;
                report.removed.push(format!("{KERNELS_DIR}/{id}"));
            }
        }
        sync_dir(&kernels)?;
    }
    Ok(report)
}

/// Whether `dest` exists with the size of `source` (kernels and initramfs
/// images of a deployment never change, so that is enough to skip them).
fn same_size(dest: &Path, source: &Path) -> bool {
    match (std::fs::metadata(dest), std::fs::metadata(source)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    }
}

/// Writes `data` to `path` through a temporary file in the same directory:
/// write, fsync, rename, fsync the directory.
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
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    f.write_all(data).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        SysrootError::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    sync_dir(dir)
}

/// Renames a boot entry (blessing, or marking bad) and flushes.
pub fn rename_entry(esp: &Path, from: &EntryName, to: &EntryName) -> Result<(), SysrootError> {
    let dir = esp.join(ENTRIES_DIR);
    std::fs::rename(dir.join(from.file_name()), dir.join(to.file_name())).map_err(|e| {
        SysrootError::io(
            format!(
                "renaming boot entry {} to {}",
                from.file_name(),
                to.file_name()
            ),
            e,
        )
    })?;
    sync_dir(&dir)
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

/// Current entry names by deployment id (for callers that need both).
pub fn current(esp: &Path) -> BTreeMap<String, EntryName> {
    entry_names(esp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bls::BootEntry;
    use crate::esp::{PlannedEntry, PlannedFile};

    fn plan(src: &Path, ids: &[&str]) -> EspPlan {
        let mut files = vec![];
        let mut entries = vec![];
        for (rank, id) in ids.iter().enumerate() {
            let k = src.join(format!("{id}.vmlinuz"));
            std::fs::write(&k, format!("kernel {id}")).unwrap();
            files.push(PlannedFile {
                esp_path: format!("berth/{id}/vmlinuz"),
                source: k,
            });
            entries.push(PlannedEntry {
                stem: format!("berth-{id}"),
                deployment_id: id.to_string(),
                entry: BootEntry {
                    title: id.to_string(),
                    version: "1".into(),
                    sort_key: format!("berth-{rank:03}"),
                    linux: format!("/berth/{id}/vmlinuz"),
                    initrd: String::new(),
                    options: String::new(),
                },
            });
        }
        EspPlan { files, entries }
    }

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
        assert!(esp.path().join(LOADER_CONF_PATH).exists());
        // No temporary files are left behind.
        assert!(names(esp.path()).iter().all(|n| !n.ends_with(".tmp")));
    }

    #[test]
    fn rename_entry_blesses() {
        let esp = tempfile::tempdir().unwrap();
        let dir = esp.path().join(ENTRIES_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("berth-x.0+2-1.conf"), "e").unwrap();
        let from = EntryName::parse("berth-x.0+2-1.conf").unwrap();
        rename_entry(esp.path(), &from, &EntryName::good("berth-x.0")).unwrap();
        assert_eq!(names(esp.path()), ["berth-x.0.conf"]);
    }
}
