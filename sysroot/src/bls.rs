//! Boot Loader Specification type #1 entries as systemd-boot reads them from
//! the ESP, and the boot-counting suffix of their file names
//! (`NAME+LEFT[-DONE].conf`, systemd's Automatic Boot Assessment).

use std::fmt::Write as _;

/// The contents of one `loader/entries/*.conf` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Menu title.
    pub title: String,
    /// OS version (shown, and a sort tie-breaker).
    pub version: String,
    /// Sort key: systemd-boot sorts entries by it (ascending) and picks the
    /// first good one, so it carries libostree's deployment order.
    pub sort_key: String,
    /// ESP path of a unified kernel image (`efi`), starting with '/':
    /// set for a Secure Boot image, whose kernel, initramfs and command
    /// line are one signed file; then `linux`, `initrd` and `options` are
    /// empty and not written.
    pub efi: String,
    /// ESP path of the kernel, starting with '/'.
    pub linux: String,
    /// ESP path of the initramfs, starting with '/'.
    pub initrd: String,
    /// Kernel command line.
    pub options: String,
}

impl BootEntry {
    /// The entry as file text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "title {}", self.title);
        let _ = writeln!(out, "version {}", self.version);
        let _ = writeln!(out, "sort-key {}", self.sort_key);
        if !self.efi.is_empty() {
            // A unified kernel image carries its own command line: an
            // `options` line would only be ignored under Secure Boot and
            // obeyed without it, two behaviours for one entry.
            let _ = writeln!(out, "efi {}", self.efi);
            return out;
        }
        let _ = writeln!(out, "linux {}", self.linux);
        let _ = writeln!(out, "initrd {}", self.initrd);
        let _ = writeln!(out, "options {}", self.options);
        out
    }

    /// Reads an entry back; unknown keys are ignored, as systemd-boot does.
    pub fn parse(text: &str) -> BootEntry {
        let mut e = BootEntry {
            title: String::new(),
            version: String::new(),
            sort_key: String::new(),
            efi: String::new(),
            linux: String::new(),
            initrd: String::new(),
            options: String::new(),
        };
        for line in text.lines() {
            let line = line.trim();
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim().to_string();
            match key {
                "title" => e.title = value,
                "version" => e.version = value,
                "sort-key" => e.sort_key = value,
                "efi" => e.efi = value,
                "linux" => e.linux = value,
                "initrd" => e.initrd = value,
                "options" => e.options = value,
                _ => {}
            }
        }
        e
    }
}

/// A boot entry file name split into its stem and boot counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The name without counter and `.conf`, e.g. `berth-abc.0`.
    pub stem: String,
    /// Tries left, when the entry is being counted.
    pub tries_left: Option<u32>,
    /// Tries done (0 when absent).
    pub tries_done: u32,
}

/// Where an entry stands in boot assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// No counter: known good (blessed, or never on trial).
    Good,
    /// Counter with tries left: on trial.
    Trial,
    /// Counter at zero: failed all its tries.
    Bad,
}

impl EntryName {
    /// Parses `STEM[+LEFT[-DONE]].conf`; `None` if it is not a `.conf` name.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let base = file_name.strip_suffix(".conf")?;
        if let Some((stem, counter)) = base.rsplit_once('+') {
            let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
            if let (Ok(left), Ok(done)) = (left.parse(), done.parse()) {
                return Some(EntryName {
                    stem: stem.to_string(),
                    tries_left: Some(left),
                    tries_done: done,
                });
            }
        }
        Some(EntryName {
            stem: base.to_string(),
            tries_left: None,
            tries_done: 0,
        })
    }

    /// A name for a new entry under trial with `tries` tries.
    pub fn on_trial(stem: &str, tries: u32) -> EntryName {
        EntryName {
            stem: stem.to_string(),
            tries_left: Some(tries),
            tries_done: 0,
        }
    }

    /// A name without counter.
    pub fn good(stem: &str) -> EntryName {
        EntryName {
            stem: stem.to_string(),
            tries_left: None,
            tries_done: 0,
        }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match (self.tries_left, self.tries_done) {
            (None, _) => format!("{}.conf", self.stem),
            (Some(left), 0) => format!("{}+{left}.conf", self.stem),
            (Some(left), done) => format!("{}+{left}-{done}.conf", self.stem),
        }
    }

    /// Good, on trial, or bad.
    pub fn assessment(&self) -> Assessment {
        match self.tries_left {
            None => Assessment::Good,
            Some(0) => Assessment::Bad,
            Some(_) => Assessment::Trial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let e = BootEntry {
            title: "Berth minimal 1.0.0".into(),
            version: "1.0.0".into(),
            sort_key: "berth-0".into(),
            efi: String::new(),
            linux: "/berth/abc.0/vmlinuz".into(),
            initrd: "/berth/abc.0/initramfs.img".into(),
            options: "root=PARTUUID=x ostree=/ostree/deploy/berth/deploy/abc.0".into(),
        };
        let text = e.render();
        assert!(text.starts_with("title Berth minimal 1.0.0\nversion 1.0.0\n"));
        assert_eq!(BootEntry::parse(&text), e);
    }

    #[test]
    fn a_unified_image_entry_has_no_kernel_initrd_or_options_lines() {
        let e = BootEntry {
            title: "Berth sb 1.0.0".into(),
            version: "1.0.0".into(),
            sort_key: "berth-000".into(),
            efi: "/berth/abc.0/berth.efi".into(),
            linux: String::new(),
            initrd: String::new(),
            options: String::new(),
        };
        let text = e.render();
        assert_eq!(
            text,
            "title Berth sb 1.0.0\nversion 1.0.0\nsort-key berth-000\nefi /berth/abc.0/berth.efi\n"
        );
        assert_eq!(BootEntry::parse(&text), e);
    }

    #[test]
    fn names_with_and_without_counters() {
        let n = EntryName::parse("berth-abc.0+3.conf").unwrap();
        assert_eq!(
            (n.stem.as_str(), n.tries_left, n.tries_done),
            ("berth-abc.0", Some(3), 0)
        );
        assert_eq!(n.assessment(), Assessment::Trial);
        let n = EntryName::parse("berth-abc.0+0-3.conf").unwrap();
        assert_eq!((n.tries_left, n.tries_done), (Some(0), 3));
        assert_eq!(n.assessment(), Assessment::Bad);
        assert_eq!(n.file_name(), "berth-abc.0+0-3.conf");
        let n = EntryName::parse("berth-abc.0.conf").unwrap();
        assert_eq!(n.assessment(), Assessment::Good);
        assert_eq!(n.file_name(), "berth-abc.0.conf");
        assert_eq!(EntryName::on_trial("x", 3).file_name(), "x+3.conf");
        assert!(EntryName::parse("loader.conf.bak").is_none());
        // A '+' that is not a counter stays in the stem.
        assert_eq!(EntryName::parse("a+b.conf").unwrap().stem, "a+b");
    }
}
