//! The simulated hosts: one thread each, with its own etcd client and its
//! own FleetLock client, as a real host has. A host registers (a lease,
//! its host record and its seen record, through [`Registrar`]), waits for
//! the others, then asks for a reboot slot until granted, holds it a
//! moment, gives it back, and keeps its lease alive until told to stop.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use berth_fleet::etcd::{Client, EtcdConfig};
use berth_fleet::protocol;
use berth_fleet::registry::{
    HostRecord, Registrar, RegistrarConfig, Renewal, sleep_unless, unix_now,
};

/// What every host is told.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The etcd cluster.
    pub etcd: EtcdConfig,
    /// The lock server's base URL.
    pub lock_url: String,
    /// The FleetLock group.
    pub group: String,
    /// Mean pause after a refused `pre-reboot` (uniform in 0.5–1.5×).
    pub backoff: Duration,
    /// How long a granted slot is held before `steady-state`.
    pub hold: Duration,
    /// The registry lease TTL, seconds.
    pub lease_ttl: u64,
    /// A host that has no slot after this long gives up (starved).
    pub give_up: Duration,
}

/// What one host saw.
#[derive(Debug, Default)]
pub struct HostResult {
    /// Time to register (lease grant and both record puts).
    pub register: Duration,
    /// Registration error, if it failed (the host then takes no slot).
    pub register_error: Option<String>,
    /// Latency of every `pre-reboot` request, microseconds.
    pub pre_reboot: Vec<u64>,
    /// Latency of every `steady-state` request, microseconds.
    pub steady_state: Vec<u64>,
    /// From the first `pre-reboot` to the grant.
    pub wait: Duration,
    /// Whether it gave up without a slot.
    pub starved: bool,
    /// Refusals and failures by error kind (`semaphore_full`, `conflict`…).
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error kind seen.
    pub samples: BTreeMap<String, String>,
    /// Lease renewals done during the cycle.
    pub renewals: u64,
    /// Renewals that failed or found the lease gone.
    pub renew_errors: u64,
}

/// The id of host `i`: 32 hex digits, like an app-specific machine id.
pub fn host_id(i: usize) -> String {
    format!(
        "{:032x}",
        (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

fn record(i: usize, group: &str) -> HostRecord {
    HostRecord {
        id: host_id(i),
        hostname: format!("host-{i:04}"),
        addresses: vec![format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)],
        image: "minimal".into(),
        version: if i % 4 == 0 { "1.0.1" } else { "1.0.0" }.into(),
        commit: format!("{:064x}", i % 2 + 1),
        boot_state: "good".into(),
        agent_state: Some("idle".into()),
        fleet_lock_group: Some(group.to_string()),
        ..HostRecord::default()
    }
}

fn millis_jittered(mean: Duration) -> Duration {
    let ms = mean.as_millis() as u64;
    Duration::from_millis(fastrand::u64(ms / 2..=ms + ms / 2))
}

/// The lease, kept alive as the registration loop does (every TTL/3).
struct Lease {
    registrar: Registrar,
    record: HostRecord,
    next: Instant,
}

impl Lease {
    fn keep(&mut self, result: &mut HostResult) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.registrar.config().renew_every();
        result.renewals += 1;
        match self.registrar.renew() {
            Ok(Renewal::Renewed(_)) | Ok(Renewal::NoLease) => {}
            other => {
                result.renew_errors += 1;
                let what = match other {
                    Err(e) => e.to_string(),
                    _ => "the lease was gone".to_string(),
                };
                result.samples.entry("renewal".into()).or_insert(what);
                let _ = self.registrar.publish(&self.record, &[], unix_now());
            }
        }
    }
}

impl HostResult {
    fn error(&mut self, e: &protocol::ClientError) {
        *self.errors.entry(e.kind().to_string()).or_default() += 1;
        self.samples
            .entry(e.kind().to_string())
            .or_insert_with(|| e.to_string());
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Host `i`: register, meet the others at `start`, take and give back a
/// slot, send the result on `done`, then renew until `stop`.
pub fn run(
    i: usize,
    plan: Arc<Plan>,
    start: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    done: Sender<HostResult>,
) {
    let mut result = HostResult::default();
    let t = Instant::now();
    let lease = Client::new(&plan.etcd)
        .map_err(|e| e.to_string())
        .and_then(|client| {
            let mut registrar = Registrar::new(
                client,
                RegistrarConfig {
                    lease_ttl: plan.lease_ttl,
                    ..RegistrarConfig::default()
                },
            );
            let record = record(i, &plan.group);
            registrar
                .publish(&record, &[], unix_now())
                .map_err(|e| e.to_string())?;
            Ok(Lease {
                next: Instant::now() + registrar.config().renew_every(),
                registrar,
                record,
            })
        });
    result.register = t.elapsed();
    start.wait();
    let mut lease = match lease {
        Ok(l) => l,
        Err(e) => {
            result.register_error = Some(e);
            let _ = done.send(result);
            return;
        }
    };
    let client = protocol::Client::new(
        &plan.lock_url,
        &host_id(i),
        &plan.group,
        Duration::from_secs(30),
    );
    // Hosts do not all wake at the same instant when a rollout starts.
    std::thread::sleep(millis_jittered(plan.backoff) / 4);
    let asked = Instant::now();
    loop {
        lease.keep(&mut result);
        let t = Instant::now();
        let answer = client.pre_reboot();
        result.pre_reboot.push(micros(t.elapsed()));
        match answer {
            Ok(()) => break,
            Err(e) => result.error(&e),
        }
        if asked.elapsed() > plan.give_up {
            result.starved = true;
            break;
        }
        std::thread::sleep(millis_jittered(plan.backoff));
    }
    result.wait = asked.elapsed();
    if !result.starved {
        std::thread::sleep(plan.hold);
        loop {
            lease.keep(&mut result);
            let t = Instant::now();
            let answer = client.steady_state();
            result.steady_state.push(micros(t.elapsed()));
            match answer {
                Ok(()) => break,
                Err(e) => result.error(&e),
            }
            if asked.elapsed() > 2 * plan.give_up {
                break;
            }
            std::thread::sleep(millis_jittered(plan.backoff));
        }
    }
    let _ = done.send(result);
    // Stay registered (the fleet view is read next), renewing like a host.
    let mut ignored = HostResult::default();
    while !sleep_unless(&stop, Duration::from_millis(500)) {
        lease.keep(&mut ignored);
    }
}
