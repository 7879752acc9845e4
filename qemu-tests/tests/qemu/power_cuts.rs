//! Power cuts during an upgrade: "no step of an upgrade may leave a host
//! that does not boot, whatever moment the power is cut".
//!
//! Every trial starts from one snapshot of a booted v1 (RAM, devices,
//! disk, UEFI variables) with v2 published, so a trial costs the boot
//! after the cut and, when that one comes up on v1, the boot into v2:
//!
//! - targeted: `berthctl upgrade` stops at a chosen fault point (right
//!   after a write or a rename on the ESP; see berth_sysroot::fault), and
//!   QEMU is killed there; and the blessing after the reboot into v2 is
//!   cut right after berth-init says it blessed the entry;
//! - random: QEMU is killed at a random moment from the start of
//!   `berthctl upgrade --reboot` to just past v2's blessing (pull,
//!   deploy, every ESP write, the reboot, the blessing).
//!
//! After every cut: the host boots (v1 or v2), `berthctl status` tells
//! the truth (the booted version is the one running, every deployment has
//! a usable entry once boot-check has run), and a repeated
//! `berthctl upgrade --reboot` reaches v2, which is blessed.
//!
//! `BERTH_POWER_CUTS=N` sets the number of random cuts (default 2) and
//! `BERTH_POWER_CUT_SEED` replays a run; the seed is printed either way.
//! `BERTH_FAULT_POINTS=3,7` cuts at those fault points only (the first
//! test prints the list).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_qemu_tests::{
    Check, READY_TIMEOUT, Snapshot, UpdateServer, Vm, VmOptions, image, skip_unless_qemu,
    wait_until,
};

const SHELL: Duration = berth_qemu_tests::SHELL_TIMEOUT;
/// A pull and deploy under TCG, with the ESP write.
const UPGRADE: Duration = Duration::from_secs(300);
const READY_V1: &str = "berth-init: ready image=upgrade version=1.0.0";
const READY_V2: &str = "berth-init: ready image=upgrade version=2.0.0";

/// A v1 host booted once and frozen, with v2 on its update server.
struct Fixture {
    /// Serves v2 to every trial (stops on drop).
    _server: UpdateServer,
    opts: VmOptions,
    snapshot: Snapshot,
}

impl Fixture {
    fn new() -> Fixture {
        let v1 = image(Path::new("qemu-tests/manifests/upgrade-v1.toml"));
        let server = UpdateServer::start(&v1).unwrap();
        server
            .publish(Path::new("qemu-tests/manifests/upgrade-v2.toml"))
            .unwrap();
        // One vCPU each, so two trials run side by side on a 2-core
        // machine (a TCG boot is mostly one busy vCPU anyway).
        let opts = VmOptions {
            persistent_copy: true,
            guest_forwards: vec![server.forward()],
            cpus: 1,
            memory_mib: 512,
            ..VmOptions::default()
        };
        let mut vm = Vm::boot(&v1, opts.clone()).unwrap();
        vm.wait_for(READY_V1, READY_TIMEOUT).unwrap();
        wait_for_boot_check(&mut vm);
        // The physical root (the repository whose objects are hard-linked
        // into /usr) is read-only, even for root; berthctl writes it from
        // its own mount namespace, as every upgrade below shows.
        let mounts = vm.sh("grep ' /sysroot ' /proc/mounts");
        assert!(
            mounts.contains(" ro,") || mounts.contains(" ro "),
            "{mounts}"
        );
        let (code, out) = vm
            .run_shell("echo x >> /sysroot/ostree/repo/config", SHELL)
            .unwrap();
        assert_ne!(code, 0, "/sysroot is writable: {out}");
        assert!(out.contains("Read-only"), "{out}");
        let snapshot = vm.snapshot(&opts).unwrap();
        Fixture {
            _server: server,
            opts,
            snapshot,
        }
    }

    /// The frozen v1 host, running again.
    fn resume(&self) -> Vm {
        let mut vm = self.snapshot.resume().unwrap();
        // The shell answers: the guest runs on where it was frozen.
        vm.sh("true");
        vm
    }
}

fn booted(status: &serde_json::Value) -> &serde_json::Value {
    status["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["role"] == "booted"))
        .unwrap_or_else(|| panic!("no booted deployment: {status}"))
}

/// Waits until this boot's boot-check has run (its record names the
/// booted deployment and no deployment lacks an entry); returns status.
fn wait_for_boot_check(vm: &mut Vm) -> serde_json::Value {
    wait_until(
        Duration::from_secs(120),
        Duration::from_secs(2),
        "boot-check to run and leave no deployment without entry",
        || {
            let st = vm.status_json();
            let b = booted(&st);
            let id = format!("{}.{}", b["commit"].as_str().unwrap_or(""), b["serial"]);
            let checked = st["boot_check"]["booted"].as_str() == Some(id.as_str());
            let whole = st["deployments"]
                .as_array()
                .is_some_and(|d| d.iter().all(|d| d["boot_state"] != "no-entry"));
            Ok(if checked && whole {
                Check::Done(st)
            } else {
                Check::NotYet(st.to_string())
            })
        },
    )
    .unwrap()
}

/// What a trial saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Came up on v1 after the cut; the repeated upgrade reached v2.
    V1ThenUpgraded,
    /// Came up on v2 after the cut.
    V2,
}

