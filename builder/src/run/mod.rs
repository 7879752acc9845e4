//! `berth run IMAGE`: boots a disk image under QEMU with UEFI (OVMF),
//! its serial console on this terminal.
//!
//! By default the image is never written: QEMU runs on a throw-away qcow2
//! overlay and a fresh copy of the OVMF variables, both in a temporary
//! directory. The pieces (accelerator probe, [`QemuConfig`], overlay and
//! firmware helpers, [`KillOnDrop`]) are public so the qemu-tests harness
//! boots images exactly as `berth run` does.
//!
//! It does not build images (`crate::build`) or talk to the guest beyond
//! watching its console for the ready line.

use std::fs::File;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::command::{self, CommandError};
use crate::error::InputError;

pub mod accel;
pub mod console;
pub mod process;
pub mod qemu;

pub use accel::{Accel, AccelChoice, choose as choose_accel};
pub use process::KillOnDrop;
pub use qemu::{
    AccelKind, ConsoleMode, DiskFormat, FW_CFG_CONFIG, FwCfgFile, GUEST_FORWARD_ADDR, PortForward,
    QemuConfig, RebootPolicy,
};

/// What `berth run` is asked to do (the command line maps its flags onto
/// this; `crate::cli` documents each one).
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// The disk image (raw or qcow2).
    pub image: PathBuf,
    /// Write to the image itself instead of a throw-away overlay.
    pub persist: bool,
    /// Host TCP ports forwarded to the guest, each `HOST:GUEST`.
    pub publish: Vec<String>,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Stop the guest after this many seconds (0: never).
    pub timeout: u64,
    /// Succeed as soon as the guest prints its ready line (and stop it);
    /// fail if it does not within `timeout`.
    pub until_ready: bool,
    /// CPU accelerator.
    pub accel: Accel,
    /// Also write the serial console to this file.
    pub console_log: Option<PathBuf>,
    /// A provisioning document passed to the guest through QEMU fw_cfg.
    pub config: Option<PathBuf>,
    /// Secure Boot firmware, in setup mode (`--secure-boot`).
    pub secure_boot: bool,
}

/// Where Debian's `ovmf` package puts the firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// Why a VM could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An OVMF file is missing.
    #[error("UEFI firmware {} not found (install the ovmf package; scripts/install-deps)", path.display())]
    MissingFirmware {
        /// The file looked for.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io {
        action,
        path,
        source,
    }
}

/// Where the firmware is looked for: `$BERTH_OVMF_DIR`, else [`OVMF_DIR`].
fn firmware_dir() -> PathBuf {
    std::env::var_os("BERTH_OVMF_DIR").map_or_else(|| PathBuf::from(OVMF_DIR), PathBuf::from)
}

/// The OVMF firmware pair: code (read-only) and the variable store
/// template each VM gets a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// `OVMF_CODE_4M.fd`.
    pub code: PathBuf,
    /// `OVMF_VARS_4M.fd`, copied per VM, never opened by QEMU directly.
    pub vars_template: PathBuf,
}

