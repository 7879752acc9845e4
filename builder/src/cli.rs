//! The `berth` command line: one clap-derived enum, one function per verb.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Builds minimal, immutable container-host OS images and boots them in QEMU.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The verbs of `berth`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build a bootable disk image and an OSTree commit from a manifest.
    Build(BuildOpts),
    /// Boot a disk image under QEMU (UEFI, serial console on this terminal).
    Run(RunOpts),
    /// Serve an OSTree repository over HTTP for hosts to upgrade from.
    Serve(crate::serve::ServeOpts),
}

/// Disk image formats `berth build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    /// A raw (sparse) GPT disk image: `NAME.raw`.
    Raw,
    /// A QEMU copy-on-write image: `NAME.qcow2`.
    Qcow2,
}

/// Options of `berth build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildOpts {
    /// The manifest (TOML) describing the image.
    pub manifest: PathBuf,
    /// Directory for the image and the OSTree repository (`DIR/NAME.raw`, `DIR/repo`).
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// Disk image format.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: ImageFormat,
    /// The OSTree archive repository to commit to (default `OUTPUT/repo`).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Where downloaded packages and extracted package trees are kept
    /// between builds (default `$XDG_CACHE_HOME/berth` or `~/.cache/berth`).
    #[arg(long, env = "BERTH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Resolve the packages again even if an extracted tree for the same
    /// package list is cached (picks up new versions from the mirror).
    #[arg(long)]
    pub refresh: bool,
}

/// Ways QEMU can run the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when a short probe boots under it, else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

/// Options of `berth run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// The disk image (raw or qcow2).
    pub image: PathBuf,
    /// Write to the image itself instead of a throw-away overlay.
    #[arg(long)]
    pub persist: bool,
    /// Forward a host TCP port to the guest, HOST:GUEST (repeatable).
    #[arg(long, value_name = "HOST:GUEST")]
    pub publish: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Stop the guest after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Exit 0 as soon as the guest prints its ready line (and stop it);
    /// exit 1 if it does not within --timeout.
    #[arg(long)]
    pub until_ready: bool,
    /// CPU accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Also write the serial console to this file.
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// Pass a provisioning document to the guest through QEMU fw_cfg.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs one verb; the returned code is the process's exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Build(opts) => crate::build::run(&opts).map(|()| ExitCode::SUCCESS),
        Cmd::Run(opts) => crate::run::run(&opts),
        Cmd::Serve(opts) => crate::serve::run(&opts).map(|()| ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_defaults() {
        let cli = Cli::try_parse_from(["berth", "build", "m.toml"]).unwrap();
        let Cmd::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.output, PathBuf::from("out"));
        assert_eq!(b.format, ImageFormat::Raw);
    }

    #[test]
    fn run_takes_repeated_publish() {
        let cli = Cli::try_parse_from([
            "berth",
            "run",
            "x.raw",
            "--publish",
            "8080:80",
            "--publish",
            "2222:22",
        ])
        .unwrap();
        let Cmd::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.publish, ["8080:80", "2222:22"]);
        assert_eq!(r.accel, Accel::Auto);
    }

    #[test]
    fn unknown_format_is_a_usage_error() {
        let err = Cli::try_parse_from(["berth", "build", "m.toml", "--format", "vhd"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
