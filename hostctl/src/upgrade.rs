//! `berthctl upgrade`: pull the next OS version from the update remote
//! (a static delta when the server has one; signatures checked when the
//! remote requires them; never older than the booted version unless
//! `--allow-downgrade`, never another ref's commit: see
//! `berth_sysroot::remote`), deploy it next to the booted one with libostree
//! (which merges /etc), put its kernel and a boot entry with a boot counter
//! on the ESP, and clean up. The booted deployment is never touched.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use ostree::prelude::*;
use ostree::{gio, glib};

use berth_sysroot::contract::Kargs;

use crate::host::{ESP, Host, failed_commits};

/// Free space the root needs beyond the pulled objects: the new
/// deployment's /etc copy and directories.
const ROOT_HEADROOM: u64 = 32 << 20;

/// Options of `berthctl upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOpts {
    /// Only say whether a new version is available.
    pub check: bool,
    /// Deploy even a commit recorded as failed.
    pub force: bool,
    /// Accept a commit older than the booted one.
    pub allow_downgrade: bool,
    /// Pull this commit of the ref (the one the update agent checked),
    /// not whatever the ref names by the time of the pull.
    pub commit: Option<String>,
    /// Run by the update agent, which has applied the rollout already;
    /// a person's upgrade is told when it goes ahead of a rollout.
    pub from_agent: bool,
}

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The remote has nothing newer.
    UpToDate,
    /// `--check`: this commit (version) is available.
    Available(String, String),
    /// The remote's commit failed to boot before; not deployed.
    SkippedFailed(String),
    /// The remote's commit is already deployed, with a boot entry that
    /// boots it next.
    Pending {
        /// The pending commit.
        commit: String,
    },
    /// Deployed; reboot to use it.
    Deployed {
        /// The new commit.
        commit: String,
        /// Its version.
        version: String,
    },
}

/// Splits an origin refspec `remote:ref`.
pub(crate) fn split_refspec(refspec: &str) -> anyhow::Result<(&str, &str)> {
    match refspec.split_once(':') {
        Some((remote, r)) if !remote.is_empty() && !r.is_empty() => Ok((remote, r)),
        _ => bail!(
            "the booted deployment's origin ({refspec}) names no remote: this image was built without [update] url"
        ),
    }
}

