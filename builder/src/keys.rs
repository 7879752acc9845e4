//! `berth keys generate DIR`: a fresh Secure Boot key hierarchy (PK, KEK,
//! db) made with Debian's tools, as loader.conf(5) of systemd 252 shows:
//! `openssl req` for each key and certificate, `cert-to-efi-sig-list` for
//! its EFI signature list, `sign-efi-sig-list` for the signed update
//! (`.auth`) systemd-boot enrolls (PK signs PK and KEK, KEK signs db).
//!
//! It does not enroll anything or touch firmware; the image's
//! `[secure-boot]` points at the result (docs/secure-boot.md).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::Context;

use crate::command::run_packaged;
use crate::error::InputError;

/// The three keys, from the top of the hierarchy: the platform key (who
/// may change KEK), the key exchange key (who may change db) and the db
/// key (what boot images are signed with).
pub const KEYS: [&str; 3] = ["PK", "KEK", "db"];

/// What `berth keys generate` is asked to do.
#[derive(Debug, Clone)]
pub struct GenerateOpts {
    /// The folder to create (absent or empty).
    pub dir: PathBuf,
    /// The certificates' common-name prefix: `CN=<name> PK`, ...
    pub name: String,
}

/// The programs the keys are made with (tests swap one for a failing one).
#[derive(Debug, Clone)]
pub struct Tools {
    /// `openssl` (package openssl).
    pub openssl: PathBuf,
    /// `cert-to-efi-sig-list` (package efitools).
    pub cert_to_efi_sig_list: PathBuf,
    /// `sign-efi-sig-list` (package efitools).
    pub sign_efi_sig_list: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            openssl: "openssl".into(),
            cert_to_efi_sig_list: "cert-to-efi-sig-list".into(),
            sign_efi_sig_list: "sign-efi-sig-list".into(),
        }
    }
}

/// What each key signs its `.auth` with: PK itself, KEK by PK, db by KEK.
const SIGNER: [(&str, &str); 3] = [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")];

/// The README.txt written beside the keys.
const README: &str = "\
Secure Boot keys made by `berth keys generate` (docs/secure-boot.md).

  PK.key  PK.crt    platform key: signs changes to PK and KEK.
                    Keep PK.key OFFLINE (not on a build machine): whoever
                    holds it owns every machine that enrolled it.
  KEK.key KEK.crt   key exchange key: signs changes to db.
  db.key  db.crt    the db key: `berth build` signs the UKI and
                    systemd-boot with it ([secure-boot] key, certificate).
  *.esl             each certificate as an EFI signature list.
  *.auth            signed updates of PK, KEK and db that systemd-boot
                    enrolls on a machine in setup mode
                    ([secure-boot] enroll-keys = this folder).

The .key files are unencrypted private keys (mode 0600).
";

/// Runs `berth keys generate`.
pub fn run(opts: &GenerateOpts) -> anyhow::Result<()> {
    generate(opts, &Tools::default())?;
    println!(
        "Made PK, KEK and db in {} (README.txt says which file is what; keep PK.key offline)",
        opts.dir.display()
    );
    Ok(())
}

/// Makes the keys in `opts.dir`: in a temporary folder beside it, renamed
/// into place at the end, so a failure leaves nothing.
pub fn generate(opts: &GenerateOpts, tools: &Tools) -> anyhow::Result<()> {
    check_name(&opts.name)?;
    let dir = &opts.dir;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(InputError(format!(
                "{} exists and is not empty: name a new folder",
                dir.display()
            ))
            .into());
        }
    } else if dir.exists() {
        return Err(InputError(format!("{} exists and is not a folder", dir.display())).into());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}.partial-"))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    make_keys(tmp.path(), &opts.name, tools)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", tmp.path().display()))?;
    let made = tmp.keep();
    if let Err(e) = std::fs::rename(&made, dir) {
        let _ = std::fs::remove_dir_all(&made);
        return Err(e).with_context(|| format!("renaming {} to {}", made.display(), dir.display()));
    }
    Ok(())
}

/// A name fit for `-subj "/CN=<name> PK/"`.
fn check_name(name: &str) -> Result<(), InputError> {
    if name.trim().is_empty() || name.contains(['/', '\\', '=', '\n']) {
        return Err(InputError(format!(
            "--name \"{name}\" is not usable in a certificate's common name \
             (not empty, no '/', '\\', '=' or newline)"
        )));
    }
    Ok(())
}

