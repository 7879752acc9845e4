//! Packages: resolve and extract the manifest's Debian packages with
//! mmdebstrap, keeping downloads and the extracted tree in a cache so that
//! rebuilding an unchanged package list fetches nothing at all.
//!
//! mmdebstrap's `extract` variant unpacks the packages (with their
//! dependencies, resolved by apt) without running maintainer scripts: a
//! Berth host has no package manager, and everything the scripts would do
//! that the host needs (users, merged /usr, module index) the builder does
//! itself, reproducibly.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::command::{self, CommandError};
use crate::manifest::{Located, Manifest};

/// Packages every image gets: systemd-boot for the ESP, libostree for
/// `berthctl upgrade`, gpg for its signature checks, CA certificates for
/// https update servers. `gpg` and `usr-is-merged` are named so that apt
/// satisfies "gnupg | gpg" and "usrmerge | usr-is-merged" with them
/// instead of pulling in the whole GnuPG suite and Perl.
pub const BASE_PACKAGES: [&str; 5] = [
    "systemd-boot-efi",
    "libostree-1-1",
    "gpg",
    "usr-is-merged",
    "ca-certificates",
];

/// Bump when the way a cached tree is produced changes, so old caches are
/// not reused.
const TREE_FORMAT: &str = "berth-tree-6";

/// The cache directory layout.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    /// `$XDG_CACHE_HOME/berth`, else `$HOME/.cache/berth`, else `/var/cache/berth`.
    pub fn default_root() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("berth");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(h).join(".cache/berth");
        }
        PathBuf::from("/var/cache/berth")
    }

    /// Downloaded .deb files, shared by all package lists.
    pub fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// Prepared package trees, one per package-list key.
    pub fn trees(&self) -> PathBuf {
        self.root.join("trees")
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive lock `name` in the cache root, waiting for
    /// another build that holds it: builds running at the same time share
    /// the downloaded packages, the prepared trees and the container
    /// layouts, and must not prepare or replace one at once. Held until the
    /// returned file is dropped.
    pub fn lock(&self, name: &str) -> anyhow::Result<std::fs::File> {
        use anyhow::Context;
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join(name);
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }
}

/// The full package request of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    /// Suite, e.g. bookworm.
    pub suite: String,
    /// Mirror URL.
    pub mirror: String,
    /// Archive components.
    pub components: Vec<String>,
    /// Kernel package plus base plus manifest packages, as written.
    pub packages: Vec<String>,
    /// Kernel modules to keep beyond the defaults.
    pub extra_modules: Vec<String>,
}

impl PackageRequest {
    /// The request a manifest makes.
    pub fn from_manifest(m: &Manifest) -> PackageRequest {
        let mut packages = vec![m.kernel.package.value.clone()];
        packages.extend(BASE_PACKAGES.iter().map(|p| p.to_string()));
        packages.extend(m.source.packages.iter().map(|p| p.value.clone()));
        if m.ssh.is_some() {
            packages.push(crate::manifest::SSH_PACKAGE.to_string());
        }
        let mut extra_modules = m.kernel.modules.clone();
        extra_modules.sort();
        extra_modules.dedup();
        PackageRequest {
            suite: m.source.suite.clone(),
            mirror: m.source.mirror.clone(),
            components: m.source.components.clone(),
            packages,
            extra_modules,
        }
    }

    /// Cache key: everything that decides the prepared tree.
    pub fn key(&self) -> String {
        let mut sorted = self.packages.clone();
        sorted.sort();
        sorted.dedup();
        let mut h = Sha256::new();
        for part in [TREE_FORMAT, &self.suite, &self.mirror]
            .into_iter()
            .map(String::from)
            .chain(std::iter::once(self.components.join(",")))
            .chain(std::iter::once(sorted.join(",")))
            .chain(std::iter::once(self.extra_modules.join(",")))
            .chain(std::iter::once(
                crate::rootfs::kmods::DEFAULT_MODULES.join(","),
            ))
        {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }
}

/// One package as extracted, from its .deb file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PackageVersion {
    /// Package name.
    pub name: String,
    /// Version (epoch included, as apt writes it).
    pub version: String,
}

/// Parses `name_version_arch.deb` (apt escapes ':' in versions as `%3a`).
pub fn parse_deb_name(file: &str) -> Option<PackageVersion> {
    let base = Path::new(file)
        .file_name()?
        .to_str()?
        .strip_suffix(".deb")?;
    let mut parts = base.splitn(3, '_');
    let name = parts.next()?.to_string();
    let version = parts.next()?.replace("%3a", ":");
    parts.next()?;
    Some(PackageVersion { name, version })
}

/// Why extracting packages failed.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    /// apt could not find a package the manifest names.
    #[error("the package source has no package \"{0}\"")]
    Missing(String),
    /// mmdebstrap failed for another reason.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Extracts the requested packages into the empty directory `target` with