/// Runs `berthctl upgrade`.
pub fn run(root: &Path, opts: &UpgradeOpts) -> anyhow::Result<(Outcome, ExitCode)> {
    let started = Instant::now();
    let host = Host::open_locked(root)?;
    let booted = host.booted()?;
    if !opts.check {
        refuse_on_trial(&host)?;
    }
    let origin = booted
        .origin()
        .context("the booted deployment has no origin file")?;
    let refspec = origin
        .string("origin", "refspec")
        .context("the booted deployment's origin has no refspec")?
        .to_string();
    let (remote, branch) = split_refspec(&refspec)?;
    let repo = host.sysroot.repo();

    // Pull (or, with --check, only the commit object).
    let progress = ostree::AsyncProgress::new();
    let booted_commit = booted.csum();
    let pull_opts = berth_sysroot::remote::Pull {
        branch,
        booted: booted_commit.as_str(),
        allow_downgrade: opts.allow_downgrade,
        commit_only: opts.check,
        commit: opts.commit.as_deref(),
    };
    eprintln!("berthctl: fetching {branch} from {remote}");
    repo.pull_with_options(
        remote,
        &pull_opts.options(),
        Some(&progress),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("pulling {branch} from remote {remote}"))?;
    progress.finish();
    let fetched = progress.uint64("bytes-transferred");
    let new = repo
        .resolve_rev(&refspec, false)
        .with_context(|| format!("resolving {refspec}"))?
        .context("the pull brought no commit")?
        .to_string();
    let version = commit_version(&repo, &new).unwrap_or_default();

    if !opts.from_agent && new != booted.csum().as_str() {
        if let Some(note) = rollout_note(root, &repo, remote, branch, &new) {
            println!("berthctl: {note}");
        }
    }
    if new == booted.csum().as_str() {
        println!("berthctl: already up to date ({version}, {})", short(&new));
        return Ok((Outcome::UpToDate, ExitCode::SUCCESS));
    }
    if failed_commits(root).contains(&new) && !opts.force {
        println!(
            "berthctl: {version} ({}) failed to boot on this host before; not deploying it (use --force to try again)",
            short(&new)
        );
        return Ok((Outcome::SkippedFailed(new), ExitCode::SUCCESS));
    }
    let deployed = host
        .deployments()?
        .into_iter()
        .find(|d| d.checksum == new && !d.booted);
    if let Some(d) = &deployed {
        // Deployed before: it boots next only if it is the default and its
        // entry on the ESP is whole (an upgrade cut short may have left
        // neither); otherwise the job is finished below.
        let plan = host.esp_plan(Some(&d.id()))?;
        if d.index == 0 && berth_sysroot::esp_check::entry_boots(&host.esp(), &plan, &d.id()) {
            println!(
                "berthctl: {version} ({}) is already deployed and boots next",
                short(&new)
            );
            return Ok((Outcome::Pending { commit: new }, ExitCode::SUCCESS));
        }
    }
    if opts.check {
        println!("berthctl: {version} ({}) is available", short(&new));
        return Ok((Outcome::Available(new, version), ExitCode::SUCCESS));
    }
    refuse_unsigned_under_secure_boot(root, &repo, &new, &version)?;
    if let Some(d) = deployed {
        let on_trial = finish_deployment(&host, &d, opts.force)?;
        println!(
            "berthctl: deployed {version} ({}): its deployment was already there; it boots next{}",
            short(&new),
            if on_trial {
                ", on trial"
            } else {
                " (it was blessed before)"
            }
        );
        return Ok((
            Outcome::Deployed {
                commit: new,
                version,
            },
            ExitCode::SUCCESS,
        ));
    }

    check_space(root, &repo, &new)?;
    // The root partition stays the booted one's; the rest comes from the
    // new version (an image without its kargs file keeps the booted
    // deployment's). libostree merges the booted deployment's /etc into
    // the new one.
    let kargs = new_kargs(&repo, &new, &booted)?;
    eprintln!("berthctl: deploying {version} ({})", short(&new));
    let deployment =
        berth_sysroot::contract::deploy(&host.sysroot, &new, &origin, Some(&booted), &kargs)
            .with_context(|| format!("deploying {new}"))?;
    let id = format!("{}.{}", deployment.csum(), deployment.deployserial());
    eprintln!("berthctl: writing the ESP");
    host.sync_esp_and_clean(Some(&id))?;
    mark_sysroot_readonly(&host);
    println!(
        "berthctl: deployed {version} ({}): fetched {} in {:.1}s; it boots next, on trial",
        short(&new),
        human_bytes(fetched),
        started.elapsed().as_secs_f64()
    );
    Ok((
        Outcome::Deployed {
            commit: new,
            version,
        },
        ExitCode::SUCCESS,
    ))
}

/// What a person upgrading by hand should know about the staged rollout
/// of `commit`: that this upgrade does not wait for it. `None` when the
/// commit is not being rolled out, or the rollout has reached this host.
/// (The summary was just fetched by the pull: it comes from the cache.)
fn rollout_note(
    root: &Path,
    repo: &ostree::Repo,
    remote: &str,
    branch: &str,
    commit: &str,
) -> Option<String> {
    let (summary, _) = repo
        .remote_fetch_summary_with_options(remote, None, gio::Cancellable::NONE)
        .ok()?;
    let summary = berth_sysroot::rollout::parse_summary(&summary);
    let signed = summary.rollouts.get(branch)?;
    let rollout = crate::agent::check::checked_rollout(repo, remote, branch, signed).ok()?;
    if rollout.commit != commit {
        return None;
    }
    let policy = crate::agent::policy(root);
    let wariness = crate::identity::read(root, &policy).wariness;
    let now = crate::agent::now();
    if rollout.admits(wariness, now) {
        return None;
    }
    Some(format!(
        "{} is in a staged rollout{} at {:.0}%, short of this host's wariness {:.2}: a manual upgrade does not wait for it",
        short(commit),
        if rollout.paused_at.is_some() {
            ", paused"
        } else {
            ""
        },
        rollout.progress(now) * 100.0,
        wariness
    ))
}

/// Refuses to upgrade from a boot still on trial: libostree keeps only the
/// booted deployment and the new one, so the last blessed version would be
/// removed, and if both the trial boot and the new version then failed no
/// good entry would be left. berth-init blesses the boot (or reboots it)
/// within its deadline; the upgrade can follow.
fn refuse_on_trial(host: &Host) -> anyhow::Result<()> {
    let Some(booted) = host.deployments()?.into_iter().find(|d| d.booted) else {
        return Ok(());
    };
    let entries = berth_sysroot::esp_state::entry_names(&host.esp());
    if let Some(name) = entries
        .get(&booted.id())
        .filter(|n| n.assessment() == berth_sysroot::bls::Assessment::Trial)
    {
        bail!(
            "this boot of {} is still on trial ({} tries left): the last good version would be removed; upgrade once berth-init has blessed it (nothing was fetched)",
            booted.version,
            name.tries_left.unwrap_or(0)
        );
    }
    Ok(())
}

