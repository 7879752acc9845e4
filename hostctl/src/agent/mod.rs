//! `berthctl agent`: the update agent, a service berth-init supervises on
//! images whose `[update] strategy` is not `manual`.
//!
//! Once the boot is blessed (never on a boot on trial) it looks at the
//! update server every `interval`, plus up to a tenth more at random so a
//! fleet does not check in lockstep ([`check`]); deploys a new version
//! with the code, lock and checks of `berthctl upgrade`; and reboots into
//! it as the strategy says: `immediate` at once, `periodic` inside a
//! maintenance window (deploying happens at any time; only the reboot
//! waits), `fleet-lock` once a FleetLock server grants a reboot slot
//! (inside a window, if any are set; [`fleet`]). A staged rollout holds the new version back until its progress
//! reaches this host's wariness. Errors back off (10 s, doubling, up to
//! the interval) and are retried: the service never exits on its own.
//!
//! It never fights an operator: a deployment made by hand waits for
//! whoever made it; the version a host was rolled back from, or that
//! failed its boot tries, is not taken again; `agent pause` holds it
//! still until `agent resume`, across reboots.

pub mod check;
pub mod fleet;
pub mod state;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth_hostapi::config::HostConfig;
use berth_hostapi::control::{Request, ShutdownAction};
use berth_hostapi::update::{Strategy, UpdatePolicy, WindowState, window_state};

use self::check::Verdict;
use self::fleet::{Fleet, FleetLockStatus, Start};
use self::state::{Phase, Status, Version, WindowWait};
use crate::upgrade::short;

/// The first delay after a failure; it doubles up to the interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// How often a waiting agent looks at the pause flag and the blessing.
const TICK: Duration = Duration::from_secs(1);

/// The time now, in unix seconds (what windows and rollouts count in).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The image's update policy.
pub fn policy(root: &Path) -> UpdatePolicy {
    HostConfig::load(&root.join(berth_hostapi::config::HOST_CONFIG_PATH.trim_start_matches('/')))
        .map(|c| c.update)
        .unwrap_or_default()
}

/// UTC time for people, e.g. `2026-12-05T22:30:00Z`.
pub fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Up to a tenth of `interval` more, at random.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .map_or(0, |_| u16::from_le_bytes(b));
    interval + interval.mul_f64(f64::from(r) / f64::from(u16::MAX) / 10.0)
}

