//! Starting one process of a service: argv, a small fixed environment plus
//! the service's, working directory, credentials, a new session, stdin from
//! /dev/null and stdout+stderr into one pipe (or a terminal for the debug
//! shell).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::pipe::PipeFlags;

use crate::supervisor::users::Identity;
use crate::sys::ffi::{self, ChildSetup};

/// PATH for services (what Debian's login gives root).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a process's output goes.
#[derive(Debug)]
pub enum Output<'a> {
    /// A new pipe; the read end is returned to the caller.
    Pipe,
    /// Nowhere (probes).
    Null,
    /// A terminal that becomes stdin, stdout, stderr and the controlling
    /// terminal (the debug shell).
    Tty(&'a Path),
}

/// What to run.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// Program and arguments (the program is looked up in PATH).
    pub argv: &'a [String],
    /// Extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub working_dir: Option<&'a str>,
    /// Run as this identity (None: as berth-init).
    pub identity: Option<&'a Identity>,
    /// Output handling.
    pub output: Output<'a>,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, also its process group and session id.
    pub pid: i32,
    /// The read end of its output pipe, non-blocking.
    pub output: Option<OwnedFd>,
}

fn open_tty(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Starts the process. The child is not waited for here: PID 1 reaps every
/// child in one place ([`crate::sys::reaper`]).
pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Spawned> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    cmd.env("PATH", DEFAULT_PATH);
    cmd.env("TERM", "linux");
    match spec.identity {
        Some(id) => {
            cmd.env("HOME", &id.home);
            if let Some(name) = &id.name {
                cmd.env("USER", name).env("LOGNAME", name);
            }
        }
        None => {
            cmd.env("HOME", "/root");
        }
    }
    cmd.envs(spec.env);
    cmd.current_dir(spec.working_dir.unwrap_or("/"));

    let mut read_end = None;
    let mut controlling_tty = false;
    match spec.output {
        Output::Pipe => {
            let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
            rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK)?;
            let w2 = w.try_clone()?;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(w))
                .stderr(Stdio::from(w2));
            read_end = Some(r);
        }
        Output::Null => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        Output::Tty(path) => {
            let tty = open_tty(path)?;
            cmd.stdin(Stdio::from(tty.try_clone()?))
                .stdout(Stdio::from(tty.try_clone()?))
                .stderr(Stdio::from(tty));
            controlling_tty = true;
        }
    }
    ffi::configure_child(
        &mut cmd,
        ChildSetup {
            new_session: true,
            controlling_tty,
            credentials: spec.identity.map(|i| i.credentials.clone()),
        },
    );
    let child = cmd.spawn()?;
    // `cmd` (and with it the pipe's write ends) is dropped on return, so the
    // read end sees EOF once the service and its children are gone.
    Ok(Spawned {
        pid: child.id() as i32,
        output: read_end,
    })
}

/// Whether `path` is an executable file (for optional commands).
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
