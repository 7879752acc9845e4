//! How errors leave the `berth` binary: one message with its causes, and the
//! exit code that says whose fault it was (1: something failed, 2: the
//! user's input is wrong).

use std::process::ExitCode;

/// Marks an error caused by the user's input (a manifest, an argument, a
/// file given on the command line): `berth` exits 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The error and its causes on one line, separated by ": ", each cause
/// once (a cause whose text is already in its parent's is skipped).
pub fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// 2 when anything in the chain is an [`InputError`] or a manifest error,
/// else 1.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let input = err.chain().any(|c| {
        c.downcast_ref::<InputError>().is_some()
            || c.downcast_ref::<crate::manifest::ManifestError>().is_some()
    });
    if input {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn chain_joins_causes_once() {
        let err = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing ESP")
            .unwrap_err();
        assert_eq!(chain(&err), "writing ESP: disk full");
    }

    #[test]
    fn input_errors_exit_2_others_1() {
        let input = anyhow::Error::new(InputError("bad".into())).context("reading args");
        assert_eq!(exit_code(&input), ExitCode::from(2));
        let other = anyhow::anyhow!("boom");
        assert_eq!(exit_code(&other), ExitCode::from(1));
    }
}
