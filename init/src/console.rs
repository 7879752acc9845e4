//! Where berth-init's own messages and the services' prefixed output go:
//! the system console when PID 1, standard error otherwise.
//!
//! The console is written without ever blocking: PID 1 writes whole lines
//! into a bounded [`queue`] and from there to a non-blocking descriptor of
//! /dev/console, as much as the console takes at once; the supervisor
//! polls the console for room and writes the rest later. A line that does
//! not fit in the queue is dropped and counted (service lines first: their
//! log files keep them), and a `berth-init: console: N lines dropped` line
//! follows once the console has taken everything again. So a console at
//! 115200 baud, one flow-controlled off (XOFF) or one nobody reads delays
//! nothing: not reaping, not the control socket, not the reboot of a boot
//! on trial.

pub mod queue;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use crate::sys::ffi;
use queue::{Origin, Queue};

/// The console device the kernel gives PID 1.
pub const CONSOLE_PATH: &str = "/dev/console";

/// How long [`drain`] waits at most for the console to send everything.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The non-blocking descriptor PID 1 writes the console through.
static CONSOLE: OnceLock<File> = OnceLock::new();
/// What waits for the console.
static QUEUE: Mutex<Queue> = Mutex::new(Queue::new());

/// Opens /dev/console for messages and, when standard input, output or
/// error are closed (an initramfs without a /dev/console node), puts the
/// console there too. Harmless to call more than once.
pub fn attach_console() {
    // Standard streams get a blocking descriptor of their own: O_NONBLOCK
    // belongs to an open file, and programs that inherit fds 0-2 (the
    // provisioning step) expect ordinary blocking writes.
    if let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE_PATH)
    {
        if !ffi::fd_is_open(0) {
            let _ = rustix::stdio::dup2_stdin(&file);
        }
        if !ffi::fd_is_open(1) {
            let _ = rustix::stdio::dup2_stdout(&file);
        }
        if !ffi::fd_is_open(2) {
            let _ = rustix::stdio::dup2_stderr(&file);
        }
    }
    let _ = attach_console_at(Path::new(CONSOLE_PATH));
}

/// Makes the terminal (or other file) at `path` the console: opened
/// write-only and non-blocking. Only the first call has an effect. For
/// /dev/console, and for `berth-init supervise --console` (tests).
pub fn attach_console_at(path: &Path) -> std::io::Result<()> {
    if CONSOLE.get().is_some() {
        return Ok(());
    }
    let _ = CONSOLE.set(open_nonblocking(path)?);
    Ok(())
}

/// Opens a terminal write-only and non-blocking, without making it the
/// controlling terminal.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// Runs `f` on the queue and the console. Without a console (`supervise`
/// without `--console`) it is not called: the caller writes to standard
/// error. The lock is only ever contended by the panic hook interrupting a
/// write on the same thread; then `f` gets a throw-away queue, so that
/// message is written straight away, or lost, but never waited for.
fn with_console<R>(f: impl FnOnce(&mut Queue, &File) -> R) -> Option<R> {
    let file = CONSOLE.get()?;
    match QUEUE.try_lock() {
        Ok(mut q) => Some(f(&mut q, file)),
        Err(TryLockError::Poisoned(p)) => Some(f(&mut p.into_inner(), file)),
        Err(TryLockError::WouldBlock) => Some(f(&mut Queue::new(), file)),
    }
}

/// Writes what the console takes now; a drop report follows once it has
/// taken everything after dropping lines.
fn flush_queue(q: &mut Queue, mut file: &File) {
    let mut write = |buf: &[u8]| file.write(buf);
    let _ = q.flush(&mut write);
    if let Some(report) = q.take_report() {
        kmsg_pid1(&report);
        q.push(&report, Origin::Init);
        let _ = q.flush(&mut write);
    }
}

/// Queues `line` for the console behind `q` and writes what the console
/// takes now; notes the start of a run of dropped lines in the kernel log.
fn write_to(q: &mut Queue, file: &File, line: &str, origin: Origin) {
    flush_queue(q, file);
    let was_dropping = q.dropping();
    if !q.push(line, origin) && !was_dropping {
        kmsg_pid1("berth-init: console: not keeping up; dropping lines until it drains");
    }
    flush_queue(q, file);
}

fn write_from(line: &str, origin: Origin) {
    if with_console(|q, file| write_to(q, file, line, origin)).is_none() {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let _ = std::io::stderr().write_all(&buf);
    }
}

/// Writes one of berth-init's own lines (a newline is added) to the
/// console, or to standard error when no console was attached (the
/// `supervise` mode). Never blocks; see the module docs.
pub fn write_line(line: &str) {
    write_from(line, Origin::Init);
}

/// Writes one line of a service's output; dropped first when the console
/// does not keep up (the service's log file has it).
pub fn write_service_line(line: &str) {
    write_from(line, Origin::Service);
}

/// Writes what waits, as far as the console takes it now. The supervisor
/// calls this on every turn of its loop.
pub fn flush() {
    let _ = with_console(flush_queue);
}

/// The console's descriptor while output waits for it, to poll for room.
pub fn pending_fd() -> Option<BorrowedFd<'static>> {
    let waiting = with_console(|q, _| !q.is_empty()).unwrap_or(false);
    if waiting {
        CONSOLE.get().map(|f| f.as_fd())
    } else {
        None
    }
}

