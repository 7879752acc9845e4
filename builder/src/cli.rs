//! The `berth` command line: the clap-derived arguments of each verb (their
//! doc comments are the help text), mapped onto the options the verb's
//! module owns ([`BuildOpts`], [`RunOpts`], [`ServeOpts`]), and one
//! function that runs a verb.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::build::{BuildOpts, ImageFormat};
use crate::run::{Accel, RunOpts};
use crate::serve::ServeOpts;

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
    Build(BuildArgs),
    /// Boot a disk image under QEMU (UEFI, serial console on this terminal).
    Run(RunArgs),
    /// Serve an OSTree repository over HTTP for hosts to upgrade from.
    Serve(ServeArgs),
}

/// Disk image formats `berth build` writes: `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// A raw (sparse) GPT disk image: `NAME.raw`.
    Raw,
    /// A QEMU copy-on-write image: `NAME.qcow2`.
    Qcow2,
}

/// Options of `berth build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The manifest (TOML) describing the image.
    pub manifest: PathBuf,
    /// Directory for the image and the OSTree repository (`DIR/NAME.raw`, `DIR/repo`).
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// Disk image format.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: FormatArg,
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

/// Ways QEMU can run the guest's CPU: `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM when a short probe boots under it, else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

/// Options of `berth run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
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
    pub accel: AccelArg,
    /// Also write the serial console to this file.
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// Pass a provisioning document to the guest through QEMU fw_cfg.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Options of `berth serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The OSTree archive repository (e.g. out/repo).
    pub repo: PathBuf,
    /// TCP port (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Do not log requests.
    #[arg(long)]
    pub quiet: bool,
    /// Connections served at once; more wait in the kernel's listen queue.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client has to send a complete request head, counted from
    /// the connection's start or the end of its previous response (so it
    /// is also how long an idle keep-alive connection is kept).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a response may make no progress (the client stopped
    /// reading) before the connection is dropped.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout: u64,
}

impl From<FormatArg> for ImageFormat {
    fn from(arg: FormatArg) -> ImageFormat {
        match arg {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

impl From<BuildArgs> for BuildOpts {
    fn from(a: BuildArgs) -> BuildOpts {
        BuildOpts {
            manifest: a.manifest,
            output: a.output,
            format: a.format.into(),
            repo: a.repo,
            cache_dir: a.cache_dir,
            refresh: a.refresh,
        }
    }
}

impl From<AccelArg> for Accel {
    fn from(arg: AccelArg) -> Accel {
        match arg {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        }
    }
}

impl From<RunArgs> for RunOpts {
    fn from(a: RunArgs) -> RunOpts {
        RunOpts {
            image: a.image,
            persist: a.persist,
            publish: a.publish,
            memory: a.memory,
            cpus: a.cpus,
            timeout: a.timeout,
            until_ready: a.until_ready,
            accel: a.accel.into(),
            console_log: a.console_log,
            config: a.config,
        }
    }
}

impl From<ServeArgs> for ServeOpts {
    fn from(a: ServeArgs) -> ServeOpts {
        ServeOpts {
            repo: a.repo,
            port: a.port,
            bind: a.bind,
            quiet: a.quiet,
            max_connections: a.max_connections,
            header_timeout: a.header_timeout,
            send_timeout: a.send_timeout,
        }
    }
}

/// Runs one verb; the returned code is the process's exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Build(args) => crate::build::run(&args.into()).map(|()| ExitCode::SUCCESS),
        Cmd::Run(args) => crate::run::run(&args.into()),
        Cmd::Serve(args) => crate::serve::run(&args.into()).map(|()| ExitCode::SUCCESS),
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
        let b = BuildOpts::from(b);
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
        let r = RunOpts::from(r);
        assert_eq!(r.publish, ["8080:80", "2222:22"]);
        assert_eq!(r.accel, Accel::Auto);
    }

    #[test]
    fn unknown_format_is_a_usage_error() {
        let err = Cli::try_parse_from(["berth", "build", "m.toml", "--format", "vhd"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
