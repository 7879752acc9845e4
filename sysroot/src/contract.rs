//! The boot contract between a Berth image and its boot loader, in one
//! place for both sides: `berth build` (the first install into an image)
//! and `berthctl upgrade` (every later deployment on the host) call the
//! same functions, so what one writes the other reads back unchanged.
//!
//! - **Kernel arguments** ([`Kargs`]): the root partition, which belongs
//!   to the disk, and the image's own arguments (Berth's console and panic
//!   settings, then the manifest's `[kernel] cmdline`), which the OS tree
//!   carries in [`KARGS_PATH`] so an upgrade applies the new version's.
//! - **Deploying** ([`deploy`]): one libostree deployment of a commit,
//!   with its origin, the `/etc` merge from the booted deployment, and the
//!   kernel arguments above.
//! - **The ESP**: what it must hold for a list of deployments
//!   ([`plan`], [`plan_with_loader`]: systemd-boot, its loader.conf, one
//!   folder per deployment with its kernel and initramfs, one Boot Loader
//!   Specification entry per deployment), and that plan as files in the
//!   order they are written ([`esp_files`]). The builder puts those files
//!   into a FAT image; [`crate::esp_sync`] writes them onto the mounted ESP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ostree::gio;

use crate::SysrootError;
use crate::bls::{Assessment, BootEntry, EntryName};
use crate::deployment::{DeploymentInfo, STATEROOT};

/// Where the OS tree carries the image's own kernel arguments (one line,
/// separated by spaces): the builder writes it, an upgrade reads the new
/// commit's.
pub const KARGS_PATH: &str = "/usr/lib/berth/kargs";

/// The arguments every Berth image starts with: a writable root (the
/// deployment is read-only by its own bind mounts), the console on screen
/// and serial port, and `panic=10`, so a kernel panic reboots and counts
/// as a failed try.
const BERTH_KARGS: [&str; 4] = ["rw", "console=tty0", "console=ttyS0,115200", "panic=10"];

/// The kernel command line of a deployment, split by who owns each part.
/// libostree adds `ostree=` itself when it deploys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kargs {
    /// `root=` arguments: the disk's, never the image's.
    root: Vec<String>,
    /// The image's own: Berth's, then the manifest's, as [`KARGS_PATH`]
    /// holds them.
    image: Vec<String>,
}

impl Kargs {
    /// The image's arguments for a manifest's `[kernel] cmdline`: Berth's
    /// own first, then the manifest's. No root yet.
    pub fn for_image(manifest_cmdline: &[String]) -> Kargs {
        let mut image: Vec<String> = BERTH_KARGS.iter().map(|a| a.to_string()).collect();
        image.extend(manifest_cmdline.iter().cloned());
        Kargs {
            root: Vec::new(),
            image,
        }
    }

    /// The image's arguments as [`KARGS_PATH`] in a commit holds them.
    pub fn parse_image_file(text: &str) -> Kargs {
        Kargs {
            root: Vec::new(),
            image: text.split_whitespace().map(String::from).collect(),
        }
    }

    /// A deployment's whole command line, split: `root=` arguments are the
    /// disk's, `ostree=` is libostree's and dropped, the rest the image's.
    pub fn parse_options(options: &str) -> Kargs {
        let (root, image) = without_ostree(options)
            .into_iter()
            .partition(|a| a.starts_with("root="));
        Kargs { root, image }
    }

    /// These image arguments on the root of `other` (a deployment's
    /// arguments: an upgrade keeps the booted one's root).
    pub fn with_root_of(self, other: &Kargs) -> Kargs {
        Kargs {
            root: other.root.clone(),
            ..self
        }
    }

    /// The contents of [`KARGS_PATH`]: the image's arguments on one line.
    pub fn render_image_file(&self) -> String {
        self.image.join(" ") + "\n"
    }

    /// The whole command line, root first, as libostree takes it.
    pub fn to_vec(&self) -> Vec<String> {
        self.root.iter().chain(&self.image).cloned().collect()
    }
}

