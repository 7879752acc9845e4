//! EFI variables as efivarfs shows them: what the boot loader tells both
//! stages. Stage 1 reads `LoaderDevicePartUUID` to find the root disk
//! when the command line does not name it; stage 2 reads
//! `LoaderBootCountPath` to bless a boot on trial.
//!
//! Reading only: nothing here writes a variable.

use std::path::Path;

/// systemd-boot's vendor GUID for its variables (the Boot Loader
/// Interface); the stub uses it too.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";

/// Reads an EFI variable's data (without efivarfs' 4-byte attributes).
pub fn read_efivar(efivars: &Path, name: &str, guid: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(efivars.join(format!("{name}-{guid}"))).ok()?;
    bytes.get(4..).map(<[u8]>::to_vec)
}

/// Reads `bytes` as little-endian 16-bit values, UEFI's encoding of
/// strings and of lists such as `BootOrder` (a trailing odd byte is
/// ignored).
pub fn u16s_le(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes.chunks_exact(2).map(|c| {
        u16::from_le_bytes([
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
        ])
    })
}

/// Decodes a NUL-terminated UTF-16LE string.
pub fn utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = u16s_le(bytes).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// A systemd-boot variable (the Boot Loader Interface's vendor GUID) as
/// the string it holds; None when it is not there.
pub fn loader_var(efivars: &Path, name: &str) -> Option<String> {
    read_efivar(efivars, name, LOADER_GUID).map(|d| utf16le(&d))
}

/// The partition GUID of the ESP the boot loader was started from, lower
/// case: `LoaderDevicePartUUID`, which systemd-boot sets (upper case) and
/// the stub sets when the loader did not. None when it is not there or
/// empty.
pub fn loader_device_part_uuid(efivars: &Path) -> Option<String> {
    let uuid = loader_var(efivars, "LoaderDevicePartUUID")?
        .trim()
        .to_ascii_lowercase();
    (!uuid.is_empty()).then_some(uuid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes variable `name` as efivarfs shows it: attributes, then
    /// `value` as a NUL-terminated UTF-16LE string.
    pub(crate) fn write_efivar(dir: &Path, name: &str, value: &str) -> std::io::Result<()> {
        // NON_VOLATILE is absent: BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
        let mut bytes = vec![6u8, 0, 0, 0];
        for u in value.encode_utf16().chain([0]) {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}-{LOADER_GUID}")), bytes)
    }

    #[test]
    fn the_esp_guid_is_read_in_lower_case() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        assert_eq!(loader_device_part_uuid(tmp.path()), None);
        write_efivar(
            tmp.path(),
            "LoaderDevicePartUUID",
            "11111111-2222-3333-4444-55555555AAAA",
        )?;
        assert_eq!(
            loader_device_part_uuid(tmp.path()).as_deref(),
            Some("11111111-2222-3333-4444-55555555aaaa")
        );
        write_efivar(tmp.path(), "LoaderDevicePartUUID", "")?;
        assert_eq!(loader_device_part_uuid(tmp.path()), None);
        Ok(())
    }
}
