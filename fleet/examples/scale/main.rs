//! The fleet scale benchmark (no VMs): a throwaway one-member etcd, the
//! real `berth-fleetlock` server on loopback, and N simulated hosts (one
//! thread each) that register in the registry under a lease and then all
//! go through one reboot cycle at once, as in a rollout: `pre-reboot`
//! until granted, a short hold, `steady-state`. It measures lock requests
//! per second and their latency, checks in etcd's history of the group's
//! key that no revision ever had more holders than slots, then times the
//! fleet view over the N host records. Baselines from the same run: raw
//! compare-and-swap transactions through the same etcd client, and
//! `etcdctl get --prefix` over the same records.
//!
//! It prints a markdown table (or JSON with `--json`) on stdout and
//! progress on stderr; it exits 1 when a check fails (more holders than
//! slots, a starved or unregistered host, a view that misses hosts).
//! Run with `cargo run --release -p berth-fleet --example scale`; see
//! docs/benchmarks.md.

mod baseline;
mod hosts;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_etcd_fixture::{EtcdCluster, etcd_binary, free_port};
use berth_fleet::etcd::Client;
use berth_fleet::lock::{Semaphore, group_key};
use berth_fleet::registry::{HOSTS_PREFIX, unix_now};
use berth_fleet::view::FleetView;
use clap::Parser;

use crate::report::{Measured, Report};

/// Measure the lock server and the registry with many simulated hosts.
#[derive(Parser, Debug, Clone)]
pub struct Cli {
    /// Simulated hosts (one thread each).
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Reboot slots of the group.
    #[arg(long, default_value_t = 10)]
    pub slots: u32,
    /// Mean pause after a refused pre-reboot, ms (jittered 0.5–1.5×).
    #[arg(long, default_value_t = 200)]
    pub backoff_ms: u64,
    /// How long a host holds its slot, ms.
    #[arg(long, default_value_t = 20)]
    pub hold_ms: u64,
    /// Registry lease TTL, seconds (renewed every third of it).
    #[arg(long, default_value_t = 30)]
    pub lease_ttl: u64,
    /// Timed runs of the fleet view, etcdctl and the CLI (the median is shown).
    #[arg(long, default_value_t = 5)]
    pub view_runs: usize,
    /// At most this many serial CAS transactions in the baseline.
    #[arg(long, default_value_t = 3000)]
    pub serial_max: usize,
    /// The lock server binary (default: berth-fleetlock next to target/release/examples/).
    #[arg(long)]
    pub fleetlock: Option<PathBuf>,
    /// The berth CLI, timed as `berth fleet status` when it has that command.
    #[arg(long)]
    pub berth: Option<PathBuf>,
    /// etcdctl, for the prefix-read baseline.
    #[arg(long, default_value = "/usr/bin/etcdctl")]
    pub etcdctl: PathBuf,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    pub json: bool,
}

/// A binary next to this example's directory (target/release/NAME).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn log(msg: &str) {
    eprintln!("scale: {msg}");
}

