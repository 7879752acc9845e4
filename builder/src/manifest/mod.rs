//! Manifests: reading, validating and reporting errors in them.
//!
//! A manifest is strict TOML (unknown keys are errors). Every error names
//! the file, the key path and the line:column, e.g.
//! `manifests/x.toml:7:8: service[0].restart: unknown policy "sometimes"`,
//! and makes `berth` exit 2. Later build steps that find a problem with a
//! manifest value (a package the mirror lacks, a disk too small) report it
//! through [`Manifest::error_at`] the same way.

mod fleet;
mod policy;
mod schema;
mod secure_boot;
mod services;
pub mod units;
mod validate;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use berth_hostapi::config::{Network, Readiness, Restart, Service};
pub use berth_hostapi::update::UpdatePolicy;

/// An error in a manifest, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The key path, e.g. `service[1].ready` (empty for the whole file).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some((line, col)) = self.position {
            out.push_str(&format!(":{line}:{col}"));
        }
        out.push_str(": ");
        if !self.key.is_empty() {
            out.push_str(&self.key);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// A value from the manifest with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// The key path it was found at.
    pub key: String,
    /// Byte range in the manifest text.
    pub span: Range<usize>,
}

/// A validated manifest: every value parsed, checked and defaulted.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its text (kept to locate errors found later).
    pub text: String,
    /// Image name: `[a-z0-9][a-z0-9-]*`, used in file names and the OSTree ref.
    pub name: String,
    /// OS version (os-release VERSION_ID, commit metadata `version`).
    pub version: String,
    /// Free text for os-release PRETTY_NAME.
    pub description: Option<String>,
    /// Package source.
    pub source: Source,
    /// Kernel package, command line and modules.
    pub kernel: Kernel,
    /// Disk image sizes.
    pub disk: Disk,
    /// Host settings.
    pub host: Host,
    /// Network configuration.
    pub network: Network,
    /// Services, in manifest order.
    pub services: Vec<Service>,
    /// Containers, in manifest order.
    pub containers: Vec<Container>,
    /// Where hosts look for updates.
    pub update: Option<Update>,
    /// The SSH server, when enabled.
    pub ssh: Option<Ssh>,
    /// Secure Boot: the key that signs the boot chain, and what to enroll.
    pub secure_boot: Option<SecureBoot>,
    /// `[fleet]`: the etcd cluster the host registers in.
    pub fleet: Option<berth_hostapi::fleet::FleetConfig>,
    /// `[fleet-lock-server]`: the host serves FleetLock reboot slots.
    pub fleet_lock_server: Option<FleetLockServer>,
}

/// `[fleet-lock-server]`: run Berth's FleetLock server (`berth-fleetlock`)
/// on the host, with a configuration file (relative to the manifest) in
/// the lock server's own format, which the build reads and checks
/// (crate::fleet_lock_server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockServer {
    /// The lock server's TOML configuration (`[service]`, `[etcd3]`,
    /// `[[lock.groups]]`, as `berth-fleetlock --config` reads it).
    pub config: Located<PathBuf>,
}

/// `[secure-boot]`: sign a unified kernel image and systemd-boot with a db
/// key, and optionally hand systemd-boot keys to enroll. Paths are
/// relative to the manifest; the build reads and checks the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBoot {
    /// PEM private key of the db entry that signs (unencrypted).
    pub key: Located<PathBuf>,
    /// PEM X.509 certificate of that key.
    pub certificate: Located<PathBuf>,
    /// Folder with `PK.auth`, `KEK.auth` and `db.auth`.
    pub enroll_keys: Option<Located<PathBuf>>,
    /// systemd-boot's `secure-boot-enroll`.
    pub enroll: EnrollMode,
}

/// When systemd-boot enrolls the image's keys on a machine in setup mode
/// (its loader.conf `secure-boot-enroll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnrollMode {
    /// A menu entry enrolls them when an operator picks it.
    #[default]
    Manual,
    /// Enrolled at once, unattended (virtual machines).
    Force,
    /// Never.
    Off,
}

impl EnrollMode {
    /// Every mode, in the order messages list them.
    pub const ALL: [EnrollMode; 3] = [EnrollMode::Manual, EnrollMode::Force, EnrollMode::Off];

    /// The word in the manifest and in loader.conf.
    pub fn name(self) -> &'static str {
        match self {
            EnrollMode::Manual => "manual",
            EnrollMode::Force => "force",
            EnrollMode::Off => "off",
        }
    }
}

/// `[ssh]`: an SSH server (dropbear) as a service, key logins only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    /// TCP port.
    pub port: u16,
    /// Public keys that may log in as root.
    pub authorized_keys: Vec<String>,
}

/// The package that provides the SSH server.
pub const SSH_PACKAGE: &str = "dropbear-bin";
/// The name of the SSH server's service.
pub const SSH_SERVICE: &str = "sshd";

