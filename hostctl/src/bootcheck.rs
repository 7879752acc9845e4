//! `berthctl boot-check`, run by berth-init at every boot. It brings
//! libostree's deployments and the ESP back into agreement after whatever
//! happened since the last boot:
//!
//! - systemd-boot fell back from a new deployment that failed its tries:
//!   that commit is recorded as failed (so `upgrade` does not offer it
//!   again) and the booted deployment is made libostree's default again;
//! - a power cut during an upgrade left the default deployment without a
//!   usable entry (missing, empty, cut short): the entry is written again
//!   from the deployment's own files, on trial, so the upgrade finishes;
//!   if those files are gone, the booted deployment is made the default;
//! - anything else on the ESP differs from the plan (a kernel cut short,
//!   a stale rank, a second name of an entry, temporary files): repaired.
//!
//! Then, on a boot on trial, it waits for berth-init to bless the boot and
//! only then installs the booted deployment's boot loader (a new
//! systemd-boot must not replace the old one before its OS proved itself).
//!
//! What it did is printed (berth-init puts it on the console) and kept in
//! [`BOOT_CHECK_RECORD`] for `berthctl status`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_sysroot::bls::Assessment;
use berth_sysroot::efivars::{self, EFIVARS};
use serde::{Deserialize, Serialize};

use crate::host::{Host, record_failed};

/// Where the last boot check's findings are kept.
pub const BOOT_CHECK_RECORD: &str = "/var/lib/berth/boot-check.json";

/// How long a boot on trial is waited for before the boot loader update
/// is left to the next boot check or upgrade.
const BLESS_WAIT: Duration = Duration::from_secs(30 * 60);

/// What boot-check found and did, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it ran (unix seconds).
    pub time: u64,
    /// The booted deployment (`<checksum>.<serial>`).
    pub booted: String,
    /// The entry the boot loader says it booted.
    pub loader_entry: Option<String>,
    /// What it did, one sentence each; empty when all was well.
    pub actions: Vec<String>,
}

/// Runs the check on the sysroot at `root`.
pub fn run(root: &Path) -> anyhow::Result<Record> {
    let host = Host::open_locked(root)?;
    let deployments = host.deployments()?;
    let Some(booted) = deployments.iter().find(|d| d.booted).cloned() else {
        anyhow::bail!("this system was not booted from an OSTree deployment");
    };
    let esp = host.esp();
    let selected = efivars::loader_var(
        &root.join(EFIVARS.trim_start_matches('/')),
        "LoaderEntrySelected",
    );
    if let Some(sel) = &selected {
        eprintln!(
            "berthctl: boot loader selected {sel}; running {}",
            booted.id()
        );
    }
    let mut record = Record {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        booted: booted.id(),
        loader_entry: selected,
        actions: Vec::new(),
    };
    let mut say = |action: String| {
        println!("berth: {action}");
        record.actions.push(action);
    };

    // The default deployment is not the booted one: it failed, or it never
    // got a usable entry, or it is pending (on trial, or chosen by hand).
    let mut trial = None;
    if booted.index != 0 {
        let default = deployments[0].clone();
        let entries = berth_sysroot::esp_state::entry_names(&esp);
        let plan = host.esp_plan(Some(&default.id()))?;
        if entries.get(&default.id()).map(|n| n.assessment()) == Some(Assessment::Bad) {
            record_failed(root, &default.checksum)?;
            // Drop the failed deployment: a rollback to it would fail again.
            host.reorder(&order_without(&host, &default.checksum, true)?)?;
            say(format!(
                "version {} ({}) failed its boot tries; running {} again and not offering it again",
                default.version,
                short(&default.checksum),
                booted.version
            ));
        } else if berth_sysroot::esp_check::entry_boots(&esp, &plan, &default.id()) {
            // Pending and bootable: nothing to undo.
            trial = Some(default.id());
        } else if files_intact(root, &default) {
            let (problems, _) = berth_sysroot::esp_sync::repair(&esp, &plan, Some(&default.id()))
                .context("rewriting the pending deployment's boot entry")?;
            let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
            say(format!(
                "an interrupted upgrade left version {} ({}) unbootable ({}); its boot entry was written again from the deployment, and it boots next, on trial",
                default.version,
                short(&default.checksum),
                why.join("; ")
            ));
            trial = Some(default.id());
        } else {
            host.reorder(&order_without(&host, &default.checksum, false)?)?;
            say(format!(
                "version {} ({}) has no usable boot entry and its kernel files are missing; {} is the default again",
                default.version,
                short(&default.checksum),
                booted.version
            ));
        }
    }

    // Whatever else differs from the plan.
    let plan = host.esp_plan(trial.as_deref())?;
    let (problems, report) = berth_sysroot::esp_sync::repair(&esp, &plan, trial.as_deref())
        .context("repairing the ESP")?;
    if !problems.is_empty() {
        let what: Vec<String> = problems.iter().map(ToString::to_string).collect();
        say(format!(
            "repaired the ESP: {} (rewrote {} file(s), removed {})",
            what.join("; "),
            report.copied.len() + report.entries_written.len(),
            report.removed.len()
        ));
    }
    drop(host);
    save(root, &record);

    // A boot on trial: the boot loader follows the blessing.
    let on_trial = berth_sysroot::esp_state::entry_names(&esp)
        .get(&booted.id())
        .is_some_and(|n| n.assessment() == Assessment::Trial);
    if on_trial {
        if wait_for_blessing(&esp, &booted.id(), BLESS_WAIT) {
            let host = Host::open_locked(root)?;
            let report = host.sync_esp_and_clean(None)?;
            if report
                .copied
                .iter()
                .any(|p| p == berth_sysroot::contract::SYSTEMD_BOOT_ON_ESP)
            {
                println!(
                    "berthctl: boot loader updated from {} ({})",
                    booted.version,
                    short(&booted.checksum)
                );
            }
        } else {
            println!("berthctl: this boot was not blessed; the boot loader stays as it was");
        }
    }
    Ok(record)
}

