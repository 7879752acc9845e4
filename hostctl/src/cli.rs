//! The `berthctl` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_hostapi::control::{Request, ShutdownAction};
use clap::{Parser, Subcommand};

/// Manage this Berth host: services, logs, OS versions.
#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about)]
pub struct Cli {
    /// berth-init's control socket.
    #[arg(long, default_value = berth_hostapi::control::CONTROL_SOCKET_PATH, global = true)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The verbs of `berthctl`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The deployments of this host: booted, pending, rollback.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch and deploy the next OS version; it boots next, on trial.
    Upgrade {
        /// Only say whether a new version is available.
        #[arg(long)]
        check: bool,
        /// Reboot into the new version when it is deployed.
        #[arg(long)]
        reboot: bool,
        /// Deploy even a version that failed to boot on this host before.
        #[arg(long)]
        force: bool,
        /// Accept a version older than the booted one (refused otherwise,
        /// so a replayed old release cannot take a host back).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The update agent: what it does, and holding it still.
    Agent {
        /// What to do.
        #[command(subcommand)]
        command: AgentCmd,
    },
    /// The endpoints of a service announced in the fleet registry:
    /// `address:port host-id` lines (none when nothing is announced).
    Discover {
        /// The service's name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The fleet registry (berth-init runs it as the fleet-registry service).
    #[command(hide = true)]
    Fleet {
        /// What to do.
        #[command(subcommand)]
        command: FleetCmd,
    },
    /// Make the previous deployment the default.
    Rollback {
        /// Reboot into it.
        #[arg(long)]
        reboot: bool,
    },
    /// Reconcile libostree and the ESP with what actually booted (run by
    /// berth-init at every boot).
    #[command(hide = true)]
    BootCheck,
    /// Apply per-host data (NoCloud seed or QEMU fw_cfg) once; run by
    /// berth-init at every boot before the services.
    #[command(hide = true)]
    Provision,
    /// The supervised services and their state.
    Services {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A service's log.
    Logs {
        /// The service.
        name: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// How many old lines to print first.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
    /// Stop and start a service.
    Restart {
        /// The service.
        name: String,
    },
    /// Stop every service and reboot.
    Reboot,
    /// Stop every service and power off.
    Poweroff,
    /// Stop every service and halt.
    Halt,
}

/// The verbs of `berthctl agent`.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// What the agent is doing and why.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hold the host still: no checks, deploys or reboots (kept across
    /// reboots) until `resume`.
    Pause,
    /// Let the agent work again.
    Resume,
    /// Run the agent (berth-init runs it as the update-agent service).
    #[command(hide = true)]
    Run,
}

/// The verbs of `berthctl fleet`.
#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Keep this host's record and its ready announced services in etcd
    /// until SIGTERM.
    Run,
}

/// Runs one verb.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.socket;
    match cli.command {
        Cmd::Status { json } => crate::status::run(json),
        Cmd::Upgrade {
            check,
            reboot,
            force,
            allow_downgrade,
        } => {
            let opts = crate::upgrade::UpgradeOpts {
                check,
                force,
                allow_downgrade,
                ..Default::default()
            };
            let (outcome, code) = crate::upgrade::run(Path::new("/"), &opts)?;
            let pending = matches!(
                outcome,
                crate::upgrade::Outcome::Deployed { .. } | crate::upgrade::Outcome::Pending { .. }
            );
            if reboot && pending {
                return shutdown(&socket, ShutdownAction::Reboot);
            }
            Ok(code)
        }
        Cmd::Agent { command } => match command {
            AgentCmd::Status { json } => crate::agent::status(Path::new("/"), json),
            AgentCmd::Pause => crate::agent::set_paused(Path::new("/"), true),
            AgentCmd::Resume => crate::agent::set_paused(Path::new("/"), false),
            AgentCmd::Run => crate::agent::run(Path::new("/"), &socket),
        },
        Cmd::Discover { name, json } => crate::fleet::discover(Path::new("/"), &name, json),
        Cmd::Fleet {
            command: FleetCmd::Run,
        } => crate::fleet::run(Path::new("/"), &socket),
        Cmd::Rollback { reboot } => {
            crate::rollback::run(Path::new("/"))?;
            if reboot {
                return shutdown(&socket, ShutdownAction::Reboot);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Provision => {
            crate::provision::run(Path::new("/"))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BootCheck => {
            crate::bootcheck::run(Path::new("/"))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Services { json } => crate::control::services(&socket, json),
        Cmd::Logs {
            name,
            follow,
            lines,
        } => crate::control::logs(&socket, &name, lines, follow),
        Cmd::Restart { name } => crate::control::simple(&socket, &Request::Restart { name }),
        Cmd::Reboot => shutdown(&socket, ShutdownAction::Reboot),
        Cmd::Poweroff => shutdown(&socket, ShutdownAction::Poweroff),
        Cmd::Halt => shutdown(&socket, ShutdownAction::Halt),
    }
}

fn shutdown(socket: &Path, action: ShutdownAction) -> anyhow::Result<ExitCode> {
    crate::control::simple(socket, &Request::Shutdown { action })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verbs() {
        let c = Cli::try_parse_from(["berthctl", "logs", "web", "-f", "-n", "5"]).unwrap();
        assert!(
            matches!(c.command, Cmd::Logs { ref name, follow: true, lines: 5 } if name == "web")
        );
        let c = Cli::try_parse_from(["berthctl", "status", "--json"]).unwrap();
        assert!(matches!(c.command, Cmd::Status { json: true }));
        assert!(Cli::try_parse_from(["berthctl", "frobnicate"]).is_err());
        let c = Cli::try_parse_from(["berthctl", "agent", "status", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Cmd::Agent {
                command: AgentCmd::Status { json: true }
            }
        ));
        assert!(Cli::try_parse_from(["berthctl", "agent", "pause"]).is_ok());
        let c = Cli::try_parse_from(["berthctl", "discover", "web", "--json"]).unwrap();
        assert!(matches!(c.command, Cmd::Discover { ref name, json: true } if name == "web"));
        assert!(matches!(
            Cli::try_parse_from(["berthctl", "fleet", "run"])
                .unwrap()
                .command,
            Cmd::Fleet {
                command: FleetCmd::Run
            }
        ));
        let c = Cli::try_parse_from(["berthctl", "upgrade", "--allow-downgrade"]).unwrap();
        assert!(matches!(
            c.command,
            Cmd::Upgrade {
                allow_downgrade: true,
                force: false,
                ..
            }
        ));
    }
}
