//! A fleet on etcd: hosts that reboot for updates one at a time through
//! FleetLock, halt on a bad release, and keep a live registry of
//! themselves and their services.
//!
//! One test, three guests (budgeted: the etcd host idles after its boot,
//! the two fleet hosts have one vCPU each):
//! - etcd and Berth's lock server (`[fleet-lock-server]`, one slot, its
//!   state in that etcd) run on a Berth host built from
//!   `manifests/etcd.toml`; two hosts from the "fleet" image (`strategy =
//!   "fleet-lock"`, `[fleet] etcd`) check for updates every 20 s.
//! - v2: both hosts end on v2 and the lock's history in etcd shows one
//!   holder at a time, the second grant after the first release; no slot
//!   is held at the end; `berth fleet status` shows both on v2.
//! - a v3 that never gets ready: the first host to get the slot tries it
//!   three times (a manual upgrade is refused while it is on trial), falls
//!   back to v2 by itself, records v3 as failed, does not take it again
//!   and keeps the slot; the other host never boots v3; the fleet view
//!   shows the group halted.
//! - discovery: the web service both hosts announce is listed by
//!   `berthctl discover` and leaves the list when it stops; a host whose
//!   QEMU is killed leaves the registry within its lease (10 s) and the
//!   fleet view names it gone; `berth fleet unlock` frees the slot; the
//!   lock server's metrics count the grants and releases it answered.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use berth::run::PortForward;
use berth_qemu_tests::fleet::{ETCD_PORT, LOCK_PORT, fleet_json, fleet_text};
use berth_qemu_tests::{
    Check, READY_TIMEOUT, SHELL_TIMEOUT, UpdateServer, Vm, VmOptions, free_port, image,
    skip_unless_qemu, wait_until,
};

const READY_V1: &str = "berth-init: ready image=fleet version=1.0.0";
const READY_V2: &str = "berth-init: ready image=fleet version=2.0.0";
/// A check (every 20 s), a pull and deploy under TCG, the wait for the
/// slot, and a reboot to the ready line.
const TAKES_A_VERSION: Duration = Duration::from_secs(600);
/// The semaphore key of group `default` (docs/fleet.md, "The lock server").
const LOCK_KEY: &[u8] = b"/berth/fleet-lock/groups/default";

fn host_options(server: &UpdateServer, etcd_port: u16, lock_port: u16) -> VmOptions {
    VmOptions {
        persistent_copy: true,
        guest_forwards: vec![
            server.forward(),
            PortForward {
                host: etcd_port,
                guest: ETCD_PORT,
            },
            PortForward {
                host: lock_port,
                guest: LOCK_PORT,
            },
        ],
        cpus: 1,
        memory_mib: 768,
        ..VmOptions::default()
    }
}

/// `berthctl <args>` in the guest, parsed from its first `{` or `[`.
fn guest_json(vm: &mut Vm, cmd: &str) -> serde_json::Value {
    let out = vm.sh(cmd);
    let start = out.find(['{', '[']).unwrap_or(0);
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{cmd}: {e}:\n{out}"))
}

fn agent(vm: &mut Vm) -> serde_json::Value {
    guest_json(vm, "berthctl agent status --json")["agent"].clone()
}

fn host_id(vm: &mut Vm) -> String {
    let st = vm.status_json();
    st["host_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no host id: {st}"))
        .to_string()
}

