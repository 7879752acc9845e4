//! Finding partitions without udev: list the disks and partitions in
//! /sys/class/block, read each disk's GPT ([`crate::gpt`]), and map a
//! PARTUUID or a type GUID to the partition's /dev node (devtmpfs creates
//! the nodes; nobody creates /dev/disk/by-partuuid).
//!
//! Without a PARTUUID on the command line, the root is found as systemd's
//! gpt-auto does it ([`discover_root`]): the disk is the one holding the
//! ESP the boot loader was started from (`LoaderDevicePartUUID`), the
//! partition the x86-64 root partition on it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::RootSpec;
use crate::gpt;

/// Where the kernel lists block devices, where their nodes are, and where
/// the boot loader says which disk it was started from.
#[derive(Debug, Clone)]
pub struct BlockPaths {
    /// Normally /sys/class/block.
    pub sys_class_block: PathBuf,
    /// Normally /dev.
    pub dev: PathBuf,
    /// Normally /sys/firmware/efi/efivars (read for `root=gpt-auto`).
    pub efivars: PathBuf,
}

impl Default for BlockPaths {
    fn default() -> Self {
        BlockPaths {
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            efivars: PathBuf::from(crate::efivars::EFIVARS_DIR),
        }
    }
}

/// A whole disk and its partitions (number, kernel name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`, `nvme0n1`.
    pub name: String,
    /// (partition number, kernel name), e.g. (2, `vda2`).
    pub partitions: Vec<(u32, String)>,
}

/// A partition found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The disk's kernel name.
    pub disk: String,
    /// The partition's device node, e.g. /dev/vda2.
    pub device: PathBuf,
}

/// Lists disks and their partitions from /sys/class/block.
pub fn list_disks(paths: &BlockPaths) -> Vec<Disk> {
    let Ok(entries) = std::fs::read_dir(&paths.sys_class_block) else {
        return Vec::new();
    };
    let mut disks: Vec<Disk> = Vec::new();
    let mut parts: Vec<(String, u32, String)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        match std::fs::read_to_string(dir.join("partition")) {
            Ok(number) => {
                // The partition's sysfs directory sits inside its disk's.
                let parent = std::fs::canonicalize(&dir).ok().and_then(|p| {
                    p.parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                });
                if let (Some(disk), Ok(number)) = (parent, number.trim().parse()) {
                    parts.push((disk, number, name));
                }
            }
            Err(_) => disks.push(Disk {
                name,
                partitions: Vec::new(),
            }),
        }
    }
    for (disk, number, name) in parts {
        if let Some(d) = disks.iter_mut().find(|d| d.name == disk) {
            d.partitions.push((number, name));
        }
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    for d in &mut disks {
        d.partitions.sort();
    }
    disks
}

