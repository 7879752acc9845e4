//! The host's side of the fleet registry: `berthctl fleet run` (the
//! `fleet-registry` service) keeps this host's record and its announced,
//! ready services in etcd under a lease; `berthctl discover NAME` lists a
//! service's endpoints.
//!
//! The etcd side (records, keys, the lease, the loop) is
//! `berth_fleet::registry`; this module collects what the record says
//! (hostname, addresses, the booted deployment, the update agent's state,
//! the last failed commit, berth-init's service states) and handles
//! SIGTERM (revoke the lease, exit 0).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_fleet::etcd::{Client, EtcdConfig};
use berth_fleet::registry::{self, HostRecord, Registrar, RegistrarConfig, ServiceRecord};
use berth_hostapi::config::{HOST_CONFIG_PATH, HostConfig};
use berth_hostapi::fleet::FleetConfig;
use serde_json::Value;

/// The etcd client's configuration for a host's fleet settings.
pub fn etcd_config(fleet: &FleetConfig) -> EtcdConfig {
    EtcdConfig {
        endpoints: fleet.etcd.clone(),
        ca_file: fleet.ca_file.as_ref().map(Into::into),
        cert_file: fleet.cert_file.as_ref().map(Into::into),
        key_file: fleet.key_file.as_ref().map(Into::into),
        username: fleet.username.clone(),
        password_file: fleet.password_file.as_ref().map(Into::into),
        ..EtcdConfig::default()
    }
}

fn host_config(root: &Path) -> HostConfig {
    HostConfig::load(&root.join(HOST_CONFIG_PATH.trim_start_matches('/'))).unwrap_or_default()
}

/// The fleet settings in force on the host at `root`, or an error saying
/// there are none.
pub fn settings(root: &Path, config: &HostConfig) -> anyhow::Result<FleetConfig> {
    match berth_hostapi::fleet::effective(root, config.fleet.as_ref()) {
        Ok(Some(f)) if !f.etcd.is_empty() => Ok(f),
        Ok(_) => bail!(
            "this host has no fleet: the image has no [fleet] and {} lists no etcd",
            berth_hostapi::fleet::FLEET_CONFIG_PATH
        ),
        Err(e) => bail!("reading the fleet settings: {e}"),
    }
}

/// The host's local IPv4 addresses from `/proc/net/fib_trie` (each
/// `/32 host LOCAL` leaf names one), loopback left out, in order, once each.
pub fn ipv4_addresses(fib_trie: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last_leaf: Option<&str> = None;
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last_leaf = Some(ip.trim());
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last_leaf.take() {
                let ok = ip
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| !a.is_loopback());
                if ok && !out.iter().any(|a| a == ip) {
                    out.push(ip.to_string());
                }
            }
        }
    }
    out
}

/// The host's global IPv6 addresses from `/proc/net/if_inet6` (scope 00).
pub fn ipv6_addresses(if_inet6: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(hex), Some(scope)) = (f.first(), f.get(3)) else {
            continue;
        };
        if *scope != "00" || hex.len() != 32 {
            continue;
        }
        let Ok(n) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let a = std::net::Ipv6Addr::from(n);
        if !a.is_loopback() {
            out.push(a.to_string());
        }
    }
    out
}

/// What the update agent publishes that the record repeats: its phase
/// (`state`) and its `fleet_lock` object (`group`, `holding`, `reason`),
/// each absent when the agent does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFacts {
    /// The agent's phase.
    pub state: Option<String>,
    /// The FleetLock group.
    pub group: Option<String>,
    /// Whether it holds a reboot slot.
    pub holding: bool,
    /// Why it keeps the slot, when it kept it after a failed update
    /// (the agent's `kept`): what halts the group. A slot held for a
    /// reboot still to come has no reason here.
    pub reason: Option<String>,
}

