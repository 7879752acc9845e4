//! Containers: OCI images fetched at build time, unpacked into read-only
//! bundles inside the OS commit (`/usr/lib/berth/containers/<name>`), and
//! run by crun as supervised services. They are part of the versioned OS:
//! an upgrade brings new containers with the new OS, a rollback the old.

pub mod image;
pub mod inroot;
pub mod layers;
pub mod spec;
pub mod tarmeta;
pub mod unpack;
pub mod user;

use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_hostapi::config::{Service, ServiceKind};

use crate::manifest::{Container, ContainerNetwork, Manifest};
use crate::packages::Cache;

/// Where bundles live in the OS tree.
pub const BUNDLES_DIR: &str = "usr/lib/berth/containers";
/// The OCI runtime on the host.
pub const RUNTIME: &str = "crun";

/// A container ready to be committed: its unpacked root file system in the
/// cache and its runtime configuration.
#[derive(Debug, Clone)]
pub struct PreparedContainer {
    /// Container name.
    pub name: String,
    /// The unpacked image (cached by manifest digest; never modified).
    pub rootfs: PathBuf,
    /// The image's manifest digest.
    pub digest: String,
    /// `config.json` text.
    pub config_json: String,
    /// Mount points for volumes that the image lacks (relative paths in
    /// the rootfs), added by the overlay.
    pub mount_points: Vec<String>,
    /// The supervised service running it.
    pub service: Service,
}

/// Whether a `docker://` image lives on a loopback registry (a local test
/// registry speaks plain HTTP).
pub fn loopback_registry(image: &str) -> bool {
    let Some(rest) = image.strip_prefix("docker://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// The skopeo reference with relative paths of `oci:` and archive
/// transports made absolute against the manifest's directory.
pub fn absolute_ref(image: &str, base: &Path) -> String {
    for t in ["oci:", "oci-archive:", "docker-archive:"] {
        if let Some(rest) = image.strip_prefix(t) {
            if !rest.starts_with('/') {
                return format!("{t}{}", base.join(rest).display());
            }
        }
    }
    image.to_string()
}

/// Fetches, verifies and unpacks every container of the manifest; errors
/// name the container and its image. Nothing is committed when one fails.
pub fn prepare_all(m: &Manifest, cache: &Cache) -> anyhow::Result<Vec<PreparedContainer>> {
    let seccomp = load_seccomp()?;
    m.containers
        .iter()
        .map(|c| {
            prepare(m, c, cache, seccomp.clone()).map_err(|e| {
                let msg = format!(
                    "container \"{}\" (image {}): {}",
                    c.name,
                    c.image.value,
                    berth_hostapi::error_chain::one_line(e.as_ref())
                );
                anyhow::Error::new(m.error_at(&c.image.key, &c.image.span, msg))
            })
        })
        .collect()
}

fn load_seccomp() -> anyhow::Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    let text = std::fs::read_to_string(spec::SECCOMP_PROFILE).with_context(|| {
        format!(
            "reading the default seccomp profile {} (package golang-github-containers-common)",
            spec::SECCOMP_PROFILE
        )
    })?;
    let profile: serde_json::Value =
        serde_json::from_str(&text).context("parsing the seccomp profile")?;
    let names = spec::default_cap_names();
    let caps: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Some(
        spec::seccomp_from_profile(&profile, &caps).map_err(anyhow::Error::msg)?,
    ))
}

fn prepare(
    m: &Manifest,
    c: &Container,
    cache: &Cache,
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
) -> anyhow::Result<PreparedContainer> {
    let reference = absolute_ref(&c.image.value, &m.base_dir());
    let tls = c.tls_verify.unwrap_or(!loopback_registry(&reference));
    let layout = cache.root().join("oci");
    let tag = format!("{}-{}", m.name, c.name);
    let _lock = lock_cache(cache)?;
    let img = image::fetch(&reference, &layout, &tag, tls)?;
    let digest_hex = img
        .manifest_digest
        .trim_start_matches("sha256:")
        .to_string();
    let rootfs = unpacked_rootfs(cache, &img, &digest_hex)?;

    let cfg = img.config.config().clone().unwrap_or_default();
    let args = match &c.command {
        Some(cmd) => cmd.clone(),
        None => {
            let mut a = cfg.entrypoint().clone().unwrap_or_default();
            a.extend(cfg.cmd().clone().unwrap_or_default());
            a
        }
    };
    if args.is_empty() {
        anyhow::bail!("the image has no Entrypoint or Cmd: give the container a command");
    }
    let env = spec::merge_env(&cfg.env().clone().unwrap_or_default(), &c.env);
    let cwd = cfg
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let user = user::resolve_user(&rootfs, cfg.user().as_deref().unwrap_or(""))
        .map_err(anyhow::Error::msg)?;
    let network = match c.network {
        ContainerNetwork::Host => spec::NetworkMode::Host,
        ContainerNetwork::None => spec::NetworkMode::None,
    };
    let cs = spec::ContainerSpec {
        name: c.name.clone(),
        args,
        env,
        cwd,
        user,
        network,
        memory: c.memory.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        cpus: c.cpus,
        pids_limit: c.pids_limit,
        volumes: c.volumes.clone(),
        volume_dir: spec::volume_dir(&c.name),
    };
    let config = spec::build(&cs, seccomp).context("making the runtime configuration")?;
    let config_json = spec::to_json(&config).context("writing config.json")?;
    let mount_points = missing_mount_points(&rootfs, &c.volumes)?;
    Ok(PreparedContainer {
        name: c.name.clone(),
        rootfs,
        digest: img.manifest_digest.clone(),
        config_json,
        mount_points,
        service: service(c),
    })
}

