//! The kernel command line: the keys berth-init reads from /proc/cmdline.
//!
//! | key | meaning |
//! |---|---|
//! | `root=PARTUUID=<uuid>` | the root partition, by GPT partition GUID (`root=/dev/…` also works) |
//! | no `root=`, or `root=gpt-auto` | the x86-64 root partition on the disk of the ESP the boot loader booted from (`LoaderDevicePartUUID`), as systemd's gpt-auto finds it |
//! | `rootfstype=` | its file-system type (default `ext4`) |
//! | `rootflags=` | its mount options |
//! | `ostree=/ostree/deploy/<os>/deploy/<csum>.<serial>` | the deployment (a symlink is resolved) |
//! | `berth.tree=<32 hex>` | without `ostree=`: the deployment whose tree carries this id in `/usr/lib/berth/tree-id` (a signed UKI's command line cannot name a deployment) |
//! | `berth.root_timeout=SECS` | how long to wait for the root partition (default 30) |
//! | `berth.debug` | emergency shell on failure; also `berth.debug=1` |
//! | `berth.fault=pid1-hang` | testing aid: PID 1 stops, see [`Fault`] |
//!
//! Everything else is ignored.

use std::time::Duration;

/// How the root partition is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// `root=PARTUUID=…`: the GPT unique partition GUID, lower case.
    PartUuid(String),
    /// `root=/dev/…`: a device node.
    Path(String),
    /// `root=gpt-auto`, or no `root=`: found by the Discoverable Partitions
    /// Specification ([`crate::blockdev::discover_root`]).
    GptAuto,
}

/// The key of the tree id argument, `berth.tree=<id>`. The other side is
/// `TREE_KARG` in sysroot/src/contract.rs (this crate does not depend on
/// the sysroot crate, nor does that one on berth-hostapi).
pub const TREE_KEY: &str = "berth.tree";

/// A fault to inject, for tests that need a PID 1 gone wrong: inert
/// unless `berth.fault=` names it on the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `pid1-hang`: once the host is ready, stage 2 stops its loop for
    /// good before it blesses the boot: no more reaping, control socket,
    /// deadline or watchdog keep-alive, as if PID 1 were stuck. Only the
    /// watchdog gets such a host back.
    Pid1Hang,
}

impl Fault {
    /// The fault a `berth.fault=` value names.
    pub fn parse(value: &str) -> Option<Fault> {
        match value {
            "pid1-hang" => Some(Fault::Pid1Hang),
            _ => None,
        }
    }
}

/// What berth-init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// The root partition: [`RootSpec::GptAuto`] when there is no
    /// `root=`, None when `root=` names something berth-init cannot find
    /// (e.g. `LABEL=`).
    pub root: Option<RootSpec>,
    /// Root file-system type.
    pub rootfstype: String,
    /// Root mount options.
    pub rootflags: String,
    /// The deployment path, relative to the physical root.
    pub ostree: Option<String>,
    /// `berth.tree=`: the deployment by its tree's id, as given (checked
    /// by stage 1); `ostree=` wins over it.
    pub tree: Option<String>,
    /// How long stage 1 waits for the root partition.
    pub root_timeout: Duration,
    /// `berth.debug`: emergency shell instead of a reboot on failure.
    pub debug: bool,
    /// `berth.fault=`: a fault to inject (tests only).
    pub fault: Option<Fault>,
}

/// The default wait for the root partition.
pub const DEFAULT_ROOT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            root: Some(RootSpec::GptAuto),
            rootfstype: "ext4".into(),
            rootflags: String::new(),
            ostree: None,
            tree: None,
            root_timeout: DEFAULT_ROOT_TIMEOUT,
            debug: false,
            fault: None,
        }
    }
}

