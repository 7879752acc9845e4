//! The service supervisor: one single-threaded poll loop over the signalfd,
//! the control socket and the services' output pipes, with timers for
//! restarts, stop timeouts and readiness probes.
//!
//! It reaps every child (services, their hooks and probes, and orphans
//! re-parented to PID 1 or to this subreaper), restarts services by their
//! policy with backoff, prints the ready line once every required service
//! is ready, and on shutdown stops services in reverse start order. It does
//! not mount, reboot or exit by itself: [`Supervisor::run`] returns the
//! shutdown action to the caller (stage 2, or the `supervise` command).
//!
//! This directory holds what only the supervisor uses: the control socket
//! ([`control`]), service users ([`users`]) and environment files
//! ([`envfile`]), the power button it watches ([`powerbutton`], opened
//! by stage 2), and [`supervise`], the supervisor alone as a command.

mod backoff;
mod control;
mod dirs;
mod envfile;
mod graph;
mod lifecycle;
mod logs;
pub(crate) mod powerbutton;
mod readiness;
mod service;
pub(crate) mod spawn;
pub mod supervise;
mod users;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_hostapi::config::Service;
use berth_hostapi::control::{Request, Response};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::supervisor::control::ControlServer;
use crate::sys::ShutdownAction;
use crate::sys::reaper;
use crate::sys::signals::{SignalAction, Signals};
use logs::{LineBuffer, LogFile};
use service::{State, Unit};

/// The longest the loop sleeps: a periodic tick also reaps and checks
/// timers, in case a wake-up was missed.
const TICK: Duration = Duration::from_secs(1);

/// How the supervisor is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `<service>.log` files go.
    pub log_dir: PathBuf,
    /// The control socket, if any.
    pub socket: Option<PathBuf>,
    /// Root of /etc/passwd and /etc/group for `user`/`group`.
    pub users_root: PathBuf,
    /// For the ready line.
    pub image: String,
    /// For the ready line.
    pub version: String,
    /// For the ready line: the number of manifest services.
    pub n_services: usize,
    /// A boot on trial must be ready by then, or it is rebooted.
    pub ready_deadline: Option<Instant>,
    /// A directory of `<service>.env` files whose variables are added to
    /// (and win over) a service's own at each start: provisioning data.
    pub env_dir: Option<PathBuf>,
}

/// One service to supervise, with an optional terminal for the debug shell.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// The service.
    pub service: Service,
    /// Run on this terminal (stdin/stdout/stderr, controlling terminal)
    /// instead of logging its output.
    pub tty: Option<PathBuf>,
}

/// Which process of a service a pid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Hook,
    Probe,
}

/// An output pipe of some process of a service.
#[derive(Debug)]
struct Pipe {
    fd: OwnedFd,
    unit: usize,
    lines: LineBuffer,
}

/// Called once when the host becomes ready (stage 2 blesses the boot).
pub type OnReady = Box<dyn FnMut()>;

/// The supervisor.
pub struct Supervisor {
    units: Vec<Unit>,
    order: Vec<usize>,
    children: HashMap<i32, (usize, Role)>,
    pipes: Vec<Pipe>,
    control: Option<ControlServer>,
    signals: Signals,
    opts: Options,
    shutdown: Option<ShutdownAction>,
    ready_announced: bool,
    on_ready: Option<OnReady>,
    power_buttons: Vec<std::fs::File>,
}

impl Supervisor {
    /// Sets up the services (not started yet) and binds the control socket.
    pub fn new(
        specs: Vec<UnitSpec>,
        signals: Signals,
        opts: Options,
        on_ready: Option<OnReady>,
    ) -> Supervisor {
        // Names are keys (logs, control socket, `after`): the first wins.
        let mut specs = specs;
        let mut seen = std::collections::BTreeSet::new();
        specs.retain(|s| {
            let fresh = !s.service.name.is_empty() && seen.insert(s.service.name.clone());
            if !fresh {
                crate::say!("ignoring a second service named {:?}", s.service.name);
            }
            fresh
        });
        let services: Vec<Service> = specs.iter().map(|s| s.service.clone()).collect();
        let graph = graph::build(&services);
        for w in &graph.warnings {
            crate::say!("{w}");
        }
        if let Err(e) = std::fs::create_dir_all(&opts.log_dir) {
            crate::say!("creating log directory {}: {e}", opts.log_dir.display());
        }
        let units = specs
            .into_iter()
            .zip(graph.deps)
            .map(|(spec, deps)| {
                let log = LogFile::new(&opts.log_dir, &spec.service.name, logs::MAX_LOG_BYTES);
                Unit::new(spec.service, spec.tty, deps, log)
            })
            .collect();
        let control = opts
            .socket
            .as_ref()
            .and_then(|path| match ControlServer::bind(path) {
                Ok(server) => Some(server),
                Err(e) => {
                    crate::say!("control socket {}: {e}", path.display());
                    None
                }
            });
        Supervisor {
            units,
            order: graph.order,
            children: HashMap::new(),
            pipes: Vec::new(),
            control,
            signals,
            opts,
            shutdown: None,
            ready_announced: false,
            on_ready,
            power_buttons: Vec::new(),
        }
    }

