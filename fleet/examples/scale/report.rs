//! The numbers of one run, the checks on them, and their two renderings:
//! a markdown table (measure, Berth, baseline, ratio, target, met) and
//! JSON (the same rows, formatted, and the raw numbers).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::baseline::CasRun;
use crate::hosts::HostResult;

/// The FleetLock group the hosts share.
pub const GROUP: &str = "bench";

/// The `q` quantile (0–1) of `sorted` microseconds, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50, p99 and max of some microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Spread {
    fn of(mut v: Vec<u64>) -> Spread {
        v.sort_unstable();
        Spread {
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: v.last().copied().unwrap_or(0),
        }
    }

    fn json(&self) -> Value {
        json!({"p50_us": self.p50, "p99_us": self.p99, "max_us": self.max})
    }
}

/// The hosts' lock cycle, summed up.
#[derive(Debug, Default)]
pub struct LockPhase {
    /// All requests, both endpoints, every answer.
    pub requests: u64,
    /// `pre-reboot` requests.
    pub pre_reboot: u64,
    /// `steady-state` requests.
    pub steady_state: u64,
    /// Hosts that were granted a slot and gave it back.
    pub cycles: u64,
    /// Hosts that gave up without a slot.
    pub starved: u64,
    /// Hosts whose registration failed.
    pub unregistered: u64,
    /// Refusals and failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency of every request.
    pub latency: Spread,
    /// Latency of `pre-reboot` only.
    pub latency_pre: Spread,
    /// Latency of `steady-state` only.
    pub latency_steady: Spread,
    /// First `pre-reboot` to grant, per host.
    pub wait: Spread,
    /// Registration time per host.
    pub register: Spread,
    /// Wall time of the registration (all hosts, at once).
    pub register_wall: Duration,
    /// Wall time of the cycle (all hosts, at once).
    pub wall: Duration,
    /// Sum of all request latencies, seconds (÷ wall: requests in flight).
    pub busy_secs: f64,
    /// One message per error kind (and `renewal`).
    pub samples: BTreeMap<String, String>,
    /// Lease renewals during the cycle, and failed ones.
    pub renewals: (u64, u64),
}

impl LockPhase {
    /// Sums up the hosts' results.
    pub fn from_hosts(hosts: &[HostResult], wall: Duration, register_wall: Duration) -> LockPhase {
        let mut all = Vec::new();
        let (mut pre, mut steady, mut waits, mut register) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut phase = LockPhase {
            wall,
            register_wall,
            ..LockPhase::default()
        };
        for h in hosts {
            pre.extend(&h.pre_reboot);
            steady.extend(&h.steady_state);
            register.push(h.register.as_micros() as u64);
            if h.register_error.is_some() {
                phase.unregistered += 1;
                continue;
            }
            if h.starved {
                phase.starved += 1;
            } else {
                waits.push(h.wait.as_micros() as u64);
                if !h.steady_state.is_empty() {
                    phase.cycles += 1;
                }
            }
            for (k, v) in &h.samples {
                phase.samples.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, n) in &h.errors {
                *phase.errors.entry(k.clone()).or_default() += n;
            }
            phase.renewals.0 += h.renewals;
            phase.renewals.1 += h.renew_errors;
        }
        all.extend(&pre);
        all.extend(&steady);
        phase.pre_reboot = pre.len() as u64;
        phase.steady_state = steady.len() as u64;
        phase.requests = all.len() as u64;
        phase.busy_secs = all.iter().sum::<u64>() as f64 / 1e6;
        phase.latency = Spread::of(all);
        phase.latency_pre = Spread::of(pre);
        phase.latency_steady = Spread::of(steady);
        phase.wait = Spread::of(waits);
        phase.register = Spread::of(register);
        phase
    }
}

