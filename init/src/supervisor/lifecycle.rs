//! The state transitions of a service: start (pre-start commands, then the
//! main process), readiness probes, exit (post-stop commands, then restart
//! with backoff or stay down), stop (signal, timeout, SIGKILL).

use std::time::{Duration, Instant};

use berth_hostapi::config::{Readiness, Restart};
use rustix::process::{Pid, Signal};

use super::readiness::{EXEC_PROBE_INTERVAL, STARTED_SETTLE};
use super::service::{AfterStop, State};
use super::spawn::{self, Output, SpawnSpec, Spawned};
use super::{Pipe, Role, Supervisor};
use crate::supervisor::users;
use crate::sys::clock;
use crate::sys::reaper::Exit;
use crate::sys::signals;

/// Pre-start and post-stop commands are killed after this long.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `signal` to the process group `pid` leads (services run in their
/// own session), or to the process alone if the group is gone.
fn signal_group(pid: i32, signal: Signal) {
    let Some(pid) = Pid::from_raw(pid) else {
        return;
    };
    if rustix::process::kill_process_group(pid, signal).is_err() {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Supervisor {
    pub(super) fn name(&self, i: usize) -> String {
        self.units
            .get(i)
            .map(|u| u.spec.name.clone())
            .unwrap_or_default()
    }

    pub(super) fn set_state(&mut self, i: usize, state: State) {
        if let Some(u) = self.units.get_mut(i) {
            u.state = state;
        }
    }

    /// Spawns one process of service `i` (main, hook or probe).
    pub(super) fn spawn_for(
        &mut self,
        i: usize,
        argv: &[String],
        role: Role,
    ) -> Result<i32, String> {
        let u = self.units.get(i).ok_or("no such service")?;
        let identity = match &u.spec.user {
            Some(user) => Some(
                users::resolve(&self.opts.users_root, user, u.spec.group.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
            None => match &u.spec.group {
                Some(group) => Some(
                    users::resolve(&self.opts.users_root, "0", Some(group))
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            },
        };
        if let (Some(id), Role::Main) = (&identity, role) {
            match users::ensure_state_home(&self.opts.users_root, id) {
                Ok(true) => crate::say!("{}: made {} for its user", u.spec.name, id.home),
                Ok(false) => {}
                // Not fatal here: a program that needs it fails by itself.
                Err(e) => crate::say!("{}: cannot make {}: {e}", u.spec.name, id.home),
            }
        }
        let output = match (&u.tty, role) {
            (_, Role::Probe) => Output::Null,
            (Some(tty), Role::Main) => Output::Tty(tty.as_path()),
            _ => Output::Pipe,
        };
        let env = match &self.opts.env_dir {
            Some(dir) if role == Role::Main => {
                let mut env = u.spec.env.clone();
                env.extend(crate::supervisor::envfile::read(
                    &dir.join(format!("{}.env", u.spec.name)),
                ));
                env
            }
            _ => u.spec.env.clone(),
        };
        let spec = SpawnSpec {
            argv,
            env: &env,
            working_dir: u.spec.working_dir.as_deref(),
            identity: identity.as_ref(),
            output,
        };
        let Spawned { pid, output } = spawn::spawn(&spec).map_err(|e| {
            let program = argv.first().map(String::as_str).unwrap_or("");
            format!("starting {program}: {e}")
        })?;
        self.children.insert(pid, (i, role));
        if let Some(fd) = output {
            self.pipes.push(Pipe {
                fd,
                unit: i,
                lines: Default::default(),
            });
        }
        Ok(pid)
    }

    /// Starts service `i`: its directories, its pre-start commands, then
    /// its process.
    pub(super) fn start(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.started_once {
            u.restarts += 1;
        }
        u.started_once = true;
        u.restart_requested = false;
        // `dirs`: volume folders, made before every start, below a
        // volume root only root can enter.
        for dir in u.spec.dirs.clone() {
            let made = super::dirs::prepare(
                std::path::Path::new(berth_hostapi::config::VOLUMES_ROOT),
                std::path::Path::new(&dir),
            );
            if let Err(e) = made {
                crate::say!("{}: creating directory {dir}: {e}", self.name(i));
                self.failed_start(i);
                return;
            }
        }
        self.run_pre_start(i, 0);
    }

    fn run_pre_start(&mut self, i: usize, index: usize) {
        let Some(argv) = self
            .units
            .get(i)
            .map(|u| u.spec.pre_start.get(index).cloned())
        else {
            return;
        };
        let Some(argv) = argv else {
            self.spawn_main(i);
            return;
        };
        match self.spawn_for(i, &argv, Role::Hook) {
            Ok(pid) => self.set_state(
                i,
                State::PreStart {
                    index,
                    pid,
                    deadline: Instant::now() + HOOK_TIMEOUT,
                },
            ),
            Err(why) => {
                crate::say!("{}: pre-start command failed: {why}", self.name(i));
                self.failed_start(i);
            }
        }
    }

    fn spawn_main(&mut self, i: usize) {
        let Some(argv) = self.units.get(i).map(|u| u.spec.command.clone()) else {
            return;
        };
        match self.spawn_for(i, &argv, Role::Main) {
            Ok(pid) => {
                let now = Instant::now();
                if let Some(u) = self.units.get_mut(i) {
                    u.started_at = Some(now);
                    // Even `started` is checked a moment later: a process
                    // that exits at once must not make the host ready.
                    let first_probe = match u.spec.ready {
                        Readiness::Started => clock::after(now, STARTED_SETTLE),
                        _ => now,
                    };
                    u.state = State::Running {
                        pid,
                        ready: false,
                        next_probe: first_probe,
                    };
                    crate::say!("{}: started (pid {pid})", u.spec.name);
                }
            }
            Err(why) => {
                crate::say!("{}: {why}", self.name(i));
                self.failed_start(i);
            }
        }
    }

    /// A start that failed before the main process ran counts as a failure.
    fn failed_start(&mut self, i: usize) {
        let then = self.decide(i, false, Duration::ZERO);
        self.announce_restart(i, then);
        self.run_post_stop(i, 0, then);
    }

    /// What follows an exit, by restart policy.
    fn decide(&mut self, i: usize, success: bool, ran_for: Duration) -> AfterStop {
        let shutting_down = self.shutdown.is_some();
        let Some(u) = self.units.get_mut(i) else {
            return AfterStop::Stopped;
        };
        if shutting_down {
            return AfterStop::Stopped;
        }
        if u.restart_requested {
            return AfterStop::Stopped; // `finish` starts it again
        }
        let restart = match u.spec.restart {
            Restart::Always => true,
            Restart::OnFailure => !success,
            Restart::Never => false,
        };
        if restart {
            AfterStop::Restart(u.backoff.on_exit(ran_for))
        } else if success {
            AfterStop::Exited
        } else {
            AfterStop::Failed
        }
    }

    fn announce_restart(&self, i: usize, then: AfterStop) {
        let Some(u) = self.units.get(i) else {
            return;
        };
        match then {
            AfterStop::Restart(delay) => {
                let looping = if u.backoff.at_cap(delay) {
                    " (crash loop: backoff at its cap)"
                } else {
                    ""
                };
                crate::say!(
                    "{}: restarting in {} ms{looping}",
                    u.spec.name,
                    delay.as_millis()
                );
            }
            AfterStop::Failed => crate::say!("{}: failed; not restarting", u.spec.name),
            AfterStop::Exited | AfterStop::Stopped => {}
        }
    }

    /// Handles the exit of a child the supervisor reaped.
    pub(super) fn on_exit(&mut self, pid: i32, exit: Exit) {
        let Some((i, role)) = self.children.remove(&pid) else {
            return; // an orphan re-parented to us: reaped, nothing else to do
        };
        let now = Instant::now();
        match role {
            Role::Main => self.main_exited(i, pid, exit, now),
            Role::Hook => self.hook_exited(i, pid, exit),
            Role::Probe => {
                let Some(u) = self.units.get_mut(i) else {
                    return;
                };
                u.probe = None;
                if let State::Running {
                    pid: main,
                    ready: false,
                    ..
                } = u.state
                {
                    if exit.success() {
                        u.state = State::Running {
                            pid: main,
                            ready: true,
                            next_probe: now,
                        };
                        crate::say!("{}: ready", u.spec.name);
                    } else {
                        u.state = State::Running {
                            pid: main,
                            ready: false,
                            next_probe: now + EXEC_PROBE_INTERVAL,
                        };
                    }
                }
            }
        }
    }

    fn main_exited(&mut self, i: usize, pid: i32, exit: Exit, now: Instant) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.main_pid() != Some(pid) {
            return;
        }
        let was_stopping = matches!(u.state, State::Stopping { .. });
        let ran_for = u
            .started_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        u.last_exit = Some(exit);
        u.started_at = None;
        if u.spec.ready == Readiness::Exited && exit.success() {
            u.exited_ok = true;
        }
        if let Some((probe, _)) = u.probe.take() {
            signal_group(probe, Signal::KILL);
        }
        crate::say!(
            "{}: {} ({exit}) after {:.1}s",
            u.spec.name,
            if was_stopping { "stopped" } else { "exited" },
            ran_for.as_secs_f64()
        );
        let then = if was_stopping {
            AfterStop::Stopped
        } else {
            self.decide(i, exit.success(), ran_for)
        };
        self.announce_restart(i, then);
        self.run_post_stop(i, 0, then);
    }

    fn hook_exited(&mut self, i: usize, pid: i32, exit: Exit) {
        let Some(state) = self.units.get(i).map(|u| u.state.clone()) else {
            return;
        };
        match state {
            State::PreStart { index, pid: p, .. } if p == pid => {
                if exit.success() {
                    self.run_pre_start(i, index + 1);
                } else {
                    crate::say!(
                        "{}: pre-start command {} failed ({exit})",
                        self.name(i),
                        index + 1
                    );
                    self.failed_start(i);
                }
            }
            State::Stopping { pid: p, .. } if p == pid => {
                // Stopped while a pre-start command ran.
                self.run_post_stop(i, 0, AfterStop::Stopped);
            }
            State::PostStop {
                index,
                pid: Some(p),
                then,
                ..
            } if p == pid => {
                if !exit.success() {
                    crate::say!(
                        "{}: post-stop command {} failed ({exit})",
                        self.name(i),
                        index + 1
                    );
                }
                self.run_post_stop(i, index + 1, then);
            }
            _ => {}
        }
    }

    /// Runs post-stop commands from `index` on, one at a time, then `finish`.
    fn run_post_stop(&mut self, i: usize, mut index: usize, then: AfterStop) {
        loop {
            let Some(argv) = self
                .units
                .get(i)
                .and_then(|u| u.spec.post_stop.get(index).cloned())
            else {
                self.finish(i, then);
                return;
            };
            match self.spawn_for(i, &argv, Role::Hook) {
                Ok(pid) => {
                    self.set_state(
                        i,
                        State::PostStop {
                            index,
                            pid: Some(pid),
                            deadline: Instant::now() + HOOK_TIMEOUT,
                            then,
                        },
                    );
                    return;
                }
                Err(why) => {
                    crate::say!("{}: post-stop command failed: {why}", self.name(i));
                    index += 1;
                }
            }
        }
    }

    fn finish(&mut self, i: usize, then: AfterStop) {
        let shutting_down = self.shutdown.is_some();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.restart_requested && !shutting_down {
            u.restart_requested = false;
            u.backoff.reset();
            u.state = State::Waiting;
            return;
        }
        u.state = match then {
            AfterStop::Restart(_) if shutting_down => State::Stopped,
            AfterStop::Restart(delay) => State::Backoff {
                until: clock::from_now(delay),
            },
            AfterStop::Exited => State::Exited,
            AfterStop::Failed => State::Failed,
            AfterStop::Stopped => State::Stopped,
        };
    }

    /// Stops service `i`: the stop signal to its process group, SIGKILL
    /// after `stop_timeout_ms`.
    pub(super) fn stop(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let now = Instant::now();
        match u.state.clone() {
            State::Waiting | State::Backoff { .. } | State::Exited | State::Failed => {
                u.state = State::Stopped;
            }
            State::PreStart { pid, .. } => {
                signal_group(pid, Signal::KILL);
                u.state = State::Stopping {
                    pid,
                    deadline: now,
                    killed: true,
                };
            }
            State::Running { pid, .. } => {
                let signal = signals::parse_signal(&u.spec.stop_signal).unwrap_or(Signal::TERM);
                crate::say!(
                    "{}: stopping (pid {pid}, {})",
                    u.spec.name,
                    signals::signal_name(signal.as_raw())
                );
                if u.tty.is_some() {
                    // A console shell's end hangs the console up, and the
                    // kernel drops what it has not sent yet: these lines.
                    crate::console::drain();
                }
                signal_group(pid, signal);
                u.state = State::Stopping {
                    pid,
                    deadline: clock::after(now, Duration::from_millis(u.spec.stop_timeout_ms)),
                    killed: false,
                };
            }
            State::PostStop {
                index,
                pid,
                deadline,
                then: _,
            } => {
                u.state = State::PostStop {
                    index,
                    pid,
                    deadline,
                    then: AfterStop::Stopped,
                };
            }
            State::Stopping { .. } | State::Stopped => {}
        }
    }

    /// A restart asked for on the control socket: stop, then start at once.
    pub(super) fn restart(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.state.is_idle() {
            u.backoff.reset();
            u.restart_requested = false;
            u.state = State::Waiting;
        } else {
            u.restart_requested = true;
            self.stop(i);
        }
    }

    /// Moves every service along: starts, timers, probes, shutdown.
    pub(super) fn advance(&mut self, now: Instant) {
        for pos in 0..self.order.len() {
            let Some(&i) = self.order.get(pos) else {
                continue;
            };
            self.advance_one(i, now);
        }
        if self.shutdown.is_some() {
            self.progress_shutdown();
        }
    }

    fn deps_ready(&self, i: usize) -> bool {
        self.units.get(i).is_some_and(|u| {
            u.deps
                .iter()
                .all(|&d| self.units.get(d).is_some_and(|dep| dep.is_ready()))
        })
    }

    fn advance_one(&mut self, i: usize, now: Instant) {
        let Some(state) = self.units.get(i).map(|u| u.state.clone()) else {
            return;
        };
        if let Some((probe, deadline)) = self.units.get(i).and_then(|u| u.probe) {
            if now >= deadline {
                signal_group(probe, Signal::KILL);
            }
        }
        match state {
            State::Backoff { until } if now >= until && self.shutdown.is_none() => {
                self.set_state(i, State::Waiting);
                if self.deps_ready(i) {
                    self.start(i);
                }
            }
            State::Waiting if self.shutdown.is_none() && self.deps_ready(i) => self.start(i),
            State::PreStart { pid, deadline, .. } if now >= deadline => {
                crate::say!("{}: pre-start command timed out", self.name(i));
                signal_group(pid, Signal::KILL);
            }
            State::PostStop {
                pid: Some(pid),
                deadline,
                ..
            } if now >= deadline => {
                crate::say!("{}: post-stop command timed out", self.name(i));
                signal_group(pid, Signal::KILL);
            }
            State::Stopping {
                pid,
                deadline,
                killed: false,
            } if now >= deadline => {
                crate::say!("{}: did not stop in time; sending SIGKILL", self.name(i));
                signal_group(pid, Signal::KILL);
                self.set_state(
                    i,
                    State::Stopping {
                        pid,
                        deadline,
                        killed: true,
                    },
                );
            }
            State::Running {
                pid,
                ready: false,
                next_probe,
            } if now >= next_probe => self.probe(i, pid, now),
            _ => {}
        }
    }

    /// Stops services one at a time in reverse start order.
    fn progress_shutdown(&mut self) {
        for pos in (0..self.order.len()).rev() {
            let Some(&i) = self.order.get(pos) else {
                continue;
            };
            let Some(state) = self.units.get(i).map(|u| u.state.clone()) else {
                continue;
            };
            match state {
                State::Waiting | State::Backoff { .. } => self.set_state(i, State::Stopped),
                State::Exited | State::Failed | State::Stopped => {}
                State::Stopping { .. } | State::PostStop { .. } => return,
                State::PreStart { .. } | State::Running { .. } => {
                    self.stop(i);
                    return;
                }
            }
        }
    }
}