    /// Powers off cleanly when one of these input devices reports a
    /// power-button press (see [`crate::supervisor::powerbutton`]).
    pub fn watch_power_buttons(&mut self, devices: Vec<std::fs::File>) {
        self.power_buttons = devices;
    }

    fn handle_power_buttons(&mut self) {
        let mut pressed = false;
        let mut buf = [0u8; crate::supervisor::powerbutton::EVENT_SIZE * 16];
        for dev in &self.power_buttons {
            while let Ok(n) = rustix::io::read(dev, &mut buf) {
                if n == 0 {
                    break;
                }
                pressed |=
                    crate::supervisor::powerbutton::pressed(buf.get(..n).unwrap_or_default());
            }
        }
        if pressed {
            crate::say!("power button pressed");
            self.begin_shutdown(ShutdownAction::Poweroff);
        }
    }

    /// Runs until a shutdown is asked for and every service is stopped;
    /// returns what to do next.
    pub fn run(&mut self) -> ShutdownAction {
        loop {
            let now = Instant::now();
            // Each turn is progress: a loop that stops turning gets the
            // machine reset.
            crate::watchdog::pet();
            crate::console::flush();
            self.handle_signals();
            self.handle_power_buttons();
            self.read_pipes();
            for (pid, exit) in reaper::reap_all() {
                self.on_exit(pid, exit);
            }
            self.handle_control(now);
            self.advance(Instant::now());
            self.check_ready(Instant::now());
            if let Some(action) = self.shutdown {
                if self.units.iter().all(|u| u.state.is_idle()) {
                    if let Some(c) = &mut self.control {
                        c.flush_blocking(Duration::from_millis(500));
                    }
                    for u in &mut self.units {
                        u.log.close();
                    }
                    return action;
                }
            }
            self.wait(Instant::now());
        }
    }

