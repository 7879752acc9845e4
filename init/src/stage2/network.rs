//! The network at boot: loopback up, then the configured interface.
//!
//! Static addresses go through the `ip` command (busybox or iproute2),
//! found in PATH: parsing "10.0.2.15/24" into ioctls or netlink messages is
//! more code in PID 1 than it is worth, and every Berth image carries
//! busybox. Links are brought up with one ioctl (no `ip` needed for
//! loopback). DHCP is a supervised client service. Nothing here waits for
//! more than a few seconds: boot never blocks on the network.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_hostapi::config::{Network, Service};
use berth_hostapi::services;

use crate::supervisor::spawn::DEFAULT_PATH;
use crate::sys::ffi;

/// How long to wait for a configured interface to appear.
pub const LINK_WAIT: Duration = Duration::from_secs(5);

/// Brings up loopback.
pub fn loopback_up() {
    if let Err(e) = ffi::set_link_up("lo") {
        crate::say!("bringing up lo: {e}");
    }
}

fn wait_for_link(name: &str) -> bool {
    let deadline = Instant::now() + LINK_WAIT;
    while Instant::now() < deadline {
        if Path::new("/sys/class/net").join(name).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The `ip` commands for a static configuration.
pub fn static_commands(interface: &str, address: &str, gateway: Option<&str>) -> Vec<Vec<String>> {
    let mut cmds = vec![
        vec!["ip", "addr", "add", address, "dev", interface],
        vec!["ip", "link", "set", interface, "up"],
    ];
    if let Some(gw) = gateway {
        cmds.push(vec![
            "ip", "route", "add", "default", "via", gw, "dev", interface,
        ]);
    }
    cmds.into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect()
}

/// The text of /etc/resolv.conf for `dns` servers.
pub fn resolv_conf(dns: &[String]) -> String {
    dns.iter().map(|s| format!("nameserver {s}\n")).collect()
}

/// Runs one command to completion (before the supervisor starts, so
/// waiting for this one child is safe), returning its stderr on failure.
fn run(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::null());
    // Not PID 1's blocked signal mask.
    ffi::configure_child(&mut cmd, ffi::ChildSetup::default());
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Applies the network configuration; returns the DHCP client service to
/// supervise, if any ([`services::dhcp`], the one `berth build` puts in
/// the configuration). Problems are printed, never fatal.
pub fn configure(network: &Network) -> Option<Service> {
    match network {
        Network::None => None,
        Network::Dhcp { interface, client } => {
            if wait_for_link(interface) {
                if let Err(e) = ffi::set_link_up(interface) {
                    crate::say!("bringing up {interface}: {e}");
                }
            } else {
                crate::say!(
                    "network: no interface {interface} after {}s; starting the DHCP client anyway",
                    LINK_WAIT.as_secs()
                );
            }
            Some(services::dhcp(client))
        }
        Network::Static {
            interface,
            address,
            gateway,
            dns,
        } => {
            if !wait_for_link(interface) {
                crate::say!(
                    "network: no interface {interface} after {}s; not configured",
                    LINK_WAIT.as_secs()
                );
            } else {
                for cmd in static_commands(interface, address, gateway.as_deref()) {
                    if let Err(e) = run(&cmd) {
                        crate::say!("network: {e}");
                    }
                }
                crate::say!("network: {interface} {address}");
            }
            if !dns.is_empty() {
                if let Err(e) = std::fs::write("/etc/resolv.conf", resolv_conf(dns)) {
                    crate::say!("writing /etc/resolv.conf: {e}");
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_configuration_commands() {
        let cmds = static_commands("eth0", "10.0.2.15/24", Some("10.0.2.2"));
        let text: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            text,
            [
                "ip addr add 10.0.2.15/24 dev eth0",
                "ip link set eth0 up",
                "ip route add default via 10.0.2.2 dev eth0",
            ]
        );
        assert_eq!(static_commands("eth0", "fd00::2/64", None).len(), 2);
        assert_eq!(
            resolv_conf(&["1.1.1.1".into(), "9.9.9.9".into()]),
            "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn dhcp_becomes_a_supervised_service() {
        let svc = configure(&Network::Dhcp {
            interface: "lo".into(),
            client: vec!["udhcpc".into(), "-f".into()],
        });
        let svc = svc.map(|s| (s.name, s.command, s.required));
        assert_eq!(
            svc,
            Some((
                services::DHCP_SERVICE.to_string(),
                vec!["udhcpc".to_string(), "-f".to_string()],
                false
            ))
        );
    }
}