/// libostree's order with the booted deployment first and the deployment
/// of `checksum` left out (`drop`) or moved after the booted one.
fn order_without(
    host: &Host,
    checksum: &str,
    drop: bool,
) -> anyhow::Result<Vec<ostree::Deployment>> {
    let raw = host.sysroot.deployments();
    let booted = host.booted()?;
    let mut order = vec![Clone::clone(&booted)];
    order.extend(
        raw.iter()
            .filter(|d| {
                let failed = drop && d.csum().as_str() == checksum;
                !d.equal(&booted) && !failed
            })
            .cloned(),
    );
    Ok(order)
}

/// Whether a deployment still has the kernel and initramfs its entry
/// needs (libostree lists a deployment only once its checkout is synced,
/// so these are whole when present).
fn files_intact(root: &Path, d: &berth_sysroot::DeploymentInfo) -> bool {
    [&d.kernel, &d.initramfs]
        .iter()
        .all(|f| std::fs::metadata(root.join(f)).is_ok_and(|m| m.is_file() && m.len() > 0))
}

/// Polls the ESP until the entry of deployment `id` has no counter left.
fn wait_for_blessing(esp: &Path, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = berth_sysroot::esp_state::entry_names(esp);
        match entries.get(id).map(|n| n.assessment()) {
            Some(Assessment::Good) => return true,
            Some(Assessment::Trial) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => return false,
        }
    }
}

/// Keeps `record` for `status`; a failure only costs the record.
fn save(root: &Path, record: &Record) {
    let path = root.join(BOOT_CHECK_RECORD.trim_start_matches('/'));
    let written = serde_json::to_vec_pretty(record)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, &path)
        });
    if let Err(e) = written {
        eprintln!(
            "berthctl: keeping the boot check's record in {}: {e}",
            path.display()
        );
    }
}

/// The last boot check's record, if any.
pub fn last_record(root: &Path) -> Option<Record> {
    let text = std::fs::read(root.join(BOOT_CHECK_RECORD.trim_start_matches('/'))).ok()?;
    serde_json::from_slice(&text).ok()
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}
