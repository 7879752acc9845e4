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
    /// Every lock group's slots and holders.
    Locks,
    /// An operator's release of one host's slot.
    Unlock {
        /// The group.
        group: String,
        /// The holder's id.
        id: String,
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
    match &opts.command {
        FleetCommand::Locks => locks(client, opts),
        FleetCommand::Unlock { group, id } => unlock(client, opts, group, id),
        FleetCommand::Status => view(&client, opts, None),
        FleetCommand::Services { name } => view(&client, opts, Some(name.as_deref())),
    }
}

/// `berth fleet status` (`services` None) and `berth fleet services
/// [NAME]` (`services` Some).
fn view(
    client: &Client,
    opts: &FleetOpts,
    services: Option<Option<&str>>,
) -> anyhow::Result<String> {
    if let Some(Some(n)) = services {
        registry::check_segment("service name", n).map_err(|e| InputError(e.to_string()))?;
    }
    let view = FleetView::read(client, registry::unix_now())
        .with_context(|| format!("reading the fleet registry from {}", opts.etcd.join(", ")))?;
    Ok(match (services, opts.json) {
        (None, false) => view.text(),
        (None, true) => serde_json::to_string_pretty(&view)? + "\n",
        (Some(name), false) => view.services_text(name),
        (Some(name), true) => {
            let picked: std::collections::BTreeMap<_, _> = view
                .services
                .iter()
                .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
                .collect();
            serde_json::to_string_pretty(&picked)? + "\n"
        }
    })
}

/// `berth fleet locks`: the lock server's state, read from etcd.
fn locks(client: berth_fleet::etcd::Client, opts: &FleetOpts) -> anyhow::Result<String> {
    let store = berth_fleet::lock::store::Store::new(client);
    let groups = store
        .groups()
        .with_context(|| format!("reading the FleetLock groups from {}", opts.etcd.join(", ")))?;
    let now = registry::unix_now();
    if opts.json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))? + "\n");
    }
    if groups.is_empty() {
        return Ok("no FleetLock groups in etcd yet\n".into());
    }
    let mut out = String::new();
    for g in &groups {
        out.push_str(&format!(
            "group {}: {} of {} slots held\n",
            g.group,
            g.holders.len(),
            g.slots
        ));
        for h in &g.holders {
            out.push_str(&format!(
                "  {}  since {}\n",
                h.id,
                berth_fleet::view::age(now.saturating_sub(h.since))
            ));
        }
    }
    Ok(out)
}

/// `berth fleet unlock GROUP ID`: releases the slot by compare-and-swap.
fn unlock(
    client: berth_fleet::etcd::Client,
    opts: &FleetOpts,
    group: &str,
    id: &str,
) -> anyhow::Result<String> {
    if !berth_fleet::protocol::valid_group(group) {
        return Err(InputError(format!(
            "{group:?} is not a FleetLock group (letters, digits, '.' and '-')"
        ))
        .into());
    }
    if id.is_empty() {
        return Err(InputError("the host id is empty".into()).into());
    }
    let store = berth_fleet::lock::store::Store::new(client);
    let done = store.release(group, id).with_context(|| {
        format!(
            "releasing {id}'s slot in {group} through {}",
            opts.etcd.join(", ")
        )
    })?;
    let text = match done {
        berth_fleet::lock::store::Unlocked::Released => {
            format!("released {id}'s slot in group {group}")
        }
        berth_fleet::lock::store::Unlocked::NotHeld => {
            format!("{id} holds no slot in group {group}: nothing to release")
        }
    };
    Ok(if opts.json {
        serde_json::to_string(
            &serde_json::json!({"group": group, "id": id, "released": matches!(done, berth_fleet::lock::store::Unlocked::Released), "message": text}),
        )? + "\n"
    } else {
        text + "\n"
    })
}