/// The logical sector size of `disk`, from sysfs (512 when unknown).
pub fn sector_size(paths: &BlockPaths, disk: &str) -> u64 {
    std::fs::read_to_string(
        paths
            .sys_class_block
            .join(disk)
            .join("queue/logical_block_size"),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(512)
}

/// Reads the GPT of one disk.
pub fn disk_partitions(
    paths: &BlockPaths,
    disk: &str,
) -> Result<Vec<gpt::Partition>, gpt::GptError> {
    let mut file = File::open(paths.dev.join(disk))?;
    gpt::read_partitions(&mut file, sector_size(paths, disk))
}

/// Looks once for the partition matching `want` (a GPT entry), on every
/// disk. On a miss, returns one line per disk saying what was seen.
pub fn find_partition(
    paths: &BlockPaths,
    want: &dyn Fn(&gpt::Partition) -> bool,
) -> Result<Found, Vec<String>> {
    let mut seen = Vec::new();
    for disk in list_disks(paths) {
        match disk_partitions(paths, &disk.name) {
            Ok(entries) => {
                seen.push(describe(&disk, &entries));
                for entry in entries.iter().filter(|e| want(e)) {
                    if let Some(found) = node_of(paths, &disk, entry) {
                        return Ok(found);
                    }
                }
            }
            Err(e) => seen.push(unreadable(&disk, &e)),
        }
    }
    Err(seen)
}

/// A disk as a timeout message shows it: its GPT and the kernel's view.
fn describe(disk: &Disk, entries: &[gpt::Partition]) -> String {
    let names: Vec<&str> = disk.partitions.iter().map(|(_, n)| n.as_str()).collect();
    format!(
        "{} (GPT, {} entries; kernel partitions: {})",
        disk.name,
        entries.len(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(" ")
        }
    )
}

fn unreadable(disk: &Disk, e: &gpt::GptError) -> String {
    format!(
        "{} ({})",
        disk.name,
        berth_hostapi::error_chain::one_line(e)
    )
}

/// The device node of GPT entry `entry` of `disk`, once the kernel has
/// made it a partition.
fn node_of(paths: &BlockPaths, disk: &Disk, entry: &gpt::Partition) -> Option<Found> {
    let (_, part) = disk.partitions.iter().find(|(n, _)| *n == entry.number)?;
    Some(Found {
        disk: disk.name.clone(),
        device: paths.dev.join(part),
    })
}

/// One look for the root partition as the Discoverable Partitions
/// Specification finds it: on the disk holding the partition with unique
/// GUID `esp` (the ESP the boot loader was started from), the first
/// x86-64 root partition without the no-auto attribute. systemd's
/// gpt-auto takes the highest name by version order when there are
/// several; a Berth disk has one, so the first is taken. On a miss,
/// returns one line per disk saying what was seen.
pub fn discover_root(paths: &BlockPaths, esp: &str) -> Result<Found, Vec<String>> {
    let esp = esp.to_ascii_lowercase();
    let mut seen = Vec::new();
    for disk in list_disks(paths) {
        let entries = match disk_partitions(paths, &disk.name) {
            Ok(entries) => entries,
            Err(e) => {
                seen.push(unreadable(&disk, &e));
                continue;
            }
        };
        let line = describe(&disk, &entries);
        if !entries.iter().any(|e| e.unique_guid == esp) {
            seen.push(line);
            continue;
        }
        let root = entries
            .iter()
            .find(|e| e.type_guid == gpt::ROOT_X86_64_TYPE && e.attributes & gpt::NO_AUTO == 0);
        match root {
            Some(entry) => match node_of(paths, &disk, entry) {
                Some(found) => return Ok(found),
                None => seen.push(format!(
                    "{line}: holds the ESP; its root partition {} has no device node yet",
                    entry.number
                )),
            },
            None => seen.push(format!(
                "{line}: holds the ESP but no x86-64 root partition (type {}) without no-auto",
                gpt::ROOT_X86_64_TYPE
            )),
        }
    }
    Err(seen)
}

/// The partition with unique GUID `uuid` (case-insensitive).
pub fn find_partuuid(paths: &BlockPaths, uuid: &str) -> Result<Found, Vec<String>> {
    let uuid = uuid.to_ascii_lowercase();
    find_partition(paths, &|p| p.unique_guid == uuid)
}

/// The EFI System Partition on `disk` (the first one, if several).
pub fn find_esp_on(paths: &BlockPaths, disk: &str) -> Option<PathBuf> {
    let d = list_disks(paths).into_iter().find(|d| d.name == disk)?;
    let entries = disk_partitions(paths, disk).ok()?;
    let esp = entries.iter().find(|e| e.type_guid == gpt::ESP_TYPE)?;
    let (_, name) = d.partitions.iter().find(|(n, _)| *n == esp.number)?;
    Some(paths.dev.join(name))
}

/// The root partition did not show up in time.
#[derive(Debug, thiserror::Error)]
#[error("waiting {secs}s for root {what}: not found; block devices seen: {seen}")]
pub struct RootTimeout {
    /// What was looked for.
    pub what: String,
    /// The timeout in seconds.
    pub secs: u64,
    /// What was seen on the last look.
    pub seen: String,
}

/// One look for the root partition `spec` names; when it is not there,
/// the disks that are.
pub fn find_root(paths: &BlockPaths, spec: &RootSpec) -> Result<Found, Vec<String>> {
    match spec {
        RootSpec::PartUuid(uuid) => find_partuuid(paths, uuid),
        RootSpec::GptAuto => match crate::efivars::loader_device_part_uuid(&paths.efivars) {
            Some(esp) => discover_root(paths, &esp),
            None => Err(vec![format!(
                "no LoaderDevicePartUUID in {}",
                paths.efivars.display()
            )]),
        },
        RootSpec::Path(path) => {
            if Path::new(path).exists() {
                let disk = Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(Found {
                    disk: parent_disk(paths, &disk).unwrap_or(disk),
                    device: PathBuf::from(path),
                })
            } else {
                Err(list_disks(paths).into_iter().map(|d| d.name).collect())
            }
        }
    }
}

/// What `spec` looks for, in words, e.g. `PARTUUID=…`.
pub fn describe_spec(paths: &BlockPaths, spec: &RootSpec) -> String {
    match spec {
        RootSpec::PartUuid(u) => format!("PARTUUID={u}"),
        RootSpec::Path(p) => p.clone(),
        RootSpec::GptAuto => format!(
            "the x86-64 root partition on the disk of the ESP the boot loader booted from (PARTUUID={})",
            crate::efivars::loader_device_part_uuid(&paths.efivars)
                .unwrap_or_else(|| "unknown".into())
        ),
    }
}

/// Polls for the root partition until `timeout`.
pub fn wait_for_root(
    paths: &BlockPaths,
    spec: &RootSpec,
    timeout: Duration,
) -> Result<Found, RootTimeout> {
    let deadline = crate::sys::clock::from_now(timeout);
    loop {
        match find_root(paths, spec) {
            Ok(found) => return Ok(found),
            Err(seen) if Instant::now() >= deadline => {
                return Err(RootTimeout {
                    what: describe_spec(paths, spec),
                    secs: timeout.as_secs(),
                    seen: if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    },
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The disk a partition (kernel name) belongs to.
pub fn parent_disk(paths: &BlockPaths, partition: &str) -> Option<String> {
    list_disks(paths)
        .into_iter()
        .find(|d| d.partitions.iter().any(|(_, n)| n == partition))
        .map(|d| d.name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// A fake /sys/class/block + /dev with disk vda (esp vda1, root vda2)
    /// and an empty disk vdb; its efivarfs (for [`fake_efivar`]) is
    /// `sys/firmware/efi/efivars`.
    pub(crate) fn fake_machine(tmp: &Path) -> std::io::Result<BlockPaths> {
        let class = tmp.join("sys/class/block");
        fs::create_dir_all(&class)?;
        fs::create_dir_all(tmp.join("dev"))?;
        let paths = BlockPaths {
            sys_class_block: class,
            dev: tmp.join("dev"),
            efivars: tmp.join("sys/firmware/efi/efivars"),
        };
        fake_disk(
            tmp,
            &paths,
            "vda",
            &[
                (gpt::ESP_TYPE, "11111111-2222-3333-4444-555555555555", 0),
                (
                    gpt::ROOT_X86_64_TYPE,
                    "6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab",
                    0,
                ),
            ],
        )?;
        fake_disk(tmp, &paths, "vdb", &[])?;
        fs::write(tmp.join("dev/vdb"), vec![0u8; 4096])?;
        Ok(paths)
    }

    /// Adds (or replaces) disk `name` with GPT entries `parts` (type,
    /// unique GUID, attributes), each a kernel partition `<name><n>`.
    pub(crate) fn fake_disk(
        tmp: &Path,
        paths: &BlockPaths,
        name: &str,
        parts: &[(&str, &str, u64)],
    ) -> std::io::Result<()> {
        let disk = tmp.join("sys/devices/virtio0/block").join(name);
        fs::create_dir_all(&disk)?;
        let link = paths.sys_class_block.join(name);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&disk, &link)?;
        }
        for n in 1..=parts.len() {
            let part = format!("{name}{n}");
            let dir = disk.join(&part);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("partition"), format!("{n}\n"))?;
            let link = paths.sys_class_block.join(&part);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&dir, &link)?;
            }
        }
        let entries: Vec<_> = parts
            .iter()
            .map(|&(ty, uuid, attributes)| (ty, uuid, "", attributes))
            .collect();
        fs::write(
            paths.dev.join(name),
            crate::gpt::tests::make_disk_with_attributes(&entries),
        )
    }

    /// Sets `LoaderDevicePartUUID` as systemd-boot does (upper case).
    pub(crate) fn fake_efivar(paths: &BlockPaths, esp: &str) -> std::io::Result<()> {
        crate::efivars::tests::write_efivar(
            &paths.efivars,
            "LoaderDevicePartUUID",
            &esp.to_ascii_uppercase(),
        )
    }

    #[test]
    fn finds_root_and_esp_by_guid() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let paths = fake_machine(tmp.path())?;
        let found = wait_for_root(
            &paths,
            &RootSpec::PartUuid("6C1C0B3E-AAAA-4BBB-8CCC-0123456789AB".into()),
            Duration::from_secs(1),
        );
        let found = found.map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!(found.disk, "vda");
        assert_eq!(found.device, tmp.path().join("dev/vda2"));
        assert_eq!(
            find_esp_on(&paths, "vda"),
            Some(tmp.path().join("dev/vda1"))
        );
        assert_eq!(find_esp_on(&paths, "vdb"), None);
        assert_eq!(parent_disk(&paths, "vda2").as_deref(), Some("vda"));
        Ok(())
    }

    #[test]
    fn timeout_says_what_was_seen() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let paths = fake_machine(tmp.path())?;
        let err = wait_for_root(
            &paths,
            &RootSpec::PartUuid("00000000-0000-0000-0000-000000000000".into()),
            Duration::from_millis(150),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("PARTUUID=00000000-0000-0000-0000-000000000000"),
            "{err}"
        );
        assert!(
            err.contains("vda (GPT, 2 entries; kernel partitions: vda1 vda2)"),
            "{err}"
        );
        assert!(err.contains("vdb (no GPT header)"), "{err}");
        Ok(())
    }

    /// vdb: an ESP, a root marked no-auto, then the real root.
    const VDB_ESP: &str = "22222222-0000-4000-8000-00000000000e";

    fn second_disk(tmp: &Path, paths: &BlockPaths) -> std::io::Result<()> {
        fake_disk(
            tmp,
            paths,
            "vdb",
            &[
                (gpt::ESP_TYPE, VDB_ESP, 0),
                (
                    gpt::ROOT_X86_64_TYPE,
                    "22222222-0000-4000-8000-000000000001",
                    gpt::NO_AUTO,
                ),
                (
                    gpt::ROOT_X86_64_TYPE,
                    "22222222-0000-4000-8000-000000000002",
                    0,
                ),
            ],
        )
    }

    #[test]
    fn gpt_auto_takes_the_root_on_the_disk_of_the_loaders_esp() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let paths = fake_machine(tmp.path())?;
        second_disk(tmp.path(), &paths)?;
        // vda has a root partition too: the ESP decides the disk.
        fake_efivar(&paths, VDB_ESP)?;
        let found = find_root(&paths, &RootSpec::GptAuto)
            .map_err(|seen| std::io::Error::other(seen.join(", ")))?;
        assert_eq!(found.disk, "vdb");
        // vdb2 is no-auto.
        assert_eq!(found.device, tmp.path().join("dev/vdb3"));
        fake_efivar(&paths, "11111111-2222-3333-4444-555555555555")?;
        let found = find_root(&paths, &RootSpec::GptAuto)
            .map_err(|seen| std::io::Error::other(seen.join(", ")))?;
        assert_eq!(found.device, tmp.path().join("dev/vda2"));
        Ok(())
    }

    #[test]
    fn gpt_auto_misses_say_why() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let paths = fake_machine(tmp.path())?;
        let miss = |spec: &RootSpec| {
            wait_for_root(&paths, spec, Duration::from_millis(100))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let err = miss(&RootSpec::GptAuto);
        assert!(err.contains("no LoaderDevicePartUUID in"), "{err}");

        // A partition on no disk (yet).
        fake_efivar(&paths, "00000000-0000-4000-8000-0000000000ff")?;
        let err = miss(&RootSpec::GptAuto);
        assert!(
            err.contains(
                "waiting 0s for root the x86-64 root partition on the disk of the ESP the boot \
                 loader booted from (PARTUUID=00000000-0000-4000-8000-0000000000ff): not found"
            ),
            "{err}"
        );
        assert!(
            err.contains("vda (GPT, 2 entries; kernel partitions: vda1 vda2), vdb (no GPT header)"),
            "{err}"
        );

        // The ESP's disk has only a no-auto root.
        fake_disk(
            tmp.path(),
            &paths,
            "vdb",
            &[
                (gpt::ESP_TYPE, VDB_ESP, 0),
                (
                    gpt::ROOT_X86_64_TYPE,
                    "22222222-0000-4000-8000-000000000001",
                    gpt::NO_AUTO,
                ),
            ],
        )?;
        fake_efivar(&paths, VDB_ESP)?;
        let err = miss(&RootSpec::GptAuto);
        assert!(
            err.contains(
                "vdb (GPT, 2 entries; kernel partitions: vdb1 vdb2): holds the ESP but no x86-64 \
                 root partition (type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709) without no-auto"
            ),
            "{err}"
        );
        Ok(())
    }
}