/// `[source]`: a Debian archive and the packages to take from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Suite, e.g. `bookworm`.
    pub suite: String,
    /// Mirror URL.
    pub mirror: String,
    /// Archive components.
    pub components: Vec<String>,
    /// Packages the manifest asks for (beyond the ones every image has).
    pub packages: Vec<Located<String>>,
}

/// `[kernel]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel package (default `linux-image-amd64`).
    pub package: Located<String>,
    /// Extra kernel command-line arguments.
    pub cmdline: Vec<String>,
    /// Extra modules to keep in the image and load at boot.
    pub modules: Vec<String>,
}

/// `[disk]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Whole disk size in bytes.
    pub size: Located<u64>,
    /// ESP size in bytes.
    pub esp_size: Located<u64>,
}

/// `[host]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Hostname.
    pub hostname: String,
    /// Root shell on the serial console.
    pub debug_shell: bool,
    /// Deadline for a boot on trial to become ready.
    pub ready_deadline_ms: u64,
    /// The watchdog's timeout; 0: no watchdog.
    pub watchdog_timeout_ms: u64,
    /// sysctl settings.
    pub sysctls: std::collections::BTreeMap<String, String>,
}

/// One `[[container]]`: an OCI image run by crun under berth-init.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Unique among services and containers.
    pub name: String,
    /// The image, with its skopeo transport (`docker://`, `oci:`, ...).
    pub image: Located<String>,
    /// Replaces the image's Entrypoint and Cmd.
    pub command: Option<Vec<String>>,
    /// Environment on top of the image's.
    pub env: std::collections::BTreeMap<String, String>,
    /// Restart policy.
    pub restart: Restart,
    /// Persistent volumes.
    pub volumes: Vec<crate::container::spec::Volume>,
    /// Network mode.
    pub network: ContainerNetwork,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs.
    pub cpus: Option<f64>,
    /// `pids.max`: processes and threads the container may have.
    pub pids_limit: i64,
    /// Readiness.
    pub ready: Readiness,
    /// Units that must be ready first.
    pub after: Vec<String>,
    /// Stop signal.
    pub stop_signal: String,
    /// Grace period before SIGKILL.
    pub stop_timeout_ms: u64,
    /// Counts toward host readiness.
    pub required: bool,
    /// Verify the registry's TLS certificate (default: yes, except for
    /// registries on the loopback address).
    pub tls_verify: Option<bool>,
    /// `announce = PORT`: published in the fleet registry while ready.
    pub announce: Option<u16>,
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerNetwork {
    /// Shares the host's network.
    Host,
    /// Loopback only.
    None,
}

/// `[update]`: the OSTree remote hosts pull from, and when they take
/// what it offers by themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Base URL of the OSTree archive repository.
    pub url: String,
    /// Which key signs what the build publishes and hosts trust.
    pub trust: UpdateTrust,
    /// The update agent's policy (`strategy`, `interval`, `wariness`,
    /// `[[update.window]]`); manual, so no agent, by default.
    pub policy: UpdatePolicy,
}

/// Who vouches for the updates of an image. Signed is the default: a
/// host must never take a commit from an unauthenticated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateTrust {
    /// No key in the manifest: the repository's own key, which `berth
    /// build` creates beside the repository on its first build.
    RepositoryKey,
    /// `gpg-key`, `gpg-homedir` and `gpg-key-id`: a key kept elsewhere.
    Manifest(ManifestKey),
    /// `verify = false`: nothing is signed and hosts accept any commit.
    Off(Located<bool>),
}

/// A signing key the manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestKey {
    /// ASCII-armored public key file (relative to the manifest) hosts verify with.
    pub public: Located<PathBuf>,
    /// GnuPG home holding the secret key `berth build` signs with.
    pub homedir: Located<PathBuf>,
    /// The key id or fingerprint to sign with.
    pub key_id: Located<String>,
}

impl Manifest {
    /// How this image's updates are signed. An image without `[update]`
    /// has no remote, but its repository is signed all the same (its
    /// commits may be served to hosts of another image).
    pub fn trust(&self) -> UpdateTrust {
        self.update
            .as_ref()
            .map_or(UpdateTrust::RepositoryKey, |u| u.trust.clone())
    }
}

/// Default image size when `[disk] size` is not given.
pub const DEFAULT_DISK_SIZE: u64 = 1 << 30;
/// Default ESP size: room for three kernels and initramfs images.
pub const DEFAULT_ESP_SIZE: u64 = 128 << 20;

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            position: None,
            key: String::new(),
            message: format!("cannot read the manifest: {e}"),
        })?;
        Manifest::parse(path, &text)
    }

    /// Validates manifest `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        validate::parse(path, text)
    }

    /// An error about the value written at `span` under `key`.
    pub fn error_at(
        &self,
        key: &str,
        span: &Range<usize>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.path.clone(),
            position: Some(line_col(&self.text, span.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The directory relative paths in the manifest are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
