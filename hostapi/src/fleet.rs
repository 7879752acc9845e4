//! How a host reaches its fleet's etcd (`[fleet]` in the manifest, or
//! [`FLEET_CONFIG_PATH`] on the host), for the registry service
//! (`berthctl fleet run`) and `berthctl discover`.
//!
//! Plain data: berth-init reads it as part of the host configuration and
//! must not link an HTTP or TLS client; berthctl turns it into the etcd
//! client's configuration.

use serde::{Deserialize, Serialize};

/// A host's own fleet settings (provisioning data or an operator), which
/// replace the image's `[fleet]` whole when present.
pub const FLEET_CONFIG_PATH: &str = "/etc/berth/fleet.json";

/// The name of the registry's service, as `berthctl services` shows it.
pub const REGISTRY_SERVICE: &str = "fleet-registry";

/// The name of the FleetLock server's service on a host built with
/// `[fleet-lock-server]`, and the name it is announced under in the
/// registry when the host also has `[fleet]`.
pub const LOCK_SERVER_SERVICE: &str = "fleet-lock";

/// The lease TTL when none is given, in seconds.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 30;

/// Where the fleet's etcd is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:2379`, `https://…`), tried in turn.
    pub etcd: Vec<String>,
    /// PEM file (a path on the host) of the CA that signed etcd's certificates.
    pub ca_file: Option<String>,
    /// PEM client certificate on the host, for `--client-cert-auth` servers.
    pub cert_file: Option<String>,
    /// PEM key of `cert_file`.
    pub key_file: Option<String>,
    /// etcd user, when authentication is on.
    pub username: Option<String>,
    /// File on the host holding that user's password (first line).
    pub password_file: Option<String>,
    /// The TTL of the lease the host's records live under, in seconds.
    pub lease_ttl_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            etcd: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
        }
    }
}

/// The fleet settings of the host at `root`: [`FLEET_CONFIG_PATH`] if it
/// exists, else the image's (`image`, from the host configuration).
/// An unreadable or invalid host file is an error, not silently the
/// image's: an operator who wrote it meant it.
pub fn effective(
    root: &std::path::Path,
    image: Option<&FleetConfig>,
) -> Result<Option<FleetConfig>, String> {
    let path = root.join(FLEET_CONFIG_PATH.trim_start_matches('/'));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(image.cloned()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_file_wins_and_a_bad_one_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let image = FleetConfig {
            etcd: vec!["http://a:2379".into()],
            ..FleetConfig::default()
        };
        assert_eq!(effective(t.path(), None).unwrap(), None);
        assert_eq!(
            effective(t.path(), Some(&image)).unwrap(),
            Some(image.clone())
        );
        std::fs::create_dir_all(t.path().join("etc/berth")).unwrap();
        std::fs::write(
            t.path().join("etc/berth/fleet.json"),
            r#"{"etcd":["http://b:2379"]}"#,
        )
        .unwrap();
        let own = effective(t.path(), Some(&image)).unwrap().unwrap();
        assert_eq!(own.etcd, ["http://b:2379"]);
        assert_eq!(own.lease_ttl_secs, 30);
        std::fs::write(t.path().join("etc/berth/fleet.json"), r#"{"etc":[]}"#).unwrap();
        assert!(
            effective(t.path(), Some(&image))
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
