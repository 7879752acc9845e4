//! Extra UEFI boot options that start systemd-boot again, so that a
//! verified host whose new image the firmware refuses finishes counting
//! its tries down within one power-on.
//!
//! When the firmware refuses a unified kernel image (a changed byte, no
//! signature, a key not in db), systemd-boot has already counted the try
//! and hands the error back to the firmware, which goes on with its next
//! boot option (UEFI 2.10, 3.1.1: "the boot manager tries the next
//! Boot#### in BootOrder"). OVMF has one option for the disk and then its
//! removable-media path: two tries, then it waits in its menu for a key,
//! while a new entry has three. So on a Secure Boot host berth-init keeps
//! [`RETRIES`] options of its own at the end of `BootOrder`, each naming
//! systemd-boot on this ESP by partition (a short-form `HD()` device path,
//! which firmware expands to the disk that holds it).
//!
//! Written by hand: a load option is a few dozen bytes
//! (`EFI_LOAD_OPTION`, UEFI 2.10 §3.1.3; device path nodes §10.3), and
//! no crate for it works without libefivar.

use std::path::Path;

use crate::gpt::{Partition, guid_bytes};

/// UEFI's vendor GUID for the global variables (`Boot####`, `BootOrder`).
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// How many options berth-init keeps: a new entry's tries
/// (`NEW_ENTRY_TRIES` in the boot contract) and one more.
pub const RETRIES: u16 = 4;
/// The first option number berth-init uses: Boot0B00 … Boot0B03, clear of
/// the low numbers firmware hands out.
const FIRST: u16 = 0x0b00;
/// The option's description, as a firmware boot menu shows it.
const DESCRIPTION: &str = "Berth (systemd-boot)";
/// systemd-boot on the ESP (the removable-media path the image installs).
const LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";
/// `EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS`.
const NV_BS_RT: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE`.
const ACTIVE: u32 = 0x1;

/// The bytes of `s` as UTF-16LE, NUL-terminated.
fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The device path of systemd-boot on partition `esp`:
/// `HD(n,GPT,guid,start,size)/File(\EFI\BOOT\BOOTX64.EFI)/End`.
pub fn device_path(esp: &Partition) -> Vec<u8> {
    let mut p = Vec::new();
    // Media device path, hard drive (type 4, subtype 1, 42 bytes).
    p.extend([4u8, 1, 42, 0]);
    p.extend(esp.number.to_le_bytes());
    p.extend(esp.first_lba.to_le_bytes());
    let size = esp.last_lba.saturating_sub(esp.first_lba) + 1;
    p.extend(size.to_le_bytes());
    p.extend(guid_bytes(&esp.unique_guid));
    // Partition format: GPT; signature type: GUID.
    p.extend([2u8, 2]);
    // Media device path, file path (type 4, subtype 4).
    let file = ucs2(LOADER);
    let len = u16::try_from(4 + file.len()).unwrap_or(u16::MAX);
    p.extend([4u8, 4]);
    p.extend(len.to_le_bytes());
    p.extend(file);
    // End of the whole device path.
    p.extend([0x7fu8, 0xff, 4, 0]);
    p
}

/// An `EFI_LOAD_OPTION` that starts systemd-boot on partition `esp`.
pub fn load_option(esp: &Partition) -> Vec<u8> {
    let path = device_path(esp);
    let mut o = Vec::new();
    o.extend(ACTIVE.to_le_bytes());
    o.extend(u16::try_from(path.len()).unwrap_or(u16::MAX).to_le_bytes());
    o.extend(ucs2(DESCRIPTION));
    o.extend(path);
    o
}

/// `BootOrder` with Berth's options at its end, once each: `current`
/// (the firmware's order) keeps its own options first, in its order.
pub fn boot_order(current: &[u16]) -> Vec<u16> {
    let ours: Vec<u16> = (FIRST..FIRST + RETRIES).collect();
    let mut order: Vec<u16> = current
        .iter()
        .copied()
        .filter(|n| !ours.contains(n))
        .collect();
    order.extend(ours);
    order
}

/// Reads a variable's data (after the attributes).
fn read(efivars: &Path, name: &str) -> Option<Vec<u8>> {
    crate::efivars::read_efivar(efivars, name, EFI_GLOBAL_GUID)
}

/// Writes a variable through efivarfs: attributes, then the data, in one
/// write (efivarfs takes a variable whole).
fn write(efivars: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut bytes = NV_BS_RT.to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(efivars.join(format!("{name}-{EFI_GLOBAL_GUID}")), bytes)
}

/// Whether the firmware booted with Secure Boot on (`SecureBoot` = 1).
pub fn secure_boot(efivars: &Path) -> bool {
    read(efivars, "SecureBoot").is_some_and(|v| v.first() == Some(&1))
}

/// Makes sure the firmware has Berth's [`RETRIES`] options for `esp` at the
/// end of `BootOrder`, writing only what differs (NVRAM wears). Returns
/// what it wrote, for the console.
pub fn ensure(efivars: &Path, esp: &Partition) -> std::io::Result<Vec<String>> {
    let mut wrote = Vec::new();
    let option = load_option(esp);
    for n in FIRST..FIRST + RETRIES {
        let name = format!("Boot{n:04X}");
        if read(efivars, &name).as_deref() != Some(option.as_slice()) {
            write(efivars, &name, &option)?;
            wrote.push(name);
        }
    }
    let current: Vec<u16> =
        crate::efivars::u16s_le(&read(efivars, "BootOrder").unwrap_or_default()).collect();
    let order = boot_order(&current);
    if order != current {
        let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        write(efivars, "BootOrder", &bytes)?;
        wrote.push("BootOrder".into());
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> Partition {
        Partition {
            number: 1,
            type_guid: crate::gpt::ESP_TYPE.into(),
            unique_guid: "74c638b9-4e98-49ca-9222-1c5d694d485c".into(),
            first_lba: 2048,
            last_lba: 264_191,
            attributes: 0,
            name: "esp".into(),
        }
    }

    #[test]
    fn the_device_path_names_the_partition_and_the_loader() {
        let p = device_path(&esp());
        // HD node: 42 bytes, partition 1, start 2048, size 262144 LBAs,
        // the GUID mixed-endian, GPT + GUID signature.
        assert_eq!(&p[..4], &[4, 1, 42, 0]);
        assert_eq!(&p[4..8], &1u32.to_le_bytes());
        assert_eq!(&p[8..16], &2048u64.to_le_bytes());
        assert_eq!(&p[16..24], &262_144u64.to_le_bytes());
        assert_eq!(&p[24..28], &[0xb9, 0x38, 0xc6, 0x74]);
        assert_eq!(&p[40..42], &[2, 2]);
        // File node: 4 + 2 × (21 characters + NUL).
        assert_eq!(&p[42..46], &[4, 4, 48, 0]);
        assert_eq!(
            crate::efivars::utf16le(&p[46..90]),
            "\\EFI\\BOOT\\BOOTX64.EFI"
        );
        assert_eq!(&p[90..], &[0x7f, 0xff, 4, 0]);
        let o = load_option(&esp());
        assert_eq!(&o[..4], &1u32.to_le_bytes());
        assert_eq!(&o[4..6], &94u16.to_le_bytes());
        assert_eq!(crate::efivars::utf16le(&o[6..]), DESCRIPTION);
        assert_eq!(&o[o.len() - 94..], p.as_slice());
    }

    #[test]
    fn berths_options_go_last_once_and_are_written_only_when_they_differ() -> std::io::Result<()> {
        assert_eq!(
            boot_order(&[1, 0x0b02, 0]),
            [1, 0, 0x0b00, 0x0b01, 0x0b02, 0x0b03]
        );
        let t = tempfile::tempdir()?;
        let efivars = t.path();
        std::fs::write(
            efivars.join(format!("BootOrder-{EFI_GLOBAL_GUID}")),
            [7, 0, 0, 0, 1, 0, 0, 0],
        )?;
        let wrote = ensure(efivars, &esp())?;
        assert_eq!(
            wrote,
            ["Boot0B00", "Boot0B01", "Boot0B02", "Boot0B03", "BootOrder"]
        );
        let order = std::fs::read(efivars.join(format!("BootOrder-{EFI_GLOBAL_GUID}")))?;
        assert_eq!(
            order,
            [7, 0, 0, 0, 1, 0, 0, 0, 0, 0xb, 1, 0xb, 2, 0xb, 3, 0xb]
        );
        let option = std::fs::read(efivars.join(format!("Boot0B02-{EFI_GLOBAL_GUID}")))?;
        assert_eq!(&option[..4], &[7, 0, 0, 0]);
        assert_eq!(&option[4..], load_option(&esp()).as_slice());
        // The next boot finds them in place and writes nothing.
        assert!(ensure(efivars, &esp())?.is_empty());
        Ok(())
    }
}
