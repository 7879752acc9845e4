//! The lock server's configuration file (TOML, strict: an unknown key is
//! an error, so a typo cannot silently change nothing).
//!
//! ```toml
//! [service]
//! address = "0.0.0.0"   # default
//! port = 8090           # default
//!
//! [etcd3]
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//! ca-file = "/etc/berth/etcd-ca.pem"
//!
//! [[lock.groups]]
//! name = "default"
//! slots = 2
//! ```
//!
//! Without any `[[lock.groups]]` there is one group, `default`, with one
//! slot. With some, exactly those exist (list `default` too if clients
//! use it); a request for any other group is refused.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::etcd::EtcdConfig;
use crate::protocol::{DEFAULT_GROUP, valid_group};

/// Where the configuration is read from unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/berth/fleet-lock.toml";
/// The port the server listens on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 8090;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on (an IP address or a host name).
    pub address: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// The etcd cluster holding the semaphores.
    pub etcd: EtcdConfig,
    /// The groups that exist, each with its slots, in file order.
    pub groups: Vec<GroupConfig>,
}

/// One group's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name (`^[a-zA-Z0-9.-]+$`).
    pub name: String,
    /// How many of its hosts may hold a reboot slot at once (at least 1).
    pub slots: u32,
}

impl Config {
    /// Listening on all addresses at the default port, with the default
    /// group and these etcd settings.
    pub fn new(etcd: EtcdConfig) -> Config {
        Config {
            address: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            etcd,
            groups: vec![GroupConfig {
                name: DEFAULT_GROUP.into(),
                slots: 1,
            }],
        }
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            key: String::new(),
            message: format!("cannot read it: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Checks `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = deserialize(path, text)?;
        let err = |key: String, span: Option<Range<usize>>, message: String| ConfigError {
            file: path.to_path_buf(),
            position: span.map(|s| line_col(text, s.start)),
            key,
            message,
        };
        let etcd = raw.etcd3.into_inner();
        if etcd.endpoints.is_empty() {
            return Err(err(
                "etcd3.endpoints".into(),
                None,
                "at least one etcd endpoint is needed".into(),
            ));
        }
        for (i, e) in etcd.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(err(
                    format!("etcd3.endpoints[{i}]"),
                    None,
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        let mut groups: Vec<GroupConfig> = Vec::new();
        for (i, g) in raw.lock.groups.into_iter().enumerate() {
            let name_span = g.name.span();
            let slots_span = g.slots.span();
            let group = GroupConfig {
                name: g.name.into_inner(),
                slots: g.slots.into_inner(),
            };
            if !valid_group(&group.name) {
                return Err(err(
                    format!("lock.groups[{i}].name"),
                    Some(name_span),
                    format!(
                        "{:?} is not a FleetLock group name (letters, digits, '.' and '-')",
                        group.name
                    ),
                ));
            }
            if group.slots == 0 {
                return Err(err(
                    format!("lock.groups[{i}].slots"),
                    Some(slots_span),
                    "a group needs at least 1 slot".into(),
                ));
            }
            if groups.iter().any(|o| o.name == group.name) {
                return Err(err(
                    format!("lock.groups[{i}].name"),
                    Some(name_span),
                    format!("group {:?} is configured twice", group.name),
                ));
            }
            groups.push(group);
        }
        if groups.is_empty() {
            groups = Config::new(EtcdConfig::default()).groups;
        }
        Ok(Config {
            address: raw.service.address,
            port: raw.service.port,
            etcd,
            groups,
        })
    }

    /// The slots of `group`, if it is configured.
    pub fn slots(&self, group: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.slots)
    }
}

/// A configuration file that cannot be used: which file, where, which key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Line and column (1-based), when known.
    pub position: Option<(usize, usize)>,
    /// The key, dotted (`lock.groups[0].slots`); empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    service: RawService,
    etcd3: toml::Spanned<EtcdConfig>,
    #[serde(default)]
    lock: RawLock,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawService {
    address: String,
    port: u16,
}

impl Default for RawService {
    fn default() -> Self {
        RawService {
            address: "0.0.0.0".into(),
            port: DEFAULT_PORT,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLock {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: toml::Spanned<String>,
    slots: toml::Spanned<u32>,
}

fn deserialize(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let error = |key: String, e: &toml::de::Error| ConfigError {
        file: path.to_path_buf(),
        position: e.span().map(|s| line_col(text, s.start)),
        key,
        message: e.message().trim().to_string(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| error(String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` adds toml's private field to the path; the user wrote the key.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        error(key, e.inner())
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/berth/fleet-lock.toml"), text)
    }

    #[test]
    fn defaults_give_one_group_of_one_slot_on_port_8090() {
        let c = parse("[etcd3]\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert_eq!((c.address.as_str(), c.port), ("0.0.0.0", 8090));
        assert_eq!(c.slots("default"), Some(1));
        assert_eq!(c.slots("other"), None);
        assert_eq!(c.etcd.timeout_ms, 5_000);
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
[service]
address = "127.0.0.1"
port = 9000
[etcd3]
endpoints = ["https://a:2379", "https://b:2379"]
ca-file = "/etc/ca.pem"
username = "fleet"
password-file = "/etc/pw"
timeout-ms = 2000
[[lock.groups]]
name = "workers"
slots = 3
[[lock.groups]]
name = "db.eu-1"
slots = 1
"#,
        )
        .unwrap();
        assert_eq!((c.address.as_str(), c.port), ("127.0.0.1", 9000));
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert_eq!(c.etcd.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.etcd.timeout_ms, 2000);
        assert_eq!(c.slots("workers"), Some(3));
        assert_eq!(c.slots("db.eu-1"), Some(1));
        assert_eq!(
            c.slots("default"),
            None,
            "configured groups replace the default"
        );
    }

    #[test]
    fn an_endpointless_or_duplicate_configuration_is_refused() {
        let e = parse("[etcd3]\n").unwrap_err();
        assert_eq!(e.key, "etcd3.endpoints");
        let e = parse("").unwrap_err();
        assert!(e.message.contains("etcd3"), "{e}");
        let e = parse(
            "[etcd3]\nendpoints=[\"http://a:1\"]\n[[lock.groups]]\nname=\"a\"\nslots=1\n[[lock.groups]]\nname=\"a\"\nslots=2\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "lock.groups[1].name");
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