fn booted_version(vm: &mut Vm) -> String {
    let st = vm.status_json();
    berth_qemu_tests::vm::deployment_with_role(&st, "booted")
        .and_then(|d| d["version"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The holders of group `default` at every revision of etcd from the
/// semaphore key's creation on: (revision, holder ids), one entry per
/// change.
fn lock_history(etcd: &berth_fleet::etcd::Client) -> Vec<(i64, Vec<String>)> {
    let Some(now) = etcd.get(LOCK_KEY).unwrap() else {
        return Vec::new();
    };
    let head = etcd.prefix(b"/").unwrap().revision;
    let mut history: Vec<(i64, Vec<String>)> = Vec::new();
    let mut last_mod = 0;
    for rev in now.create_revision..=head {
        let Some(kv) = etcd.get_at(LOCK_KEY, rev).unwrap() else {
            continue;
        };
        if kv.mod_revision == last_mod {
            continue;
        }
        last_mod = kv.mod_revision;
        let value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        let holders = value["holders"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|h| h["id"].as_str().or(h.as_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        history.push((kv.mod_revision, holders));
    }
    history
}

/// The fleet view's entry for host `id`.
fn fleet_host(status: &serde_json::Value, id: &str) -> serde_json::Value {
    status["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["id"] == id))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The hosts `berthctl discover web --json` lists.
fn discovered(vm: &mut Vm) -> BTreeSet<String> {
    guest_json(vm, "berthctl discover web --json")
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["host"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_fleet_reboots_one_host_at_a_time_halts_at_a_bad_release_and_keeps_a_live_registry() {
    skip_unless_qemu!();
    let started = Instant::now();
    // etcd and the lock server on a Berth host.
    let etcd_image = image(Path::new("manifests/etcd.toml"));
    let etcd_port = free_port().unwrap();
    let lock_port = free_port().unwrap();
    let mut etcd_vm = Vm::boot(
        &etcd_image,
        VmOptions {
            publish: vec![
                PortForward {
                    host: etcd_port,
                    guest: ETCD_PORT,
                },
                PortForward {
                    host: lock_port,
                    guest: LOCK_PORT,
                },
            ],
            cpus: 1,
            memory_mib: 512,
            ..VmOptions::default()
        },
    )
    .unwrap();
    let v1 = image(Path::new("qemu-tests/manifests/fleet-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    etcd_vm
        .wait_for("berth-init: ready image=etcd", READY_TIMEOUT)
        .unwrap();
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let etcd = berth_fleet::etcd::Client::new(&berth_fleet::etcd::EtcdConfig::with_endpoints([
        etcd_url.clone(),
    ]))
    .unwrap();
    // The host is ready only once both services are (etcd's health, the
    // lock server listening); its lock server answers on the published port.
    let health = berth_qemu_tests::http::get(lock_port, "/health", SHELL_TIMEOUT).unwrap();
    assert_eq!(health.status, 200, "{health:?}");

    let mut a = Vm::boot(&v1, host_options(&server, etcd_port, lock_port)).unwrap();
    let mut b = Vm::boot(&v1, host_options(&server, etcd_port, lock_port)).unwrap();
    a.wait_for(READY_V1, READY_TIMEOUT).unwrap();
    b.wait_for(READY_V1, READY_TIMEOUT).unwrap();
    let (id_a, id_b) = (host_id(&mut a), host_id(&mut b));
    assert_ne!(id_a, id_b);

    // The registry: both hosts, on v1, with their web service announced.
    wait_until(
        Duration::from_secs(120),
        Duration::from_secs(2),
        "both hosts in the fleet view on 1.0.0",
        || {
            let st = fleet_json(&etcd_url, &["status"])?;
            let ok = [&id_a, &id_b]
                .iter()
                .all(|id| fleet_host(&st, id)["version"] == "1.0.0");
            Ok(if ok {
                Check::Done(())
            } else {
                Check::NotYet(st.to_string())
            })
        },
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        Duration::from_secs(2),
        "web announced by both hosts",
        || {
            let seen = discovered(&mut a);
            Ok(if seen.contains(&id_a) && seen.contains(&id_b) {
                Check::Done(())
            } else {
                Check::NotYet(format!("{seen:?}"))
            })
        },
    )
    .unwrap();
    println!("fleet up on v1 at {:.0}s", started.elapsed().as_secs_f64());

    // v2: one host at a time.
    server
        .publish(Path::new("qemu-tests/manifests/fleet-v2.toml"))
        .unwrap();
    a.wait_for(READY_V2, TAKES_A_VERSION).unwrap();
    b.wait_for(READY_V2, TAKES_A_VERSION).unwrap();
    wait_until(
        Duration::from_secs(120),
        Duration::from_secs(2),
        "both slots given back",
        || {
            let history = lock_history(&etcd);
            let free = history.last().is_some_and(|(_, h)| h.is_empty());
            Ok(if free {
                Check::Done(history)
            } else {
                Check::NotYet(format!("{history:?}"))
            })
        },
    )
    .unwrap();
    let history = lock_history(&etcd);
    println!("lock history (revision, holders): {history:?}");
    assert!(
        history.iter().all(|(_, h)| h.len() <= 1),
        "two holders of one slot: {history:?}"
    );
    // Each host held it once, the second only after the first gave it back.
    // (The key is created by the first grant.)
    let before = std::iter::once(&[][..]).chain(history.iter().map(|(_, h)| &h[..]));
    let grants: Vec<&String> = before
        .zip(history.iter().map(|(_, h)| &h[..]))
        .filter_map(|pair| match pair {
            ([], [h]) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 2, "{history:?}");
    let granted: BTreeSet<&String> = grants.iter().copied().collect();
    assert_eq!(
        granted,
        [&id_a, &id_b].into_iter().collect(),
        "not one grant each: {history:?}"
    );
    let st = fleet_json(&etcd_url, &["status"]).unwrap();
    for id in [&id_a, &id_b] {
        assert_eq!(fleet_host(&st, id)["version"], "2.0.0", "{st}");
    }
    let text = fleet_text(&etcd_url, &["status"]).unwrap();
    assert!(text.contains("2.0.0"), "{text}");
    println!("both on v2 at {:.0}s", started.elapsed().as_secs_f64());

    // A v3 that never gets ready: the first host to get the slot tries
    // it and falls back; the fleet stops there.
    let built = server
        .publish(Path::new("qemu-tests/manifests/fleet-v3-unready.toml"))
        .unwrap();
    let v3 = berth_qemu_tests::updates::built_commit(&built).unwrap();
    let (mut first, mut second, first_id, second_id) = wait_until(
        TAKES_A_VERSION,
        Duration::from_secs(1),
        "a host to boot v3 on trial",
        || {
            let on_trial = |vm: &Vm| {
                let text = vm.console_text();
                let from = text.rfind(READY_V2).unwrap_or(0);
                text[from..].contains("is on trial")
            };
            Ok(if on_trial(&a) {
                Check::Done(true)
            } else if on_trial(&b) {
                Check::Done(false)
            } else {
                Check::NotYet(String::new())
            })
        },
    )
    .map(|a_first| {
        if a_first {
            (a, b, id_a.clone(), id_b.clone())
        } else {
            (b, a, id_b.clone(), id_a.clone())
        }
    })
    .unwrap();
    // On trial, an upgrade by hand would remove the last blessed version.
    let (code, out) = first.run_shell("berthctl upgrade", SHELL_TIMEOUT).unwrap();
    assert_ne!(code, 0, "an upgrade from a trial boot went ahead:\n{out}");
    assert!(out.contains("still on trial"), "{out}");
    first.wait_for(READY_V2, Duration::from_secs(900)).unwrap();
    assert!(
        first.console_text().matches("[broken] broken").count() >= 3,
        "v3's failing service did not run on its three tries"
    );
    // It keeps the slot, and says so.
    let held = wait_until(
        Duration::from_secs(120),
        Duration::from_secs(3),
        "the first host to say it keeps its slot",
        || {
            let a = agent(&mut first);
            Ok(if a["fleet_lock"]["holding"] == true {
                Check::Done(a)
            } else {
                Check::NotYet(a.to_string())
            })
        },
    )
    .unwrap();
    assert!(
        held["fleet_lock"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("3.0.0")),
        "{held}"
    );
    // Boot-check has recorded the failure by now (the agent read it).
    let st = first.status_json();
    assert!(
        st["failed_commits"]
            .as_array()
            .is_some_and(|f| f.iter().any(|c| c == v3.as_str())),
        "{v3} not recorded as failed: {st}"
    );
    let again = first.sh("berthctl upgrade");
    assert!(
        again.contains("failed to boot on this host before"),
        "{again}"
    );
    // The other host waits for the slot and never boots v3.
    wait_until(
        Duration::from_secs(120),
        Duration::from_secs(3),
        "the second host to wait for a slot",
        || {
            let a = agent(&mut second);
            Ok(if a["state"] == "waiting-for-slot" {
                Check::Done(())
            } else {
                Check::NotYet(a.to_string())
            })
        },
    )
    .unwrap();
    assert_eq!(booted_version(&mut second), "2.0.0");
    assert!(
        !second.console_text().contains("version=3.0.0"),
        "the second host booted v3"
    );
    assert_eq!(
        lock_history(&etcd).last().map(|(_, h)| h.clone()),
        Some(vec![first_id.clone()])
    );
    let st = fleet_json(&etcd_url, &["status"]).unwrap();
    assert!(
        st.to_string().contains("halted"),
        "the fleet view does not show the group halted: {st}"
    );
    assert_eq!(fleet_host(&st, &first_id)["slot_held"], true, "{st}");
    println!("halted at v3 at {:.0}s", started.elapsed().as_secs_f64());

    // Discovery follows the service: stopped on the first host, it leaves.
    first.sh("touch /run/stop-web");
    wait_until(
        Duration::from_secs(60),
        Duration::from_secs(2),
        "web to leave discovery on the first host",
        || {
            let seen = discovered(&mut first);
            Ok(if !seen.contains(&first_id) && seen.contains(&second_id) {
                Check::Done(())
            } else {
                Check::NotYet(format!("{seen:?}"))
            })
        },
    )
    .unwrap();

    // A host that dies leaves the registry within its lease (10 s).
    drop(second);
    let killed = Instant::now();
    let gone = wait_until(
        Duration::from_secs(40),
        Duration::from_secs(1),
        "the killed host to leave the registry",
        || {
            let st = fleet_json(&etcd_url, &["status"])?;
            Ok(
                if fleet_host(&st, &second_id)["live"] == false
                    || fleet_host(&st, &second_id).is_null()
                {
                    Check::Done(st)
                } else {
                    Check::NotYet(st.to_string())
                },
            )
        },
    )
    .unwrap();
    println!(
        "killed host gone from the registry after {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        gone.to_string().contains(&second_id),
        "not named gone: {gone}"
    );
    assert!(!discovered(&mut first).contains(&second_id));

    // An operator frees the slot.
    fleet_text(&etcd_url, &["unlock", "default", &first_id]).unwrap();
    let locks = fleet_json(&etcd_url, &["locks"]).unwrap();
    assert!(!locks.to_string().contains(&first_id), "{locks}");
    assert_eq!(lock_history(&etcd).last().map(|(_, h)| h.len()), Some(0));
    // The view reads the lock key: the group is no longer halted, though
    // the agent (which cannot ask) still says it holds the slot.
    let st = fleet_json(&etcd_url, &["status"]).unwrap();
    assert_eq!(st["summary"]["halted"], serde_json::json!([]), "{st}");
    assert_eq!(fleet_host(&st, &first_id)["slot_held"], false, "{st}");
    // The lock server on the etcd host answered every grant (two for v2,
    // one for v3) and release (two, after v2): its Prometheus counters.
    let metrics = berth_qemu_tests::http::get(lock_port, "/metrics", SHELL_TIMEOUT).unwrap();
    let count = |labels: &str| -> Option<u64> {
        let prefix = format!("berth_fleetlock_requests_total{{{labels}}} ");
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
    };
    assert_eq!(
        (
            count("endpoint=\"pre-reboot\",outcome=\"granted\""),
            count("endpoint=\"steady-state\",outcome=\"released\"")
        ),
        (Some(3), Some(2)),
        "{}",
        metrics.body
    );
    println!("done at {:.0}s", started.elapsed().as_secs_f64());
}
