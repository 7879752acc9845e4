//! root's `authorized_keys`: the image's keys kept apart from every other.
//!
//! dropbear (Debian 12's 2022.83) reads only `~/.ssh/authorized_keys`, so
//! the image's keys (the manifest's `[ssh] authorized-keys`, shipped in the
//! read-only `/usr/lib/berth/ssh/authorized_keys` and replaced by every
//! upgrade) go into a marked block at the top of that file, which
//! `berthctl provision` rewrites at every boot from the booted image's
//! list. A key dropped from the manifest so leaves the block at the first
//! boot of the new version. Lines outside the block (keys from the
//! provisioning data, an admin's own) are never touched by that rewrite.
//!
//! Hosts provisioned before the block existed had the image's keys mixed
//! in with the others: the first rewrite drops loose lines that equal a
//! key of any deployment's image (the booted and the rollback one), so an
//! upgrade from such a host revokes too.

use std::path::Path;

/// The first line of the block.
pub const BEGIN: &str =
    "# berth: keys of the image (/usr/lib/berth/ssh/authorized_keys), rewritten at every boot";
/// The last line of the block.
pub const END: &str = "# berth: end of the image's keys";

/// The keys of a key list text: non-blank lines that are not comments.
pub fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Splits authorized_keys text into the block's keys (`None` if there is
/// no block) and the lines outside it, in order.
pub fn split(text: &str) -> (Option<Vec<String>>, Vec<String>) {
    let mut block: Option<Vec<String>> = None;
    let mut inside = false;
    let mut other = Vec::new();
    for l in text.lines() {
        if l == BEGIN {
            inside = true;
            block.get_or_insert_with(Vec::new);
        } else if l == END && inside {
            inside = false;
        } else if inside {
            if let Some(b) = block.as_mut() {
                b.push(l.to_string());
            }
        } else {
            other.push(l.to_string());
        }
    }
    (block, other)
}

/// The text with the block holding exactly `image` (no block if empty)
/// and the other lines kept. Without a block yet, loose lines equal to a
/// key in `legacy` (the image keys of every deployment on the host) are
/// taken for what older versions merged in, and dropped.
pub fn with_image_keys(text: &str, image: &[String], legacy: &[String]) -> String {
    let (block, mut other) = split(text);
    if block.is_none() {
        other.retain(|l| !legacy.iter().any(|k| k == l.trim()));
    }
    let mut out = String::new();
    if !image.is_empty() {
        out.push_str(BEGIN);
        out.push('\n');
        for k in image {
            out.push_str(k);
            out.push('\n');
        }
        out.push_str(END);
        out.push('\n');
    }
    for l in other {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// The text with `keys` added after everything (outside the block),
/// those already outside it skipped. Returns it and how many were added.
pub fn with_keys(text: &str, keys: &[String]) -> (String, usize) {
    let (_, other) = split(text);
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let mut added = 0;
    let mut seen: Vec<String> = other.iter().map(|l| l.trim().to_string()).collect();
    for k in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        if !seen.iter().any(|l| l == k) {
            out.push_str(k);
            out.push('\n');
            seen.push(k.to_string());
            added += 1;
        }
    }
    (out, added)
}

/// The image keys of every deployment under `root`'s `/sysroot` (the
/// booted one and the rollback one), for [`with_image_keys`]'s `legacy`.
pub fn deployments_image_keys(root: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    let Ok(oses) = std::fs::read_dir(root.join("sysroot/ostree/deploy")) else {
        return keys;
    };
    for os in oses.filter_map(|e| e.ok()) {
        let Ok(deps) = std::fs::read_dir(os.path().join("deploy")) else {
            continue;
        };
        for d in deps.filter_map(|e| e.ok()) {
            let file = d.path().join(berth_hostapi::provisioning::IMAGE_ROOT_KEYS);
            if let Ok(text) = std::fs::read_to_string(file) {
                keys.extend(key_lines(&text));
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_block_follows_the_image_and_other_lines_stay() {
        let t = with_image_keys("", &v(&["ssh-ed25519 A img"]), &[]);
        assert_eq!(t, format!("{BEGIN}\nssh-ed25519 A img\n{END}\n"));
        let (t, n) = with_keys(&t, &v(&["ssh-ed25519 P prov"]));
        assert_eq!(n, 1);
        let t = format!("{t}ssh-ed25519 M admin\n");
        // The next image has B instead of A.
        let t = with_image_keys(&t, &v(&["ssh-ed25519 B img"]), &v(&["ssh-ed25519 A img"]));
        assert_eq!(
            t,
            format!("{BEGIN}\nssh-ed25519 B img\n{END}\nssh-ed25519 P prov\nssh-ed25519 M admin\n")
        );
        // An image without keys: no block at all.
        let t = with_image_keys(&t, &[], &[]);
        assert_eq!(t, "ssh-ed25519 P prov\nssh-ed25519 M admin\n");
    }

    #[test]
    fn a_provisioned_key_equal_to_an_image_key_survives_its_removal_from_the_image() {
        let t = with_image_keys("", &v(&["ssh-ed25519 A x"]), &[]);
        let (t, n) = with_keys(&t, &v(&["ssh-ed25519 A x"]));
        assert_eq!(n, 1);
        let t = with_image_keys(&t, &[], &v(&["ssh-ed25519 A x"]));
        assert_eq!(t, "ssh-ed25519 A x\n");
    }

    #[test]
    fn keys_merged_in_by_older_versions_are_revoked() {
        // Before the block: the image key A appended like any other.
        let old = "ssh-ed25519 A img\nssh-ed25519 P prov\n";
        let t = with_image_keys(
            old,
            &v(&["ssh-ed25519 B img"]),
            &v(&["ssh-ed25519 A img", "ssh-ed25519 B img"]),
        );
        assert_eq!(
            t,
            format!("{BEGIN}\nssh-ed25519 B img\n{END}\nssh-ed25519 P prov\n")
        );
    }
}
