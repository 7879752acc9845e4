//! The provisioning document: the subset of cloud-init's NoCloud data
//! Berth understands, as serde types.
//!
//! - meta-data: `instance-id`, `local-hostname`;
//! - user-data (`#cloud-config`): `hostname`, `users` (name, groups,
//!   `ssh_authorized_keys`, `shell`, `gecos`), top-level
//!   `ssh_authorized_keys` (root's), `write_files` (path, content,
//!   `encoding: b64`, permissions, owner, append);
//! - a Berth extension: `berth: { service_env: { NAME: { KEY: VALUE } } }`,
//!   extra environment for the manifest's services, and
//!   `berth: { update: { wariness: 0.2 } }`, this host's rollout wariness.
//!
//! Unknown cloud-init keys are ignored with a note (a seed made for
//! cloud-init should still work for what Berth supports); malformed values
//! are errors, and the whole document is then skipped.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::accounts::field_ok;
use super::beneath::RelPath;

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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BerthExtension {
    /// Extra environment per service name.
    #[serde(default)]
    pub service_env: BTreeMap<String, BTreeMap<String, String>>,
    /// This host's own update settings.
    #[serde(default)]
    pub update: Option<UpdateExtension>,
    /// This host's fleet settings (etcd endpoints, TLS files, user), which
    /// replace the image's `[fleet]` whole: written to
    /// `/etc/berth/fleet.json`.
    #[serde(default)]
    pub fleet: Option<berth_hostapi::fleet::FleetConfig>,
}

/// `berth: { update: … }`: what one host does differently from its image.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateExtension {
    /// This host's rollout wariness in [0, 1] (0 takes a staged release
    /// first), over the image's `[update] wariness`.
    #[serde(default)]
    pub wariness: Option<f64>,
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
    let meta: MetaData =
        serde_norway::from_str(text).map_err(|e| DocumentError::Parse(e.to_string()))?;
    if let Some(id) = &meta.instance_id {
        // It is the first line of the record.
        if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
            return Err(invalid(format!(
                "instance-id {id:?} is empty, too long or has control characters"
            )));
        }
    }
    Ok(meta)
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

/// A user or group name as useradd takes it: it also keeps `:` and
/// newlines out of passwd and group.
pub fn valid_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

/// A user or group as `write_files`' `owner` names it: a name or a number.
fn valid_owner_part(p: &str) -> bool {
    valid_user_name(p) || (!p.is_empty() && p.len() <= 10 && p.chars().all(|c| c.is_ascii_digit()))
}

/// A manifest service name, as berth-init looks for `<name>.env`.
fn valid_service_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !n.starts_with('.')
}

fn invalid(msg: String) -> DocumentError {
    DocumentError::Invalid(msg)
}

/// The data of a `write_files` entry, decoded.
pub fn file_data(f: &WriteFile) -> Result<Vec<u8>, DocumentError> {
    match f.encoding.as_deref() {
        Some("b64" | "base64") => super::base64::decode(&f.content)
            .map_err(|e| invalid(format!("write_files {}: content: {e}", f.path))),
        _ => Ok(f.content.clone().into_bytes()),
    }
}

/// The mode of a `write_files` entry: its octal `permissions`, else 0644
/// (cloud-init's default).
pub fn file_mode(f: &WriteFile) -> Result<u32, DocumentError> {
    let Some(p) = &f.permissions else {
        return Ok(0o644);
    };
    match u32::from_str_radix(p.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(invalid(format!(
            "permissions \"{p}\" of {} are not an octal mode",
            f.path
        ))),
    }
}

/// Where `write_files` may write (the first component, after the image's
/// top-level links are resolved): what persists on a Berth host.
pub const WRITABLE: [&str; 2] = ["etc", "var"];

/// Checks a `write_files` path, normalised and with the image's top-level
/// links resolved, against the places provisioning may write.
pub fn check_write_path(shown: &str, p: &RelPath) -> Result<(), DocumentError> {
    match p.first() {
        Some("usr") => Err(invalid(format!(
            "write_files path \"{shown}\" is in the read-only /usr"
        ))),
        Some(first) if WRITABLE.contains(&first) && p.parts().len() > 1 => {
            if p.file_name().is_some_and(|n| n.len() > 200) {
                return Err(invalid(format!(
                    "write_files path \"{shown}\": its file name is too long"
                )));
            }
            Ok(())
        }
        _ => Err(invalid(format!(
            "write_files path \"{shown}\" is outside /etc and /var (what persists on the host)"
        ))),
    }
}

fn check_key(whose: &str, k: &str) -> Result<(), DocumentError> {
    if k.chars().any(char::is_control) {
        return Err(invalid(format!(
            "an SSH key of {whose} has a newline or control character in it"
        )));
    }
    Ok(())
}