/// Makes an existing, not booted deployment the default with a whole boot
/// entry: what an upgrade cut short (or a boot check that made the booted
/// one the default again) left undone. A new entry is on trial; one that
/// was blessed before (the rollback deployment) keeps its name. Returns
/// whether the deployment boots on trial.
fn finish_deployment(
    host: &Host,
    d: &berth_sysroot::DeploymentInfo,
    force: bool,
) -> anyhow::Result<bool> {
    let esp = host.esp();
    if force {
        // A forced retry of a version that ran out of tries gets new tries.
        let entries = berth_sysroot::esp_state::entry_files(&esp);
        for name in entries.get(&d.id()).into_iter().flatten() {
            if name.assessment() == berth_sysroot::bls::Assessment::Bad {
                std::fs::remove_file(
                    esp.join(berth_sysroot::contract::ENTRIES_DIR)
                        .join(name.file_name()),
                )
                .with_context(|| format!("removing the spent entry {}", name.file_name()))?;
            }
        }
    }
    let raw = host.sysroot.deployments();
    let Some(target) = raw
        .iter()
        .find(|r| r.csum().as_str() == d.checksum && r.deployserial() == d.serial)
    else {
        bail!("deployment {} is no longer listed", d.id());
    };
    let mut order = vec![Clone::clone(target)];
    order.extend(raw.iter().filter(|r| !r.equal(target)).cloned());
    let opts = ostree::SysrootWriteDeploymentsOpts {
        do_postclean: false,
    };
    host.sysroot
        .write_deployments_with_options(&order, &opts, gio::Cancellable::NONE)
        .context("writing the deployment order")?;
    eprintln!("berthctl: writing the ESP");
    let plan = host.esp_plan(Some(&d.id()))?;
    berth_sysroot::esp_sync::repair(&esp, &plan, Some(&d.id())).context("writing the ESP")?;
    host.sysroot
        .cleanup(gio::Cancellable::NONE)
        .context("removing old deployments and unused objects")?;
    let entries = berth_sysroot::esp_state::entry_names(&esp);
    Ok(entries
        .get(&d.id())
        .is_some_and(|n| n.assessment() == berth_sysroot::bls::Assessment::Trial))
}

/// On a host whose firmware enforces Secure Boot, refuses `commit` when its
/// tree has no signed unified kernel image: its entry would name a plain
/// kernel the firmware refuses, so the host would spend its tries on it and
/// fall back. Said before anything is deployed, with what to do. (Whether
/// the image is signed by a key in db only the firmware can tell; a host
/// holds no certificate to check it against.)
fn refuse_unsigned_under_secure_boot(
    root: &Path,
    repo: &ostree::Repo,
    commit: &str,
    version: &str,
) -> anyhow::Result<()> {
    let efivars = root.join(berth_sysroot::efivars::EFIVARS.trim_start_matches('/'));
    if crate::firmware::read(root, &efivars).state != "enforcing" {
        return Ok(());
    }
    if commit_has_unified_image(repo, commit)? {
        return Ok(());
    }
    bail!(
        "this host boots with Secure Boot enforcing, and {version} ({}) has no signed unified \
         kernel image (usr/lib/modules/<kernel>/{}): the firmware would refuse to boot it; \
         build that version with [secure-boot] and publish it again",
        short(commit),
        berth_sysroot::contract::UKI_NAME
    )
}

/// Whether `commit`'s tree has a unified kernel image beside a kernel:
/// `usr/lib/modules/<kver>/berth.efi`, a regular file.
fn commit_has_unified_image(repo: &ostree::Repo, commit: &str) -> anyhow::Result<bool> {
    let Some(kernels) = commit_kernel_dirs(repo, commit)? else {
        return Ok(false);
    };
    Ok(kernels.iter().any(|dir| {
        dir.child(berth_sysroot::contract::UKI_NAME)
            .query_file_type(
                gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
                gio::Cancellable::NONE,
            )
            == gio::FileType::Regular
    }))
}

