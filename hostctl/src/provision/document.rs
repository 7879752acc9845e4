//! The provisioning document: the subset of cloud-init's NoCloud data
//! Berth understands, as serde types.
//!
//! - meta-data: `instance-id`, `local-hostname`;
//! - user-data (`#cloud-config`): `hostname`, `users` (name, groups,
//!   `ssh_authorized_keys`, `shell`, `gecos`), top-level
//!   `ssh_authorized_keys` (root's), `write_files` (path, content,
//!   `encoding: b64`, permissions, owner, append);
//! - a Berth extension: `berth: { service_env: { NAME: { KEY: VALUE } } }`,
//!   extra environment for the manifest's services.
//!
//! Unknown cloud-init keys are ignored with a note (a seed made for
//! cloud-init should still work for what Berth supports); malformed values
//! are errors, and the whole document is then skipped.

use std::collections::BTreeMap;

use serde::Deserialize;

/// NoCloud `meta-data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetaData {
    /// Identifies this instance: data is applied once per instance id.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The hostname.
    #[serde(default)]
    pub local_hostname: Option<String>,
}

/// A `#cloud-config` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserData {
    /// The hostname (wins over meta-data's).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Accounts to create.
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// Keys for root.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Files to write.
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    /// Berth's own keys.
    #[serde(default)]
    pub berth: Option<BerthExtension>,
    /// Everything else (reported, not applied).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_norway::Value>,
}

/// An entry of `users`: cloud-init accepts the word `default` too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum UserEntry {
    /// `- default` (the image's default user: nothing to do on Berth).
    Name(String),
    /// A full entry.
    User(User),
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Extra groups (comma-separated string or list).
    #[serde(default)]
    pub groups: Option<StringOrList>,
    /// Login shell.
    #[serde(default)]
    pub shell: Option<String>,
    /// Full name.
    #[serde(default)]
    pub gecos: Option<String>,
    /// SSH public keys.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// cloud-init writes lists of groups either way.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// `"a, b"`.
    String(String),
    /// `[a, b]`.
    List(Vec<String>),
}

impl StringOrList {
    /// The items.
    pub fn items(&self) -> Vec<String> {
        match self {
            StringOrList::String(s) => s
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect(),
            StringOrList::List(l) => l.clone(),
        }
    }
}

/// An entry of `write_files`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WriteFile {
    /// Absolute path.
    pub path: String,
    /// Contents (text, or base64 with `encoding: b64`).
    #[serde(default)]
    pub content: String,
    /// `b64`/`base64` or plain text.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Octal mode, e.g. `'0644'`.
    #[serde(default)]
    pub permissions: Option<String>,
    /// `user:group`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Append instead of replacing.
    #[serde(default)]
    pub append: bool,
}

/// The `berth:` extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerthExtension {
    /// Extra environment per service name.
    #[serde(default)]
    pub service_env: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a document was skipped.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not YAML, or not of the expected shape.
    #[error("not a valid document: {0}")]
    Parse(String),
    /// A value that cannot be applied.
    #[error("{0}")]
    Invalid(String),
}

/// Parses meta-data (an empty text is empty meta-data).
pub fn parse_meta(text: &str) -> Result<MetaData, DocumentError> {
    if text.trim().is_empty() {
        return Ok(MetaData::default());
    }
    serde_norway::from_str(text).map_err(|e| DocumentError::Parse(e.to_string()))
}

/// Parses and checks user-data; it must start with `#cloud-config`.
pub fn parse_user(text: &str) -> Result<UserData, DocumentError> {
    let first = text.lines().next().unwrap_or("").trim();
    if first != "#cloud-config" {
        return Err(DocumentError::Parse(
            "user-data must be a #cloud-config document (its first line)".into(),
        ));
    }
    let doc: UserData =
        serde_norway::from_str(text).map_err(|e| DocumentError::Parse(e.to_string()))?;
    validate(&doc)?;
    Ok(doc)
}

