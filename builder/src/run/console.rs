//! Reading a guest's serial console: turning raw bytes (with firmware
//! escape sequences and `\r\n`) into plain text, splitting it into lines,
//! and spotting the ready line berth-init prints.

use berth_hostapi::READY_PREFIX;

/// The console text without terminal escape sequences, carriage returns
/// or other control characters (tabs and newlines stay).
pub fn plain_text(raw: &[u8]) -> String {
    let mut p = PlainText::default();
    let mut text = p.feed(raw);
    text.push_str(&p.finish());
    text
}

/// Where [`PlainText`] is inside an escape sequence.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [`, until a final byte (0x40..=0x7e).
    Csi,
    /// After `ESC (`, `ESC )` or `ESC #`: one more byte.
    OneMore,
}

/// Turns a console byte stream into plain text chunk by chunk: escape
/// sequences and multi-byte characters split across reads come out
/// right.
#[derive(Debug, Default)]
pub struct PlainText {
    escape: Escape,
    /// Bytes of a UTF-8 character not complete yet.
    partial: Vec<u8>,
}

impl PlainText {
    /// The plain text of `chunk`, holding back an incomplete character.
    pub fn feed(&mut self, chunk: &[u8]) -> String {
        let mut kept = std::mem::take(&mut self.partial);
        for &b in chunk {
            self.escape = match (self.escape, b) {
                (Escape::None, 0x1b) => Escape::Start,
                (Escape::None, b'\n' | b'\t') => {
                    kept.push(b);
                    Escape::None
                }
                (Escape::None, b) if b < 0x20 || b == 0x7f => Escape::None,
                (Escape::None, b) => {
                    kept.push(b);
                    Escape::None
                }
                (Escape::Start, b'[') => Escape::Csi,
                (Escape::Start, b'(' | b')' | b'#') => Escape::OneMore,
                (Escape::Start | Escape::OneMore, _) => Escape::None,
                (Escape::Csi, 0x40..=0x7e) => Escape::None,
                (Escape::Csi, _) => Escape::Csi,
            };
        }
        let valid = match std::str::from_utf8(&kept) {
            Ok(_) => kept.len(),
            // An incomplete character at the end waits for the next chunk.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => kept.len(),
        };
        self.partial = kept.split_off(valid);
        String::from_utf8_lossy(&kept).into_owned()
    }

    /// Whatever is held back (an incomplete character), at end of stream.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned()
    }
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
    fn split_escapes_and_characters_survive_chunking() {
        let raw = "a\x1b[01;02Hé\r\nb\x1b[0m".as_bytes();
        for cut in 0..raw.len() {
            let mut p = PlainText::default();
            let mut text = p.feed(&raw[..cut]);
            text.push_str(&p.feed(&raw[cut..]));
            text.push_str(&p.finish());
            assert_eq!(text, "aé\nb", "cut at {cut}");
        }
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
