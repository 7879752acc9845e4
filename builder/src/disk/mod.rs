//! The disk image writer: a GPT disk with a FAT32 ESP and an ext4 root,
//! written without mounts, loop devices or root privileges beyond reading
//! the tree.
//!
//! The layout is data first ([`DiskLayout::plan`]); [`write_image`] then
//! applies it in one pass: `mke2fs -d` fills the root partition, `fatfs`
//! writes the ESP in user space, the `gpt` crate writes the partition
//! table. Every identifier and timestamp comes from [`DiskIds`], so the
//! same inputs give the same bytes.
//!
//! It does not decide what goes on the disk (the build pipeline and the
//! `berth-sysroot` crate do), nor boot it (`crate::run` does).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;

use crate::command::{self, CommandError};

mod esp;
mod ext4;
mod fat_dots;
pub mod layout;
mod table;
mod tree;

#[cfg(test)]
mod tests;

pub use layout::{Extent, PartType, PartitionPlan};
pub use tree::root_bytes_needed;

/// Every identifier written into an image. They derive from the build's
/// inputs so that two builds of the same inputs give the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    /// The GPT disk GUID.
    pub disk_guid: Uuid,
    /// The ESP's unique partition GUID.
    pub esp_part_guid: Uuid,
    /// The root partition's unique partition GUID (the kernel command line
    /// names the root by it: `root=PARTUUID=...`).
    pub root_part_guid: Uuid,
    /// The ext4 file-system UUID (also its directory hash seed).
    pub root_fs_uuid: Uuid,
    /// The FAT volume id (serial number) of the ESP.
    pub esp_volume_id: u32,
    /// Unix seconds used for every FAT timestamp, as `E2FSPROGS_FAKE_TIME`,
    /// and as the ctime/atime (and newest mtime) of every root inode.
    pub timestamp: i64,
}

#[cfg(test)]
impl DiskIds {
    /// Test ids: each is a slice of `sha256(seed || purpose)`, shaped as
    /// a random (v4) UUID. (Builds derive theirs in `crate::ids`.)
    pub(crate) fn derive(seed: &[u8], timestamp: i64) -> DiskIds {
        use sha2::{Digest, Sha256};
        let digest = |purpose: &str| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(seed);
            h.update(b"\0berth-disk-id\0");
            h.update(purpose.as_bytes());
            h.finalize().into()
        };
        let uuid = |purpose: &str| {
            let d = digest(purpose);
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&d[..16]);
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        };
        let vol = digest("esp-volume-id");
        DiskIds {
            disk_guid: uuid("disk"),
            esp_part_guid: uuid("esp-partition"),
            root_part_guid: uuid("root-partition"),
            root_fs_uuid: uuid("root-filesystem"),
            esp_volume_id: u32::from_le_bytes([vol[0], vol[1], vol[2], vol[3]]),
            timestamp,
        }
    }
}

/// The shape of a disk image: its size, its ESP's size and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Total size in bytes (a whole number of MiB).
    pub disk_size: u64,
    /// ESP size in bytes (whole MiB, within [`DiskLayout::ESP_SIZE_RANGE`]).
    pub esp_size: u64,
    /// Identifiers and the timestamp.
    pub ids: DiskIds,
}

/// The files of the ESP, as the boot contract lays them out.
pub use berth_sysroot::contract::{EspData, EspFile};

