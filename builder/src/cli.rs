//! The `berth` command line: the clap-derived arguments of each verb (their
//! doc comments are the help text), mapped onto the options the verb's
//! module owns ([`BuildOpts`], [`RunOpts`], [`ServeOpts`], [`RolloutOpts`],
//! [`GenerateOpts`], [`FleetOpts`]), and one function that runs a verb.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::build::{BuildOpts, ImageFormat};
use crate::fleet::{FleetCommand, FleetOpts};
use crate::keys::GenerateOpts;
use crate::rollout::{Action, Change, RolloutOpts, Start};
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
    /// Start, pause, resume, complete or show the staged rollout of a
    /// ref's newest commit.
    Rollout(RolloutArgs),
    /// Make Secure Boot keys.
    Keys(KeysArgs),
    /// The fleet as its etcd holds it: hosts, versions, halted groups,
    /// gone hosts, announced services.
    Fleet(FleetArgs),
}

/// Options of `berth fleet`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// What to show.
    #[command(subcommand)]
    pub command: FleetCmd,
}

/// etcd options every `berth fleet` verb takes.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// An etcd client URL (`http://10.0.0.1:2379`); repeat for more members.
    #[arg(
        long = "etcd",
        value_name = "URL",
        required = true,
        env = "BERTH_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The verbs of `berth fleet`.