/// A valid hostname: dot-separated labels of letters, digits and '-'.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

fn validate(doc: &UserData) -> Result<(), DocumentError> {
    if let Some(h) = &doc.hostname {
        if !valid_hostname(h) {
            return Err(DocumentError::Invalid(format!(
                "hostname \"{h}\" is not valid"
            )));
        }
    }
    for u in &doc.users {
        if let UserEntry::User(u) = u {
            if !valid_user_name(&u.name) {
                return Err(DocumentError::Invalid(format!(
                    "user name \"{}\" is not valid",
                    u.name
                )));
            }
        }
    }
    for f in &doc.write_files {
        if !f.path.starts_with('/') || f.path.split('/').any(|p| p == "..") {
            return Err(DocumentError::Invalid(format!(
                "write_files path \"{}\" is not absolute",
                f.path
            )));
        }
        if f.path.starts_with("/usr/") || f.path == "/usr" {
            return Err(DocumentError::Invalid(format!(
                "write_files path \"{}\" is in the read-only /usr",
                f.path
            )));
        }
        if let Some(p) = &f.permissions {
            if u32::from_str_radix(p.trim_start_matches("0o"), 8).is_err() {
                return Err(DocumentError::Invalid(format!(
                    "permissions \"{p}\" of {} are not octal",
                    f.path
                )));
            }
        }
        if let Some(e) = &f.encoding {
            if !matches!(e.as_str(), "b64" | "base64" | "text/plain") {
                return Err(DocumentError::Invalid(format!(
                    "encoding \"{e}\" of {} is not supported (b64 or plain)",
                    f.path
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_subset_parses() {
        let doc = parse_user(
            "#cloud-config\nhostname: web-1\nusers:\n  - default\n  - name: ops\n    groups: wheel, adm\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAA ops@laptop\nssh_authorized_keys: [ssh-ed25519 BBBB root@x]\nwrite_files:\n  - path: /etc/app.conf\n    content: |\n      a=1\n    permissions: '0600'\nberth:\n  service_env:\n    web: {GREETING: hi}\npackage_update: true\n",
        )
        .unwrap();
        assert_eq!(doc.hostname.as_deref(), Some("web-1"));
        let UserEntry::User(ops) = &doc.users[1] else {
            panic!("not a user")
        };
        assert_eq!(ops.groups.as_ref().unwrap().items(), ["wheel", "adm"]);
        assert_eq!(ops.ssh_authorized_keys.len(), 1);
        assert_eq!(doc.ssh_authorized_keys, ["ssh-ed25519 BBBB root@x"]);
        assert_eq!(doc.write_files[0].content, "a=1\n");
        assert_eq!(doc.berth.unwrap().service_env["web"]["GREETING"], "hi");
        assert!(doc.other.contains_key("package_update"));
    }

    #[test]
    fn bad_documents_are_refused_with_a_reason() {
        assert!(
            parse_user("hostname: x\n")
                .unwrap_err()
                .to_string()
                .contains("#cloud-config")
        );
        assert!(parse_user("#cloud-config\nhostname: [unclosed\n").is_err());
        assert!(
            parse_user("#cloud-config\nhostname: bad_name!\n")
                .unwrap_err()
                .to_string()
                .contains("hostname")
        );
        assert!(parse_user("#cloud-config\nwrite_files:\n  - path: relative\n").is_err());
        assert!(
            parse_user("#cloud-config\nwrite_files:\n  - path: /usr/bin/x\n")
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
        assert!(
            parse_user("#cloud-config\nwrite_files:\n  - path: /etc/x\n    permissions: rwx\n")
                .is_err()
        );
    }

    #[test]
    fn meta_data() {
        let m = parse_meta("instance-id: i-123\nlocal-hostname: node-7\n").unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("i-123"));
        assert_eq!(m.local_hostname.as_deref(), Some("node-7"));
        assert_eq!(parse_meta("").unwrap(), MetaData::default());
    }
}