fn check_user(u: &User) -> Result<(), DocumentError> {
    if !valid_user_name(&u.name) {
        return Err(invalid(format!("user name \"{}\" is not valid", u.name)));
    }
    for g in u
        .groups
        .as_ref()
        .map(StringOrList::items)
        .unwrap_or_default()
    {
        if !valid_user_name(&g) {
            return Err(invalid(format!(
                "group \"{g}\" of user {} is not a valid group name",
                u.name
            )));
        }
    }
    if let Some(sh) = &u.shell {
        if !sh.starts_with('/') || !field_ok(sh) {
            return Err(invalid(format!(
                "shell {sh:?} of user {} is not an absolute path without ':' or newlines",
                u.name
            )));
        }
    }
    if let Some(g) = &u.gecos {
        if !field_ok(g) {
            return Err(invalid(format!(
                "gecos {g:?} of user {} has a ':' or a newline",
                u.name
            )));
        }
    }
    for k in &u.ssh_authorized_keys {
        check_key(&format!("user {}", u.name), k)?;
    }
    Ok(())
}

fn check_file(f: &WriteFile) -> Result<(), DocumentError> {
    let p = RelPath::parse(&f.path).map_err(|e| invalid(format!("write_files path: {e}")))?;
    // The full check needs the host's top-level links (/root, /home):
    // the planner makes it; /usr is refused here already.
    if p.first() == Some("usr") {
        return Err(invalid(format!(
            "write_files path \"{}\" is in the read-only /usr",
            f.path
        )));
    }
    file_mode(f)?;
    if let Some(e) = &f.encoding {
        if !matches!(e.as_str(), "b64" | "base64" | "text/plain") {
            return Err(invalid(format!(
                "encoding \"{e}\" of {} is not supported (b64 or plain)",
                f.path
            )));
        }
    }
    file_data(f)?;
    if let Some(o) = &f.owner {
        let (u, g) = o.split_once(':').unwrap_or((o, o));
        if !valid_owner_part(u) || !valid_owner_part(g) {
            return Err(invalid(format!(
                "owner {o:?} of {} is not user:group",
                f.path
            )));
        }
    }
    Ok(())
}

fn validate(doc: &UserData) -> Result<(), DocumentError> {
    if let Some(h) = &doc.hostname {
        if !valid_hostname(h) {
            return Err(invalid(format!("hostname \"{h}\" is not valid")));
        }
    }
    let mut names = Vec::new();
    for u in &doc.users {
        if let UserEntry::User(u) = u {
            check_user(u)?;
            if names.contains(&&u.name) {
                return Err(invalid(format!("user {} is listed twice", u.name)));
            }
            names.push(&u.name);
        }
    }
    for k in &doc.ssh_authorized_keys {
        check_key("root", k)?;
    }
    for f in &doc.write_files {
        check_file(f)?;
    }
    if let Some(w) = doc
        .berth
        .as_ref()
        .and_then(|b| b.update.as_ref())
        .and_then(|u| u.wariness)
        .filter(|w| !(0.0..=1.0).contains(w))
    {
        return Err(invalid(format!(
            "berth.update.wariness: {w} is not a number from 0 to 1"
        )));
    }
    if let Some(f) = doc.berth.as_ref().and_then(|b| b.fleet.as_ref()) {
        check_fleet(f)?;
    }
    if let Some(b) = &doc.berth {
        for (svc, env) in &b.service_env {
            if !valid_service_name(svc) {
                return Err(invalid(format!(
                    "berth.service_env: \"{svc}\" is not a service name"
                )));
            }
            for (k, v) in env {
                if k.is_empty()
                    || k.contains('=')
                    || k.chars().any(char::is_control)
                    || v.chars().any(|c| c == '\n' || c == '\r' || c == '\0')
                {
                    return Err(invalid(format!(
                        "berth.service_env.{svc}: {k:?} is not KEY=VALUE on one line"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// `berth.fleet`: at least one etcd URL, each `http://` or `https://`
/// with a host, absolute paths for the files, a lease of at least 5 s (as
/// the manifest's `[fleet]` requires).
fn check_fleet(f: &berth_hostapi::fleet::FleetConfig) -> Result<(), DocumentError> {
    if f.etcd.is_empty() {
        return Err(invalid(
            "berth.fleet.etcd: name at least one etcd URL".into(),
        ));
    }
    for url in &f.etcd {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or("");
        if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "berth.fleet.etcd: {url:?} is not an http:// or https:// URL of an etcd client endpoint"
            )));
        }
    }
    for (key, file) in [
        ("ca_file", &f.ca_file),
        ("cert_file", &f.cert_file),
        ("key_file", &f.key_file),
        ("password_file", &f.password_file),
    ] {
        if let Some(file) = file.as_deref().filter(|p| !p.starts_with('/')) {
            return Err(invalid(format!(
                "berth.fleet.{key}: {file:?} is not an absolute path"
            )));
        }
    }
    if f.lease_ttl_secs < 5 {
        return Err(invalid(format!(
            "berth.fleet.lease_ttl_secs: {} is under 5 seconds",
            f.lease_ttl_secs
        )));
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
