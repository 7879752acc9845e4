//! Services a Berth host runs that no manifest spells out: one
//! constructor each, so `berth build` (which writes them into the host
//! configuration) and stage 2 of berth-init (which adds them when the
//! configuration lacks them) make the same service under the same name.

use crate::config::{Readiness, Restart, Service, ServiceKind};

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
}