impl Firmware {
    /// The 4 MiB OVMF build in `dir`, if both files are there.
    pub fn in_dir(dir: &Path) -> Result<Firmware, RunError> {
        Firmware::pair(dir, "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
    }

    /// Code file `code` and variable template `vars` in `dir`, if both
    /// are there.
    fn pair(dir: &Path, code: &str, vars: &str) -> Result<Firmware, RunError> {
        let fw = Firmware {
            code: dir.join(code),
            vars_template: dir.join(vars),
        };
        for path in [&fw.code, &fw.vars_template] {
            if !path.is_file() {
                return Err(RunError::MissingFirmware { path: path.clone() });
            }
        }
        Ok(fw)
    }

    /// The firmware in `$BERTH_OVMF_DIR`, else in [`OVMF_DIR`].
    pub fn locate() -> Result<Firmware, RunError> {
        Firmware::in_dir(&firmware_dir())
    }

    /// OVMF's Secure Boot build (`OVMF_CODE_4M.secboot.fd`) with an empty
    /// variable store: the machine starts in setup mode, as a new PC
    /// whose owner cleared the keys, so systemd-boot can enroll the
    /// image's keys at the first boot. Needs [`QemuConfig::secure_boot`].
    pub fn secure_boot_in_dir(dir: &Path) -> Result<Firmware, RunError> {
        Firmware::pair(dir, "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.fd")
    }

    /// [`Firmware::secure_boot_in_dir`] in `$BERTH_OVMF_DIR`, else in
    /// [`OVMF_DIR`].
    pub fn locate_secure_boot() -> Result<Firmware, RunError> {
        Firmware::secure_boot_in_dir(&firmware_dir())
    }

    /// Copies the variable store into `dir` for one VM.
    pub fn copy_vars(&self, dir: &Path) -> Result<PathBuf, RunError> {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(&self.vars_template, &vars)
            .map_err(io_err("copying the OVMF variables to", &vars))?;
        Ok(vars)
    }
}

/// The format of the image at `path`, from its first bytes.
pub fn detect_format(path: &Path) -> Result<DiskFormat, RunError> {
    let mut header = Vec::with_capacity(4);
    File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut header))
        .map_err(io_err("reading the disk image", path))?;
    Ok(DiskFormat::from_header(&header))
}

/// Creates `dir/overlay.qcow2` backed by `image`, so the VM's writes go
/// to the overlay and the image stays as built.
pub fn create_overlay(image: &Path, dir: &Path) -> Result<PathBuf, RunError> {
    let format = detect_format(image)?;
    let backing = std::path::absolute(image).map_err(io_err("resolving", image))?;
    let overlay = dir.join("overlay.qcow2");
    command::run(
        &format!("creating a throw-away overlay for {}", image.display()),
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", format.name(), "-b"])
            .arg(&backing)
            .arg(&overlay),
    )?;
    Ok(overlay)
}

/// How often the main loop looks at QEMU and the console.
const POLL: Duration = Duration::from_millis(50);

/// Copies QEMU's console to our stdout and to `log`, and sends one
/// message on `ready` when the guest prints its ready line.
fn spawn_console_reader(
    mut from: impl std::io::Read + Send + 'static,
    mut log: Option<File>,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut lines = console::LineSplitter::default();
        let mut buf = [0u8; 8192];
        let mut ready_sent = false;
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut out = std::io::stdout().lock();
            // A closed stdout must not stop the draining: QEMU would block.
            let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
            if let Some(Err(e)) = log.as_mut().map(|f| f.write_all(&buf[..n])) {
                eprintln!("berth: writing the console log: {e}; no longer logging");
                log = None;
            }
            if !ready_sent
                && lines
                    .feed(&buf[..n])
                    .iter()
                    .any(|l| console::is_ready_line(l))
            {
                ready_sent = ready.send(()).is_ok();
            }
        }
    })
}

