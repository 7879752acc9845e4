//! Outside tools run to completion (qemu-img, cp, ostree, skopeo, gpg,
//! ssh, `berth build`): stdin closed, output captured, and an error that
//! shows the command line, the exit status and everything it wrote, so a
//! failed test says why without re-running anything.
//!
//! Long-running children (QEMU, the registry, `berth serve`) are spawned
//! where they live, not here.

use std::process::{Command, Output, Stdio};

use berth::command::display_cmdline;

use crate::{Error, Result};

/// Runs `cmd` to completion with stdin closed and returns its output,
/// whatever its exit status (the caller judges it); fails only when the
/// program cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| Error::Spawn {
            cmdline: display_cmdline(cmd),
            source,
        })
}

/// Runs `cmd`, which must exit 0, and returns its output; otherwise an
/// [`Error::Command`] with its command line, status, stderr and stdout.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(Error::Command {
        cmdline: display_cmdline(cmd),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// [`run`], returning its stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

/// [`run`], returning all it wrote as text: [`text`].
pub fn run_text(cmd: &mut Command) -> Result<String> {
    Ok(text(&run(cmd)?))
}

/// A command's stdout followed by its stderr, as text (for tools whose
/// report is spread over both, such as `berth build`).
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a failed command wrote, for [`Error::Command`]'s message.
pub(crate) fn what_it_wrote(stdout: &str, stderr: &str) -> String {
    match (stdout.trim_end(), stderr.trim_end()) {
        ("", "") => "; no output".into(),
        ("", err) => format!("; stderr:\n{err}"),
        (out, "") => format!("; stdout:\n{out}"),
        (out, err) => format!("; stdout:\n{out}\nstderr:\n{err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_the_command_its_status_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo oops >&2; exit 3'` failed (exit status: 3); stderr:\noops"
        );
        let err = run(&mut Command::new("false")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`false` failed (exit status: 1); no output"
        );
    }

    #[test]
    fn a_failure_shows_stdout_too_when_there_is_some() {
        let err = run_text(Command::new("sh").args(["-c", "echo step 1; echo bad >&2; exit 2"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo step 1; echo bad >&2; exit 2'` failed (exit status: 2); stdout:\nstep 1\nstderr:\nbad"
        );
    }

    #[test]
    fn a_program_that_cannot_start_is_named() {
        let err = output(Command::new("/nonexistent/tool").arg("x")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        let msg = format!("{err:?}");
        assert!(msg.contains("`/nonexistent/tool x`"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn success_gives_the_output_and_stdin_is_closed() {
        assert_eq!(run_stdout(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        // `cat` would wait on an inherited terminal; it sees EOF at once.
        assert_eq!(run_stdout(&mut Command::new("cat")).unwrap(), "");
        let both = run_text(Command::new("sh").args(["-c", "echo out; echo err >&2"])).unwrap();
        assert_eq!(both, "out\nerr\n");
        // output() leaves the judging to the caller.
        let out = output(Command::new("sh").args(["-c", "exit 2"])).unwrap();
        assert_eq!(out.status.code(), Some(2));
    }
}
