//! From a manifest to the host configuration berth-init reads at boot
//! (`/usr/lib/berth/host.json`).

use berth_hostapi::config::{HostConfig, Network, Readiness, Restart, Service, ServiceKind};

use crate::manifest::Manifest;

/// The name of the service that runs the DHCP client.
pub const DHCP_SERVICE: &str = "dhcp";

/// The host configuration of an image built from `m`, whose containers
/// run as `containers` (services made by the container module).
pub fn from_manifest(m: &Manifest, containers: &[Service]) -> HostConfig {
    let mut services = Vec::new();
    if let Network::Dhcp { client, .. } = &m.network {
        // The DHCP client is a supervised service like any other, but the
        // host counts as ready without a lease: boot never waits forever
        // on the network.
        services.push(Service {
            name: DHCP_SERVICE.into(),
            kind: ServiceKind::Process,
            command: client.clone(),
            restart: Restart::Always,
            ready: Readiness::Started,
            required: false,
            ..Service::default()
        });
    }
    services.extend(m.services.iter().cloned());
    services.extend(containers.iter().cloned());
    HostConfig {
        image: m.name.clone(),
        version: m.version.clone(),
        hostname: m.host.hostname.clone(),
        modules: m.kernel.modules.clone(),
        sysctls: m.host.sysctls.clone(),
        network: m.network.clone(),
        debug_shell: m.host.debug_shell,
        ready_deadline_ms: m.host.ready_deadline_ms,
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn dhcp_becomes_an_optional_service_first() {
        let m = Manifest::parse(
            Path::new("m.toml"),
            "name = \"x\"\nversion = \"1\"\n[network]\nmode = \"dhcp\"\n[[service]]\nname = \"web\"\ncommand = [\"httpd\"]\n",
        )
        .unwrap();
        let h = from_manifest(&m, &[]);
        assert_eq!(h.services[0].name, DHCP_SERVICE);
        assert!(!h.services[0].required);
        assert_eq!(h.services[0].command[0], "udhcpc");
        assert_eq!(h.services[1].name, "web");
        assert_eq!(h.image, "x");
    }
}
