//! FleetLock v1 on the wire (Fedora CoreOS's protocol, as Zincati and
//! airlock speak it): two `POST` endpoints under a base URL,
//! `v1/pre-reboot` (take a reboot slot, recursively) and
//! `v1/steady-state` (give it back if held); the header
//! `fleet-lock-protocol: true`; the body `{"client_params":{"id","group"}}`;
//! any 2xx is success, and errors carry `{"kind","value"}`.
//!
//! This module holds the shared types and the client Berth's update agent
//! uses. The client speaks only the protocol, so it works against airlock
//! as well as against Berth's server.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header every FleetLock request carries.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
/// Path of the lock request, relative to the base URL.
pub const PRE_REBOOT: &str = "v1/pre-reboot";
/// Path of the unlock request, relative to the base URL.
pub const STEADY_STATE: &str = "v1/steady-state";
/// The group a client is in unless configured otherwise (Zincati's default).
pub const DEFAULT_GROUP: &str = "default";

/// A request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who asks.
    pub client_params: ClientParams,
}

/// Who asks: the client's persistent id and its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The client's id (case-sensitive; Berth sends its app-specific host id).
    pub id: String,
    /// The reboot group, `^[a-zA-Z0-9.-]+$`.
    pub group: String,
}

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A machine-readable kind, from a small fixed set.
    pub kind: String,
    /// A message for humans.
    pub value: String,
}

/// Whether `group` is a valid FleetLock group name (`^[a-zA-Z0-9.-]+$`).
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `base` with one trailing `/`, so that joining `v1/…` appends instead of
/// replacing the last path segment (the trap Zincati's `Url::join` has).
pub fn normalize_base(base: &str) -> String {
    format!("{}/", base.trim_end_matches('/'))
}

/// Why a FleetLock request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}, {kind}: {value}")]
    Refused {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// The error's kind (`generic_http_<status>` when the body had none).
        kind: String,
        /// The error's message.
        value: String,
    },
    /// The server could not be reached.
    #[error("{url}: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl ClientError {
    /// The error kind, for counting (Zincati's `client_failed_request` for
    /// a transport error).
    pub fn kind(&self) -> &str {
        match self {
            ClientError::Refused { kind, .. } => kind,
            ClientError::Transport { .. } => "client_failed_request",
        }
    }
}

/// A FleetLock client for one base URL and one client identity.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    params: ClientParams,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://10.0.2.2:8090/`),
    /// for host `id` in `group`.
    pub fn new(base: &str, id: &str, group: &str, timeout: Duration) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: normalize_base(base),
            params: ClientParams {
                id: id.to_string(),
                group: group.to_string(),
            },
            agent,
        }
    }

    /// Asks for a reboot slot (`pre-reboot`); `Ok` when granted or already held.
    pub fn pre_reboot(&self) -> Result<(), ClientError> {
        self.post(PRE_REBOOT)
    }

    /// Gives the slot back if held (`steady-state`); `Ok` also when not held.
    pub fn steady_state(&self) -> Result<(), ClientError> {
        self.post(STEADY_STATE)
    }

    fn post(&self, path: &str) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_string(&Request {
            client_params: self.params.clone(),
        })
        .unwrap_or_default();
        let response = self
            .agent
            .post(&url)
            .header(PROTOCOL_HEADER, "true")
            .header("content-type", "application/json")
            .send(body);
        let mut response = response.map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let (kind, value) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => (e.kind, e.value),
            Err(_) => (
                format!("generic_http_{status}"),
                text.chars().take(200).collect(),
            ),
        };
        Err(ClientError::Refused {
            url,
            status,
            kind,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_checked_as_the_protocol_says() {
        for ok in ["default", "web-1", "eu.west.2", "A"] {
            assert!(valid_group(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "grüppe", "a_b", "a\n"] {
            assert!(!valid_group(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_base_without_a_slash_keeps_its_last_segment() {
        assert_eq!(normalize_base("http://h/fl"), "http://h/fl/");
        assert_eq!(normalize_base("http://h/fl//"), "http://h/fl/");
        assert_eq!(normalize_base("http://h:8090"), "http://h:8090/");
    }

    #[test]
    fn the_body_is_what_the_protocol_document_shows() {
        let body = serde_json::to_value(Request {
            client_params: ClientParams {
                id: "c0ffee".into(),
                group: "default".into(),
            },
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"client_params": {"id": "c0ffee", "group": "default"}})
        );
    }
}
