//! Extra environment for a service from a file: `KEY=VALUE` lines, as
//! provisioning writes them (`/etc/berth/env/<service>.env`). Blank lines
//! and `#` comments are skipped; values are taken as they are (no quotes,
//! no expansion).

use std::collections::BTreeMap;
use std::path::Path;

/// The variables in `path`; a missing or unreadable file gives none.
pub fn read(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    parse(&text)
}

/// The variables in `text`.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines() {
        let env = parse("# comment\nA=1\n\nB=two words\nbad line\n=x\nC=a=b\n");
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("A", "1"), ("B", "two words"), ("C", "a=b")]);
        assert!(read(Path::new("/nonexistent/x.env")).is_empty());
    }
}