fn make_keys(dir: &Path, name: &str, tools: &Tools) -> anyhow::Result<()> {
    let owner = owner_guid()?;
    let time = efi_time(SystemTime::now());
    for k in KEYS {
        run_packaged(
            &format!("making the {k} key and certificate"),
            "openssl",
            Command::new(&tools.openssl)
                .current_dir(dir)
                .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
                .args(["-sha256", "-days", "3650", "-subj"])
                .arg(format!("/CN={name} {k}/"))
                .args(["-keyout", &format!("{k}.key"), "-out", &format!("{k}.crt")]),
        )?;
        let key = dir.join(format!("{k}.key"));
        // openssl writes 0600 under a usual umask; make sure of it.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", key.display()))?;
        run_packaged(
            &format!("making the {k} signature list"),
            "efitools",
            Command::new(&tools.cert_to_efi_sig_list)
                .current_dir(dir)
                .args(["-g", &owner, &format!("{k}.crt"), &format!("{k}.esl")]),
        )?;
    }
    for (k, by) in SIGNER {
        run_packaged(
            &format!("signing the {k} update with {by}"),
            "efitools",
            Command::new(&tools.sign_efi_sig_list)
                .current_dir(dir)
                .args(["-t", &time, "-c", &format!("{by}.crt")])
                .args(["-k", &format!("{by}.key"), k])
                .args([format!("{k}.esl"), format!("{k}.auth")]),
        )?;
    }
    std::fs::write(dir.join("README.txt"), README).context("writing README.txt")?;
    for k in KEYS {
        for ext in ["key", "crt", "esl", "auth"] {
            let p = dir.join(format!("{k}.{ext}"));
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            anyhow::ensure!(len > 0, "{} was not made (or is empty)", p.display());
        }
    }
    Ok(())
}

/// One random owner GUID for every entry: only a label (firmware does not
/// check it), which tells an operator the entries belong together.
fn owner_guid() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("reading random bytes for the owner GUID")?;
    }
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// The time stamped into the `.auth` files, in UTC, as `sign-efi-sig-list
/// -t` takes it. Passed explicitly because it otherwise stamps local time;
/// the current time (not a constant) so that a later update signed with
/// these keys, which must carry a later time, is accepted.
fn efi_time(t: SystemTime) -> String {
    // "2026-12-01T23:07:25Z" → "2026-12-01 23:07:25"
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn opts(dir: &Path) -> GenerateOpts {
        GenerateOpts {
            dir: dir.to_path_buf(),
            name: "Test".into(),
        }
    }

    #[test]
    fn makes_a_key_hierarchy_with_the_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        generate(&opts(&dir), &Tools::default()).unwrap();
        let subject = crate::command::run_stdout(
            "reading db.crt",
            Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(dir.join("db.crt")),
        )
        .unwrap();
        assert_eq!(subject.trim(), "subject=CN = Test db");
        for k in KEYS {
            let auth = std::fs::metadata(dir.join(format!("{k}.auth"))).unwrap();
            assert!(auth.len() > 0, "{k}.auth is empty");
            let key = std::fs::metadata(dir.join(format!("{k}.key"))).unwrap();
            assert_eq!(key.permissions().mode() & 0o777, 0o600, "{k}.key");
        }
        let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
        assert!(readme.contains("Keep PK.key OFFLINE"), "{readme}");
        // The db update is signed by KEK: sign-efi-sig-list wrote its
        // signer's certificate into it, which names KEK.
        let db_auth = std::fs::read(dir.join("db.auth")).unwrap();
        assert!(
            db_auth.windows(8).any(|w| w == b"Test KEK"),
            "db.auth does not carry KEK's certificate"
        );
        // Nothing but the keys: the temporary folder is gone.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keys"]);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the key folder is private");
    }

    #[test]
    fn refuses_a_folder_with_files_but_takes_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("old"), "x").unwrap();
        let e = generate(&opts(tmp.path()), &Tools::default()).unwrap_err();
        assert!(e.to_string().contains("exists and is not empty"), "{e}");
        assert_eq!(crate::error::exit_code(&e), std::process::ExitCode::from(2));
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        generate(&opts(&empty), &Tools::default()).unwrap();
        assert!(empty.join("db.auth").is_file());
    }

    #[test]
    fn a_failure_leaves_nothing_and_names_the_package() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let tools = Tools {
            sign_efi_sig_list: "/nonexistent/sign-efi-sig-list".into(),
            ..Tools::default()
        };
        let e = generate(&opts(&dir), &tools).unwrap_err();
        assert!(e.to_string().contains("Debian package efitools"), "{e}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn names_that_break_the_subject_are_refused() {
        for bad in ["", " ", "a/b", "CN=x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("Acme Corp").is_ok());
    }

    #[test]
    fn efi_time_is_utc_without_t_and_z() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_162_400);
        assert_eq!(efi_time(t), "2026-12-01 22:00:00");
    }
}
