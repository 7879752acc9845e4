//! Checking a mounted ESP against its [`EspPlan`]: which boot entries are
//! missing, empty, cut short or stale, which kernels and initramfs images
//! are missing or differ from their deployment's, and what an interrupted
//! write left behind. `berthctl boot-check` runs it at every boot and
//! `berthctl upgrade` before it says that a deployment boots next.
//!
//! It only reads; [`crate::esp_sync::repair`] fixes what it finds.

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::bls::Assessment;
use crate::contract::{ENTRIES_DIR, EspPlan, LOADER_CONF_PATH};
use crate::esp_state::{entry_files, temporaries};

/// One thing wrong with the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A planned deployment has no boot entry.
    MissingEntry {
        /// The deployment.
        id: String,
    },
    /// An entry's text is not the planned one: empty, cut short, or with a
    /// stale rank.
    WrongEntry {
        /// The deployment.
        id: String,
        /// The entry's file name.
        file: String,
        /// Its size.
        bytes: u64,
    },
    /// A second file for one entry (a rename cut short).
    DuplicateEntry {
        /// The deployment.
        id: String,
        /// The extra file's name.
        file: String,
    },
    /// A planned file (kernel, initramfs, boot loader, loader.conf) is
    /// missing or not the deployment's.
    WrongFile {
        /// ESP-relative path.
        path: String,
    },
    /// A temporary file of an interrupted write.
    Temporary {
        /// ESP-relative path.
        path: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingEntry { id } => write!(f, "deployment {id} has no boot entry"),
            Problem::WrongEntry { id, file, bytes } if *bytes == 0 => {
                write!(f, "boot entry {file} of {id} is empty")
            }
            Problem::WrongEntry { id, file, bytes } => {
                write!(
                    f,
                    "boot entry {file} of {id} ({bytes} bytes) is not as planned"
                )
            }
            Problem::DuplicateEntry { id, file } => {
                write!(f, "boot entry of {id} has a second file {file}")
            }
            Problem::WrongFile { path } => write!(f, "{path} is missing or differs"),
            Problem::Temporary { path } => write!(f, "temporary file {path} left behind"),
        }
    }
}

