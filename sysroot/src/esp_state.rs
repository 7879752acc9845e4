//! What the ESP holds right now: the boot entries systemd-boot sees, by
//! deployment, with their boot-counting names, and the leftovers an
//! interrupted write can leave (a second name for one entry, temporary
//! files).

use std::collections::BTreeMap;
use std::path::Path;

use crate::bls::{Assessment, EntryName};
use crate::contract::{ENTRIES_DIR, KERNELS_DIR};

/// Every Berth boot entry file on the ESP mounted at `esp`, grouped by the
/// deployment id they boot (`<checksum>.<serial>`), the preferred name
/// first (see [`preferred`]). Entries not written by Berth are left out; a
/// missing ESP gives an empty map.
pub fn entry_files(esp: &Path) -> BTreeMap<String, Vec<EntryName>> {
    let mut out: BTreeMap<String, Vec<EntryName>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(esp.join(ENTRIES_DIR)) else {
        return out;
    };
    for entry in dir.filter_map(Result::ok) {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(EntryName::parse) else {
            continue;
        };
        if let Some(id) = name.stem.strip_prefix("berth-") {
            out.entry(id.to_string()).or_default().push(name);
        }
    }
    for names in out.values_mut() {
        names.sort_by_key(preferred);
    }
    out
}

/// Boot entry names on the ESP mounted at `esp`, keyed by the deployment
/// id they boot: the preferred name where a cut left two.
pub fn entry_names(esp: &Path) -> BTreeMap<String, EntryName> {
    entry_files(esp)
        .into_iter()
        .filter_map(|(id, mut names)| (!names.is_empty()).then(|| (id, names.remove(0))))
        .collect()
}

/// Sort key among names of one entry, lowest first: the name furthest
/// along in boot assessment wins (blessed over counted, fewer tries left
/// over more), because a rename that was started had been decided.
pub fn preferred(name: &EntryName) -> (u8, u32) {
    match name.assessment() {
        Assessment::Good => (0, 0),
        Assessment::Bad => (1, 0),
        Assessment::Trial => (2, name.tries_left.unwrap_or(0)),
    }
}

/// Whether a file name is one of Berth's temporary names (`.NAME.tmp`).
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(".tmp")
}

/// Temporary files an interrupted write left on the ESP, as ESP-relative
/// paths: in the entries folder, in `EFI/BOOT`, `loader/` and in every
/// deployment folder.
pub fn temporaries(esp: &Path) -> Vec<String> {
    let mut dirs = vec![
        ENTRIES_DIR.to_string(),
        "loader".to_string(),
        "EFI/BOOT".to_string(),
    ];
    if let Ok(kernels) = std::fs::read_dir(esp.join(KERNELS_DIR)) {
        for d in kernels.filter_map(Result::ok) {
            dirs.push(format!("{KERNELS_DIR}/{}", d.file_name().to_string_lossy()));
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(list) = std::fs::read_dir(esp.join(&dir)) else {
            continue;
        };
        for f in list.filter_map(Result::ok) {
            let name = f.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_by_deployment() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(ENTRIES_DIR);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("berth-aaa.0+2-1.conf"), "").unwrap();
        std::fs::write(d.join("berth-bbb.0.conf"), "").unwrap();
        std::fs::write(d.join("other.conf"), "").unwrap();
        let m = entry_names(t.path());
        assert_eq!(m.len(), 2);
        assert_eq!(m["aaa.0"].tries_left, Some(2));
        assert_eq!(m["bbb.0"].tries_left, None);
        assert!(entry_names(&t.path().join("missing")).is_empty());
    }

    #[test]
    fn two_names_for_one_entry_prefer_the_blessed_one() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(ENTRIES_DIR);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("berth-aaa.0+2-1.conf"), "x").unwrap();
        std::fs::write(d.join("berth-aaa.0.conf"), "x").unwrap();
        std::fs::write(d.join("berth-bbb.0+3.conf"), "x").unwrap();
        std::fs::write(d.join("berth-bbb.0+2-1.conf"), "x").unwrap();
        let files = entry_files(t.path());
        assert_eq!(files["aaa.0"].len(), 2);
        assert_eq!(
            entry_names(t.path())["aaa.0"].file_name(),
            "berth-aaa.0.conf"
        );
        assert_eq!(
            entry_names(t.path())["bbb.0"].file_name(),
            "berth-bbb.0+2-1.conf"
        );
    }

    #[test]
    fn temporaries_are_found_where_berth_writes() {
        let t = tempfile::tempdir().unwrap();
        for dir in [ENTRIES_DIR, "EFI/BOOT", "berth/abc.0"] {
            std::fs::create_dir_all(t.path().join(dir)).unwrap();
        }
        std::fs::write(t.path().join("loader/entries/.berth-a.0+3.conf.tmp"), "").unwrap();
        std::fs::write(t.path().join("EFI/BOOT/.BOOTX64.EFI.tmp"), "").unwrap();
        std::fs::write(t.path().join("berth/abc.0/.vmlinuz.tmp"), "").unwrap();
        std::fs::write(t.path().join("berth/abc.0/vmlinuz"), "").unwrap();
        assert_eq!(
            temporaries(t.path()),
            [
                "EFI/BOOT/.BOOTX64.EFI.tmp",
                "berth/abc.0/.vmlinuz.tmp",
                "loader/entries/.berth-a.0+3.conf.tmp"
            ]
        );
        assert!(!is_temporary("vmlinuz"));
    }
}
