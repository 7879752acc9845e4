//! `[secure-boot]`: which db key signs the boot chain and what
//! systemd-boot may enroll. Only the text is checked here; the build
//! reads the files (crate::uki), since a manifest parses without them.

use toml::Spanned;

use super::schema::RawSecureBoot;
use super::validate::Checker;
use super::{EnrollMode, Located, ManifestError, SecureBoot};

/// The checked `[secure-boot]` table `s`.
pub(super) fn check(c: &Checker, s: RawSecureBoot) -> Result<SecureBoot, ManifestError> {
    let key = path(c, "secure-boot.key", s.key)?;
    let certificate = path(c, "secure-boot.certificate", s.certificate)?;
    let enroll_keys = s
        .enroll_keys
        .map(|k| path(c, "secure-boot.enroll-keys", k))
        .transpose()?;
    let (enroll, enroll_span) = match &s.enroll {
        Some(e) => (mode(c, e)?, e.span()),
        None => (EnrollMode::default(), 0..0),
    };
    match (&enroll_keys, enroll) {
        (None, EnrollMode::Force) => {
            return Err(c.err(
                "secure-boot.enroll",
                &enroll_span,
                "\"force\" enrolls the image's keys, but there are none: set \
                 secure-boot.enroll-keys to a folder with PK.auth, KEK.auth and db.auth",
            ));
        }
        (Some(k), EnrollMode::Off) => {
            return Err(c.err(
                &k.key,
                &k.span,
                "contradicts secure-boot.enroll = \"off\" (nothing is enrolled then): \
                 remove one of them",
            ));
        }
        _ => {}
    }
    Ok(SecureBoot {
        key,
        certificate,
        enroll_keys,
        enroll,
    })
}

fn path(
    c: &Checker,
    key: &str,
    s: Spanned<String>,
) -> Result<Located<std::path::PathBuf>, ManifestError> {
    if s.get_ref().trim().is_empty() {
        return Err(c.err(
            key,
            &s.span(),
            "must not be empty (a path relative to the manifest)",
        ));
    }
    Ok(c.located(key, s).map_path())
}

fn mode(c: &Checker, s: &Spanned<String>) -> Result<EnrollMode, ManifestError> {
    EnrollMode::ALL
        .into_iter()
        .find(|m| m.name() == s.get_ref())
        .ok_or_else(|| {
            c.err(
                "secure-boot.enroll",
                &s.span(),
                format!(
                    "unknown mode \"{}\" (expected \"manual\", \"force\" or \"off\")",
                    s.get_ref()
                ),
            )
        })
}
