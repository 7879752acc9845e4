//! The console's output queue: whole lines waiting for a console that
//! takes bytes only as fast as its line runs (115200 baud is about 11 KiB
//! a second), or not at all (flow-controlled off with XOFF, or a terminal
//! nobody reads).
//!
//! It holds a bounded number of bytes. A line that does not fit is dropped
//! and counted, never waited for: PID 1 must not stall on its console.
//! Services' lines (which their log files keep anyway) get a smaller share
//! than berth-init's own, so a chatty service cannot crowd out the ready
//! line or the shutdown messages.

use std::collections::VecDeque;
use std::io;

/// Who a line comes from, which decides how much of the queue it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// berth-init's own messages (`berth-init: …`, the ready line).
    Init,
    /// A service's output (`[name] …`), also in its log file.
    Service,
}

/// A service line is dropped when the queue would grow past this (about
/// 1.4 s of a 115200 baud line).
pub const SERVICE_LIMIT: usize = 16 * 1024;
/// One of berth-init's own lines is dropped when the queue would grow
/// past this.
pub const INIT_LIMIT: usize = 64 * 1024;

/// Bytes waiting for the console, and the count of lines dropped.
#[derive(Debug, Default)]
pub struct Queue {
    pending: VecDeque<u8>,
    /// Lines dropped since the last report.
    unreported: u64,
    /// Lines dropped since the start.
    total: u64,
}

impl Queue {
    /// An empty queue (`const`, for a static).
    pub const fn new() -> Queue {
        Queue {
            pending: VecDeque::new(),
            unreported: 0,
            total: 0,
        }
    }

    /// Queues `line` and a newline if they fit within `origin`'s limit;
    /// otherwise drops and counts it. Returns whether it was queued.
    pub fn push(&mut self, line: &str, origin: Origin) -> bool {
        let limit = match origin {
            Origin::Init => INIT_LIMIT,
            Origin::Service => SERVICE_LIMIT,
        };
        if self.pending.len() + line.len() + 1 > limit {
            self.count_dropped(1);
            return false;
        }
        self.pending.extend(line.as_bytes());
        self.pending.push_back(b'\n');
        true
    }

    /// Writes what `write` takes, until the queue is empty or `write` says
    /// it would block (or takes nothing). Any other error drops everything
    /// queued (counted by lines) and is returned: a console that fails once
    /// is not retried byte by byte.
    pub fn flush(&mut self, write: &mut dyn FnMut(&[u8]) -> io::Result<usize>) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match write(front) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.pending.drain(..n.min(self.pending.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    let lines = self.pending.iter().filter(|&&b| b == b'\n').count();
                    self.pending.clear();
                    self.count_dropped(lines as u64);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Once the queue has emptied after lines were dropped: the line that
    /// says how many (the count starts again from zero).
    pub fn take_report(&mut self) -> Option<String> {
        if !self.pending.is_empty() || self.unreported == 0 {
            return None;
        }
        let n = std::mem::take(&mut self.unreported);
        Some(format!(
            "berth-init: console: {n} line{} dropped ({} since boot): the console did not take them; service logs keep every line",
            if n == 1 { "" } else { "s" },
            self.total
        ))
    }

    /// Whether lines were dropped since the last report.
    pub fn dropping(&self) -> bool {
        self.unreported > 0
    }

    /// Whether nothing waits for the console.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes waiting for the console.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Lines dropped since the start.
    #[cfg(test)]
    pub fn total_dropped(&self) -> u64 {
        self.total
    }

    fn count_dropped(&mut self, lines: u64) {
        self.unreported += lines;
        self.total += lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_service_lines_before_its_own() {
        let mut q = Queue::new();
        let line = "x".repeat(1023); // 1 KiB with its newline
        let mut queued = 0;
        while q.push(&line, Origin::Service) {
            queued += 1;
        }
        assert_eq!(queued, SERVICE_LIMIT / 1024);
        assert_eq!(q.total_dropped(), 1);
        // berth-init's own lines still fit, up to their own limit.
        assert!(q.push("berth-init: ready image=x", Origin::Init));
        while q.push(&line, Origin::Init) {}
        assert!(q.len() <= INIT_LIMIT);
        assert_eq!(q.total_dropped(), 2);
        // No report while lines still wait.
        assert_eq!(q.take_report(), None);
    }

    #[test]
    fn flush_keeps_partial_lines_and_reports_once_drained() -> io::Result<()> {
        let mut q = Queue::new();
        assert!(q.push("one", Origin::Init));
        assert!(q.push("two", Origin::Service));
        // A console that takes 5 bytes, then would block.
        let mut out = Vec::new();
        let mut room = 5usize;
        q.flush(&mut |buf: &[u8]| {
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            room -= n;
            out.extend_from_slice(buf.get(..n).unwrap_or_default());
            Ok(n)
        })?;
        assert_eq!(out, b"one\nt");
        assert_eq!(q.len(), 3);
        q.count_dropped(2);
        assert_eq!(q.take_report(), None, "reported before the queue drained");
        q.flush(&mut |buf: &[u8]| {
            out.extend_from_slice(buf);
            Ok(buf.len())
        })?;
        assert_eq!(out, b"one\ntwo\n");
        let report = q.take_report().unwrap_or_default();
        assert!(
            report.starts_with("berth-init: console: 2 lines dropped (2 since boot)"),
            "{report}"
        );
        assert_eq!(q.take_report(), None);
        Ok(())
    }

    #[test]
    fn a_failing_console_drops_what_waits() {
        let mut q = Queue::new();
        q.push("a", Origin::Init);
        q.push("b", Origin::Init);
        let r = q.flush(&mut |_: &[u8]| Err(io::Error::from_raw_os_error(libc::EIO)));
        assert!(r.is_err());
        assert!(q.is_empty());
        assert_eq!(q.total_dropped(), 2);
    }
}
