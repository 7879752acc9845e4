//! The command line of berth-init when it is not PID 1.
//!
//! As PID 1 the arguments are ignored (the kernel passes unknown boot
//! parameters there). Otherwise the one command is `supervise`, which runs
//! the service supervisor as an ordinary process, for tests and
//! development:
//!
//! ```text
//! berth-init supervise --config FILE [--log-dir DIR] [--socket PATH] [--console TTY]
//! ```

use std::path::PathBuf;

/// Usage text.
pub const USAGE: &str = "\
usage: berth-init                   (as PID 1: stage 1 in an initramfs, else stage 2)
       berth-init supervise --config FILE [--log-dir DIR] [--socket PATH] [--console TTY]
       berth-init --version

supervise runs the services of a host configuration (JSON, as in
/usr/lib/berth/host.json) as an ordinary process: no mounts, no reboot.
It is a child subreaper, logs to DIR/<service>.log (default ./berth-logs),
serves the control protocol on PATH when given, writes its console output
to TTY as PID 1 writes /dev/console (never blocking; standard error
without it), and exits 0 after stopping every service on SIGTERM, SIGINT,
SIGUSR1, SIGUSR2 or a shutdown request.";

/// Options of `supervise`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperviseOpts {
    /// The host configuration.
    pub config: PathBuf,
    /// Where the service logs go.
    pub log_dir: PathBuf,
    /// The control socket, if any.
    pub socket: Option<PathBuf>,
    /// A terminal to use as the console instead of standard error.
    pub console: Option<PathBuf>,
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Run the supervisor.
    Supervise(SuperviseOpts),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Cmd, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("supervise") => {}
        Some("-h" | "--help" | "help") => return Ok(Cmd::Help),
        Some("-V" | "--version") => return Ok(Cmd::Version),
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => {
            return Err("berth-init runs as PID 1; use `berth-init supervise` otherwise".into());
        }
    }
    let mut config = None;
    let mut log_dir = PathBuf::from("berth-logs");
    let mut socket = None;
    let mut console = None;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--log-dir" => log_dir = PathBuf::from(value()?),
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--console" => console = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Ok(Cmd::Help),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let config = config.ok_or("supervise needs --config FILE")?;
    Ok(Cmd::Supervise(SuperviseOpts {
        config,
        log_dir,
        socket,
        console,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn supervise_options() {
        assert_eq!(
            parse(&args(
                "supervise --config c.json --log-dir /tmp/l --socket=/tmp/s --console /dev/pts/9"
            )),
            Ok(Cmd::Supervise(SuperviseOpts {
                config: "c.json".into(),
                log_dir: "/tmp/l".into(),
                socket: Some("/tmp/s".into()),
                console: Some("/dev/pts/9".into()),
            }))
        );
        assert!(matches!(
            parse(&args("supervise --config c.json")),
            Ok(Cmd::Supervise(SuperviseOpts { socket: None, .. }))
        ));
    }

    #[test]
    fn bad_command_lines() {
        assert!(parse(&args("supervise")).is_err());
        assert!(parse(&args("supervise --config")).is_err());
        assert!(parse(&args("supervise --config x --bogus")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&[]).is_err());
        assert_eq!(parse(&args("--help")), Ok(Cmd::Help));
    }
}
