//! One wrapper for every outside tool berth runs (mmdebstrap, mke2fs,
//! depmod, qemu-img, qemu).
//!
//! It closes stdin, captures stdout and stderr, and on failure returns an
//! error that names what was being done, the command line and the tail of
//! its stderr, so a user sees why without re-running anything.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::process::{Command, Output, Stdio};

/// How many trailing stderr lines an error shows.
const STDERR_TAIL_LINES: usize = 20;

/// Why an outside command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable).
    #[error(
        "{what}: could not run `{cmdline}` (is it installed? scripts/install-deps installs it)"
    )]
    Spawn {
        /// What was being done.
        what: String,
        /// The command line.
        cmdline: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program is not installed; it comes with a known Debian package.
    #[error(
        "{what}: `{program}` is not installed (Debian package {package}; scripts/install-deps installs it)"
    )]
    Missing {
        /// What was being done.
        what: String,
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// The program ran and failed.
    #[error("{what}: `{cmdline}` failed ({status}){tail}")]
    Failed {
        /// What was being done.
        what: String,
        /// The command line.
        cmdline: String,
        /// Exit status, as text.
        status: String,
        /// The last lines of stderr, prefixed for display.
        tail: String,
        /// Everything the program wrote to stderr.
        stderr: String,
    },
}

impl CommandError {
    /// Everything the failed program wrote to stderr (empty if it never ran).
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Spawn { .. } | CommandError::Missing { .. } => "",
        }
    }
}

/// Renders a command line for messages, quoting arguments with spaces.
pub fn display_cmdline(cmd: &Command) -> String {
    let mut out = String::new();
    let program = cmd.get_program().to_string_lossy();
    out.push_str(&program);
    for arg in cmd.get_args() {
        out.push(' ');
        push_quoted(&mut out, arg);
    }
    out
}

fn push_quoted(out: &mut String, arg: &OsStr) {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        out.push_str(&s);
    } else {
        let _ = write!(out, "'{}'", s.replace('\'', r"'\''"));
    }
}

/// The last `n` non-empty lines of `text`, each on its own indented line.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

/// Runs `cmd` to completion with stdin closed, capturing its output.
///
/// `what` says what the command is for ("extracting packages"); it starts
/// the error message.
pub fn run(what: &str, cmd: &mut Command) -> Result<Output, CommandError> {
    let cmdline = display_cmdline(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| CommandError::Spawn {
            what: what.to_string(),
            cmdline: cmdline.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Some tools (mmdebstrap's apt, qemu-img) report on stdout.
    let shown = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        stderr.clone()
    };
    Err(CommandError::Failed {
        what: what.to_string(),
        cmdline,
        status: output.status.to_string(),
        tail: tail_lines(&shown, STDERR_TAIL_LINES),
        stderr,
    })
}

/// [`run`] for a program from Debian package `package`: when the program
/// is not installed, the error names the package to install.
pub fn run_packaged(what: &str, package: &str, cmd: &mut Command) -> Result<Output, CommandError> {
    run(what, cmd).map_err(|e| match e {
        CommandError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CommandError::Missing {
                what: what.to_string(),
                program: cmd.get_program().to_string_lossy().into_owned(),
                package: package.to_string(),
            }
        }
        e => e,
    })
}

/// Runs `cmd` and returns its stdout as text.
pub fn run_stdout(what: &str, cmd: &mut Command) -> Result<String, CommandError> {
    let out = run(what, cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_step_the_command_and_the_stderr_tail() {
        let err = run(
            "testing failure",
            Command::new("sh").args(["-c", "echo first >&2; echo 'last line' >&2; exit 3"]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("testing failure: `sh -c 'echo first"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("\n    last line"), "{msg}");
        assert!(err.stderr().contains("first"));
    }

    #[test]
    fn missing_program_says_so() {
        let err = run("probing", &mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/tool"));
    }

    #[test]
    fn missing_packaged_program_names_its_package() {
        let err = run_packaged(
            "signing",
            "sbsigntool",
            &mut Command::new("/nonexistent/sbsign"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "signing: `/nonexistent/sbsign` is not installed (Debian package sbsigntool; \
             scripts/install-deps installs it)"
        );
    }

    #[test]
    fn success_returns_stdout() {
        let out = run_stdout("echo", Command::new("echo").arg("hi there")).unwrap();
        assert_eq!(out, "hi there\n");
    }

    #[test]
    fn stdin_is_closed() {
        // `cat` would block forever on an inherited terminal; with stdin
        // closed it sees EOF at once.
        let out = run_stdout("cat", &mut Command::new("cat")).unwrap();
        assert_eq!(out, "");
    }
}