impl Problem {
    /// The deployment this problem keeps from booting, if any.
    pub fn deployment(&self) -> Option<&str> {
        match self {
            Problem::MissingEntry { id } | Problem::WrongEntry { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Everything on the ESP mounted at `esp` that differs from `plan`.
pub fn check(esp: &Path, plan: &EspPlan) -> Vec<Problem> {
    let mut problems = Vec::new();
    let files = entry_files(esp);
    for planned in &plan.entries {
        let Some(names) = files.get(&planned.deployment_id) else {
            problems.push(Problem::MissingEntry {
                id: planned.deployment_id.clone(),
            });
            continue;
        };
        let expected = planned.entry.render();
        for (i, name) in names.iter().enumerate() {
            let file = name.file_name();
            if i > 0 {
                problems.push(Problem::DuplicateEntry {
                    id: planned.deployment_id.clone(),
                    file,
                });
                continue;
            }
            let text = std::fs::read(esp.join(ENTRIES_DIR).join(&file)).unwrap_or_default();
            if text != expected.as_bytes() {
                problems.push(Problem::WrongEntry {
                    id: planned.deployment_id.clone(),
                    file,
                    bytes: text.len() as u64,
                });
            }
        }
    }
    for f in &plan.files {
        if !same_contents(&esp.join(&f.esp_path), &f.source) {
            problems.push(Problem::WrongFile {
                path: f.esp_path.clone(),
            });
        }
    }
    if std::fs::read(esp.join(LOADER_CONF_PATH)).map_or(true, |c| c != plan.loader_conf.as_bytes())
    {
        problems.push(Problem::WrongFile {
            path: LOADER_CONF_PATH.into(),
        });
    }
    for path in temporaries(esp) {
        problems.push(Problem::Temporary { path });
    }
    problems
}

/// Whether systemd-boot can boot deployment `id` from the ESP at `esp`:
/// its entry is the planned text, not out of tries, and every planned file
/// of it (`berth/<id>/...`) is intact.
pub fn entry_boots(esp: &Path, plan: &EspPlan, id: &str) -> bool {
    let names = entry_files(esp);
    let Some(name) = names.get(id).and_then(|n| n.first()) else {
        return false;
    };
    if name.assessment() == Assessment::Bad {
        return false;
    }
    let folder = format!("{}/{id}/", crate::contract::KERNELS_DIR);
    check(esp, plan).iter().all(|p| match p {
        Problem::MissingEntry { id: i } | Problem::WrongEntry { id: i, .. } => i != id,
        Problem::WrongFile { path } => !path.starts_with(&folder),
        _ => true,
    })
}

/// Whether the files at `a` and `b` exist with the same bytes (read in
/// chunks: kernels and initramfs images are megabytes).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match ra.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            // Same length, so the other one ends here too.
            return true;
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::test_plan as plan;

    #[test]
    fn a_synced_esp_has_no_problems_and_each_cut_is_named() {
        let src = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        let e = esp.path();
        let p = plan(src.path(), &["v2.0", "v1.0"]);
        crate::esp_sync::apply(e, &p, Some("v2.0")).unwrap();
        assert_eq!(check(e, &p), []);
        assert!(entry_boots(e, &p, "v2.0"));

        // What a power cut left in the field: an empty entry, an empty
        // kernel, a temporary file and a second name for v1's entry.
        std::fs::write(e.join("loader/entries/berth-v2.0+3.conf"), "").unwrap();
        std::fs::write(e.join("berth/v2.0/vmlinuz"), "").unwrap();
        std::fs::write(e.join("loader/entries/.berth-v2.0+3.conf.tmp"), "x").unwrap();
        std::fs::write(e.join("loader/entries/berth-v1.0+2-1.conf"), "x").unwrap();
        let problems = check(e, &p);
        assert_eq!(
            problems,
            [
                Problem::WrongEntry {
                    id: "v2.0".into(),
                    file: "berth-v2.0+3.conf".into(),
                    bytes: 0
                },
                Problem::DuplicateEntry {
                    id: "v1.0".into(),
                    file: "berth-v1.0+2-1.conf".into()
                },
                Problem::WrongFile {
                    path: "berth/v2.0/vmlinuz".into()
                },
                Problem::Temporary {
                    path: "loader/entries/.berth-v2.0+3.conf.tmp".into()
                },
            ]
        );
        assert_eq!(
            problems[0].to_string(),
            "boot entry berth-v2.0+3.conf of v2.0 is empty"
        );
        assert!(!entry_boots(e, &p, "v2.0"));
        assert!(entry_boots(e, &p, "v1.0"));
        std::fs::remove_file(e.join("loader/entries/berth-v2.0+3.conf")).unwrap();
        assert!(check(e, &p).contains(&Problem::MissingEntry { id: "v2.0".into() }));
    }

    #[test]
    fn an_entry_out_of_tries_does_not_boot() {
        let src = tempfile::tempdir().unwrap();
        let esp = tempfile::tempdir().unwrap();
        let e = esp.path();
        let p = plan(src.path(), &["v2.0", "v1.0"]);
        crate::esp_sync::apply(e, &p, Some("v2.0")).unwrap();
        std::fs::rename(
            e.join("loader/entries/berth-v2.0+3.conf"),
            e.join("loader/entries/berth-v2.0+0-3.conf"),
        )
        .unwrap();
        assert!(!entry_boots(e, &p, "v2.0"));
    }

    #[test]
    fn contents_are_compared_not_sizes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::write(&a, vec![1u8; 200_000]).unwrap();
        let mut other = vec![1u8; 200_000];
        other[150_000] = 2;
        std::fs::write(&b, &other).unwrap();
        assert!(!same_contents(&a, &b));
        std::fs::write(&b, vec![1u8; 200_000]).unwrap();
        assert!(same_contents(&a, &b));
        assert!(!same_contents(&a, &t.path().join("missing")));
    }
}
