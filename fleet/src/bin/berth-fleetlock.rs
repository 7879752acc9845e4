//! berth-fleetlock: a FleetLock server (Fedora CoreOS's reboot-slot
//! protocol) whose only state is one etcd key per group. It serves
//! Zincati, airlock's clients and Berth's update agent alike; it does not
//! run etcd, and it does not authenticate clients.
//!
//! Exit status: 2 for a bad command line or configuration, 1 when it
//! cannot serve (address in use…).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use berth_fleet::lock::{self, Config};
use clap::Parser;

/// Serve FleetLock reboot slots from etcd.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The configuration file (TOML: [service], [etcd3], [[lock.groups]]).
    #[arg(long, default_value = lock::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Listen on this address instead of the configured one.
    #[arg(long)]
    address: Option<String>,
    /// Listen on this port instead of the configured one.
    #[arg(long)]
    port: Option<u16>,
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(&cli.config).context("loading the configuration")?;
    if let Some(a) = &cli.address {
        config.address = a.clone();
    }
    if let Some(p) = cli.port {
        config.port = p;
    }
    // Unreadable TLS or password files are configuration errors too.
    berth_fleet::etcd::Client::new(&config.etcd)
        .with_context(|| format!("checking [etcd3] of {}", cli.config.display()))?;
    Ok(config)
}

fn run(config: Config) -> anyhow::Result<()> {
    let groups: Vec<String> = config
        .groups
        .iter()
        .map(|g| format!("{} ({} slot(s))", g.name, g.slots))
        .collect();
    let endpoints = config.etcd.endpoints.join(", ");
    let nofile = raise_nofile_limit();
    if nofile < lock::server::MAX_CONNECTIONS as u64 {
        eprintln!(
            "berth-fleetlock: RLIMIT_NOFILE is {nofile}: past that many open connections, new ones wait"
        );
    }
    let server = lock::serve(config).context("starting the server")?;
    eprintln!(
        "berth-fleetlock: listening on http://{}/ for groups {}; etcd at {endpoints}",
        server.local_addr(),
        groups.join(", ")
    );
    server.wait();
    anyhow::bail!("the server stopped accepting connections")
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as `berth serve`
/// does: a fleet keeps a connection per host open, more than the usual
/// soft limit of 1,024. Returns the soft limit in force afterwards.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let now = if limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        raised
    } else {
        limit
    };
    now.current.unwrap_or(u64::MAX)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-fleetlock: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-fleetlock: {e:#}");
            ExitCode::from(1)
        }
    }
}
