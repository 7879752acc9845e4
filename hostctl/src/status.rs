//! `berthctl status`: the deployments of this host and what each is to
//! the boot loader (booted, pending at next boot, rollback), with version,
//! commit, commit time and boot-counting state.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use berth_sysroot::DeploymentInfo;
use serde::Serialize;

use crate::host::ESP as ESP_MOUNT;

/// One deployment as `status --json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatus {
    /// `booted`, `pending` or `rollback`.
    pub role: String,
    /// OS version.
    pub version: String,
    /// Commit checksum.
    pub commit: String,
    /// Deploy serial.
    pub serial: i32,
    /// Commit time (unix seconds).
    pub timestamp: u64,
    /// Boot counting: `good`, `trial` (with tries left) or `bad`.
    pub boot_state: String,
    /// Tries left, when on trial.
    pub tries_left: Option<u32>,
    /// The origin refspec.
    pub refspec: Option<String>,
    /// The stable deployment path.
    pub path: String,
}

/// The role of deployment `d` given the booted one's index.
pub(crate) fn role(d: &DeploymentInfo, booted_index: Option<usize>) -> &'static str {
    match booted_index {
        Some(b) if d.index == b => "booted",
        Some(b) if d.index < b => "pending",
        Some(_) => "rollback",
        None if d.index == 0 => "pending",
        None => "rollback",
    }
}

/// Collects the status of the sysroot at `/`.
pub fn collect(root: &Path) -> anyhow::Result<Vec<DeploymentStatus>> {
    let sysroot = berth_sysroot::deployment::open(root)?;
    let deployments = berth_sysroot::deployment::list(&sysroot, root)?;
    let repo = sysroot.repo();
    let entries =
        berth_sysroot::esp_state::entry_names(&root.join(ESP_MOUNT.trim_start_matches('/')));
    let booted = deployments.iter().find(|d| d.booted).map(|d| d.index);
    Ok(deployments
        .iter()
        .map(|d| {
            let timestamp = repo
                .load_commit(&d.checksum)
                .map(|(v, _)| ostree::commit_get_timestamp(&v))
                .unwrap_or(0);
            let name = entries.get(&d.id());
            let (boot_state, tries_left) = match name.map(|n| n.assessment()) {
                Some(berth_sysroot::bls::Assessment::Trial) => {
                    ("trial", name.and_then(|n| n.tries_left))
                }
                Some(berth_sysroot::bls::Assessment::Bad) => ("bad", Some(0)),
                Some(berth_sysroot::bls::Assessment::Good) => ("good", None),
                None => ("no-entry", None),
            };
            DeploymentStatus {
                role: role(d, booted).to_string(),
                version: d.version.clone(),
                commit: d.checksum.clone(),
                serial: d.serial,
                timestamp,
                boot_state: boot_state.to_string(),
                tries_left,
                refspec: d.refspec.clone(),
                path: d.stable_path(),
            }
        })
        .collect())
}

/// `berthctl status [--json]`.
pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let list = collect(Path::new("/")).context("reading the deployments")?;
    let failed = crate::host::failed_commits(Path::new("/"));
    let check = crate::bootcheck::last_record(Path::new("/"));
    let policy = crate::agent::policy(Path::new("/"));
    let identity = crate::identity::read(Path::new("/"), &policy);
    let agent = crate::agent::state::load(Path::new("/"));
    let paused = crate::agent::state::paused(Path::new("/"));
    let secure_boot =
        crate::firmware::read(Path::new("/"), Path::new(berth_sysroot::efivars::EFIVARS));
    if json {
        let value = serde_json::json!({
            "deployments": list,
            "failed_commits": failed,
            "boot_check": check,
            "machine_id": identity.machine_id.map(|m| m.to_string()),
            "host_id": identity.host_id.map(|m| m.to_string()),
            "secure_boot": secure_boot,
            "update": {
                "strategy": policy.strategy.name(),
                "wariness": identity.wariness,
                "wariness_source": identity.wariness_source,
                "paused": paused,
                "agent": agent,
            },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &list {
        let marker = if d.role == "booted" { "*" } else { " " };
        println!(
            "{marker} {:<8} {} ({}.{})",
            d.role,
            d.version,
            &d.commit[..d.commit.len().min(16)],
            d.serial
        );
        println!(
            "    boot     {}{}",
            d.boot_state,
            d.tries_left
                .map_or(String::new(), |t| format!(" ({t} tries left)"))
        );
        if let Some(r) = &d.refspec {
            println!("    origin   {r}");
        }
    }
    if let Some(m) = identity.machine_id {
        println!("  machine id: {m}");
    }
    if let Some(h) = identity.host_id {
        println!("  host id:    {h} (app-specific: what updates and fleets know this host by)");
    }
    println!(
        "  secure boot: {}{}",
        secure_boot.state,
        secure_boot
            .lockdown
            .as_ref()
            .map_or(String::new(), |l| format!(" (kernel lockdown: {l})"))
    );
    let agent_line = match (&agent, paused) {
        (_, true) => "paused".to_string(),
        (Some(a), false) => format!("{}: {}", a.state.words(), a.message),
        (None, false) => "not running".to_string(),
    };
    println!(
        "  updates:    {} (wariness {:.2}); agent {agent_line}",
        policy.strategy.name(),
        identity.wariness
    );
    if let Some(last) = failed.last() {
        println!("  last failed commit: {last}");
    }
    if let Some(check) = check.filter(|c| !c.actions.is_empty()) {
        println!("  last boot check:");
        for a in &check.actions {
            println!("    {a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dep(index: usize, booted: bool) -> DeploymentInfo {
        DeploymentInfo {
            index,
            stateroot: "berth".into(),
            checksum: "c".into(),
            serial: 0,
            version: "1".into(),
            pretty_name: String::new(),
            kargs: vec![],
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            booted,
            refspec: None,
            tree_id: None,
        }
    }

    #[test]
    fn roles_follow_the_order() {
        assert_eq!(role(&dep(0, true), Some(0)), "booted");
        assert_eq!(role(&dep(1, false), Some(0)), "rollback");
        assert_eq!(role(&dep(0, false), Some(1)), "pending");
    }
}
