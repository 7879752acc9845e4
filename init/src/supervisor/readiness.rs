//! Readiness probes of a running service that is not ready yet: connect
//! to 127.0.0.1:`port` (`Tcp`), or run a command until it exits 0 (`Exec`).
//! `Started` is ready once the process has run for [`STARTED_SETTLE`] and
//! `Exited` when the process exits 0; those need no probe.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use berth_hostapi::config::Readiness;

use super::service::State;
use super::{Role, Supervisor};

/// An exec readiness probe is killed after this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between exec probes.
pub const EXEC_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Time between TCP probes.
pub const TCP_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A `started` service is ready once its process has run this long: one
/// that exits at once (a crash loop) never counts as ready.
pub const STARTED_SETTLE: Duration = Duration::from_secs(1);
/// A TCP probe's connect timeout (to localhost it answers at once).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

impl Supervisor {
    /// Probes service `i` (main process `pid`) once.
    pub(super) fn probe(&mut self, i: usize, pid: i32, now: Instant) {
        let Some(u) = self.units.get(i) else {
            return;
        };
        if u.probe.is_some() {
            return;
        }
        match u.spec.ready.clone() {
            Readiness::Tcp { port } => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let ready = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok();
                let name = u.spec.name.clone();
                self.set_state(
                    i,
                    State::Running {
                        pid,
                        ready,
                        next_probe: now + TCP_PROBE_INTERVAL,
                    },
                );
                if ready {
                    crate::say!("{name}: ready (port {port} accepts connections)");
                }
            }
            Readiness::Exec { command } => match self.spawn_for(i, &command, Role::Probe) {
                Ok(probe) => {
                    if let Some(u) = self.units.get_mut(i) {
                        u.probe = Some((probe, now + PROBE_TIMEOUT));
                    }
                }
                Err(why) => {
                    crate::say!("{}: readiness probe: {why}", self.name(i));
                    self.set_state(
                        i,
                        State::Running {
                            pid,
                            ready: false,
                            next_probe: now + EXEC_PROBE_INTERVAL,
                        },
                    );
                }
            },
            // Started is ready once it stayed up for STARTED_SETTLE (this
            // probe is scheduled then); Exited becomes ready when it exits.
            Readiness::Started | Readiness::Exited => {
                let ready = u.spec.ready == Readiness::Started;
                let name = u.spec.name.clone();
                self.set_state(
                    i,
                    State::Running {
                        pid,
                        ready,
                        next_probe: now + Duration::from_secs(3600),
                    },
                );
                if ready {
                    crate::say!("{name}: ready (running for {}s)", STARTED_SETTLE.as_secs());
                }
            }
        }
    }
}