#[derive(Debug, Clone, Subcommand)]
pub enum FleetCmd {
    /// One line per live host (name, version, boot state, agent state,
    /// slot, last seen) and a summary: hosts per version, groups halted
    /// by a failed update, hosts gone.
    Status {
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Announced service endpoints (`announce = PORT`), of NAME or all.
    Services {
        /// Only this service.
        name: Option<String>,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Every FleetLock group's slots and holders (with since when), as the
    /// lock server keeps them in etcd.
    Locks {
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Release host ID's reboot slot in GROUP (for a host that died
    /// holding one, or to let a fleet halted by a failed update go on).
    Unlock {
        /// The FleetLock group.
        group: String,
        /// The host's FleetLock id (its host id, as `berth fleet locks` shows).
        id: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

impl From<FleetArgs> for FleetOpts {
    fn from(a: FleetArgs) -> Self {
        let (command, etcd) = match a.command {
            FleetCmd::Status { etcd } => (FleetCommand::Status, etcd),
            FleetCmd::Services { name, etcd } => (FleetCommand::Services { name }, etcd),
            FleetCmd::Locks { etcd } => (FleetCommand::Locks, etcd),
            FleetCmd::Unlock { group, id, etcd } => (FleetCommand::Unlock { group, id }, etcd),
        };
        FleetOpts {
            etcd: etcd.endpoints,
            json: etcd.json,
            command,
        }
    }
}

/// Options of `berth keys`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeysArgs {
    /// What to do with keys.
    #[command(subcommand)]
    pub command: KeysCmd,
}

/// The verbs of `berth keys`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCmd {
    /// Make a fresh Secure Boot PK, KEK and db (keys, certificates, EFI
    /// signature lists and signed .auth updates) in a new folder.
    Generate(GenerateArgs),
}

/// Options of `berth keys generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The folder to create (it may exist if empty).
    pub dir: PathBuf,
    /// Prefix of the certificates' common names: "NAME PK", "NAME KEK", "NAME db".
    #[arg(long, default_value = "Berth")]
    pub name: String,
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
    /// Boot with OVMF's Secure Boot firmware and a fresh variable store
    /// in setup mode: an image that enrolls its keys (`[secure-boot]`
    /// with `enroll = "force"`) does so, resets, and boots verified.
    #[arg(long)]
    pub secure_boot: bool,
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

/// Options of `berth rollout`. With none of --duration, --start-fraction,
/// --start, --pause, --resume and --complete it shows the rollout.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// The OSTree archive repository (e.g. out/repo); its key directory
    /// (`REPO.signing`) signs the rollout.
    pub repo: PathBuf,
    /// The ref whose newest commit is rolled out, e.g. berth/web/x86_64.
    #[arg(long = "ref", value_name = "REF")]
    pub ostree_ref: String,
    /// Start a rollout lasting this long from the start fraction to
    /// every host, e.g. 24h, 90m [default when starting: 24h].
    #[arg(long, value_name = "DURATION", value_parser = crate::rollout::parse_duration_secs)]
    pub duration: Option<u64>,
    /// Start a rollout letting this fraction of hosts (0 to 1) take the
    /// commit at once [default when starting: 0.05].
    #[arg(long, value_name = "FRACTION", value_parser = crate::rollout::parse_fraction)]
    pub start_fraction: Option<f64>,
    /// Start a rollout at this time, RFC 3339 in UTC (e.g.
    /// 2026-12-01T22:00:00Z) [default when starting: now].
    #[arg(long, value_name = "TIME", value_parser = crate::rollout::parse_start)]
    pub start: Option<u64>,
    /// Hold the hosts that have not taken the commit yet.
    #[arg(long, conflicts_with_all = ["duration", "start_fraction", "start", "resume", "complete"])]
    pub pause: bool,
    /// Go on from where the rollout was paused.
    #[arg(long, conflicts_with_all = ["duration", "start_fraction", "start", "complete"])]
    pub resume: bool,
    /// Let every host take the commit now.
    #[arg(long, conflicts_with_all = ["duration", "start_fraction", "start"])]
    pub complete: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
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

impl From<GenerateArgs> for GenerateOpts {
    fn from(a: GenerateArgs) -> GenerateOpts {
        GenerateOpts {
            dir: a.dir,
            name: a.name,
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
            secure_boot: a.secure_boot,
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

impl From<RolloutArgs> for RolloutOpts {
    fn from(a: RolloutArgs) -> RolloutOpts {
        let change = if a.pause {
            Some(Change::Pause)
        } else if a.resume {
            Some(Change::Resume)
        } else if a.complete {
            Some(Change::Complete)
        } else {
            None
        };
        let starting = a.duration.is_some() || a.start_fraction.is_some() || a.start.is_some();
        let action = match change {
            Some(c) => Some(Action::Change(c)),
            None if starting => Some(Action::Start(Start {
                start: a.start,
                duration_secs: a.duration.unwrap_or(crate::rollout::DEFAULT_DURATION_SECS),
                start_fraction: a
                    .start_fraction
                    .unwrap_or(crate::rollout::DEFAULT_START_FRACTION),
            })),
            None => None,
        };
        RolloutOpts {
            repo: a.repo,
            ostree_ref: a.ostree_ref,
            action,
            json: a.json,
        }
    }
}

/// Runs one verb; the returned code is the process's exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Build(args) => crate::build::run(&args.into()).map(|()| ExitCode::SUCCESS),
        Cmd::Run(args) => crate::run::run(&args.into()),
        Cmd::Serve(args) => crate::serve::run(&args.into()).map(|()| ExitCode::SUCCESS),
        Cmd::Rollout(args) => crate::rollout::run(&args.into()).map(|()| ExitCode::SUCCESS),
        Cmd::Keys(KeysArgs {
            command: KeysCmd::Generate(args),
        }) => crate::keys::run(&args.into()).map(|()| ExitCode::SUCCESS),
        Cmd::Fleet(args) => crate::fleet::run(&args.into()),
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

    fn rollout(args: &[&str]) -> Result<RolloutOpts, clap::Error> {
        let argv = ["berth", "rollout", "out/repo", "--ref", "berth/web/x86_64"];
        let cli = Cli::try_parse_from(argv.iter().chain(args))?;
        let Cmd::Rollout(r) = cli.command else {
            panic!("not rollout")
        };
        Ok(r.into())
    }

    #[test]
    fn rollout_flags_become_one_action() {
        let show = rollout(&[]).unwrap();
        assert_eq!(show.repo, PathBuf::from("out/repo"));
        assert_eq!(show.ostree_ref, "berth/web/x86_64");
        assert_eq!((show.action, show.json), (None, false));
        assert_eq!(
            rollout(&["--duration", "90m"]).unwrap().action,
            Some(Action::Start(Start {
                start: None,
                duration_secs: 5400,
                start_fraction: 0.05,
            }))
        );
        assert_eq!(
            rollout(&[
                "--start",
                "2026-12-01T22:00:00Z",
                "--start-fraction",
                "0",
                "--json"
            ])
            .unwrap(),
            RolloutOpts {
                repo: "out/repo".into(),
                ostree_ref: "berth/web/x86_64".into(),
                action: Some(Action::Start(Start {
                    start: Some(1_796_162_400),
                    duration_secs: 24 * 3600,
                    start_fraction: 0.0,
                })),
                json: true,
            }
        );
        for (flag, change) in [
            ("--pause", Change::Pause),
            ("--resume", Change::Resume),
            ("--complete", Change::Complete),
        ] {
            assert_eq!(
                rollout(&[flag]).unwrap().action,
                Some(Action::Change(change))
            );
        }
    }

    #[test]
    fn bad_rollout_flags_are_usage_errors() {
        for bad in [
            &["--pause", "--resume"][..],
            &["--complete", "--duration", "1h"],
            &["--pause", "--start-fraction", "0.1"],
            &["--start-fraction", "1.5"],
            &["--start-fraction", "some"],
            &["--duration", "soon"],
            &["--duration", "1500ms"],
            &["--start", "tomorrow"],
            &["--start", "2026-12-01 22:00"],
        ] {
            let e = rollout(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let e = Cli::try_parse_from(["berth", "rollout", "out/repo"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "--ref is required: {e}");
    }

    #[test]
    fn keys_generate_takes_a_folder_and_a_name() {
        let cli = Cli::try_parse_from(["berth", "keys", "generate", "sb"]).unwrap();
        let Cmd::Keys(KeysArgs {
            command: KeysCmd::Generate(g),
        }) = cli.command
        else {
            panic!("not keys generate")
        };
        let g = GenerateOpts::from(g);
        assert_eq!((g.dir, g.name.as_str()), (PathBuf::from("sb"), "Berth"));
        let cli =
            Cli::try_parse_from(["berth", "keys", "generate", "sb", "--name", "Acme"]).unwrap();
        let Cmd::Keys(KeysArgs {
            command: KeysCmd::Generate(g),
        }) = cli.command
        else {
            panic!("not keys generate")
        };
        assert_eq!(g.name, "Acme");
        let e = Cli::try_parse_from(["berth", "keys", "generate"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "DIR is required: {e}");
    }

    #[test]
    fn unknown_format_is_a_usage_error() {
        let err = Cli::try_parse_from(["berth", "build", "m.toml", "--format", "vhd"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
