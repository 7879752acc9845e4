//! `berthctl boot-check`, run by berth-init at every boot: notices that
//! systemd-boot fell back from a new deployment that failed its tries,
//! records that commit as failed (so `upgrade` does not offer it again)
//! and makes the booted deployment libostree's default again; it also
//! repairs the state an interrupted upgrade left (a default deployment
//! with no boot entry on the ESP).

use std::path::Path;

use berth_sysroot::bls::Assessment;
use berth_sysroot::efivars::{self, EFIVARS};

use crate::host::{ESP, Host, record_failed};

/// What boot-check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The booted deployment is the default: nothing to do.
    Consistent,
    /// The default failed its tries; the host fell back to the booted one.
    FellBack {
        /// The failed commit.
        failed: String,
    },
    /// The default had no boot entry (interrupted upgrade): reordered.
    Repaired,
    /// The booted one is not the default for another reason (chosen by
    /// hand, or the default is still on trial): left alone.
    NotDefault,
}

/// Runs the check on the sysroot at `root`.
pub fn run(root: &Path) -> anyhow::Result<Finding> {
    let host = Host::open_locked(root)?;
    let deployments = host.deployments()?;
    let Some(booted) = deployments.iter().find(|d| d.booted) else {
        anyhow::bail!("this system was not booted from an OSTree deployment");
    };
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
    let entries = berth_sysroot::esp_state::entry_names(&root.join(ESP.trim_start_matches('/')));
    if booted.index == 0 {
        // Finish an interrupted ESP sync, if any (entries that do not match
        // the deployments).
        let ids: Vec<String> = deployments.iter().map(|d| d.id()).collect();
        if !ids.iter().all(|id| entries.contains_key(id)) || entries.len() != ids.len() {
            host.sync_esp_and_clean(None)?;
        }
        return Ok(Finding::Consistent);
    }
    let default = &deployments[0];
    let raw = host.sysroot.deployments();
    let booted_raw = host.booted()?;
    match entries.get(&default.id()).map(|n| n.assessment()) {
        Some(Assessment::Bad) => {
            record_failed(root, &default.checksum)?;
            // Drop the failed deployment: a rollback to it would fail again.
            let mut order = vec![Clone::clone(&booted_raw)];
            order.extend(
                raw.iter()
                    .filter(|d| !d.equal(&booted_raw) && d.csum().as_str() != default.checksum)
                    .cloned(),
            );
            host.reorder(&order)?;
            println!(
                "berth: version {} ({}) failed its boot tries; running {} again and not offering it again",
                default.version,
                &default.checksum[..12.min(default.checksum.len())],
                booted.version
            );
            Ok(Finding::FellBack {
                failed: default.checksum.clone(),
            })
        }
        None => {
            let mut order = vec![Clone::clone(&booted_raw)];
            order.extend(raw.iter().filter(|d| !d.equal(&booted_raw)).cloned());
            host.reorder(&order)?;
            println!(
                "berth: the default deployment had no boot entry (interrupted upgrade?); {} is the default again",
                booted.version
            );
            Ok(Finding::Repaired)
        }
        Some(_) => Ok(Finding::NotDefault),
    }
}
