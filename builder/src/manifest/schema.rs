//! The manifest as written: serde structs mirroring the TOML, strict
//! (`deny_unknown_fields`), with source spans on every value a later check
//! may need to point at. docs/manifest.md documents each key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole manifest file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawManifest {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: RawSource,
    #[serde(default)]
    pub kernel: RawKernel,
    #[serde(default)]
    pub disk: RawDisk,
    #[serde(default)]
    pub host: RawHost,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default, rename = "container")]
    pub containers: Vec<RawContainer>,
    #[serde(default)]
    pub update: Option<RawUpdate>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub secure_boot: Option<RawSecureBoot>,
    #[serde(default)]
    pub fleet: Option<RawFleet>,
    #[serde(default)]
    pub fleet_lock_server: Option<RawFleetLockServer>,
}

/// `[fleet-lock-server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFleetLockServer {
    pub config: Spanned<String>,
}

/// `[fleet]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFleet {
    pub etcd: Spanned<Vec<Spanned<String>>>,
    pub lease_ttl: Option<Spanned<String>>,
}

/// `[secure-boot]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSecureBoot {
    pub key: Spanned<String>,
    pub certificate: Spanned<String>,
    pub enroll_keys: Option<Spanned<String>>,
    pub enroll: Option<Spanned<String>>,
}

/// `[ssh]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    #[serde(default = "yes")]
    pub enable: bool,
    pub port: Option<Spanned<u16>>,
    #[serde(default)]
    pub authorized_keys: Vec<Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// `[source]`: where packages come from and which.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSource {
    pub suite: Option<Spanned<String>>,
    pub mirror: Option<Spanned<String>>,
    #[serde(default)]
    pub components: Vec<Spanned<String>>,
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
}

/// `[kernel]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKernel {
    pub package: Option<Spanned<String>>,
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
}

/// `[disk]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDisk {
    pub size: Option<Spanned<String>>,
    pub esp_size: Option<Spanned<String>>,
}

/// `[host]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHost {
    pub hostname: Option<Spanned<String>>,
    #[serde(default)]
    pub debug_shell: bool,
    pub ready_deadline: Option<Spanned<String>>,
    pub watchdog_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub sysctls: BTreeMap<String, Spanned<toml::Value>>,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNetwork {
    pub mode: Option<Spanned<String>>,
    pub interface: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    #[serde(default)]
    pub dns: Vec<Spanned<String>>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawService {
    pub name: Spanned<String>,
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    pub ready: Option<Spanned<String>>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub backoff_initial: Option<Spanned<String>>,
    pub backoff_max: Option<Spanned<String>>,
    pub required: Option<bool>,
    pub announce: Option<Spanned<i64>>,
}

/// One `[[container]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawContainer {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    pub command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub restart: Option<Spanned<String>>,
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    pub network: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
    pub pids_limit: Option<Spanned<i64>>,
    pub ready: Option<Spanned<String>>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub required: Option<bool>,
    pub tls_verify: Option<bool>,
    pub announce: Option<Spanned<i64>>,
}

/// `[update]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUpdate {
    pub url: Spanned<String>,
    pub verify: Option<Spanned<bool>>,
    pub gpg_key: Option<Spanned<String>>,
    pub gpg_homedir: Option<Spanned<String>>,
    pub gpg_key_id: Option<Spanned<String>>,
    pub strategy: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub wariness: Option<Spanned<f64>>,
    pub fleet_lock_url: Option<Spanned<String>>,
    pub fleet_lock_group: Option<Spanned<String>>,
    #[serde(default, rename = "window")]
    pub windows: Vec<Spanned<RawWindow>>,
}

/// One `[[update.window]]`: a weekly maintenance window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWindow {
    pub days: Spanned<Vec<Spanned<String>>>,
    pub start: Spanned<String>,
    pub length: Spanned<String>,
}
