//! `berth serve REPO`: serves an OSTree archive repository over HTTP so
//! hosts can `berthctl upgrade` from it.
//!
//! An archive repository is plain static files, so any web server works
//! (nginx, `python3 -m http.server`); this one exists so that the build
//! machine needs nothing else. It answers GET and HEAD for regular files
//! under the repository and nothing more: no directory listings, no
//! ranges, no TLS, no HTTP/2 (libostree's curl asks for h2c with an
//! `Upgrade` header and falls back to HTTP/1.1 keep-alive on its own).
//!
//! It faces the network, so everything a client can make it hold is
//! bounded ([`Limits`]): connections at once, the size of a request head,
//! the time a request head may take to arrive (which is also how long an
//! idle keep-alive connection is kept), and the time a response may stall
//! because the client stopped reading. Files are opened beneath the
//! repository without following any symlink ([`open`]).
//!
//! The HTTP/1 protocol is hyper's on a tokio runtime rather than a
//! hand-written parser: hyper already bounds the head (431 and close),
//! times out slow heads and idle keep-alive connections, and handles
//! keep-alive, pipelining and request bodies correctly; and one runtime
//! holds thousands of idle connections in a few threads and a few KiB
//! each, where the thread-per-connection server this replaced needed a
//! thread per socket and read a header line of any length into memory.
//! It costs 1.0 MB of the `berth` binary (5.6 to 6.7 MB); docs/upgrades.md
//! has what `bench/serve` measured of both.

mod body;
mod open;
mod respond;
mod server;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::error::InputError;

pub use open::Root;
pub use server::serve;

/// What `berth serve` is asked to do (the command line maps its flags
/// onto this; `crate::cli` documents each one).
#[derive(Debug, Clone)]
pub struct ServeOpts {
    /// The OSTree archive repository (e.g. out/repo).
    pub repo: PathBuf,
    /// TCP port (0: any free port, printed on stderr).
    pub port: u16,
    /// Address to listen on.
    pub bind: String,
    /// Do not log requests.
    pub quiet: bool,
    /// Connections served at once (at least 1).
    pub max_connections: u32,
    /// Seconds a client has to send a complete request head (at least 1).
    pub header_timeout: u64,
    /// Seconds a response may make no progress (at least 1).
    pub send_timeout: u64,
}

/// What one client can make the server hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; the accept loop waits for a free slot.
    pub max_connections: usize,
    /// Time for a complete request head (and so for an idle keep-alive
    /// connection).
    pub header_timeout: Duration,
    /// Time a response may make no progress.
    pub send_timeout: Duration,
}

/// Largest request head (request line and headers) answered; a larger
/// complete head gets 431. libostree's requests are a few hundred bytes;
/// 8 KiB is what Apache allows a header line.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// File descriptors kept for everything but connections (standard
/// streams, the listener, the runtime's epoll and wake-up descriptors).
const RESERVED_FDS: u64 = 64;

impl Limits {
    /// The limits `opts` asks for, with the connection limit lowered to
    /// what `nofile` descriptors hold: each connection may use two (its
    /// socket and the file it is sending).
    pub fn new(opts: &ServeOpts, nofile: u64) -> Limits {
        let fit = nofile.saturating_sub(RESERVED_FDS) / 2;
        Limits {
            max_connections: u64::from(opts.max_connections).min(fit).max(1) as usize,
            header_timeout: Duration::from_secs(opts.header_timeout),
            send_timeout: Duration::from_secs(opts.send_timeout),
        }
    }
}

/// Runs `berth serve` until killed.
pub fn run(opts: &ServeOpts) -> anyhow::Result<()> {
    if !opts.repo.join("config").is_file() || !opts.repo.join("objects").is_dir() {
        return Err(InputError(format!(
            "{} is not an OSTree repository",
            opts.repo.display()
        ))
        .into());
    }
    let root =
        Root::open(&opts.repo).with_context(|| format!("opening {}", opts.repo.display()))?;
    let nofile = raise_nofile_limit();
    let limits = Limits::new(opts, nofile);
    if limits.max_connections < opts.max_connections as usize {
        eprintln!(
            "berth: at most {} connections at once (RLIMIT_NOFILE is {nofile})",
            limits.max_connections
        );
    }
    let listener = std::net::TcpListener::bind((opts.bind.as_str(), opts.port))
        .with_context(|| format!("listening on {}:{}", opts.bind, opts.port))?;
    eprintln!(
        "berth: serving {} on http://{}",
        opts.repo.display(),
        listener.local_addr()?
    );
    serve(listener, root, limits, !opts.quiet)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (the usual
/// soft limit, 1024, holds fewer sockets than the connection limit) and
/// returns the soft limit in force afterwards.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_connections: u32) -> ServeOpts {
        ServeOpts {
            repo: PathBuf::from("repo"),
            port: 0,
            bind: "127.0.0.1".into(),
            quiet: true,
            max_connections,
            header_timeout: 15,
            send_timeout: 30,
        }
    }

    #[test]
    fn the_connection_limit_fits_the_descriptor_limit() {
        assert_eq!(Limits::new(&opts(4096), 1_048_576).max_connections, 4096);
        assert_eq!(Limits::new(&opts(4096), 1024).max_connections, 480);
        assert_eq!(Limits::new(&opts(4096), 10).max_connections, 1);
        assert_eq!(
            Limits::new(&opts(8), 1024).header_timeout,
            Duration::from_secs(15)
        );
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(Some(raise_nofile_limit()), hard.or(Some(u64::MAX)));
    }
}
