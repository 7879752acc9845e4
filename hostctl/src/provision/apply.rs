//! Applying a provisioning document to a host's writable state: /etc
//! (hostname, accounts, files) and /var (homes, SSH keys). Every function
//! takes the root directory, so tests run against a temporary tree.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::document::{User, UserData, UserEntry, WriteFile};

/// Where per-service environment files go: berth-init reads
/// `<dir>/<service>.env` (KEY=VALUE lines) before each start.
pub const SERVICE_ENV_DIR: &str = "etc/berth/env";

/// What applying changed, for the console.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new hostname.
    pub hostname: Option<String>,
    /// Accounts created.
    pub users: Vec<String>,
    /// Keys installed (count).
    pub keys: usize,
    /// Files written.
    pub files: Vec<String>,
    /// Services given environment.
    pub service_env: Vec<String>,
}

/// Writes /etc/hostname.
pub fn hostname(root: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::write(root.join("etc/hostname"), format!("{name}\n")).context("writing /etc/hostname")
}

/// A passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The accounts of /etc/passwd.
pub fn accounts(root: &Path) -> Vec<Account> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Account {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5)?.to_string(),
            })
        })
        .collect()
}

fn group_id(root: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(root.join("etc/group"))
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
        })
}

fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
}

/// Creates `user` (uid and gid from 1000 up, after those in use; a locked
/// password: SSH keys only; home under /var/home) unless it exists;
/// installs its keys either way. Returns whether the account was created.
pub fn user(root: &Path, user: &User) -> anyhow::Result<bool> {
    let existing = accounts(root);
    let (account, created) = match existing.iter().find(|a| a.name == user.name) {
        Some(a) => (a.clone(), false),
        None => {
            let used: BTreeSet<u32> = existing.iter().map(|a| a.uid).collect();
            let id = (1000..60000).find(|i| !used.contains(i) && group_name(root, *i).is_none());
            let Some(id) = id else {
                bail!("no free uid for {}", user.name)
            };
            let home = format!("/var/home/{}", user.name);
            let shell = user.shell.clone().unwrap_or_else(|| "/bin/sh".into());
            let gecos = user.gecos.clone().unwrap_or_default().replace(':', " ");
            append_line(
                &root.join("etc/passwd"),
                &format!("{}:x:{id}:{id}:{gecos}:{home}:{shell}", user.name),
            )?;
            append_line(&root.join("etc/group"), &format!("{}:x:{id}:", user.name))?;
            // '!' locks the password: logins by SSH key only.
            append_line(
                &root.join("etc/shadow"),
                &format!("{}:!:1::::::", user.name),
            )?;
            (
                Account {
                    name: user.name.clone(),
                    uid: id,
                    gid: id,
                    home,
                },
                true,
            )
        }
    };
    for g in user.groups.as_ref().map(|g| g.items()).unwrap_or_default() {
        add_to_group(root, &g, &user.name)?;
    }
    let home = root.join(account.home.trim_start_matches('/'));
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    if created {
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&home, Some(account.uid), Some(account.gid))
            .with_context(|| format!("setting the owner of {}", home.display()))?;
    }
    authorized_keys(&home, &user.ssh_authorized_keys, account.uid, account.gid)?;
    Ok(created)
}

fn group_name(root: &Path, gid: u32) -> Option<String> {
    std::fs::read_to_string(root.join("etc/group"))
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(gid)).then(|| f[0].to_string())
        })
}

/// Adds `user` to the member list of `group` (if the group exists).
fn add_to_group(root: &Path, group: &str, user: &str) -> anyhow::Result<()> {
    let path = root.join("etc/group");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ':').collect();
            if f.first() == Some(&group) && f.len() == 4 {
                let mut members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&user) {
                    members.push(user);
                    changed = true;
                }
                format!("{}:{}:{}:{}", f[0], f[1], f[2], members.join(","))
            } else {
                l.to_string()
            }
        })
        .collect();
    if changed {
        std::fs::write(&path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Adds `keys` (those not there yet) to `home/.ssh/authorized_keys`,
/// with the modes sshd and dropbear insist on. Returns how many were added.
pub fn authorized_keys(home: &Path, keys: &[String], uid: u32, gid: u32) -> anyhow::Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    let file = ssh.join("authorized_keys");
    let existing = std::fs::read_to_string(&file).unwrap_or_default();
    let mut added = 0;
    let mut text = existing.clone();
    for k in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        if !existing.lines().any(|l| l.trim() == k) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(k);
            text.push('\n');
            added += 1;
        }
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    for p in [&ssh, &file] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .with_context(|| format!("setting the owner of {}", p.display()))?;
    }
    Ok(added)
}

