//! One guest under QEMU, booted the way `berth run` boots it (the same
//! [`QemuConfig`]), with its console on pipes so a test can wait for
//! output and type commands.
//!
//! The VM is killed when the [`Vm`] is dropped. If the test is panicking
//! then, or any `Vm` method has returned an error, the drop prints the
//! QEMU command line, QEMU's stderr and the whole console between banners.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth::command::display_cmdline;
use berth::run::{
    AccelKind, ConsoleMode, DiskFormat, FW_CFG_CONFIG, Firmware, FwCfgFile, KillOnDrop,
    PortForward, QemuConfig, RebootPolicy,
};
use berth_hostapi::READY_PREFIX;

use crate::command::run;
use crate::console::{Console, WaitEnd};
use crate::qmp::QMP_SOCKET;
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

/// How long a UEFI boot to berth-init's ready line may take: ~14 s under
/// TCG on a quiet 2-core machine, so this leaves room for a loaded one.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a guest gets to power off.
pub const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a command that must work ([`Vm::sh`]) may take in the guest's
/// shell: `berthctl` under TCG included.
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(60);

/// How a test wants its VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Host ports forwarded into the guest.
    pub publish: Vec<PortForward>,
    /// Guest connections to 10.0.2.100:`guest` reach the host's
    /// 127.0.0.1:`host` (an update server on a free port).
    pub guest_forwards: Vec<PortForward>,
    /// A provisioning document for the guest (fw_cfg).
    pub config: Option<PathBuf>,
    /// Boot a private copy of the image, kept in the VM's directory, so
    /// that state survives [`Vm::reboot_from`] (upgrade tests); otherwise
    /// a throw-away overlay keeps the shared image untouched.
    pub persistent_copy: bool,
    /// Guest reboots stay in QEMU (default) or end it.
    pub reboot: RebootPolicy,
    /// KVM or TCG; `None`: `$BERTH_ACCEL` (`kvm`/`tcg`), else the probe.
    pub accel: Option<AccelKind>,
    /// Extra read-only raw disks after the boot disk (a NoCloud seed).
    pub extra_drives: Vec<PathBuf>,
    /// Grow the boot disk to this many bytes before the boot (the image
    /// itself is never changed).
    pub disk_size: Option<u64>,
    /// Extra emulated devices, as `-device` arguments (`i6300esb`, a
    /// hardware watchdog).
    pub devices: Vec<String>,
    /// The guest's clock at power-on (`-rtc base=`, e.g.
    /// `2026-12-02T02:55:00`, UTC): a test puts a guest just before a
    /// maintenance window. `None`: the host's time.
    pub rtc_base: Option<String>,
    /// OVMF's Secure Boot firmware, the variable store starting in setup
    /// mode (`berth run --secure-boot`).
    pub secure_boot: bool,
}

impl VmOptions {
    /// The firmware these options boot: OVMF's Secure Boot build or the
    /// plain one.
    pub fn firmware(&self) -> Result<Firmware> {
        Ok(if self.secure_boot {
            Firmware::locate_secure_boot()?
        } else {
            Firmware::locate()?
        })
    }

    /// The QEMU config for these options, console on pipes.
    fn qemu_config(
        &self,
        firmware: &Firmware,
        vars: &Path,
        disk: &Path,
        format: DiskFormat,
    ) -> QemuConfig {
        let accel = resolve_accel(self.accel);
        let mut config = QemuConfig::new(accel, &firmware.code, vars, disk, format);
        config.memory_mib = self.memory_mib;
        config.cpus = self.cpus;
        config.publish = self.publish.clone();
        config.guest_forwards = self.guest_forwards.clone();
        config.reboot = self.reboot;
        config.secure_boot = self.secure_boot;
        config.console = ConsoleMode::Pipe;
        if let Some(file) = &self.config {
            config.fw_cfg.push(FwCfgFile {
                name: FW_CFG_CONFIG.into(),
                file: file.clone(),
            });
        }
        // A QMP socket beside the varstore: tests press the power button.
        if let Some(dir) = vars.parent() {
            let mut spec = std::ffi::OsString::from("unix:");
            spec.push(dir.join(QMP_SOCKET));
            spec.push(",server=on,wait=off");
            config.extra_args.extend(["-qmp".into(), spec]);
        }
        for (i, drive) in self.extra_drives.iter().enumerate() {
            let mut spec = std::ffi::OsString::from(format!(
                "if=none,id=extra{i},format=raw,readonly=on,file="
            ));
            spec.push(drive);
            config.extra_args.extend([
                "-drive".into(),
                spec,
                "-device".into(),
                format!("virtio-blk-pci,drive=extra{i}").into(),
            ]);
        }
        for device in &self.devices {
            config.extra_args.extend(["-device".into(), device.into()]);
        }
        if let Some(base) = &self.rtc_base {
            config
                .extra_args
                .extend(["-rtc".into(), format!("base={base}").into()]);
        }
        config
    }
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            memory_mib: 1024,
            cpus: 2,
            publish: Vec::new(),
            guest_forwards: Vec::new(),
            config: None,
            persistent_copy: false,
            reboot: RebootPolicy::Allow,
            accel: None,
            extra_drives: Vec::new(),
            disk_size: None,
            devices: Vec::new(),
            rtc_base: None,
            secure_boot: false,
        }
    }
}

