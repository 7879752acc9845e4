//! A small GPT reader: the primary header and its partition entries, enough
//! to find a partition by its unique GUID (PARTUUID) or by its type GUID.
//!
//! Why our own: there is no udev (so no /dev/disk/by-partuuid) in the
//! initramfs or on the host, the kernel resolves `root=PARTUUID=` only for
//! its own root mount, and a full GPT crate is far more than reading 16 KiB.
//! It checks the header signature and both CRC32s; it does not fall back to
//! the backup header.

use std::io::{Read, Seek, SeekFrom};

/// The EFI System Partition type GUID.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The x86-64 root partition type GUID of the Discoverable Partitions
/// Specification.
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Attribute bit 63, "no-auto": the Discoverable Partitions Specification
/// says not to pick such a partition by its type.
pub const NO_AUTO: u64 = 1 << 63;

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (its slot in the entry array).
    pub number: u32,
    /// Type GUID, lower case.
    pub type_guid: String,
    /// Unique partition GUID (the PARTUUID), lower case.
    pub unique_guid: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// The attribute bits (e.g. [`NO_AUTO`]).
    pub attributes: u64,
    /// The partition name.
    pub name: String,
}

/// Why a disk's partition table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading the disk failed.
    #[error("reading the disk")]
    Io(#[from] std::io::Error),
    /// No GPT signature at LBA 1.
    #[error("no GPT header")]
    NoHeader,
    /// The header's fields make no sense.
    #[error("bad GPT header: {0}")]
    BadHeader(&'static str),
    /// A CRC32 did not match.
    #[error("GPT {0} checksum mismatch")]
    Checksum(&'static str),
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Formats a GUID stored in GPT's mixed-endian layout (the first three
/// fields little-endian) as lower-case text.
pub fn guid_to_string(b: &[u8]) -> String {
    let byte = |i: usize| b.get(i).copied().unwrap_or(0);
    let hex = |range: &[usize]| {
        range
            .iter()
            .map(|&i| format!("{:02x}", byte(i)))
            .collect::<String>()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(&[3, 2, 1, 0]),
        hex(&[5, 4]),
        hex(&[7, 6]),
        hex(&[8, 9]),
        hex(&[10, 11, 12, 13, 14, 15])
    )
}

/// CRC-32 (IEEE, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Reads the primary GPT of a disk with `sector`-byte logical blocks.
pub fn read_partitions<D: Read + Seek>(
    disk: &mut D,
    sector: u64,
) -> Result<Vec<Partition>, GptError> {
    let mut header = vec![0u8; sector.clamp(512, 4096) as usize];
    disk.seek(SeekFrom::Start(sector))?;
    disk.read_exact(&mut header)?;
    if header.get(0..8) != Some(b"EFI PART".as_slice()) {
        return Err(GptError::NoHeader);
    }
    let header_size = u32_at(&header, 12) as usize;
    if !(92..=header.len()).contains(&header_size) {
        return Err(GptError::BadHeader("header size"));
    }
    let mut check = header.get(..header_size).unwrap_or_default().to_vec();
    if let Some(field) = check.get_mut(16..20) {
        field.fill(0);
    }
    if crc32(&check) != u32_at(&header, 16) {
        return Err(GptError::Checksum("header"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(GptError::BadHeader("entry size or count"));
    }
    let mut entries = vec![0u8; entry_size * count as usize];
    disk.seek(SeekFrom::Start(entries_lba.saturating_mul(sector)))?;
    disk.read_exact(&mut entries)?;
    if crc32(&entries) != u32_at(&header, 88) {
        return Err(GptError::Checksum("partition entries"));
    }
    let mut out = Vec::new();
    for (i, entry) in entries.chunks_exact(entry_size).enumerate() {
        let type_bytes = entry.get(0..16).unwrap_or_default();
        if type_bytes.iter().all(|&b| b == 0) {
            continue;
        }
        out.push(Partition {
            number: i as u32 + 1,
            type_guid: guid_to_string(type_bytes),
            unique_guid: guid_to_string(entry.get(16..32).unwrap_or_default()),
            first_lba: u64_at(entry, 32),
            last_lba: u64_at(entry, 40),
            attributes: u64_at(entry, 48),
            name: crate::efivars::utf16le(entry.get(56..128).unwrap_or_default()),
        });
    }
    Ok(out)
}

/// A partition grown by [`grow_last_partition`]: its number and its new
/// extent in LBAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// 1-based partition number.
    pub number: u32,
    /// First LBA (unchanged).
    pub first_lba: u64,
    /// The old last LBA.
    pub old_last_lba: u64,
    /// The new last LBA (inclusive).
    pub new_last_lba: u64,
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Sets a header's CRC32 field over its first `header_size` bytes.
fn seal_header(h: &mut [u8], header_size: usize) {
    put_u32(h, 16, 0);
    let crc = crc32(h.get(..header_size).unwrap_or_default());
    put_u32(h, 16, crc);
}

/// Grows partition `number` to the end of a disk of `total_lbas` sectors
/// (aligned down to 1 MiB), when it is the last partition on the disk and
/// the disk has grown by at least 1 MiB past it. Moves the backup GPT to
/// the disk's new end. Returns `None` when there is nothing to do.
///
/// Why by hand: [`read_partitions`] already parses the table, and growing
/// one entry only rewrites three header fields, two CRCs and the backup
/// copy; a GPT crate would add far more than that to PID 1.
///
/// Write order, so that a power cut leaves a readable table at every
/// instant: the new backup (entries, then header) past the old end, which
/// nothing references yet, synced; then the primary entries and header
/// (the one sector that switches over), synced. The kernel's view of the
/// partition is not changed here (BLKPG does that).
pub fn grow_last_partition(
    disk: &mut std::fs::File,
    sector: u64,
    total_lbas: u64,
    number: u32,
) -> Result<Option<Grown>, GptError> {
    use std::io::Write;
    let sector_len = sector.clamp(512, 4096) as usize;
    let mut header = vec![0u8; sector_len];
    disk.seek(SeekFrom::Start(sector))?;
    disk.read_exact(&mut header)?;
    let parts = read_partitions(disk, sector)?;
    let header_size = u32_at(&header, 12) as usize;
    let count = u32_at(&header, 80) as u64;
    let entry_size = u32_at(&header, 84) as u64;
    let entries_lba = u64_at(&header, 72);
    let Some(part) = parts.iter().find(|p| p.number == number) else {
        return Err(GptError::BadHeader("no such partition"));
    };
    if parts.iter().any(|p| p.last_lba > part.last_lba) {
        return Ok(None); // not the last one: nothing can grow into the space
    }
    let entries_bytes = count * entry_size;
    let entries_lbas = entries_bytes.div_ceil(sector);
    let Some(backup_entries_lba) = total_lbas.checked_sub(1 + entries_lbas) else {
        return Err(GptError::BadHeader("disk smaller than its partition table"));
    };
    let align = (1 << 20) / sector;
    let new_last = (backup_entries_lba / align * align).saturating_sub(1);
    if new_last < part.last_lba.saturating_add(align) {
        return Ok(None);
    }

    let mut entries = vec![0u8; entries_bytes as usize];
    disk.seek(SeekFrom::Start(entries_lba * sector))?;
    disk.read_exact(&mut entries)?;
    let entry_off = (u64::from(number) - 1) * entry_size;
    put_u64(&mut entries, entry_off as usize + 40, new_last);
    let entries_crc = crc32(&entries);

    let old_backup_lba = u64_at(&header, 32);
    put_u64(&mut header, 32, total_lbas - 1); // alternate LBA
    put_u64(&mut header, 48, backup_entries_lba - 1); // last usable LBA
    put_u32(&mut header, 88, entries_crc);
    let mut backup = header.clone();
    seal_header(&mut header, header_size);
    put_u64(&mut backup, 24, total_lbas - 1); // my LBA
    put_u64(&mut backup, 32, 1); // alternate LBA
    put_u64(&mut backup, 72, backup_entries_lba);
    seal_header(&mut backup, header_size);

    disk.seek(SeekFrom::Start(backup_entries_lba * sector))?;
    disk.write_all(&entries)?;
    disk.seek(SeekFrom::Start((total_lbas - 1) * sector))?;
    disk.write_all(&backup)?;
    disk.sync_data()?;
    disk.seek(SeekFrom::Start(entries_lba * sector))?;
    disk.write_all(&entries)?;
    disk.seek(SeekFrom::Start(sector))?;
    disk.write_all(&header)?;
    disk.sync_data()?;
    // The old backup header now lies inside the grown partition; clear it
    // so that no tool mistakes it for a table.
    if old_backup_lba > 1 && old_backup_lba < total_lbas - 1 {
        disk.seek(SeekFrom::Start(old_backup_lba * sector))?;
        disk.write_all(&vec![0u8; sector_len])?;
        disk.sync_data()?;
    }
    Ok(Some(Grown {
        number,
        first_lba: part.first_lba,
        old_last_lba: part.last_lba,
        new_last_lba: new_last,
    }))
}

/// Encodes a text GUID in GPT's mixed-endian layout (the first three
/// fields little-endian), as GPT entries and UEFI device paths hold it.
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'-')
        .collect::<Vec<u8>>()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or("00"), 16).unwrap_or(0))
        .collect();
    let mut out = [0u8; 16];
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    for (dst, src) in out.iter_mut().zip(order) {
        *dst = hex.get(src).copied().unwrap_or(0);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A 1 MiB disk image with a GPT holding `parts` (type, unique, name).
    pub(crate) fn make_disk(parts: &[(&str, &str, &str)]) -> Vec<u8> {
        let with_attributes: Vec<_> = parts.iter().map(|&(t, u, n)| (t, u, n, 0)).collect();
        make_disk_with_attributes(&with_attributes)
    }

    /// [`make_disk`] with each entry's attribute bits.
    pub(crate) fn make_disk_with_attributes(parts: &[(&str, &str, &str, u64)]) -> Vec<u8> {
        let mut disk = vec![0u8; 1 << 20];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (ty, uniq, name, attributes)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[48..56].copy_from_slice(&attributes.to_le_bytes());
            e[0..16].copy_from_slice(&guid_bytes(ty));
            e[16..32].copy_from_slice(&guid_bytes(uniq));
            e[32..40].copy_from_slice(&(2048u64 + i as u64 * 100).to_le_bytes());
            e[40..48].copy_from_slice(&(2147u64 + i as u64 * 100).to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk[512..604].copy_from_slice(&h);
        disk[1024..1024 + entries.len()].copy_from_slice(&entries);
        disk
    }

    #[test]
    fn reads_entries_and_guids() -> Result<(), GptError> {
        let disk = make_disk_with_attributes(&[
            (ESP_TYPE, "11111111-2222-3333-4444-555555555555", "esp", 0),
            (
                ROOT_X86_64_TYPE,
                "6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab",
                "root",
                NO_AUTO | 1,
            ),
        ]);
        let parts = read_partitions(&mut Cursor::new(disk), 512)?;
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts.get(1),
            Some(&Partition {
                number: 2,
                type_guid: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".into(),
                unique_guid: "6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab".into(),
                first_lba: 2148,
                last_lba: 2247,
                attributes: NO_AUTO | 1,
                name: "root".into(),
            })
        );
        assert_eq!(parts.first().map(|p| p.type_guid.as_str()), Some(ESP_TYPE));
        assert_eq!(parts.first().map(|p| p.attributes), Some(0));
        Ok(())
    }

    #[test]
    fn rejects_corruption_and_non_gpt() {
        let mut disk = make_disk(&[(ESP_TYPE, "11111111-2222-3333-4444-555555555555", "esp")]);
        disk[1024 + 20] ^= 0xff;
        assert!(matches!(
            read_partitions(&mut Cursor::new(disk), 512),
            Err(GptError::Checksum("partition entries"))
        ));
        assert!(matches!(
            read_partitions(&mut Cursor::new(vec![0u8; 8192]), 512),
            Err(GptError::NoHeader)
        ));
    }

    /// Runs a partitioning tool; `None` when it is not installed.
    fn tool(program: &str, args: &[&str], input: &str) -> Option<String> {
        use std::io::Write;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{program} {args:?}: {text}");
        Some(text)
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup_table() -> Result<(), GptError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.img");
        let p = path.to_str().unwrap_or_default();
        std::fs::File::create(&path)?.set_len(64 << 20)?;
        // A disk as `berth build` lays it out (ESP, then root), written by
        // util-linux, checked afterwards by gdisk: independent tools.
        let layout = "label: gpt\nsize=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\ntype=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n";
        if tool("sfdisk", &["-q", p], layout).is_none() {
            eprintln!("skipped: sfdisk is not installed");
            return Ok(());
        }
        let before = read_partitions(&mut std::fs::File::open(&path)?, 512)?;
        let root = before.get(1).cloned().ok_or(GptError::NoHeader)?;

        // Same size: nothing to do.
        let mut disk = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)?;
        assert_eq!(
            grow_last_partition(&mut disk, 512, (64 << 20) / 512, 2)?,
            None
        );

        disk.set_len(256 << 20)?;
        let total = (256 << 20) / 512;
        // The ESP is not the last partition: it cannot grow.
        assert_eq!(grow_last_partition(&mut disk, 512, total, 1)?, None);
        let grown = grow_last_partition(&mut disk, 512, total, 2)?;
        let expected_last = (total - 33) / 2048 * 2048 - 1;
        assert_eq!(
            grown,
            Some(Grown {
                number: 2,
                first_lba: root.first_lba,
                old_last_lba: root.last_lba,
                new_last_lba: expected_last,
            })
        );
        let after = read_partitions(&mut disk, 512)?;
        assert_eq!(after.get(1).map(|p| p.last_lba), Some(expected_last));
        assert_eq!(after.first(), before.first());
        // Done once: the second boot finds nothing to do.
        assert_eq!(grow_last_partition(&mut disk, 512, total, 2)?, None);
        drop(disk);
        if let Some(report) = tool("sgdisk", &["-v", p], "") {
            assert!(report.contains("No problems found"), "{report}");
        }
        Ok(())
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
