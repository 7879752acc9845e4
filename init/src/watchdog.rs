//! The watchdog: a timer outside PID 1 that resets the machine unless PID 1
//! keeps telling it that it is alive. Stage 2 arms it once the modules are
//! loaded; the supervisor's loop pets it on every turn (at most once a
//! second), so a PID 1 that stops making progress (a deadlock, a system
//! call that never returns) gets the machine reset. The reset is a fresh
//! boot through the firmware, so on a boot still on trial systemd-boot
//! counts it as a failed try, and a version that hangs PID 1 rolls back.
//!
//! The device: a real watchdog when the machine has one (QEMU's
//! `-device i6300esb`, whose module coldplug loads), else the kernel's
//! `softdog`, which the image always ships. softdog's default reaction is
//! an immediate `emergency_restart()` (its `soft_noboot` and `soft_panic`
//! parameters are left at 0). A clean shutdown keeps it armed and petted
//! to the last step; a reboot leaves it armed into reboot(2), so a reboot
//! that hangs still resets; a halt or power-off disarms it first (the
//! magic close, `V`), or the watchdog would restart a machine asked to
//! stay down.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Where the kernel lists watchdog devices.
pub const SYSFS_DIR: &str = "/sys/class/watchdog";
/// The kernel's software watchdog module.
pub const SOFTDOG_MODULE: &str = "softdog";
/// What softdog calls itself in sysfs (`identity`).
pub const SOFTDOG_IDENTITY: &str = "Software Watchdog";
/// At most one keep-alive per this long: the loop can turn thousands of
/// times a second under load.
pub const PET_INTERVAL: Duration = Duration::from_secs(1);

/// Why no watchdog could be armed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The kernel lists no watchdog device.
    #[error("no watchdog device in {0}")]
    NoDevice(PathBuf),
    /// The device node could not be opened.
    #[error("opening {path}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One watchdog device the kernel lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name, `watchdogN`: the node is `/dev/watchdogN`.
    pub name: String,
    /// What its driver calls it (`i6300ESB timer`, `Software Watchdog`).
    pub identity: String,
}

impl Device {
    /// Whether this is the kernel's software watchdog.
    pub fn is_software(&self) -> bool {
        self.identity == SOFTDOG_IDENTITY
    }
}

/// The device to use among those in `sysfs` (`/sys/class/watchdog`): the
/// first real one, by number, else softdog.
pub fn choose(sysfs: &Path) -> Option<Device> {
    let mut devices: Vec<(u32, Device)> = std::fs::read_dir(sysfs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_prefix("watchdog")?.parse::<u32>().ok()?;
            let identity = std::fs::read_to_string(entry.path().join("identity"))
                .unwrap_or_default()
                .trim()
                .to_string();
            Some((number, Device { name, identity }))
        })
        .collect();
    devices.sort_by_key(|(n, d)| (d.is_software(), *n));
    devices.into_iter().next().map(|(_, d)| d)
}

/// An armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    /// The device.
    pub device: Device,
    /// The timeout the driver took.
    pub timeout: Duration,
    last_pet: Instant,
}

impl Watchdog {
    /// Opens (which starts) the watchdog at `node` and sets its timeout
    /// to `timeout`, rounded up to whole seconds. A driver that refuses
    /// that timeout keeps its own, which [`Watchdog::timeout`] tells.
    pub fn open(node: &Path, device: Device, timeout: Duration) -> Result<Watchdog, WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(node)
            .map_err(|source| WatchdogError::Open {
                path: node.to_path_buf(),
                source,
            })?;
        let wanted = u32::try_from(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0))
            .unwrap_or(u32::MAX);
        let secs = crate::sys::ffi::watchdog_timeout(&file, Some(wanted))
            .or_else(|_| crate::sys::ffi::watchdog_timeout(&file, None))
            .unwrap_or(0);
        let mut dog = Watchdog {
            file,
            device,
            timeout: Duration::from_secs(u64::from(secs)),
            last_pet: Instant::now(),
        };
        dog.keepalive();
        Ok(dog)
    }

    /// Tells the watchdog PID 1 is alive, unless it was told less than
    /// [`PET_INTERVAL`] ago.
    pub fn pet(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_pet) >= PET_INTERVAL {
            self.keepalive();
            self.last_pet = now;
        }
    }

    fn keepalive(&mut self) {
        // Any byte but 'V' is a keep-alive (Documentation/watchdog/watchdog-api.rst).
        let _ = self.file.write(b"\0");
    }

    /// Stops the watchdog: the magic close ('V', then close). A kernel
    /// built with nowayout ignores it and keeps the timer running.
    pub fn disarm(mut self) {
        let _ = self.file.write(b"V");
    }
}