/// The deployment with `role` (`booted`, `rollback`, …) in a
/// [`Vm::status_json`] answer.
pub fn deployment_with_role<'a>(
    status: &'a serde_json::Value,
    role: &str,
) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["role"] == role)
}

/// A running guest.
pub struct Vm {
    process: KillOnDrop,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    cmdline: String,
    dir: tempfile::TempDir,
    disk: PathBuf,
    /// Offset in the console text up to which waits have consumed.
    mark: usize,
    /// Some method returned an error: dump the console on drop.
    failed: bool,
    shell_serial: u32,
}

fn resolve_accel(requested: Option<AccelKind>) -> AccelKind {
    if let Some(accel) = requested {
        return accel;
    }
    match std::env::var("BERTH_ACCEL").as_deref() {
        Ok("kvm") => AccelKind::Kvm,
        Ok("tcg") => AccelKind::Tcg,
        _ => {
            let choice =
                berth::run::choose_accel(berth::run::Accel::Auto, Path::new("qemu-system-x86_64"));
            eprintln!("qemu-tests: {choice}");
            choice.accel
        }
    }
}

/// Grows a VM's disk (its overlay or private copy) to `size` bytes, as an
/// operator does with `qemu-img resize` before the first boot.
fn grow_disk(disk: &Path, format: DiskFormat, size: u64) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", format.name()])
        .arg(disk)
        .arg(size.to_string()))?;
    Ok(())
}

impl Vm {
    /// Boots `image` (raw or qcow2) and starts draining its console.
    pub fn boot(image: &Path, options: VmOptions) -> Result<Vm> {
        let firmware = options.firmware()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .map_err(Error::io("creating a VM directory"))?;
        let vars = firmware.copy_vars(dir.path())?;
        let (disk, format) = if options.persistent_copy {
            let copy = dir
                .path()
                .join(image.file_name().unwrap_or("disk".as_ref()));
            copy_sparse(image, &copy)?;
            let format = berth::run::detect_format(&copy)?;
            (copy, format)
        } else {
            (
                berth::run::create_overlay(image, dir.path())?,
                DiskFormat::Qcow2,
            )
        };
        if let Some(size) = options.disk_size {
            grow_disk(&disk, format, size)?;
        }
        let config = options.qemu_config(&firmware, &vars, &disk, format);
        Vm::spawn(config, dir, disk)
    }

