//! `[fleet-lock-server]`: a Berth host that serves FleetLock reboot slots.
//! The build reads the lock server's configuration file (the format
//! `berth-fleetlock --config` reads on any machine, docs/fleet.md), checks
//! it with the lock server's own parser, and puts into the tree the
//! program (`/usr/bin/berth-fleetlock`), the file (as `/etc`'s default,
//! so an operator may edit it on the host) and a service that runs it.

use std::path::{Path, PathBuf};

use anyhow::Context;

use berth_fleet::lock::Config;
use berth_hostapi::config::{Readiness, Restart, Service, ServiceKind};
use berth_hostapi::fleet::LOCK_SERVER_SERVICE;

use crate::manifest::{Manifest, ManifestError};

/// Where the program goes in the tree.
pub const PROGRAM_IN_TREE: &str = "usr/bin/berth-fleetlock";
/// The user the lock server runs as: it parses requests from anyone on
/// the network, so it runs without root.
pub const USER: &str = "fleetlock";

/// The checked inputs of `[fleet-lock-server]`.
#[derive(Debug, Clone)]
pub struct LockServerInputs {
    /// The configuration file's text, written into the tree as it is.
    pub text: String,
    /// The parsed configuration.
    pub config: Config,
    /// The program to copy into the tree.
    pub program: PathBuf,
}

impl LockServerInputs {
    /// The tree path of the configuration: `/usr/etc` becomes `/etc` on
    /// the host, where `berth-fleetlock` reads it by default.
    pub fn config_in_tree() -> String {
        format!("usr{}", berth_fleet::lock::config::DEFAULT_PATH)
    }

    /// The supervised service: required (serving slots is what the host
    /// is for), ready once it accepts connections, restarted always. With
    /// `[fleet]` it is announced as `fleet-lock`, so `berthctl discover
    /// fleet-lock` finds it.
    pub fn service(&self, announce: bool) -> Service {
        // The probe connects to 127.0.0.1: only a server listening there
        // (or on every address) can be probed; one bound to a single
        // other address counts as ready once started.
        let probe = matches!(
            self.config.address.as_str(),
            "0.0.0.0" | "::" | "127.0.0.1" | "localhost"
        );
        Service {
            name: LOCK_SERVER_SERVICE.into(),
            kind: ServiceKind::Process,
            command: vec![
                "berth-fleetlock".into(),
                "--config".into(),
                berth_fleet::lock::config::DEFAULT_PATH.into(),
            ],
            user: Some(USER.into()),
            restart: Restart::Always,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 30_000,
            ready: if probe {
                Readiness::Tcp {
                    port: self.config.port,
                }
            } else {
                Readiness::Started
            },
            required: true,
            announce: announce.then_some(self.config.port),
            ..Service::default()
        }
    }
}

