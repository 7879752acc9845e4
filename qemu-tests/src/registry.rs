//! A real, local OCI registry for container tests: Debian's
//! `docker-registry` (distribution 2.8) serving plain HTTP on
//! 127.0.0.1:[`registry_port`] with file-system storage in a temporary
//! directory, and pushes into it with `skopeo copy`.
//!
//! The port is fixed (a test manifest names it, and the image fixture
//! cache is keyed by the manifest text), so only one registry runs at a
//! time on a machine: [`Registry::start`] takes a lock file in the
//! temporary directory for as long as the registry lives, and other test
//! processes wait for it. The registry is needed only while an image is
//! built; it stops when the [`Registry`] is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

use crate::command::run;
use crate::wait::{Check, wait_until};
use crate::{Error, Result, http};

/// The registry program (package docker-registry).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The default port; `BERTH_TEST_REGISTRY_PORT` overrides it. Not 5000:
/// installing Debian's docker-registry starts its own service there.
pub const DEFAULT_PORT: u16 = 5055;
/// How long the registry may take to answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The port test registries listen on.
pub fn registry_port() -> u16 {
    std::env::var("BERTH_TEST_REGISTRY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

/// The registry's configuration: plain HTTP on loopback, storage in
/// `storage`, no authentication (unlike the package's default config).
pub fn config_yaml(port: u16, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    )
}

/// A running registry; stopped (and its storage deleted) on drop.
pub struct Registry {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _lock: File,
}

impl Registry {
    /// Starts a registry on 127.0.0.1:`port`, waiting first for any other
    /// test registry on that port to stop.
    pub fn start(port: u16) -> Result<Registry> {
        if !Path::new(REGISTRY_BIN).is_file() {
            return Err(Error::Setup(format!(
                "{REGISTRY_BIN} is missing: install the docker-registry package (scripts/install-deps)"
            )));
        }
        let lock_path = std::env::temp_dir().join(format!("berth-test-registry-{port}.lock"));
        let lock = File::create(&lock_path).map_err(Error::io("creating the registry lock"))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::Setup(format!("locking {}: {e}", lock_path.display())))?;
        if http::get(port, "/v2/", Duration::from_secs(2)).is_ok() {
            return Err(Error::Setup(format!(
                "something already answers on 127.0.0.1:{port}: stop it or set BERTH_TEST_REGISTRY_PORT"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .map_err(Error::io("creating the registry directory"))?;
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(port, &dir.path().join("storage")))
            .map_err(Error::io("writing the registry config"))?;
        let log = dir.path().join("registry.log");
        let log_file = File::create(&log).map_err(Error::io("creating the registry log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(Error::io("opening the registry log"))?,
            )
            .stderr(log_file)
            .spawn()
            .map_err(|e| Error::Setup(format!("starting {REGISTRY_BIN}: {e}")))?;
        let mut registry = Registry {
            port,
            child,
            log,
            _dir: dir,
            _lock: lock,
        };
        registry.wait_until_up()?;
        Ok(registry)
    }

    fn wait_until_up(&mut self) -> Result<()> {
        let port = self.port;
        let child = &mut self.child;
        let up = wait_until(
            START_TIMEOUT,
            Duration::from_millis(100),
            "the registry to answer /v2/",
            || {
                let seen = match http::get(port, "/v2/", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => return Ok(Check::Done(())),
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => e.to_string(),
                };
                match child.try_wait().ok().flatten() {
                    Some(status) => Err(Error::Setup(format!("it exited ({status})"))),
                    None => Ok(Check::NotYet(seen)),
                }
            },
        );
        up.map_err(|e| {
            Error::Setup(format!(
                "the registry on 127.0.0.1:{port} did not come up ({e}); its log:\n{}",
                self.log_text()
            ))
        })
    }

    /// The registry's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `docker://` reference of `name` (`demo/httpd:1`) here.
    pub fn reference(&self, name: &str) -> String {
        format!("docker://127.0.0.1:{}/{name}", self.port)
    }

    /// Copies the image `source` (any skopeo reference, e.g. `oci:DIR:TAG`)
    /// into the registry as `name`; returns its `docker://` reference.
    pub fn push(&self, source: &str, name: &str) -> Result<String> {
        let dest = self.reference(name);
        copy(source, &dest, &["--dest-tls-verify=false"])?;
        Ok(dest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `skopeo copy [extra] SOURCE DEST`, with its output in the error.
pub fn copy(source: &str, dest: &str, extra: &[&str]) -> Result<()> {
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .args(extra)
        .arg(source)
        .arg(dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_listens_on_loopback_without_auth() {
        let yaml = config_yaml(5055, Path::new("/tmp/x"));
        assert!(yaml.contains("addr: 127.0.0.1:5055"));
        assert!(yaml.contains("rootdirectory: /tmp/x"));
        assert!(!yaml.contains("auth"));
    }
}