    /// Sleeps in poll(2) until a descriptor is ready or the next timer.
    fn wait(&self, now: Instant) {
        let timeout = self
            .next_timer()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(TICK)
            .min(TICK);
        let mut fds = vec![PollFd::from_borrowed_fd(self.signals.fd(), PollFlags::IN)];
        if let Some(c) = &self.control {
            for (fd, wants_in, wants_out) in c.poll_fds() {
                let mut flags = PollFlags::empty();
                if wants_in {
                    flags |= PollFlags::IN;
                }
                if wants_out {
                    flags |= PollFlags::OUT;
                }
                fds.push(PollFd::from_borrowed_fd(fd, flags));
            }
        }
        for p in &self.pipes {
            fds.push(PollFd::new(&p.fd, PollFlags::IN));
        }
        for dev in &self.power_buttons {
            fds.push(PollFd::new(dev, PollFlags::IN));
        }
        // Room on a console that output waits for.
        if let Some(fd) = crate::console::pending_fd() {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::OUT));
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut times: Vec<Instant> = Vec::new();
        for u in &self.units {
            match u.state {
                State::PreStart { deadline, .. } => times.push(deadline),
                State::Running {
                    ready: false,
                    next_probe,
                    ..
                } if u.probe.is_none() => times.push(next_probe),
                State::Stopping {
                    deadline,
                    killed: false,
                    ..
                } => times.push(deadline),
                State::PostStop { deadline, .. } => times.push(deadline),
                State::Backoff { until } => times.push(until),
                _ => {}
            }
            if let Some((_, deadline)) = u.probe {
                times.push(deadline);
            }
        }
        if !self.ready_announced {
            times.extend(self.opts.ready_deadline);
        }
        if let Some(c) = &self.control {
            times.extend(c.next_deadline());
        }
        times.into_iter().min()
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            if let SignalAction::Shutdown(action) = crate::sys::signals::action_for(sig) {
                crate::say!("received {}", crate::sys::signals::signal_name(sig));
                self.begin_shutdown(action);
            }
        }
    }

    /// Starts the shutdown: no more starts or restarts; services are
    /// stopped in reverse start order.
    pub fn begin_shutdown(&mut self, action: ShutdownAction) {
        if self.shutdown.is_none() {
            crate::say!("shutting down ({action:?}): stopping services");
            self.shutdown = Some(action);
        }
    }

    fn read_pipes(&mut self) {
        let mut lines: Vec<(usize, String)> = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        self.pipes.retain_mut(|p| {
            loop {
                match rustix::io::read(p.fd.as_fd(), &mut buf) {
                    Ok(0) => {
                        lines.extend(p.lines.finish().map(|l| (p.unit, l)));
                        break false;
                    }
                    Ok(n) => {
                        for l in p.lines.push(buf.get(..n).unwrap_or_default()) {
                            lines.push((p.unit, l));
                        }
                        // Bound the work per wake-up; the rest comes next time.
                        if lines.len() > 1000 {
                            break true;
                        }
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break true,
                    Err(_) => break false,
                }
            }
        });
        for (unit, line) in lines {
            self.emit(unit, &line);
        }
    }

    /// One output line of a service: console, log file, followers.
    fn emit(&mut self, unit: usize, line: &str) {
        let Some(u) = self.units.get_mut(unit) else {
            return;
        };
        crate::console::write_service_line(&format!("[{}] {line}", u.spec.name));
        u.log.write_line(line);
        if let Some(c) = &mut self.control {
            c.broadcast(&u.spec.name, line);
        }
    }

    fn handle_control(&mut self, now: Instant) {
        let Some(control) = &mut self.control else {
            return;
        };
        let requests = control.poll_requests(now);
        for (client, request) in requests {
            let (responses, follow) = match request {
                Err(message) => (vec![Response::Error { message }], None),
                Ok(req) => self.answer(req, now),
            };
            if let Some(c) = &mut self.control {
                c.respond(client, &responses, follow);
            }
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| u.spec.name == name)
    }

    fn answer(&mut self, req: Request, now: Instant) -> (Vec<Response>, Option<String>) {
        let error = |message: String| (vec![Response::Error { message }], None);
        match req {
            Request::Services => (
                vec![Response::Services {
                    services: self.units.iter().map(|u| u.status(now)).collect(),
                }],
                None,
            ),
            Request::Logs {
                name,
                lines,
                follow,
            } => match self.find(&name).and_then(|i| self.units.get(i)) {
                Some(u) if u.tty.is_none() => {
                    let out = logs::tail(&self.opts.log_dir, &name, lines)
                        .into_iter()
                        .map(|line| Response::LogLine { line })
                        .collect();
                    (out, follow.then_some(name))
                }
                Some(_) => error(format!("{name} runs on a terminal and has no log")),
                None => error(format!("no service {name:?}")),
            },
            Request::Restart { name } => {
                if self.shutdown.is_some() {
                    return error("shutting down".into());
                }
                match self.find(&name) {
                    Some(i) => {
                        crate::say!("{name}: restart requested");
                        self.restart(i);
                        (vec![Response::Ok], None)
                    }
                    None => error(format!("no service {name:?}")),
                }
            }
            Request::Shutdown { action } => {
                self.begin_shutdown(action);
                (vec![Response::Ok], None)
            }
        }
    }

    fn check_ready(&mut self, now: Instant) {
        if self.ready_announced {
            return;
        }
        let all_ready = self
            .units
            .iter()
            .filter(|u| u.spec.required)
            .all(Unit::is_ready);
        if all_ready && self.shutdown.is_none() {
            self.ready_announced = true;
            let secs = crate::sys::clock::since_boot().as_secs_f64();
            let line = berth_hostapi::ready_line(
                &self.opts.image,
                &self.opts.version,
                self.opts.n_services,
                secs,
            );
            crate::console::write_line(&line);
            crate::console::kmsg(&line);
            if let Some(f) = &mut self.on_ready {
                f();
            }
            return;
        }
        if let Some(deadline) = self.opts.ready_deadline {
            if now >= deadline && self.shutdown.is_none() {
                let waiting: Vec<String> = self
                    .units
                    .iter()
                    .filter(|u| u.spec.required && !u.is_ready())
                    .map(|u| format!("{} ({})", u.spec.name, u.state.name()))
                    .collect();
                crate::say!(
                    "boot on trial is not ready by its deadline; not ready: {}; rebooting so the boot counter runs down",
                    waiting.join(", ")
                );
                self.ready_announced = true; // do not say it twice
                self.begin_shutdown(ShutdownAction::Reboot);
            }
        }
    }
}
