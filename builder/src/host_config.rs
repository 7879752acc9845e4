//! From a manifest to the host configuration berth-init reads at boot
//! (`/usr/lib/berth/host.json`).

use berth_hostapi::config::{HostConfig, Network, Readiness, Service};
use berth_hostapi::update::Strategy;

use crate::manifest::Manifest;

/// The host configuration of an image built from `m`, with `containers`
/// the services the build made beside the manifest's own (its containers,
/// the lock server), in that order. The
/// update agent comes last, and only when the policy is not manual: a
/// manual host has no agent to run.
pub fn from_manifest(m: &Manifest, containers: &[Service]) -> HostConfig {
    let mut services = Vec::new();
    if let Network::Dhcp { client, .. } = &m.network {
        services.push(berth_hostapi::services::dhcp(client));
    }
    if let Some(ssh) = &m.ssh {
        services.push(ssh_service(ssh.port));
    }
    services.extend(m.services.iter().cloned());
    services.extend(containers.iter().cloned());
    let policy = m
        .update
        .as_ref()
        .map(|u| u.policy.clone())
        .unwrap_or_default();
    if policy.strategy != Strategy::Manual {
        // It starts once every required service is ready, i.e. after the
        // ready line: loading libostree and opening the sysroot then costs
        // the boot nothing, and on a boot that never gets ready (a new
        // version on trial) it has nothing to do anyway.
        let mut agent = berth_hostapi::services::update_agent();
        agent.after = services
            .iter()
            .filter(|s| s.required)
            .map(|s| s.name.clone())
            .collect();
        services.push(agent);
    }
    if m.fleet.is_some() {
        // After the required services too: a host registers once it is
        // up, and etcd being unreachable never holds up its boot.
        let mut registry = berth_hostapi::services::fleet_registry();
        registry.after = services
            .iter()
            .filter(|s| s.required)
            .map(|s| s.name.clone())
            .collect();
        services.push(registry);
    }
    HostConfig {
        image: m.name.clone(),
        version: m.version.clone(),
        hostname: m.host.hostname.clone(),
        modules: m.kernel.modules.clone(),
        sysctls: m.host.sysctls.clone(),
        network: m.network.clone(),
        debug_shell: m.host.debug_shell,
        ready_deadline_ms: m.host.ready_deadline_ms,
        watchdog_timeout_ms: m.host.watchdog_timeout_ms,
        services,
        update: policy,
        fleet: m.fleet.clone(),
    }
}

