//! The image's `User` (a name, a uid, `name:group`, `uid:gid`) as numbers,
//! looked up in the image's own `/etc/passwd` and `/etc/group`, which are
//! read inside the image's root ([`super::inroot`]): a symlink there never
//! leads to a file of the build machine.

use std::path::Path;

use super::inroot;

/// The largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_DB: u64 = 1 << 20;

fn database(rootfs: &Path, rel: &str) -> Result<String, String> {
    let data = inroot::read(rootfs, Path::new(rel), MAX_DB).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&data.unwrap_or_default()).into_owned())
}

/// Resolves an image `User` ("uid", "uid:gid", "name", "name:group") to
/// numbers through the image's own /etc/passwd and /etc/group.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = database(rootfs, "etc/passwd")?;
    let group = database(rootfs, "etc/group")?;
    let lookup = |db: &str, name: &str| -> Option<(u32, Option<u32>)> {
        db.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            let id = f.get(2)?.parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_by_uid(&passwd, n)),
        Err(_) => {
            let (uid, gid) =
                lookup(&passwd, u).ok_or_else(|| format!("the image has no user \"{u}\""))?;
            (uid, gid)
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&group, g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("the image has no group \"{g}\""))?,
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

fn lookup_by_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.get(2).and_then(|u| u.parse::<u32>().ok()) != Some(uid) {
            return None;
        }
        f.get(3)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn users_resolve_through_the_image() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\nweb:x:34:\nstaff:x:50:\n",
        )
        .unwrap();
        assert_eq!(resolve_user(t.path(), ""), Ok((0, 0)));
        assert_eq!(resolve_user(t.path(), "www"), Ok((33, 34)));
        assert_eq!(resolve_user(t.path(), "www:staff"), Ok((33, 50)));
        assert_eq!(resolve_user(t.path(), "33"), Ok((33, 34)));
        assert_eq!(resolve_user(t.path(), "1000:1000"), Ok((1000, 1000)));
        assert!(
            resolve_user(t.path(), "ghost")
                .unwrap_err()
                .contains("no user")
        );
    }

    #[test]
    fn the_image_symlinks_never_reach_the_build_machine() {
        // The build machine's own account database, which an image's
        // `etc/passwd -> /abs/path` must not be able to read.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "operator:x:4242:4242::/:/bin/sh\n").unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        symlink(&host_passwd, t.path().join("etc/passwd")).unwrap();
        let err = resolve_user(t.path(), "operator").unwrap_err();
        assert!(err.contains("no user \"operator\""), "{err}");
        // `/dev/zero` is the image's own (missing) file: no endless read.
        std::fs::remove_file(t.path().join("etc/passwd")).unwrap();
        symlink("/dev/zero", t.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(t.path(), "33"), Ok((33, 0)));
        // A huge account database is refused, not read whole.
        std::fs::remove_file(t.path().join("etc/passwd")).unwrap();
        std::fs::write(t.path().join("etc/passwd"), vec![b'#'; 2 << 20]).unwrap();
        let err = resolve_user(t.path(), "www").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
