//! The end of a shutdown, after the services are stopped (busybox init's
//! order): TERM everything, wait, KILL what is left, sync, unmount (or at
//! least remount read-only, so the root file system is clean at the next
//! boot), sync, then reboot(2) from a forked child while PID 1 sleeps.

use std::path::Path;
use std::time::Duration;

use crate::mounts;
use crate::sys::{ShutdownAction, Sys};

/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// Mounts left in place: the kernel's API file systems and the roots, which
/// are remounted read-only instead.
fn keep_mounted(target: &str) -> bool {
    target == "/"
        || target == "/sysroot"
        || ["/proc", "/sys", "/dev", "/run"]
            .iter()
            .any(|api| target == *api || target.starts_with(&format!("{api}/")))
}

/// Everything up to (and including) the reboot call, given the text of
/// /proc/self/mountinfo. Errors are printed and skipped: a shutdown goes on.
pub fn shutdown_steps(sys: &dyn Sys, action: ShutdownAction, mountinfo: &str) {
    // The watchdog stays armed and petted between steps: a step that hangs
    // (a sync on a dead disk) gets the machine reset.
    crate::watchdog::pet();
    crate::say!("sending SIGTERM to all processes");
    let _ = sys.kill_all(libc::SIGTERM);
    if !sys.wait_all_children(TERM_GRACE) {
        crate::watchdog::pet();
        crate::say!("sending SIGKILL to all processes");
        let _ = sys.kill_all(libc::SIGKILL);
        sys.wait_all_children(Duration::from_secs(2));
    }
    crate::watchdog::pet();
    sys.sync();
    crate::watchdog::pet();
    let targets = mounts::mountinfo_targets(mountinfo);
    for target in targets.iter().rev() {
        if keep_mounted(target) {
            continue;
        }
        if let Err(e) = sys.unmount(Path::new(target), false) {
            // Busy: at least make it read-only.
            if sys.remount_bind(Path::new(target), true).is_err() {
                crate::say!("unmounting {target}: {e}");
            }
        }
    }
    for root in ["/sysroot", "/"] {
        if targets.iter().any(|t| t == root) {
            if let Err(e) = sys.remount_fs_readonly(Path::new(root)) {
                crate::say!("remounting {root} read-only: {e}");
            }
        }
    }
    sys.sync();
    crate::watchdog::pet();
    crate::say!(
        "{}",
        match action {
            ShutdownAction::Reboot => "rebooting",
            ShutdownAction::Halt => "halting",
            ShutdownAction::Poweroff => "powering off",
        }
    );
    // Let the last lines leave the serial port (bounded: a console that
    // never drains does not hold up the reboot).
    crate::console::drain();
    std::thread::sleep(Duration::from_millis(300));
    // A reboot keeps the watchdog armed, so one that hangs still resets;
    // a machine asked to stay down must not be restarted by it.
    if action != ShutdownAction::Reboot {
        crate::watchdog::disarm();
    }
    if let Err(e) = sys.reboot(action) {
        crate::say!("reboot(2): {e}");
    }
}

/// Shuts the machine down and never returns (PID 1 must not exit).
pub fn shutdown(sys: &dyn Sys, action: ShutdownAction) -> ! {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    shutdown_steps(sys, action, &mountinfo);
    sleep_forever()
}

/// PID 1's last state: reap whatever still exits, forever.
pub fn sleep_forever() -> ! {
    loop {
        let _ = crate::sys::reaper::reap_all();
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    const MOUNTINFO: &str = "\
20 1 8:2 /ostree/deploy/berth/deploy/abc.0 / rw - ext4 /dev/vda2 rw
21 20 0:5 / /dev rw - devtmpfs devtmpfs rw
22 20 0:20 / /proc rw - proc proc rw
23 20 0:21 / /sys rw - sysfs sysfs rw
24 20 0:22 / /run rw - tmpfs tmpfs rw
25 20 8:2 /ostree/deploy/berth/deploy/abc.0/usr /usr ro - ext4 /dev/vda2 rw
26 20 8:2 /ostree/deploy/berth/var /var rw - ext4 /dev/vda2 rw
27 20 8:2 / /sysroot rw - ext4 /dev/vda2 rw
28 23 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
29 21 0:24 / /dev/pts rw - devpts devpts rw
30 20 0:25 / /tmp rw - tmpfs tmpfs rw
31 20 8:1 / /efi rw - vfat /dev/vda1 rw
";

    #[test]
    fn kills_syncs_unmounts_and_remounts_roots_read_only() {
        let sys = FakeSys::new().fail_on("umount /var");
        shutdown_steps(&sys, ShutdownAction::Poweroff, MOUNTINFO);
        assert_eq!(
            sys.calls(),
            [
                "kill-all 15",
                "wait-children 5000ms",
                "sync",
                "umount /efi",
                "umount /tmp",
                "umount /var",
                "remount-bind /var ro",
                "umount /usr",
                "remount-ro /sysroot",
                "remount-ro /",
                "sync",
                "reboot Poweroff",
            ]
        );
    }
}
