//! Formats the ESP as FAT32 and writes its files, in user space with the
//! `fatfs` crate over a slice of the image file.
//!
//! Reproducible: the volume id comes from [`DiskIds`], and every directory
//! entry is stamped with [`DiskIds::timestamp`] instead of the clock.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use fscommon::{BufStream, StreamSlice};

use super::{DiskError, DiskIds, EspData, EspFile, Extent};

/// FAT32 needs at least this many clusters; with fewer, readers (and the
/// UEFI spec) take the volume for FAT16.
const FAT32_MIN_CLUSTERS: u64 = 65525;

/// Spare clusters above the minimum, against rounding in the formatter.
const CLUSTER_MARGIN: u64 = 64;

/// Sectors fatfs reserves before the FATs on FAT32.
const FAT32_RESERVED_SECTORS: u64 = 32;

/// The FAT volume label (11 bytes, space padded).
const VOLUME_LABEL: [u8; 11] = *b"ESP        ";

/// The largest cluster size (512 B to 32 KiB) that still gives a FAT32
/// volume of `volume_bytes` at least [`FAT32_MIN_CLUSTERS`] clusters:
/// larger clusters mean smaller FATs and faster firmware reads.
pub(crate) fn fat32_cluster_size(volume_bytes: u64) -> Option<u32> {
    (9..=15).rev().map(|shift| 1u32 << shift).find(|&cluster| {
        fat32_clusters_at_least(volume_bytes, cluster) >= FAT32_MIN_CLUSTERS + CLUSTER_MARGIN
    })
}

/// A lower bound on the clusters of a FAT32 volume: the FATs are sized
/// for every cluster the whole volume could hold.
fn fat32_clusters_at_least(volume_bytes: u64, cluster: u32) -> u64 {
    let sectors = volume_bytes / 512;
    let per_cluster = u64::from(cluster) / 512;
    let fat_sectors = ((sectors / per_cluster + 2) * 4).div_ceil(512);
    sectors.saturating_sub(FAT32_RESERVED_SECTORS + 2 * fat_sectors) / per_cluster
}

/// A calendar date and time in UTC, as FAT stores it (1980..=2107, two
/// second resolution), from Unix seconds; out-of-range times are clamped.
pub(crate) fn fat_datetime(unix: i64) -> fatfs::DateTime {
    // 1980-01-01 and 2107-12-31 23:59:58 UTC.
    let unix = unix.clamp(315_532_800, 4_354_819_198);
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every value is in range after the clamp above.
    let small = |v: i64| u16::try_from(v).unwrap_or(0);
    fatfs::DateTime {
        date: fatfs::Date {
            year: small(year),
            month: small(month),
            day: small(day),
        },
        time: fatfs::Time {
            hour: small(secs / 3600),
            min: small(secs / 60 % 60),
            sec: small(secs % 60),
            millis: 0,
        },
    }
}

/// Gives fatfs a fixed "now" so timestamps do not depend on the clock.
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// Checks every ESP path before anything is written: relative, no empty,
/// `.` or `..` components, and no two files that FAT (case-insensitive)
/// would take for the same.
pub(crate) fn check_paths(files: &[EspFile]) -> Result<(), DiskError> {
    let mut seen = HashSet::new();
    for f in files {
        let refuse = |reason| {
            Err(DiskError::EspPath {
                path: f.path.clone(),
                reason,
            })
        };
        if f.path.starts_with('/') {
            return refuse("it must be relative to the ESP root");
        }
        if f.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return refuse("it has an empty, `.` or `..` component");
        }
        if f.path.contains('\\') {
            return refuse("use `/` to separate components");
        }
        if !seen.insert(f.path.to_lowercase()) {
            return refuse("another ESP file has the same path (FAT ignores case)");
        }
    }
    Ok(())
}

/// Formats `extent` of the image as FAT32 and writes `files` into it.
pub(crate) fn write_esp(
    image: &File,
    extent: Extent,
    ids: &DiskIds,
    files: &[EspFile],
    image_path: &Path,
) -> Result<(), DiskError> {
    let io_err = |source: io::Error| DiskError::Io {
        action: "formatting the ESP of",
        path: image_path.to_path_buf(),
        source,
    };
    let cluster = fat32_cluster_size(extent.size).ok_or_else(|| DiskError::Layout {
        reason: format!("an ESP of {} bytes is too small for FAT32", extent.size),
    })?;
    let slice = StreamSlice::new(image, extent.offset, extent.end()).map_err(io_err)?;
    let mut disk = BufStream::new(slice);
    let sectors = u32::try_from(extent.size / 512).map_err(|_| DiskError::Layout {
        reason: format!("an ESP of {} bytes is too large for FAT32", extent.size),
    })?;
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(cluster)
            .total_sectors(sectors)
            .volume_id(ids.esp_volume_id)
            .volume_label(VOLUME_LABEL),
    )
    .map_err(io_err)?;

    // fatfs 0.3 keeps the time provider as `&'static`: leak one small
    // value per image written.
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_datetime(ids.timestamp))));
    let options = FsOptions::new()
        .time_provider(clock)
        .update_accessed_date(false);
    {
        let fs = FileSystem::new(&mut disk, options).map_err(io_err)?;
        if fs.fat_type() != FatType::Fat32 {
            return Err(DiskError::Layout {
                reason: format!(
                    "the formatted ESP came out as {:?}, not FAT32",
                    fs.fat_type()
                ),
            });
        }
        check_space(&fs, files, image_path)?;
        for f in files {
            write_file(&fs, f).map_err(|source| DiskError::EspWrite {
                file: f.path.clone(),
                image: image_path.to_path_buf(),
                source,
            })?;
        }
        fs.unmount().map_err(io_err)?;
    }
    super::fat_dots::fix_dot_entries(&mut disk).map_err(io_err)?;
    disk.flush().map_err(io_err)
}