/// libostree's own argument, naming the deployment the initramfs mounts:
/// libostree writes it at every deploy, and a boot entry names the
/// deployment's stable path in it.
const OSTREE_KARG: &str = "ostree=";

/// A deployment's arguments as libostree keeps them (its bootconfig's
/// `options`), in their order, without libostree's `ostree=`.
pub fn without_ostree(options: &str) -> Vec<String> {
    options
        .split_whitespace()
        .filter(|a| !a.starts_with(OSTREE_KARG))
        .map(String::from)
        .collect()
}

/// The kernel command line of a deployment's boot entry: its arguments,
/// then what names its deployment. One rule for every image, signed or
/// not: `berth.tree=<id>` (stage 1 finds the root partition itself, as the
/// Discoverable Partitions Specification says, and in it the deployment
/// whose tree has that id), which is also what a signed unified image's
/// own command line says. Only a tree built before trees had ids gets
/// libostree's `ostree=<stable path>`.
pub fn entry_options(d: &DeploymentInfo) -> String {
    let mut args = d.kargs.clone();
    match &d.tree_id {
        Some(id) => args.push(format!("{TREE_KARG}{id}")),
        None => args.push(format!("{OSTREE_KARG}{}", d.stable_path())),
    }
    args.join(" ")
}

/// Whether `id` is a tree id: 32 lower-case hex characters (berth-init's
/// stage 1 holds the same rule).
pub fn is_tree_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The tree id of the deployment or OS tree at `dir` ([`TREE_ID_PATH`]),
/// when it has a well-formed one.
pub fn read_tree_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(TREE_ID_PATH.trim_start_matches('/'))).ok()?;
    let id = text.lines().next()?.trim();
    is_tree_id(id).then(|| id.to_string())
}

/// Deploys `commit` into Berth's stateroot as the new default, with
/// `origin` (the refspec an upgrade follows), `/etc` merged from
/// `merge_from` (the booted deployment; none at the first install) and
/// `kargs`. The deployment list is written without libostree's cleanup:
/// the caller cleans once the ESP no longer points at what would go.
pub fn deploy(
    sysroot: &ostree::Sysroot,
    commit: &str,
    origin: &ostree::glib::KeyFile,
    merge_from: Option<&ostree::Deployment>,
    kargs: &Kargs,
) -> Result<ostree::Deployment, SysrootError> {
    let none = gio::Cancellable::NONE;
    let argv = kargs.to_vec();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let opts = ostree::SysrootDeployTreeOpts {
        override_kernel_argv: Some(&argv),
        ..Default::default()
    };
    let deployment = sysroot
        .deploy_tree_with_options(
            Some(STATEROOT),
            commit,
            Some(origin),
            merge_from,
            Some(&opts),
            none,
        )
        .map_err(|e| SysrootError::ostree(format!("deploying {commit}"), e))?;
    sysroot
        .simple_write_deployment(
            Some(STATEROOT),
            &deployment,
            merge_from,
            ostree::SysrootSimpleWriteDeploymentFlags::NO_CLEAN,
            none,
        )
        .map_err(|e| SysrootError::ostree("writing the deployment list", e))?;
    Ok(deployment)
}

/// Where systemd-boot lives in every deployment (package systemd-boot-efi).
pub const SYSTEMD_BOOT_IN_TREE: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The removable-media path firmware boots without NVRAM entries.
pub const SYSTEMD_BOOT_ON_ESP: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's configuration on the ESP.
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// Folder of the boot entries on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Folder holding one sub-folder per deployment.
pub const KERNELS_DIR: &str = "berth";

/// Tries a new entry gets (systemd-boot Automatic Boot Assessment).
pub const NEW_ENTRY_TRIES: u32 = 3;

/// loader.conf: no menu (servers boot unattended), no editor (no kernel
/// command-line edits at the console), and no `default`: systemd-boot then
/// takes the first good entry by sort key, so a failed entry (boot counter
/// at 0) falls behind the previous one by itself.
pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";

