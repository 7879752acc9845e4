//! What the ESP holds right now: the boot entries systemd-boot sees, by
//! deployment, with their boot-counting names.

use std::collections::BTreeMap;
use std::path::Path;

use crate::bls::EntryName;
use crate::esp::ENTRIES_DIR;

/// Boot entry names on the ESP mounted at `esp`, keyed by the deployment
/// id they boot (`<checksum>.<serial>`). Entries not written by Berth are
/// left out; a missing ESP gives an empty map.
pub fn entry_names(esp: &Path) -> BTreeMap<String, EntryName> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(esp.join(ENTRIES_DIR)) else {
        return out;
    };
    for entry in dir.filter_map(Result::ok) {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(EntryName::parse) else {
            continue;
        };
        if let Some(id) = name.stem.strip_prefix("berth-") {
            out.insert(id.to_string(), name);
        }
    }
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
}
