//! `berth fleet`: the fleet as its etcd holds it, from any machine that
//! reaches etcd. `status` prints one line per live host and a summary
//! (hosts per version, groups halted by a failed update, hosts gone);
//! `services` lists announced service endpoints. Both read the registry
//! with `berth_fleet::view` (three prefix reads, whatever the fleet's size)
//! and change nothing.
//!
//! Exit codes: 0 done, 1 etcd failed, 2 a usage error (a bad endpoint).

use std::process::ExitCode;

use anyhow::Context;
use berth_fleet::etcd::{Client, EtcdConfig, EtcdError};
use berth_fleet::registry;
use berth_fleet::view::FleetView;

use crate::error::InputError;

/// What `berth fleet` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetCommand {
    /// Every live host and the summary.
    Status,
    /// Announced endpoints, of one service or all.
    Services {
        /// Only this service.
        name: Option<String>,
    },
}

/// Options of `berth fleet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOpts {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// Print JSON instead of text.
    pub json: bool,
    /// What to do.
    pub command: FleetCommand,
}

/// An etcd client for `endpoints`; a malformed endpoint is the user's error.
pub fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    Client::new(&EtcdConfig::with_endpoints(endpoints.iter().cloned())).map_err(|e| match e {
        EtcdError::Config(m) => anyhow::Error::new(InputError(m)),
        other => anyhow::Error::new(other),
    })
}

/// Runs `berth fleet …`, printing to stdout.
pub fn run(opts: &FleetOpts) -> anyhow::Result<ExitCode> {
    print!("{}", render(opts)?);
    Ok(ExitCode::SUCCESS)
}

/// What `berth fleet …` prints.
pub fn render(opts: &FleetOpts) -> anyhow::Result<String> {
    let client = client(&opts.etcd)?;
    if let FleetCommand::Services { name: Some(n) } = &opts.command {
        registry::check_segment("service name", n).map_err(|e| InputError(e.to_string()))?;
    }
    let view = FleetView::read(&client, registry::unix_now())
        .with_context(|| format!("reading the fleet registry from {}", opts.etcd.join(", ")))?;
    Ok(match (&opts.command, opts.json) {
        (FleetCommand::Status, false) => view.text(),
        (FleetCommand::Status, true) => serde_json::to_string_pretty(&view)? + "\n",
        (FleetCommand::Services { name }, false) => view.services_text(name.as_deref()),
        (FleetCommand::Services { name }, true) => {
            let picked: std::collections::BTreeMap<_, _> = view
                .services
                .iter()
                .filter(|(n, _)| name.as_ref().is_none_or(|want| want == *n))
                .collect();
            serde_json::to_string_pretty(&picked)? + "\n"
        }
    })
}