/// A Secure Boot image's unified kernel image (kernel, initramfs, command
/// line and os-release in one signed PE file), next to the kernel in the
/// tree: `usr/lib/modules/<kver>/berth.efi`. The builder signs it; an
/// upgrade carries it in the commit, already signed.
pub const UKI_NAME: &str = "berth.efi";
/// systemd-boot signed by the image's db key (Debian's name for a signed
/// copy); when a tree has it, it is the one that goes onto the ESP.
pub const SIGNED_SYSTEMD_BOOT_IN_TREE: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed";
/// systemd-boot's UKI stub, which the builder wraps the kernel in.
pub const STUB_IN_TREE: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// The PK, KEK and db updates (`PK.auth`, `KEK.auth`, `db.auth`) that
/// systemd-boot enrolls on a machine in setup mode.
pub const ENROLL_KEYS_IN_TREE: &str = "usr/lib/berth/secure-boot/keys";
/// One word, `manual`, `force` or `off`: loader.conf's `secure-boot-enroll`.
pub const ENROLL_MODE_IN_TREE: &str = "usr/lib/berth/secure-boot/enroll";
/// The tree's id (32 hex characters), which a UKI's signed command line
/// names with [`TREE_KARG`]: stage 1 boots the deployment whose tree has
/// it. (A UKI lives inside its commit, so it cannot name the commit's own
/// checksum.)
pub const TREE_ID_PATH: &str = "/usr/lib/berth/tree-id";
/// The kernel argument naming the tree to boot: `berth.tree=<id>`.
pub const TREE_KARG: &str = "berth.tree=";
/// The enrollment files, in the order systemd-boot writes them.
const ENROLL_FILES: [&str; 3] = ["db.auth", "KEK.auth", "PK.auth"];
/// Where systemd-boot 252 looks for keys to enroll: `loader/keys/<name>/`,
/// one menu entry per name; with `force` it enrolls `auto` by itself.
const KEYS_ON_ESP: &str = "loader/keys";

/// The unified kernel image of deployment `d` of the sysroot at `root`,
/// when its tree has one (a Secure Boot image).
pub fn unified_image(root: &Path, d: &DeploymentInfo) -> Option<PathBuf> {
    let uki = root.join(&d.kernel).with_file_name(UKI_NAME);
    uki.is_file().then_some(uki)
}

/// How the image of `tree` (a deployment's directory) asks systemd-boot to
/// enroll its keys: the mode word and the ESP folder its keys go in.
fn enrollment(tree: &Path) -> Option<(&'static str, &'static str)> {
    let mode = std::fs::read_to_string(tree.join(ENROLL_MODE_IN_TREE)).ok()?;
    match mode.trim() {
        "force" => Some(("force", "auto")),
        "manual" => Some(("manual", "berth")),
        "off" => Some(("off", "berth")),
        _ => None,
    }
}

/// loader.conf for a boot loader taken from the tree at `tree` (none: the
/// default): [`LOADER_CONF`], plus `secure-boot-enroll` for an image that
/// enrolls keys.
pub fn loader_conf(tree: Option<&Path>) -> String {
    let mut conf = LOADER_CONF.to_string();
    if let Some((mode, _)) = tree.and_then(enrollment) {
        conf.push_str(&format!("secure-boot-enroll {mode}\n"));
    }
    conf
}

/// A file to copy onto the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Path on the ESP, without a leading '/'.
    pub esp_path: String,
    /// Where to read it from.
    pub source: PathBuf,
}

/// A boot entry to write onto the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// File name without boot counter and `.conf`.
    pub stem: String,
    /// Its contents.
    pub entry: BootEntry,
    /// The deployment it boots.
    pub deployment_id: String,
}

/// Everything the ESP should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspPlan {
    /// Kernels, initramfs images and the boot loader.
    pub files: Vec<PlannedFile>,
    /// Boot entries, in libostree's order.
    pub entries: Vec<PlannedEntry>,
    /// The contents of loader.conf.
    pub loader_conf: String,
}

/// The boot entry stem of a deployment: `berth-<checksum>.<serial>`.
pub fn entry_stem(d: &DeploymentInfo) -> String {
    format!("berth-{}", d.id())
}

