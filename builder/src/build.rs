//! `berth build`: manifest → packages → OS tree → OSTree commit → first
//! deployment in a fresh sysroot → GPT disk image, with a progress line per
//! stage and a summary at the end.
//!
//! The image is written under a temporary name in the output directory and
//! renamed into place only when complete, so a failed or interrupted build
//! never leaves a broken image where a good one was. Likewise the new
//! commit is published (static delta, ref moved, summary written and
//! signed) only once the image is complete: a build that fails offers
//! hosts nothing.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use berth_sysroot::contract::{self, Kargs};

use crate::disk;
use crate::error::InputError;
use crate::manifest::Manifest;
use crate::manifest::units::human_bytes;
use crate::packages::{Cache, PackageRequest, PackagesError};
use crate::progress::Progress;
use crate::rootfs::{self, fsutil, overlay};
use crate::signing::{KeyOrigin, Signer};
use crate::{
    binaries, commit, container, fleet_lock_server, host_config, ids, initramfs, signing, uki,
};

/// What `berth build` is asked to do (the command line maps its flags
/// onto this; `crate::cli` documents each one).
#[derive(Debug, Clone)]
pub struct BuildOpts {
    /// The manifest (TOML) describing the image.
    pub manifest: PathBuf,
    /// Directory for the image and the OSTree repository.
    pub output: PathBuf,
    /// Disk image format.
    pub format: ImageFormat,
    /// The OSTree archive repository to commit to (`None`: `OUTPUT/repo`).
    pub repo: Option<PathBuf>,
    /// Where packages are cached between builds (`None`: the default
    /// cache directory).
    pub cache_dir: Option<PathBuf>,
    /// Resolve the packages again even if a tree for the same package
    /// list is cached.
    pub refresh: bool,
}

/// Disk image formats `berth build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw (sparse) GPT disk image: `NAME.raw`.
    Raw,
    /// A QEMU copy-on-write image: `NAME.qcow2`.
    Qcow2,
}

/// What a finished build produced, for the summary and for callers.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The disk image.
    pub image: PathBuf,
    /// The archive repository.
    pub repo: PathBuf,
    /// The OSTree ref.
    pub ostree_ref: String,
    /// The commit.
    pub commit: commit::CommitResult,
    /// What publishing it did.
    pub published: commit::Published,
    /// Where the signing key came from (`None`: `[update] verify = false`).
    pub signing: Option<(KeyOrigin, Vec<String>)>,
    /// Whether the image has an update remote (`[update]`).
    pub has_remote: bool,
    /// Image name and version.
    pub name: String,
    /// OS version.
    pub version: String,
    /// Disk facts.
    pub disk: disk::DiskReport,
    /// The prepared package tree.
    pub base: rootfs::BaseInfo,
    /// Whether packages were extracted (false: from the cache).
    pub fetched: bool,
    /// Initramfs size in bytes and its modules.
    pub initramfs: (u64, Vec<String>),
    /// The signed UKI and the rest of `[secure-boot]`, if asked for.
    pub uki: Option<uki::UkiReport>,
}

/// Runs `berth build` and prints the summary.
pub fn run(opts: &BuildOpts) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let out = match build(opts, &mut progress) {
        Ok(out) => out,
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };
    progress.finish();
    print_summary(&out, &progress, started.elapsed().as_secs_f64());
    Ok(())
}

/// The unix time builds stamp: `$SOURCE_DATE_EPOCH` when set (for
/// reproducible builds), else now.
pub fn build_timestamp() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| {
            InputError(format!(
                "SOURCE_DATE_EPOCH=\"{v}\" is not a number of seconds"
            ))
            .into()
        }),
        Err(_) => Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()),
    }
}

