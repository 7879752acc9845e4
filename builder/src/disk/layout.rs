//! Where each partition goes: the pure arithmetic of the disk layout, and
//! the GPT type GUIDs Berth uses.
//!
//! Nothing here touches a file; `table.rs` writes what this computes.

use uuid::Uuid;

use super::{DiskError, DiskLayout};

/// One mebibyte: partitions start and end on multiples of it.
pub const MIB: u64 = 1 << 20;

/// The logical sector size of Berth images.
pub const SECTOR: u64 = 512;

/// Sectors GPT keeps at the end of the disk: 32 for the backup partition
/// entry array (128 entries of 128 bytes) and one for the backup header.
const GPT_BACKUP_SECTORS: u64 = 33;

/// The smallest root partition a layout may leave (room for the journal
/// and a little data); a real tree is checked with
/// [`root_bytes_needed`](super::root_bytes_needed).
const MIN_ROOT_SIZE: u64 = 16 * MIB;

/// A GPT partition type GUID from the Discoverable Partitions
/// Specification, so systemd tools and firmware recognise the partitions
/// without labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartType(pub Uuid);

impl PartType {
    /// EFI System Partition.
    pub const ESP: PartType = PartType(Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b));
    /// Root partition, x86-64.
    pub const ROOT_X86_64: PartType =
        PartType(Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709));

    /// The same GUID as the `gpt` crate's type.
    pub fn to_gpt(self) -> gpt::partition_types::Type {
        gpt::partition_types::Type {
            guid: self.0,
            os: gpt::partition_types::OperatingSystem::None,
        }
    }
}

/// The GPT partition name of the ESP.
pub const ESP_NAME: &str = "ESP";
/// The GPT partition name of the root partition (its DPS type, spelled out).
pub const ROOT_NAME: &str = "root-x86-64";

/// A byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }

    /// First sector.
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR
    }

    /// Last sector (inclusive, as GPT stores it).
    pub fn last_lba(&self) -> u64 {
        self.end() / SECTOR - 1
    }
}

/// Where the two partitions of a Berth disk go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Partition 1, the FAT32 ESP.
    pub esp: Extent,
    /// Partition 2, the ext4 root, filling the rest of the disk.
    pub root: Extent,
}

impl DiskLayout {
    /// The ESP size when a manifest says nothing.
    pub const DEFAULT_ESP_SIZE: u64 = 128 * MIB;
    /// The ESP sizes Berth supports: FAT32 needs at least 65525 clusters,
    /// and more than 1 GiB of kernels is a mistake.
    pub const ESP_SIZE_RANGE: std::ops::RangeInclusive<u64> = 64 * MIB..=1024 * MIB;

    /// Computes where each partition goes: the ESP at 1 MiB, the root
    /// right after it up to the last whole MiB before the backup GPT.
    ///
    /// Sizes must be whole MiB so every boundary is 1 MiB aligned.
    pub fn plan(&self) -> Result<PartitionPlan, DiskError> {
        let layout_err = |reason: String| Err(DiskError::Layout { reason });
        if self.disk_size % MIB != 0 {
            return layout_err(format!(
                "disk size {} bytes is not a whole number of MiB",
                self.disk_size
            ));
        }
        if self.esp_size % MIB != 0 || !Self::ESP_SIZE_RANGE.contains(&self.esp_size) {
            return layout_err(format!(
                "ESP size {} bytes is not a whole number of MiB between {} and {} MiB",
                self.esp_size,
                Self::ESP_SIZE_RANGE.start() / MIB,
                Self::ESP_SIZE_RANGE.end() / MIB
            ));
        }
        let esp = Extent {
            offset: MIB,
            size: self.esp_size,
        };
        // The backup GPT takes the last 33 sectors; round down to a MiB.
        let root_end = self.disk_size.saturating_sub(GPT_BACKUP_SECTORS * SECTOR) / MIB * MIB;
        let root_size = root_end.saturating_sub(esp.end());
        if root_size < MIN_ROOT_SIZE {
            return layout_err(format!(
                "disk size {} MiB leaves no room for a root partition after a {} MiB ESP \
                 (at least {} MiB more needed)",
                self.disk_size / MIB,
                self.esp_size / MIB,
                (MIN_ROOT_SIZE - root_size).div_ceil(MIB)
            ));
        }
        Ok(PartitionPlan {
            esp,
            root: Extent {
                offset: esp.end(),
                size: root_size,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskIds;

    fn layout(disk_size: u64, esp_size: u64) -> DiskLayout {
        DiskLayout {
            disk_size,
            esp_size,
            ids: DiskIds::derive(b"test", 1_700_000_000),
        }
    }

    #[test]
    fn default_layout_is_one_mib_aligned_and_fills_the_disk() {
        let plan = layout(2048 * MIB, DiskLayout::DEFAULT_ESP_SIZE)
            .plan()
            .unwrap();
        assert_eq!(
            plan.esp,
            Extent {
                offset: MIB,
                size: 128 * MIB
            }
        );
        assert_eq!(plan.root.offset, 129 * MIB);
        // The last MiB holds the backup GPT.
        assert_eq!(plan.root.end(), 2047 * MIB);
        assert_eq!(plan.esp.first_lba(), 2048);
        assert_eq!(plan.esp.last_lba(), 129 * 2048 - 1);
        assert_eq!(plan.root.first_lba(), 129 * 2048);
        for extent in [plan.esp, plan.root] {
            assert_eq!(extent.offset % MIB, 0);
            assert_eq!(extent.size % MIB, 0);
        }
    }

    #[test]
    fn root_stays_clear_of_the_backup_gpt() {
        let plan = layout(512 * MIB, 64 * MIB).plan().unwrap();
        let last_usable_lba = 512 * MIB / SECTOR - 1 - GPT_BACKUP_SECTORS;
        assert!(plan.root.last_lba() <= last_usable_lba);
    }

    #[test]
    fn sizes_must_be_whole_mib() {
        let err = layout(2048 * MIB + 512, 128 * MIB).plan().unwrap_err();
        assert!(
            err.to_string().contains("not a whole number of MiB"),
            "{err}"
        );
        let err = layout(2048 * MIB, 128 * MIB + 4096).plan().unwrap_err();
        assert!(err.to_string().contains("ESP size"), "{err}");
    }

    #[test]
    fn esp_size_is_bounded() {
        assert!(layout(4096 * MIB, 32 * MIB).plan().is_err());
        assert!(layout(4096 * MIB, 2048 * MIB).plan().is_err());
        assert!(layout(4096 * MIB, 64 * MIB).plan().is_ok());
        assert!(layout(4096 * MIB, 1024 * MIB).plan().is_ok());
    }

    #[test]
    fn too_small_disk_says_how_much_is_missing() {
        let err = layout(136 * MIB, 128 * MIB).plan().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no room for a root partition"), "{msg}");
        assert!(msg.contains("10 MiB more"), "{msg}");
    }

    #[test]
    fn type_guids_match_the_gpt_crate() {
        assert_eq!(PartType::ESP.to_gpt().guid, gpt::partition_types::EFI.guid);
        assert_eq!(
            PartType::ROOT_X86_64.to_gpt().guid,
            gpt::partition_types::LINUX_ROOT_X64.guid
        );
        assert_eq!(
            PartType::ESP.0.to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
    }
}