/// Boots the disk of a VM whose power was cut and checks everything the
/// tests promise; returns where it came up.
fn after_the_cut(vm: Vm, fx: &Fixture, what: &str) -> Outcome {
    let mut vm = vm.reboot_from(fx.opts.clone()).unwrap();
    vm.wait_for(
        "berth-init: ready image=upgrade version=",
        READY_TIMEOUT * 2,
    )
    .unwrap_or_else(|e| panic!("{what}: the host did not come up: {e}"));
    let version = vm
        .wait_for(" ", Duration::from_secs(10))
        .unwrap()
        .trim()
        .to_string();
    let st = wait_for_boot_check(&mut vm);
    // status tells the truth: the booted deployment is what runs.
    let os = vm.sh("sed -n 's/^VERSION_ID=//p' /usr/lib/os-release");
    assert_eq!(os.trim(), version, "{what}: {st}");
    assert_eq!(booted(&st)["version"], version.as_str(), "{what}: {st}");
    let outcome = match version.as_str() {
        "1.0.0" => Outcome::V1ThenUpgraded,
        "2.0.0" => Outcome::V2,
        v => panic!("{what}: came up on {v:?}"),
    };
    if outcome == Outcome::V1ThenUpgraded {
        vm.send_line("berthctl upgrade --reboot").unwrap();
        let out = vm
            .wait_for("boots next", UPGRADE)
            .unwrap_or_else(|e| panic!("{what}: the repeated upgrade: {e}"));
        assert!(!out.contains("error"), "{what}: {out}");
        vm.wait_for(READY_V2, READY_TIMEOUT * 2)
            .unwrap_or_else(|e| panic!("{what}: the repeated upgrade did not reach v2: {e}"));
    }
    let st = wait_for_boot_check(&mut vm);
    let b = booted(&st);
    assert_eq!(b["version"], "2.0.0", "{what}: {st}");
    // Blessed at the ready line (waited for: the check and the blessing
    // race the shell); the first look is at the status just read.
    let mut first = Some(st);
    let st = wait_until(
        Duration::from_secs(30),
        Duration::from_secs(1),
        &format!("{what}: the booted entry to be blessed"),
        || {
            let st = first.take().unwrap_or_else(|| vm.status_json());
            Ok(if booted(&st)["boot_state"] == "good" {
                Check::Done(st)
            } else {
                Check::NotYet(st.to_string())
            })
        },
    )
    .unwrap();
    assert_eq!(booted(&st)["boot_state"], "good", "{what}: {st}");
    let entries = vm.sh("ls -a /efi/loader/entries");
    assert!(
        !entries.contains(".tmp"),
        "{what}: temporary files left: {entries}"
    );
    let again = vm.sh("berthctl upgrade");
    assert!(again.contains("already up to date"), "{what}: {again}");
    outcome
}

/// How many trials run at once (each a 1-vCPU guest).
const PARALLEL: usize = 2;

/// Runs `trial` on every item, [`PARALLEL`] at a time, and returns the
/// results in the items' order; a trial that panics fails the test after
/// the others have finished.
fn run_trials<T, R>(items: Vec<T>, trial: impl Fn(&T) -> R + Sync) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<R>>> =
        std::sync::Mutex::new(items.iter().map(|_| None).collect());
    let panicked = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(item) = items.get(i) else { break };
                        let r = trial(item);
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().is_err())
            .filter(|&p| p)
            .count()
    });
    assert_eq!(panicked, 0, "{panicked} trial worker(s) failed (see above)");
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every trial ran"))
        .collect()
}

/// The fault points of one uncut `berthctl upgrade` from the snapshot.
fn fault_points(fx: &Fixture) -> Vec<(u32, String)> {
    let mut vm = fx.resume();
    let out = vm.sh("BERTH_FAULT_STOP=list berthctl upgrade 2>&1");
    assert!(out.contains("boots next, on trial"), "{out}");
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("berth: fault point "))
        .filter_map(|l| {
            let (n, what) = l.split_once(": ")?;
            Some((n.parse().ok()?, what.to_string()))
        })
        .collect()
}

