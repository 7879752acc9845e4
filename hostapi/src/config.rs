//! The host configuration: what `berth build` compiles out of a manifest and
//! writes into the OS tree at [`HOST_CONFIG_PATH`], and what `berth-init`
//! (stage 2) and `berthctl` read on the host.
//!
//! It is JSON, not TOML: no person writes it, and a JSON parser keeps the
//! static PID 1 small. Every field has a default so that an older init can
//! read a newer file and the other way round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the host configuration lives inside every deployment.
pub const HOST_CONFIG_PATH: &str = "/usr/lib/berth/host.json";

/// The root of the containers' volumes (`<root>/<container>/<volume>`).
/// berth-init keeps it owned by root with mode 0700: container root can
/// write a set-user-ID program or a device node into its volume, and no
/// other user of the host may reach it.
pub const VOLUMES_ROOT: &str = "/var/lib/berth/volumes";

/// Everything stage 2 needs to bring a host up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// The image name from the manifest (`name`), e.g. `minimal`.
    pub image: String,
    /// The OS version from the manifest (`version`).
    pub version: String,
    /// Hostname set at boot (provisioning data may override it).
    pub hostname: String,
    /// Kernel modules stage 2 loads before coldplug, by name.
    pub modules: Vec<String>,
    /// `sysctl` keys (dotted, as in `sysctl.conf`) and values applied at boot.
    pub sysctls: BTreeMap<String, String>,
    /// How the host gets its network.
    pub network: Network,
    /// Give a root shell on the serial console (off by default).
    pub debug_shell: bool,
    /// How long a boot still on trial (boot counting) may take to become
    /// ready before stage 2 reboots it so the counter runs down.
    pub ready_deadline_ms: u64,
    /// The watchdog's timeout: a PID 1 that makes no progress this long
    /// gets the machine reset. 0: no watchdog.
    pub watchdog_timeout_ms: u64,
    /// The services, in manifest order.
    pub services: Vec<Service>,
    /// How the host updates itself (`[update]`): the update agent's policy.
    pub update: crate::update::UpdatePolicy,
    /// The fleet's etcd (`[fleet]`), when the host registers itself.
    pub fleet: Option<crate::fleet::FleetConfig>,
}

/// Network configuration of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Network {
    /// Only loopback.
    #[default]
    None,
    /// DHCP on `interface` through a supervised client command.
    Dhcp {
        /// Interface name, e.g. `eth0`.
        interface: String,
        /// The client's command line, run as a supervised service.
        client: Vec<String>,
    },
    /// A static address.
    Static {
        /// Interface name, e.g. `eth0`.
        interface: String,
        /// Address with prefix length, e.g. `10.0.2.15/24`.
        address: String,
        /// Default gateway, if any.
        #[serde(default)]
        gateway: Option<String>,
        /// Name servers written to /etc/resolv.conf.
        #[serde(default)]
        dns: Vec<String>,
    },
}

/// When a service is started again after it exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whatever the exit status.
    #[default]
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never: the service runs once.
    Never,
}

/// When a started service counts as ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Readiness {
    /// As soon as the process is running.
    #[default]
    Started,
    /// When something accepts connections on 127.0.0.1:`port`.
    Tcp {
        /// The TCP port to probe.
        port: u16,
    },
    /// When `command` exits 0 (retried until it does).
    Exec {
        /// The probe's command line.
        command: Vec<String>,
    },
    /// When the process exited with status 0 (for one-shot services).
    Exited,
}

/// One supervised process (a host program, or an OCI runtime running a container).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// Unique name; log file and control-socket name.
    pub name: String,
    /// Whether this is a host process or a container (for display).
    pub kind: ServiceKind,
    /// Program and arguments; the program is looked up in PATH.
    pub command: Vec<String>,
    /// Extra environment, on top of a minimal default (PATH, HOME, TERM).
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub working_dir: Option<String>,
    /// User name or numeric uid to run as (default root).
    pub user: Option<String>,
    /// Group name or numeric gid to run as (default the user's group).
    pub group: Option<String>,
    /// Restart policy.
    pub restart: Restart,
    /// First restart delay; doubled after each quick failure.
    pub backoff_initial_ms: u64,
    /// The cap of the restart delay.
    pub backoff_max_ms: u64,
    /// Names of services that must be ready before this one starts.
    pub after: Vec<String>,
    /// Readiness check.
    pub ready: Readiness,
    /// Signal name sent first at stop (e.g. `SIGTERM`).
    pub stop_signal: String,
    /// Grace period between the stop signal and SIGKILL.
    pub stop_timeout_ms: u64,
    /// Commands run (in order, to completion) before every start; a failure
    /// counts as a failed start. Used to clean up container state.
    pub pre_start: Vec<Vec<String>>,
    /// Commands run after the process exited or was stopped.
    pub post_stop: Vec<Vec<String>>,
    /// Directories created (owner root, mode 0755, parents too) before
    /// every start: containers' volume folders under [`VOLUMES_ROOT`],
    /// which is made (or set back to) mode 0700 first.
    pub dirs: Vec<String>,
    /// Whether the host counts as ready (and the boot as good) only when
    /// this service is ready.
    pub required: bool,
    /// The TCP port this service is published on in the fleet registry
    /// (`/berth/services/<name>/<host id>`) while it is ready.
    pub announce: Option<u16>,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            name: String::new(),
            kind: ServiceKind::Process,
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            group: None,
            restart: Restart::Always,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            after: Vec::new(),
            ready: Readiness::Started,
            stop_signal: "SIGTERM".into(),
            stop_timeout_ms: 10_000,
            pre_start: Vec::new(),
            post_stop: Vec::new(),
            dirs: Vec::new(),
            required: true,
            announce: None,
        }
    }
}

/// What a service runs, for display and for container-specific handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// A program of the host.
    #[default]
    Process,
    /// An OCI container run by the OCI runtime.
    Container,
}

/// Why a host configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid host configuration.
    #[error("parsing {path}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl HostConfig {
    /// Reads and parses a host configuration file.
    pub fn load(path: &std::path::Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The JSON text written into the OS tree (stable key order, so builds
    /// are reproducible).
    pub fn to_json(&self) -> String {
        // Serialising plain data (strings, maps with string keys) cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let cfg = HostConfig {
            image: "minimal".into(),
            version: "1.0.0".into(),
            hostname: "berth".into(),
            network: Network::Dhcp {
                interface: "eth0".into(),
                client: vec!["udhcpc".into(), "-f".into()],
            },
            services: vec![Service {
                name: "web".into(),
                command: vec!["httpd".into()],
                ready: Readiness::Tcp { port: 80 },
                ..Service::default()
            }],
            ..HostConfig::default()
        };
        let back: HostConfig = serde_json::from_str(&cfg.to_json()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn missing_fields_take_defaults() {
        let cfg: HostConfig =
            serde_json::from_str(r#"{"services":[{"name":"a","command":["x"]}]}"#).unwrap();
        assert_eq!(cfg.services[0].restart, Restart::Always);
        assert_eq!(cfg.services[0].stop_signal, "SIGTERM");
        assert_eq!(cfg.network, Network::None);
        assert_eq!((cfg.fleet, cfg.services[0].announce), (None, None));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<HostConfig>(r#"{"bogus":1}"#).is_err());
    }
}