/// dropbear in the foreground, logging to stderr (so to the console and
/// its log), key logins only (`-s`), host keys made at first start (`-R`,
/// kept in /etc/dropbear, so they survive upgrades through the /etc merge).
/// Not required: the host is ready without it.
pub fn ssh_service(port: u16) -> Service {
    Service {
        name: crate::manifest::SSH_SERVICE.into(),
        command: ["dropbear", "-F", "-E", "-s", "-R", "-p"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(port.to_string()))
            .collect(),
        dirs: vec!["/etc/dropbear".into()],
        ready: Readiness::Tcp { port },
        required: false,
        ..Service::default()
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
        assert_eq!(h.services[0].name, berth_hostapi::services::DHCP_SERVICE);
        assert!(!h.services[0].required);
        assert_eq!(h.services[0].command[0], "udhcpc");
        assert_eq!(h.services[1].name, "web");
        assert_eq!(h.image, "x");
    }

    #[test]
    fn a_policy_that_is_not_manual_adds_the_agent_last() {
        let base = "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"web\"\ncommand = [\"httpd\"]\n\
                    [update]\nurl = \"http://u.example\"\n";
        let m = Manifest::parse(
            Path::new("m.toml"),
            &format!("{base}strategy = \"immediate\"\ninterval = \"1m\"\n"),
        )
        .unwrap();
        let h = from_manifest(&m, &[]);
        assert_eq!(h.update.strategy, Strategy::Immediate);
        assert_eq!(h.update.interval_ms, 60_000);
        let names: Vec<&str> = h.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "update-agent"]);
        assert_eq!(
            h.services[1],
            Service {
                after: vec!["web".into()],
                ..berth_hostapi::services::update_agent()
            },
            "the agent as hostapi makes it, after the required services"
        );
        assert!(!h.services[1].required);

        // Manual (the default), or no [update] at all: no agent.
        for text in [
            base.to_string(),
            format!("{base}strategy = \"manual\"\n"),
            "name = \"x\"\nversion = \"1\"\n".to_string(),
        ] {
            let h = from_manifest(&Manifest::parse(Path::new("m.toml"), &text).unwrap(), &[]);
            assert_eq!(h.update, berth_hostapi::update::UpdatePolicy::default());
            assert!(
                h.services.iter().all(|s| s.name != "update-agent"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_agent_name_is_taken_only_when_the_agent_runs() {
        let update = "[update]\nurl = \"http://u.example\"\n";
        let service = "[[service]]\nname = \"update-agent\"\ncommand = [\"x\"]\n";
        let container = "[[container]]\nname = \"update-agent\"\nimage = \"oci:l:1\"\n";
        for unit in [service, container] {
            let kind = if unit == service {
                "service"
            } else {
                "container"
            };
            let text =
                format!("name = \"x\"\nversion = \"1\"\n{unit}{update}strategy = \"immediate\"\n");
            let e = Manifest::parse(Path::new("m.toml"), &text).unwrap_err();
            assert_eq!(
                (e.key.clone(), e.position),
                (format!("{kind}[0].name"), Some((4, 8))),
                "{e}"
            );
            assert!(e.message.contains("update agent"), "{e}");
            // A manual host runs no agent: the name is free.
            let text = format!("name = \"x\"\nversion = \"1\"\n{unit}{update}");
            Manifest::parse(Path::new("m.toml"), &text).unwrap();
        }
    }

    #[test]
    fn fleet_adds_the_registry_after_the_required_services() {
        let text = "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"web\"\ncommand = [\"httpd\"]\nannounce = 80\n\
                    [fleet]\netcd = [\"http://e:2379\"]\nlease-ttl = \"10s\"\n";
        let h = from_manifest(&Manifest::parse(Path::new("m.toml"), text).unwrap(), &[]);
        let names: Vec<&str> = h.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "fleet-registry"]);
        assert_eq!(
            h.services[1],
            Service {
                after: vec!["web".into()],
                ..berth_hostapi::services::fleet_registry()
            }
        );
        assert_eq!(h.services[0].announce, Some(80));
        let fleet = h.fleet.unwrap();
        assert_eq!(
            (fleet.etcd.as_slice(), fleet.lease_ttl_secs),
            (&["http://e:2379".to_string()][..], 10)
        );
        let h = from_manifest(
            &Manifest::parse(Path::new("m.toml"), "name = \"x\"\nversion = \"1\"\n").unwrap(),
            &[],
        );
        assert!(h.fleet.is_none() && h.services.is_empty());
    }

    #[test]
    fn ssh_adds_a_dropbear_service_with_key_logins_only() {
        let m = Manifest::parse(
            Path::new("m.toml"),
            "name = \"x\"\nversion = \"1\"\n[ssh]\nport = 2222\nauthorized-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample me@host\"]\n",
        )
        .unwrap();
        let h = from_manifest(&m, &[]);
        let sshd = h.services.iter().find(|s| s.name == "sshd").unwrap();
        assert_eq!(
            sshd.command,
            ["dropbear", "-F", "-E", "-s", "-R", "-p", "2222"]
        );
        assert_eq!(sshd.ready, Readiness::Tcp { port: 2222 });
        assert!(!sshd.required);
        assert!(
            crate::packages::PackageRequest::from_manifest(&m)
                .packages
                .contains(&"dropbear-bin".to_string())
        );
        let bad = Manifest::parse(
            Path::new("m.toml"),
            "name = \"x\"\nversion = \"1\"\n[ssh]\nauthorized-keys = [\"not a key\"]\n",
        )
        .unwrap_err();
        assert_eq!(bad.key, "ssh.authorized-keys[0]");
    }
}
