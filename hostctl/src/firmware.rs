//! What the firmware and the kernel say about verified boot, for
//! `berthctl status`: whether Secure Boot is on (UEFI's `SecureBoot` and
//! `SetupMode` variables) and the kernel's lockdown level, which Debian's
//! kernel raises to `integrity` by itself when it was booted verified.

use std::path::Path;

use serde::Serialize;

/// UEFI's vendor GUID for the global variables (`SecureBoot`, `SetupMode`).
const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Where securityfs shows the lockdown level, relative to the root.
const LOCKDOWN: &str = "sys/kernel/security/lockdown";

/// Secure Boot as this boot saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecureBoot {
    /// `enforcing` (on, keys enrolled), `setup-mode` (no platform key: the
    /// firmware checks nothing, keys can be enrolled), `off`, or
    /// `unsupported` (not a UEFI boot, or firmware without Secure Boot).
    pub state: &'static str,
    /// The kernel's lockdown level (`none`, `integrity`,
    /// `confidentiality`), when securityfs shows it.
    pub lockdown: Option<String>,
}

/// The value byte of a boolean UEFI variable (after efivarfs' 4 bytes of
/// attributes).
fn flag(efivars: &Path, name: &str) -> Option<bool> {
    let raw = std::fs::read(efivars.join(format!("{name}-{EFI_GLOBAL_GUID}"))).ok()?;
    raw.get(4).map(|&b| b == 1)
}

/// The level in brackets of a lockdown file (`none [integrity] confidentiality`).
fn selected(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Reads Secure Boot's state from efivarfs at `efivars` and lockdown under
/// `root` (`/` on a host).
pub fn read(root: &Path, efivars: &Path) -> SecureBoot {
    let state = match (flag(efivars, "SecureBoot"), flag(efivars, "SetupMode")) {
        (Some(true), _) => "enforcing",
        (_, Some(true)) => "setup-mode",
        (Some(false), _) => "off",
        (None, _) => "unsupported",
    };
    let lockdown = std::fs::read_to_string(root.join(LOCKDOWN))
        .ok()
        .and_then(|t| selected(&t));
    SecureBoot { state, lockdown }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(dir: &Path, name: &str, value: u8) {
        std::fs::write(
            dir.join(format!("{name}-{EFI_GLOBAL_GUID}")),
            [6, 0, 0, 0, value],
        )
        .unwrap();
    }

    #[test]
    fn states_from_the_variables_and_the_lockdown_level() {
        let t = tempfile::tempdir().unwrap();
        let efivars = t.path().join("efivars");
        std::fs::create_dir_all(&efivars).unwrap();
        assert_eq!(read(t.path(), &efivars).state, "unsupported");
        var(&efivars, "SecureBoot", 0);
        var(&efivars, "SetupMode", 1);
        assert_eq!(read(t.path(), &efivars).state, "setup-mode");
        var(&efivars, "SetupMode", 0);
        assert_eq!(read(t.path(), &efivars).state, "off");
        var(&efivars, "SecureBoot", 1);
        let l = t.path().join(LOCKDOWN);
        std::fs::create_dir_all(l.parent().unwrap()).unwrap();
        std::fs::write(&l, "none [integrity] confidentiality\n").unwrap();
        assert_eq!(
            read(t.path(), &efivars),
            SecureBoot {
                state: "enforcing",
                lockdown: Some("integrity".into())
            }
        );
    }
}
