//! The control-socket protocol between `berthctl` and `berth-init`.
//!
//! One request per connection: the client writes one JSON [`Request`] on a
//! line; the server answers with JSON [`Response`] lines. `Logs` with
//! `follow` keeps the connection open and sends `LogLine`s until the client
//! hangs up. Plain JSON lines keep both ends small and easy to debug with
//! `socat`.

use serde::{Deserialize, Serialize};

/// Where berth-init listens.
pub const CONTROL_SOCKET_PATH: &str = "/run/berth/init.sock";

/// What a client asks of berth-init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The state of every service.
    Services,
    /// The last `lines` lines of a service's log, then (with `follow`) new ones.
    Logs {
        /// Service name.
        name: String,
        /// How many old lines to send first.
        lines: usize,
        /// Keep sending new lines.
        follow: bool,
    },
    /// Stop and start one service.
    Restart {
        /// Service name.
        name: String,
    },
    /// Shut down and reboot, halt or power off.
    Shutdown {
        /// What to do after everything is stopped.
        action: ShutdownAction,
    },
}

/// The end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownAction {
    /// reboot(2) with RB_AUTOBOOT.
    Reboot,
    /// Halt the CPU.
    Halt,
    /// Power the machine off.
    Poweroff,
}

/// One answer line from berth-init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Response {
    /// The answer to [`Request::Services`].
    Services {
        /// One entry per service, in manifest order.
        services: Vec<ServiceStatus>,
    },
    /// One line of a log.
    LogLine {
        /// The line, without its newline.
        line: String,
    },
    /// The request was carried out.
    Ok,
    /// The request failed; `message` says why.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// The state of one supervised service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// `process` or `container`.
    pub kind: String,
    /// `waiting`, `starting`, `running`, `ready`, `backoff`, `exited`, `failed`, `stopping`, `stopped`.
    pub state: String,
    /// Current PID, when running.
    pub pid: Option<i32>,
    /// How many times it was started again after exiting.
    pub restarts: u32,
    /// The last exit, e.g. `exit 1` or `signal 9`.
    pub last_exit: Option<String>,
    /// Seconds since the current process started.
    pub uptime_secs: Option<u64>,
}

impl Request {
    /// The request as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }
}

impl Response {
    /// The response as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip() {
        for req in [
            Request::Services,
            Request::Logs {
                name: "web".into(),
                lines: 10,
                follow: true,
            },
            Request::Restart { name: "web".into() },
            Request::Shutdown {
                action: ShutdownAction::Poweroff,
            },
        ] {
            let line = req.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let back: Request = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn wire_format_is_tagged() {
        assert_eq!(
            Request::Restart { name: "a".into() }.to_line(),
            "{\"op\":\"restart\",\"name\":\"a\"}\n"
        );
    }
}
