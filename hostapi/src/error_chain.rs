//! How every Berth program prints an error: the error and its causes on
//! one line, each once. `berth`, `berthctl` and berth-init all print
//! through [`one_line`], so their messages follow one rule.

use std::error::Error;

/// The error and its causes (following [`Error::source`]) on one line,
/// separated by ": ", e.g. `writing ESP: disk full`.
///
/// A cause whose text is already contained in what was printed so far is
/// left out: many errors put their source's message in their own (`"{0}"`
/// in a thiserror message, an `io::Error` wrapping another), and it would
/// otherwise show twice. Takes anyhow errors as `err.as_ref()` or `&*err`.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[derive(Debug, thiserror::Error)]
    #[error("mounting /dev/vda2 on /sysroot")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    /// An error that repeats its source's message at the end of its own.
    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Ends {
        what: String,
        #[source]
        source: std::io::Error,
    }

    /// An error that repeats its source's message at the start of its own.
    #[derive(Debug, thiserror::Error)]
    #[error("{source} while {what}")]
    struct Starts {
        what: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn anyhow_contexts_are_joined_once() {
        let err = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing ESP")
            .unwrap_err();
        assert_eq!(one_line(err.as_ref()), "writing ESP: disk full");
        assert_eq!(one_line(&*err), "writing ESP: disk full");
    }

    #[test]
    fn plain_errors_are_joined_with_their_causes() {
        let err = Outer {
            // ENODEV
            source: std::io::Error::from_raw_os_error(19),
        };
        assert_eq!(
            one_line(&err),
            "mounting /dev/vda2 on /sysroot: No such device (os error 19)"
        );
    }

    #[test]
    fn a_cause_already_printed_anywhere_is_left_out() {
        let ends = Ends {
            what: "reading /etc/hostname".into(),
            source: std::io::Error::other("permission denied"),
        };
        assert_eq!(one_line(&ends), "reading /etc/hostname: permission denied");
        let starts = Err::<(), _>(Starts {
            what: "writing the ESP".into(),
            source: std::io::Error::other("disk full"),
        })
        .context("building")
        .unwrap_err();
        assert_eq!(
            one_line(starts.as_ref()),
            "building: disk full while writing the ESP"
        );
    }

    #[test]
    fn an_error_without_causes_is_its_own_text() {
        assert_eq!(one_line(&std::io::Error::other("boom")), "boom");
    }
}
