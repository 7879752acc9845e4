//! Services a Berth host runs that no manifest spells out (the DHCP
//! client, the update agent): one constructor each, so `berth build`
//! (which writes them into the host configuration) and stage 2 of
//! berth-init (which adds them when the configuration lacks them) make
//! the same service under the same name.

use crate::config::{Readiness, Restart, Service, ServiceKind};
use crate::update::AGENT_SERVICE;

/// The name of the DHCP client's service, as `berthctl services` and the
/// log file (`/var/log/berth/dhcp.log`) show it. A manifest's own service
/// cannot take it when `[network] mode = "dhcp"`.
pub const DHCP_SERVICE: &str = "dhcp";

/// The DHCP client `client` (the command of
/// [`Network::Dhcp`](crate::config::Network::Dhcp)) as a supervised
/// service: restarted always, and not required, so the host counts as
/// ready without a lease and boot never waits forever on the network.
pub fn dhcp(client: &[String]) -> Service {
    Service {
        name: DHCP_SERVICE.into(),
        kind: ServiceKind::Process,
        command: client.to_vec(),
        restart: Restart::Always,
        ready: Readiness::Started,
        required: false,
        ..Service::default()
    }
}

/// The update agent (`berthctl agent run`), which `berth build` adds when
/// the manifest's `[update] strategy` is not manual. Not required: a
/// host whose agent cannot reach the repository is still ready and its
/// boot still blessed. Restarted always, backing off from 5 s to a
/// minute, so an agent that keeps failing does not spin.
pub fn update_agent() -> Service {
    background_berthctl(AGENT_SERVICE, &["agent", "run"])
}

/// The fleet registry (`berthctl fleet run`), which `berth build` adds
/// when the manifest has `[fleet]`: it keeps the host's record and its
/// announced services in etcd. Not required (etcd being down must not
/// make a boot bad), restarted always, backing off from 5 s to a minute.
pub fn fleet_registry() -> Service {
    background_berthctl(crate::fleet::REGISTRY_SERVICE, &["fleet", "run"])
}

/// A berthctl loop berth-init keeps running in the background: not
/// required, restarted always, backing off from 5 s to a minute.
fn background_berthctl(name: &str, args: &[&str]) -> Service {
    let mut command = vec!["berthctl".to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    Service {
        name: name.into(),
        kind: ServiceKind::Process,
        command,
        restart: Restart::Always,
        ready: Readiness::Started,
        required: false,
        backoff_initial_ms: 5_000,
        backoff_max_ms: 60_000,
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_is_an_optional_always_restarted_process_named_dhcp() {
        let client = ["udhcpc", "-f", "-i", "eth0"].map(String::from);
        let svc = dhcp(&client);
        assert_eq!(svc.name, "dhcp");
        assert_eq!(svc.kind, ServiceKind::Process);
        assert_eq!(svc.command, client);
        assert_eq!(svc.restart, Restart::Always);
        assert_eq!(svc.ready, Readiness::Started);
        assert!(!svc.required);
        // Everything else is a default service's.
        assert_eq!(
            Service {
                name: String::new(),
                command: Vec::new(),
                required: true,
                ..svc
            },
            Service::default()
        );
    }

    #[test]
    fn the_fleet_registry_is_optional_and_runs_berthctl_fleet_run() {
        let svc = fleet_registry();
        assert_eq!(svc.name, "fleet-registry");
        assert_eq!(svc.command, ["berthctl", "fleet", "run"]);
        assert_eq!(svc.restart, Restart::Always);
        assert!(!svc.required);
        assert_eq!(svc.announce, None);
        assert_eq!(
            (svc.backoff_initial_ms, svc.backoff_max_ms),
            (5_000, 60_000)
        );
    }

    #[test]
    fn the_update_agent_is_optional_and_backs_off_to_a_minute() {
        let svc = update_agent();
        assert_eq!(svc.name, "update-agent");
        assert_eq!(svc.command, ["berthctl", "agent", "run"]);
        assert_eq!(svc.kind, ServiceKind::Process);
        assert_eq!(svc.restart, Restart::Always);
        assert!(!svc.required, "the agent must not hold up readiness");
        assert_eq!(
            (svc.backoff_initial_ms, svc.backoff_max_ms),
            (5_000, 60_000)
        );
        assert_eq!(
            Service {
                name: String::new(),
                command: Vec::new(),
                required: true,
                backoff_initial_ms: Service::default().backoff_initial_ms,
                backoff_max_ms: Service::default().backoff_max_ms,
                ..svc
            },
            Service::default()
        );
    }
}
