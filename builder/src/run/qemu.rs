//! The QEMU command line for booting a Berth image, as a value: build a
//! [`QemuConfig`], get its argv. Pure and unit-tested; `berth run` and the
//! qemu-tests harness both use it so they boot images the same way.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// The fw_cfg name under which the guest finds its provisioning document.
pub const FW_CFG_CONFIG: &str = "opt/org.berth/config";

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl AccelKind {
    /// `-accel` value.
    pub fn name(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }

    /// The CPU model that goes with it.
    pub fn cpu(self) -> &'static str {
        match self {
            AccelKind::Kvm => "host",
            AccelKind::Tcg => "max",
        }
    }
}

/// The on-disk format of an image, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl DiskFormat {
    /// `format=` value.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// Recognises qcow2 by its magic (`QFI\xfb`); anything else is raw.
    pub fn from_header(header: &[u8]) -> DiskFormat {
        if header.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// An interactive terminal: serial and monitor multiplexed on stdio
    /// (Ctrl-A X quits, Ctrl-A C switches to the monitor).
    Terminal,
    /// Pipes (tests, logs): serial only on stdin/stdout, no monitor.
    Pipe,
}

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootPolicy {
    /// The guest reboots in the same QEMU (upgrades and rollbacks need it).
    #[default]
    Allow,
    /// QEMU exits when the guest reboots (`-no-reboot`).
    Exit,
}

/// A host TCP port forwarded to a guest port, `HOST:GUEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Port on 127.0.0.1 of the host.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

impl FromStr for PortForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, guest) = s
            .split_once(':')
            .ok_or_else(|| format!("port forward {s:?} is not HOST:GUEST"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port forward {s:?}: {p:?} is not a port number (1-65535)"))
        };
        Ok(PortForward {
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

/// A file passed to the guest through QEMU's fw_cfg device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfgFile {
    /// The fw_cfg name (`opt/...`).
    pub name: String,
    /// The file on the host.
    pub file: PathBuf,
}

/// The address in QEMU's user network that [`QemuConfig::guest_forwards`]
/// listen on, inside the guest.
pub const GUEST_FORWARD_ADDR: &str = "10.0.2.100";

/// Everything that goes on a QEMU command line for a Berth guest: q35,
/// UEFI (OVMF code read-only, a private copy of the variables), one
/// virtio disk, user networking, serial console on stdio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The QEMU program.
    pub binary: PathBuf,
    /// KVM or TCG.
    pub accel: AccelKind,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// OVMF code (mapped read-only).
    pub ovmf_code: PathBuf,
    /// OVMF variables: a writable copy belonging to this VM (systemd-boot
    /// keeps its boot-counting state there).
    pub ovmf_vars: PathBuf,
    /// The disk QEMU opens (usually a throw-away overlay).
    pub disk: PathBuf,
    /// Its format.
    pub disk_format: DiskFormat,
    /// User-mode networking with a virtio NIC.
    pub network: bool,
    /// Host ports forwarded into the guest.
    pub publish: Vec<PortForward>,
    /// Guest connections to [`GUEST_FORWARD_ADDR`]`:guest` forwarded to
    /// the host's 127.0.0.1`:host` (an update server a test runs on a
    /// free port, while the image names one fixed address).
    pub guest_forwards: Vec<PortForward>,
    /// Files for the guest's fw_cfg.
    pub fw_cfg: Vec<FwCfgFile>,
    /// Terminal or pipes.
    pub console: ConsoleMode,
    /// Stay up or exit on guest reboot.
    pub reboot: RebootPolicy,
    /// Secure Boot firmware: OVMF's secboot build only runs with SMM on
    /// q35 and its variable store behind SMM-protected flash, so that the
    /// guest OS cannot rewrite the keys.
    pub secure_boot: bool,
    /// Appended as they are (for test devices).
    pub extra_args: Vec<OsString>,
}

impl QemuConfig {
    /// A config with Berth's defaults: 512 MiB, 2 CPUs, networking on,
    /// console on pipes, reboots allowed.
    pub fn new(
        accel: AccelKind,
        ovmf_code: &Path,
        ovmf_vars: &Path,
        disk: &Path,
        disk_format: DiskFormat,
    ) -> QemuConfig {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel,
            memory_mib: 512,
            cpus: 2,
            ovmf_code: ovmf_code.to_path_buf(),
            ovmf_vars: ovmf_vars.to_path_buf(),
            disk: disk.to_path_buf(),
            disk_format,
            network: true,
            publish: Vec::new(),
            guest_forwards: Vec::new(),
            fw_cfg: Vec::new(),
            console: ConsoleMode::Pipe,
            reboot: RebootPolicy::Allow,
            secure_boot: false,
            extra_args: Vec::new(),
        }
    }

    /// The arguments after the program name.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a = Args::default();
        // No default devices: exactly what is listed below.
        a.push("-nodefaults").push("-no-user-config");
        if self.secure_boot {
            a.push("-machine").push("q35,smm=on");
            a.push("-global")
                .push("driver=cfi.pflash01,property=secure,value=on");
        } else {
            a.push("-machine").push("q35");
        }
        a.push("-accel").push(self.accel.name());
        a.push("-cpu").push(self.accel.cpu());
        a.push("-m").push(format!("{}M", self.memory_mib));
        a.push("-smp").push(self.cpus.to_string());
        a.push("-drive").push(opt_with_path(
            "if=pflash,format=raw,unit=0,readonly=on,file=",
            &self.ovmf_code,
        ));
        a.push("-drive").push(opt_with_path(
            "if=pflash,format=raw,unit=1,file=",
            &self.ovmf_vars,
        ));
        a.push("-drive").push(opt_with_path(
            &format!(
                "if=none,id=disk0,format={},discard=unmap,file=",
                self.disk_format.name()
            ),
            &self.disk,
        ));
        a.push("-device")
            .push("virtio-blk-pci,drive=disk0,bootindex=0");
        // Entropy early in boot, for the kernel's RNG.
        a.push("-device").push("virtio-rng-pci");
        if self.network {
            let mut netdev = String::from("user,id=n0");
            for p in &self.publish {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest));
            }
            // A `cmd:` forward spawns a relay per connection; a chardev
            // forward would carry one connection at a time, and HTTP
            // clients (libostree) open several.
            for f in &self.guest_forwards {
                netdev.push_str(&format!(
                    ",guestfwd=tcp:{GUEST_FORWARD_ADDR}:{}-cmd:busybox nc 127.0.0.1 {}",
                    f.guest, f.host
                ));
            }
            a.push("-netdev").push(netdev);
            a.push("-device").push("virtio-net-pci,netdev=n0");
        }
        for f in &self.fw_cfg {
            a.push("-fw_cfg")
                .push(opt_with_path(&format!("name={},file=", f.name), &f.file));
        }
        a.push("-display").push("none");
        match self.console {
            ConsoleMode::Terminal => a.push("-serial").push("mon:stdio"),
            ConsoleMode::Pipe => a
                .push("-serial")
                .push("stdio")
                .push("-monitor")
                .push("none"),
        };
        if self.reboot == RebootPolicy::Exit {
            a.push("-no-reboot");
        }
        a.0.extend(self.extra_args.iter().cloned());
        a.0
    }

    /// A `Command` for this config (stdio left to the caller).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.argv());
        cmd
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }
}

