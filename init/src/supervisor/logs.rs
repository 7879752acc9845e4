//! Service logs: splitting a pipe's bytes into lines, one log file per
//! service rotated by size (`<name>.log`, one old `<name>.log.1`), and
//! reading the tail back for the control socket.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Rotate a log when it would grow past this.
pub const MAX_LOG_BYTES: u64 = 1 << 20;
/// Longer lines are cut into pieces of this size.
pub const MAX_LINE: usize = 4096;

/// Turns a byte stream into lines (without the newline).
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes; returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.pending.push(b);
                if self.pending.len() >= MAX_LINE {
                    out.push(self.take());
                }
            }
        }
        out
    }

    /// The unfinished last line, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.pending)
            .trim_end_matches('\r')
            .to_string();
        self.pending.clear();
        line
    }
}

/// The log file of one service.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

/// The path of a service's log in `dir`.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl LogFile {
    /// A log at `dir/<name>.log` rotated at `max` bytes. The file is opened
    /// on first write (and again after an error), so a missing /var does
    /// not lose the service, only its file log.
    pub fn new(dir: &Path, name: &str, max: u64) -> LogFile {
        LogFile {
            path: log_path(dir, name),
            file: None,
            size: 0,
            max,
        }
    }

    fn open(&mut self) -> Option<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok()?;
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
        self.file.as_mut()
    }

    /// Appends one line, rotating first when it would pass the limit.
    pub fn write_line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.open().is_none() {
            return;
        }
        if self.size > 0 && self.size + len > self.max {
            self.file = None;
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            if self.open().is_none() {
                return;
            }
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let ok = self
            .file
            .as_mut()
            .is_some_and(|f| f.write_all(&buf).is_ok());
        if ok {
            self.size += len;
        } else {
            self.file = None;
        }
    }

    /// Closes the file (before the root file system goes read-only).
    pub fn close(&mut self) {
        self.file = None;
    }
}

/// The last `n` lines of a service's log (the rotated file first).
pub fn tail(dir: &Path, name: &str, n: usize) -> Vec<String> {
    let path = log_path(dir, name);
    let mut lines: Vec<String> = Vec::new();
    for p in [rotated(&path), path] {
        if let Ok(bytes) = std::fs::read(&p) {
            lines.extend(String::from_utf8_lossy(&bytes).lines().map(String::from));
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_capped() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"one\ntw"), ["one"]);
        assert_eq!(b.push(b"o\r\nthree"), ["two"]);
        assert_eq!(b.finish().as_deref(), Some("three"));
        assert_eq!(b.finish(), None);
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = b.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines.first().map(String::len), Some(MAX_LINE));
    }

    #[test]
    fn rotates_by_size_keeping_one_old_file() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let mut log = LogFile::new(tmp.path(), "svc", 100);
        for i in 0..25 {
            log.write_line(&format!("line {i:02}")); // 8 bytes + newline
        }
        let current = std::fs::read_to_string(tmp.path().join("svc.log"))?;
        let old = std::fs::read_to_string(tmp.path().join("svc.log.1"))?;
        assert!(current.len() <= 100 && old.len() <= 100);
        assert!(current.ends_with("line 24\n"), "{current}");
        assert!(!tmp.path().join("svc.log.2").exists());
        // Lines of 8 bytes, 12 fit in 100: .1 holds 12..=23, the log 24.
        assert_eq!(
            tail(tmp.path(), "svc", 3),
            ["line 22", "line 23", "line 24"]
        );
        assert_eq!(tail(tmp.path(), "svc", 1000).len(), 13);
        Ok(())
    }
}