/// The agent at work on the host at `root`, rebooting through berth-init's
/// control `socket`. Never returns.
pub fn run(root: &Path, socket: &Path) -> anyhow::Result<ExitCode> {
    let policy = policy(root);
    let interval = Duration::from_millis(policy.interval_ms.max(1000));
    let identity = crate::identity::read(root, &policy);
    let mut st = Status::new(policy.strategy.name());
    st.host_id = identity.host_id.map(|h| h.to_string());
    eprintln!(
        "berthctl agent: strategy {}, every {}s; host id {}, wariness {:.3} ({:?})",
        policy.strategy.name(),
        interval.as_secs(),
        st.host_id.as_deref().unwrap_or("(no machine id)"),
        identity.wariness,
        identity.wariness_source
    );
    let (mut fleet, broken) = match fleet_client(&policy, st.host_id.as_deref(), interval) {
        Ok(Some((f, s))) => {
            eprintln!(
                "berthctl agent: fleet lock {} group {} as {}",
                s.url, s.group, s.id
            );
            st.fleet_lock = Some(s);
            (Some(f), None)
        }
        Ok(None) => (None, None),
        Err(why) => (None, Some(why)),
    };
    publish(root, &mut st);
    if policy.strategy == Strategy::Manual {
        st.set(
            Phase::Idle,
            "strategy manual: updates are left to berthctl upgrade",
        );
        publish(root, &mut st);
    }
    if let Some(why) = &broken {
        eprintln!("berthctl agent: {why}");
        st.set(Phase::Error, why.clone());
        st.last_error = Some(why.clone());
        publish(root, &mut st);
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        if policy.strategy == Strategy::Manual || broken.is_some() {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        if state::paused(root) {
            if st.state != Phase::Paused {
                eprintln!("berthctl agent: paused");
                st.set(Phase::Paused, "paused by berthctl agent pause: nothing is checked, deployed or rebooted until berthctl agent resume");
                st.next_check = None;
                publish(root, &mut st);
            }
            std::thread::sleep(TICK);
            continue;
        }
        if !blessed(root) {
            if st.state != Phase::WaitingForBlessing {
                st.set(
                    Phase::WaitingForBlessing,
                    "this boot is on trial: the agent acts once berth-init blesses it",
                );
                publish(root, &mut st);
            }
            std::thread::sleep(TICK);
            continue;
        }
        if let Some(f) = fleet.as_mut() {
            let wait = match boot_view(root) {
                Some(boot) => {
                    match f.start(root, &boot, &crate::host::failed_commits(root), &mut st) {
                        Start::Go => None,
                        Start::Retry(wait) => Some(wait),
                    }
                }
                None => {
                    st.set(
                        Phase::Error,
                        "reading the deployments (for the fleet lock) failed",
                    );
                    Some(FIRST_BACKOFF)
                }
            };
            if let Some(wait) = wait {
                st.next_check = Some(now() + wait.as_secs());
                publish(root, &mut st);
                sleep_unless_paused(root, wait);
                continue;
            }
        }
        let wait = match step(root, socket, &policy, &identity, fleet.as_mut(), &mut st) {
            Ok(wait) => {
                backoff = FIRST_BACKOFF;
                st.errors_in_a_row = 0;
                st.last_error = None;
                wait.unwrap_or_else(|| jittered(interval))
            }
            Err(e) => {
                let text = berth_hostapi::error_chain::one_line(e.as_ref());
                eprintln!(
                    "berthctl agent: {text}; trying again in {}s",
                    backoff.as_secs()
                );
                st.errors_in_a_row += 1;
                st.last_error = Some(text.clone());
                st.set(Phase::Error, text);
                let wait = backoff;
                backoff = (backoff * 2).min(interval.max(FIRST_BACKOFF));
                wait
            }
        };
        st.next_check = Some(now() + wait.as_secs());
        publish(root, &mut st);
        sleep_unless_paused(root, wait);
    }
}

/// The FleetLock client of a `fleet-lock` policy, with its status, as the
/// host with app-specific id `host_id` (lower hex) speaks it; `None` for
/// other strategies; why not when it cannot work.
fn fleet_client(
    policy: &UpdatePolicy,
    host_id: Option<&str>,
    interval: Duration,
) -> Result<Option<(Fleet<berth_fleet::protocol::Client>, FleetLockStatus)>, String> {
    if policy.strategy != Strategy::FleetLock {
        return Ok(None);
    }
    let Some(p) = &policy.fleet_lock else {
        return Err("strategy fleet-lock, but the host configuration names no FleetLock server (fleet-lock-url); rebuild the image".into());
    };
    let Some(id) = host_id else {
        return Err(
            "strategy fleet-lock needs the host id, and this host has no machine id".into(),
        );
    };
    let client = berth_fleet::protocol::Client::new(&p.url, id, &p.group, fleet::REQUEST_TIMEOUT);
    let status = FleetLockStatus {
        url: p.url.clone(),
        group: p.group.clone(),
        id: id.to_string(),
        holding: false,
        kept: false,
        reason: None,
        last_error: None,
        last_error_kind: None,
    };
    Ok(Some((Fleet::new(client, FIRST_BACKOFF, interval), status)))
}

/// The booted commit and the one that boots next, for the fleet lock.
fn boot_view(root: &Path) -> Option<fleet::Boot> {
    let sysroot = berth_sysroot::deployment::open(root).ok()?;
    let list = berth_sysroot::deployment::list(&sysroot, root).ok()?;
    let booted = list.iter().find(|d| d.booted)?;
    let esp = root.join(crate::host::ESP.trim_start_matches('/'));
    let entries = berth_sysroot::esp_state::entry_names(&esp);
    let next = list.iter().find(|d| d.index < booted.index).map(|d| {
        let bad = entries.get(&d.id()).map(|n| n.assessment())
            == Some(berth_sysroot::bls::Assessment::Bad);
        (d.checksum.clone(), bad)
    });
    Some(fleet::Boot {
        booted: booted.checksum.clone(),
        next,
    })
}

/// Sleeps `wait`, cut short when an operator pauses the agent.
fn sleep_unless_paused(root: &Path, wait: Duration) {
    let end = std::time::Instant::now() + wait;
    while std::time::Instant::now() < end {
        if state::paused(root) {
            return;
        }
        std::thread::sleep(TICK.min(end - std::time::Instant::now()));
    }
}

fn publish(root: &Path, st: &mut Status) {
    st.updated = now();
    if let Err(e) = state::save(root, st) {
        eprintln!("berthctl agent: writing {}: {e}", state::STATUS_PATH);
    }
}

/// Whether the booted deployment's entry has no boot counter left.
fn blessed(root: &Path) -> bool {
    let Ok(sysroot) = berth_sysroot::deployment::open(root) else {
        return false;
    };
    let Ok(list) = berth_sysroot::deployment::list(&sysroot, root) else {
        return false;
    };
    let Some(booted) = list.iter().find(|d| d.booted) else {
        return false;
    };
    let esp = root.join(crate::host::ESP.trim_start_matches('/'));
    berth_sysroot::esp_state::entry_names(&esp)
        .get(&booted.id())
        .is_some_and(|n| n.assessment() == berth_sysroot::bls::Assessment::Good)
}

/// One check and what follows from it. Returns how long to wait when that
/// is not the interval (a window opening sooner).
fn step(
    root: &Path,
    socket: &Path,
    policy: &UpdatePolicy,
    identity: &crate::identity::Identity,
    fleet: Option<&mut Fleet<berth_fleet::protocol::Client>>,
    st: &mut Status,
) -> anyhow::Result<Option<Duration>> {
    st.set(Phase::Checking, "asking the update server");
    publish(root, st);
    let look = check::look(root, identity.wariness, now())?;
    st.last_check = Some(now());
    st.booted = Some(look.booted.clone());
    if let Some(why) = &look.ignored_rollout {
        eprintln!("berthctl agent: warning: {why}");
    }
    let target = match look.verdict {
        Verdict::Idle(why) => {
            st.target = None;
            match st.fleet_lock.as_ref().filter(|f| f.holding && f.kept) {
                Some(f) => {
                    let why = format!(
                        "keeping the reboot slot in group {} after the {}: the group's other hosts wait; a newer version, or berth fleet unlock {} {}, frees it ({why})",
                        f.group,
                        f.reason.as_deref().unwrap_or("failed update"),
                        f.group,
                        f.id
                    );
                    if st.state != Phase::HoldingSlot {
                        eprintln!("berthctl agent: {why}");
                    }
                    st.set(Phase::HoldingSlot, why);
                }
                None => st.set(Phase::Idle, why),
            }
            return Ok(None);
        }
        Verdict::Held(why) => {
            st.set(Phase::Held, why);
            return Ok(None);
        }
        Verdict::WaitForRollout(target, wait) => {
            let why = if wait.paused {
                format!(
                    "{} is being rolled out, and the rollout is paused at {:.0}% (this host's wariness {:.2})",
                    target.version,
                    wait.progress * 100.0,
                    wait.wariness
                )
            } else {
                format!(
                    "{} is being rolled out: {:.0}% so far, this host's wariness is {:.2}",
                    target.version,
                    wait.progress * 100.0,
                    wait.wariness
                )
            };
            if st.state != Phase::WaitingForRollout {
                eprintln!("berthctl agent: {why}");
            }
            st.target = Some(target);
            st.set(Phase::WaitingForRollout, why);
            st.rollout = Some(wait);
            return Ok(None);
        }
        Verdict::Deploy(target) => {
            st.target = Some(target.clone());
            st.set(
                Phase::Deploying,
                format!("deploying {} ({})", target.version, short(&target.commit)),
            );
            publish(root, st);
            deploy(root, &target)?
        }
        Verdict::Finalize(target) => target,
    };
    st.target = Some(target.clone());
    let booted = look.booted.commit.clone();
    finalize(root, socket, policy, fleet, st, &booted, &target)
}

/// Deploys `target` as `berthctl upgrade` does; returns it when it is the
/// agent's own deployment, waiting to be booted.
fn deploy(root: &Path, target: &Version) -> anyhow::Result<Version> {
    let opts = crate::upgrade::UpgradeOpts {
        commit: Some(target.commit.clone()),
        from_agent: true,
        ..Default::default()
    };
    let (outcome, _) = crate::upgrade::run(root, &opts)?;
    match outcome {
        crate::upgrade::Outcome::Deployed { commit, version } => {
            state::record_deployed(root, &commit)
                .map_err(|e| anyhow::anyhow!("recording the agent's deployment: {e}"))?;
            Ok(Version { version, commit })
        }
        crate::upgrade::Outcome::Pending { commit } => {
            // Someone deployed it in between: theirs to reboot, unless it
            // was this agent before a restart.
            if state::deployed_by_agent(root).as_deref() == Some(commit.as_str()) {
                Ok(target.clone())
            } else {
                anyhow::bail!(
                    "{} was deployed by hand meanwhile; the agent leaves its reboot to whoever made it",
                    short(&commit)
                )
            }
        }
        other => anyhow::bail!(
            "the upgrade did not deploy {}: {other:?}",
            short(&target.commit)
        ),
    }
}

/// Whether the reboot waits for a window under `policy` at `now`: the
/// next window's index and opening, or `None` to go on. `periodic` always
/// has windows; `fleet-lock` may (then the slot is asked for only inside
/// one); `immediate` ignores them.
fn window_gate(policy: &UpdatePolicy, now: u64) -> anyhow::Result<Option<(usize, u64)>> {
    let windowed = match policy.strategy {
        Strategy::Periodic => true,
        Strategy::FleetLock => !policy.windows.is_empty(),
        Strategy::Manual | Strategy::Immediate => false,
    };
    if !windowed {
        return Ok(None);
    }
    match window_state(&policy.windows, now) {
        Some(WindowState::Open { .. }) => Ok(None),
        Some(WindowState::Closed { index, opens_at }) => Ok(Some((index, opens_at))),
        None => anyhow::bail!(
            "strategy {} without a maintenance window",
            policy.strategy.name()
        ),
    }
}

/// Reboots from `booted` into the agent's deployment of `target` now
/// (`immediate`, inside a window, once the fleet lock grants a slot) or
/// says what it waits for.
fn finalize(
    root: &Path,
    socket: &Path,
    policy: &UpdatePolicy,
    fleet: Option<&mut Fleet<berth_fleet::protocol::Client>>,
    st: &mut Status,
    booted: &str,
    target: &Version,
) -> anyhow::Result<Option<Duration>> {
    let now = now();
    let interval = Duration::from_millis(policy.interval_ms.max(1000));
    if let Some((index, opens_at)) = window_gate(policy, now)? {
        let window = policy.windows[index].describe();
        let why = format!(
            "{} is deployed; waiting for window {index} ({window}), which opens at {}",
            target.version,
            utc(opens_at)
        );
        if st.state != Phase::WaitingForWindow {
            eprintln!("berthctl agent: {why}");
        }
        st.set(Phase::WaitingForWindow, why);
        st.window = Some(WindowWait {
            index,
            window,
            opens_at,
        });
        // Look again at the opening, or at the next check if sooner.
        let until = Duration::from_secs(opens_at.saturating_sub(now) + 1);
        return Ok(Some(until.min(jittered(interval))));
    }
    if policy.strategy == Strategy::FleetLock {
        let Some(fleet) = fleet else {
            anyhow::bail!("strategy fleet-lock without a FleetLock client");
        };
        let granted = fleet
            .ask(root, booted, target, st)
            .with_context(|| format!("recording the reboot slot in {}", fleet::HELD_PATH))?;
        if !granted {
            // Asked again at the next check (the window, if any, first).
            return Ok(Some(jittered(interval)));
        }
    }
    let why = format!(
        "rebooting into {} ({})",
        target.version,
        short(&target.commit)
    );
    eprintln!("berthctl agent: {why}");
    st.set(Phase::Rebooting, why);
    publish(root, st);
    crate::control::simple(
        socket,
        &Request::Shutdown {
            action: ShutdownAction::Reboot,
        },
    )
    .context("asking berth-init to reboot")?;
    // berth-init stops this service on its way down.
    Ok(Some(Duration::from_secs(60)))
}

/// `berthctl agent status [--json]`.
pub fn status(root: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let policy = policy(root);
    let paused = state::paused(root);
    let st = state::load(root);
    if json {
        let value = serde_json::json!({
            "strategy": policy.strategy.name(),
            "paused": paused,
            "agent": st,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_text(&policy, paused, st.as_ref()));
    Ok(ExitCode::SUCCESS)
}

/// `agent status` as text.
pub fn status_text(policy: &UpdatePolicy, paused: bool, st: Option<&Status>) -> String {
    let mut out = String::new();
    let interval = policy.interval_ms / 1000;
    out.push_str(&format!(
        "strategy  {} (checks every {interval}s)\n",
        policy.strategy.name()
    ));
    for (i, w) in policy.windows.iter().enumerate() {
        out.push_str(&format!("window {i}  {} (UTC)\n", w.describe()));
    }
    if paused {
        out.push_str("paused    yes (berthctl agent resume to let it work)\n");
    }
    let Some(st) = st else {
        if policy.strategy == Strategy::Manual {
            out.push_str("agent     none: this image updates only by berthctl upgrade\n");
        } else {
            out.push_str("agent     not running yet\n");
        }
        return out;
    };
    out.push_str(&format!("state     {}: {}\n", st.state.words(), st.message));
    if let Some(b) = &st.booted {
        out.push_str(&format!("booted    {} ({})\n", b.version, short(&b.commit)));
    }
    if let Some(t) = &st.target {
        out.push_str(&format!("target    {} ({})\n", t.version, short(&t.commit)));
    }
    if let Some(r) = &st.rollout {
        out.push_str(&format!(
            "rollout   {:.0}%{} against this host's wariness {:.2}\n",
            r.progress * 100.0,
            if r.paused { ", paused" } else { "" },
            r.wariness
        ));
    }
    if let Some(w) = &st.window {
        out.push_str(&format!(
            "window    {} ({}) opens at {}\n",
            w.index,
            w.window,
            utc(w.opens_at)
        ));
    }
    if let Some(f) = &st.fleet_lock {
        out.push_str(&fleet_text(f));
    }
    if let Some(t) = st.last_check {
        out.push_str(&format!("checked   {}\n", utc(t)));
    }
    if let Some(t) = st.next_check {
        out.push_str(&format!("next      {}\n", utc(t)));
    }
    if let Some(e) = &st.last_error {
        out.push_str(&format!(
            "error     {e} ({} in a row)\n",
            st.errors_in_a_row
        ));
    }
    out
}

/// The fleet-lock lines of `agent status`.
fn fleet_text(f: &FleetLockStatus) -> String {
    let mut out = if f.holding {
        let why = match (&f.reason, f.kept) {
            (Some(r), true) => format!(" (kept after a {r}: the group waits for this host)"),
            (Some(r), false) => format!(" ({r})"),
            (None, _) => String::new(),
        };
        format!("fleet lock: holding a slot in group {}{why}\n", f.group)
    } else {
        format!("fleet lock: no slot held in group {}\n", f.group)
    };
    out.push_str(&format!("fleet lock: server {} as {}\n", f.url, f.id));
    if let Some(e) = &f.last_error {
        out.push_str(&format!("fleet lock: last answer {e}\n"));
    }
    out
}

/// `berthctl agent pause` / `resume`.
pub fn set_paused(root: &Path, pause: bool) -> anyhow::Result<ExitCode> {
    state::set_paused(root, pause).with_context(|| {
        format!(
            "{} {}",
            if pause { "writing" } else { "removing" },
            state::PAUSED_PATH
        )
    })?;
    println!(
        "berthctl: the update agent is {}",
        if pause {
            "paused (kept across reboots) until berthctl agent resume"
        } else {
            "resumed"
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(100));
            assert!(
                j >= Duration::from_secs(100) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
    }

    #[test]
    fn fleet_lock_asks_for_a_slot_only_inside_a_window_when_it_has_windows() {
        use berth_hostapi::update::{Weekday, Window};
        // Monday 2026-11-30 00:00 UTC; the window is Saturday 22:30.
        let monday = 1_795_996_800;
        let saturday_2300 = monday + 5 * 86_400 + 23 * 3600;
        let window = Window {
            days: vec![Weekday::Sat],
            start_minute: 22 * 60 + 30,
            length_minutes: 90,
        };
        let mut policy = UpdatePolicy {
            strategy: Strategy::FleetLock,
            ..UpdatePolicy::default()
        };
        // No windows: at any time.
        assert_eq!(window_gate(&policy, monday).unwrap(), None);
        policy.windows = vec![window];
        assert_eq!(
            window_gate(&policy, monday).unwrap(),
            Some((0, monday + 5 * 86_400 + 22 * 3600 + 1800))
        );
        assert_eq!(window_gate(&policy, saturday_2300).unwrap(), None);
        // Past its end: closed again, so no more asking.
        assert!(
            window_gate(&policy, saturday_2300 + 3600)
                .unwrap()
                .is_some()
        );
        // Periodic needs one; immediate ignores them.
        policy.strategy = Strategy::Immediate;
        assert_eq!(window_gate(&policy, monday).unwrap(), None);
        policy.strategy = Strategy::Periodic;
        policy.windows.clear();
        assert!(window_gate(&policy, monday).is_err());
    }

    #[test]
    fn fleet_client_needs_a_server_and_a_host_id() {
        let mut policy = UpdatePolicy::default();
        assert!(
            fleet_client(&policy, Some("ab"), FIRST_BACKOFF)
                .unwrap()
                .is_none()
        );
        policy.strategy = Strategy::FleetLock;
        assert!(fleet_client(&policy, Some("ab"), FIRST_BACKOFF).is_err());
        policy.fleet_lock = Some(berth_hostapi::update::FleetLockPolicy {
            url: "http://fl/".into(),
            group: "default".into(),
        });
        assert!(fleet_client(&policy, None, FIRST_BACKOFF).is_err());
        let (_, s) = fleet_client(
            &policy,
            Some("4d4a86c9c6644a479560ded5d19a30c5"),
            FIRST_BACKOFF,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.url.as_str(), s.group.as_str(), s.id.as_str(), s.holding),
            (
                "http://fl/",
                "default",
                "4d4a86c9c6644a479560ded5d19a30c5",
                false
            )
        );
    }

    #[test]
    fn status_says_the_slot_is_kept_after_a_failed_update() {
        let policy = UpdatePolicy {
            strategy: Strategy::FleetLock,
            ..UpdatePolicy::default()
        };
        let mut st = Status::new("fleet-lock");
        st.fleet_lock = Some(FleetLockStatus {
            url: "http://fl/".into(),
            group: "default".into(),
            id: "4d4a".into(),
            holding: true,
            kept: true,
            reason: Some("failed update to 3.0.0 (c0ffee000000)".into()),
            last_error: None,
            last_error_kind: None,
        });
        st.set(Phase::HoldingSlot, "keeping the reboot slot");
        let text = status_text(&policy, false, Some(&st));
        assert!(
            text.contains("fleet lock: holding a slot in group default (kept after a failed update to 3.0.0 (c0ffee000000)"),
            "{text}"
        );
        assert!(text.contains("state     holding the reboot slot"), "{text}");
        // The registry reads these keys of the status file.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["state"], "holding-slot");
        assert_eq!(json["fleet_lock"]["group"], "default");
        assert_eq!(json["fleet_lock"]["holding"], true);
        assert_eq!(
            json["fleet_lock"]["reason"],
            "failed update to 3.0.0 (c0ffee000000)"
        );
        // A status file from before fleet-lock still reads.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("fleet_lock");
        assert_eq!(
            serde_json::from_value::<Status>(old).unwrap().fleet_lock,
            None
        );
    }

    #[test]
    fn status_text_says_what_and_why() {
        let policy = UpdatePolicy {
            strategy: Strategy::Periodic,
            windows: vec![berth_hostapi::update::Window {
                days: vec![berth_hostapi::update::Weekday::Sat],
                start_minute: 22 * 60 + 30,
                length_minutes: 90,
            }],
            ..UpdatePolicy::default()
        };
        let mut st = Status::new("periodic");
        st.window = Some(WindowWait {
            index: 0,
            window: policy.windows[0].describe(),
            opens_at: 1_796_509_800,
        });
        st.set(Phase::WaitingForWindow, "2.0.0 is deployed");
        let text = status_text(&policy, false, Some(&st));
        assert!(
            text.contains("deployed, waiting for window: 2.0.0"),
            "{text}"
        );
        assert!(text.contains("window 0  Sat 22:30 for 90m (UTC)"), "{text}");
        assert!(text.contains("opens at 2026-12-05T22:30:00Z"), "{text}");
        let manual = status_text(&UpdatePolicy::default(), true, None);
        assert!(manual.contains("paused    yes"), "{manual}");
        assert!(manual.contains("only by berthctl upgrade"), "{manual}");
    }
}