/// root's home (from /etc/passwd; `/root`, which is var/roothome on an
/// OSTree host), created if missing.
pub fn root_home(root: &Path) -> anyhow::Result<PathBuf> {
    let home = accounts(root)
        .into_iter()
        .find(|a| a.uid == 0)
        .map(|a| a.home)
        .unwrap_or_else(|| "/root".into());
    let dir = root.join(home.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes one `write_files` entry.
pub fn write_file(root: &Path, f: &WriteFile) -> anyhow::Result<()> {
    let data = match f.encoding.as_deref() {
        Some("b64" | "base64") => {
            decode_base64(&f.content).with_context(|| format!("decoding {}", f.path))?
        }
        _ => f.content.clone().into_bytes(),
    };
    let path = root.join(f.path.trim_start_matches('/'));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if f.append {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(&data)
            .with_context(|| format!("writing {}", path.display()))?;
    } else {
        std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    }
    let mode = f
        .permissions
        .as_deref()
        .and_then(|p| u32::from_str_radix(p.trim_start_matches("0o"), 8).ok())
        .unwrap_or(0o644);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some(owner) = &f.owner {
        let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
        let accounts = accounts(root);
        let uid = u
            .parse()
            .ok()
            .or_else(|| accounts.iter().find(|a| a.name == u).map(|a| a.uid));
        let gid = g.parse().ok().or_else(|| group_id(root, g));
        let (Some(uid), Some(gid)) = (uid, gid) else {
            bail!("owner {owner} of {} does not exist", f.path)
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        // chown drops set-id bits: put the mode back.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes `<SERVICE_ENV_DIR>/<service>.env`.
pub fn service_env(
    root: &Path,
    service: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if service.contains('/') || service.is_empty() {
        bail!("service name \"{service}\" is not valid");
    }
    let mut text = String::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\n') || v.contains('\n') {
            bail!("environment {k:?} of service {service} is not KEY=VALUE on one line");
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let dir = root.join(SERVICE_ENV_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(format!("{service}.env")), text)
        .with_context(|| format!("writing the environment of {service}"))
}

/// Applies a whole document; `hostname` is the one to set (user-data's or
/// meta-data's).
pub fn document(
    root: &Path,
    doc: &UserData,
    hostname_to_set: Option<&str>,
) -> anyhow::Result<Applied> {
    let mut applied = Applied::default();
    if let Some(h) = hostname_to_set {
        hostname(root, h)?;
        applied.hostname = Some(h.to_string());
    }
    for u in &doc.users {
        if let UserEntry::User(u) = u {
            if user(root, u)? {
                applied.users.push(u.name.clone());
            }
            applied.keys += u.ssh_authorized_keys.len();
        }
    }
    if !doc.ssh_authorized_keys.is_empty() {
        let home = root_home(root)?;
        applied.keys += authorized_keys(&home, &doc.ssh_authorized_keys, 0, 0)?;
    }
    for f in &doc.write_files {
        write_file(root, f)?;
        applied.files.push(f.path.clone());
    }
    if let Some(b) = &doc.berth {
        for (svc, env) in &b.service_env {
            service_env(root, svc, env)?;
            applied.service_env.push(svc.clone());
        }
    }
    Ok(applied)
}

/// Standard base64 (RFC 4648), whitespace ignored. Written here because
/// it is the one decoding cloud-init's `encoding: b64` needs, 20 lines.
pub fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("'{}' is not base64", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::document::parse_user;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("var/roothome")).unwrap();
        std::os::unix::fs::symlink("var/roothome", r.join("root")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/var/lib/web:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nweb:x:1000:\nadm:x:4:\n").unwrap();
        std::fs::write(r.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        t
    }

    #[test]
    fn applies_hostname_users_keys_files_and_env() {
        let t = tree();
        let r = t.path();
        let doc = parse_user(
            "#cloud-config\nusers:\n  - default\n  - name: ops\n    groups: [adm]\n    ssh_authorized_keys: [ssh-ed25519 AAAA ops]\nssh_authorized_keys: [ssh-ed25519 BBBB admin]\nwrite_files:\n  - path: /etc/motd\n    content: hello\n  - path: /var/lib/app/secret\n    encoding: b64\n    content: c2VjcmV0\n    permissions: '0600'\n    owner: ops:ops\nberth:\n  service_env:\n    web: {GREETING: hi}\n",
        )
        .unwrap();
        let a = document(r, &doc, Some("node-1")).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "node-1\n"
        );
        assert_eq!(a.users, ["ops"]);
        assert!(
            std::fs::read_to_string(r.join("etc/passwd"))
                .unwrap()
                .contains("ops:x:1001:1001::/var/home/ops:/bin/sh")
        );
        assert!(
            std::fs::read_to_string(r.join("etc/group"))
                .unwrap()
                .contains("adm:x:4:ops")
        );
        assert!(
            std::fs::read_to_string(r.join("etc/shadow"))
                .unwrap()
                .contains("ops:!:")
        );
        assert_eq!(
            std::fs::read_to_string(r.join("var/home/ops/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA ops\n"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("var/roothome/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 BBBB admin\n"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/motd")).unwrap(),
            "hello"
        );
        let secret = r.join("var/lib/app/secret");
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/berth/env/web.env")).unwrap(),
            "GREETING=hi\n"
        );
        // Applying again creates nothing twice.
        let again = document(r, &doc, Some("node-1")).unwrap();
        assert!(again.users.is_empty());
        assert_eq!(
            std::fs::read_to_string(r.join("etc/passwd"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("ops:"))
                .count(),
            1
        );
        assert_eq!(
            std::fs::read_to_string(r.join("var/roothome/.ssh/authorized_keys"))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(decode_base64("YQ==\n").unwrap(), b"a");
        assert!(decode_base64("!!").is_err());
    }
}
