//! Reading a guest's serial console: turning raw bytes (with firmware
//! escape sequences and `\r\n`) into plain text, splitting it into lines,
//! and spotting the ready line berth-init prints.

use berth_hostapi::READY_PREFIX;

/// The console text without terminal escape sequences, carriage returns
/// or other control characters (tabs and newlines stay).
pub fn plain_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // Character-set selection and similar take one more char.
                Some('(' | ')' | '#') => {
                    chars.next();
                }
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether a console line is berth-init's ready line.
pub fn is_ready_line(line: &str) -> bool {
    line.trim_start().starts_with(READY_PREFIX)
}

/// Splits a byte stream into plain-text lines, across reads.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds `chunk` and returns the lines it completed, as plain text.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(plain_text(&line[..end]));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_carriage_returns_go() {
        assert_eq!(
            plain_text(b"\x1b[2J\x1b[01;01HBdsDxe: loading\r\n"),
            "BdsDxe: loading\n"
        );
        assert_eq!(plain_text(b"\x1b(Bok\x1b[0m\ttab\x07"), "ok\ttab");
    }

    #[test]
    fn ready_line_is_found_across_reads() {
        let mut s = LineSplitter::default();
        assert!(
            s.feed(b"[    3.2] eth0 up\r\nberth-init: re")
                .iter()
                .all(|l| !is_ready_line(l))
        );
        let lines = s.feed(b"ady image=minimal version=1\r\nlogin");
        assert_eq!(lines, ["berth-init: ready image=minimal version=1"]);
        assert!(is_ready_line(&lines[0]));
    }

    #[test]
    fn ready_must_start_the_line() {
        assert!(!is_ready_line("echo berth-init: ready"));
        assert!(is_ready_line(
            "\x1b[0mberth-init: ready".trim_start_matches("\x1b[0m")
        ));
        assert!(is_ready_line(&plain_text(b"\x1b[0mberth-init: ready x")));
    }
}
