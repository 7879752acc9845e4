//! Growing the root to fill its disk, as Fedora CoreOS does at first boot:
//! one small image serves any disk size. At every boot, each step checks
//! whether it is still needed, so a boot interrupted half way finishes the
//! job at the next one:
//!
//! 1. the root partition, when it is the disk's last, grows in the GPT to
//!    the disk's end ([`crate::gpt::grow_last_partition`]);
//! 2. the kernel learns the new size of the mounted partition (BLKPG);
//! 3. the mounted ext4 grows online to the partition (EXT4_IOC_RESIZE_FS).
//!
//! A disk that has not grown costs one GPT read and one superblock read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::blockdev::{self, BlockPaths};
use crate::gpt;

/// Why the root could not be grown.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The root partition was not found.
    #[error("finding the root partition")]
    NotFound,
    /// Opening or reading a device or sysfs file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The partition table could not be read or written.
    #[error("growing the partition in the GPT of /dev/{disk}")]
    Gpt {
        /// The disk.
        disk: String,
        /// The cause.
        #[source]
        source: gpt::GptError,
    },
    /// The file system is not ext4 (nothing else is grown).
    #[error("the root file system is not ext4")]
    NotExt4,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GrowError {
    let what = what.into();
    move |source| GrowError::Io { what, source }
}

/// What [`grow`] did, for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The partition grew in the GPT: old and new size in bytes.
    pub partition: Option<(u64, u64)>,
    /// The file system grew: old and new size in bytes.
    pub filesystem: Option<(u64, u64)>,
}

/// A number from a sysfs file.
fn sysfs_number(path: &Path) -> Result<u64, GrowError> {
    let text =
        std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|_| GrowError::Io {
        what: format!("reading {}", path.display()),
        source: std::io::Error::other(format!("not a number: {:?}", text.trim())),
    })
}

/// Size in blocks and block size of the ext4 file system on `device`, from
/// its superblock (1 KiB in): `s_blocks_count_lo`/`_hi`, `s_log_block_size`,
/// `s_magic`, and the 64-bit feature flag that makes `_hi` valid.
pub fn ext4_size<D: Read + Seek>(device: &mut D) -> std::io::Result<Option<(u64, u64)>> {
    let mut sb = [0u8; 1024];
    device.seek(SeekFrom::Start(1024))?;
    device.read_exact(&mut sb)?;
    let u32_at = |off: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(sb.get(off..off + 4).unwrap_or(&[0; 4]));
        u32::from_le_bytes(a)
    };
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != 0xEF53 {
        return Ok(None);
    }
    let incompat_64bit = u32_at(0x60) & 0x80 != 0;
    let hi = if incompat_64bit {
        u64::from(u32_at(0x150))
    } else {
        0
    };
    let blocks = (hi << 32) | u64::from(u32_at(0x4));
    let block_size = 1024u64 << u32_at(0x18).min(6);
    Ok(Some((blocks, block_size)))
}

/// Grows the root partition `found` and the ext4 mounted at `mount` to
/// fill the disk.
pub fn grow(
    paths: &BlockPaths,
    found: &blockdev::Found,
    mount: &Path,
) -> Result<Report, GrowError> {
    let part_name = found
        .device
        .file_name()
        .ok_or(GrowError::NotFound)?
        .to_string_lossy()
        .into_owned();
    let part_sys = paths.sys_class_block.join(&part_name);
    let number = u32::try_from(sysfs_number(&part_sys.join("partition"))?)
        .map_err(|_| GrowError::NotFound)?;
    let sector = blockdev::sector_size(paths, &found.disk);
    // sysfs sizes are in 512-byte units whatever the sector size.
    let disk_bytes = sysfs_number(&paths.sys_class_block.join(&found.disk).join("size"))? * 512;
    let disk_path = paths.dev.join(&found.disk);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(io_err(format!("opening {}", disk_path.display())))?;

    let mut report = Report::default();
    let grown = gpt::grow_last_partition(&mut disk, sector, disk_bytes / sector, number).map_err(
        |source| GrowError::Gpt {
            disk: found.disk.clone(),
            source,
        },
    )?;
    if let Some(g) = grown {
        report.partition = Some((
            (g.old_last_lba + 1 - g.first_lba) * sector,
            (g.new_last_lba + 1 - g.first_lba) * sector,
        ));
    }
    // The table may have grown at an earlier, interrupted boot: compare the
    // kernel's idea of the partition with the table's.
    let entry = gpt::read_partitions(&mut disk, sector)
        .map_err(|source| GrowError::Gpt {
            disk: found.disk.clone(),
            source,
        })?
        .into_iter()
        .find(|p| p.number == number)
        .ok_or(GrowError::NotFound)?;
    let table_bytes = (entry.last_lba + 1 - entry.first_lba) * sector;
    let kernel_bytes = sysfs_number(&part_sys.join("size"))? * 512;
    if kernel_bytes < table_bytes {
        crate::sys::ffi::resize_partition(&disk, number, entry.first_lba * sector, table_bytes)
            .map_err(io_err(format!(
                "telling the kernel /dev/{part_name} grew (BLKPG)"
            )))?;
    }

    let mut device =
        File::open(&found.device).map_err(io_err(format!("opening {}", found.device.display())))?;
    let (blocks, block_size) = ext4_size(&mut device)
        .map_err(io_err(format!(
            "reading the superblock of {}",
            found.device.display()
        )))?
        .ok_or(GrowError::NotExt4)?;
    let want = table_bytes / block_size;
    // Less than 1 MiB to gain is not worth a resize (and the builder
    // leaves the file system a little short of the partition's end).
    if want.saturating_sub(blocks) * block_size >= 1 << 20 {
        let dir = File::open(mount).map_err(io_err(format!("opening {}", mount.display())))?;
        crate::sys::ffi::ext4_resize(&dir, want).map_err(io_err(format!(
            "growing the ext4 on {} online",
            found.device.display()
        )))?;
        report.filesystem = Some((blocks * block_size, want * block_size));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_ext4_size_from_the_superblock() -> std::io::Result<()> {
        let mut img = vec![0u8; 4096];
        img[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        img[1024 + 0x4..1024 + 0x8].copy_from_slice(&262_144u32.to_le_bytes());
        img[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            ext4_size(&mut Cursor::new(img.clone()))?,
            Some((262_144, 4096))
        );
        // 64bit feature: the high word counts.
        img[1024 + 0x60] = 0x80;
        img[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            ext4_size(&mut Cursor::new(img.clone()))?,
            Some(((1 << 32) + 262_144, 4096))
        );
        img[1024 + 0x38] = 0;
        assert_eq!(ext4_size(&mut Cursor::new(img))?, None);
        Ok(())
    }
}