/// The ESP folder of a deployment: `berth/<checksum>.<serial>`.
pub fn deployment_folder(d: &DeploymentInfo) -> String {
    format!("{KERNELS_DIR}/{}", d.id())
}

/// The boot entry of deployment `d` at position `rank` in the order:
/// its kernel, initramfs and command line, or, with `unified`, its signed
/// unified kernel image alone. Either way it is a Type #1 entry, so its
/// sort key carries libostree's order (a Type #2 image would be ordered by
/// the version signed into it, and `berthctl rollback` could not reorder
/// it) and its file name the boot counter.
pub fn boot_entry(d: &DeploymentInfo, rank: usize, unified: bool) -> BootEntry {
    let folder = deployment_folder(d);
    let title = format!(
        "{} ({})",
        d.pretty_name,
        &d.checksum[..d.checksum.len().min(12)]
    );
    // Ranks are zero-padded so that "berth-10" does not sort before "berth-2".
    let sort_key = format!("berth-{rank:03}");
    if unified {
        return BootEntry {
            title,
            version: d.version.clone(),
            sort_key,
            efi: format!("/{folder}/{UKI_NAME}"),
            linux: String::new(),
            initrd: String::new(),
            options: String::new(),
        };
    }
    BootEntry {
        title,
        version: d.version.clone(),
        sort_key,
        efi: String::new(),
        linux: format!("/{folder}/vmlinuz"),
        initrd: format!("/{folder}/initramfs.img"),
        options: entry_options(d),
    }
}

/// Plans the ESP of a first install: `deployments` (libostree's order) of
/// the sysroot at `root`, systemd-boot taken from the first one (a first
/// install is known good).
pub fn plan(root: &Path, deployments: &[DeploymentInfo]) -> EspPlan {
    plan_with_loader(root, deployments, deployments.first())
}

/// The deployment whose systemd-boot belongs on the ESP: the first, in
/// libostree's order, whose entry is blessed (no boot counter) and that is
/// not the `trial` one being written now. A new deployment's boot loader
/// replaces the old one only once that deployment has proven itself:
/// boot counting lives in the binary that would be replaced. `None` when
/// no deployment qualifies (then the ESP's boot loader is left as it is).
pub fn boot_loader_source<'a>(
    deployments: &'a [DeploymentInfo],
    entries: &BTreeMap<String, EntryName>,
    trial: Option<&str>,
) -> Option<&'a DeploymentInfo> {
    deployments.iter().find(|d| {
        let id = d.id();
        Some(id.as_str()) != trial
            && entries
                .get(&id)
                .is_some_and(|n| n.assessment() == Assessment::Good)
    })
}

/// Plans the ESP for `deployments` (libostree's order) of the sysroot at
/// `root`, with systemd-boot taken from `loader` (none: the ESP's boot
/// loader is not part of the plan and stays as it is).
pub fn plan_with_loader(
    root: &Path,
    deployments: &[DeploymentInfo],
    loader: Option<&DeploymentInfo>,
) -> EspPlan {
    let mut files = Vec::new();
    let loader_tree = loader.map(|from| root.join(from.dir()));
    if let Some(tree) = &loader_tree {
        // A Secure Boot image's signed copy, when it has one.
        let signed = tree.join(SIGNED_SYSTEMD_BOOT_IN_TREE);
        let source = if signed.is_file() {
            signed
        } else {
            tree.join(SYSTEMD_BOOT_IN_TREE)
        };
        files.push(PlannedFile {
            esp_path: SYSTEMD_BOOT_ON_ESP.into(),
            source,
        });
        if let Some((_, name)) = enrollment(tree) {
            for f in ENROLL_FILES {
                let source = tree.join(ENROLL_KEYS_IN_TREE).join(f);
                if source.is_file() {
                    files.push(PlannedFile {
                        esp_path: format!("{KEYS_ON_ESP}/{name}/{f}"),
                        source,
                    });
                }
            }
        }
    }
    let mut entries = Vec::new();
    for (rank, d) in deployments.iter().enumerate() {
        let folder = deployment_folder(d);
        let uki = unified_image(root, d);
        if let Some(uki) = &uki {
            files.push(PlannedFile {
                esp_path: format!("{folder}/{UKI_NAME}"),
                source: uki.clone(),
            });
        } else {
            files.push(PlannedFile {
                esp_path: format!("{folder}/vmlinuz"),
                source: root.join(&d.kernel),
            });
            files.push(PlannedFile {
                esp_path: format!("{folder}/initramfs.img"),
                source: root.join(&d.initramfs),
            });
        }
        entries.push(PlannedEntry {
            stem: entry_stem(d),
            entry: boot_entry(d, rank, uki.is_some()),
            deployment_id: d.id(),
        });
    }
    // Without a boot loader to install, loader.conf follows the first
    // deployment's image (a key folder it names may then be absent: keys
    // are only looked for in setup mode, before the first boot).
    let conf_tree = loader_tree.or_else(|| deployments.first().map(|d| root.join(d.dir())));
    EspPlan {
        files,
        entries,
        loader_conf: loader_conf(conf_tree.as_deref()),
    }
}

