//! `berth rollout`: staged rollouts of a ref's newest commit.
//!
//! A rollout is a document (`berth_hostapi::update::Rollout`) signed by
//! the repository's key and published in the repository's summary
//! (`berth_sysroot::rollout`), so a static server still serves
//! everything. Hosts whose wariness is at most the rollout's progress
//! take the commit; the others wait. This module starts, pauses, resumes
//! and completes a ref's rollout, and shows it; it never moves a ref.
//!
//! A document is for one commit: once a build moves the ref, the old
//! document no longer applies (and `berth build` drops it), and the new
//! commit is available to every host until a rollout is started for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use berth_hostapi::update::Rollout;
use ostree::{gio, glib};
use serde::Serialize;

use crate::error::InputError;
use crate::summary::Saved;

/// `--duration` when a rollout is started without one: a day.
pub const DEFAULT_DURATION_SECS: u64 = 24 * 60 * 60;
/// `--start-fraction` when not given: one host in twenty at the start.
pub const DEFAULT_START_FRACTION: f64 = 0.05;

/// What `berth rollout` is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOpts {
    /// The OSTree archive repository.
    pub repo: PathBuf,
    /// The ref whose newest commit is rolled out.
    pub ostree_ref: String,
    /// The change to make; `None` shows the current rollout.
    pub action: Option<Action>,
    /// Print JSON instead of text.
    pub json: bool,
}

/// A change to a ref's rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start (or start again) the rollout of the newest commit.
    Start(Start),
    /// Change the newest commit's rollout.
    Change(Change),
}

/// How a rollout starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// When it starts (unix seconds); `None`: now.
    pub start: Option<u64>,
    /// From the start fraction to every host, in seconds.
    pub duration_secs: u64,
    /// The fraction of hosts that may take it at the start.
    pub start_fraction: f64,
}

/// A change to a rollout that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Hold every host that has not taken the commit yet.
    Pause,
    /// Go on from where it was paused.
    Resume,
    /// Let every host take it now.
    Complete,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Pause => "pause",
            Change::Resume => "resume",
            Change::Complete => "complete",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Change::Pause => "paused",
            Change::Resume => "resumed",
            Change::Complete => "completed",
        }
    }
}

/// What an [`Action`] comes to, given the commit's current document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish this document.
    Write(Rollout),
    /// The document already is as asked: nothing to write, and why.
    Unchanged(Rollout, &'static str),
}

/// The document `action` makes for `commit` of `ostree_ref` at `now`,
/// from `current` (the commit's document, if it has one). Pausing,
/// resuming or completing needs one: a usage error otherwise.
pub fn plan(
    action: &Action,
    ostree_ref: &str,
    commit: &str,
    current: Option<&Rollout>,
    now: u64,
) -> Result<Outcome, InputError> {
    let change = match action {
        Action::Start(s) => {
            return Ok(Outcome::Write(Rollout {
                ostree_ref: ostree_ref.to_string(),
                commit: commit.to_string(),
                start: s.start.unwrap_or(now),
                duration_secs: s.duration_secs,
                start_fraction: s.start_fraction,
                paused_at: None,
                complete: false,
            }));
        }
        Action::Change(c) => *c,
    };
    let Some(current) = current else {
        return Err(InputError(format!(
            "{ostree_ref}: its newest commit {} has no rollout to {}: start one first \
             (berth rollout REPO --ref {ostree_ref} --duration 24h)",
            short(commit),
            change.verb()
        )));
    };
    let mut next = current.clone();
    match change {
        Change::Pause if current.complete => {
            return Err(InputError(format!(
                "{ostree_ref}: the rollout of {} is complete (every host may take it): \
                 there is nothing to pause",
                short(commit)
            )));
        }
        Change::Pause if current.paused_at.is_some() => {
            return Ok(Outcome::Unchanged(next, "already paused"));
        }
        Change::Pause => next.paused_at = Some(now),
        Change::Resume => {
            let Some(paused_at) = current.paused_at else {
                return Ok(Outcome::Unchanged(next, "not paused"));
            };
            // The time it stood still is added to the start, so progress
            // goes on from where it stopped.
            next.start = current.start.saturating_add(now.saturating_sub(paused_at));
            next.paused_at = None;
        }
        Change::Complete if current.complete => {
            return Ok(Outcome::Unchanged(next, "already complete"));
        }
        Change::Complete => next.complete = true,
    }
    Ok(Outcome::Write(next))
}