/// The volume targets the image lacks, as paths relative to its root
/// after its own symlinks (resolved inside the root, as the runtime will):
/// the overlay adds them, since the root is read-only on the host.
/// Nothing outside the image is looked at.
fn missing_mount_points(rootfs: &Path, volumes: &[spec::Volume]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for v in volumes {
        let target = Path::new(v.target.trim_start_matches('/'));
        let resolved = unpack::resolve_in_root(rootfs, target, true)?;
        if std::fs::symlink_metadata(&resolved).is_err() {
            let rel = resolved.strip_prefix(rootfs).unwrap_or(target);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Mode of a bundle (`usr/lib/berth/containers/<name>`) and of the folder
/// holding them: only root may enter, so no user of the host reaches an
/// image's files (a set-user-ID program among them) through it.
pub const BUNDLE_MODE: u32 = 0o700;
/// Mode of `config.json`: it carries the manifest's environment, and the
/// OSTree repository on the host keeps every file's own mode.
pub const CONFIG_MODE: u32 = 0o600;

/// Writes the bundle of `c` into the OS tree overlay `overlay`: its
/// `config.json` and the mount points its image lacks, with the folders
/// at [`BUNDLE_MODE`] (the commit takes their modes from here).
pub fn write_bundle(overlay: &Path, c: &PreparedContainer) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let private = |dir: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(BUNDLE_MODE))
            .with_context(|| format!("setting the mode of {}", dir.display()))
    };
    let bundles = overlay.join(BUNDLES_DIR);
    private(&bundles)?;
    let bundle = bundles.join(&c.name);
    private(&bundle)?;
    let config = bundle.join("config.json");
    std::fs::write(&config, &c.config_json)
        .with_context(|| format!("writing {}", config.display()))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(CONFIG_MODE))
        .with_context(|| format!("setting the mode of {}", config.display()))?;
    for p in &c.mount_points {
        let dir = bundle.join("rootfs").join(p);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Builds running at the same time take turns to fetch and unpack: skopeo
/// rewrites the cache layout's `index.json` whole (two copies at once
/// could each drop the other's tag), and an unpacked root without its
/// `complete` mark would be another build's work in progress, not an
/// interrupted one to remove. Held until the returned file is dropped.
fn lock_cache(cache: &Cache) -> anyhow::Result<std::fs::File> {
    cache.lock("containers.lock")
}

/// The supervised service that runs container `c` with crun. Stale state
/// from a crash (a container id that already exists) is removed before
/// every start and after every stop.
pub fn service(c: &Container) -> Service {
    let bundle = format!("/{BUNDLES_DIR}/{}", c.name);
    let delete = vec![
        RUNTIME.to_string(),
        "delete".into(),
        "--force".into(),
        c.name.clone(),
    ];
    Service {
        name: c.name.clone(),
        kind: ServiceKind::Container,
        command: vec![
            RUNTIME.into(),
            "run".into(),
            "--bundle".into(),
            bundle,
            c.name.clone(),
        ],
        restart: c.restart,
        after: c.after.clone(),
        ready: c.ready.clone(),
        stop_signal: c.stop_signal.clone(),
        stop_timeout_ms: c.stop_timeout_ms,
        pre_start: vec![delete.clone()],
        post_stop: vec![delete],
        dirs: c
            .volumes
            .iter()
            .map(|v| format!("{}/{}", spec::volume_dir(&c.name), v.name))
            .collect(),
        required: c.required,
        announce: c.announce,
        ..Service::default()
    }
}

/// Which unpacker made a cached root: a root unpacked by an older one
/// (which kept set-id bits and did not check `diff_id`s) is unpacked
/// again, not reused.
const UNPACK_FORMAT: &str = "berth-unpack 2";

/// The image's layers unpacked in order, cached by manifest digest. The
/// mount points the runtime needs on a read-only root are created here.
/// The cache's `containers` folder is 0700: an image's files belong to
/// their owners in it, so only root may enter. A root that fails to
/// unpack is removed at once (a refused decompression bomb must not
/// stay on the disk).
fn unpacked_rootfs(
    cache: &Cache,
    img: &image::LocalImage,
    digest_hex: &str,
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let top = cache.root().join("containers");
    std::fs::create_dir_all(&top).with_context(|| format!("creating {}", top.display()))?;
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(BUNDLE_MODE))
        .with_context(|| format!("setting the mode of {}", top.display()))?;
    let dir = top.join(digest_hex);
    let rootfs = dir.join("rootfs");
    let done = dir.join("complete");
    let mark = format!("{UNPACK_FORMAT}\n{}\n", img.manifest_digest);
    if std::fs::read_to_string(&done).is_ok_and(|m| m == mark) {
        return Ok(rootfs);
    }
    // Also drops the tree checksums remembered for an older root.
    let _ = crate::rootfs::fsutil::remove_any(&dir);
    let made = unpack_into(img, &rootfs);
    if made.is_err() {
        let _ = crate::rootfs::fsutil::remove_any(&dir);
    }
    made?;
    std::fs::write(&done, mark).with_context(|| format!("writing {}", done.display()))?;
    Ok(rootfs)
}

