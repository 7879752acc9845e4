//! Boot counting (systemd-boot Automatic Boot Assessment), the host side:
//! read `LoaderBootCountPath` from efivarfs and, once the host is ready,
//! rename the boot entry on the ESP to drop its `+LEFT[-DONE]` counter
//! ("blessing"), as systemd-bless-boot does. The path is believed only
//! when it names the entry the loader says it booted.

use std::path::{Path, PathBuf};

use crate::efivars::loader_var;

/// The boot entry the loader counted this boot, ESP-relative with `/`
/// separators, e.g. `loader/entries/berth-2+2-1.conf`.
pub fn boot_count_path(efivars: &Path) -> Option<String> {
    let path = loader_var(efivars, "LoaderBootCountPath")?.replace('\\', "/");
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

/// What the loader's variables say of this boot's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCount {
    /// The entry is not counted (blessed, or no boot counting).
    Uncounted,
    /// The loader counted this entry this boot.
    Trial(Trial),
    /// `LoaderBootCountPath` names another entry than the one the loader
    /// booted. systemd-boot sets it only when it starts a counted entry
    /// and never clears it, and the variable is volatile only across a
    /// reset: when the firmware refuses an image (Secure Boot) systemd-boot
    /// returns to the firmware, which starts systemd-boot again from its
    /// next boot option, and that run may boot a blessed entry. The path
    /// then still names the refused one, which must not be blessed.
    Stale {
        /// The counted entry the variable names.
        counted: String,
        /// The entry the loader booted (`LoaderEntrySelected`).
        selected: String,
    },
}

/// A boot entry's name without its counter, in lower case (systemd-boot
/// lower-cases the id it reports): `berth-2+2-1.conf` and `berth-2+3.conf`
/// are both `berth-2.conf`.
fn entry_base(name: &str) -> String {
    parse_counted(name)
        .map_or_else(|| name.to_string(), |c| c.blessed)
        .to_ascii_lowercase()
}

/// Whether this boot is on trial, from efivarfs: `LoaderBootCountPath`,
/// checked against `LoaderEntrySelected` when the loader set it
/// (systemd-boot 252 reports the entry's name as it was before this
/// boot's rename, `+3` where the path says `+2-1`).
pub fn boot_count(efivars: &Path) -> BootCount {
    let Some(entry) = boot_count_path(efivars) else {
        return BootCount::Uncounted;
    };
    let name = entry.rsplit('/').next().unwrap_or(&entry).to_string();
    let Some(counted) = parse_counted(&name) else {
        return BootCount::Uncounted;
    };
    if let Some(selected) = loader_var(efivars, "LoaderEntrySelected").filter(|s| !s.is_empty())
        && entry_base(&selected) != entry_base(&name)
    {
        return BootCount::Stale {
            counted: entry,
            selected,
        };
    }
    BootCount::Trial(Trial { entry, counted })
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
        assert_eq!(boot_count(&efivars), BootCount::Uncounted);
        efivar(&efivars, "\\loader\\entries\\berth-2+2-1.conf")?;
        fs::write(esp.join("loader/entries/berth-2+2-1.conf"), "title x\n")?;
        let BootCount::Trial(t) = boot_count(&efivars) else {
            return Err("no trial".into());
        };
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

    #[test]
    fn a_count_path_left_by_a_refused_image_is_not_a_trial()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let efivars = tmp.path().join("efivars");
        fs::create_dir_all(&efivars)?;
        let selected =
            |v: &str| crate::efivars::tests::write_efivar(&efivars, "LoaderEntrySelected", v);
        efivar(&efivars, "\\loader\\entries\\berth-3+2-1.conf")?;
        // systemd-boot 252 names the entry as it was before the rename.
        selected("berth-3+3.conf")?;
        assert!(matches!(boot_count(&efivars), BootCount::Trial(t) if t.counted.left == 2));
        // A later loader that reports the id without its counter.
        selected("berth-3.conf")?;
        assert!(matches!(boot_count(&efivars), BootCount::Trial(_)));
        // The firmware refused berth-3's image; systemd-boot, started again
        // from the next boot option, booted the blessed berth-2.
        selected("berth-2.conf")?;
        assert_eq!(
            boot_count(&efivars),
            BootCount::Stale {
                counted: "loader/entries/berth-3+2-1.conf".into(),
                selected: "berth-2.conf".into()
            }
        );
        // An uncounted path is no trial either.
        efivar(&efivars, "\\loader\\entries\\berth-2.conf")?;
        assert_eq!(boot_count(&efivars), BootCount::Uncounted);
        Ok(())
    }
}
