//! User and group names to ids from /etc/passwd and /etc/group, read
//! directly: berth-init is a static glibc binary, where NSS (getpwnam) does
//! not work.

use std::path::Path;

use crate::sys::ffi::Credentials;

/// Why a service's user or group could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user name in /etc/passwd.
    #[error("no user {0:?} in /etc/passwd")]
    NoUser(String),
    /// No such group name in /etc/group.
    #[error("no group {0:?} in /etc/group")]
    NoGroup(String),
}

/// One /etc/passwd entry (the fields berth-init uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Parses /etc/passwd text.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

/// One /etc/group entry: name, gid, members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member user names.
    pub members: Vec<String>,
}

/// Parses /etc/group text.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A resolved identity plus the home directory (for HOME).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Credentials to switch to.
    pub credentials: Credentials,
    /// Login name, if the user has one.
    pub name: Option<String>,
    /// Home directory.
    pub home: String,
}

/// Resolves `user` and `group` (names or numbers) against the passwd and
/// group texts. The group defaults to the user's primary group;
/// supplementary groups are those listing the user as a member.
pub fn resolve_texts(
    passwd: &str,
    group_text: &str,
    user: &str,
    group: Option<&str>,
) -> Result<Identity, UserError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group_text);
    let entry = users.iter().find(|u| u.name == user).or_else(|| {
        user.parse::<u32>()
            .ok()
            .and_then(|n| users.iter().find(|u| u.uid == n))
    });
    let (uid, mut gid, name, home) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
        (None, Ok(n)) => (n, n, None, "/".to_string()),
        (None, Err(_)) => return Err(UserError::NoUser(user.to_string())),
    };
    if let Some(g) = group {
        gid = match groups.iter().find(|e| e.name == g) {
            Some(e) => e.gid,
            None => g.parse().map_err(|_| UserError::NoGroup(g.to_string()))?,
        };
    }
    let mut supplementary: Vec<u32> = match &name {
        Some(n) => groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == n))
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    if !supplementary.contains(&gid) {
        supplementary.insert(0, gid);
    }
    Ok(Identity {
        credentials: Credentials {
            uid,
            gid,
            groups: supplementary,
        },
        name,
        home,
    })
}

/// Resolves against `<root>/etc/passwd` and `<root>/etc/group`.
pub fn resolve(root: &Path, user: &str, group: Option<&str>) -> Result<Identity, UserError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group_text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_texts(&passwd, &group_text, user, group)
}

/// Where service users keep their state: the builder gives each its
/// home here (`/var/lib/<name>`).
const STATE_PARENT: &str = "var/lib";

/// Makes the home of a non-root service user, `/var/lib/<name>`, when it
/// is missing: owned by the user, mode 0700, as systemd's
/// `StateDirectory=` does. `/var` starts empty on a new host (libostree
/// never checks out a commit's /var), so a program that keeps its data at
/// home (etcd, a database) would otherwise find no writable place. Only a
/// single component right below `/var/lib` is made, and an existing entry
/// is left as it is (never chowned: root owns /var/lib, so nothing else
/// can have planted it). Returns whether it made the directory. `root`
/// is the file system root (`/` on a host; a temporary folder in tests).
pub fn ensure_state_home(root: &Path, id: &Identity) -> std::io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    if id.credentials.uid == 0 {
        return Ok(false);
    }
    let Some(name) = id.home.strip_prefix("/var/lib/") else {
        return Ok(false);
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Ok(false);
    }
    let path = root.join(STATE_PARENT).join(name);
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    let fd = rustix::fs::open(
        &path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(id.credentials.uid)),
        Some(rustix::fs::Gid::from_raw(id.credentials.gid)),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                          web:x:1000:1000:Web:/var/lib/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:web,daemon\nweb:x:1000:\ndocker:x:998:web\n";

    #[test]
    fn names_resolve_with_supplementary_groups() -> Result<(), UserError> {
        let id = resolve_texts(PASSWD, GROUP, "web", None)?;
        assert_eq!(
            id.credentials,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10, 998]
            }
        );
        assert_eq!(id.home, "/var/lib/web");
        let id = resolve_texts(PASSWD, GROUP, "daemon", Some("docker"))?;
        assert_eq!((id.credentials.uid, id.credentials.gid), (1, 998));
        assert_eq!(id.credentials.groups, [998, 10]);
        Ok(())
    }

    #[test]
    fn a_service_users_home_under_var_lib_is_made_once_and_only_there() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("var/lib"))?;
        let me = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let mut id = Identity {
            credentials: Credentials {
                uid: me.max(1),
                gid,
                groups: vec![gid],
            },
            name: Some("etcd".into()),
            home: "/var/lib/etcd".into(),
        };
        if me == 0 {
            // As root the chown works for any uid; as a user, only to itself.
            id.credentials.uid = 1000;
        }
        assert!(ensure_state_home(root.path(), &id)?);
        let meta = std::fs::metadata(root.path().join("var/lib/etcd"))?;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), id.credentials.uid);
        assert!(!ensure_state_home(root.path(), &id)?, "made twice");
        for home in [
            "/var/lib",
            "/var/lib/",
            "/var/lib/a/b",
            "/var/lib/..",
            "/home/x",
            "/",
        ] {
            id.home = home.into();
            assert!(!ensure_state_home(root.path(), &id)?, "{home}");
        }
        id.home = "/var/lib/web".into();
        id.credentials.uid = 0;
        assert!(
            !ensure_state_home(root.path(), &id)?,
            "root's home is not made"
        );
        assert!(!root.path().join("var/lib/web").exists());
        Ok(())
    }

    #[test]
    fn numbers_work_without_entries() -> Result<(), UserError> {
        let id = resolve_texts(PASSWD, GROUP, "4242", Some("77"))?;
        assert_eq!(
            id.credentials,
            Credentials {
                uid: 4242,
                gid: 77,
                groups: vec![77]
            }
        );
        let id = resolve_texts(PASSWD, GROUP, "1000", None)?;
        assert_eq!(id.name.as_deref(), Some("web"));
        Ok(())
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(
            resolve_texts(PASSWD, GROUP, "nobody", None),
            Err(UserError::NoUser(_))
        ));
        assert!(matches!(
            resolve_texts(PASSWD, GROUP, "web", Some("nogroup")),
            Err(UserError::NoGroup(_))
        ));
    }
}
