//! Update servers for upgrade tests: a copy of a test image's OSTree
//! repository and of its signing key (kept beside it), new versions built
//! on top of it (so they get a parent, a static delta and the same key),
//! served over HTTP by `berth serve` on a free port that the guest reaches
//! as 10.0.2.100:8080 (a QEMU guest forward). Tests can also play a
//! hostile server: point a ref anywhere and write the summary signed or
//! not.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::run::PortForward;

use crate::command::{run, run_stdout, run_text};
use crate::fixture::{berth_bin, workspace_root};
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

/// The port the test images' `[update] url` names on 10.0.2.100.
pub const UPDATE_PORT: u16 = 8080;

/// An update repository being served; the server stops on drop.
pub struct UpdateServer {
    /// The repository (a private copy).
    pub repo: PathBuf,
    /// Where `berth build` puts the images of new versions.
    pub out: PathBuf,
    /// The server's request log.
    pub log: PathBuf,
    /// The host port it listens on.
    pub port: u16,
    server: Child,
    _dir: tempfile::TempDir,
}

impl UpdateServer {
    /// Copies the repository next to `image` (a fixture's `repo/`), and
    /// its key directory when it has one, and serves the repository.
    pub fn start(image: &Path) -> Result<UpdateServer> {
        let dir = tempfile::tempdir().map_err(Error::io("creating the update directory"))?;
        let repo = dir.path().join("repo");
        let source = image
            .parent()
            .map(|p| p.join("repo"))
            .ok_or_else(|| Error::Setup("the image has no directory".into()))?;
        copy_dir(&source, &repo)?;
        let key = key_dir(&source)?;
        if key.is_dir() {
            copy_dir(&key, &key_dir(&repo)?)?;
        }
        let port = free_port()?;
        let log = dir.path().join("serve.log");
        let log_file = std::fs::File::create(&log).map_err(Error::io("creating the server log"))?;
        let server = Command::new(berth_bin())
            .arg("serve")
            .arg(&repo)
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(Error::io("starting berth serve"))?;
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            &format!("berth serve to listen on 127.0.0.1:{port}"),
            || match TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Ok(Check::Done(())),
                Err(e) => Ok(Check::NotYet(e.to_string())),
            },
        )?;
        let out = dir.path().join("out");
        Ok(UpdateServer {
            repo,
            out,
            log,
            port,
            server,
            _dir: dir,
        })
    }

    /// Builds `manifest` (relative to the workspace) into the served
    /// repository, as the next commit of its ref. Returns the build output.
    pub fn publish(&self, manifest: &Path) -> Result<String> {
        let manifest = workspace_root().join(manifest);
        run_text(
            Command::new(berth_bin())
                .arg("build")
                .arg(&manifest)
                .arg("--output")
                .arg(&self.out)
                .arg("--repo")
                .arg(&self.repo),
        )
    }

    /// Runs `berth rollout` on the served repository with `args` (`--ref`
    /// and the rest); returns its output.
    pub fn rollout(&self, args: &[&str]) -> Result<String> {
        run_text(
            Command::new(berth_bin())
                .arg("rollout")
                .arg(&self.repo)
                .args(args),
        )
    }

    /// The commit `ostree_ref` points at in the served repository.
    pub fn rev(&self, ostree_ref: &str) -> Result<String> {
        let out = ostree(&self.repo, &["rev-parse", ostree_ref])?;
        Ok(out.trim().to_string())
    }

    /// Does what a hostile or broken server could: points `ostree_ref` at
    /// `commit` (any commit in the repository) and regenerates the summary,
    /// unsigned ([`UpdateServer::sign_summary`] signs it).
    pub fn point_ref(&self, ostree_ref: &str, commit: &str) -> Result<()> {
        ostree(
            &self.repo,
            &["refs", "--force", &format!("--create={ostree_ref}"), commit],
        )?;
        ostree(&self.repo, &["summary", "-u"]).map(|_| ())
    }

    /// Regenerates the summary signed by the key `(GnuPG home, key id)`,
    /// or by the repository's own key (every key in it). (The ostree
    /// command of Debian 12 cannot sign an existing summary.)
    pub fn sign_summary(&self, key: Option<(&Path, &str)>) -> Result<()> {
        let (home, ids) = match key {
            Some((home, id)) => (home.to_path_buf(), vec![id.to_string()]),
            None => {
                let signer = berth::signing::repository_key(&self.repo)
                    .map_err(|e| Error::Setup(format!("the repository's key: {e:#}")))?;
                (
                    key_dir(&self.repo)?.join(berth::signing::GNUPG_DIR),
                    signer.key_ids().to_vec(),
                )
            }
        };
        let mut args = vec!["summary".to_string(), "-u".to_string()];
        args.extend(ids.iter().map(|id| format!("--gpg-sign={id}")));
        args.push(format!("--gpg-homedir={}", home.display()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = ostree(&self.repo, &args);
        // Best effort: a left-over agent only costs a process.
        let _ = run(Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "gpg-agent"]));
        result.map(|_| ())
    }

    /// The requests served so far, one line each (`GET /path 200`).
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The forward that makes the guest's 10.0.2.100:8080 this server.
    pub fn forward(&self) -> PortForward {
        PortForward {
            host: self.port,
            guest: UPDATE_PORT,
        }
    }
}

impl Drop for UpdateServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The commit a `berth build` made, from its output (the `commit` line).
pub fn built_commit(build_output: &str) -> Option<String> {
    build_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit"))
        .and_then(|c| c.split_whitespace().next())
        .map(String::from)
}

/// A repository's key directory, as `berth build` names it.
fn key_dir(repo: &Path) -> Result<PathBuf> {
    berth::signing::key_dir(repo).map_err(|e| Error::Setup(format!("{e:#}")))
}

/// `cp -a source dest`.
fn copy_dir(source: &Path, dest: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(source).arg(dest))?;
    Ok(())
}

/// Runs the `ostree` command on `repo`; its stdout.
fn ostree(repo: &Path, args: &[&str]) -> Result<String> {
    run_stdout(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(args),
    )
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (for an
/// update server, or a host port to forward into a guest).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(Error::io("finding a free port"))?;
    let port = l
        .local_addr()
        .map_err(Error::io("finding a free port"))?
        .port();
    Ok(port)
}
