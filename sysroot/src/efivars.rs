//! The EFI variables systemd-boot leaves for the OS (Boot Loader
//! Interface): which entry it booted and the boot-counting path.

use std::path::Path;

/// systemd-boot's vendor GUID for its variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// Decodes an efivarfs file: 4 bytes of attributes, then UTF-16LE text,
/// possibly NUL-terminated.
pub fn decode_utf16_var(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Reads systemd-boot variable `name` (e.g. `LoaderEntrySelected`) from
/// efivarfs mounted at `efivars`.
pub fn loader_var(efivars: &Path, name: &str) -> Option<String> {
    let raw = std::fs::read(efivars.join(format!("{name}-{LOADER_GUID}"))).ok()?;
    decode_utf16_var(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_utf16_with_attributes() {
        let mut raw = vec![6, 0, 0, 0];
        for u in "berth-a.0+2-1.conf".encode_utf16().chain([0]) {
            raw.extend(u.to_le_bytes());
        }
        assert_eq!(
            decode_utf16_var(&raw).as_deref(),
            Some("berth-a.0+2-1.conf")
        );
        assert_eq!(decode_utf16_var(&[1, 2]), None);
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(format!("LoaderEntrySelected-{LOADER_GUID}")),
            &raw,
        )
        .unwrap();
        assert_eq!(
            loader_var(t.path(), "LoaderEntrySelected").as_deref(),
            Some("berth-a.0+2-1.conf")
        );
    }
}