/// Runs `berth run`: returns 0 when the guest powered off (or, with
/// `--until-ready`, printed its ready line), 1 on timeout or failure, and
/// QEMU's own status otherwise.
pub fn run(opts: &RunOpts) -> anyhow::Result<ExitCode> {
    let publish = opts
        .publish
        .iter()
        .map(|p| p.parse::<PortForward>().map_err(InputError))
        .collect::<Result<Vec<_>, _>>()?;
    if !opts.image.is_file() {
        return Err(InputError(format!(
            "disk image {} does not exist",
            opts.image.display()
        ))
        .into());
    }
    if let Some(config) = opts.config.as_ref().filter(|c| !c.is_file()) {
        return Err(InputError(format!("--config {} does not exist", config.display())).into());
    }
    let firmware = if opts.secure_boot {
        Firmware::locate_secure_boot()?
    } else {
        Firmware::locate()?
    };
    let qemu = PathBuf::from("qemu-system-x86_64");
    let choice = accel::choose(opts.accel, &qemu);
    eprintln!("berth: {choice}");

    let dir = tempfile::Builder::new()
        .prefix("berth-run-")
        .tempdir()
        .context("creating a temporary directory for the VM")?;
    let vars = firmware.copy_vars(dir.path())?;
    let (disk, format) = if opts.persist {
        (opts.image.clone(), detect_format(&opts.image)?)
    } else {
        (create_overlay(&opts.image, dir.path())?, DiskFormat::Qcow2)
    };
    let mut config = QemuConfig::new(choice.accel, &firmware.code, &vars, &disk, format);
    config.binary = qemu;
    config.memory_mib = opts.memory;
    config.cpus = opts.cpus;
    config.publish = publish;
    config.secure_boot = opts.secure_boot;
    if let Some(file) = &opts.config {
        config.fw_cfg.push(FwCfgFile {
            name: FW_CFG_CONFIG.into(),
            file: std::path::absolute(file)?,
        });
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    config.console = if interactive {
        ConsoleMode::Terminal
    } else {
        ConsoleMode::Pipe
    };

    let watch = opts.until_ready || opts.console_log.is_some();
    let log = match &opts.console_log {
        Some(path) => {
            Some(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => None,
    };
    let mut cmd = config.command();
    cmd.stdin(Stdio::inherit()).stderr(Stdio::inherit());
    cmd.stdout(if watch {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let mut vm =
        KillOnDrop::new(cmd.spawn().with_context(|| {
            format!("starting {} (is QEMU installed?)", config.binary.display())
        })?);
    let (tx, rx) = mpsc::channel();
    let reader = vm
        .child_mut()
        .stdout
        .take()
        .map(|out| spawn_console_reader(out, log, tx));

    let deadline = (opts.timeout > 0).then(|| Instant::now() + Duration::from_secs(opts.timeout));
    let code = loop {
        match rx.recv_timeout(POLL) {
            Ok(()) if opts.until_ready => {
                vm.stop(process::STOP_GRACE)?;
                eprintln!("berth: the guest is ready; stopped QEMU");
                break ExitCode::SUCCESS;
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            // No console reader (or it finished): wait on QEMU instead.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                vm.wait_until(Instant::now() + POLL)?;
            }
        }
        if let Some(status) = vm.try_wait()? {
            if opts.until_ready {
                eprintln!("berth: QEMU exited ({status}) before the guest was ready");
                break ExitCode::FAILURE;
            }
            break match status.code() {
                Some(0) => ExitCode::SUCCESS,
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                None => ExitCode::FAILURE,
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            vm.stop(process::STOP_GRACE)?;
            let waiting = if opts.until_ready {
                " waiting for the guest to be ready"
            } else {
                ""
            };
            eprintln!(
                "berth: timed out after {}s{waiting}; stopped QEMU",
                opts.timeout
            );
            break ExitCode::FAILURE;
        }
    };
    if let Some(reader) = reader {
        // QEMU has exited, so the pipe is closed and the reader finishes.
        let _ = reader.join();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secure_boot_firmware_is_the_secboot_code_with_the_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let plain = Firmware::in_dir(dir.path()).unwrap();
        assert_eq!(plain.code, dir.path().join("OVMF_CODE_4M.fd"));
        let missing = Firmware::secure_boot_in_dir(dir.path()).unwrap_err();
        assert!(
            missing.to_string().contains("OVMF_CODE_4M.secboot.fd"),
            "{missing}"
        );
        std::fs::write(dir.path().join("OVMF_CODE_4M.secboot.fd"), "sb").unwrap();
        let sb = Firmware::secure_boot_in_dir(dir.path()).unwrap();
        assert_eq!(sb.code, dir.path().join("OVMF_CODE_4M.secboot.fd"));
        assert_eq!(sb.vars_template, plain.vars_template);
    }
}
