//! Boot counting (systemd-boot Automatic Boot Assessment), the host side:
//! read `LoaderBootCountPath` from efivarfs and, once the host is ready,
//! rename the boot entry on the ESP to drop its `+LEFT[-DONE]` counter
//! ("blessing"), as systemd-bless-boot does.

use std::path::{Path, PathBuf};

use crate::efivars::{LOADER_GUID, read_efivar, utf16le};

/// The boot entry the loader counted this boot, ESP-relative with `/`
/// separators, e.g. `loader/entries/berth-2+2-1.conf`.
pub fn boot_count_path(efivars: &Path) -> Option<String> {
    let data = read_efivar(efivars, "LoaderBootCountPath", LOADER_GUID)?;
    let path = utf16le(&data).replace('\\', "/");
    let path = path.trim_start_matches('/').to_string();
    (!path.is_empty()).then_some(path)
}

/// A boot entry file name split around its counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The name without the counter, e.g. `berth-2.conf`.
    pub blessed: String,
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// Splits `name+LEFT[-DONE].ext`; None when the name has no counter.
pub fn parse_counted(file_name: &str) -> Option<Counted> {
    let (stem, ext) = match file_name.rfind('.') {
        Some(dot) => (file_name.get(..dot)?, file_name.get(dot..)?),
        None => (file_name, ""),
    };
    let plus = stem.rfind('+')?;
    let base = stem.get(..plus)?;
    let counter = stem.get(plus + 1..)?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l, d),
        None => (counter, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !digits(done) {
        return None;
    }
    Some(Counted {
        blessed: format!("{base}{ext}"),
        left: left.parse().ok()?,
        done: done.parse().ok()?,
    })
}

/// A boot on trial: the entry was counted by the loader this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// ESP-relative path of the counted entry.
    pub entry: String,
    /// Its counter.
    pub counted: Counted,
}

/// Whether this boot is on trial, from efivarfs.
pub fn trial(efivars: &Path) -> Option<Trial> {
    let entry = boot_count_path(efivars)?;
    let name = entry.rsplit('/').next()?;
    let counted = parse_counted(name)?;
    Some(Trial { entry, counted })
}

/// Why blessing failed.
#[derive(Debug, thiserror::Error)]
#[error("renaming {from} to {to}")]
pub struct BlessError {
    /// The counted entry.
    pub from: PathBuf,
    /// The blessed name.
    pub to: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Renames the counted entry on the ESP mounted at `esp` to its name without
/// counter, durably on vfat: fsync the file through its new name first
/// (vfat writes a renamed file's size and first cluster into its new
/// directory entry only with the file's inode; syncing the directory alone
/// would leave an empty blessed entry after a power cut), then the
/// directory. Returns the new path, or None when the counted file is gone
/// (already blessed, or renamed by someone else).
pub fn bless(esp: &Path, trial: &Trial) -> Result<Option<PathBuf>, BlessError> {
    let from = esp.join(&trial.entry);
    let dir = from
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| esp.to_path_buf());
    let to = dir.join(&trial.counted.blessed);
    if !from.exists() {
        return Ok(None);
    }
    let err = |source| BlessError {
        from: from.clone(),
        to: to.clone(),
        source,
    };
    std::fs::rename(&from, &to).map_err(err)?;
    std::fs::File::open(&to)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn efivar(dir: &Path, value: &str) -> std::io::Result<()> {
        crate::efivars::tests::write_efivar(dir, "LoaderBootCountPath", value)
    }

    #[test]
    fn counters_parse() {
        assert_eq!(
            parse_counted("berth-2+2-1.conf"),
            Some(Counted {
                blessed: "berth-2.conf".into(),
                left: 2,
                done: 1
            })
        );
        assert_eq!(
            parse_counted("x+3.conf"),
            Some(Counted {
                blessed: "x.conf".into(),
                left: 3,
                done: 0
            })
        );
        assert_eq!(parse_counted("x.conf"), None);
        assert_eq!(parse_counted("a+b.conf"), None);
        assert_eq!(parse_counted("c++-1.conf"), None);
    }

    #[test]
    fn trial_entry_is_blessed_on_the_esp() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let efivars = tmp.path().join("efivars");
        let esp = tmp.path().join("efi");
        fs::create_dir_all(&efivars)?;
        fs::create_dir_all(esp.join("loader/entries"))?;
        assert_eq!(trial(&efivars), None);
        efivar(&efivars, "\\loader\\entries\\berth-2+2-1.conf")?;
        fs::write(esp.join("loader/entries/berth-2+2-1.conf"), "title x\n")?;
        let t = trial(&efivars).ok_or("no trial")?;
        assert_eq!(t.entry, "loader/entries/berth-2+2-1.conf");
        let new = bless(&esp, &t)?;
        assert_eq!(new, Some(esp.join("loader/entries/berth-2.conf")));
        assert_eq!(
            fs::read_to_string(esp.join("loader/entries/berth-2.conf"))?,
            "title x\n"
        );
        assert!(!esp.join("loader/entries/berth-2+2-1.conf").exists());
        // A second time there is nothing to rename.
        assert_eq!(bless(&esp, &t)?, None);
        Ok(())
    }
}