/// `prefix` followed by `path`, with commas doubled as QEMU's option
/// syntax wants.
fn opt_with_path(prefix: &str, path: &Path) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig::new(
            AccelKind::Tcg,
            Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            Path::new("/tmp/run/vars.fd"),
            Path::new("/tmp/run/overlay.qcow2"),
            DiskFormat::Qcow2,
        )
    }

    fn line(c: &QemuConfig) -> String {
        c.argv()
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn default_command_line() {
        assert_eq!(
            line(&config()),
            "-nodefaults -no-user-config -machine q35 -accel tcg -cpu max -m 512M -smp 2 \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/tmp/run/vars.fd \
             -drive if=none,id=disk0,format=qcow2,discard=unmap,file=/tmp/run/overlay.qcow2 \
             -device virtio-blk-pci,drive=disk0,bootindex=0 -device virtio-rng-pci \
             -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
             -display none -serial stdio -monitor none"
        );
    }

    #[test]
    fn kvm_terminal_ports_config_and_no_reboot() {
        let mut c = config();
        c.accel = AccelKind::Kvm;
        c.memory_mib = 1024;
        c.cpus = 1;
        c.console = ConsoleMode::Terminal;
        c.reboot = RebootPolicy::Exit;
        c.publish = vec!["8080:80".parse().unwrap(), "2222:22".parse().unwrap()];
        c.fw_cfg = vec![FwCfgFile {
            name: FW_CFG_CONFIG.into(),
            file: "/tmp/host.toml".into(),
        }];
        let l = line(&c);
        assert!(l.contains("-accel kvm -cpu host -m 1024M -smp 1"), "{l}");
        assert!(
            l.contains(
                "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22"
            ),
            "{l}"
        );
        assert!(
            l.contains("-fw_cfg name=opt/org.berth/config,file=/tmp/host.toml"),
            "{l}"
        );
        assert!(
            l.ends_with("-display none -serial mon:stdio -no-reboot"),
            "{l}"
        );
        assert!(!l.contains("-monitor"), "{l}");
    }

    #[test]
    fn secure_boot_turns_on_smm_and_protects_the_variable_flash() {
        let mut c = config();
        c.secure_boot = true;
        let l = line(&c);
        assert!(
            l.contains(
                "-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on -accel"
            ),
            "{l}"
        );
        assert!(!line(&config()).contains("smm"));
    }

    #[test]
    fn no_network_means_no_nic() {
        let mut c = config();
        c.network = false;
        assert!(!line(&c).contains("netdev"));
    }

    #[test]
    fn guest_forwards_reach_host_loopback() {
        let mut c = config();
        c.guest_forwards = vec!["18080:8080".parse().unwrap()];
        assert!(
            line(&c).contains(
                "-netdev user,id=n0,guestfwd=tcp:10.0.2.100:8080-cmd:busybox nc 127.0.0.1 18080"
            ),
            "{}",
            line(&c)
        );
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut c = config();
        c.disk = PathBuf::from("/tmp/a,b.raw");
        c.disk_format = DiskFormat::Raw;
        assert!(line(&c).contains("format=raw,discard=unmap,file=/tmp/a,,b.raw "));
    }

    #[test]
    fn port_forwards_parse_strictly() {
        assert_eq!(
            "8080:80".parse(),
            Ok(PortForward {
                host: 8080,
                guest: 80
            })
        );
        for bad in ["8080", "x:80", "8080:", "70000:80", "0:80", "80:80:80"] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad}");
        }
    }

    #[test]
    fn qcow2_is_recognised_by_magic() {
        assert_eq!(
            DiskFormat::from_header(b"QFI\xfb\0\0\0\x03"),
            DiskFormat::Qcow2
        );
        assert_eq!(DiskFormat::from_header(&[0u8; 512]), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_header(b""), DiskFormat::Raw);
    }
}