/// What `berth rollout` found or did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The ref.
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    /// Its newest commit.
    pub commit: String,
    /// That commit's `version`.
    pub version: Option<String>,
    /// The commit's rollout; `None`: available to every host.
    pub rollout: Option<Rollout>,
    /// How far it is now (1 without a rollout).
    pub progress: f64,
    /// What was done: `started`, `paused`, `resumed`, `completed`, or
    /// why nothing was (`already paused`...); `None` when only shown.
    pub done: Option<String>,
    /// When this was (unix seconds).
    pub now: u64,
}

/// Runs `berth rollout` and prints what it did.
pub fn run(opts: &RolloutOpts) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let report = apply(opts, now)?;
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report as JSON")?
        );
    } else {
        print!("{}", describe(&report));
    }
    Ok(())
}

/// Does what `opts` asks at `now`: reads the ref's newest commit and its
/// document, and for a change signs the new document with the
/// repository's key and publishes it in a regenerated, signed summary
/// that keeps the other refs' documents.
pub fn apply(opts: &RolloutOpts, now: u64) -> anyhow::Result<Report> {
    let path = &opts.repo;
    let repo = open(path)?;
    let ostree_ref = opts.ostree_ref.as_str();
    let commit = newest_commit(&repo, path, ostree_ref)?;
    let version = commit_version(&repo, &commit);
    let summary = berth_sysroot::rollout::read_repo_summary(path)?;
    let current = summary
        .rollouts
        .get(ostree_ref)
        .and_then(|d| serde_json::from_slice::<Rollout>(&d.doc).ok())
        .filter(|r| r.ostree_ref == ostree_ref && r.commit == commit);
    let report = |rollout: Option<Rollout>, done: Option<&str>| Report {
        ostree_ref: ostree_ref.to_string(),
        commit: commit.clone(),
        version: version.clone(),
        progress: rollout.as_ref().map_or(1.0, |r| r.progress(now)),
        rollout,
        done: done.map(String::from),
        now,
    };
    let Some(action) = &opts.action else {
        return Ok(report(current, None));
    };
    let next = match plan(action, ostree_ref, &commit, current.as_ref(), now)? {
        Outcome::Unchanged(r, why) => return Ok(report(Some(r), Some(why))),
        Outcome::Write(r) => r,
    };
    let signer = repository_signer(path)?;
    let signed = signer.sign_rollout(&repo, next.to_json().as_bytes())?;
    let mut docs = summary.rollouts;
    docs.insert(ostree_ref.to_string(), signed);
    publish(&repo, path, &docs, &signer)?;
    let done = match action {
        Action::Start(_) => "started",
        Action::Change(c) => c.done(),
    };
    Ok(report(Some(next), Some(done)))
}