    /// Starts QEMU for `config` (for tests that need a config [`Vm::boot`]
    /// does not make); `dir` holds its files and the console log.
    pub fn spawn(config: QemuConfig, dir: tempfile::TempDir, disk: PathBuf) -> Result<Vm> {
        let mut cmd = config.command();
        let cmdline = display_cmdline(&cmd);
        let stderr = std::fs::File::create(dir.path().join("qemu-stderr.log"))
            .map_err(Error::io("creating the QEMU stderr log"))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| Error::Setup(format!("starting `{cmdline}`: {e}")))?;
        let mut process = KillOnDrop::new(child);
        let stdin = process.child_mut().stdin.take();
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| Error::Setup("QEMU has no stdout pipe".into()))?;
        let console = Arc::new(Console::default());
        let reader = console
            .spawn_reader(stdout, &dir.path().join("console.log"))
            .map_err(Error::io("creating the console log"))?;
        Ok(Vm {
            process,
            stdin,
            console,
            reader: Some(reader),
            cmdline,
            dir,
            disk,
            mark: 0,
            failed: false,
            shell_serial: 0,
        })
    }

    /// Records a failure so the drop dumps the console.
    fn fail<T>(&mut self, e: Error) -> Result<T> {
        self.failed = true;
        Err(e)
    }

    /// Waits for `pattern` in the console after the mark; returns the text
    /// from the mark through the match and moves the mark past it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        match self.console.wait_for(pattern, self.mark, timeout) {
            Ok(end) => {
                let text = self.console.slice(self.mark, end);
                self.mark = end;
                Ok(text)
            }
            Err(end) => {
                let status = self.process.try_wait().ok().flatten();
                let e = Error::Wait {
                    pattern: pattern.to_string(),
                    after: started.elapsed(),
                    why: match (end, status) {
                        (WaitEnd::Timeout, _) => "timed out".into(),
                        (WaitEnd::Closed, Some(s)) => format!("QEMU exited ({s})"),
                        (WaitEnd::Closed, None) => "QEMU closed the console".into(),
                    },
                    tail: self.console.tail(15),
                };
                self.fail(e)
            }
        }
    }

    /// Waits for berth-init's ready line and returns it.
    pub fn wait_for_ready(&mut self, timeout: Duration) -> Result<String> {
        self.wait_for(READY_PREFIX, timeout)?;
        let rest = self.wait_for("\n", Duration::from_secs(10))?;
        Ok(format!("{READY_PREFIX}{}", rest.trim_end()))
    }

    /// Types `line` and Enter (a carriage return, as a terminal sends it)
    /// on the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(format!("{line}\r").as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("the console input is closed")),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail(Error::Io {
                action: "writing to the console",
                source: e,
            }),
        }
    }

    /// Runs `cmd`, which must work, in the guest's console shell and
    /// returns its output; the test fails, showing the output, when it
    /// exits non-zero or does not answer within [`SHELL_TIMEOUT`].
    pub fn sh(&mut self, cmd: &str) -> String {
        let (code, out) = self
            .run_shell(cmd, SHELL_TIMEOUT)
            .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
        assert_eq!(code, 0, "`{cmd}` failed:\n{out}");
        out
    }

    /// `berthctl status --json` in the guest, parsed (console noise before
    /// the JSON skipped).
    pub fn status_json(&mut self) -> serde_json::Value {
        let out = self.sh("berthctl status --json");
        let start = out.find('{').unwrap_or(0);
        serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("status --json: {e}:\n{out}"))
    }

    /// Waits until `berthctl status --json` lists `commit` among the failed
    /// commits, and returns that status. boot-check records a version that
    /// spent its tries at the next boot; it is a one-shot the ready line
    /// does not wait for.
    pub fn wait_failed_commit(&mut self, commit: &str, timeout: Duration) -> serde_json::Value {
        wait_until(
            timeout,
            Duration::from_secs(2),
            &format!("boot-check to record {commit} as failed"),
            || {
                let st = self.status_json();
                let failed = st["failed_commits"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|c| c == commit));
                Ok(if failed {
                    Check::Done(st)
                } else {
                    Check::NotYet(st.to_string())
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `cmd` in the guest's console shell and returns its exit code
    /// and output (`\r` removed, last newline trimmed). The output is
    /// framed by markers the echoed command line cannot match.
    pub fn run_shell(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.shell_serial += 1;
        let n = self.shell_serial;
        let (begin, end) = (
            format!("@@BERTH-BEGIN-{n}@@"),
            format!("@@BERTH-END-{n}@@ "),
        );
        // `''` splits the markers in what the terminal echoes back.
        self.send_line(&format!(
            "echo @@BERTH-''BEGIN-{n}@@; {cmd}; echo @@BERTH-''END-{n}@@ $?"
        ))?;
        self.wait_for(&format!("{begin}\n"), timeout)?;
        let output = self.wait_for(&end, timeout)?;
        let output = output.strip_suffix(end.as_str()).unwrap_or(&output);
        let output = output.strip_suffix('\n').unwrap_or(output);
        let output = without_console_noise(output);
        // The kernel writes to the serial port past the terminal, so one of
        // its lines can land right after the code ("0[ 12.49] EXT4-fs …")
        // or, whole, between the marker and the code.
        let mut seen = String::new();
        for _ in 0..4 {
            let line = self.wait_for("\n", Duration::from_secs(10))?;
            seen.push_str(&line);
            match exit_code_of(&line) {
                CodeLine::Code(code) => return Ok((code, output)),
                CodeLine::Noise => continue,
                CodeLine::Garbage => break,
            }
        }
        self.fail(Error::Setup(format!(
            "`{cmd}`: no exit code after the end marker: {seen:?}"
        )))
    }

    /// Pulls the plug: SIGKILL to QEMU, so nothing the guest had not yet
    /// written reaches the disk. [`Vm::reboot_from`] then boots the same disk.
    pub fn power_cut(&mut self) -> Result<()> {
        let child = self.process.child_mut();
        let _ = child.kill();
        child
            .wait()
            .map_err(Error::io("waiting for QEMU after the power cut"))?;
        Ok(())
    }

    /// Asks the guest to power off (SIGUSR2 to berth-init, from the
    /// console shell) and waits for QEMU to exit.
    pub fn power_off_and_wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.send_line("kill -USR2 1")?;
        self.wait_exit(timeout)
    }

    /// Presses the guest's ACPI power button (QMP `system_powerdown`, what
    /// a cloud provider's "stop" or `virsh shutdown` does).
    pub fn press_power_button(&mut self) -> Result<()> {
        let socket = self.dir.path().join(QMP_SOCKET);
        match crate::qmp::execute(&socket, "system_powerdown") {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Waits for QEMU to exit (guest power-off, or reboot with
    /// [`RebootPolicy::Exit`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.process.wait_until(Instant::now() + timeout) {
            Ok(Some(status)) => {
                self.join_reader();
                Ok(status)
            }
            Ok(None) => {
                let tail = self.console.tail(15);
                self.fail(Error::Wait {
                    pattern: "QEMU to exit".into(),
                    after: timeout,
                    why: "timed out".into(),
                    tail,
                })
            }
            Err(e) => self.fail(Error::Io {
                action: "waiting for QEMU",
                source: e,
            }),
        }
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// The whole console so far, as plain text.
    pub fn console_text(&self) -> String {
        self.console.text()
    }

    /// The raw console log file.
    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The QEMU command line.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The disk QEMU writes to (the overlay, or the private copy).
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// Stops this VM (if still running) and boots its disk again, keeping
    /// the private copy or overlay and the UEFI variables; for tests that
    /// power off and check what the next boot does. `persistent_copy` of
    /// `options` is ignored: the disk is the one this VM had.
    pub fn reboot_from(mut self, options: VmOptions) -> Result<Vm> {
        let _ = self.process.stop(berth::run::process::STOP_GRACE);
        self.join_reader();
        let firmware = options.firmware()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .map_err(Error::io("creating a VM directory"))?;
        let moved = |name: &str| -> Result<PathBuf> {
            let to = dir.path().join(name);
            std::fs::rename(self.dir.path().join(name), &to)
                .map_err(Error::io("keeping the VM disk"))?;
            Ok(to)
        };
        let vars = moved("OVMF_VARS.fd")?;
        let disk_name = self.disk.file_name().map(PathBuf::from).unwrap_or_default();
        let disk = moved(&disk_name.to_string_lossy())?;
        // An overlay still finds its image: the backing path is absolute.
        let format = berth::run::detect_format(&disk)?;
        let config = options.qemu_config(&firmware, &vars, &disk, format);
        Vm::spawn(config, dir, disk)
    }

    /// Freezes this running guest into a [`Snapshot`]: QEMU stops it,
    /// writes its RAM and device state to a file (a migration stream),
    /// and its disk and UEFI variables are copied beside it. The guest
    /// stays stopped; drop it or [`Vm::power_cut`] it afterwards. Each
    /// [`Snapshot::resume`] then starts a new QEMU at that very moment,
    /// so a test repeats a scenario from a booted host without booting.
    pub fn snapshot(&mut self, options: &VmOptions) -> Result<Snapshot> {
        match self.try_snapshot(options) {
            Ok(s) => Ok(s),
            Err(e) => self.fail(e),
        }
    }

    fn try_snapshot(&mut self, options: &VmOptions) -> Result<Snapshot> {
        let dir = tempfile::Builder::new()
            .prefix("berth-snapshot-")
            .tempdir()
            .map_err(Error::io("creating a snapshot directory"))?;
        let state = dir.path().join("state");
        let mut qmp = crate::qmp::Qmp::connect(&self.dir.path().join(QMP_SOCKET))?;
        // A live migration: QEMU stops the guest itself for the last pass
        // and flushes the disk, so the copies below match the saved RAM.
        let mut uri = std::ffi::OsString::from("exec:cat > ");
        uri.push(&state);
        qmp.execute(
            "migrate",
            Some(serde_json::json!({ "uri": uri.to_string_lossy() })),
        )?;
        wait_until(
            Duration::from_secs(120),
            Duration::from_millis(100),
            "QEMU to save the VM state",
            || {
                let info = qmp.execute("query-migrate", None)?;
                match info["status"].as_str() {
                    Some("completed") => Ok(Check::Done(())),
                    Some("failed") | Some("cancelled") => {
                        Err(Error::Setup(format!("saving the VM state: {info}")))
                    }
                    _ => Ok(Check::NotYet(info.to_string())),
                }
            },
        )?;
        let disk = dir.path().join("disk");
        let vars = dir.path().join("OVMF_VARS.fd");
        for (from, to) in [
            (self.disk.clone(), disk.clone()),
            (self.dir.path().join("OVMF_VARS.fd"), vars.clone()),
        ] {
            copy_sparse(&from, &to)?;
        }
        let format = berth::run::detect_format(&disk)?;
        Ok(Snapshot {
            dir,
            disk,
            format,
            vars,
            state,
            options: options.clone(),
        })
    }

    /// Waits for an incoming migration to be loaded and makes sure the
    /// guest runs (QEMU keeps it paused when the source was).
    fn continue_after_incoming(&mut self) -> Result<()> {
        let socket = self.dir.path().join(QMP_SOCKET);
        // One deadline for both waits.
        let deadline = Instant::now() + Duration::from_secs(120);
        let every = Duration::from_millis(100);
        let mut qmp =
            wait_until(
                deadline,
                every,
                "QEMU's QMP socket",
                || match crate::qmp::Qmp::connect(&socket) {
                    Ok(q) => Ok(Check::Done(q)),
                    Err(e) => Ok(Check::NotYet(e.to_string())),
                },
            )?;
        wait_until(deadline, every, "the resumed VM to load its state", || {
            let status = qmp.execute("query-status", None)?;
            match status["status"].as_str() {
                Some("running") => Ok(Check::Done(())),
                Some("paused") | Some("postmigrate") | Some("prelaunch") => {
                    qmp.execute("cont", None)?;
                    Ok(Check::Done(()))
                }
                _ => Ok(Check::NotYet(status.to_string())),
            }
        })
    }

    fn dump(&self) {
        let banner = |title: &str| {
            eprintln!(
                "\n===== {title} {}",
                "=".repeat(60usize.saturating_sub(title.len()))
            )
        };
        banner("QEMU command line");
        eprintln!("{}", self.cmdline);
        banner("QEMU stderr");
        eprintln!(
            "{}",
            std::fs::read_to_string(self.dir.path().join("qemu-stderr.log"))
                .unwrap_or_default()
                .trim_end()
        );
        banner(&format!("console ({})", self.console_log().display()));
        eprintln!("{}", self.console.text().trim_end());
        if let Some(e) = self.console.log_error() {
            eprintln!("(the console log file is incomplete: {e})");
        }
        banner("end of console");
    }
}

/// A booted guest frozen by [`Vm::snapshot`]: RAM and devices, disk and
/// UEFI variables, in a directory removed on drop.
pub struct Snapshot {
    dir: tempfile::TempDir,
    disk: PathBuf,
    format: DiskFormat,
    vars: PathBuf,
    state: PathBuf,
    options: VmOptions,
}

impl Snapshot {
    /// Starts a new QEMU where the snapshot was taken: same options, the
    /// disk as a fresh overlay on the frozen one (so every resume starts
    /// from the same bytes), a copy of the UEFI variables. The guest runs
    /// on from the moment it was stopped: its shell is where it was.
    pub fn resume(&self) -> Result<Vm> {
        let firmware = self.options.firmware()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .map_err(Error::io("creating a VM directory"))?;
        let vars = dir.path().join("OVMF_VARS.fd");
        copy_sparse(&self.vars, &vars)?;
        let disk = dir.path().join("disk.qcow2");
        run(Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                self.format.name(),
                "-b",
            ])
            .arg(&self.disk)
            .arg(&disk))?;
        let mut config = self
            .options
            .qemu_config(&firmware, &vars, &disk, DiskFormat::Qcow2);
        let mut incoming = std::ffi::OsString::from("exec:cat ");
        incoming.push(&self.state);
        config.extra_args.extend(["-incoming".into(), incoming]);
        let mut vm = Vm::spawn(config, dir, disk)?;
        if let Err(e) = vm.continue_after_incoming() {
            return vm.fail(e);
        }
        Ok(vm)
    }

    /// The directory holding the snapshot's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `cp --sparse=always --reflink=auto from to`.
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to))?;
    Ok(())
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(2));
        self.join_reader();
        if self.failed || std::thread::panicking() {
            self.dump();
            if std::env::var_os("BERTH_KEEP_VM_DIR").is_some() {
                self.dir.disable_cleanup(true);
                eprintln!("kept the VM directory: {}", self.dir.path().display());
            }
        }
    }
}