/// What [`write_image`] wrote, for the build's summary and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReport {
    /// Byte offset of the ESP.
    pub esp_offset: u64,
    /// Byte offset of the root partition.
    pub root_offset: u64,
    /// Size of the root partition in bytes.
    pub root_size: u64,
    /// The image's size as seen by `ls -l`.
    pub apparent_size: u64,
    /// Bytes the image really occupies on the build machine (it is sparse).
    pub allocated_size: u64,
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The sizes asked for do not make a valid disk.
    #[error("invalid disk layout: {reason}")]
    Layout {
        /// What is wrong.
        reason: String,
    },
    /// The root tree does not fit the root partition the disk leaves.
    #[error(
        "the root file system needs {} MiB but the disk leaves {} MiB for it",
        needed.div_ceil(layout::MIB),
        available / layout::MIB
    )]
    RootTooSmall {
        /// Bytes the root partition needs (an estimate, see [`root_bytes_needed`]).
        needed: u64,
        /// Bytes the layout leaves for it.
        available: u64,
    },
    /// The ESP files do not fit the ESP.
    #[error("the ESP files need {} KiB but the ESP has {} KiB free", needed.div_ceil(1024), available / 1024)]
    EspTooSmall {
        /// Bytes the files need, in whole clusters.
        needed: u64,
        /// Free bytes on the formatted ESP.
        available: u64,
    },
    /// An ESP path is not a plain relative path.
    #[error("ESP path {path:?} is invalid: {reason}")]
    EspPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A name in the root tree cannot be handed to debugfs.
    #[error("root tree path {path} contains a newline, which Berth cannot put in an image")]
    UnsupportedName {
        /// The offending path.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("creating", "reading the root tree at", ...).
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing an ESP file failed.
    #[error("writing {file} to the ESP of {}", image.display())]
    EspWrite {
        /// The ESP path.
        file: String,
        /// The image.
        image: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the partition table failed.
    #[error("writing the partition table of {}", path.display())]
    Gpt {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: gpt::GptError,
    },
    /// debugfs reported errors while fixing timestamps.
    #[error("setting root file-system timestamps in {} with debugfs: {messages}", path.display())]
    Debugfs {
        /// The image.
        path: PathBuf,
        /// What debugfs printed.
        messages: String,
    },
    /// An outside tool (mke2fs, debugfs, qemu-img, fallocate) failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl DiskError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
        let path = path.to_path_buf();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    }
}

/// The size in bytes of the root partition `layout` leaves, to compare
/// with [`root_bytes_needed`] before building; 0 when the layout itself
/// is invalid ([`DiskLayout::plan`] says why, and [`write_image`] fails
/// with that reason).
pub fn root_partition_size(layout: &DiskLayout) -> u64 {
    layout.plan().map_or(0, |plan| plan.root.size)
}

/// Writes a raw, sparse disk image at `path` (created or truncated): the
/// GPT of `layout`, the ESP holding `esp`, and an ext4 root holding
/// `root_tree` (hard links, xattrs, owners and modes kept).
///
/// Fails with [`DiskError::RootTooSmall`] before writing anything when the
/// tree cannot fit. The caller writes to a temporary path and renames it,
/// so a failed build leaves no half image under the final name.
pub fn write_image(
    path: &Path,
    layout: &DiskLayout,
    esp: &[EspFile],
    root_tree: &Path,
) -> Result<DiskReport, DiskError> {
    let plan = layout.plan()?;
    esp::check_paths(esp)?;
    let tree = tree::scan(root_tree)?;
    let needed = tree.bytes_needed();
    if needed > plan.root.size {
        return Err(DiskError::RootTooSmall {
            needed,
            available: plan.root.size,
        });
    }

    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(DiskError::io("creating", path))?;
    file.set_len(layout.disk_size)
        .map_err(DiskError::io("sizing", path))?;
    // mke2fs runs first: it writes only inside the root partition, and the
    // file is still all holes, which `assume_storage_prezeroed` relies on.
    ext4::make_root(path, plan.root, &layout.ids, root_tree, &tree)?;
    esp::write_esp(&file, plan.esp, &layout.ids, esp, path)?;
    table::write_table(&file, layout.disk_size, &plan, &layout.ids).map_err(|source| {
        DiskError::Gpt {
            path: path.to_path_buf(),
            source,
        }
    })?;
    // fatfs and mke2fs write some all-zero blocks (FATs, bitmaps); give
    // them back so the image stays as small as its contents.
    command::run(
        "making the disk image sparse",
        Command::new("fallocate").arg("--dig-holes").arg(path),
    )?;
    file.sync_all().map_err(DiskError::io("syncing", path))?;

    let meta = std::fs::metadata(path).map_err(DiskError::io("inspecting", path))?;
    Ok(DiskReport {
        esp_offset: plan.esp.offset,
        root_offset: plan.root.offset,
        root_size: plan.root.size,
        apparent_size: meta.len(),
        allocated_size: meta.blocks() * 512,
    })
}

/// Converts a raw image to another format QEMU reads (`qcow2`), with
/// `qemu-img convert`; holes stay unallocated.
pub fn convert(raw: &Path, format_out: &Path, fmt: &str) -> Result<(), DiskError> {
    command::run(
        &format!("converting {} to {fmt}", raw.display()),
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt])
            .arg(raw)
            .arg(format_out),
    )?;
    Ok(())
}
