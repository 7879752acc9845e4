//! How errors leave the `berth` binary: the exit code that says whose fault
//! it was (1: something failed, 2: the user's input is wrong). The message
//! with its causes is `berth_hostapi::error_chain::one_line`, as for
//! `berthctl` and berth-init.

use std::process::ExitCode;

/// Marks an error caused by the user's input (a manifest, an argument, a
/// file given on the command line): `berth` exits 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

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

    #[test]
    fn input_errors_exit_2_others_1() {
        let input = anyhow::Error::new(InputError("bad".into())).context("reading args");
        assert_eq!(exit_code(&input), ExitCode::from(2));
        let other = anyhow::anyhow!("boom");
        assert_eq!(exit_code(&other), ExitCode::from(1));
    }
}
