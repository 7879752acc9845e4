//! Kernel modules without modprobe: `modules.dep` and `modules.alias`
//! parsing, dependency order, alias globs, and loading with finit_module.
//!
//! It does not handle module options or blacklists; the image carries only
//! the modules it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::sys::Sys;

/// The module index of one kernel: `/lib/modules/<release>`.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name → (file relative to `dir`, names of its dependencies).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// Module names in modules.dep order.
    order: Vec<String>,
    /// (glob, module name) from modules.alias.
    aliases: Vec<(String, String)>,
}

/// Why the index could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}")]
pub struct IndexError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The module name of a file path: `kernel/fs/ext4/ext4.ko` → `ext4`,
/// with `-` folded to `_` as the kernel does.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    normalize(base)
}

/// Module names treat `-` and `_` alike.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// The directory of the running kernel's modules under `root`:
    /// `lib/modules/<release>`, or `usr/lib/modules/<release>` when there is
    /// no `/lib` link.
    pub fn dir_for_running_kernel(root: &Path) -> PathBuf {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy().into_owned();
        let lib = root.join("lib/modules").join(&release);
        let usr = root.join("usr/lib/modules").join(&release);
        if !lib.exists() && usr.exists() {
            usr
        } else {
            lib
        }
    }

    /// Reads `modules.dep` (required) and `modules.alias` (optional) in `dir`.
    pub fn load(dir: &Path) -> Result<ModuleIndex, IndexError> {
        let dep_path = dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| IndexError {
            path: dep_path,
            source,
        })?;
        let alias = std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
        Ok(ModuleIndex::parse(dir, &dep, &alias))
    }

    /// Builds an index from the texts of modules.dep and modules.alias.
    pub fn parse(dir: &Path, dep: &str, alias: &str) -> ModuleIndex {
        let mut index = ModuleIndex {
            dir: dir.to_path_buf(),
            ..ModuleIndex::default()
        };
        for line in dep.lines() {
            let Some((file, rest)) = line.split_once(':') else {
                continue;
            };
            let file = file.trim();
            if file.is_empty() {
                continue;
            }
            let name = module_name(file);
            let deps = rest.split_whitespace().map(module_name).collect();
            if index
                .deps
                .insert(name.clone(), (file.to_string(), deps))
                .is_none()
            {
                index.order.push(name);
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index.aliases.push((pattern.to_string(), normalize(module)));
            }
        }
        index
    }

    /// Whether the index knows module `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.deps.contains_key(&normalize(name))
    }

    /// Every module of modules.dep, each after its dependencies.
    pub fn all_in_load_order(&self) -> Vec<String> {
        self.load_order(&self.order)
    }

    /// `names` (known ones only) with their dependencies, dependencies first,
    /// each once.
    pub fn load_order(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(&normalize(name), &mut seen, &mut out);
        }
        out
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return; // done, or a dependency cycle: modules.dep never has one
        }
        let Some((_, deps)) = self.deps.get(name) else {
            return;
        };
        // modules.dep lists the deepest dependency last (modprobe loads the
        // list backwards); visiting each recursively gives the same order.
        for dep in deps.iter().rev() {
            self.visit(dep, seen, out);
        }
        out.push(name.to_string());
    }

    /// The file of module `name`.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        self.deps.get(name).map(|(file, _)| self.dir.join(file))
    }

    /// The modules whose alias glob matches a device's `modalias`.
    pub fn modules_for_alias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if !out.contains(module) && glob_match(pattern.as_bytes(), modalias.as_bytes()) {
                out.push(module.clone());
            }
        }
        out
    }
}

/// A module that did not load.
#[derive(Debug)]
pub struct LoadFailure {
    /// Module name.
    pub name: String,
    /// Why.
    pub error: std::io::Error,
}