/// Waits until the console has sent everything written to it: the queue,
/// then the terminal's own buffer (TIOCOUTQ). Stopping a shell that holds
/// the console (the debug shell) hangs the console up, and a hang-up
/// discards output the serial driver has not sent yet: the lines just
/// written (the start of a shutdown) would never show. Also called before
/// the final reboot(2). Bounded ([`DRAIN_TIMEOUT`]), unlike tcdrain(3):
/// PID 1 must not hang on a stuck line.
pub fn drain() {
    let Some(file) = CONSOLE.get() else {
        return;
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let queued = with_console(|q, f| {
            flush_queue(q, f);
            !q.is_empty()
        })
        .unwrap_or(false);
        let sending = matches!(ffi::tty_output_pending(file), Ok(n) if n > 0);
        if !(queued || sending) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `berth-init: <message>` to the console.
pub fn say(message: &str) {
    write_line(&format!("berth-init: {message}"));
}

/// Also records `line` in the kernel log at debug level (`<7>`), so it is
/// in `dmesg` without being printed on the console a second time.
pub fn kmsg(line: &str) {
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<7>{line}\n").as_bytes());
    }
}

/// [`kmsg`], only as PID 1: the kernel log is the host's, not a test's.
fn kmsg_pid1(line: &str) {
    if rustix::process::getpid().is_init() {
        kmsg(line);
    }
}

/// `say!` formats and writes one `berth-init:` line to the console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudo-terminal: its master, and the path of its slave.
    fn pty() -> std::io::Result<(std::os::fd::OwnedFd, std::path::PathBuf)> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        Ok((
            master,
            std::path::PathBuf::from(name.to_string_lossy().into_owned()),
        ))
    }

    /// Reads what the master has now (non-blocking), as text.
    fn read_now(master: &std::os::fd::OwnedFd) -> String {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut fds = [PollFd::new(master, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
                break;
            }
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => out.extend_from_slice(buf.get(..n).unwrap_or_default()),
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Writes `n` chatty service lines and then the ready line, as the
    /// supervisor would; returns how long that took.
    fn chatter(q: &mut Queue, file: &File, n: usize) -> Duration {
        let started = Instant::now();
        let line = format!("[chatty] {}", "y".repeat(200));
        for _ in 0..n {
            write_to(q, file, &line, Origin::Service);
        }
        write_to(q, file, READY, Origin::Init);
        started.elapsed()
    }

    const READY: &str = "berth-init: ready image=t version=1 services=1 boot=1.00s";

    /// Flushes `q` into the console while reading its master, until `what`
    /// shows; returns everything read.
    fn read_until(q: &mut Queue, file: &File, master: &std::os::fd::OwnedFd, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        while !seen.contains(what) && Instant::now() < deadline {
            flush_queue(q, file);
            seen.push_str(&read_now(master));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    }

    #[test]
    fn a_console_nobody_reads_drops_lines_instead_of_blocking() -> std::io::Result<()> {
        let (master, slave) = pty()?;
        let file = open_nonblocking(&slave)?;
        let mut q = Queue::new();
        // 1 MiB: far more than the terminal's buffer and the queue hold.
        let took = chatter(&mut q, &file, 5000);
        assert!(took < Duration::from_secs(5), "writing took {took:?}");
        assert!(q.total_dropped() > 1000, "{} dropped", q.total_dropped());
        // The reader comes back: the ready line was kept, then the report.
        let seen = read_until(&mut q, &file, &master, "lines dropped");
        assert!(
            seen.contains(READY),
            "no ready line in {} bytes",
            seen.len()
        );
        let report = format!(
            "berth-init: console: {n} lines dropped ({n} since boot)",
            n = q.total_dropped()
        );
        assert!(
            seen.contains(&report),
            "{report:?} not in the tail: {:?}",
            seen.get(seen.len().saturating_sub(300)..)
        );
        Ok(())
    }

    #[test]
    fn a_console_stopped_by_xoff_drops_lines_until_xon() -> std::io::Result<()> {
        use rustix::termios::{InputModes, OptionalActions, tcgetattr, tcsetattr};
        let (master, slave) = pty()?;
        let file = open_nonblocking(&slave)?;
        let mut t = tcgetattr(&file)?;
        t.input_modes |= InputModes::IXON;
        tcsetattr(&file, OptionalActions::Now, &t)?;
        // ^S from the other end, as a serial terminal sends it; the line
        // discipline takes it in the background: poll until the terminal
        // refuses a single byte although nothing is buffered.
        rustix::io::write(&master, b"\x13")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let _ = read_now(&master);
            match (&file).write(b".") {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                _ if Instant::now() >= deadline => {
                    return Err(std::io::Error::other("the terminal never stopped"));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let mut q = Queue::new();
        let took = chatter(&mut q, &file, 500);
        assert!(took < Duration::from_secs(5), "writing took {took:?}");
        assert!(q.total_dropped() > 0);
        let early = read_now(&master);
        assert!(
            !early.contains("chatty") && !early.contains("berth-init"),
            "a stopped terminal sent output: {early:?}"
        );
        // ^Q: output resumes, the ready line first, then the report.
        rustix::io::write(&master, b"\x11")?;
        let seen = read_until(&mut q, &file, &master, "lines dropped");
        assert!(seen.contains(READY), "{seen:?}");
        assert!(seen.contains("since boot"), "{seen:?}");
        Ok(())
    }
}
