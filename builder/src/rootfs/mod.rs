//! The OS tree: a cached "base" tree per package list (extracted, pruned,
//! laid out the OSTree way), plus a small per-build overlay with Berth's
//! own files. The two are committed together; the base is never copied.

pub mod fsutil;
pub mod kmods;
pub mod layout;
pub mod overlay;
pub mod prune;
pub mod unlinked;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::packages::{self, Cache, PackageRequest, PackageVersion};

/// Facts about a prepared base tree, stored next to it in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The package-request key it was made for.
    pub key: String,
    /// Kernel version (`uname -r`).
    pub kernel_version: String,
    /// Every extracted package and its version.
    pub packages: Vec<PackageVersion>,
    /// Packages whose files were removed (initramfs machinery).
    pub dropped: Vec<String>,
    /// Kernel modules kept.
    pub modules: Vec<String>,
    /// Shared libraries removed because nothing links them (unlinked.rs).
    #[serde(default)]
    pub unlinked_libraries: Vec<String>,
    /// Bytes of files as extracted, and after pruning.
    pub extracted_bytes: u64,
    /// Bytes of files in the prepared tree.
    pub tree_bytes: u64,
}

/// A prepared base tree in the cache.
#[derive(Debug, Clone)]
pub struct BaseTree {
    /// Its directory.
    pub dir: PathBuf,
    /// Its facts.
    pub info: BaseInfo,
    /// Whether this build extracted it (false: taken from the cache).
    pub fresh: bool,
}

/// Returns the base tree for `req`, from the cache unless absent or
/// `refresh`; otherwise extracts and prepares it (and caches it).
pub fn base_tree(req: &PackageRequest, cache: &Cache, refresh: bool) -> anyhow::Result<BaseTree> {
    let key = req.key();
    let trees = cache.trees();
    let dir = trees.join(&key);
    let info_path = trees.join(format!("{key}.json"));
    if !refresh {
        if let Some(tree) = cached_tree(&dir, &info_path) {
            return Ok(tree);
        }
    }
    std::fs::create_dir_all(&trees).with_context(|| format!("creating {}", trees.display()))?;
    // Builds at the same time take turns: two extractions of one key would
    // each remove the tree the other just moved into place (while its build
    // reads it), and both would download into the shared package folder.
    let _lock = cache.lock("trees.lock")?;
    if !refresh {
        // Made by the build this one waited for.
        if let Some(tree) = cached_tree(&dir, &info_path) {
            return Ok(tree);
        }
    }
    let tmp = trees.join(format!("{key}.tmp-{}", std::process::id()));
    fsutil::remove_any(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    let result = extract_and_prepare(req, cache, &tmp, &key);
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = fsutil::remove_any(&tmp);
            return Err(e);
        }
    };
    // Replace atomically as far as a directory allows: the old tree goes
    // only once the new one is complete.
    let _ = std::fs::remove_file(&info_path);
    fsutil::remove_any(&dir).with_context(|| format!("removing the old {}", dir.display()))?;
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving the tree to {}", dir.display()))?;
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?)
        .with_context(|| format!("writing {}", info_path.display()))?;
    Ok(BaseTree {
        dir,
        info,
        fresh: true,
    })
}

/// The tree at `dir` if it and its facts at `info_path` are complete.
fn cached_tree(dir: &Path, info_path: &Path) -> Option<BaseTree> {
    if !dir.is_dir() {
        return None;
    }
    let text = std::fs::read_to_string(info_path).ok()?;
    let info = serde_json::from_str::<BaseInfo>(&text).ok()?;
    Some(BaseTree {
        dir: dir.to_path_buf(),
        info,
        fresh: false,
    })
}

