//! Finding partitions without udev: list the disks and partitions in
//! /sys/class/block, read each disk's GPT ([`crate::gpt`]), and map a
//! PARTUUID or a type GUID to the partition's /dev node (devtmpfs creates
//! the nodes; nobody creates /dev/disk/by-partuuid).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::RootSpec;
use crate::gpt;

/// Where the kernel lists block devices, and where their nodes are.
#[derive(Debug, Clone)]
pub struct BlockPaths {
    /// Normally /sys/class/block.
    pub sys_class_block: PathBuf,
    /// Normally /dev.
    pub dev: PathBuf,
}

impl Default for BlockPaths {
    fn default() -> Self {
        BlockPaths {
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
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
                let names: Vec<&str> = disk.partitions.iter().map(|(_, n)| n.as_str()).collect();
                seen.push(format!(
                    "{} (GPT, {} entries; kernel partitions: {})",
                    disk.name,
                    entries.len(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(" ")
                    }
                ));
                for entry in entries.iter().filter(|e| want(e)) {
                    if let Some((_, part)) =
                        disk.partitions.iter().find(|(n, _)| *n == entry.number)
                    {
                        return Ok(Found {
                            disk: disk.name.clone(),
                            device: paths.dev.join(part),
                        });
                    }
                }
            }
            Err(e) => seen.push(format!(
                "{} ({})",
                disk.name,
                berth_hostapi::error_chain::one_line(&e)
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
                    what: match spec {
                        RootSpec::PartUuid(u) => format!("PARTUUID={u}"),
                        RootSpec::Path(p) => p.clone(),
                    },
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
    use crate::gpt::tests::make_disk;
    use std::fs;

    /// A fake /sys/class/block + /dev with disk vda (esp vda1, root vda2)
    /// and an empty disk vdb.
    pub(crate) fn fake_machine(tmp: &Path) -> std::io::Result<BlockPaths> {
        let devices = tmp.join("sys/devices/virtio0/block");
        let class = tmp.join("sys/class/block");
        fs::create_dir_all(&class)?;
        fs::create_dir_all(tmp.join("dev"))?;
        for disk in ["vda", "vdb"] {
            fs::create_dir_all(devices.join(disk))?;
            std::os::unix::fs::symlink(devices.join(disk), class.join(disk))?;
        }
        for (n, part) in [(1, "vda1"), (2, "vda2")] {
            let dir = devices.join("vda").join(part);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("partition"), format!("{n}\n"))?;
            std::os::unix::fs::symlink(&dir, class.join(part))?;
        }
        fs::write(
            tmp.join("dev/vda"),
            make_disk(&[
                (gpt::ESP_TYPE, "11111111-2222-3333-4444-555555555555", "esp"),
                (
                    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
                    "6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab",
                    "root",
                ),
            ]),
        )?;
        fs::write(tmp.join("dev/vdb"), vec![0u8; 4096])?;
        Ok(BlockPaths {
            sys_class_block: class,
            dev: tmp.join("dev"),
        })
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
}