/// [`AgentFacts`] from the agent's status file's JSON; tolerant of
/// anything missing or of another shape.
pub fn agent_facts(status: &Value) -> AgentFacts {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let lock = status.get("fleet_lock");
    AgentFacts {
        state: text(status.get("state")),
        group: text(lock.and_then(|l| l.get("group"))),
        holding: lock
            .and_then(|l| l.get("holding"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        reason: lock
            .filter(|l| l.get("kept").and_then(Value::as_bool) == Some(true))
            .and_then(|l| text(l.get("reason"))),
    }
}

/// The services `config` announces that are `ready` in `states`, at `address`.
pub fn ready_announced(
    config: &HostConfig,
    states: &[berth_hostapi::control::ServiceStatus],
    address: &str,
) -> Vec<ServiceRecord> {
    config
        .services
        .iter()
        .filter_map(|s| {
            let port = s.announce?;
            states
                .iter()
                .any(|st| st.name == s.name && st.state == "ready")
                .then(|| ServiceRecord {
                    name: s.name.clone(),
                    address: address.to_string(),
                    port,
                    ..ServiceRecord::default()
                })
        })
        .collect()
}

/// Everything the host record says now, and the ready announced services.
fn collect(
    root: &Path,
    socket: &Path,
    config: &HostConfig,
    id: &str,
) -> (HostRecord, Vec<ServiceRecord>) {
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    let mut addresses = ipv4_addresses(&read("proc/net/fib_trie"));
    addresses.extend(ipv6_addresses(&read("proc/net/if_inet6")));
    let booted = crate::status::collect(root)
        .ok()
        .and_then(|l| l.into_iter().find(|d| d.role == "booted"));
    let agent = std::fs::read(root.join(crate::agent::state::STATUS_PATH.trim_start_matches('/')))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| agent_facts(&v))
        .unwrap_or_default();
    let states = crate::control::service_states(socket).unwrap_or_default();
    let address = addresses
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let services = ready_announced(config, &states, &address);
    let record = HostRecord {
        id: id.to_string(),
        hostname,
        addresses,
        image: config.image.clone(),
        version: booted
            .as_ref()
            .map_or_else(|| config.version.clone(), |d| d.version.clone()),
        commit: booted
            .as_ref()
            .map(|d| d.commit.clone())
            .unwrap_or_default(),
        boot_state: booted.map_or_else(|| "unknown".into(), |d| d.boot_state),
        agent_state: agent.state,
        fleet_lock_group: agent.group,
        slot_held: agent.holding,
        slot_reason: agent.reason,
        last_failed_commit: crate::host::failed_commits(root).last().cloned(),
        ..HostRecord::default()
    };
    (record, services)
}

/// `berthctl fleet run`: registers this host until SIGTERM, then revokes
/// its lease (its keys go at once) and exits 0. etcd being down is
/// waited out, never a reason to exit.
pub fn run(root: &Path, socket: &Path) -> anyhow::Result<ExitCode> {
    let config = host_config(root);
    let fleet = settings(root, &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("handling SIGTERM")?;
    }
    let client = Client::new(&etcd_config(&fleet)).context("configuring the etcd client")?;
    let mut registrar = Registrar::new(
        client,
        RegistrarConfig {
            lease_ttl: fleet.lease_ttl_secs,
            ..RegistrarConfig::default()
        },
    );
    // The machine id is made at first boot, before the services; wait
    // for it rather than register under no name.
    let id = loop {
        if let Some(m) = berth_hostapi::machine_id::read(root) {
            break m.host_id().to_string();
        }
        if registry::sleep_unless(&stop, Duration::from_secs(5)) {
            return Ok(ExitCode::SUCCESS);
        }
    };
    eprintln!(
        "berthctl fleet: registering host {id} in {} (lease {}s)",
        fleet.etcd.join(", "),
        registrar.config().lease_ttl
    );
    let mut last_error = String::new();
    registry::run(
        &mut registrar,
        &stop,
        || collect(root, socket, &config, &id),
        |e| {
            // Once per distinct error: etcd down for an hour is one line.
            let text = e.to_string();
            if text != last_error {
                eprintln!("berthctl fleet: {text} (retrying)");
                last_error = text;
            }
        },
    );
    match registrar.revoke() {
        Ok(()) => eprintln!("berthctl fleet: stopped, lease revoked"),
        Err(e) => eprintln!(
            "berthctl fleet: stopped; revoking the lease failed ({e}): it expires by itself"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `berthctl discover NAME [--json]`: `address:port host-id` lines, none
/// when nothing is announced; exit 1 when etcd cannot be asked.
pub fn discover(root: &Path, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let fleet = settings(root, &host_config(root))?;
    let client = Client::new(&etcd_config(&fleet)).context("configuring the etcd client")?;
    let found = registry::discover(&client, name).with_context(|| {
        format!(
            "asking etcd ({}) for service {name:?}",
            fleet.etcd.join(", ")
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for s in &found {
            println!("{} {}", s.endpoint(), s.host);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_hostapi::config::Service;
    use berth_hostapi::control::ServiceStatus;

    const FIB_TRIE: &str = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
        \x20    +-- 127.0.0.0/8 2 0 2\n           |-- 127.0.0.1\n              /32 host LOCAL\n\
        \x20       |-- 10.0.2.0\n           /24 link UNICAST\n           |-- 10.0.2.15\n              /32 host LOCAL\n\
        \x20       |-- 10.0.2.255\n           /32 link BROADCAST\n\
        Local:\n           |-- 10.0.2.15\n              /32 host LOCAL\n           |-- 192.168.7.1\n              /32 host LOCAL\n";

    #[test]
    fn addresses_from_proc() {
        assert_eq!(ipv4_addresses(FIB_TRIE), ["10.0.2.15", "192.168.7.1"]);
        let inet6 = "fd000000000000000000000000000002 04 40 00 82     eth0\n\
                     fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                     00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(ipv6_addresses(inet6), ["fd00::2"]);
        assert!(ipv4_addresses("").is_empty());
    }

    #[test]
    fn agent_facts_are_read_by_name_and_tolerate_absence() {
        let v = serde_json::json!({"state": "idle", "fleet_lock": {"group": "web", "holding": true, "kept": true, "reason": "commit x failed"}});
        assert_eq!(
            agent_facts(&v),
            AgentFacts {
                state: Some("idle".into()),
                group: Some("web".into()),
                holding: true,
                reason: Some("commit x failed".into())
            }
        );
        assert_eq!(
            agent_facts(&serde_json::json!({"state": 3})),
            AgentFacts::default()
        );
    }

    #[test]
    fn only_ready_announced_services_are_published() {
        let config = HostConfig {
            services: vec![
                Service {
                    name: "web".into(),
                    announce: Some(80),
                    ..Service::default()
                },
                Service {
                    name: "db".into(),
                    announce: Some(5432),
                    ..Service::default()
                },
                Service {
                    name: "worker".into(),
                    ..Service::default()
                },
            ],
            ..HostConfig::default()
        };
        let st = |name: &str, state: &str| ServiceStatus {
            name: name.into(),
            kind: "process".into(),
            state: state.into(),
            pid: None,
            restarts: 0,
            last_exit: None,
            uptime_secs: None,
        };
        let states = [
            st("web", "ready"),
            st("db", "backoff"),
            st("worker", "ready"),
        ];
        let out = ready_announced(&config, &states, "10.0.2.15");
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].name.as_str(), out[0].endpoint().as_str()),
            ("web", "10.0.2.15:80")
        );
    }

    #[test]
    fn the_etcd_config_carries_the_tls_and_user_fields() {
        let f = FleetConfig {
            etcd: vec!["https://e:2379".into()],
            ca_file: Some("/etc/berth/etcd-ca.pem".into()),
            username: Some("host".into()),
            password_file: Some("/etc/berth/etcd-password".into()),
            ..FleetConfig::default()
        };
        let e = etcd_config(&f);
        assert_eq!(e.endpoints, ["https://e:2379"]);
        assert_eq!(
            e.ca_file.as_deref(),
            Some(Path::new("/etc/berth/etcd-ca.pem"))
        );
        assert_eq!(e.username.as_deref(), Some("host"));
    }
}
