//! From a request's path to a path relative to the repository: decoded
//! once, each segment a plain file name. Anything that names a parent or
//! hides a separator is refused here, before any file is opened; symlinks
//! are refused later, by [`super::open`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Why a request path is not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a path at all (`*`, a NUL byte): 400.
    BadRequest,
    /// A `.` or `..` segment, plain or percent-encoded, or an encoded `/`
    /// inside a segment: 403.
    Forbidden,
}

/// The path under the repository that `path` (the path of a request
/// target, without its query) names. Empty segments (`//`) are skipped,
/// so a path that looks absolute still stays inside; an empty result
/// names the repository itself.
pub fn relative_path(path: &str) -> Result<PathBuf, Refused> {
    if !path.starts_with('/') {
        return Err(Refused::BadRequest);
    }
    let mut out = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let name: Vec<u8> = percent_decode_str(segment).collect();
        if name.contains(&0) {
            return Err(Refused::BadRequest);
        }
        if name == b"." || name == b".." || name.contains(&b'/') {
            return Err(Refused::Forbidden);
        }
        out.push(OsStr::from_bytes(&name));
    }
    Ok(out)
}

/// `target` fit for one log line: bytes outside printable ASCII (which
/// could drive a terminal) percent-encoded.
pub fn loggable(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_stay_inside_the_repo() {
        assert_eq!(relative_path("/config"), Ok(PathBuf::from("config")));
        assert_eq!(
            relative_path("/objects/ab/cd.filez"),
            Ok(PathBuf::from("objects/ab/cd.filez"))
        );
        // An absolute-looking path is still under the repository.
        assert_eq!(
            relative_path("//etc/passwd"),
            Ok(PathBuf::from("etc/passwd"))
        );
        assert_eq!(relative_path("/"), Ok(PathBuf::new()));
        // Encoded ordinary characters are decoded once.
        assert_eq!(relative_path("/%63onfig"), Ok(PathBuf::from("config")));
        assert_eq!(relative_path("/%252e%252e"), Ok(PathBuf::from("%2e%2e")));
    }

    #[test]
    fn parents_and_hidden_separators_are_forbidden() {
        for path in [
            "/../etc/passwd",
            "/objects/../../x",
            "/./config",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/.%2e/x",
            "/objects/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/a%2fb",
        ] {
            assert_eq!(relative_path(path), Err(Refused::Forbidden), "{path}");
        }
    }

    #[test]
    fn non_paths_are_bad_requests() {
        assert_eq!(relative_path("*"), Err(Refused::BadRequest));
        assert_eq!(relative_path("config"), Err(Refused::BadRequest));
        assert_eq!(relative_path("/config%00.x"), Err(Refused::BadRequest));
    }

    #[test]
    fn log_lines_carry_no_control_bytes() {
        assert_eq!(loggable("/config?a=b"), "/config?a=b");
        assert_eq!(loggable("/a b\x1b[2J\u{9b}"), "/a%20b%1B[2J%C2%9B");
    }
}
