//! The guest's serial console as the tests see it: a thread drains QEMU's
//! stdout into a log file (raw bytes) and a shared buffer (plain text),
//! and waiters look for patterns in the text past a mark.
//!
//! Draining never stops while QEMU runs, so the guest never blocks on a
//! full pipe, whatever the test is doing.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth::run::console::PlainText;

/// What the reader thread has seen so far.
#[derive(Debug, Default)]
struct State {
    /// Plain text of everything read.
    text: String,
    /// QEMU closed its stdout (it exited).
    closed: bool,
    /// Why logging stopped, if it did.
    log_error: Option<String>,
}

/// The console text shared between the reader thread and the test.
#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

/// How a wait ended without finding its pattern.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// The deadline passed.
    Timeout,
    /// QEMU's stdout closed first.
    Closed,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the reader thread must not hide the console.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts draining `from` into the buffer and into `log`.
    pub(crate) fn spawn_reader(
        self: &Arc<Self>,
        mut from: impl Read + Send + 'static,
        log: &Path,
    ) -> std::io::Result<JoinHandle<()>> {
        let mut log = File::create(log)?;
        let console = Arc::clone(self);
        Ok(std::thread::spawn(move || {
            let mut plain = PlainText::default();
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let text = plain.feed(&buf[..n]);
                let mut state = console.lock();
                if state.log_error.is_none() {
                    state.log_error = log.write_all(&buf[..n]).err().map(|e| e.to_string());
                }
                state.text.push_str(&text);
                drop(state);
                console.changed.notify_all();
            }
            let rest = plain.finish();
            let mut state = console.lock();
            state.text.push_str(&rest);
            state.closed = true;
            drop(state);
            console.changed.notify_all();
        }))
    }

    /// Everything read so far, as plain text.
    pub(crate) fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// Why the log file is incomplete, if it is.
    pub(crate) fn log_error(&self) -> Option<String> {
        self.lock().log_error.clone()
    }

    /// Waits until `pattern` appears at or after byte `from` of the text;
    /// returns the byte offset just past the match.
    pub(crate) fn wait_for(
        &self,
        pattern: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize, WaitEnd> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(at) = state.text.get(from..).and_then(|t| t.find(pattern)) {
                return Ok(from + at + pattern.len());
            }
            if state.closed {
                return Err(WaitEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::Timeout);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The text between two offsets.
    pub(crate) fn slice(&self, from: usize, to: usize) -> String {
        self.lock()
            .text
            .get(from..to)
            .unwrap_or_default()
            .to_string()
    }

    /// The last `n` lines, for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let state = self.lock();
        let lines: Vec<&str> = state.text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_sees_text_written_later_and_reports_closing() {
        let console = Arc::new(Console::default());
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        let (reader, mut writer) = (File::from(reader), File::from(writer));
        let thread = console
            .spawn_reader(reader, &dir.path().join("log"))
            .unwrap();
        let writer_thread = std::thread::spawn(move || {
            writer.write_all(b"\x1b[2Jboot...\r\nlogin: ").unwrap();
            writer.write_all(b"\r\nberth-init: ready x\r\n").unwrap();
        });
        let end = console
            .wait_for("login: ", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(console.slice(0, end), "boot...\nlogin: ");
        let ready = console
            .wait_for("ready", end, Duration::from_secs(10))
            .unwrap();
        assert!(console.slice(end, ready).ends_with("berth-init: ready"));
        writer_thread.join().unwrap();
        // The writer is gone: the pipe closes and waiting says so.
        assert_eq!(
            console.wait_for("never", 0, Duration::from_secs(10)),
            Err(WaitEnd::Closed)
        );
        thread.join().unwrap();
        let log = std::fs::read(dir.path().join("log")).unwrap();
        assert!(
            log.starts_with(b"\x1b[2Jboot...\r\n"),
            "the log keeps raw bytes"
        );
    }

    #[test]
    fn waiting_times_out() {
        let console = Arc::new(Console::default());
        let started = Instant::now();
        let end = console.wait_for("x", 0, Duration::from_millis(100));
        assert_eq!(end, Err(WaitEnd::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