/// The one armed watchdog of PID 1.
static ARMED: Mutex<Option<Watchdog>> = Mutex::new(None);

fn with_armed(f: impl FnOnce(&mut Option<Watchdog>)) {
    match ARMED.try_lock() {
        Ok(mut w) => f(&mut w),
        Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
        // Only the panic hook could find it taken; it does not pet.
        Err(TryLockError::WouldBlock) => {}
    }
}

/// Arms the watchdog of this machine with `timeout` (see the module
/// docs); stage 2 loads softdog before. Returns what was armed.
pub fn arm(sysfs: &Path, dev: &Path, timeout: Duration) -> Result<String, WatchdogError> {
    let device = choose(sysfs).ok_or_else(|| WatchdogError::NoDevice(sysfs.to_path_buf()))?;
    let node = dev.join(&device.name);
    let dog = Watchdog::open(&node, device, timeout)?;
    let what = format!(
        "{} ({}), timeout {} s",
        dog.device.identity,
        node.display(),
        dog.timeout.as_secs()
    );
    with_armed(|w| *w = Some(dog));
    Ok(what)
}

/// Pets the armed watchdog, if any (rate-limited). Called where PID 1
/// makes progress: each turn of the supervisor's loop, the steps of the
/// boot and of the shutdown.
pub fn pet() {
    with_armed(|w| {
        if let Some(dog) = w.as_mut() {
            dog.pet(Instant::now());
        }
    });
}

/// Disarms the armed watchdog, if any (before a halt or a power-off).
pub fn disarm() {
    with_armed(|w| {
        if let Some(dog) = w.take() {
            dog.disarm();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(dir: &Path, name: &str, identity: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join(name))?;
        std::fs::write(dir.join(name).join("identity"), format!("{identity}\n"))
    }

    #[test]
    fn a_real_watchdog_is_preferred_to_softdog() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        assert_eq!(choose(tmp.path()), None);
        device(tmp.path(), "watchdog0", SOFTDOG_IDENTITY)?;
        assert_eq!(choose(tmp.path()).map(|d| d.name), Some("watchdog0".into()));
        device(tmp.path(), "watchdog2", "iTCO_wdt")?;
        device(tmp.path(), "watchdog1", "i6300ESB timer")?;
        std::fs::create_dir_all(tmp.path().join("not-a-watchdog"))?;
        let chosen = choose(tmp.path());
        assert_eq!(
            chosen,
            Some(Device {
                name: "watchdog1".into(),
                identity: "i6300ESB timer".into()
            })
        );
        Ok(())
    }

    #[test]
    fn pets_at_most_once_per_interval_and_disarms_with_the_magic_close()
    -> Result<(), Box<dyn std::error::Error>> {
        // A plain file stands in for the device node: it records what a
        // driver would read (the timeout ioctl fails on it and is ignored).
        let tmp = tempfile::tempdir()?;
        let node = tmp.path().join("watchdog0");
        std::fs::write(&node, "")?;
        let dev = Device {
            name: "watchdog0".into(),
            identity: SOFTDOG_IDENTITY.into(),
        };
        let mut dog = Watchdog::open(&node, dev, Duration::from_secs(15))?;
        let t0 = dog.last_pet;
        dog.pet(t0 + Duration::from_millis(10));
        dog.pet(t0 + Duration::from_millis(500));
        dog.pet(t0 + PET_INTERVAL);
        dog.pet(t0 + PET_INTERVAL + Duration::from_millis(1));
        dog.pet(t0 + PET_INTERVAL * 3);
        dog.disarm();
        assert_eq!(std::fs::read(&node)?, b"\0\0\0V");
        Ok(())
    }
}
