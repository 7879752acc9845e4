//! What the Berth numbers are set against: raw compare-and-swap
//! transactions through the same etcd gateway client (the floor a lock
//! server on etcd can approach), and wall times of outside programs
//! (etcdctl, the `berth` CLI) over the same records.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_fleet::etcd::{Client, Compare, EtcdConfig, Op};

/// Where the baseline's keys live (apart from everything Berth reads).
const PREFIX: &str = "/berth-bench/cas/";

/// The outcome of a run of CAS transactions.
#[derive(Debug)]
pub struct CasRun {
    /// Transactions done.
    pub count: usize,
    /// Client threads.
    pub threads: usize,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Latency of each transaction, microseconds.
    pub latencies: Vec<u64>,
}

/// `per_thread` transactions on each of `threads` threads, each thread on
/// its own key with its own client: create-if-absent, then "put if the
/// key is still at the revision I wrote", so every one succeeds and none
/// waits for another's conflict.
pub fn cas(etcd: &EtcdConfig, threads: usize, per_thread: usize) -> anyhow::Result<CasRun> {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let etcd = etcd.clone();
            let start = start.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> anyhow::Result<Vec<u64>> {
                    let client = Client::new(&etcd);
                    start.wait();
                    let client = client?;
                    let key = format!("{PREFIX}{t}").into_bytes();
                    let mut revision = client.get(&key)?.map_or(0, |kv| kv.mod_revision);
                    let mut latencies = Vec::with_capacity(per_thread);
                    for n in 0..per_thread {
                        let put = Op::Put {
                            key: key.clone(),
                            value: format!("{{\"n\":{n}}}").into_bytes(),
                            lease: 0,
                        };
                        let t = Instant::now();
                        let outcome = client.txn(
                            &[Compare::ModRevision(key.clone(), revision)],
                            &[put],
                            &[],
                        )?;
                        latencies.push(t.elapsed().as_micros() as u64);
                        if !outcome.succeeded {
                            bail!("CAS on {} lost to nobody", String::from_utf8_lossy(&key));
                        }
                        revision = outcome.revision;
                    }
                    Ok(latencies)
                })
                .context("starting a baseline thread")
        })
        .collect::<anyhow::Result<_>>()?;
    start.wait();
    let t = Instant::now();
    let mut latencies = Vec::new();
    for w in workers {
        let l = w
            .join()
            .map_err(|_| anyhow::anyhow!("a baseline thread panicked"))??;
        latencies.extend(l);
    }
    Ok(CasRun {
        count: latencies.len(),
        threads,
        wall: t.elapsed(),
        latencies,
    })
}

/// Runs `program args` `runs` times with stdout kept; the wall times and
/// the last stdout. Fails on a non-zero exit.
pub fn time_command(
    program: &Path,
    args: &[String],
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<u8>)> {
    let mut times = Vec::new();
    let mut last = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        times.push(t.elapsed());
        if !out.status.success() {
            bail!(
                "{} {}: {}: {}",
                program.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        last = out.stdout;
    }
    Ok((times, last))
}

/// Whether `berth` has the `fleet status` command (`--help` exits 0).
pub fn has_fleet_status(berth: &Path) -> bool {
    Command::new(berth)
        .args(["fleet", "status", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
