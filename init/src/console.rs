//! Where berth-init's own messages and the services' prefixed output go:
//! the system console when PID 1, standard error otherwise.
//!
//! Writes are unbuffered whole lines, so that a message reaches the serial
//! console even if the next step hangs or reboots.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use crate::ffi;

/// The console device the kernel gives PID 1.
pub const CONSOLE_PATH: &str = "/dev/console";

static CONSOLE: OnceLock<File> = OnceLock::new();

/// Opens /dev/console for messages and, when standard input, output or
/// error are closed (an initramfs without a /dev/console node), puts the
/// console there too. Harmless to call more than once.
pub fn attach_console() {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE_PATH)
    else {
        return;
    };
    if !ffi::fd_is_open(0) {
        let _ = rustix::stdio::dup2_stdin(&file);
    }
    if !ffi::fd_is_open(1) {
        let _ = rustix::stdio::dup2_stdout(&file);
    }
    if !ffi::fd_is_open(2) {
        let _ = rustix::stdio::dup2_stderr(&file);
    }
    let _ = CONSOLE.set(file);
}

/// Writes one line (a newline is added) to the console, or to standard
/// error when no console was attached (the `supervise` mode).
pub fn write_line(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    match CONSOLE.get() {
        Some(mut file) => {
            let _ = file.write_all(&buf);
        }
        None => {
            let _ = std::io::stderr().write_all(&buf);
        }
    }
}

/// Waits until the console has sent everything written to it. Stopping a
/// shell that holds the console (the debug shell) hangs the console up,
/// and a hang-up discards output the serial driver has not sent yet: the
/// lines just written (the start of a shutdown) would never show.
/// Bounded (2 s), unlike tcdrain(3): PID 1 must not hang on a stuck line.
pub fn drain() {
    let Some(file) = CONSOLE.get() else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while matches!(ffi::tty_output_pending(file), Ok(n) if n > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
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

/// `say!` formats and writes one `berth-init:` line to the console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say(&format!($($arg)*))
    };
}

/// Formats an error with its chain of causes on one line:
/// `mounting /dev/vda2 on /sysroot: No such device`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // io::Error wrapped in io::Error repeats itself; print it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("mounting /dev/vda2 on /sysroot")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn chain_joins_causes() {
        let err = Outer {
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        };
        assert_eq!(
            chain(&err),
            "mounting /dev/vda2 on /sysroot: No such device (os error 19)"
        );
    }
}