/// The kernel directories of `commit` (`usr/lib/modules/<kver>/`), or
/// `None` when its tree has no `usr/lib/modules` directory. (libgio lists
/// a missing directory lazily: the error would come with the first entry.)
fn commit_kernel_dirs(repo: &ostree::Repo, commit: &str) -> anyhow::Result<Option<Vec<gio::File>>> {
    let none = gio::Cancellable::NONE;
    let (tree, _) = repo
        .read_commit(commit, none)
        .context("reading the new commit")?;
    let modules = tree.resolve_relative_path("usr/lib/modules");
    if modules.query_file_type(gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS, none)
        != gio::FileType::Directory
    {
        return Ok(None);
    }
    let children = modules
        .enumerate_children(
            "standard::name,standard::type",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            none,
        )
        .context("listing the new commit's kernels")?;
    let mut dirs = Vec::new();
    for info in children {
        let info = info.context("listing the new commit's kernels")?;
        if info.file_type() == gio::FileType::Directory {
            dirs.push(modules.child(info.name()));
        }
    }
    Ok(Some(dirs))
}

/// The kernel arguments of a new deployment of `commit`: the booted
/// deployment's root with the commit's own arguments file, or the booted
/// deployment's arguments when the commit has no such file.
fn new_kargs(
    repo: &ostree::Repo,
    commit: &str,
    booted: &ostree::Deployment,
) -> anyhow::Result<Kargs> {
    let options = booted
        .bootconfig()
        .and_then(|b| b.get("options"))
        .map(|o| o.to_string())
        .unwrap_or_default();
    let booted_kargs = Kargs::parse_options(&options);
    let Some(bytes) = read_commit_file(repo, commit, berth_sysroot::contract::KARGS_PATH)? else {
        return Ok(booted_kargs);
    };
    Ok(Kargs::parse_image_file(&String::from_utf8_lossy(&bytes)).with_root_of(&booted_kargs))
}

/// The contents of the regular file at `path` in `commit`, or `None` if
/// the commit has no such file. Reads the object through the repository
/// (a RepoFile's own stream is not a GFileInputStream, which
/// g_file_load_contents insists on).
fn read_commit_file(
    repo: &ostree::Repo,
    commit: &str,
    path: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let none = gio::Cancellable::NONE;
    let (tree, _) = repo
        .read_commit(commit, none)
        .context("reading the new commit")?;
    let file = tree.resolve_relative_path(path.trim_start_matches('/'));
    let Ok(file) = file.downcast::<ostree::RepoFile>() else {
        return Ok(None);
    };
    if file.ensure_resolved().is_err() || !file.query_exists(none) {
        return Ok(None);
    }
    let (stream, _, _) = repo
        .load_file(&file.checksum(), none)
        .with_context(|| format!("reading {path} from the new commit"))?;
    let Some(stream) = stream else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf[..], none)
            .with_context(|| format!("reading {path}"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    Ok(Some(bytes))
}

/// Hosts installed before /sysroot became read-only get it from the
/// first boot of the new version (berth-init's stage 1 reads the
/// repository's `sysroot.readonly`, as ostree-prepare-root does).
fn mark_sysroot_readonly(host: &Host) {
    let repo = host.sysroot.repo();
    let config = repo.copy_config();
    if config.boolean("sysroot", "readonly").unwrap_or(false) {
        return;
    }
    config.set_boolean("sysroot", "readonly", true);
    if let Err(e) = repo.write_config(&config) {
        eprintln!("berthctl: making /sysroot read-only from the next boot: {e}");
    }
}

/// The `version` metadata of a commit.
pub(crate) fn commit_version(repo: &ostree::Repo, commit: &str) -> Option<String> {
    let (v, _) = repo.load_commit(commit).ok()?;
    let meta = v.child_value(0);
    let dict = glib::VariantDict::new(Some(&meta));
    dict.lookup::<String>("version").ok().flatten()
}

/// Refuses to deploy when the ESP cannot take the new kernel and
/// initramfs, or the root has too little room left.
fn check_space(root: &Path, repo: &ostree::Repo, commit: &str) -> anyhow::Result<()> {
    // A commit without usr/lib/modules has nothing to size here; as
    // before, this check does not refuse it.
    let kernels = commit_kernel_dirs(repo, commit)?.unwrap_or_default();
    let mut boot_bytes = 0u64;
    for dir in kernels {
        for f in ["vmlinuz", "initramfs.img"] {
            if let Ok(i) = dir.child(f).query_info(
                "standard::size",
                gio::FileQueryInfoFlags::NONE,
                gio::Cancellable::NONE,
            ) {
                boot_bytes += u64::try_from(i.size()).unwrap_or(0);
            }
        }
    }
    let esp_free = free_bytes(&root.join(ESP.trim_start_matches('/')))?;
    if esp_free < boot_bytes + (1 << 20) {
        bail!(
            "the ESP has {} free but the new kernel and initramfs need {}: nothing was deployed",
            human_bytes(esp_free),
            human_bytes(boot_bytes)
        );
    }
    let root_free = free_bytes(root)?;
    if root_free < ROOT_HEADROOM {
        bail!(
            "the root file system has only {} free (at least {} needed): nothing was deployed",
            human_bytes(root_free),
            human_bytes(ROOT_HEADROOM)
        );
    }
    Ok(())
}

fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let s = rustix::fs::statvfs(path)
        .with_context(|| format!("checking free space on {}", path.display()))?;
    Ok(s.f_bavail * s.f_frsize)
}

