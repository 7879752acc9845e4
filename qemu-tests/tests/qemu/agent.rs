//! Hosts that update themselves: the update agent (`[update] strategy`)
//! on real images, with no one logging in to upgrade.
//!
//! - Two hosts from one image, each with its own machine id and its own
//!   wariness (provisioning data): a staged rollout of v2 at 50 % takes
//!   the eager one and holds the wary one until `berth rollout
//!   --complete`; the machine ids stay the same through the upgrades. (A
//!   v3 that never gets ready, taken by the agent and undone by boot
//!   counting, is in tests/fleet.rs, where it also halts a fleet.)
//! - `periodic`: the guest's clock starts just before its maintenance
//!   window; the host deploys v2 at once, says it waits for the window,
//!   stays on v1 until the window opens, then reboots into v2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_qemu_tests::{
    Check, READY_TIMEOUT, UpdateServer, Vm, VmOptions, image, skip_unless_qemu, wait_until,
};

/// The agent checks every 20 s; a pull and deploy under TCG, with the ESP
/// write, then a reboot to the ready line.
const TAKES_A_VERSION: Duration = Duration::from_secs(480);

fn options(server: &UpdateServer, config: Option<PathBuf>) -> VmOptions {
    VmOptions {
        persistent_copy: true,
        guest_forwards: vec![server.forward()],
        config,
        // Two guests at a time in the first test: one vCPU each.
        cpus: 1,
        memory_mib: 768,
        ..VmOptions::default()
    }
}

/// `berthctl agent status --json`, parsed.
fn agent_status(vm: &mut Vm) -> serde_json::Value {
    let out = vm.sh("berthctl agent status --json");
    let start = out.find('{').unwrap_or(0);
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("agent status: {e}:\n{out}"))
}

/// Waits until the agent's state is `state` (and its message contains
/// `says`); returns the agent's status.
fn wait_for_agent(vm: &mut Vm, state: &str, says: &str, timeout: Duration) -> serde_json::Value {
    wait_until(
        timeout,
        Duration::from_secs(3),
        &format!("the agent to be {state} ({says})"),
        || {
            let st = agent_status(vm);
            let a = &st["agent"];
            let done =
                a["state"] == state && a["message"].as_str().is_some_and(|m| m.contains(says));
            Ok(if done {
                Check::Done(st)
            } else {
                Check::NotYet(st.to_string())
            })
        },
    )
    .unwrap()
}

/// Waits until `berthctl agent status` (text) says all of `words`: between
/// two checks, since during one the state is "checking".
fn agent_text_says(vm: &mut Vm, words: &[&str]) {
    wait_until(
        Duration::from_secs(60),
        Duration::from_secs(2),
        &format!("agent status to say {words:?}"),
        || {
            let text = vm.sh("berthctl agent status");
            Ok(if words.iter().all(|w| text.contains(w)) {
                Check::Done(())
            } else {
                Check::NotYet(text)
            })
        },
    )
    .unwrap();
}

