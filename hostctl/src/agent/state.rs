//! What the update agent is doing and why, as it publishes it for
//! `berthctl agent status` and `berthctl status`, and what it keeps across
//! reboots (paused, the deployment it made; the FleetLock slot it holds
//! is in [`super::fleet::HELD_PATH`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The agent's status, rewritten at every change (tmpfs: a boot starts
/// afresh).
pub const STATUS_PATH: &str = "/run/berth/update-agent.json";
/// Present while an operator holds the host still (`agent pause`); kept
/// across reboots.
pub const PAUSED_PATH: &str = "/var/lib/berth/update-agent/paused";
/// The commit the agent itself deployed last: only that one it reboots
/// into. A deployment made by hand is left to whoever made it.
pub const DEPLOYED_PATH: &str = "/var/lib/berth/update-agent/deployed";

/// What the agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Just started.
    Starting,
    /// This boot is on trial: nothing is done until it is blessed.
    WaitingForBlessing,
    /// Asking the update server.
    Checking,
    /// Nothing to take now; checks again later.
    Idle,
    /// A new version is staged by a rollout that has not reached this host.
    WaitingForRollout,
    /// Pulling and deploying a new version.
    Deploying,
    /// Deployed; the reboot waits for a maintenance window.
    WaitingForWindow,
    /// `fleet-lock`: deployed; the reboot waits for the FleetLock server
    /// to grant a slot (asked again every interval).
    WaitingForSlot,
    /// `fleet-lock`: the boot is blessed; giving any held slot back
    /// (`steady-state`) before taking updates.
    ReportingSteadyState,
    /// `fleet-lock`: nothing newer to take, and the slot is kept because
    /// the version it was taken for failed (or was rolled back).
    HoldingSlot,
    /// Someone else's deployment (a manual upgrade or rollback) boots next.
    Held,
    /// Rebooting into the new version.
    Rebooting,
    /// Held still by `berthctl agent pause`.
    Paused,
    /// The last step failed; retried after a back-off.
    Error,
}

impl Phase {
    /// The words `agent status` prints.
    pub fn words(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::WaitingForBlessing => "waiting for this boot to be blessed",
            Phase::Checking => "checking",
            Phase::Idle => "idle",
            Phase::WaitingForRollout => "waiting for the rollout",
            Phase::Deploying => "deploying",
            Phase::WaitingForWindow => "deployed, waiting for window",
            Phase::WaitingForSlot => "deployed, waiting for a reboot slot",
            Phase::ReportingSteadyState => "reporting steady state",
            Phase::HoldingSlot => "holding the reboot slot",
            Phase::Held => "held",
            Phase::Rebooting => "rebooting",
            Phase::Paused => "paused",
            Phase::Error => "error",
        }
    }
}

/// A version, as the agent names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// OS version.
    pub version: String,
    /// Commit checksum.
    pub commit: String,
}

/// The maintenance window a deployed version waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowWait {
    /// Which `[[update.window]]` (0-based, manifest order).
    pub index: usize,
    /// As the manifest says it.
    pub window: String,
    /// When it opens (unix seconds).
    pub opens_at: u64,
}

/// Where a staged rollout stands for this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutWait {
    /// This host's wariness.
    pub wariness: f64,
    /// The rollout's progress now.
    pub progress: f64,
    /// Whether the rollout is paused.
    pub paused: bool,
}

/// The agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// What it is doing.
    pub state: Phase,
    /// Why, in a sentence.
    pub message: String,
    /// The strategy (`immediate`, `periodic`).
    pub strategy: String,
    /// The running version.
    pub booted: Option<Version>,
    /// The version it is working towards, if any.
    pub target: Option<Version>,
    /// The window a deployed version waits for.
    pub window: Option<WindowWait>,
    /// The rollout a new version waits for.
    pub rollout: Option<RolloutWait>,
    /// The host id updates are known by (app-specific).
    pub host_id: Option<String>,
    /// `fleet-lock`: the server, the group and whether a slot is held.
    #[serde(default)]
    pub fleet_lock: Option<super::fleet::FleetLockStatus>,
    /// When the update server was last asked (unix seconds).
    pub last_check: Option<u64>,
    /// When it will be asked next.
    pub next_check: Option<u64>,
    /// The last error, kept until a check succeeds.
    pub last_error: Option<String>,
    /// Failed steps in a row.
    pub errors_in_a_row: u32,
    /// When this status was written.
    pub updated: u64,
}

impl Status {
    /// A fresh status for `strategy`.
    pub fn new(strategy: &str) -> Status {
        Status {
            state: Phase::Starting,
            message: "starting".into(),
            strategy: strategy.into(),
            booted: None,
            target: None,
            window: None,
            rollout: None,
            host_id: None,
            fleet_lock: None,
            last_check: None,
            next_check: None,
            last_error: None,
            errors_in_a_row: 0,
            updated: 0,
        }
    }

    /// Sets the phase and its reason; clears what belongs to other phases.
    pub fn set(&mut self, state: Phase, message: impl Into<String>) {
        self.state = state;
        self.message = message.into();
        if state != Phase::WaitingForWindow {
            self.window = None;
        }
        if state != Phase::WaitingForRollout {
            self.rollout = None;
        }
    }
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Writes `status` for readers (atomically: they never see half of it).
pub fn save(root: &Path, status: &Status) -> std::io::Result<()> {
    let path = under(root, STATUS_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    berth_sysroot::esp_sync::write_atomic(&path, &json).map_err(std::io::Error::other)
}

/// The agent's last status, if it runs (or ran in this boot).
pub fn load(root: &Path) -> Option<Status> {
    let bytes = std::fs::read(under(root, STATUS_PATH)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether an operator paused the agent.
pub fn paused(root: &Path) -> bool {
    under(root, PAUSED_PATH).exists()
}

/// Pauses (`true`) or resumes the agent.
pub fn set_paused(root: &Path, pause: bool) -> std::io::Result<()> {
    let path = under(root, PAUSED_PATH);
    if pause {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        berth_sysroot::esp_sync::write_atomic(&path, b"paused by berthctl agent pause\n")
            .map_err(std::io::Error::other)
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The commit the agent deployed last.
pub fn deployed_by_agent(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(under(root, DEPLOYED_PATH)).ok()?;
    Some(text.trim().to_string()).filter(|c| !c.is_empty())
}

/// Records that the agent deployed `commit`.
pub fn record_deployed(root: &Path, commit: &str) -> std::io::Result<()> {
    let path = under(root, DEPLOYED_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    berth_sysroot::esp_sync::write_atomic(&path, format!("{commit}\n").as_bytes())
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_pause_and_deployed_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert!(load(r).is_none());
        let mut st = Status::new("periodic");
        st.window = Some(WindowWait {
            index: 0,
            window: "Sat 22:30 for 90m".into(),
            opens_at: 5,
        });
        st.set(Phase::WaitingForWindow, "waiting");
        assert!(st.window.is_some());
        save(r, &st).unwrap();
        assert_eq!(load(r), Some(st.clone()));
        st.set(Phase::Idle, "up to date");
        assert!(st.window.is_none());
        assert!(!paused(r));
        set_paused(r, true).unwrap();
        assert!(paused(r));
        set_paused(r, false).unwrap();
        set_paused(r, false).unwrap();
        assert!(!paused(r));
        assert_eq!(deployed_by_agent(r), None);
        record_deployed(r, "abc").unwrap();
        assert_eq!(deployed_by_agent(r).as_deref(), Some("abc"));
    }
}