/// Refuses files that would not fit, before writing any of them.
fn check_space<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    files: &[EspFile],
    image_path: &Path,
) -> Result<(), DiskError> {
    let cluster = u64::from(fs.cluster_size());
    let mut needed = 0;
    let mut dirs = HashSet::new();
    for f in files {
        let len = match &f.data {
            EspData::Bytes(b) => b.len() as u64,
            EspData::File(p) => std::fs::metadata(p)
                .map_err(DiskError::io("reading", p))?
                .len(),
        };
        needed += len.div_ceil(cluster) * cluster;
        let mut parent = f.path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            if dirs.insert(dir.to_lowercase()) {
                needed += cluster;
            }
            parent = dir;
        }
    }
    let stats = fs
        .stats()
        .map_err(DiskError::io("reading the ESP of", image_path))?;
    let available = u64::from(stats.free_clusters()) * cluster;
    if needed > available {
        return Err(DiskError::EspTooSmall { needed, available });
    }
    Ok(())
}

fn write_file<T: fatfs::ReadWriteSeek>(fs: &FileSystem<T>, f: &EspFile) -> io::Result<()> {
    let (parent, name) = match f.path.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, f.path.as_str()),
    };
    let mut dir = fs.root_dir();
    for component in parent.into_iter().flat_map(|p| p.split('/')) {
        dir = dir.create_dir(component)?;
    }
    let mut out = dir.create_file(name)?;
    out.truncate()?;
    match &f.data {
        EspData::Bytes(bytes) => out.write_all(bytes)?,
        EspData::File(path) => {
            let mut src = File::open(path).map_err(|e| {
                io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
            })?;
            io::copy(&mut src, &mut out)?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::MIB;

    #[test]
    fn cluster_size_gives_fat32_over_the_supported_range() {
        assert_eq!(fat32_cluster_size(64 * MIB), Some(512));
        assert_eq!(fat32_cluster_size(128 * MIB), Some(1024));
        assert_eq!(fat32_cluster_size(256 * MIB), Some(2048));
        assert_eq!(fat32_cluster_size(1024 * MIB), Some(8192));
        assert_eq!(fat32_cluster_size(32 * MIB), None);
        for mib in [64, 65, 100, 128, 200, 512, 777, 1024] {
            let cluster = fat32_cluster_size(mib * MIB).unwrap();
            assert!(fat32_clusters_at_least(mib * MIB, cluster) >= FAT32_MIN_CLUSTERS);
        }
    }

    #[test]
    fn formatted_volumes_really_are_fat32() {
        // The estimate above must agree with what fatfs builds.
        for mib in [64u64, 128, 1024] {
            let mut file = tempfile::tempfile().unwrap();
            file.set_len(mib * MIB).unwrap();
            let cluster = fat32_cluster_size(mib * MIB).unwrap();
            fatfs::format_volume(
                &mut file,
                FormatVolumeOptions::new()
                    .fat_type(FatType::Fat32)
                    .bytes_per_cluster(cluster),
            )
            .unwrap();
            use std::io::Seek as _;
            file.rewind().unwrap();
            let fs = FileSystem::new(&mut file, FsOptions::new()).unwrap();
            assert_eq!(fs.fat_type(), FatType::Fat32, "{mib} MiB");
            assert!(u64::from(fs.stats().unwrap().total_clusters()) >= FAT32_MIN_CLUSTERS);
        }
    }

    #[test]
    fn fat_datetime_is_utc_calendar_time() {
        // 2023-11-14 22:13:20 UTC
        let dt = fat_datetime(1_700_000_000);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2023, 11, 14));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (22, 13, 20));
        // Leap day.
        let dt = fat_datetime(951_782_400);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2000, 2, 29));
        // Before 1980 clamps to the FAT epoch.
        let dt = fat_datetime(0);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (1980, 1, 1));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (0, 0, 0));
        let dt = fat_datetime(i64::MAX);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2107, 12, 31));
    }

    #[test]
    fn bad_paths_are_refused() {
        let f = |p: &str| EspFile {
            path: p.into(),
            data: EspData::Bytes(vec![]),
        };
        assert!(check_paths(&[f("EFI/BOOT/BOOTX64.EFI"), f("loader/loader.conf")]).is_ok());
        for bad in ["/EFI/x", "a//b", "a/../b", "./a", "a\\b", "dir/"] {
            assert!(check_paths(&[f(bad)]).is_err(), "{bad}");
        }
        let err = check_paths(&[f("loader/a.conf"), f("LOADER/A.CONF")]).unwrap_err();
        assert!(err.to_string().contains("same path"), "{err}");
    }
}