/// Where the bytes of an ESP file come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspData {
    /// Bytes in memory (boot entries, loader.conf).
    Bytes(Vec<u8>),
    /// A file in the sysroot (systemd-boot, kernels, initramfs).
    File(PathBuf),
}

/// One file the ESP holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspFile {
    /// Path inside the ESP, `/`-separated, without a leading `/`,
    /// e.g. `EFI/BOOT/BOOTX64.EFI` or `loader/entries/x.conf`. Parent
    /// directories are created.
    pub path: String,
    /// The contents.
    pub data: EspData,
}

/// An [`EspPlan`] as files, in the order they must be written so the ESP
/// boots at every step: first what entries point at, then the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspFiles {
    /// systemd-boot, kernels and initramfs images, then loader.conf.
    pub boot_files: Vec<EspFile>,
    /// The boot entries, the trial one last.
    pub entries: Vec<EspFile>,
}

impl EspFiles {
    /// All files, in the order they are written.
    pub fn in_write_order(self) -> Vec<EspFile> {
        let mut all = self.boot_files;
        all.extend(self.entries);
        all
    }
}

/// Turns `plan` into the files of an ESP. Each entry's file name carries
/// its boot counter: an entry already on the ESP (`existing`, by
/// deployment id) keeps its name, so its counter survives; a new entry for
/// the `trial` deployment gets [`NEW_ENTRY_TRIES`]; any other new entry is
/// written as good (a first install is known good).
pub fn esp_files(
    plan: &EspPlan,
    trial: Option<&str>,
    existing: &BTreeMap<String, EntryName>,
) -> EspFiles {
    let mut boot_files: Vec<EspFile> = plan
        .files
        .iter()
        .map(|f| EspFile {
            path: f.esp_path.clone(),
            data: EspData::File(f.source.clone()),
        })
        .collect();
    boot_files.push(EspFile {
        path: LOADER_CONF_PATH.into(),
        data: EspData::Bytes(plan.loader_conf.as_bytes().to_vec()),
    });
    let mut ordered: Vec<&PlannedEntry> = plan.entries.iter().collect();
    ordered.sort_by_key(|e| Some(e.deployment_id.as_str()) == trial);
    let entries = ordered
        .into_iter()
        .map(|e| {
            let name = match existing.get(&e.deployment_id) {
                Some(n) => n.clone(),
                None if Some(e.deployment_id.as_str()) == trial => {
                    EntryName::on_trial(&e.stem, NEW_ENTRY_TRIES)
                }
                None => EntryName::good(&e.stem),
            };
            EspFile {
                path: format!("{ENTRIES_DIR}/{}", name.file_name()),
                data: EspData::Bytes(e.entry.render().into_bytes()),
            }
        })
        .collect();
    EspFiles {
        boot_files,
        entries,
    }
}