/// Runs every stage; the caller prints.
pub fn build(opts: &BuildOpts, progress: &mut Progress) -> anyhow::Result<BuildOutput> {
    // The manifest is read before the first stage line, so that a Secure
    // Boot build counts its extra stage from the start ("[1/9]").
    let m = Manifest::load(&opts.manifest)?;
    if m.secure_boot.is_some() {
        progress.add_uki_stage();
    }
    progress.stage("resolve", "reading the manifest");
    let timestamp = build_timestamp()?;
    // [secure-boot]'s key files are inputs: checked before any work.
    let secure_boot = uki::prepare(&m)?;
    // So is [fleet-lock-server]'s configuration file.
    let lock_server = fleet_lock_server::prepare(&m)?;
    let bins = binaries::find()?;
    let req = PackageRequest::from_manifest(&m);
    let cache = Cache::new(opts.cache_dir.clone().unwrap_or_else(Cache::default_root));
    let repo_path = opts
        .repo
        .clone()
        .unwrap_or_else(|| opts.output.join("repo"));

    progress.stage("fetch", "extracting packages with mmdebstrap");
    let base =
        rootfs::base_tree(&req, &cache, opts.refresh).map_err(|e| locate_package_error(&m, e))?;
    if !base.fresh {
        progress.note("package tree taken from the cache");
    }
    if !m.containers.is_empty() {
        progress.note(&format!(
            "fetching {} container image(s) with skopeo",
            m.containers.len()
        ));
    }
    let containers = container::prepare_all(&m, &cache)?;
    let mut built_services: Vec<_> = containers.iter().map(|c| c.service.clone()).collect();
    if let Some(l) = &lock_server {
        built_services.push(l.service(m.fleet.is_some()));
    }
    let host = host_config::from_manifest(&m, &built_services);
    let kver = base.info.kernel_version.clone();

    progress.stage("assemble", "writing Berth's files");
    // Only now: a build that fails on its inputs (a package, an image)
    // leaves no trace, not even an empty output directory. The signer
    // first: a manifest's key is an input too, and the repository's own
    // key is made beside the repository by its first build.
    let signer = signing::prepare(&m, &repo_path)?;
    if let Some(KeyOrigin::Created(dir)) = signer.as_ref().map(|s| &s.origin) {
        progress.note(&format!(
            "made the repository's signing key in {}: back it up (docs/upgrades.md)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&opts.output)
        .with_context(|| format!("creating {}", opts.output.display()))?;
    let work = WorkDir::create(&opts.output, &m.name)?;
    let overlay_dir = work.path.join("overlay");
    std::fs::create_dir_all(&overlay_dir)?;
    overlay::write(&overlay_dir, &m, &host, &bins, &base.info.packages)?;
    if let Some(s) = &signer {
        s.install_public_key(&overlay_dir)?;
    }
    for c in &containers {
        container::write_bundle(&overlay_dir, c)?;
    }
    if let Some(l) = &lock_server {
        fleet_lock_server::write(&overlay_dir, l)?;
    }

    progress.stage("initramfs", "packing berth-init and the root's modules");
    let init =
        std::fs::read(&bins.init).with_context(|| format!("reading {}", bins.init.display()))?;
    let (archive, modules) =
        initramfs::contents(&base.dir, &kver, &init, initramfs::INITRD_RELEASE)
            .context("collecting the initramfs contents")?;
    // The archive's file times come from its inputs, not from the build:
    // the kernel's own time (its package's), clamped to the build time. A
    // rebuild with the same kernel and berth-init then gives the same
    // initramfs, which an upgrade does not download again.
    let kernel_time = std::fs::metadata(base.dir.join(format!("usr/lib/modules/{kver}/vmlinuz")))
        .ok()
        .and_then(|md| md.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(timestamp, |d| d.as_secs().min(timestamp));
    let mtime = u32::try_from(kernel_time).unwrap_or(u32::MAX);
    let image = initramfs::compress(&archive.encode(mtime)?)?;
    let initramfs_path = overlay_dir.join(format!("usr/lib/modules/{kver}/initramfs.img"));
    std::fs::create_dir_all(initramfs_path.parent().unwrap_or(&overlay_dir))?;
    std::fs::write(&initramfs_path, &image)
        .with_context(|| format!("writing {}", initramfs_path.display()))?;

    let kargs_line = image_kargs(&m).render_image_file();
    let uki_image = uki::Image {
        name: &m.name,
        version: &m.version,
        timestamp,
        kver: &kver,
        kargs: &kargs_line,
    };
    let tree = uki::Tree {
        base: &base.dir,
        overlay: &overlay_dir,
    };
    let tree_id = uki::write_tree_id(tree, &uki_image)?;
    let mut uki = match &secure_boot {
        Some(inputs) => {
            progress.stage("uki", "signing the unified kernel image");
            Some(uki::write(
                inputs,
                tree,
                &uki_image,
                &tree_id,
                &work.path.join("uki"),
            )?)
        }
        None => None,
    };

    progress.stage("commit", &format!("committing to {}", repo_path.display()));
    let ostree_ref = commit::ostree_ref(&m.name);
    let base_roots = cache.trees().join(format!("{}.roots.json", base.info.key));
    let container_roots: Vec<PathBuf> = containers
        .iter()
        .map(|c| c.rootfs.with_file_name("roots.json"))
        .collect();
    let container_trees: Vec<(String, commit::CachedTree)> = containers
        .iter()
        .zip(&container_roots)
        .map(|(c, roots)| {
            (
                c.name.clone(),
                commit::CachedTree {
                    dir: &c.rootfs,
                    roots,
                },
            )
        })
        .collect();
    let subject = format!("{} {}", m.name, m.version);
    // A rebuild whose only news is the tree id keeps the parent. A signed
    // build always differs (sbsign's signatures do), so it makes a commit.
    let id_files = [berth_sysroot::contract::TREE_ID_PATH.to_string()];
    let committed = commit::commit(&commit::CommitSpec {
        repo: &repo_path,
        ostree_ref: &ostree_ref,
        base: commit::CachedTree {
            dir: &base.dir,
            roots: &base_roots,
        },
        containers: &container_trees,
        overlay: &overlay_dir,
        version: &m.version,
        subject: &subject,
        timestamp,
        id_files: &id_files,
    })?;
    if let Some(s) = &signer {
        commit::sign(&repo_path, &committed, s)?;
    }

    progress.stage("deploy", "deploying into a fresh sysroot");
    let layout = disk_layout(&m, &committed.checksum, timestamp);
    let sysroot_dir = work.path.join("sysroot");
    std::fs::create_dir_all(&sysroot_dir)?;
    // No root=: stage 1 finds the root partition as the Discoverable
    // Partitions Specification says, signed image or not.
    let kargs = image_kargs(&m);
    let gpg_key = signer.as_ref().map(|_| berth_hostapi::UPDATE_KEY_PATH);
    let deployment = berth_sysroot::install::install(
        &sysroot_dir,
        &berth_sysroot::install::InstallSpec {
            source_repo: &repo_path,
            commit: &committed.checksum,
            ostree_ref: &ostree_ref,
            remote: m.update.as_ref().map(|u| ("berth", u.url.as_str())),
            remote_gpg_key: gpg_key,
            kargs: &kargs,
        },
    )?;
    normalize_times(&sysroot_dir, timestamp).context("stamping the sysroot's times")?;
    // An unchanged build deployed its parent, whose image names the
    // parent's tree id: the summary says that one.
    if let (Some(u), Some(id)) = (uki.as_mut(), &deployment.tree_id) {
        u.tree_id.clone_from(id);
    }
    let plan = contract::plan(&sysroot_dir, std::slice::from_ref(&deployment));
    // The first install is known good: no entry on trial.
    let esp_files = contract::esp_files(&plan, None, &Default::default()).in_write_order();

    progress.stage("disk", "writing the disk image");
    let needed = disk::root_bytes_needed(&sysroot_dir)?;
    let available = disk::root_partition_size(&layout);
    if needed > available {
        return Err(too_small(&m, needed, available).into());
    }
    let ext = match opts.format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    };
    let final_path = opts.output.join(format!("{}.{ext}", m.name));
    let raw_tmp = Partial::new(opts.output.join(format!(".{}.raw.partial", m.name)));
    let report = match disk::write_image(&raw_tmp.path, &layout, &esp_files, &sysroot_dir) {
        Ok(r) => r,
        Err(disk::DiskError::RootTooSmall { needed, available }) => {
            return Err(too_small(&m, needed, available).into());
        }
        Err(e) => return Err(e).context("writing the disk image"),
    };
    let (image_file, report) = match opts.format {
        ImageFormat::Raw => (raw_tmp, report),
        ImageFormat::Qcow2 => {
            let q = Partial::new(opts.output.join(format!(".{}.qcow2.partial", m.name)));
            disk::convert(&raw_tmp.path, &q.path, "qcow2").context("converting to qcow2")?;
            let meta = std::fs::metadata(&q.path)?;
            let report = disk::DiskReport {
                apparent_size: meta.len(),
                allocated_size: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
                ..report
            };
            (q, report)
        }
    };

    progress.stage("publish", &publish_what(&ostree_ref, signer.as_ref()));
    let published = commit::publish(&repo_path, &ostree_ref, &committed, signer.as_ref())?;
    image_file.persist(&final_path)?;
    drop(work);
    Ok(BuildOutput {
        image: final_path,
        repo: repo_path,
        ostree_ref,
        commit: committed,
        published,
        signing: signer.map(|s| (s.origin.clone(), s.key_ids().to_vec())),
        has_remote: m.update.is_some(),
        name: m.name.clone(),
        version: m.version.clone(),
        disk: report,
        fetched: base.fresh,
        base: base.info,
        initramfs: (image.len() as u64, modules),
        uki,
    })
}

/// The disk layout of an image: sizes from the manifest, identifiers
/// derived from the commit.
pub fn disk_layout(m: &Manifest, commit: &str, timestamp: u64) -> disk::DiskLayout {
    disk::DiskLayout {
        disk_size: m.disk.size.value,
        esp_size: m.disk.esp_size.value,
        ids: disk::DiskIds {
            disk_guid: ids::derived_uuid("disk", commit),
            esp_part_guid: ids::derived_uuid("esp-partition", commit),
            root_part_guid: ids::derived_uuid("root-partition", commit),
            root_fs_uuid: ids::derived_uuid("root-filesystem", commit),
            esp_volume_id: ids::derived_u32("esp-volume", commit),
            timestamp: i64::try_from(timestamp).unwrap_or(i64::MAX),
        },
    }
}

/// The image's kernel arguments: Berth's own and the manifest's `[kernel]
/// cmdline` (the root partition belongs to the disk). They are written
/// into the OS tree so an upgrade applies the new version's.
pub fn image_kargs(m: &Manifest) -> Kargs {
    Kargs::for_image(&m.kernel.cmdline)
}

fn too_small(m: &Manifest, needed: u64, available: u64) -> crate::manifest::ManifestError {
    m.error_at(
        &m.disk.size.key,
        &m.disk.size.span,
        format!(
            "{} leaves a {} root partition, but the OS needs about {}: make the disk larger",
            human_bytes(m.disk.size.value),
            human_bytes(available),
            human_bytes(needed)
        ),
    )
}

/// Turns "the mirror has no such package" into a manifest error on the
/// line that asked for it.
fn locate_package_error(m: &Manifest, e: anyhow::Error) -> anyhow::Error {
    if let Some(PackagesError::Missing(name)) = e.downcast_ref::<PackagesError>() {
        let msg = format!(
            "the package source ({} {}) has no package \"{name}\"",
            m.source.mirror, m.source.suite
        );
        return match crate::packages::locate_missing(m, name) {
            Some(p) => m.error_at(&p.key, &p.span, msg).into(),
            None => InputError(msg).into(),
        };
    }
    e
}

/// The publish stage's progress line.
fn publish_what(ostree_ref: &str, signer: Option<&Signer>) -> String {
    match signer {
        Some(s) => format!(
            "moving {ostree_ref}, signing the summary with {}",
            s.key_ids()
                .iter()
                .map(|k| short_key(k))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("moving {ostree_ref} (unsigned: [update] verify = false)"),
    }
}

/// The last 16 hex digits of a key id (its long key id).
fn short_key(id: &str) -> &str {
    &id[id.len().saturating_sub(16)..]
}

/// The summary's `signing` line: which key signs, where it lives, and
/// what hosts check.
pub fn signing_line(out: &BuildOutput) -> String {
    let hosts = if out.has_remote {
        "hosts verify commits and summary"
    } else {
        "no [update]: hosts of this image do not update"
    };
    let Some((origin, ids)) = &out.signing else {
        return "off ([update] verify = false): commits and summary unsigned, hosts accept any update"
            .to_string();
    };
    let keys = ids
        .iter()
        .map(|k| short_key(k))
        .collect::<Vec<_>>()
        .join(", ");
    match origin {
        KeyOrigin::Created(dir) => format!(
            "key {keys}, new, in {} (back it up: docs/upgrades.md); {hosts}",
            dir.display()
        ),
        KeyOrigin::Reused(dir) => format!("key {keys} from {}; {hosts}", dir.display()),
        KeyOrigin::Manifest(home) => {
            format!(
                "key {keys} from {} ([update] gpg-homedir); {hosts}",
                home.display()
            )
        }
    }
}

/// The summary's `uki` line: the signed UKI's size, its tree id, and what
/// systemd-boot may enroll.
pub fn uki_line(u: &uki::UkiReport) -> String {
    let enroll = match (u.enroll_keys, u.enroll) {
        (false, _) => "no keys to enroll".to_string(),
        (true, mode) => format!("enrolls PK, KEK and db ({})", mode.name()),
    };
    format!(
        "{} signed, tree id {}; systemd-boot signed; {enroll}",
        human_bytes(u.size),
        u.tree_id
    )
}

/// Sets every access and modification time in `root` to `timestamp`:
/// directories libostree creates get the current time, and mke2fs copies
/// times into the file system.
fn normalize_times(root: &Path, timestamp: u64) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let t = Timespec {
        tv_sec: i64::try_from(timestamp).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
            utimensat(CWD, entry.path(), &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        utimensat(CWD, &dir, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

/// The build's scratch directory in the output directory (same file
/// system as the image, so nothing large crosses devices). Removed when
/// dropped; a stale one from an interrupted build is removed first.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(output: &Path, name: &str) -> anyhow::Result<WorkDir> {
        let path = output.join(format!(".berth-work-{name}"));
        fsutil::remove_any(&path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fsutil::remove_any(&self.path);
    }
}

/// A file being written under a temporary name; deleted unless persisted.
struct Partial {
    path: PathBuf,
}

impl Partial {
    fn new(path: PathBuf) -> Partial {
        let _ = std::fs::remove_file(&path);
        Partial { path }
    }

    /// Flushes the file and renames it to `dest` atomically.
    fn persist(self, dest: &Path) -> anyhow::Result<()> {
        let f = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        std::fs::rename(&self.path, dest)
            .with_context(|| format!("renaming {} to {}", self.path.display(), dest.display()))?;
        if let Some(dir) = dest.parent() {
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn print_summary(out: &BuildOutput, progress: &Progress, total: f64) {
    let short = |c: &str| c.chars().take(16).collect::<String>();
    println!("Built {} {}", out.name, out.version);
    println!(
        "  image      {} ({} apparent, {} allocated)",
        out.image.display(),
        human_bytes(out.disk.apparent_size),
        human_bytes(out.disk.allocated_size)
    );
    println!(
        "  repo       {}  ref {}",
        out.repo.display(),
        out.ostree_ref
    );
    println!(
        "  commit     {}  parent {}{}{}",
        out.commit.checksum,
        out.commit
            .parent
            .as_deref()
            .map_or("none".to_string(), short),
        if out.commit.unchanged {
            ", unchanged (same tree and version: no new commit)"
        } else if out.published.delta {
            ", static delta written"
        } else {
            ""
        },
        if out.commit.bumped {
            " (dated 1 s after its parent: the build time was not later)"
        } else {
            ""
        }
    );
    println!("  signing    {}", signing_line(out));
    println!(
        "  tree       {} (extracted {}; {} packages, {}; kernel {}, {} modules)",
        human_bytes(out.base.tree_bytes),
        human_bytes(out.base.extracted_bytes),
        out.base.packages.len(),
        if out.fetched { "fetched" } else { "from cache" },
        out.base.kernel_version,
        out.base.modules.len()
    );
    println!(
        "  initramfs  {} ({} modules)",
        human_bytes(out.initramfs.0),
        out.initramfs.1.len()
    );
    if let Some(u) = &out.uki {
        println!("  uki        {}", uki_line(u));
    }
    let stages: Vec<String> = progress
        .timings
        .iter()
        .map(|(s, d)| format!("{s} {:.1}s", d.as_secs_f64()))
        .collect();
    println!("  time       {total:.1}s ({})", stages.join(", "));
}