/// What etcd's history of the group's key showed.
#[derive(Debug, Default)]
pub struct History {
    /// Revisions read, from the key's creation to the end of the cycle.
    pub revisions: u64,
    /// Distinct values the key had (writes).
    pub values: u64,
    /// The most holders any value had.
    pub max_holders: usize,
    /// Holders after the last host's `steady-state`.
    pub holders_at_end: usize,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Measured {
    /// Simulated hosts.
    pub hosts: usize,
    /// Slots of the group.
    pub slots: u32,
    /// Mean back-off, ms.
    pub backoff_ms: u64,
    /// Hold time, ms.
    pub hold_ms: u64,
    /// Lease TTL, s.
    pub lease_ttl: u64,
    /// The most threads the lock server process had (sampled each second).
    pub server_threads_peak: u64,
    /// The lock cycle.
    pub lock: LockPhase,
    /// The group key's history.
    pub history: History,
    /// Fleet view, read + text, median.
    pub view_median: Duration,
    /// Fleet view, read + JSON, median.
    pub view_json_median: Duration,
    /// Hosts the view listed.
    pub view_hosts: usize,
    /// Bytes of the text and of the JSON rendering.
    pub view_bytes: (usize, usize),
    /// Timed runs of each view measurement.
    pub view_runs: usize,
    /// etcdctl's median wall time and the count it reported.
    pub etcdctl: Option<(Duration, u64)>,
    /// `berth fleet status`'s median wall time and output bytes, if it exists.
    pub cli_status: Option<(Duration, usize)>,
    /// Raw CAS at the lock phase's concurrency.
    pub concurrent: CasRun,
    /// Raw CAS, one at a time.
    pub serial: CasRun,
}

/// One run's report.
#[derive(Debug)]
pub struct Report {
    /// The numbers.
    pub measured: Measured,
}

fn rate(n: f64) -> String {
    if n >= 100.0 {
        format!("{n:.0}/s")
    } else {
        format!("{n:.1}/s")
    }
}

fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn dms(d: Duration) -> String {
    ms(d.as_micros() as u64)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        return "–".into();
    }
    let r = a / b;
    if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.2e}")
    }
}

/// One table row: measure, Berth, baseline, ratio, target, met.
type Row = [String; 6];

fn row(measure: String, berth: String, baseline: String, ratio: String) -> Row {
    [
        measure,
        berth,
        baseline,
        ratio,
        String::new(),
        String::new(),
    ]
}

impl Report {
    fn cas_rate(run: &CasRun) -> f64 {
        run.count as f64 / run.wall.as_secs_f64().max(1e-9)
    }