/// Loads `names` (with their dependencies) in order, skipping those
/// `is_loaded` reports as present. A failure is recorded and the rest still
/// load. Returns the modules loaded and the failures.
pub fn load(
    sys: &dyn Sys,
    index: &ModuleIndex,
    names: &[String],
    is_loaded: &dyn Fn(&str) -> bool,
) -> (Vec<String>, Vec<LoadFailure>) {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for name in index.load_order(names) {
        if is_loaded(&name) {
            continue;
        }
        let Some(path) = index.path_of(&name) else {
            continue;
        };
        match sys.load_module(&path) {
            Ok(()) => loaded.push(name),
            Err(error) => failed.push(LoadFailure { name, error }),
        }
    }
    (loaded, failed)
}

/// Whether the running kernel has module `name` (loaded, or built in with
/// parameters).
pub fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// fnmatch(3) without flags, as modprobe matches modules.alias: `*`, `?`,
/// `[...]` (with ranges and `!`/`^` negation).
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let tc = text.get(t).copied().unwrap_or(0);
        match pattern.get(p).copied() {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some(b'[') => {
                if let Some((matched, next)) = class_match(pattern, p, tc) {
                    if matched {
                        p = next;
                        t += 1;
                        continue;
                    }
                } else if tc == b'[' {
                    p += 1;
                    t += 1;
                    continue;
                }
            }
            Some(c) if c == tc => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression starting at `pattern[start]`
/// (`[`). Returns (matched, index after `]`), or None if it is not closed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let pc = *pattern.get(i)?;
        if pc == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = *pattern.get(i + 2)?;
            if pc <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if pc == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/crypto/crc32c-generic.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias fs-ext4 ext4
alias crypto-crc32c crc32c_generic
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/lib/modules/6.1"), DEP, ALIAS)
    }

    #[test]
    fn every_module_comes_after_its_dependencies() {
        let order = index().all_in_load_order();
        assert_eq!(order.len(), 11);
        let pos = |n: &str| order.iter().position(|m| m == n);
        for (module, dep) in [
            ("ext4", "jbd2"),
            ("ext4", "crc16"),
            ("ext4", "mbcache"),
            ("virtio_blk", "virtio_ring"),
            ("virtio_ring", "virtio"),
            ("virtio_pci", "virtio_pci_modern_dev"),
        ] {
            assert!(pos(dep) < pos(module), "{dep} before {module}: {order:?}");
        }
        assert!(order.contains(&"crc32c_generic".to_string()));
    }

    #[test]
    fn load_skips_loaded_and_reports_failures() {
        let sys = FakeSys::new().fail_on("insmod /lib/modules/6.1/kernel/fs/mbcache.ko");
        let (loaded, failed) = load(&sys, &index(), &["ext4".into()], &|n| n == "crc16");
        assert_eq!(
            sys.calls(),
            [
                "insmod /lib/modules/6.1/kernel/fs/jbd2/jbd2.ko",
                "insmod /lib/modules/6.1/kernel/fs/mbcache.ko",
                "insmod /lib/modules/6.1/kernel/fs/ext4/ext4.ko",
            ]
        );
        assert_eq!(loaded, ["jbd2", "ext4"]);
        assert_eq!(failed.len(), 1);
        assert!(failed.iter().all(|f| f.name == "mbcache"));
    }

    #[test]
    fn aliases_match_modalias_globs() {
        let idx = index();
        assert_eq!(
            idx.modules_for_alias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(
            idx.modules_for_alias("virtio:d00000002v00001AF4"),
            ["virtio_blk"]
        );
        assert!(idx.modules_for_alias("pci:v00008086d00001237").is_empty());
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko.xz"),
            "crc32c_generic"
        );
    }

    #[test]
    fn glob_features() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("dmi*:rvn[Ll][Ee]*", "dmi:bvn:rvnLEnovo"));
        assert!(m("x[!0-9]", "xa"));
        assert!(!m("x[!0-9]", "x5"));
        assert!(m("*", ""));
        assert!(!m("abc", "abcd"));
        assert!(m("[]x]", "]"));
    }
}
