//! Identifiers of an image (disk and partition GUIDs, file-system UUID,
//! FAT volume id) derived from the commit they hold, so the same inputs
//! give the same bytes and different images never share a GUID.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A version-4-shaped UUID derived from `label` and `seed`.
pub fn derived_uuid(label: &str, seed: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"berth:")
        .chain_update(label.as_bytes())
        .chain_update([0])
        .chain_update(seed.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A 32-bit FAT volume id derived like [`derived_uuid`].
pub fn derived_u32(label: &str, seed: &str) -> u32 {
    let b = derived_uuid(label, seed).into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_well_formed() {
        let a = derived_uuid("root-part", "abc");
        assert_eq!(a, derived_uuid("root-part", "abc"));
        assert_ne!(a, derived_uuid("esp-part", "abc"));
        assert_ne!(a, derived_uuid("root-part", "abd"));
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(derived_u32("v", "s"), derived_u32("v", "s"));
    }
}