/// What one console line after a shell command's end marker holds.
#[derive(Debug, PartialEq)]
enum CodeLine {
    /// The exit code, with whatever the kernel wrote after it ignored.
    Code(i32),
    /// A whole kernel or service line that came before the code.
    Noise,
    /// Neither: the framing is broken.
    Garbage,
}

/// Reads the line after a shell command's end marker.
fn exit_code_of(line: &str) -> CodeLine {
    let line = line.trim_start_matches([' ', '\r']);
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 {
        return match line[..digits].parse() {
            Ok(code) => CodeLine::Code(code),
            Err(_) => CodeLine::Garbage,
        };
    }
    if is_noise(line.trim_end()) {
        CodeLine::Noise
    } else {
        CodeLine::Garbage
    }
}

/// Drops the lines other writers put on the console while a shell command
/// ran: berth-init's own (`berth-init: ...`), services' (`[name] ...`) and
/// the kernel's (`[   12.345678] ...`).
pub fn without_console_noise(output: &str) -> String {
    output
        .lines()
        .filter(|line| !is_noise(line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_noise(line: &str) -> bool {
    if line.starts_with("berth-init: ") {
        return true;
    }
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((tag, _)) = rest.split_once("] ") else {
        return false;
    };
    let kernel = tag.trim().split_once('.').is_some_and(|(s, us)| {
        s.chars().all(|c| c.is_ascii_digit()) && us.chars().all(|c| c.is_ascii_digit())
    });
    let service = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    kernel || service
}

#[cfg(test)]
mod noise_tests {
    use super::*;

    #[test]
    fn service_kernel_and_init_lines_are_noise() {
        let out = "berth-init: boot is good\n[heartbeat] v2 up\n[    4.559878]  vda: vda1\nVERSION_ID=2.0.0\n[not noise";
        assert_eq!(without_console_noise(out), "VERSION_ID=2.0.0\n[not noise");
    }

    #[test]
    fn an_exit_code_is_read_past_kernel_lines_around_it() {
        // As CI saw it: the kernel's line right after the code.
        let glued = "0[   12.496398] EXT4-fs (vda2): re-mounted. Quota mode: none.\n";
        assert_eq!(exit_code_of(glued), CodeLine::Code(0));
        assert_eq!(exit_code_of("127\r\n"), CodeLine::Code(127));
        assert_eq!(
            exit_code_of("[   12.4] EXT4-fs (vda2): re-mounted.\n"),
            CodeLine::Noise
        );
        assert_eq!(exit_code_of("berth-init: boot is good\n"), CodeLine::Noise);
        assert_eq!(exit_code_of("$ \n"), CodeLine::Garbage);
        assert_eq!(exit_code_of("99999999999\n"), CodeLine::Garbage);
    }
}
