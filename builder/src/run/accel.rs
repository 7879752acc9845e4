//! Chooses KVM or TCG. `/dev/kvm` existing is not enough: on some
//! (nested) hosts a KVM guest starts but never gets anywhere. So, unless
//! the user chose, QEMU boots a 512-byte boot sector under SeaBIOS with
//! KVM and the same CPU model a real VM gets; the sector writes to an
//! `isa-debug-exit` port, which ends QEMU with a known status. If that
//! does not happen within [`PROBE_TIMEOUT`], Berth uses TCG.
//!
//! A healthy KVM host finishes the probe in well under a second; the
//! broken nested KVM seen in development takes 3 s or more for it (and
//! hangs real kernels).

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::KillOnDrop;
use super::qemu::AccelKind;

/// Ways QEMU can run the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a short probe boots under it, else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

/// How long the KVM probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Real-mode code at 0x7c00: `mov al, 1; out 0xf4, al; hlt; jmp $-1`.
/// isa-debug-exit turns the 1 into QEMU's exit status (1 << 1) | 1.
const PROBE_CODE: [u8; 7] = [0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];

/// QEMU's exit status when the probe code ran.
const PROBE_EXIT_STATUS: i32 = 3;

/// The probe's boot sector: the code, zeros, and the 0x55AA signature.
pub fn probe_boot_sector() -> [u8; 512] {
    let mut sector = [0u8; 512];
    sector[..PROBE_CODE.len()].copy_from_slice(&PROBE_CODE);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// The probe's QEMU arguments: SeaBIOS (QEMU's default firmware) on the
/// i440FX machine, whose IDE disk SeaBIOS boots at once; no devices but
/// the boot disk and the exit port.
pub fn probe_argv(accel: AccelKind, boot_sector: &Path) -> Vec<std::ffi::OsString> {
    let mut drive = std::ffi::OsString::from("format=raw,if=ide,index=0,file=");
    drive.push(boot_sector);
    let mut argv: Vec<std::ffi::OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "pc",
        "-accel",
        accel.name(),
        "-cpu",
        accel.cpu(),
        "-m",
        "16M",
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-drive",
    ]
    .iter()
    .map(Into::into)
    .collect();
    argv.push(drive);
    argv
}

/// The accelerator chosen and why, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// What QEMU will use.
    pub accel: AccelKind,
    /// Why, e.g. "KVM probe timed out after 2s".
    pub reason: String,
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.accel {
            AccelKind::Kvm => "KVM",
            AccelKind::Tcg => "TCG",
        };
        write!(f, "using {name} ({})", self.reason)
    }
}

/// Resolves `--accel`: `kvm` and `tcg` are taken as they are, `auto`
/// runs the probe with `qemu`.
pub fn choose(requested: Accel, qemu: &Path) -> AccelChoice {
    match requested {
        Accel::Kvm => AccelChoice {
            accel: AccelKind::Kvm,
            reason: "--accel kvm".into(),
        },
        Accel::Tcg => AccelChoice {
            accel: AccelKind::Tcg,
            reason: "--accel tcg".into(),
        },
        Accel::Auto => probe_kvm(qemu, PROBE_TIMEOUT),
    }
}

/// Boots the probe under KVM and reports whether KVM is usable.
pub fn probe_kvm(qemu: &Path, timeout: Duration) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: AccelKind::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm: {e}"));
    }
    let dir = match tempfile::Builder::new()
        .prefix("berth-kvm-probe-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return tcg(format!("KVM probe: creating a temporary directory: {e}")),
    };
    let sector = dir.path().join("probe.img");
    if let Err(e) = std::fs::write(&sector, probe_boot_sector()) {
        return tcg(format!("KVM probe: writing {}: {e}", sector.display()));
    }
    let started = Instant::now();
    let child = Command::new(qemu)
        .args(probe_argv(AccelKind::Kvm, &sector))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => KillOnDrop::new(child),
        Err(e) => return tcg(format!("KVM probe: running {}: {e}", qemu.display())),
    };
    let status = match child.wait_until(started + timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            return tcg(format!(
                "KVM probe timed out after {}s",
                timeout.as_secs_f32()
            ));
        }
        Err(e) => return tcg(format!("KVM probe: waiting for QEMU: {e}")),
    };
    if status.code() == Some(PROBE_EXIT_STATUS) {
        return AccelChoice {
            accel: AccelKind::Kvm,
            reason: format!(
                "KVM probe booted in {:.2}s",
                started.elapsed().as_secs_f32()
            ),
        };
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.child_mut().stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let last = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    tcg(format!("KVM probe failed: QEMU {status}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable() {
        let s = probe_boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert_eq!(&s[..2], &[0xb0, 0x01]);
    }

    #[test]
    fn choice_says_why() {
        let c = AccelChoice {
            accel: AccelKind::Tcg,
            reason: "KVM probe timed out after 2s".into(),
        };
        assert_eq!(c.to_string(), "using TCG (KVM probe timed out after 2s)");
        assert_eq!(
            choose(Accel::Tcg, Path::new("/nonexistent")).accel,
            AccelKind::Tcg
        );
        assert_eq!(
            choose(Accel::Kvm, Path::new("/nonexistent")).accel,
            AccelKind::Kvm
        );
    }

    #[test]
    fn probe_code_exits_qemu_under_tcg() {
        // The probe itself must be right, or every host would look broken.
        let qemu = Path::new("qemu-system-x86_64");
        if Command::new(qemu).arg("--version").output().is_err() {
            eprintln!("skipped: qemu-system-x86_64 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sector = dir.path().join("probe.img");
        std::fs::write(&sector, probe_boot_sector()).unwrap();
        let mut child = KillOnDrop::new(
            Command::new(qemu)
                .args(probe_argv(AccelKind::Tcg, &sector))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let status = child
            .wait_until(Instant::now() + Duration::from_secs(30))
            .unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(PROBE_EXIT_STATUS));
    }
}