fn unpack_into(img: &image::LocalImage, rootfs: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    layers::unpack_all(img, rootfs, layers::Limits::DEFAULT)?;
    for d in ["proc", "sys", "dev", "tmp", "run", "etc"] {
        let p = unpack::resolve_in_root(rootfs, Path::new(d), true)?;
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    for f in ["etc/resolv.conf", "etc/hosts"] {
        let p = unpack::resolve_in_root(rootfs, Path::new(f), true)?;
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::write(&p, b"").with_context(|| format!("creating {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(loopback_registry("docker://127.0.0.1:5000/demo/httpd:1"));
        assert!(loopback_registry("docker://localhost/x"));
        assert!(!loopback_registry("docker://registry.example.com/x"));
        assert!(!loopback_registry("oci:/x"));
    }

    #[test]
    fn relative_layouts_resolve_against_the_manifest() {
        assert_eq!(
            absolute_ref("oci:images/web:1", Path::new("/m")),
            "oci:/m/images/web:1"
        );
        assert_eq!(absolute_ref("oci:/abs:1", Path::new("/m")), "oci:/abs:1");
        assert_eq!(
            absolute_ref("docker://x/y", Path::new("/m")),
            "docker://x/y"
        );
    }

    fn prepared(name: &str, mount_points: &[&str]) -> PreparedContainer {
        PreparedContainer {
            name: name.into(),
            rootfs: PathBuf::from("/nonexistent"),
            digest: "sha256:00".into(),
            config_json: "{}\n".into(),
            mount_points: mount_points.iter().map(|m| m.to_string()).collect(),
            service: Service::default(),
        }
    }

    #[test]
    fn bundles_are_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        write_bundle(t.path(), &prepared("web", &["data"])).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(t.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(BUNDLES_DIR), 0o700);
        assert_eq!(mode(&format!("{BUNDLES_DIR}/web")), 0o700);
        assert_eq!(mode(&format!("{BUNDLES_DIR}/web/config.json")), 0o600);
        assert!(t.path().join(BUNDLES_DIR).join("web/rootfs/data").is_dir());
    }

    #[test]
    fn mount_points_follow_the_image_symlinks_inside_its_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("srv/www")).unwrap();
        std::os::unix::fs::symlink("/srv", r.join("data")).unwrap();
        // Points at a directory that exists on the build machine, not in
        // the image: the image lacks it.
        std::os::unix::fs::symlink(outside.path(), r.join("host")).unwrap();
        let vol = |target: &str| spec::Volume {
            name: "v".into(),
            target: target.into(),
        };
        let missing = missing_mount_points(
            r,
            &[
                vol("/data/www"),
                vol("/data/new"),
                vol("/host"),
                vol("/plain"),
            ],
        )
        .unwrap();
        let host_rel = outside
            .path()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        assert_eq!(missing, ["srv/new".to_string(), host_rel, "plain".into()]);
    }
}