/// Opens the existing archive repository at `path`.
fn open(path: &Path) -> anyhow::Result<ostree::Repo> {
    if !path.join("config").is_file() {
        return Err(InputError(format!(
            "{} is not an OSTree repository (it has no config file)",
            path.display()
        ))
        .into());
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening the OSTree repository {}", path.display()))?;
    Ok(repo)
}

/// The commit `ostree_ref` points at; a usage error naming the
/// repository's refs when it has no such ref.
fn newest_commit(repo: &ostree::Repo, path: &Path, ostree_ref: &str) -> anyhow::Result<String> {
    let found = repo
        .resolve_rev(ostree_ref, true)
        .with_context(|| format!("resolving {ostree_ref} in {}", path.display()))?;
    if let Some(c) = found {
        return Ok(c.to_string());
    }
    let mut refs: Vec<String> = repo
        .list_refs(None, gio::Cancellable::NONE)
        .with_context(|| format!("listing the refs of {}", path.display()))?
        .into_keys()
        .collect();
    refs.sort();
    let known = if refs.is_empty() {
        "it has none".to_string()
    } else {
        format!("its refs: {}", refs.join(", "))
    };
    Err(InputError(format!(
        "{} has no ref {ostree_ref} ({known})",
        path.display()
    ))
    .into())
}

fn commit_version(repo: &ostree::Repo, commit: &str) -> Option<String> {
    let (c, _) = repo.load_commit(commit).ok()?;
    glib::VariantDict::new(Some(&c.child_value(0)))
        .lookup::<String>("version")
        .ok()
        .flatten()
}

/// The repository's own key; an error, not a new key, when it has none:
/// hosts obey only documents their trusted key signed, and a key made
/// now is one no host trusts.
fn repository_signer(path: &Path) -> anyhow::Result<crate::signing::Signer> {
    let dir = crate::signing::key_dir(path)?;
    if !dir.join(crate::signing::GNUPG_DIR).is_dir() {
        return Err(InputError(format!(
            "{} has no key directory {}: a rollout must be signed with the repository's key \
             (hosts ignore unsigned documents), and only repositories whose builds sign with \
             their own key have one",
            path.display(),
            dir.display()
        ))
        .into());
    }
    crate::signing::repository_key(path)
}

/// Regenerates the summary with `docs` and signs it. Should that fail
/// halfway, the summary and signature from before are put back: the
/// repository keeps a consistent pair, old or new. Both are flushed to
/// disk before this returns.
fn publish(
    repo: &ostree::Repo,
    path: &Path,
    docs: &BTreeMap<String, berth_sysroot::rollout::SignedDoc>,
    signer: &crate::signing::Signer,
) -> anyhow::Result<()> {
    let saved = Saved::read(path)?;
    if let Err(e) = crate::summary::regenerate(repo, docs, Some(signer)) {
        if let Err(r) = saved.restore(path) {
            return Err(e.context(format!(
                "and putting the old summary back failed too ({r:#}): run berth rollout again"
            )));
        }
        return Err(e);
    }
    crate::commit::sync_repo(path)
}

/// A commit as people quote it.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A duration as a manifest writes it: `24h`, `90m`, `45s`.
fn duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The report as text, one line per fact.
pub fn describe(r: &Report) -> String {
    let version = r
        .version
        .as_deref()
        .map_or(String::new(), |v| format!(" (version {v})"));
    let mut out = format!("{} {}{version}", r.ostree_ref, short(&r.commit));
    let Some(doc) = &r.rollout else {
        out.push_str(": no rollout, available to every host\n");
        return out;
    };
    match r.done.as_deref() {
        Some(done @ ("started" | "paused" | "resumed" | "completed")) => {
            out.push_str(&format!(": rollout {done}\n"));
        }
        Some(why) => out.push_str(&format!(": rollout unchanged ({why})\n")),
        None => out.push_str(": rollout\n"),
    }
    let state = if doc.complete {
        " (complete: every host)".to_string()
    } else if let Some(p) = doc.paused_at {
        format!(" (paused since {})", time(p))
    } else if r.now < doc.start {
        " (not started yet)".to_string()
    } else {
        String::new()
    };
    out.push_str(&format!("  start:          {}\n", time(doc.start)));
    out.push_str(&format!(
        "  duration:       {}\n",
        duration(doc.duration_secs)
    ));
    out.push_str(&format!("  start fraction: {}\n", doc.start_fraction));
    out.push_str(&format!("  progress now:   {:.3}{state}\n", r.progress));
    out
}

/// Parses `--duration` as manifests write durations, in whole seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let ms = crate::manifest::units::parse_duration_ms(text)?;
    if ms % 1000 != 0 {
        return Err(format!("`{text}` is not a whole number of seconds"));
    }
    Ok(ms / 1000)
}

/// Parses `--start-fraction`: a number from 0 to 1.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{text}` is out of range: a fraction from 0 to 1"));
    }
    Ok(v)
}

/// Parses `--start`: an RFC 3339 time in UTC (`2026-12-01T22:00:00Z`),
/// as unix seconds.
pub fn parse_start(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(text.trim()).map_err(|e| {
        format!("`{text}` is not an RFC 3339 time in UTC such as 2026-12-01T22:00:00Z ({e})")
    })?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("`{text}` is before 1970"))
}

#[cfg(test)]
mod tests;
