//! Writes the protective MBR and the GPT (primary and backup) of a
//! [`PartitionPlan`] with the `gpt` crate, using the GUIDs of
//! [`DiskIds`] instead of random ones.

use std::collections::BTreeMap;
use std::fs::File;

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::{GptConfig, GptError};

use super::DiskIds;
use super::layout::{ESP_NAME, PartType, PartitionPlan, ROOT_NAME, SECTOR};

/// The two partition entries: 1 = ESP, 2 = root.
pub(crate) fn partitions(plan: &PartitionPlan, ids: &DiskIds) -> BTreeMap<u32, Partition> {
    let entry = |ty: PartType, guid, extent: super::Extent, name: &str| Partition {
        part_type_guid: ty.to_gpt(),
        part_guid: guid,
        first_lba: extent.first_lba(),
        last_lba: extent.last_lba(),
        flags: 0,
        name: name.to_string(),
    };
    BTreeMap::from([
        (
            1,
            entry(PartType::ESP, ids.esp_part_guid, plan.esp, ESP_NAME),
        ),
        (
            2,
            entry(
                PartType::ROOT_X86_64,
                ids.root_part_guid,
                plan.root,
                ROOT_NAME,
            ),
        ),
    ])
}

/// Writes LBA 0 (protective MBR), the primary GPT after it and the backup
/// GPT at the end of the `disk_size`-byte image.
pub(crate) fn write_table(
    file: &File,
    disk_size: u64,
    plan: &PartitionPlan,
    ids: &DiskIds,
) -> Result<(), GptError> {
    let mut device = file;
    let mut disk = GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut device, Some(ids.disk_guid))?;
    disk.update_partitions(partitions(plan, ids))?;
    disk.write()?;
    // The protective partition covers the disk after LBA 0, capped at
    // what 32 bits can say.
    let sectors_after_mbr = u32::try_from(disk_size / SECTOR - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(sectors_after_mbr)
        .overwrite_lba0(&mut device)
        .map_err(|e| GptError::Io(std::io::Error::other(e.to_string())))?;
    Ok(())
}
