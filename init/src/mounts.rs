//! The API file systems of stage 1 and stage 2 as tables, one function that
//! applies a table, and a /proc/self/mountinfo reader.
//!
//! Order matters: /proc first (the command line is read from it next), /dev
//! before /dev/pts and /dev/shm, /sys before /sys/fs/cgroup (kata agent's
//! `INIT_ROOTFS_MOUNTS`).

use std::path::{Path, PathBuf};

use crate::sys::{MountFlags, Sys};

/// One mount of a table: `mount -t fstype source target -o flags,data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// The source (device or a name for virtual file systems).
    pub source: &'static str,
    /// The mount point; created (mode 0755) when missing.
    pub target: &'static str,
    /// The file-system type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MountFlags,
    /// File-system options.
    pub data: &'static str,
}

const PROC: MountSpec = MountSpec {
    source: "proc",
    target: "/proc",
    fstype: "proc",
    flags: MountFlags::SECURE,
    data: "",
};
const SYS: MountSpec = MountSpec {
    source: "sysfs",
    target: "/sys",
    fstype: "sysfs",
    flags: MountFlags::SECURE,
    data: "",
};
const DEV: MountSpec = MountSpec {
    source: "devtmpfs",
    target: "/dev",
    fstype: "devtmpfs",
    flags: MountFlags::NOSUID,
    data: "mode=0755",
};
const RUN: MountSpec = MountSpec {
    source: "tmpfs",
    target: "/run",
    fstype: "tmpfs",
    flags: MountFlags::NOSUID_NODEV,
    data: "mode=0755",
};

/// Stage 1 (initramfs): what is needed to find and mount the root. /run is
/// a tmpfs that is moved into the new root, so /run/ostree-booted survives.
pub const STAGE1_MOUNTS: &[MountSpec] = &[PROC, SYS, DEV, RUN];

/// Stage 2 (booted deployment). Those already moved over from stage 1 are
/// skipped.
pub const STAGE2_MOUNTS: &[MountSpec] = &[
    PROC,
    SYS,
    DEV,
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID_NOEXEC,
        data: "gid=5,mode=620,ptmxmode=000",
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID_NODEV,
        data: "mode=1777",
    },
    RUN,
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID_NODEV,
        data: "mode=1777",
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: MountFlags::SECURE,
        data: "nsdelegate",
    },
];

/// securityfs, mounted in stage 2 (best effort, as systemd does): it
/// shows the kernel's lockdown level (`berthctl status`).
pub const SECURITYFS: MountSpec = MountSpec {
    source: "securityfs",
    target: "/sys/kernel/security",
    fstype: "securityfs",
    flags: MountFlags::SECURE,
    data: "",
};

/// efivarfs, mounted in stage 2 when the machine booted through UEFI.
pub const EFIVARFS: MountSpec = MountSpec {
    source: "efivarfs",
    target: "/sys/firmware/efi/efivars",
    fstype: "efivarfs",
    flags: MountFlags::SECURE,
    data: "",
};

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} {source} on {target}")]
pub struct MountError {
    /// The file-system type.
    pub fstype: String,
    /// The source.
    pub source: String,
    /// The mount point.
    pub target: PathBuf,
    /// The cause.
    #[source]
    pub cause: std::io::Error,
}

/// Mounts one entry under `root` (normally `/`), creating the mount point;
/// does nothing when something is already mounted there.
pub fn mount_one(sys: &dyn Sys, root: &Path, spec: &MountSpec) -> Result<(), MountError> {
    let target = root.join(spec.target.trim_start_matches('/'));
    if sys.is_mountpoint(&target) {
        return Ok(());
    }
    let err = |cause| MountError {
        fstype: spec.fstype.to_string(),
        source: spec.source.to_string(),
        target: target.clone(),
        cause,
    };
    sys.mkdir(&target, 0o755).map_err(err)?;
    sys.mount(spec.source, &target, spec.fstype, spec.flags, spec.data)
        .map_err(err)
}

/// Applies a table in order, stopping at the first failure.
pub fn mount_all(sys: &dyn Sys, root: &Path, table: &[MountSpec]) -> Result<(), MountError> {
    table.iter().try_for_each(|spec| mount_one(sys, root, spec))
}

/// One line of /proc/self/mountinfo: mount point, file-system type, source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where it is mounted.
    pub target: String,
    /// File-system type.
    pub fstype: String,
    /// Mount source (device).
    pub source: String,
}

/// Parses /proc/self/mountinfo (octal escapes such as `\040` decoded).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some(MountInfo {
                target: unescape(target),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// The mount points listed in /proc/self/mountinfo, in mount order.
pub fn mountinfo_targets(text: &str) -> Vec<String> {
    parse_mountinfo(text)
        .into_iter()
        .map(|m| m.target)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            let digits = bytes.get(i + 1..i + 4).unwrap_or_default();
            if digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn stage2_skips_what_stage1_moved_over() {
        let sys = FakeSys::new()
            .mounted("/proc")
            .mounted("/sys")
            .mounted("/dev")
            .mounted("/run");
        assert!(mount_all(&sys, Path::new("/"), STAGE2_MOUNTS).is_ok());
        assert_eq!(
            sys.calls(),
            [
                "mkdir /dev/pts 755",
                "mount -t devpts devpts /dev/pts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000",
                "mkdir /dev/shm 755",
                "mount -t tmpfs tmpfs /dev/shm -o nosuid,nodev,mode=1777",
                "mkdir /tmp 755",
                "mount -t tmpfs tmpfs /tmp -o nosuid,nodev,mode=1777",
                "mkdir /sys/fs/cgroup 755",
                "mount -t cgroup2 cgroup2 /sys/fs/cgroup -o nosuid,nodev,noexec,nsdelegate",
            ]
        );
    }

    #[test]
    fn a_failure_names_the_mount() {
        let sys = FakeSys::new().fail_on("mount -t sysfs");
        let err = mount_all(&sys, Path::new("/"), STAGE1_MOUNTS).err();
        let text = err
            .map(|e| berth_hostapi::error_chain::one_line(&e))
            .unwrap_or_default();
        assert!(text.starts_with("mounting sysfs sysfs on /sys: "), "{text}");
        // /proc was mounted, nothing after /sys was tried.
        assert_eq!(sys.calls().len(), 4);
    }

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let text = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n\
                    23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1k\n\
                    40 22 0:40 / /mnt/a\\040b rw - tmpfs tmpfs rw\n";
        let infos = parse_mountinfo(text);
        assert_eq!(infos.len(), 3);
        assert_eq!(
            infos.first(),
            Some(&MountInfo {
                target: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/vda2".into()
            })
        );
        assert_eq!(mountinfo_targets(text), ["/", "/dev", "/mnt/a b"]);
    }
}
