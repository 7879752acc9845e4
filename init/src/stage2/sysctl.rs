//! Kernel parameters from the host configuration, written to /proc/sys the
//! way sysctl(8) does (`net.ipv4.ip_forward` → /proc/sys/net/ipv4/ip_forward).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The /proc/sys file of a dotted key (a key with `/` is taken as a path).
pub fn key_path(proc_sys: &Path, key: &str) -> Option<PathBuf> {
    let rel = if key.contains('/') {
        key.trim_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
        return None;
    }
    Some(proc_sys.join(rel))
}

/// Writes every key; returns the failures as messages.
pub fn apply(proc_sys: &Path, sysctls: &BTreeMap<String, String>) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, value) in sysctls {
        match key_path(proc_sys, key) {
            Some(path) => {
                if let Err(e) = std::fs::write(&path, format!("{value}\n")) {
                    errors.push(format!(
                        "sysctl {key}={value}: writing {}: {e}",
                        path.display()
                    ));
                }
            }
            None => errors.push(format!("sysctl {key}: not a valid key")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_files_and_are_written() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        std::fs::create_dir_all(tmp.path().join("net/ipv4"))?;
        let mut map = BTreeMap::new();
        map.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        map.insert("vm.nope".to_string(), "2".to_string());
        map.insert("../etc".to_string(), "x".to_string());
        let errors = apply(tmp.path(), &map);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("net/ipv4/ip_forward"))?,
            "1\n"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            key_path(Path::new("/p"), "kernel/hostname"),
            Some(PathBuf::from("/p/kernel/hostname"))
        );
        Ok(())
    }
}