    /// The table's rows.
    pub fn rows(&self) -> Vec<Row> {
        let m = &self.measured;
        let l = &m.lock;
        let wall = l.wall.as_secs_f64().max(1e-9);
        let lock_rate = l.requests as f64 / wall;
        let cycle_rate = l.cycles as f64 / wall;
        let conc = Spread::of(m.concurrent.latencies.clone());
        let conc_rate = Self::cas_rate(&m.concurrent);
        let serial_rate = Self::cas_rate(&m.serial);
        let cas_label = format!(
            "raw CAS txns, {} threads (own keys): {}",
            m.concurrent.threads,
            rate(conc_rate)
        );
        let mut rows = vec![
            row(
                format!(
                    "Lock requests per second ({} hosts, {} slots; pre-reboot + steady-state, every answer)",
                    m.hosts, m.slots
                ),
                format!("{} ({} in {:.1} s)", rate(lock_rate), l.requests, wall),
                cas_label,
                ratio(lock_rate, conc_rate),
            ),
            row(
                "Lock request latency, p50".into(),
                ms(l.latency.p50),
                format!("raw CAS txn: {}", ms(conc.p50)),
                ratio(l.latency.p50 as f64, conc.p50 as f64),
            ),
            row(
                "Lock request latency, p99".into(),
                format!(
                    "{} (pre-reboot {}, steady-state {}; max {})",
                    ms(l.latency.p99),
                    ms(l.latency_pre.p99),
                    ms(l.latency_steady.p99),
                    ms(l.latency.max)
                ),
                format!("raw CAS txn: {}", ms(conc.p99)),
                ratio(l.latency.p99 as f64, conc.p99 as f64),
            ),
            row(
                "Granted cycles per second (grant + release: two writes of the group's key)".into(),
                format!("{} ({} of {} hosts)", rate(cycle_rate), l.cycles, m.hosts),
                format!(
                    "serial raw CAS txns ÷ 2: {} ({} txns)",
                    rate(serial_rate / 2.0),
                    m.serial.count
                ),
                ratio(cycle_rate, serial_rate / 2.0),
            ),
            row(
                "Wait for a slot (first pre-reboot → granted), p50 / p99 / max".into(),
                format!(
                    "{} / {} / {}",
                    ms(l.wait.p50),
                    ms(l.wait.p99),
                    ms(l.wait.max)
                ),
                "–".into(),
                "–".into(),
            ),
        ];
        let mut holders = row(
            "Most holders in any revision of the group's key (etcd history)".into(),
            format!(
                "{} of {} slots ({} revisions read, {} writes; {} at the end)",
                m.history.max_holders,
                m.slots,
                m.history.revisions,
                m.history.values,
                m.history.holders_at_end
            ),
            "–".into(),
            "–".into(),
        );
        holders[4] = "≤ slots".into();
        holders[5] = if m.history.max_holders <= m.slots as usize {
            "yes".into()
        } else {
            "**no**".into()
        };
        rows.push(holders);
        rows.push(row(
            "Registration (lease grant, host record, seen record), all hosts at once".into(),
            format!(
                "{} hosts in {:.1} s: {} (per host p50 {}, p99 {})",
                m.hosts,
                l.register_wall.as_secs_f64(),
                rate(m.hosts as f64 / l.register_wall.as_secs_f64().max(1e-9)),
                ms(l.register.p50),
                ms(l.register.p99)
            ),
            "–".into(),
            "–".into(),
        ));
        let etcdctl = m.etcdctl.map(|(d, _)| d);
        let baseline = etcdctl.map_or("–".to_string(), |d| {
            format!("`etcdctl get --prefix /berth/hosts/ -w json`: {}", dms(d))
        });
        let vs = |d: Duration| {
            etcdctl.map_or("–".to_string(), |e| {
                ratio(d.as_secs_f64(), e.as_secs_f64())
            })
        };
        let target = |d: Duration| -> [String; 2] {
            [
                "< 1 s".into(),
                if d < Duration::from_secs(1) {
                    "yes".into()
                } else {
                    "**no**".into()
                },
            ]
        };
        let mut view = row(
            format!(
                "Fleet view over {} hosts, in-process (3 prefix reads + text), median of {}",
                m.view_hosts, m.view_runs
            ),
            dms(m.view_median),
            baseline.clone(),
            vs(m.view_median),
        );
        [view[4], view[5]] = target(m.view_median);
        rows.push(view);
        rows.push(row(
            format!(
                "Fleet view over {} hosts, in-process, as JSON",
                m.view_hosts
            ),
            dms(m.view_json_median),
            baseline.clone(),
            vs(m.view_json_median),
        ));
        let mut cli = row(
            format!(
                "`berth fleet status --etcd URL` over {} hosts (process wall time), median of {}",
                m.hosts, m.view_runs
            ),
            m.cli_status
                .map_or("– (not in this build)".into(), |(d, _)| dms(d)),
            baseline,
            m.cli_status.map_or("–".into(), |(d, _)| vs(d)),
        );
        if let Some((d, _)) = m.cli_status {
            [cli[4], cli[5]] = target(d);
        } else {
            cli[4] = "< 1 s".into();
        }
        rows.push(cli);
        rows
    }

    /// Lines for under the table.
    pub fn notes(&self) -> Vec<String> {
        let m = &self.measured;
        let l = &m.lock;
        let errors: Vec<String> = l.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut notes = vec![
            format!(
                "hosts back off {} ms (jittered 0.5–1.5×) after a refusal and hold a slot {} ms; \
                 {} pre-reboot and {} steady-state requests; refusals and failures by kind: {}",
                m.backoff_ms,
                m.hold_ms,
                l.pre_reboot,
                l.steady_state,
                if errors.is_empty() {
                    "none".into()
                } else {
                    errors.join(", ")
                }
            ),
            format!(
                "requests in flight during the cycle (sum of latencies ÷ wall time): {:.1}; the \
                 concurrent CAS baseline ran that many threads",
                l.busy_secs / l.wall.as_secs_f64().max(1e-9)
            ),
            format!(
                "lock server threads (peak, sampled each second): {}; {} lease renewals during \
                 the cycle ({} failed or found the lease gone), TTL {} s",
                m.server_threads_peak, l.renewals.0, l.renewals.1, m.lease_ttl
            ),
            format!(
                "fleet view: {} hosts listed, text {} bytes, JSON {} bytes; etcdctl counted {}",
                m.view_hosts,
                m.view_bytes.0,
                m.view_bytes.1,
                m.etcdctl.map_or("–".into(), |(_, c)| c.to_string())
            ),
        ];
        for (k, v) in &l.samples {
            if k != "semaphore_full" {
                notes.push(format!("first {k} error: {v}"));
            }
        }
        notes
    }