/// Splits a command line into words, honouring double quotes as the kernel
/// does (`foo="a b"` is one word, `foo=a b`).
pub fn split(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn truthy(value: Option<&str>) -> bool {
    !matches!(value, Some("0" | "no" | "false" | "off"))
}

impl Cmdline {
    /// Parses the text of /proc/cmdline. Later keys win, as in the kernel.
    pub fn parse(text: &str) -> Cmdline {
        let mut out = Cmdline::default();
        for word in split(text) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("root", Some(v)) => {
                    out.root = if let Some(uuid) = v
                        .strip_prefix("PARTUUID=")
                        .or_else(|| v.strip_prefix("partuuid="))
                    {
                        Some(RootSpec::PartUuid(uuid.to_ascii_lowercase()))
                    } else if v == "gpt-auto" {
                        Some(RootSpec::GptAuto)
                    } else if v.starts_with('/') {
                        Some(RootSpec::Path(v.to_string()))
                    } else {
                        None
                    }
                }
                ("rootfstype", Some(v)) if !v.is_empty() => out.rootfstype = v.to_string(),
                ("rootflags", Some(v)) => out.rootflags = v.to_string(),
                ("ostree", Some(v)) if !v.is_empty() => out.ostree = Some(v.to_string()),
                (TREE_KEY, Some(v)) => out.tree = Some(v.to_string()),
                ("berth.root_timeout", Some(v)) => {
                    if let Ok(secs) = v.parse::<u64>() {
                        out.root_timeout = Duration::from_secs(secs);
                    }
                }
                ("berth.debug", v) => out.debug = truthy(v),
                ("berth.fault", Some(v)) => out.fault = Fault::parse(v),
                _ => {}
            }
        }
        out
    }

    /// Reads and parses /proc/cmdline (empty when unreadable).
    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_berth_keys() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=/x console=ttyS0 root=PARTUUID=6C1C0B3E-AAAA-4BBB-8CCC-0123456789AB rw \
             ostree=/ostree/deploy/berth/deploy/abc.0 berth.root_timeout=5 berth.debug panic=10\n",
        );
        assert_eq!(
            c.root,
            Some(RootSpec::PartUuid(
                "6c1c0b3e-aaaa-4bbb-8ccc-0123456789ab".into()
            ))
        );
        assert_eq!(
            c.ostree.as_deref(),
            Some("/ostree/deploy/berth/deploy/abc.0")
        );
        assert_eq!(c.root_timeout, Duration::from_secs(5));
        assert!(c.debug);
        assert_eq!(c.rootfstype, "ext4");
        assert_eq!(c.fault, None);
        assert_eq!(c.tree, None);
    }

    #[test]
    fn no_root_means_gpt_auto() {
        let c = Cmdline::parse("console=ttyS0 berth.tree=0123456789abcdef0123456789abcdef rw");
        assert_eq!(c.root, Some(RootSpec::GptAuto));
        assert_eq!(c.tree.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(c.ostree, None);
        assert_eq!(
            Cmdline::parse("root=PARTUUID=ab root=gpt-auto").root,
            Some(RootSpec::GptAuto)
        );
        // Checked by stage 1, not here.
        assert_eq!(Cmdline::parse("berth.tree=x").tree.as_deref(), Some("x"));
    }

    #[test]
    fn a_fault_is_injected_only_when_named() {
        let c = Cmdline::parse("root=/dev/vda2 berth.fault=pid1-hang");
        assert_eq!(c.fault, Some(Fault::Pid1Hang));
        for other in [
            "berth.fault",
            "berth.fault=",
            "berth.fault=nope",
            "pid1-hang",
        ] {
            assert_eq!(Cmdline::parse(other).fault, None, "{other}");
        }
    }

    #[test]
    fn defaults_and_odd_values() {
        let c = Cmdline::parse("root=LABEL=x berth.root_timeout=soon berth.debug=0");
        assert_eq!(c.root, None);
        assert_eq!(c.root_timeout, DEFAULT_ROOT_TIMEOUT);
        assert!(!c.debug);
        let c = Cmdline::parse("root=/dev/vda2 rootfstype=xfs rootflags=noatime");
        assert_eq!(c.root, Some(RootSpec::Path("/dev/vda2".into())));
        assert_eq!(
            (c.rootfstype.as_str(), c.rootflags.as_str()),
            ("xfs", "noatime")
        );
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            split(r#"a="b c" d  "e f"g"#),
            ["a=b c", "d", "e fg"].map(String::from)
        );
    }
}
