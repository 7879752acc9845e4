//! A harness for `berth-init supervise`: writes a host configuration, runs
//! the supervisor as a child with its console output in a file, talks to
//! its control socket, and polls for conditions with deadlines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_hostapi::config::{HostConfig, Service};
use berth_hostapi::control::{Request, Response, ServiceStatus};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A running supervisor.
pub struct Supervisor {
    pub dir: tempfile::TempDir,
    child: Child,
    pub socket: PathBuf,
    pub log_dir: PathBuf,
    console: PathBuf,
}

/// A service running `sh -c script`.
pub fn sh(name: &str, script: &str) -> Service {
    Service {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        backoff_initial_ms: 100,
        backoff_max_ms: 400,
        stop_timeout_ms: 3000,
        ..Service::default()
    }
}

impl Supervisor {
    /// Starts `berth-init supervise` with these services. `setup` may edit
    /// the services once the temporary directory is known (for paths).
    pub fn start(services: Vec<Service>) -> Result<Supervisor> {
        Supervisor::start_in(tempfile::tempdir()?, services)
    }

    /// Like `start`, in a directory the test prepared.
    pub fn start_in(dir: tempfile::TempDir, services: Vec<Service>) -> Result<Supervisor> {
        Supervisor::start_with(dir, services, &[])
    }

    /// Like `start`, with the terminal `tty` as its console (`--console`)
    /// instead of standard error.
    pub fn start_with_console(services: Vec<Service>, tty: &Path) -> Result<Supervisor> {
        Supervisor::start_with(
            tempfile::tempdir()?,
            services,
            &["--console".as_ref(), tty.as_os_str()],
        )
    }

    fn start_with(
        dir: tempfile::TempDir,
        services: Vec<Service>,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Supervisor> {
        let config = HostConfig {
            image: "test".into(),
            version: "0.0.1".into(),
            services,
            ..HostConfig::default()
        };
        let config_path = dir.path().join("host.json");
        std::fs::write(&config_path, config.to_json())?;
        let socket = dir.path().join("init.sock");
        let log_dir = dir.path().join("logs");
        let console = dir.path().join("console.txt");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-init"))
            .arg("supervise")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-dir")
            .arg(&log_dir)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.txt"))?)
            .stderr(std::fs::File::create(&console)?)
            .spawn()?;
        let sup = Supervisor {
            dir,
            child,
            socket,
            log_dir,
            console,
        };
        sup.wait_until("the control socket", Duration::from_secs(10), || {
            sup.socket.exists()
        })?;
        Ok(sup)
    }

    /// A path in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the supervisor printed so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Polls `cond` every 20 ms until it holds or `timeout` passes; the
    /// error shows the console.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Result {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}\n--- console ---\n{}--- end ---",
                    self.console()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one request; returns the response lines until the server
    /// closes (or `max` lines, for follow).
    pub fn request_n(&self, req: &Request, max: usize) -> Result<Vec<Response>> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(req.to_line().as_bytes())?;
        let mut out = Vec::new();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while out.len() < max {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            out.push(serde_json::from_str(line.trim_end())?);
        }
        Ok(out)
    }

    /// Sends one request and reads every response line.
    pub fn request(&self, req: &Request) -> Result<Vec<Response>> {
        self.request_n(req, usize::MAX)
    }

    /// The services' states.
    pub fn services(&self) -> Result<Vec<ServiceStatus>> {
        match self.request(&Request::Services)?.as_slice() {
            [Response::Services { services }] => Ok(services.clone()),
            other => Err(format!("unexpected answer {other:?}").into()),
        }
    }

    /// One service's state.
    pub fn status(&self, name: &str) -> Result<ServiceStatus> {
        self.services()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no service {name}").into())
    }

    /// Waits for service `name` to satisfy `cond`.
    pub fn wait_for_status(
        &self,
        name: &str,
        timeout: Duration,
        cond: impl Fn(&ServiceStatus) -> bool,
    ) -> Result<ServiceStatus> {
        let mut last = None;
        self.wait_until(
            &format!("service {name} to reach the expected state"),
            timeout,
            || match self.status(name) {
                Ok(s) if cond(&s) => {
                    last = Some(s);
                    true
                }
                _ => false,
            },
        )
        .map_err(|e| format!("{e}\nlast status: {:?}", self.status(name).ok()))?;
        last.ok_or_else(|| "no status".into())
    }

    /// Sends SIGTERM and waits for the supervisor to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        signal(self.child.id() as i32, libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits for the supervisor to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("supervisor did not exit\n{}", self.console()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id() as i32, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A pseudo-terminal: its master (keep it open, and read it or not), and
/// the path of its slave.
pub fn pty() -> Result<(std::os::fd::OwnedFd, PathBuf)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    Ok((master, PathBuf::from(name.to_string_lossy().into_owned())))
}

/// kill(2) for tests.
pub fn signal(pid: i32, sig: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let sig = match sig {
            libc::SIGTERM => rustix::process::Signal::TERM,
            libc::SIGKILL => rustix::process::Signal::KILL,
            libc::SIGINT => rustix::process::Signal::INT,
            _ => return,
        };
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether process `pid` exists (a zombie counts as existing).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// /proc/uptime in milliseconds (for timing lines written by services).
pub fn parse_uptimes(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|s| (s * 1000.0).round() as u64)
        .collect()
}
