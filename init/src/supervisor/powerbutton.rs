//! The ACPI power button: a press (QEMU `system_powerdown`, a cloud
//! provider's "stop") means a clean power-off, as with SIGUSR2.
//!
//! The kernel reports it as KEY_POWER on an evdev device named
//! "Power Button" (modules `button` and `evdev`, loaded by coldplug).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// EV_KEY from linux/input-event-codes.h.
const EV_KEY: u16 = 1;
/// KEY_POWER.
const KEY_POWER: u16 = 116;
/// sizeof(struct input_event) on 64-bit: timeval (16), type, code, value.
pub const EVENT_SIZE: usize = 24;

/// Opens every input device named "Power Button" (non-blocking), found
/// through `sys_class_input` (/sys/class/input) and `dev` (/dev).
pub fn open_all(sys_class_input: &Path, dev: &Path) -> Vec<File> {
    let Ok(entries) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if label.trim() != "Power Button" {
            continue;
        }
        if let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dev.join("input").join(&name))
        {
            out.push(f);
        }
    }
    out
}

/// Whether `bytes` (whole input events) hold a KEY_POWER press.
pub fn pressed(bytes: &[u8]) -> bool {
    bytes.chunks_exact(EVENT_SIZE).any(|ev| {
        let u16_at = |o: usize| {
            ev.get(o..o + 2)
                .map(|b| {
                    u16::from_ne_bytes([
                        b.first().copied().unwrap_or(0),
                        b.get(1).copied().unwrap_or(0),
                    ])
                })
                .unwrap_or(0)
        };
        let value = ev
            .get(20..24)
            .map(|b| {
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                i32::from_ne_bytes(a)
            })
            .unwrap_or(0);
        u16_at(16) == EV_KEY && u16_at(18) == KEY_POWER && value == 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut ev = vec![0u8; 16];
        ev.extend_from_slice(&kind.to_ne_bytes());
        ev.extend_from_slice(&code.to_ne_bytes());
        ev.extend_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn key_power_press_is_recognised() {
        let mut bytes = event(0, 0, 0); // EV_SYN
        bytes.extend(event(EV_KEY, KEY_POWER, 0)); // release
        assert!(!pressed(&bytes));
        bytes.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(pressed(&bytes));
        assert!(!pressed(&event(EV_KEY, 30, 1)));
    }

    #[test]
    fn finds_devices_by_name() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        for (ev, name) in [("event0", "Power Button\n"), ("event1", "AT Keyboard\n")] {
            std::fs::create_dir_all(tmp.path().join("class").join(ev).join("device"))?;
            std::fs::write(tmp.path().join("class").join(ev).join("device/name"), name)?;
        }
        std::fs::create_dir_all(tmp.path().join("dev/input"))?;
        std::fs::write(tmp.path().join("dev/input/event0"), "")?;
        std::fs::write(tmp.path().join("dev/input/event1"), "")?;
        assert_eq!(
            open_all(&tmp.path().join("class"), &tmp.path().join("dev")).len(),
            1
        );
        Ok(())
    }
}
