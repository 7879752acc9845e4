//! The few system calls that rustix does not offer in the shape PID 1 needs,
//! each behind a small safe function. This is the only module with `unsafe`.
//!
//! What lives here: the signal mask and the signalfd, `fork` for the final
//! `reboot(2)`, `kill(-1, …)`, the interface-flags ioctl, the watchdog
//! timeout ioctls, the partition and
//! ext4 resize ioctls (growing the root), and the code that runs in a child
//! between `fork` and `exec`.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Signals that stay unblocked: the kernel raises them synchronously on a
/// fault, and blocking them would turn a crash into a hang (catatonit).
const KERNEL_SIGNALS: [libc::c_int; 7] = [
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

fn empty_sigset() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given a pointer to.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

/// Blocks every signal except the kernel's fault signals, so that signals
/// are only ever read from a signalfd and never interrupt PID 1.
pub fn block_all_signals() -> io::Result<()> {
    let mut set = empty_sigset();
    // SAFETY: `set` is an initialised sigset_t; sigfillset/sigdelset only
    // write inside it, and pthread_sigmask only reads it.
    let rc = unsafe {
        libc::sigfillset(&mut set);
        for sig in KERNEL_SIGNALS {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Opens a non-blocking, close-on-exec signalfd for `signals` (which must
/// already be blocked).
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let mut set = empty_sigset();
    // SAFETY: `set` is initialised; signalfd(-1, …) creates a new fd and only
    // reads the set.
    let fd = unsafe {
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to every process but PID 1 itself (`kill(-1, sig)`), the
/// last step of a shutdown. Never call this outside PID 1.
pub fn kill_all(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-1, signal) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Calls `reboot(2)` in a forked child, as busybox init does: if the kernel
/// ends the calling task (halt, power-off), it must not be PID 1, whose exit
/// is a kernel panic. The caller (PID 1) then sleeps forever.
pub fn reboot_in_child(cmd: rustix::system::RebootCommand) -> io::Result<()> {
    // SAFETY: the child only makes the reboot system call and `_exit`s, both
    // async-signal-safe, so forking a (possibly multi-threaded) process is
    // sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let _ = rustix::system::reboot(cmd);
        // SAFETY: _exit ends the child without running any Rust code.
        unsafe { libc::_exit(0) };
    }
    Ok(())
}

/// Bytes written to terminal `fd` that the driver has not sent yet
/// (TIOCOUTQ); an error when `fd` is not a terminal.
pub fn tty_output_pending(fd: &impl AsFd) -> io::Result<usize> {
    let mut pending: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer, which points to
    // `pending`; the descriptor is borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(pending).unwrap_or(0))
}

/// `WDIOC_SETTIMEOUT`, `_IOWR('W', 6, int)` of <linux/watchdog.h>.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// `WDIOC_GETTIMEOUT`, `_IOR('W', 7, int)`.
const WDIOC_GETTIMEOUT: libc::c_ulong = 0x8004_5707;

/// Asks the watchdog open as `fd` to reset the machine `secs` seconds
/// after the last keep-alive; returns the timeout the driver chose (it
/// may round). `None` asks only for the current one.
pub fn watchdog_timeout(fd: &impl AsFd, secs: Option<u32>) -> io::Result<u32> {
    let mut value = libc::c_int::try_from(secs.unwrap_or(0)).map_err(io::Error::other)?;
    let request = if secs.is_some() {
        WDIOC_SETTIMEOUT
    } else {
        WDIOC_GETTIMEOUT
    };
    // SAFETY: both requests read and/or write one int through the pointer,
    // which points to `value`; the descriptor is borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &mut value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(value).unwrap_or(0))
}

/// Whether file descriptor `fd` is open (PID 1 may start without 0, 1, 2
/// when the initramfs lacks /dev/console).
pub fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any integer is harmless: it fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Sets or clears IFF_UP on network interface `name` (SIOCGIFFLAGS then
/// SIOCSIFFLAGS), enough to bring up loopback and an interface that a
/// static configuration or a DHCP client then uses.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: a plain UDP socket; the fd is owned immediately below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain old data, all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`,
    // which lives for the whole call.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The identity a service runs as, resolved before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// What a child does between `fork` and `exec`, on top of what std already
/// does (dup2 of stdio, chdir): an empty signal mask, default dispositions,
/// and the fields below.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Start a new session (and so a new process group we can signal as one).
    pub new_session: bool,
    /// Make stdin (a terminal) the controlling terminal, for a shell.
    pub controlling_tty: bool,
    /// Switch to these credentials (only done when they differ from ours).
    pub credentials: Option<Credentials>,
}

/// Installs `setup` as the pre-exec step of `cmd`.
pub fn configure_child(cmd: &mut Command, setup: ChildSetup) {
    let groups: Vec<libc::gid_t> = setup
        .credentials
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();
    let empty = empty_sigset();
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // only async-signal-safe system calls (signal, sigprocmask, setsid,
    // ioctl, setgroups, setgid, setuid, close_range) and allocates nothing:
    // the group list and the empty set were built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Dispositions: nothing is ignored or caught in the new program.
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            // PID 1 blocks every signal; the service must not inherit that
            // (std does not reset the mask for us).
            if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::other("resetting the signal mask"));
            }
            if setup.new_session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if setup.controlling_tty {
                // Best effort: without it the shell still runs, only job
                // control (ctrl-c) does not work.
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            if let Some(c) = &setup.credentials {
                if libc::geteuid() != c.uid || libc::getegid() != c.gid {
                    if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setgid(c.gid) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setuid(c.uid) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            // Nothing PID 1 holds may leak into a service; std opens
            // everything close-on-exec already, this also covers inherited
            // descriptors. Old kernels without close_range: ignored.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        })
    };
}

/// `struct blkpg_partition` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `BLKPG`, `_IO(0x12, 105)`.
const BLKPG: libc::c_ulong = 0x1269;
/// `BLKPG_RESIZE_PARTITION`.
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// `EXT4_IOC_RESIZE_FS`, `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Tells the kernel that partition `number` of the disk open as `disk` now
/// spans `length` bytes from `start` (BLKPG_RESIZE_PARTITION), so that a
/// mounted partition can grow without rereading the whole table (which
/// the kernel refuses while any partition of the disk is in use).
pub fn resize_partition(
    disk: &std::fs::File,
    number: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(io::Error::other)?,
        length: i64::try_from(length).map_err(io::Error::other)?,
        pno: libc::c_int::try_from(number).map_err(io::Error::other)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: BLKPG reads one blkpg_ioctl_arg whose data points to one
    // blkpg_partition of `datalen` bytes; both live until the call returns.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Grows the mounted ext4 file system that `dir` (an open directory on it)
/// belongs to, online, to `blocks` file-system blocks (EXT4_IOC_RESIZE_FS,
/// what resize2fs asks of the kernel for a mounted file system).
pub fn ext4_resize(dir: &std::fs::File, blocks: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let count: u64 = blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 through the pointer, which
    // is valid for the call.
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &count) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_pending_is_an_error_off_a_terminal_and_zero_on_an_idle_one() -> io::Result<()> {
        let file = tempfile::tempfile()?;
        assert!(tty_output_pending(&file).is_err());
        // A pseudo-terminal nobody reads from: nothing written, nothing pending.
        if let Ok(master) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ptmx")
        {
            assert_eq!(tty_output_pending(&master).ok(), Some(0));
        }
        Ok(())
    }
}
