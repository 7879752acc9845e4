//! Deployments as Berth sees them: libostree's list, each with the facts the
//! ESP and `berthctl status` need (stable path, version, kernel files,
//! kernel arguments without libostree's `ostree=` link).

use std::path::{Path, PathBuf};

use ostree::gio;

use crate::SysrootError;

/// The one stateroot (osname) of a Berth host.
pub const STATEROOT: &str = "berth";

/// One deployment of the sysroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentInfo {
    /// Position in libostree's order (0 = default at next boot).
    pub index: usize,
    /// Stateroot (osname).
    pub stateroot: String,
    /// Commit checksum.
    pub checksum: String,
    /// Deploy serial (distinguishes two deployments of one commit).
    pub serial: i32,
    /// VERSION_ID from the deployment's os-release.
    pub version: String,
    /// PRETTY_NAME from the deployment's os-release.
    pub pretty_name: String,
    /// Kernel arguments, without any `ostree=`.
    pub kargs: Vec<String>,
    /// Kernel, relative to the sysroot.
    pub kernel: PathBuf,
    /// Initramfs, relative to the sysroot.
    pub initramfs: PathBuf,
    /// Whether this is the running deployment.
    pub booted: bool,
    /// The origin's refspec, e.g. `berth:berth/minimal/x86_64`.
    pub refspec: Option<String>,
    /// The tree's id ([`crate::contract::TREE_ID_PATH`]), which its boot
    /// entry names; `None` for a tree built before every image had one.
    pub tree_id: Option<String>,
}

impl DeploymentInfo {
    /// `<checksum>.<serial>`: names the deployment's directory, its ESP
    /// folder and its boot entry.
    pub fn id(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    /// The stable path the kernel command line names:
    /// `/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>`.
    pub fn stable_path(&self) -> String {
        format!("/ostree/deploy/{}/deploy/{}", self.stateroot, self.id())
    }

    /// Directory of the deployment, relative to the sysroot.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.stable_path().trim_start_matches('/'))
    }
}

/// Opens the sysroot at `path` (`/` on a host) and loads it.
pub fn open(path: &Path) -> Result<ostree::Sysroot, SysrootError> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot.load(gio::Cancellable::NONE).map_err(|e| {
        SysrootError::ostree(format!("loading the sysroot at {}", path.display()), e)
    })?;
    Ok(sysroot)
}

/// The deployments of a loaded sysroot, in libostree's order.
pub fn list(sysroot: &ostree::Sysroot, root: &Path) -> Result<Vec<DeploymentInfo>, SysrootError> {
    let booted = sysroot.booted_deployment();
    sysroot
        .deployments()
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let is_booted = booted.as_ref().is_some_and(|b| b.equal(d));
            describe(root, index, d, is_booted)
        })
        .collect()
}

/// Facts about one libostree deployment under sysroot `root`.
pub fn describe(
    root: &Path,
    index: usize,
    d: &ostree::Deployment,
    booted: bool,
) -> Result<DeploymentInfo, SysrootError> {
    let mut info = DeploymentInfo {
        index,
        stateroot: d.osname().to_string(),
        checksum: d.csum().to_string(),
        serial: d.deployserial(),
        version: String::new(),
        pretty_name: String::new(),
        kargs: Vec::new(),
        kernel: PathBuf::new(),
        initramfs: PathBuf::new(),
        booted,
        refspec: d
            .origin()
            .and_then(|o| o.string("origin", "refspec").ok())
            .map(|s| s.to_string()),
        tree_id: None,
    };
    if let Some(options) = d.bootconfig().and_then(|b| b.get("options")) {
        info.kargs = crate::contract::without_ostree(&options);
    }
    let dir = root.join(info.dir());
    let os_release = std::fs::read_to_string(dir.join("usr/lib/os-release")).unwrap_or_default();
    info.version = os_release_value(&os_release, "VERSION_ID").unwrap_or_default();
    info.pretty_name =
        os_release_value(&os_release, "PRETTY_NAME").unwrap_or_else(|| "Berth".into());
    info.tree_id = crate::contract::read_tree_id(&dir);
    let (kernel, initramfs) = kernel_files(&dir)?;
    info.kernel = info.dir().join(kernel);
    info.initramfs = info.dir().join(initramfs);
    Ok(info)
}

/// Finds `usr/lib/modules/<kver>/{vmlinuz,initramfs.img}` in a deployment
/// (where libostree looks for them too); paths relative to `deploy_dir`.
pub fn kernel_files(deploy_dir: &Path) -> Result<(PathBuf, PathBuf), SysrootError> {
    let modules = deploy_dir.join("usr/lib/modules");
    let entries = std::fs::read_dir(&modules)
        .map_err(|e| SysrootError::io(format!("reading {}", modules.display()), e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("vmlinuz").is_file())
        .collect();
    found.sort();
    let Some(kdir) = found.pop() else {
        return Err(SysrootError::Layout(format!(
            "no usr/lib/modules/<version>/vmlinuz in {}",
            deploy_dir.display()
        )));
    };
    let rel = kdir.strip_prefix(deploy_dir).unwrap_or(&kdir).to_path_buf();
    Ok((rel.join("vmlinuz"), rel.join("initramfs.img")))
}

/// The unquoted value of `key` in os-release text.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeploymentInfo {
        DeploymentInfo {
            index: 0,
            stateroot: STATEROOT.into(),
            checksum: "abc".into(),
            serial: 1,
            version: "1.0.0".into(),
            pretty_name: "Berth".into(),
            kargs: vec!["root=PARTUUID=x".into(), "console=ttyS0".into()],
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            booted: false,
            refspec: None,
            tree_id: None,
        }
    }

    #[test]
    fn stable_path_and_cmdline() {
        let d = info();
        assert_eq!(d.id(), "abc.1");
        assert_eq!(d.stable_path(), "/ostree/deploy/berth/deploy/abc.1");
        assert_eq!(d.dir(), PathBuf::from("ostree/deploy/berth/deploy/abc.1"));
        assert_eq!(
            crate::contract::entry_options(&d),
            "root=PARTUUID=x console=ttyS0 ostree=/ostree/deploy/berth/deploy/abc.1"
        );
    }

    #[test]
    fn os_release_values() {
        let text = "NAME=Berth\nVERSION_ID=\"1.2\"\nPRETTY_NAME=\"Berth minimal 1.2\"\n";
        assert_eq!(os_release_value(text, "VERSION_ID").as_deref(), Some("1.2"));
        assert_eq!(
            os_release_value(text, "PRETTY_NAME").as_deref(),
            Some("Berth minimal 1.2")
        );
        assert_eq!(os_release_value(text, "ID"), None);
    }

    #[test]
    fn kernel_files_are_found_under_usr_lib_modules() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path().join("usr/lib/modules/6.1.0-9-amd64");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("vmlinuz"), b"k").unwrap();
        let (kernel, initrd) = kernel_files(tmp.path()).unwrap();
        assert_eq!(
            kernel,
            PathBuf::from("usr/lib/modules/6.1.0-9-amd64/vmlinuz")
        );
        assert_eq!(
            initrd,
            PathBuf::from("usr/lib/modules/6.1.0-9-amd64/initramfs.img")
        );
        assert!(kernel_files(&tmp.path().join("usr")).is_err());
    }
}
