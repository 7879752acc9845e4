//! Repairs the `.` and `..` entries that fatfs 0.3.6 writes in every new
//! directory. It puts a long-file-name entry before each of them
//! (`[LFN, ".", LFN, ".."]`), where FAT wants `.` and `..` in the first
//! two slots, and it points `..` of a top-level directory at the root's
//! cluster, where FAT wants 0. `fsck.vfat` rejects both.
//!
//! The fix runs once the volume is written and closed: walk every
//! directory from the root, move `.` and `..` to slots 0 and 1 and mark
//! the two spare slots deleted. Directory contents are otherwise untouched.

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const DELETED: u8 = 0xe5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

/// The FAT32 geometry needed to follow directories.
struct Geometry {
    fat_offset: u64,
    data_offset: u64,
    cluster_bytes: u64,
    root_cluster: u32,
    clusters: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Geometry {
    fn read(disk: &mut (impl Read + Seek)) -> io::Result<Geometry> {
        let mut boot = [0u8; 512];
        disk.seek(SeekFrom::Start(0))?;
        disk.read_exact(&mut boot)?;
        let bytes_per_sector = u64::from(u16_at(&boot, 11));
        let reserved = u64::from(u16_at(&boot, 14));
        let fats = u64::from(boot[16]);
        let fat_sectors = u64::from(u32_at(&boot, 36));
        let total_sectors = u64::from(u32_at(&boot, 32));
        let cluster_bytes = u64::from(boot[13]) * bytes_per_sector;
        let data_offset = (reserved + fats * fat_sectors) * bytes_per_sector;
        if cluster_bytes == 0 || fat_sectors == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a FAT32 boot sector",
            ));
        }
        let clusters =
            (total_sectors * bytes_per_sector).saturating_sub(data_offset) / cluster_bytes;
        Ok(Geometry {
            fat_offset: reserved * bytes_per_sector,
            data_offset,
            cluster_bytes,
            root_cluster: u32_at(&boot, 44),
            clusters: u32::try_from(clusters).unwrap_or(u32::MAX),
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_bytes
    }

    /// The clusters of the chain starting at `first`.
    fn chain(&self, disk: &mut (impl Read + Seek), first: u32) -> io::Result<Vec<u32>> {
        let mut chain = Vec::new();
        let mut cluster = first;
        while (2..self.clusters + 2).contains(&cluster) {
            if chain.len() > self.clusters as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "FAT chain loops",
                ));
            }
            chain.push(cluster);
            let mut entry = [0u8; 4];
            disk.seek(SeekFrom::Start(self.fat_offset + 4 * u64::from(cluster)))?;
            disk.read_exact(&mut entry)?;
            cluster = u32::from_le_bytes(entry) & 0x0fff_ffff;
        }
        Ok(chain)
    }
}

/// Fixes every directory of the FAT32 volume in `disk`.
pub(crate) fn fix_dot_entries(disk: &mut (impl Read + Write + Seek)) -> io::Result<()> {
    let geo = Geometry::read(disk)?;
    let mut pending = vec![(geo.root_cluster, None::<u32>)];
    while let Some((first, parent)) = pending.pop() {
        let chain = geo.chain(disk, first)?;
        let mut dir = vec![0u8; chain.len() * geo.cluster_bytes as usize];
        for (i, &c) in chain.iter().enumerate() {
            disk.seek(SeekFrom::Start(geo.cluster_offset(c)))?;
            disk.read_exact(
                &mut dir[i * geo.cluster_bytes as usize..][..geo.cluster_bytes as usize],
            )?;
        }
        if let Some(parent) = parent {
            let parent_field = if parent == geo.root_cluster {
                0
            } else {
                parent
            };
            if fix_slots(&mut dir, parent_field) {
                disk.seek(SeekFrom::Start(geo.cluster_offset(first)))?;
                disk.write_all(&dir[..4 * ENTRY])?;
            }
        }
        for entry in dir.chunks_exact(ENTRY) {
            match entry[0] {
                0 => break,
                DELETED => continue,
                _ => {}
            }
            let attr = entry[11];
            let name = &entry[..11];
            if attr == ATTR_LFN || attr & ATTR_VOLUME != 0 || attr & ATTR_DIR == 0 {
                continue;
            }
            if name == DOT || name == DOTDOT {
                continue;
            }
            let cluster = (u32::from(u16_at(entry, 20)) << 16) | u32::from(u16_at(entry, 26));
            pending.push((cluster, Some(first)));
        }
    }
    disk.flush()
}

/// Rewrites `[LFN, ".", LFN, ".."]` as `[".", "..", deleted, deleted]`
/// with `..` pointing at `parent_cluster`; false if the directory does
/// not start that way (nothing to fix).
fn fix_slots(dir: &mut [u8], parent_cluster: u32) -> bool {
    if dir.len() < 4 * ENTRY {
        return false;
    }
    let slot = |i: usize| &dir[i * ENTRY..(i + 1) * ENTRY];
    let broken = slot(0)[11] == ATTR_LFN
        && &slot(1)[..11] == DOT
        && slot(2)[11] == ATTR_LFN
        && &slot(3)[..11] == DOTDOT;
    if !broken {
        return false;
    }
    let dot: Vec<u8> = slot(1).to_vec();
    let mut dotdot: Vec<u8> = slot(3).to_vec();
    dotdot[20..22].copy_from_slice(&((parent_cluster >> 16) as u16).to_le_bytes());
    dotdot[26..28].copy_from_slice(&(parent_cluster as u16).to_le_bytes());
    dir[..ENTRY].copy_from_slice(&dot);
    dir[ENTRY..2 * ENTRY].copy_from_slice(&dotdot);
    for spare in dir[2 * ENTRY..4 * ENTRY].chunks_exact_mut(ENTRY) {
        spare.fill(0);
        spare[0] = DELETED;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8; 11], attr: u8, cluster: u32) -> Vec<u8> {
        let mut e = vec![0u8; ENTRY];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        e
    }

    #[test]
    fn dot_entries_move_to_the_front() {
        let mut dir = [
            entry(b"A.\0\0\0\xff\xff\xff\xff\xff\xff", ATTR_LFN, 0),
            entry(DOT, ATTR_DIR, 0x1_0005),
            entry(b"A.\0.\0\0\0\xff\xff\xff\xff", ATTR_LFN, 0),
            entry(DOTDOT, ATTR_DIR, 2),
            entry(b"BOOT       ", ATTR_DIR, 9),
        ]
        .concat();
        assert!(fix_slots(&mut dir, 0));
        assert_eq!(&dir[..11], DOT);
        assert_eq!(u16_at(&dir, 20), 1, "cluster high half kept");
        assert_eq!(&dir[32..43], DOTDOT);
        assert_eq!(
            (u16_at(&dir, 52), u16_at(&dir, 58)),
            (0, 0),
            ".. of a top-level dir is 0"
        );
        assert_eq!((dir[64], dir[96]), (DELETED, DELETED));
        assert_eq!(&dir[128..139], b"BOOT       ");
        // Already fixed: left alone.
        assert!(!fix_slots(&mut dir, 0));
    }
}