fn extract_and_prepare(
    req: &PackageRequest,
    cache: &Cache,
    tmp: &Path,
    key: &str,
) -> anyhow::Result<BaseInfo> {
    let packages = packages::extract(req, cache, tmp)?;
    let (extracted_bytes, _) = fsutil::tree_usage(tmp)?;
    let debs = deb_paths(&cache.debs(), &packages)?;
    let requested: Vec<String> = req
        .packages
        .iter()
        .map(|p| p.split(['=', '/']).next().unwrap_or(p).to_string())
        .collect();
    let dropped = prune::drop_packages(tmp, &debs, &requested)?;
    prune::prune_paths(tmp).context("pruning documentation and package state")?;
    let kernel_version =
        layout::move_kernel(tmp).context("moving the kernel to /usr/lib/modules")?;
    layout::merge_usr(tmp).context("merging /bin, /sbin and /lib into /usr")?;
    let modules = keep_modules(tmp, &kernel_version, &req.extra_modules)?;
    // After the module pruning: the library walk reads every ELF file, and
    // the kernel package's thousands of modules (which link nothing) are
    // gone by then.
    let unlinked_libraries = drop_unlinked_libraries(tmp, &debs, &requested)?;
    link_busybox(tmp)?;
    layout::move_etc(tmp).context("moving /etc to /usr/etc")?;
    layout::ostree_toplevel(tmp).context("laying out the top-level directories")?;
    let (tree_bytes, _) = fsutil::tree_usage(tmp)?;
    Ok(BaseInfo {
        key: key.to_string(),
        kernel_version,
        packages,
        dropped,
        modules,
        unlinked_libraries,
        extracted_bytes,
        tree_bytes,
    })
}

/// Removes the libraries nothing links (see [`unlinked`]); the files of
/// the packages named in the request, and glibc's and libgcc's, stay.
fn drop_unlinked_libraries(
    root: &Path,
    debs: &[(String, PathBuf)],
    requested: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut kept = BTreeSet::new();
    for (name, deb) in debs {
        if requested.contains(name) || unlinked::ALWAYS_KEPT.contains(&name.as_str()) {
            kept.extend(
                prune::deb_files(deb)?
                    .iter()
                    .map(|f| unlinked::merged_path(f)),
            );
        }
    }
    let removed =
        unlinked::drop_unlinked(root, &kept).context("removing libraries nothing links")?;
    Ok(removed.files)
}

/// The cached .deb of each extracted package.
fn deb_paths(debs: &Path, packages: &[PackageVersion]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let wanted: BTreeSet<(String, String)> = packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(debs).with_context(|| format!("reading {}", debs.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(pv) = packages::parse_deb_name(name) {
            if wanted.contains(&(pv.name.clone(), pv.version)) {
                out.push((pv.name, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Keeps the default modules, the manifest's, and their dependencies;
/// regenerates the module index. Returns the kept module names.
fn keep_modules(root: &Path, kver: &str, extra: &[String]) -> anyhow::Result<Vec<String>> {
    kmods::depmod(root, kver)?;
    let dir = root.join("usr/lib/modules").join(kver);
    let index = kmods::ModuleIndex::load(&dir).context("reading modules.dep")?;
    let wanted = kmods::DEFAULT_MODULES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    let (keep, unknown) = index.closure(wanted);
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(kmods::module_name).collect();
    if let Some(missing) = unknown
        .iter()
        .find(|u| extra.contains(u) && !builtin.contains(*u))
    {
        anyhow::bail!(crate::error::InputError(format!(
            "kernel {kver} has no module \"{missing}\" (kernel.modules)"
        )));
    }
    kmods::prune(&dir, &index, &keep).context("removing unused kernel modules")?;
    fsutil::remove_empty_dirs(&dir.join("kernel"))?;
    kmods::depmod(root, kver)?;
    Ok(keep.into_iter().collect())
}

/// Links busybox applets when the image has busybox.
fn link_busybox(root: &Path) -> anyhow::Result<()> {
    let rel = "usr/bin/busybox";
    let bin = root.join(rel);
    if !bin.is_file() {
        return Ok(());
    }
    // Runs the image's own busybox on the build machine: both are x86_64
    // Linux, and busybox-static needs no libraries.
    let list = crate::command::run_stdout(
        "listing busybox applets",
        Command::new(&bin).arg("--list-full"),
    )?;
    layout::link_busybox_applets(root, rel, &list).context("linking busybox applets")?;
    Ok(())
}