/// A `berth-fleetlock` process, killed on drop.
struct LockServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl LockServer {
    fn start(
        binary: &Path,
        dir: &Path,
        endpoints: &[String],
        slots: u32,
    ) -> anyhow::Result<LockServer> {
        let config = dir.join("fleet-lock.toml");
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "[etcd3]\nendpoints = [{}]\n\n[[lock.groups]]\nname = \"{}\"\nslots = {slots}\n",
                endpoints.join(", "),
                report::GROUP
            ),
        )
        .context("writing the lock server's configuration")?;
        let port = free_port();
        let log = dir.join("berth-fleetlock.log");
        let out = std::fs::File::create(&log).context("creating the lock server's log")?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .args(["--address", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = LockServer {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            log,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let health = agent.get(&format!("{}health", server.url)).call();
            if health.is_ok_and(|r| r.status().as_u16() == 200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "the lock server did not answer /health with 200 within 15 s (log: {})",
                    server.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's thread count now (`Threads:` of /proc/PID/status).
    fn threads(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for LockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The largest holder count of any revision of the group's key, the
/// number of distinct values it had, the revisions read, and the holders
/// at the end. Reads every revision from the key's creation to `head`
/// (the revision after the last host's cycle), on a few threads.
fn walk_history(
    client: &Client,
    etcd: &berth_fleet::etcd::EtcdConfig,
    head: i64,
) -> anyhow::Result<report::History> {
    let key = group_key(report::GROUP);
    let Some(now) = client.get(&key)? else {
        bail!(
            "the group's key {} does not exist",
            String::from_utf8_lossy(&key)
        );
    };
    let first = now.create_revision;
    let threads = 4i64;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let etcd = etcd.clone();
            let key = key.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<(i64, usize)>> {
                let client = Client::new(&etcd)?;
                let mut values = Vec::new();
                let mut rev = first + t;
                while rev <= head {
                    if let Some(kv) = client.get_at(&key, rev)? {
                        if kv.mod_revision == rev {
                            let s = Semaphore::from_json(&kv.value)
                                .with_context(|| format!("revision {rev} of the group's key"))?;
                            values.push((rev, s.holders.len()));
                        }
                    }
                    rev += threads;
                }
                Ok(values)
            })
        })
        .collect();
    let mut values = Vec::new();
    for w in workers {
        values.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a history thread panicked"))??,
        );
    }
    let last = client
        .get_at(&key, head)?
        .map(|kv| Semaphore::from_json(&kv.value).map(|s| s.holders.len()))
        .transpose()?
        .unwrap_or(0);
    Ok(report::History {
        revisions: (head - first + 1).max(0) as u64,
        values: values.len() as u64,
        max_holders: values.iter().map(|(_, n)| *n).max().unwrap_or(0),
        holders_at_end: last,
    })
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn run(cli: &Cli) -> anyhow::Result<Report> {
    let etcd_bin = etcd_binary().context("no etcd at $BERTH_ETCD or /usr/bin/etcd")?;
    let fleetlock = cli
        .fleetlock
        .clone()
        .unwrap_or_else(|| sibling("berth-fleetlock"));
    let berth = cli.berth.clone().unwrap_or_else(|| sibling("berth"));
    let dir = tempfile::Builder::new()
        .prefix("berth-scale-")
        .tempdir()
        .context("creating a temporary directory")?;
    log("starting a one-member etcd");
    let cluster = EtcdCluster::start(&etcd_bin, 1).context("starting etcd")?;
    let etcd = cluster.config();
    let endpoint = cluster.endpoints().remove(0);
    let client = cluster.client();
    log(&format!("starting {}", fleetlock.display()));
    let server = LockServer::start(&fleetlock, dir.path(), &cluster.endpoints(), cli.slots)?;

    let plan = Arc::new(hosts::Plan {
        etcd: etcd.clone(),
        lock_url: server.url.clone(),
        group: report::GROUP.to_string(),
        backoff: Duration::from_millis(cli.backoff_ms),
        hold: Duration::from_millis(cli.hold_ms),
        lease_ttl: cli.lease_ttl,
        give_up: Duration::from_secs(300),
    });
    let start = Arc::new(Barrier::new(cli.hosts + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, results) = mpsc::channel();
    log(&format!("starting {} hosts", cli.hosts));
    let t_register = Instant::now();
    let mut threads = Vec::new();
    for i in 0..cli.hosts {
        let (plan, start, stop, done) = (plan.clone(), start.clone(), stop.clone(), done.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("host-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || hosts::run(i, plan, start, stop, done))
                .context("starting a host thread")?,
        );
    }
    drop(done);
    start.wait();
    let register_wall = t_register.elapsed();
    log(&format!(
        "registered in {register_wall:.2?}; the rollout starts"
    ));
    let t_lock = Instant::now();
    let mut host_results = Vec::new();
    let mut peak_threads = server.threads().unwrap_or(0);
    while host_results.len() < cli.hosts {
        match results.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => host_results.push(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        peak_threads = peak_threads.max(server.threads().unwrap_or(0));
    }
    let lock_wall = t_lock.elapsed();
    // The store's revision now: every write of the group key is at or before it.
    let head = client.prefix(&group_key(report::GROUP))?.revision;
    log(&format!(
        "{} cycles in {lock_wall:.2?}; walking the group key's history",
        host_results.len()
    ));
    let history = walk_history(&client, &etcd, head)?;

    log("timing the fleet view");
    let mut view_times = Vec::new();
    let mut view_hosts = 0;
    let mut view_bytes = (0, 0);
    for _ in 0..cli.view_runs {
        let t = Instant::now();
        let view = FleetView::read(&client, unix_now())?;
        let text = view.text();
        view_times.push(t.elapsed());
        view_hosts = view.hosts.len();
        view_bytes.0 = text.len();
    }
    let mut json_times = Vec::new();
    for _ in 0..cli.view_runs {
        let t = Instant::now();
        let view = FleetView::read(&client, unix_now())?;
        let json = serde_json::to_string(&view)?;
        json_times.push(t.elapsed());
        view_bytes.1 = json.len();
    }
    let etcdctl_args: Vec<String> = [
        "--endpoints",
        &endpoint,
        "get",
        "--prefix",
        HOSTS_PREFIX,
        "-w",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let etcdctl = if cli.etcdctl.is_file() {
        let (times, out) = baseline::time_command(&cli.etcdctl, &etcdctl_args, cli.view_runs)?;
        let count = serde_json::from_slice::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v.get("count").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        Some((median(times), count))
    } else {
        log(&format!(
            "no {}: no etcdctl baseline",
            cli.etcdctl.display()
        ));
        None
    };
    let cli_status = if baseline::has_fleet_status(&berth) {
        let args = vec![
            "fleet".into(),
            "status".into(),
            "--etcd".into(),
            endpoint.clone(),
        ];
        let (times, out) = baseline::time_command(&berth, &args, cli.view_runs)?;
        Some((median(times), out.len()))
    } else {
        log(&format!(
            "{} has no `fleet status` yet: its row stays empty",
            berth.display()
        ));
        None
    };

    let lock = report::LockPhase::from_hosts(&host_results, lock_wall, register_wall);
    let concurrency =
        ((lock.busy_secs / lock_wall.as_secs_f64()).round() as usize).clamp(1, cli.hosts);
    let per_thread = (lock.requests as usize).div_ceil(concurrency).max(1);
    log(&format!(
        "baseline: {} CAS transactions on {concurrency} threads (the lock phase's mean requests in flight)",
        per_thread * concurrency
    ));
    let concurrent = baseline::cas(&etcd, concurrency, per_thread)?;
    let serial_count = (lock.requests as usize).min(cli.serial_max).max(1);
    log(&format!("baseline: {serial_count} serial CAS transactions"));
    let serial = baseline::cas(&etcd, 1, serial_count)?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(Report {
        measured: Measured {
            hosts: cli.hosts,
            slots: cli.slots,
            backoff_ms: cli.backoff_ms,
            hold_ms: cli.hold_ms,
            lease_ttl: cli.lease_ttl,
            server_threads_peak: peak_threads,
            lock,
            history,
            view_median: median(view_times),
            view_json_median: median(json_times),
            view_hosts,
            view_bytes,
            view_runs: cli.view_runs,
            etcdctl,
            cli_status,
            concurrent,
            serial,
        },
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(report) => {
            if cli.json {
                println!("{}", report.json());
            } else {
                println!("{}", report.markdown());
            }
            let failures = report.failures();
            for f in &failures {
                log(&format!("FAILED: {f}"));
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            log(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
