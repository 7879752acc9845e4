//! One look at the update server, and what the agent may do about it:
//! the signed summary (whose `.sig` alone travels when nothing changed)
//! names the ref's newest commit and carries its staged rollout, if any;
//! the host's records say whether that commit failed here before or is
//! the one an operator rolled back from; the deployments say whether
//! something already waits to boot, and whose it is.

use std::path::Path;

use anyhow::{Context, bail};
use berth_hostapi::update::Rollout;
use berth_sysroot::bls::Assessment;
use ostree::gio;

use super::state::{RolloutWait, Version, deployed_by_agent};
use crate::host::{Host, failed_commits};
use crate::upgrade::{commit_version, short, split_refspec};

/// What the agent should do after a look.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing to take now, for this reason.
    Idle(String),
    /// A rollout holds the new version back from this host.
    WaitForRollout(Version, RolloutWait),
    /// A deployment the agent did not make boots next.
    Held(String),
    /// Deploy this version.
    Deploy(Version),
    /// The agent's own deployment of this version waits to be booted.
    Finalize(Version),
}

/// The result of a look.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// The running version.
    pub booted: Version,
    /// What to do.
    pub verdict: Verdict,
    /// A rollout document that was not obeyed, and why.
    pub ignored_rollout: Option<String>,
}

/// Looks at the update server for the host at `root`, whose rollout
/// wariness is `wariness`, at `now`.
pub fn look(root: &Path, wariness: f64, now: u64) -> anyhow::Result<Look> {
    let host = Host::open_locked(root)?;
    let booted = host.booted()?;
    let repo = host.sysroot.repo();
    let booted_version = Version {
        version: commit_version(&repo, booted.csum().as_str()).unwrap_or_default(),
        commit: booted.csum().to_string(),
    };
    let refspec = booted
        .origin()
        .and_then(|o| o.string("origin", "refspec").ok())
        .context("the booted deployment's origin has no refspec")?
        .to_string();
    let (remote, branch) = split_refspec(&refspec)?;
    let (summary, _) = repo
        .remote_fetch_summary_with_options(remote, None, gio::Cancellable::NONE)
        .with_context(|| format!("fetching the summary of remote {remote}"))?;
    let summary = berth_sysroot::rollout::parse_summary(&summary);
    let Some(offered) = summary.refs.get(branch).cloned() else {
        bail!("the update server does not list {branch}");
    };
    let mut look = Look {
        booted: booted_version.clone(),
        verdict: Verdict::Idle(String::new()),
        ignored_rollout: None,
    };
    if offered == booted_version.commit {
        look.verdict = Verdict::Idle(format!("up to date on {}", booted_version.version));
        return Ok(look);
    }
    if failed_commits(root).contains(&offered) {
        look.verdict = Verdict::Idle(format!(
            "the newest version ({}) failed to boot on this host before; waiting for a newer one",
            short(&offered)
        ));
        return Ok(look);
    }
    let deployments = host.deployments()?;
    let booted_index = deployments.iter().find(|d| d.booted).map(|d| d.index);
    if let Some(back) = deployments
        .iter()
        .find(|d| d.checksum == offered && booted_index.is_some_and(|b| d.index > b))
    {
        look.verdict = Verdict::Idle(format!(
            "the newest version ({}) is the one this host was rolled back from; waiting for a newer one",
            back.version
        ));
        return Ok(look);
    }
    let ours = deployed_by_agent(root);
    if let Some(pending) = deployments
        .iter()
        .find(|d| booted_index.is_some_and(|b| d.index < b))
    {
        let version = Version {
            version: pending.version.clone(),
            commit: pending.checksum.clone(),
        };
        let entries = berth_sysroot::esp_state::entry_names(&host.esp());
        if entries.get(&pending.id()).map(|n| n.assessment()) == Some(Assessment::Bad) {
            // Its tries ran out and systemd-boot came back here; boot-check
            // (running now, or soon) records it as failed.
            look.verdict = Verdict::Idle(format!(
                "version {} ({}) failed to boot on this host (its boot tries ran out); waiting for a newer one",
                pending.version,
                short(&pending.checksum)
            ));
            return Ok(look);
        }
        if ours.as_deref() != Some(pending.checksum.as_str()) {
            look.verdict = Verdict::Held(format!(
                "version {} ({}) boots next, deployed by hand (berthctl upgrade or rollback): the agent leaves its reboot to whoever made it",
                pending.version,
                short(&pending.checksum)
            ));
            return Ok(look);
        }
        if pending.checksum == offered {
            look.verdict = Verdict::Finalize(version);
            return Ok(look);
        }
    }

    // A new version: its commit object (small, signature-checked) names
    // its version before anything else is fetched.
    let version = offered_version(&host, remote, branch, &booted_version.commit, &offered)?;
    let target = Version {
        version,
        commit: offered.clone(),
    };
    if let Some(signed) = summary.rollouts.get(branch) {
        match checked_rollout(&repo, remote, branch, signed) {
            Ok(r) if r.commit == offered => {
                if !r.admits(wariness, now) {
                    let wait = RolloutWait {
                        wariness,
                        progress: r.progress(now),
                        paused: r.paused_at.is_some(),
                    };
                    look.verdict = Verdict::WaitForRollout(target, wait);
                    return Ok(look);
                }
            }
            // A rollout of an older commit says nothing about this one.
            Ok(_) => {}
            Err(e) => look.ignored_rollout = Some(format!("{e:#}")),
        }
    }
    look.verdict = Verdict::Deploy(target);
    Ok(look)
}

/// The version of commit `offered`, fetching only its commit object when
/// the host does not have it yet (the remote's signature rules apply).
fn offered_version(
    host: &Host,
    remote: &str,
    branch: &str,
    booted: &str,
    offered: &str,
) -> anyhow::Result<String> {
    let repo = host.sysroot.repo();
    if let Some(v) = commit_version(&repo, offered) {
        return Ok(v);
    }
    let pull = berth_sysroot::remote::Pull {
        branch,
        booted,
        allow_downgrade: false,
        commit_only: true,
        commit: Some(offered),
    };
    repo.pull_with_options(remote, &pull.options(), None, gio::Cancellable::NONE)
        .with_context(|| format!("fetching commit {} of {branch}", short(offered)))?;
    Ok(commit_version(&repo, offered).unwrap_or_default())
}

/// The rollout document of `branch`, if its signature is good and it is
/// for this ref.
pub fn checked_rollout(
    repo: &ostree::Repo,
    remote: &str,
    branch: &str,
    signed: &berth_sysroot::rollout::SignedDoc,
) -> anyhow::Result<Rollout> {
    berth_sysroot::rollout::verify(repo, remote, signed)
        .context("the rollout document is not signed by a key this host trusts; ignored")?;
    let r: Rollout = serde_json::from_slice(&signed.doc)
        .context("the rollout document does not parse; ignored")?;
    if r.ostree_ref != branch {
        bail!(
            "the rollout document is for {}, not {branch}; ignored",
            r.ostree_ref
        );
    }
    Ok(r)
}