/// mmdebstrap, reusing and filling the .deb cache. Returns the packages
/// that were extracted.
pub fn extract(
    req: &PackageRequest,
    cache: &Cache,
    target: &Path,
) -> Result<Vec<PackageVersion>, PackagesError> {
    let debs = cache.debs();
    std::fs::create_dir_all(&debs).map_err(|source| PackagesError::Io {
        what: format!("creating {}", debs.display()),
        source,
    })?;
    let list = target.with_extension("packages");
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--mode=root")
        .arg("--variant=extract")
        .arg("--quiet")
        .arg(format!("--components={}", req.components.join(",")))
        .arg(format!("--include={}", req.packages.join(",")))
        // The cached .debs are put in place before apt runs, so apt
        // downloads only what it does not have.
        .arg("--skip=download/empty")
        .arg("--setup-hook=mkdir -p \"$1/var/cache/apt/archives\"")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives",
            debs.display()
        ))
        .arg(format!(
            "--extract-hook=sync-out /var/cache/apt/archives {}",
            debs.display()
        ))
        .arg(format!(
            "--extract-hook=printf '%s\\n' $MMDEBSTRAP_ESSENTIAL > {}",
            shell_quote(&list)
        ))
        .arg(&req.suite)
        .arg(target)
        .arg(&req.mirror);
    match command::run("extracting packages with mmdebstrap", &mut cmd) {
        Ok(_) => {}
        Err(e) => {
            if let Some(pkg) = missing_package(e.stderr()) {
                return Err(PackagesError::Missing(pkg));
            }
            return Err(e.into());
        }
    }
    let text = std::fs::read_to_string(&list).map_err(|source| PackagesError::Io {
        what: format!("reading {}", list.display()),
        source,
    })?;
    let _ = std::fs::remove_file(&list);
    let mut versions: Vec<PackageVersion> =
        text.split_whitespace().filter_map(parse_deb_name).collect();
    versions.sort();
    Ok(versions)
}

/// The package apt said it cannot find, from mmdebstrap's error output.
pub fn missing_package(stderr: &str) -> Option<String> {
    for line in stderr.lines() {
        for marker in [
            "Unable to locate package ",
            "Package '",
            "No package matches ",
        ] {
            if let Some(rest) = line.split(marker).nth(1) {
                let name: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '\'')
                    .collect();
                if !name.is_empty() {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// Maps a missing package back to the manifest line that asked for it.
pub fn locate_missing<'a>(m: &'a Manifest, name: &str) -> Option<&'a Located<String>> {
    let base = |p: &str| p.split(['=', '/']).next().unwrap_or(p).to_string();
    m.source
        .packages
        .iter()
        .chain(std::iter::once(&m.kernel.package))
        .find(|p| base(&p.value) == base(name))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_lock_waits_for_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let held = cache.lock("trees.lock").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = Cache::new(cache.root().to_path_buf());
        let waiter = std::thread::spawn(move || {
            let _l = other.lock("trees.lock").unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "a second build took the lock while the first held it"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the lock was not handed on");
        waiter.join().unwrap();
    }

    #[test]
    fn deb_names() {
        assert_eq!(
            parse_deb_name("/var/cache/apt/archives/libcap2_1%3a2.66-4+deb12u3+b1_amd64.deb"),
            Some(PackageVersion {
                name: "libcap2".into(),
                version: "1:2.66-4+deb12u3+b1".into()
            })
        );
        assert_eq!(parse_deb_name("lock"), None);
    }

    #[test]
    fn apt_missing_package_messages() {
        assert_eq!(
            missing_package("E: Unable to locate package nosuchpkg\nE: ...").as_deref(),
            Some("nosuchpkg")
        );
        assert_eq!(
            missing_package("E: Package 'foo' has no installation candidate").as_deref(),
            Some("foo")
        );
        assert_eq!(missing_package("E: something else"), None);
    }

    #[test]
    fn key_ignores_order_but_not_content() {
        let req = |p: &[&str]| PackageRequest {
            suite: "bookworm".into(),
            mirror: "http://m".into(),
            components: vec!["main".into()],
            packages: p.iter().map(|s| s.to_string()).collect(),
            extra_modules: vec![],
        };
        assert_eq!(req(&["a", "b"]).key(), req(&["b", "a"]).key());
        assert_ne!(req(&["a", "b"]).key(), req(&["a", "c"]).key());
        assert_eq!(req(&["a"]).key().len(), 24);
    }

    #[test]
    fn locate_missing_finds_the_manifest_entry() {
        let m = Manifest::parse(
            Path::new("m.toml"),
            "name = \"x\"\nversion = \"1\"\n[source]\npackages = [\"busybox\", \"nosuch=1.0\"]\n",
        )
        .unwrap();
        let p = locate_missing(&m, "nosuch").unwrap();
        assert_eq!(p.key, "source.packages[1]");
    }
}