fn booted(status: &serde_json::Value) -> &serde_json::Value {
    status["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["role"] == "booted"))
        .unwrap_or_else(|| panic!("no booted deployment: {status}"))
}

fn versions(status: &serde_json::Value) -> Vec<String> {
    status["deployments"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["version"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn machine_id(vm: &mut Vm) -> String {
    let id = vm.sh("cat /etc/machine-id").trim().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        "not a machine id: {id:?}"
    );
    id
}

/// A provisioning document that gives a host `wariness`.
fn wariness_config(dir: &Path, wariness: f64) -> PathBuf {
    let path = dir.join(format!("wariness-{wariness}.yaml"));
    std::fs::write(
        &path,
        format!("#cloud-config\nberth:\n  update:\n    wariness: {wariness}\n"),
    )
    .unwrap();
    path
}

#[test]
fn hosts_take_a_staged_release_in_wariness_order() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/agent-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    server
        .publish(Path::new("qemu-tests/manifests/agent-v2.toml"))
        .unwrap();
    // Staged before any host looks: half the fleet at once, the rest over
    // a day.
    let out = server
        .rollout(&[
            "--ref",
            "berth/agent/x86_64",
            "--duration",
            "24h",
            "--start-fraction",
            "0.5",
        ])
        .unwrap();
    assert!(out.contains("2.0.0"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let eager_cfg = wariness_config(dir.path(), 0.2);
    let wary_cfg = wariness_config(dir.path(), 0.9);
    let mut eager = Vm::boot(&v1, options(&server, Some(eager_cfg))).unwrap();
    let mut wary = Vm::boot(&v1, options(&server, Some(wary_cfg))).unwrap();
    eager
        .wait_for("berth-init: ready image=agent version=1.0.0", READY_TIMEOUT)
        .unwrap();
    wary.wait_for("berth-init: ready image=agent version=1.0.0", READY_TIMEOUT)
        .unwrap();

    // Two machines from one image: two machine ids, two host ids.
    let eager_id = machine_id(&mut eager);
    let wary_id = machine_id(&mut wary);
    assert_ne!(eager_id, wary_id);
    let st = wary.status_json();
    assert_eq!(st["machine_id"], wary_id.as_str(), "{st}");
    let wary_host = st["host_id"].as_str().unwrap().to_string();
    assert_ne!(wary_host, wary_id, "the host id must not be the machine id");
    assert_eq!(st["update"]["wariness"], 0.9, "{st}");

    // The eager host (0.2 ≤ 50 %) reboots into v2 by itself and is blessed.
    eager
        .wait_for(
            "berth-init: ready image=agent version=2.0.0",
            TAKES_A_VERSION,
        )
        .unwrap();
    let st = eager.status_json();
    assert_eq!(booted(&st)["version"], "2.0.0", "{st}");
    assert_eq!(booted(&st)["boot_state"], "good", "{st}");
    assert_eq!(
        machine_id(&mut eager),
        eager_id,
        "the upgrade changed the id"
    );
    let a = wait_for_agent(&mut eager, "idle", "up to date on 2.0.0", READY_TIMEOUT);
    assert_eq!(a["agent"]["booted"]["version"], "2.0.0", "{a}");

    // The wary host (0.9 > 50 %) waits, and says why.
    let a = wait_for_agent(
        &mut wary,
        "waiting-for-rollout",
        "2.0.0 is being rolled out",
        READY_TIMEOUT,
    );
    let progress = a["agent"]["rollout"]["progress"].as_f64().unwrap();
    assert!((0.5..0.51).contains(&progress), "{a}");
    assert_eq!(a["agent"]["rollout"]["wariness"], 0.9, "{a}");
    agent_text_says(&mut wary, &["against this host's wariness 0.90"]);
    assert_eq!(versions(&wary.status_json()), ["1.0.0"]);
    // A person may go ahead of the rollout, and is told so.
    let check = wary.sh("berthctl upgrade --check");
    assert!(
        check.contains("in a staged rollout at 50%")
            && check.contains("a manual upgrade does not wait for it"),
        "{check}"
    );
    assert!(
        check.contains("2.0.0") && check.contains("available"),
        "{check}"
    );

    // Complete: the wary host follows.
    let out = server
        .rollout(&["--ref", "berth/agent/x86_64", "--complete"])
        .unwrap();
    assert!(out.contains("complete"), "{out}");
    wary.wait_for(
        "berth-init: ready image=agent version=2.0.0",
        TAKES_A_VERSION,
    )
    .unwrap();
    assert_eq!(machine_id(&mut wary), wary_id);
}

/// The first 02:57:00 UTC more than an hour from now, as QEMU's
/// `-rtc base=` takes it, and the unix time of the 03:00 after it. The
/// guest's clock runs ahead of the host's (never behind: signatures made
/// now must not be in the guest's future).
fn just_before_three() -> (String, u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = 86_400;
    let mut base = (now / day) * day + 2 * 3600 + 57 * 60;
    while base < now + 3600 {
        base += day;
    }
    let text = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(base))
        .to_string();
    (text.trim_end_matches('Z').to_string(), base + 180)
}

#[test]
fn a_periodic_host_deploys_at_once_and_reboots_only_in_its_window() {
    skip_unless_qemu!();
    let v1 = image(Path::new("qemu-tests/manifests/periodic-v1.toml"));
    let server = UpdateServer::start(&v1).unwrap();
    server
        .publish(Path::new("qemu-tests/manifests/periodic-v2.toml"))
        .unwrap();
    let (base, opens) = just_before_three();
    let mut vm = Vm::boot(
        &v1,
        VmOptions {
            rtc_base: Some(base),
            cpus: 2,
            memory_mib: 1024,
            ..options(&server, None)
        },
    )
    .unwrap();
    vm.wait_for(
        "berth-init: ready image=periodic version=1.0.0",
        READY_TIMEOUT,
    )
    .unwrap();

    // Deployed at once, outside the window: it waits.
    let a = wait_for_agent(
        &mut vm,
        "waiting-for-window",
        "2.0.0 is deployed",
        Duration::from_secs(270),
    );
    assert_eq!(a["agent"]["window"]["opens_at"], opens, "{a}");
    let clock: u64 = vm.sh("date +%s").trim().parse().unwrap();
    assert!(
        clock < opens,
        "the window was already open: {clock} ≥ {opens}"
    );
    let st = vm.status_json();
    assert_eq!(booted(&st)["version"], "1.0.0", "{st}");
    assert!(versions(&st).contains(&"2.0.0".to_string()), "{st}");
    agent_text_says(&mut vm, &["deployed, waiting for window", "03:00:00Z"]);

    // The window opens: the host reboots into v2.
    vm.wait_for(
        "berth-init: ready image=periodic version=2.0.0",
        Duration::from_secs(300) + READY_TIMEOUT,
    )
    .unwrap();
    let clock: u64 = vm.sh("date +%s").trim().parse().unwrap();
    assert!(
        clock >= opens,
        "rebooted before the window: {clock} < {opens}"
    );
    let st = vm.status_json();
    assert_eq!(booted(&st)["version"], "2.0.0", "{st}");
}