/// Writes the program (0755) and the configuration (0644) into the
/// overlay directory `dir`.
pub fn write(dir: &Path, inputs: &LockServerInputs) -> anyhow::Result<()> {
    let program = std::fs::read(&inputs.program)
        .with_context(|| format!("reading {}", inputs.program.display()))?;
    crate::rootfs::overlay::put(dir, PROGRAM_IN_TREE, &program, 0o755)?;
    crate::rootfs::overlay::put(
        dir,
        &LockServerInputs::config_in_tree(),
        inputs.text.as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Reads and checks the configuration `[fleet-lock-server] config` names
/// and finds the program (`$BERTH_FLEETLOCK`, else beside `berth`); `None`
/// without the section.
pub fn prepare(m: &Manifest) -> anyhow::Result<Option<LockServerInputs>> {
    let Some((text, config)) = read_config(m)? else {
        return Ok(None);
    };
    let program = crate::binaries::find_fleetlock()?;
    Ok(Some(LockServerInputs {
        text,
        config,
        program,
    }))
}

/// The configuration file's text and its checked contents; `None`
/// without the section. Every error is a manifest error at
/// `fleet-lock-server.config`, and for the file's own errors it names
/// the file's line and key too.
pub fn read_config(m: &Manifest) -> Result<Option<(String, Config)>, ManifestError> {
    let Some(section) = &m.fleet_lock_server else {
        return Ok(None);
    };
    let at = |msg: String| m.error_at(&section.config.key, &section.config.span, msg);
    let path = m.base_dir().join(&section.config.value);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
    let config = Config::parse(&path, &text).map_err(|e| at(e.to_string()))?;
    // A host's server must be where its clients were told to look, and
    // reachable by a user without privileges.
    if config.port == 0 {
        return Err(at(format!(
            "{}: service.port = 0 would listen on a random port, where no host could find it",
            path.display()
        )));
    }
    if config.port < 1024 {
        return Err(at(format!(
            "{}: service.port = {}: the lock server runs as user {USER}, which cannot listen below port 1024",
            path.display(),
            config.port
        )));
    }
    Ok(Some((text, config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest in a temporary folder whose `[fleet-lock-server]`
    /// names `lock.toml`, written with `config`.
    fn manifest(config: Option<&str>) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "name = \"x\"\nversion = \"1\"\n[fleet-lock-server]\nconfig = \"lock.toml\"\n",
        )
        .unwrap();
        if let Some(c) = config {
            std::fs::write(dir.path().join("lock.toml"), c).unwrap();
        }
        let m = Manifest::load(&path).unwrap();
        (dir, m)
    }

    const ETCD: &str = "[etcd3]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn the_config_is_checked_by_the_lock_servers_parser() {
        let (_d, m) = manifest(Some(&format!(
            "{ETCD}[[lock.groups]]\nname = \"web\"\nslots = 2\n"
        )));
        let (text, config) = read_config(&m).unwrap().unwrap();
        assert!(text.contains("web"));
        assert_eq!((config.port, config.slots("web")), (8090, Some(2)));
        // An error inside the file names the manifest's key and the
        // file's line and key.
        let (_d, m) = manifest(Some(&format!(
            "{ETCD}[[lock.groups]]\nname = \"web\"\nslots = 0\n"
        )));
        let e = read_config(&m).unwrap_err().to_string();
        assert!(e.contains("m.toml:4:10: fleet-lock-server.config: "), "{e}");
        assert!(
            e.contains("lock.toml:5:9: lock.groups[0].slots: a group needs"),
            "{e}"
        );
        let (_d, m) = manifest(Some("[etcd3]\nendpoints = [\"http://e:1\"]\nextra = 1\n"));
        let e = read_config(&m).unwrap_err().to_string();
        assert!(e.contains("etcd3.extra") || e.contains("extra"), "{e}");
        let (_d, m) = manifest(None);
        let e = read_config(&m).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("lock.toml"), "{e}");
    }

    #[test]
    fn ports_no_host_could_use_are_refused() {
        for (port, why) in [("0", "random port"), ("80", "below port 1024")] {
            let (_d, m) = manifest(Some(&format!("[service]\nport = {port}\n{ETCD}")));
            let e = read_config(&m).unwrap_err().to_string();
            assert!(e.contains(why), "{port}: {e}");
        }
    }

    #[test]
    fn the_service_runs_unprivileged_and_is_probed_where_it_listens() {
        let (_d, m) = manifest(Some(ETCD));
        let (text, config) = read_config(&m).unwrap().unwrap();
        let mut inputs = LockServerInputs {
            text,
            config,
            program: PathBuf::from("/nonexistent"),
        };
        let svc = inputs.service(false);
        assert_eq!(svc.name, "fleet-lock");
        assert_eq!(
            svc.command,
            ["berth-fleetlock", "--config", "/etc/berth/fleet-lock.toml"]
        );
        assert_eq!(svc.user.as_deref(), Some(USER));
        assert_eq!(svc.ready, Readiness::Tcp { port: 8090 });
        assert!(svc.required);
        assert_eq!(svc.announce, None);
        assert_eq!(inputs.service(true).announce, Some(8090));
        inputs.config.address = "10.0.0.5".into();
        assert_eq!(inputs.service(false).ready, Readiness::Started);
        assert_eq!(
            LockServerInputs::config_in_tree(),
            "usr/etc/berth/fleet-lock.toml"
        );
    }
}