/// A plan for the ESP tests: one kernel (written into `src`) and one entry
/// per deployment id, ranked in the order given.
#[cfg(test)]
pub(crate) fn test_plan(src: &Path, ids: &[&str]) -> EspPlan {
    let mut files = vec![];
    let mut entries = vec![];
    for (rank, id) in ids.iter().enumerate() {
        let k = src.join(format!("{id}.vmlinuz"));
        std::fs::write(&k, format!("kernel {id}")).unwrap();
        files.push(PlannedFile {
            esp_path: format!("berth/{id}/vmlinuz"),
            source: k,
        });
        entries.push(PlannedEntry {
            stem: format!("berth-{id}"),
            deployment_id: id.to_string(),
            entry: BootEntry {
                title: id.to_string(),
                version: "1".into(),
                sort_key: format!("berth-{rank:03}"),
                efi: String::new(),
                linux: format!("/berth/{id}/vmlinuz"),
                initrd: String::new(),
                options: String::new(),
            },
        });
    }
    EspPlan {
        files,
        entries,
        loader_conf: LOADER_CONF.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(checksum: &str, version: &str) -> DeploymentInfo {
        DeploymentInfo {
            index: 0,
            stateroot: "berth".into(),
            checksum: checksum.into(),
            serial: 0,
            version: version.into(),
            pretty_name: "Berth demo".into(),
            kargs: vec!["root=PARTUUID=p".into()],
            kernel: PathBuf::from(format!(
                "ostree/deploy/berth/deploy/{checksum}.0/usr/lib/modules/6.1/vmlinuz"
            )),
            initramfs: PathBuf::from(format!(
                "ostree/deploy/berth/deploy/{checksum}.0/usr/lib/modules/6.1/initramfs.img"
            )),
            booted: false,
            refspec: None,
            tree_id: None,
        }
    }

    #[test]
    fn one_folder_and_one_entry_per_deployment_in_order() {
        let plan = plan(Path::new("/s"), &[dep("bbbb", "2"), dep("aaaa", "1")]);
        let paths: Vec<&str> = plan.files.iter().map(|f| f.esp_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "berth/bbbb.0/vmlinuz",
                "berth/bbbb.0/initramfs.img",
                "berth/aaaa.0/vmlinuz",
                "berth/aaaa.0/initramfs.img"
            ]
        );
        assert_eq!(
            plan.files[0].source,
            Path::new(
                "/s/ostree/deploy/berth/deploy/bbbb.0/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
            )
        );
        assert_eq!(plan.entries[0].stem, "berth-bbbb.0");
        assert_eq!(plan.entries[0].entry.sort_key, "berth-000");
        assert_eq!(plan.entries[1].entry.sort_key, "berth-001");
        assert!(plan.entries[0].entry.sort_key < plan.entries[1].entry.sort_key);
        // A tree built before trees had ids keeps libostree's path.
        assert_eq!(
            plan.entries[1].entry.options,
            "root=PARTUUID=p ostree=/ostree/deploy/berth/deploy/aaaa.0"
        );
        assert_eq!(plan.entries[1].entry.linux, "/berth/aaaa.0/vmlinuz");
    }

    #[test]
    fn an_entry_names_its_tree_by_id_and_no_partition() {
        let id = "0123456789abcdef0123456789abcdef";
        let mut d = dep("bbbb", "2");
        d.kargs = Kargs::for_image(&["quiet".into()]).to_vec();
        d.tree_id = Some(id.into());
        let plan = plan(Path::new("/s"), &[d]);
        assert_eq!(
            plan.entries[0].entry.options,
            format!("rw console=tty0 console=ttyS0,115200 panic=10 quiet berth.tree={id}")
        );
        // A host upgraded from an image that named its root keeps it.
        let mut d = dep("cccc", "3");
        d.tree_id = Some(id.into());
        assert_eq!(
            entry_options(&d),
            format!("root=PARTUUID=p berth.tree={id}")
        );
    }

    #[test]
    fn a_tree_id_is_read_only_when_well_formed() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_tree_id(t.path()), None);
        let file = t.path().join(TREE_ID_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for (text, id) in [
            (
                "0123456789abcdef0123456789abcdef\n",
                Some("0123456789abcdef0123456789abcdef"),
            ),
            ("0123456789ABCDEF0123456789abcdef\n", None),
            ("0123456789abcdef\n", None),
            ("0123456789abcdef0123456789abcdef x\n", None),
            ("", None),
        ] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(read_tree_id(t.path()).as_deref(), id, "{text:?}");
        }
    }

    #[test]
    fn the_boot_loader_comes_from_the_first_blessed_deployment() {
        let deps = [dep("bbbb", "2"), dep("aaaa", "1")];
        let mut entries = BTreeMap::new();
        entries.insert("aaaa.0".to_string(), EntryName::good("berth-aaaa.0"));
        // v2 is new (being written on trial): v1's loader stays.
        let src = boot_loader_source(&deps, &entries, Some("bbbb.0")).unwrap();
        assert_eq!(src.checksum, "aaaa");
        // v2 on trial, counted once: still v1's.
        entries.insert(
            "bbbb.0".to_string(),
            EntryName::parse("berth-bbbb.0+2-1.conf").unwrap(),
        );
        assert_eq!(
            boot_loader_source(&deps, &entries, None).unwrap().checksum,
            "aaaa"
        );
        // v2 blessed: its loader.
        entries.insert("bbbb.0".to_string(), EntryName::good("berth-bbbb.0"));
        assert_eq!(
            boot_loader_source(&deps, &entries, None).unwrap().checksum,
            "bbbb"
        );
        let plan = plan_with_loader(Path::new("/s"), &deps, Some(&deps[1]));
        assert_eq!(plan.files[0].esp_path, SYSTEMD_BOOT_ON_ESP);
        assert!(
            plan.files[0]
                .source
                .starts_with("/s/ostree/deploy/berth/deploy/aaaa.0")
        );
        // Nothing blessed: the plan leaves the boot loader alone.
        assert!(boot_loader_source(&deps, &BTreeMap::new(), None).is_none());
        let plan = plan_with_loader(Path::new("/s"), &deps, None);
        assert!(plan.files.iter().all(|f| f.esp_path != SYSTEMD_BOOT_ON_ESP));
    }

    #[test]
    fn an_image_has_berths_arguments_then_the_manifests() {
        let k = Kargs::for_image(&["quiet".into(), "berth.x=1".into()]);
        assert_eq!(
            k.render_image_file(),
            "rw console=tty0 console=ttyS0,115200 panic=10 quiet berth.x=1\n"
        );
        // No root=: stage 1 finds the root partition itself.
        assert_eq!(
            k.to_vec(),
            [
                "rw",
                "console=tty0",
                "console=ttyS0,115200",
                "panic=10",
                "quiet",
                "berth.x=1"
            ]
        );
        // What the builder writes, an upgrade reads back unchanged.
        assert_eq!(Kargs::parse_image_file(&k.render_image_file()), k);
    }

    #[test]
    fn an_upgrade_keeps_the_disks_root_and_takes_the_new_images_arguments() {
        let booted = Kargs::parse_options(
            "root=PARTUUID=aa rw console=ttyS0,115200 old=1 ostree=/ostree/boot.1/berth/x/0",
        );
        // libostree's own argument is not carried over: it writes its own.
        assert_eq!(
            booted.to_vec(),
            ["root=PARTUUID=aa", "rw", "console=ttyS0,115200", "old=1"]
        );
        let new = Kargs::parse_image_file("rw  new=2\n").with_root_of(&booted);
        assert_eq!(new.to_vec(), ["root=PARTUUID=aa", "rw", "new=2"]);
    }

    #[test]
    fn a_first_install_writes_every_entry_as_good_after_its_files() {
        let plan = plan(Path::new("/s"), &[dep("bbbb", "2"), dep("aaaa", "1")]);
        let files = esp_files(&plan, None, &BTreeMap::new()).in_write_order();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "berth/bbbb.0/vmlinuz",
                "berth/bbbb.0/initramfs.img",
                "berth/aaaa.0/vmlinuz",
                "berth/aaaa.0/initramfs.img",
                "loader/loader.conf",
                "loader/entries/berth-bbbb.0.conf",
                "loader/entries/berth-aaaa.0.conf",
            ]
        );
        assert_eq!(
            files[5].data,
            EspData::Bytes(LOADER_CONF.as_bytes().to_vec())
        );
        assert_eq!(
            files[6].data,
            EspData::Bytes(plan.entries[0].entry.render().into_bytes())
        );
        assert_eq!(files[1].data, EspData::File(plan.files[1].source.clone()));
    }

    #[test]
    fn on_a_host_an_entry_keeps_its_name_and_the_trial_one_comes_last() {
        let plan = plan(Path::new("/s"), &[dep("bbbb", "2"), dep("aaaa", "1")]);
        let mut existing = BTreeMap::new();
        existing.insert(
            "aaaa.0".to_string(),
            EntryName::parse("berth-aaaa.0+1-2.conf").unwrap(),
        );
        let files = esp_files(&plan, Some("bbbb.0"), &existing);
        let names: Vec<&str> = files.entries.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "loader/entries/berth-aaaa.0+1-2.conf",
                "loader/entries/berth-bbbb.0+3.conf"
            ]
        );
    }

    #[test]
    fn a_secure_boot_image_boots_its_signed_unified_image_and_enrolls_its_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (new, old) = (dep("bbbb", "2"), dep("aaaa", "1"));
        // v2 is a Secure Boot image: a UKI beside its kernel, a signed
        // systemd-boot, keys to enroll unattended. v1 is not.
        let tree = root.join(new.dir());
        let kdir = root.join(&new.kernel).with_file_name("");
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::write(kdir.join(UKI_NAME), "uki").unwrap();
        std::fs::create_dir_all(tree.join(ENROLL_KEYS_IN_TREE)).unwrap();
        for f in ENROLL_FILES {
            std::fs::write(tree.join(ENROLL_KEYS_IN_TREE).join(f), f).unwrap();
        }
        std::fs::write(tree.join(ENROLL_MODE_IN_TREE), "force\n").unwrap();
        let signed = tree.join(SIGNED_SYSTEMD_BOOT_IN_TREE);
        std::fs::create_dir_all(signed.parent().unwrap()).unwrap();
        std::fs::write(&signed, "signed sd-boot").unwrap();

        let plan = plan(root, &[new.clone(), old.clone()]);
        let paths: Vec<&str> = plan.files.iter().map(|f| f.esp_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "loader/keys/auto/db.auth",
                "loader/keys/auto/KEK.auth",
                "loader/keys/auto/PK.auth",
                "berth/bbbb.0/berth.efi",
                "berth/aaaa.0/vmlinuz",
                "berth/aaaa.0/initramfs.img",
            ]
        );
        assert_eq!(plan.files[0].source, signed);
        assert_eq!(
            plan.entries[0].entry.render(),
            "title Berth demo (bbbb)\nversion 2\nsort-key berth-000\nefi /berth/bbbb.0/berth.efi\n"
        );
        assert_eq!(plan.entries[1].entry.linux, "/berth/aaaa.0/vmlinuz");
        assert_eq!(
            plan.loader_conf,
            format!("{LOADER_CONF}secure-boot-enroll force\n")
        );
        // Manual enrollment: keys under a name the menu shows.
        std::fs::write(tree.join(ENROLL_MODE_IN_TREE), "manual\n").unwrap();
        let manual = super::plan(root, &[new.clone(), old.clone()]);
        assert_eq!(manual.files[1].esp_path, "loader/keys/berth/db.auth");
        assert!(manual.loader_conf.ends_with("secure-boot-enroll manual\n"));
        // The boot loader from v1 (not a Secure Boot image): plain
        // systemd-boot, no keys, the default loader.conf.
        let from_v1 = plan_with_loader(root, &[new, old.clone()], Some(&old));
        assert!(from_v1.files[0].source.ends_with(SYSTEMD_BOOT_IN_TREE));
        assert!(
            !from_v1
                .files
                .iter()
                .any(|f| f.esp_path.starts_with("loader/keys"))
        );
        assert_eq!(from_v1.loader_conf, LOADER_CONF);
    }

    #[test]
    fn loader_conf_sets_no_default() {
        assert!(!LOADER_CONF.contains("default"));
        assert!(LOADER_CONF.contains("timeout 0"));
    }
}
