//! What `ostree-prepare-root` (libostree 2022.7,
//! src/switchroot/ostree-prepare-root.c, the initramfs case, built without
//! systemd) does, step for step: turn the physical root mounted at /sysroot
//! into the deployment named by `ostree=`, with the physical root at
//! /sysroot inside it.
//!
//! Differences, on purpose: `ostree=` may name the deployment directory
//! itself (`/ostree/deploy/<os>/deploy/<csum>.<serial>`, stable across
//! libostree's bootversion swaps) as well as a `boot.N` symlink; and /var is
//! always bound here, since there is no systemd generator to do it later.

use std::path::{Path, PathBuf};

use crate::sys::{MountFlags, Sys};

/// Why the deployment could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No `ostree=` (nor `berth.tree=`) on the command line.
    #[error(
        "no ostree= on the kernel command line (expected ostree=/ostree/deploy/<os>/deploy/<checksum>.<serial>, or berth.tree=<tree id>)"
    )]
    NoTarget,
    /// The deployment named by `ostree=` is not there.
    #[error("resolving deployment {path}")]
    Resolve {
        /// The path looked at.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ostree=` resolves outside the physical root or not to a directory.
    #[error("deployment {0} is not a directory inside the physical root")]
    NotADeployment(PathBuf),
    /// A mount step failed.
    #[error("{what}")]
    Step {
        /// What was being done, e.g. "bind-mounting /usr read-only".
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `ostree=` under the physical root `sysroot`: a deployment
/// directory, or a symlink to one (followed as realpath() does).
pub fn resolve_deployment(sysroot: &Path, target: &str) -> Result<PathBuf, PrepareError> {
    let path = sysroot.join(target.trim_start_matches('/'));
    let resolve_err = |source| PrepareError::Resolve {
        path: path.clone(),
        source,
    };
    let real = std::fs::canonicalize(&path).map_err(resolve_err)?;
    let root = std::fs::canonicalize(sysroot).map_err(resolve_err)?;
    if !real.starts_with(&root) || real == root || !real.is_dir() {
        return Err(PrepareError::NotADeployment(real));
    }
    Ok(real)
}

/// `[sysroot] readonly=true` in `<sysroot>/ostree/repo/config`, read the way
/// ostree-prepare-root does (line prefixes, no key-file parser).
pub fn sysroot_is_configured_ro(sysroot: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(sysroot.join("ostree/repo/config")) else {
        return false;
    };
    let mut in_sysroot = false;
    for line in text.lines() {
        if line.starts_with("[sysroot]") {
            in_sysroot = true;
        } else if line.starts_with('[') {
            in_sysroot = false;
        } else if in_sysroot && line.starts_with("readonly=true") {
            return true;
        }
    }
    false
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn step(what: impl Into<String>, result: std::io::Result<()>) -> Result<(), PrepareError> {
    result.map_err(|source| PrepareError::Step {
        what: what.into(),
        source,
    })
}

/// Sets up the deployment. `sysroot` is where the physical root is mounted
/// (/sysroot), `run` the tmpfs that carries /run into the new root.
/// Afterwards the deployment is mounted at `sysroot`, the physical root at
/// `sysroot`/sysroot, and the caller switches root to `sysroot`. Returns the
/// deployment's path as it was under the physical root.
pub fn prepare_root(
    sys: &dyn Sys,
    sysroot: &Path,
    run: &Path,
    target: Option<&str>,
) -> Result<PathBuf, PrepareError> {
    let target = target.ok_or(PrepareError::NoTarget)?;
    let deploy = resolve_deployment(sysroot, target)?;
    let readonly = sysroot_is_configured_ro(sysroot);
    // deploy/<os>/deploy/<csum>.<serial> → deploy/<os>/var
    let stateroot_var = deploy
        .parent()
        .and_then(Path::parent)
        .map(|os| os.join("var"))
        .ok_or_else(|| PrepareError::NotADeployment(deploy.clone()))?;
    let d = |sub: &str| deploy.join(sub);

    // The kernel refuses to move mounts out of a shared parent.
    step("making / private", sys.make_private(Path::new("/"), true))?;
    // A bind mount of the deployment on itself, so it can be moved later.
    step(
        format!("bind-mounting deployment {}", deploy.display()),
        sys.bind(&deploy, &deploy),
    )?;
    step("entering the deployment", sys.chdir(&deploy))?;
    if readonly {
        // Tells a later remount step that the sysroot was found read-only.
        step(
            "creating /run/ostree-sysroot-ro.stamp",
            sys.touch(&run.join("ostree-sysroot-ro.stamp")),
        )?;
    }
    // /boot on the same partition: visible at /boot in the deployment.
    if is_symlink(&sysroot.join("boot/loader")) && is_dir(&d("boot")) {
        step(
            "bind-mounting /boot",
            sys.bind(&sysroot.join("boot"), &d("boot")),
        )?;
    }
    if readonly {
        step("bind-mounting /etc", sys.bind(&d("etc"), &d("etc")))?;
        step("making /etc writable", sys.remount_bind(&d("etc"), false))?;
    }
    if std::fs::symlink_metadata(d(".usr-ovl-work")).is_ok() {
        // `ostree admin unlock --hotfix`: a persistent overlay on /usr.
        step(
            "mounting the /usr overlay",
            sys.mount(
                "overlay",
                &d("usr"),
                "overlay",
                MountFlags::NONE,
                "lowerdir=usr,upperdir=.usr-ovl-upper,workdir=.usr-ovl-work",
            ),
        )?;
    } else {
        step("bind-mounting /usr", sys.bind(&d("usr"), &d("usr")))?;
        step("making /usr read-only", sys.remount_bind(&d("usr"), true))?;
    }
    if readonly {
        step(
            "bind-mounting the stateroot /var",
            sys.bind(&stateroot_var, &stateroot_var),
        )?;
        step(
            "making the stateroot /var writable",
            sys.remount_bind(&stateroot_var, false),
        )?;
    }
    step(
        format!("bind-mounting {} on /var", stateroot_var.display()),
        sys.bind(&stateroot_var, &d("var")),
    )?;
    // libostree only believes it is booted when this exists.
    step(
        "creating /run/ostree-booted",
        sys.touch(&run.join("ostree-booted")),
    )?;

    // Three moves, so /sysroot is never moved under itself:
    // deployment → /sysroot.tmp, /sysroot → /sysroot.tmp/sysroot,
    // /sysroot.tmp → /sysroot.
    let tmp = PathBuf::from(format!("{}.tmp", sysroot.display()));
    step(
        format!("creating {}", tmp.display()),
        sys.mkdir(&tmp, 0o755),
    )?;
    step(
        format!("moving the deployment to {}", tmp.display()),
        sys.move_mount(&deploy, &tmp),
    )?;
    step(
        "moving the physical root into the deployment",
        sys.move_mount(sysroot, &tmp.join("sysroot")),
    )?;
    step(
        format!("moving the deployment to {}", sysroot.display()),
        sys.move_mount(&tmp, sysroot),
    )?;
    step(format!("removing {}", tmp.display()), sys.rmdir(&tmp))?;
    let physical = sysroot.join("sysroot");
    if readonly {
        step(
            "making /sysroot read-only",
            sys.remount_bind(&physical, true),
        )?;
    }
    // Keeps mounts under /var from propagating into /sysroot/ostree/.../var.
    step(
        "making /sysroot private",
        sys.make_private(&physical, false),
    )?;
    Ok(deploy)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use std::fs;

    pub(crate) const DEPLOY: &str = "ostree/deploy/berth/deploy/abc.0";

    /// A physical root with one deployment, as libostree lays it out.
    pub(crate) fn physical_root(readonly: bool) -> std::io::Result<tempfile::TempDir> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("sysroot");
        for dir in ["usr", "etc", "var", "sysroot", "boot", "proc"] {
            fs::create_dir_all(root.join(DEPLOY).join(dir))?;
        }
        fs::create_dir_all(root.join("ostree/deploy/berth/var"))?;
        fs::create_dir_all(root.join("ostree/repo"))?;
        fs::create_dir_all(root.join("ostree/boot.1.1/berth/xyz"))?;
        std::os::unix::fs::symlink(
            "../../../deploy/berth/deploy/abc.0",
            root.join("ostree/boot.1.1/berth/xyz/0"),
        )?;
        fs::create_dir_all(root.join("boot/loader.1"))?;
        std::os::unix::fs::symlink("loader.1", root.join("boot/loader"))?;
        let config = if readonly {
            "[core]\nrepo_version=1\nmode=bare\n\n[sysroot]\nbootloader=none\nreadonly=true\n"
        } else {
            "[core]\nmode=bare\nreadonly=true\n[sysroot]\nbootloader=none\n"
        };
        fs::write(root.join("ostree/repo/config"), config)?;
        Ok(tmp)
    }

    #[test]
    fn writable_sysroot_follows_ostree_prepare_root_order() -> Result<(), Box<dyn std::error::Error>>
    {
        let tmp = physical_root(false)?;
        let sys = FakeSys::with_root(tmp.path());
        let sysroot = tmp.path().join("sysroot");
        let target = format!("/{DEPLOY}");
        prepare_root(&sys, &sysroot, Path::new("/run"), Some(target.as_str()))?;
        let d = format!("/sysroot/{DEPLOY}");
        assert_eq!(
            sys.calls(),
            [
                "rprivate /".to_string(),
                format!("bind {d} {d}"),
                format!("chdir {d}"),
                format!("bind /sysroot/boot {d}/boot"),
                format!("bind {d}/usr {d}/usr"),
                format!("remount-bind {d}/usr ro"),
                format!("bind /sysroot/ostree/deploy/berth/var {d}/var"),
                "touch /run/ostree-booted".to_string(),
                "mkdir /sysroot.tmp 755".to_string(),
                format!("move {d} /sysroot.tmp"),
                "move /sysroot /sysroot.tmp/sysroot".to_string(),
                "move /sysroot.tmp /sysroot".to_string(),
                "rmdir /sysroot.tmp".to_string(),
                "private /sysroot/sysroot".to_string(),
            ]
        );
        Ok(())
    }

    #[test]
    fn readonly_sysroot_adds_writable_etc_and_var() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = physical_root(true)?;
        let sys = FakeSys::with_root(tmp.path());
        let sysroot = tmp.path().join("sysroot");
        // Through libostree's bootlink symlink this time.
        prepare_root(
            &sys,
            &sysroot,
            Path::new("/run"),
            Some("/ostree/boot.1.1/berth/xyz/0"),
        )?;
        let d = format!("/sysroot/{DEPLOY}");
        let v = "/sysroot/ostree/deploy/berth/var";
        assert_eq!(
            sys.calls(),
            [
                "rprivate /".to_string(),
                format!("bind {d} {d}"),
                format!("chdir {d}"),
                "touch /run/ostree-sysroot-ro.stamp".to_string(),
                format!("bind /sysroot/boot {d}/boot"),
                format!("bind {d}/etc {d}/etc"),
                format!("remount-bind {d}/etc rw"),
                format!("bind {d}/usr {d}/usr"),
                format!("remount-bind {d}/usr ro"),
                format!("bind {v} {v}"),
                format!("remount-bind {v} rw"),
                format!("bind {v} {d}/var"),
                "touch /run/ostree-booted".to_string(),
                "mkdir /sysroot.tmp 755".to_string(),
                format!("move {d} /sysroot.tmp"),
                "move /sysroot /sysroot.tmp/sysroot".to_string(),
                "move /sysroot.tmp /sysroot".to_string(),
                "rmdir /sysroot.tmp".to_string(),
                "remount-bind /sysroot/sysroot ro".to_string(),
                "private /sysroot/sysroot".to_string(),
            ]
        );
        Ok(())
    }

    #[test]
    fn missing_or_escaping_targets_are_errors() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = physical_root(false)?;
        let sysroot = tmp.path().join("sysroot");
        let sys = FakeSys::new();
        assert!(matches!(
            prepare_root(&sys, &sysroot, Path::new("/run"), None),
            Err(PrepareError::NoTarget)
        ));
        assert!(matches!(
            prepare_root(
                &sys,
                &sysroot,
                Path::new("/run"),
                Some("/ostree/deploy/berth/deploy/nope.0")
            ),
            Err(PrepareError::Resolve { .. })
        ));
        assert!(matches!(
            prepare_root(&sys, &sysroot, Path::new("/run"), Some("/../..")),
            Err(PrepareError::NotADeployment(_))
        ));
        assert!(sys.calls().is_empty(), "nothing mounted on a bad target");
        Ok(())
    }
}
