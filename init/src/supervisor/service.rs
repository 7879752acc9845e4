//! One supervised service: its configuration, its state, and how that
//! state reads on the control socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_hostapi::config::{Readiness, Service, ServiceKind};
use berth_hostapi::control::ServiceStatus;

use super::backoff::Backoff;
use super::logs::LogFile;
use crate::sys::reaper::Exit;

/// What to do once the post-stop commands are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Start again after this delay.
    Restart(Duration),
    /// Ran to completion successfully; no restart.
    Exited,
    /// Failed; no restart.
    Failed,
    /// Stopped on request (shutdown or restart).
    Stopped,
}

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started yet: waiting for the services in `after` to be ready.
    Waiting,
    /// Running pre-start command `index`.
    PreStart {
        /// Which command.
        index: usize,
        /// Its pid.
        pid: i32,
        /// When it is killed.
        deadline: Instant,
    },
    /// The main process runs.
    Running {
        /// Its pid (and process group).
        pid: i32,
        /// Whether the readiness check passed.
        ready: bool,
        /// When to probe readiness next.
        next_probe: Instant,
    },
    /// The stop signal was sent to the main process.
    Stopping {
        /// The pid being stopped.
        pid: i32,
        /// When SIGKILL follows.
        deadline: Instant,
        /// Whether SIGKILL was sent.
        killed: bool,
    },
    /// Running post-stop command `index` (None: about to start the next).
    PostStop {
        /// Which command.
        index: usize,
        /// Its pid, while it runs.
        pid: Option<i32>,
        /// When it is killed.
        deadline: Instant,
        /// What comes after.
        then: AfterStop,
    },
    /// Waiting to restart.
    Backoff {
        /// When the restart delay is over.
        until: Instant,
    },
    /// Done, successfully.
    Exited,
    /// Done, failed, not restarted.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl State {
    /// The state's name on the control socket.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::PreStart { .. } => "starting",
            State::Running { ready: false, .. } => "running",
            State::Running { ready: true, .. } => "ready",
            State::Stopping { .. } => "stopping",
            State::PostStop {
                then: AfterStop::Restart(_),
                ..
            } => "backoff",
            State::PostStop { .. } => "stopping",
            State::Backoff { .. } => "backoff",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }

    /// Whether the state involves no process of the service.
    pub fn is_idle(&self) -> bool {
        matches!(
            self,
            State::Waiting | State::Backoff { .. } | State::Exited | State::Failed | State::Stopped
        )
    }
}

/// A supervised service.
#[derive(Debug)]
pub struct Unit {
    /// The configuration.
    pub spec: Service,
    /// Run on this terminal instead of a log pipe (the debug shell).
    pub tty: Option<PathBuf>,
    /// The services it starts after (indices).
    pub deps: Vec<usize>,
    /// The current state.
    pub state: State,
    /// The restart delay.
    pub backoff: Backoff,
    /// Starts after the first one.
    pub restarts: u32,
    /// Whether it was started at all.
    pub started_once: bool,
    /// How the main process last ended.
    pub last_exit: Option<Exit>,
    /// A `Readiness::Exited` service that once exited 0 stays ready.
    pub exited_ok: bool,
    /// When the current main process started.
    pub started_at: Option<Instant>,
    /// A running exec readiness probe: (pid, deadline).
    pub probe: Option<(i32, Instant)>,
    /// A restart was asked for (control socket): start again once stopped.
    pub restart_requested: bool,
    /// The log file.
    pub log: LogFile,
}

impl Unit {
    /// A new unit in state `Waiting`.
    pub fn new(spec: Service, tty: Option<PathBuf>, deps: Vec<usize>, log: LogFile) -> Unit {
        Unit {
            backoff: Backoff::new(spec.backoff_initial_ms, spec.backoff_max_ms),
            spec,
            tty,
            deps,
            state: State::Waiting,
            restarts: 0,
            started_once: false,
            last_exit: None,
            exited_ok: false,
            started_at: None,
            probe: None,
            restart_requested: false,
            log,
        }
    }

    /// Whether services that start `after` this one may start, and whether it
    /// counts towards the host being ready.
    pub fn is_ready(&self) -> bool {
        match self.state {
            State::Running { ready, .. } => ready,
            State::Exited => true,
            _ => self.exited_ok && self.spec.ready == Readiness::Exited,
        }
    }

    /// The main process's pid, when there is one.
    pub fn main_pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The answer line for `Request::Services`.
    pub fn status(&self, now: Instant) -> ServiceStatus {
        let running = matches!(self.state, State::Running { .. } | State::Stopping { .. });
        ServiceStatus {
            name: self.spec.name.clone(),
            kind: match self.spec.kind {
                ServiceKind::Process => "process".into(),
                ServiceKind::Container => "container".into(),
            },
            state: self.state.name().into(),
            pid: self.main_pid(),
            restarts: self.restarts,
            last_exit: self.last_exit.map(|e| e.to_string()),
            uptime_secs: self
                .started_at
                .filter(|_| running)
                .map(|t| now.saturating_duration_since(t).as_secs()),
        }
    }
}