/// The first 12 characters of a checksum.
pub(crate) fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// Bytes for people.
pub(crate) fn human_bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refspecs_need_a_remote() {
        assert_eq!(
            split_refspec("berth:berth/x/x86_64").unwrap(),
            ("berth", "berth/x/x86_64")
        );
        assert!(
            split_refspec("berth/x/x86_64")
                .unwrap_err()
                .to_string()
                .contains("[update] url")
        );
    }

    /// A bare repository at `dir` with one commit of `files` (path, bytes).
    fn repo_with(dir: &Path, files: &[(&str, &[u8])]) -> (ostree::Repo, String) {
        let tree = dir.join("tree");
        for (path, bytes) in files {
            let p = tree.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::create_dir_all(&tree).unwrap();
        let repo_path = dir.join("repo");
        let repo = ostree::Repo::new_for_path(&repo_path);
        repo.create(ostree::RepoMode::BareUser, gio::Cancellable::NONE)
            .unwrap();
        let out = std::process::Command::new("ostree")
            .arg("commit")
            .arg("--repo")
            .arg(&repo_path)
            .args(["--branch", "t", "--tree"])
            .arg(format!("dir={}", tree.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let commit = String::from_utf8(out.stdout).unwrap().trim().to_string();
        (repo, commit)
    }

    #[test]
    fn a_unified_image_is_looked_for_beside_each_kernel() {
        type Files<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Files, bool); 4] = [
            (&[("usr/lib/modules/6.1.0-9-amd64/berth.efi", b"MZ")], true),
            (&[("usr/lib/modules/6.1.0-9-amd64/vmlinuz", b"MZ")], false),
            // In the wrong place, or a folder where the file should be.
            (&[("usr/lib/modules/berth.efi", b"MZ")], false),
            (&[("usr/lib/modules/6.1/berth.efi/x", b"MZ")], false),
        ];
        for (files, expected) in cases {
            let t = tempfile::tempdir().unwrap();
            let (repo, commit) = repo_with(t.path(), files);
            assert_eq!(
                commit_has_unified_image(&repo, &commit).unwrap(),
                expected,
                "{files:?}"
            );
        }
        let t = tempfile::tempdir().unwrap();
        let (repo, commit) = repo_with(t.path(), &[("etc/os-release", b"ID=x\n")]);
        assert!(!commit_has_unified_image(&repo, &commit).unwrap());
    }

    #[test]
    fn a_secure_boot_host_refuses_a_commit_without_a_signed_image() {
        let t = tempfile::tempdir().unwrap();
        let (plain_repo, plain) = repo_with(
            &t.path().join("plain"),
            &[("usr/lib/modules/6.1/vmlinuz", b"MZ")],
        );
        let (signed_repo, signed) = repo_with(
            &t.path().join("signed"),
            &[("usr/lib/modules/6.1/berth.efi", b"MZ")],
        );
        let root = t.path().join("root");
        let efivars = root.join(berth_sysroot::efivars::EFIVARS.trim_start_matches('/'));
        std::fs::create_dir_all(&efivars).unwrap();
        let secure_boot = |on: u8| {
            std::fs::write(
                efivars.join("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
                [6, 0, 0, 0, on],
            )
            .unwrap()
        };
        // Without the variable (no UEFI) and with Secure Boot off, anything goes.
        refuse_unsigned_under_secure_boot(&root, &plain_repo, &plain, "3.0.0").unwrap();
        secure_boot(0);
        refuse_unsigned_under_secure_boot(&root, &plain_repo, &plain, "3.0.0").unwrap();
        secure_boot(1);
        refuse_unsigned_under_secure_boot(&root, &signed_repo, &signed, "3.0.0").unwrap();
        let err = refuse_unsigned_under_secure_boot(&root, &plain_repo, &plain, "3.0.0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Secure Boot enforcing, and 3.0.0 (")
                && err.contains("no signed unified kernel image")
                && err.contains("[secure-boot]"),
            "{err}"
        );
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