#[test]
fn power_cuts_right_after_each_esp_write_and_rename_leave_a_host_that_upgrades() {
    skip_unless_qemu!();
    let fx = Fixture::new();
    let points = fault_points(&fx);
    println!("fault points of one upgrade:");
    for (n, what) in &points {
        println!("  {n}: {what}");
    }
    // Right after each rename on the ESP, and right after each write is
    // complete (the file and its directory synced). The moment between
    // writing the temporary and renaming it leaves the same bytes on disk
    // as the moment after the rename without dirsync; with dirsync the
    // rename is on disk whole, as after the syncs.
    let chosen: Option<Vec<u32>> = std::env::var("BERTH_FAULT_POINTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let esp: Vec<&(u32, String)> = points
        .iter()
        .filter(|(n, w)| match &chosen {
            Some(list) => list.contains(n),
            None => w.contains("/efi/") && (w.starts_with("renamed") || w.starts_with("synced")),
        })
        .collect();
    assert!(
        chosen.is_some() || esp.iter().any(|(_, w)| w.contains("loader/entries")),
        "no boot entry written: {points:?}"
    );
    // The ESP steps, and last the blessing of v2 after the reboot (cut
    // right after berth-init says it renamed the entry).
    let mut cuts: Vec<Option<&(u32, String)>> = esp.into_iter().map(Some).collect();
    cuts.push(None);
    let tally = run_trials(cuts, |cut| {
        let started = Instant::now();
        let mut vm = fx.resume();
        let what = match cut {
            Some((n, what)) => {
                vm.send_line(&format!("BERTH_FAULT_STOP={n} berthctl upgrade"))
                    .unwrap();
                vm.wait_for(&format!("fault point {n} reached"), UPGRADE)
                    .unwrap();
                format!("cut at point {n} ({what})")
            }
            None => {
                vm.send_line("berthctl upgrade --reboot").unwrap();
                vm.wait_for(READY_V2, UPGRADE + READY_TIMEOUT).unwrap();
                vm.wait_for("boot is good: blessed", Duration::from_secs(30))
                    .unwrap();
                "cut right after the blessing".to_string()
            }
        };
        vm.power_cut().unwrap();
        let outcome = after_the_cut(vm, &fx, &what);
        if cut.is_none() {
            assert_eq!(outcome, Outcome::V2, "{what}: the blessed v2 was lost");
        }
        println!(
            "{what}: {outcome:?} in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        outcome
    });
    println!("tally: {tally:?}");
}

#[test]
fn power_cuts_at_random_moments_of_an_upgrade_leave_a_host_that_upgrades() {
    skip_unless_qemu!();
    let n: usize = std::env::var("BERTH_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("BERTH_POWER_CUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("random power cuts: {n}, seed {seed} (BERTH_POWER_CUT_SEED={seed} replays them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let fx = Fixture::new();

    // How long a whole upgrade takes here, from the command to the
    // blessing of v2, with as many trials side by side as below.
    let whole = run_trials((0..PARALLEL).collect(), |_| {
        let mut vm = fx.resume();
        let started = Instant::now();
        vm.send_line("berthctl upgrade --reboot").unwrap();
        vm.wait_for("boot is good: blessed", UPGRADE + READY_TIMEOUT)
            .unwrap();
        started.elapsed()
    })
    .into_iter()
    .max()
    .unwrap_or_default();
    println!(
        "an uncut upgrade took {:.1}s to the blessing",
        whole.as_secs_f64()
    );

    // The moments are drawn up front, so a seed replays the same cuts
    // whatever order the parallel trials finish in.
    let moments: Vec<(usize, Duration)> = (0..n)
        .map(|i| {
            let ms = rng.u64(300..=(whole.as_millis() as u64 + 1000));
            (i, Duration::from_millis(ms))
        })
        .collect();
    let tally: Vec<(f64, Outcome)> = run_trials(moments, |&(i, at)| {
        let trial = Instant::now();
        let mut vm = fx.resume();
        let started = Instant::now();
        vm.send_line("berthctl upgrade --reboot").unwrap();
        // Not a wait for a condition: the cut's random moment (the
        // console keeps draining meanwhile).
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        vm.power_cut().unwrap();
        let what = format!(
            "random cut {}/{n} at {:.2}s (seed {seed})",
            i + 1,
            at.as_secs_f64()
        );
        let outcome = after_the_cut(vm, &fx, &what);
        println!(
            "{what}: {outcome:?} in {:.0}s",
            trial.elapsed().as_secs_f64()
        );
        (at.as_secs_f64(), outcome)
    });
    let on = |o| tally.iter().filter(|(_, t)| *t == o).count();
    println!(
        "tally of {n} random cuts (seed {seed}): {} came up on v1 and upgraded when repeated, {} came up on v2; every host booted and reached v2",
        on(Outcome::V1ThenUpgraded),
        on(Outcome::V2)
    );
}