    /// The markdown table and the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| Measure | Berth | Baseline | Ratio | Target | Met |\n|---|---|---|---|---|---|\n",
        );
        for r in self.rows() {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out.push('\n');
        for n in self.notes() {
            out.push_str(&format!("- {n}\n"));
        }
        out
    }

    /// The rows, the notes, the raw numbers and the failed checks, as JSON.
    pub fn json(&self) -> String {
        let m = &self.measured;
        let l = &m.lock;
        let conc = Spread::of(m.concurrent.latencies.clone());
        let serial = Spread::of(m.serial.latencies.clone());
        let rows: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|[measure, berth, baseline, ratio, target, met]| {
                json!({"measure": measure, "berth": berth, "baseline": baseline,
                       "ratio": ratio, "target": target, "met": met})
            })
            .collect();
        let value = json!({
            "rows": rows,
            "notes": self.notes(),
            "failures": self.failures(),
            "hosts": m.hosts, "slots": m.slots, "backoff_ms": m.backoff_ms,
            "hold_ms": m.hold_ms, "lease_ttl": m.lease_ttl,
            "lock": {
                "requests": l.requests, "pre_reboot": l.pre_reboot,
                "steady_state": l.steady_state, "cycles": l.cycles,
                "starved": l.starved, "unregistered": l.unregistered,
                "errors": l.errors, "samples": l.samples, "wall_s": l.wall.as_secs_f64(),
                "requests_per_s": l.requests as f64 / l.wall.as_secs_f64().max(1e-9),
                "cycles_per_s": l.cycles as f64 / l.wall.as_secs_f64().max(1e-9),
                "latency": l.latency.json(), "latency_pre_reboot": l.latency_pre.json(),
                "latency_steady_state": l.latency_steady.json(), "wait": l.wait.json(),
                "register": l.register.json(), "register_wall_s": l.register_wall.as_secs_f64(),
                "in_flight": l.busy_secs / l.wall.as_secs_f64().max(1e-9),
                "renewals": l.renewals.0, "renew_errors": l.renewals.1,
                "server_threads_peak": m.server_threads_peak,
            },
            "history": {
                "revisions": m.history.revisions, "writes": m.history.values,
                "max_holders": m.history.max_holders, "holders_at_end": m.history.holders_at_end,
            },
            "view": {
                "hosts": m.view_hosts, "runs": m.view_runs,
                "text_median_s": m.view_median.as_secs_f64(),
                "json_median_s": m.view_json_median.as_secs_f64(),
                "text_bytes": m.view_bytes.0, "json_bytes": m.view_bytes.1,
                "etcdctl_median_s": m.etcdctl.map(|(d, _)| d.as_secs_f64()),
                "etcdctl_count": m.etcdctl.map(|(_, c)| c),
                "cli_median_s": m.cli_status.map(|(d, _)| d.as_secs_f64()),
            },
            "baseline": {
                "concurrent": {"threads": m.concurrent.threads, "txns": m.concurrent.count,
                               "wall_s": m.concurrent.wall.as_secs_f64(),
                               "per_s": Self::cas_rate(&m.concurrent), "latency": conc.json()},
                "serial": {"txns": m.serial.count, "wall_s": m.serial.wall.as_secs_f64(),
                           "per_s": Self::cas_rate(&m.serial), "latency": serial.json()},
            },
        });
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    /// The checks that failed (empty: the run passed).
    pub fn failures(&self) -> Vec<String> {
        let m = &self.measured;
        let mut f = Vec::new();
        if m.history.max_holders > m.slots as usize {
            f.push(format!(
                "a revision of the group's key had {} holders, more than its {} slots",
                m.history.max_holders, m.slots
            ));
        }
        if m.history.holders_at_end != 0 {
            f.push(format!(
                "{} holders left after every host's steady-state",
                m.history.holders_at_end
            ));
        }
        if m.lock.unregistered > 0 {
            f.push(format!("{} hosts could not register", m.lock.unregistered));
        }
        if m.lock.starved > 0 {
            f.push(format!("{} hosts never got a slot", m.lock.starved));
        }
        if m.lock.cycles + m.lock.starved + m.lock.unregistered != m.hosts as u64 {
            f.push(format!(
                "only {} of {} hosts finished their cycle",
                m.lock.cycles, m.hosts
            ));
        }
        if m.view_hosts != m.hosts {
            f.push(format!(
                "the fleet view listed {} hosts, not {}",
                m.view_hosts, m.hosts
            ));
        }
        f
    }
}
