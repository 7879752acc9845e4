//! What every OS-changing verb shares: the sysroot opened and locked, the
//! ESP brought in line with libostree's deployment order, and the record
//! of commits that failed to boot.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_sysroot::DeploymentInfo;
use ostree::gio;

/// Where the ESP is mounted on a host.
pub const ESP: &str = "/efi";
/// Commits that failed their boot tries, one checksum per line: `upgrade`
/// does not offer them again unless forced.
pub const FAILED_COMMITS: &str = "/var/lib/berth/failed-commits";

/// How long a verb waits for another one holding the sysroot lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A loaded sysroot holding libostree's lock (released on drop).
pub struct Host {
    /// The libostree sysroot.
    pub sysroot: ostree::Sysroot,
    /// Its root path (`/` on a host).
    pub root: PathBuf,
}

impl Host {
    /// Opens and locks the sysroot at `root`. When another berthctl (or
    /// ostree) holds the lock, waits up to [`LOCK_WAIT`] for it (the boot
    /// check holds it briefly at every boot), then gives up.
    pub fn open_locked(root: &Path) -> anyhow::Result<Host> {
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(root)));
        // /sysroot is read-only on a booted host (sysroot.readonly): in a
        // private mount namespace libostree makes it writable for this
        // process alone, while it holds the lock.
        sysroot
            .initialize_with_mount_namespace(gio::Cancellable::NONE)
            .context("preparing a private mount namespace for the sysroot")?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut said = false;
        while !sysroot.try_lock().context("taking the sysroot lock")? {
            if std::time::Instant::now() > deadline {
                bail!(
                    "another upgrade or rollback is running (the sysroot lock is still taken after {}s)",
                    LOCK_WAIT.as_secs()
                );
            }
            if !said {
                eprintln!("berthctl: waiting for another berthctl to finish (sysroot lock)");
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        sysroot
            .load(gio::Cancellable::NONE)
            .context("loading the sysroot")?;
        Ok(Host {
            sysroot,
            root: root.to_path_buf(),
        })
    }

    /// The deployments in libostree's order.
    pub fn deployments(&self) -> anyhow::Result<Vec<DeploymentInfo>> {
        Ok(berth_sysroot::deployment::list(&self.sysroot, &self.root)?)
    }

    /// The running deployment.
    pub fn booted(&self) -> anyhow::Result<ostree::Deployment> {
        self.sysroot
            .booted_deployment()
            .context("this system was not booted from an OSTree deployment")
    }

    /// Where the ESP is mounted under this root.
    pub fn esp(&self) -> PathBuf {
        self.root.join(ESP.trim_start_matches('/'))
    }

    /// What the ESP should hold for the current deployment list (reloaded
    /// first). `trial` names a new deployment being written now: its boot
    /// loader is not installed until it is blessed.
    pub fn esp_plan(
        &self,
        trial: Option<&str>,
    ) -> anyhow::Result<berth_sysroot::contract::EspPlan> {
        self.sysroot
            .load(gio::Cancellable::NONE)
            .context("reloading the sysroot")?;
        let deployments = self.deployments()?;
        let entries = berth_sysroot::esp_state::entry_names(&self.esp());
        let mut loader = berth_sysroot::contract::boot_loader_source(&deployments, &entries, trial);
        if loader.is_none()
            && !self
                .esp()
                .join(berth_sysroot::contract::SYSTEMD_BOOT_ON_ESP)
                .is_file()
        {
            // Nothing blessed and no boot loader at all: the booted
            // deployment's is the best there is.
            loader = deployments.iter().find(|d| d.booted);
        }
        Ok(berth_sysroot::contract::plan_with_loader(
            &self.root,
            &deployments,
            loader,
        ))
    }

    /// Writes the ESP for the current deployment list, then lets libostree
    /// remove what no deployment uses any more (old deployments, unreferenced
    /// objects). `trial` names a new deployment whose entry gets a boot counter.
    pub fn sync_esp_and_clean(
        &self,
        trial: Option<&str>,
    ) -> anyhow::Result<berth_sysroot::esp_sync::SyncReport> {
        let plan = self.esp_plan(trial)?;
        let report =
            berth_sysroot::esp_sync::apply(&self.esp(), &plan, trial).context("writing the ESP")?;
        self.sysroot
            .cleanup(gio::Cancellable::NONE)
            .context("removing old deployments and unused objects")?;
        Ok(report)
    }

    /// Writes a new deployment order without libostree's own cleanup (the
    /// ESP must be written first), then syncs the ESP and cleans.
    ///
    /// `order` must hold the very objects libostree handed out (it finds
    /// the booted deployment by pointer): copy them with `Clone::clone`
    /// (a new reference), never `Deployment::clone` (a new object).
    pub fn reorder(&self, order: &[ostree::Deployment]) -> anyhow::Result<()> {
        let opts = ostree::SysrootWriteDeploymentsOpts {
            do_postclean: false,
        };
        self.sysroot
            .write_deployments_with_options(order, &opts, gio::Cancellable::NONE)
            .context("writing the deployment order")?;
        self.sync_esp_and_clean(None)?;
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.sysroot.unlock();
    }
}

/// The commits recorded as failed.
pub fn failed_commits(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(FAILED_COMMITS.trim_start_matches('/')))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Records `commit` as failed (once).
pub fn record_failed(root: &Path, commit: &str) -> anyhow::Result<()> {
    let mut list = failed_commits(root);
    if list.iter().any(|c| c == commit) {
        return Ok(());
    }
    list.push(commit.to_string());
    let path = root.join(FAILED_COMMITS.trim_start_matches('/'));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    berth_sysroot::esp_sync::write_atomic(&path, (list.join("\n") + "\n").as_bytes())
        .with_context(|| format!("recording the failed commit in {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_commits_are_recorded_once() {
        let t = tempfile::tempdir().unwrap();
        assert!(failed_commits(t.path()).is_empty());
        record_failed(t.path(), "abc").unwrap();
        record_failed(t.path(), "abc").unwrap();
        record_failed(t.path(), "def").unwrap();
        assert_eq!(failed_commits(t.path()), ["abc", "def"]);
    }
}
