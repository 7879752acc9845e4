//! Berth's own files in every OS tree, written per build into a small
//! directory that is committed on top of the cached base tree: os-release,
//! the host configuration, berth-init and berthctl, users, hostname and
//! the package list (the initramfs stage adds the initramfs).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_hostapi::config::HostConfig;

use crate::manifest::Manifest;
use crate::packages::PackageVersion;

/// The binaries Berth puts into every image.
#[derive(Debug, Clone)]
pub struct HostBinaries {
    /// Static berth-init.
    pub init: PathBuf,
    /// berthctl.
    pub berthctl: PathBuf,
}

/// `/usr/lib/os-release` of an image.
pub fn os_release(m: &Manifest) -> String {
    let pretty = m
        .description
        .clone()
        .unwrap_or_else(|| format!("Berth {} {}", m.name, m.version));
    format!(
        "NAME=Berth\nID=berth\nVERSION=\"{v}\"\nVERSION_ID={v}\nPRETTY_NAME=\"{pretty}\"\nIMAGE_ID={n}\nIMAGE_VERSION={v}\nHOME_URL=\"https://github.com/berth-os/berth\"\n",
        v = m.version,
        n = m.name,
        pretty = pretty.replace('"', "'"),
    )
}

/// Users the services run as, beyond root: each gets a uid and gid of
/// its own from 1000 up, in name order, so the numbers are stable.
pub fn service_users(host: &HostConfig) -> Vec<String> {
    let mut users = BTreeSet::new();
    for s in &host.services {
        for name in [&s.user, &s.group].into_iter().flatten() {
            if !matches!(name.as_str(), "root" | "nobody" | "nogroup")
                && name.parse::<u32>().is_err()
            {
                users.insert(name.clone());
            }
        }
    }
    users.into_iter().collect()
}

/// `/etc/passwd` and `/etc/group` defaults.
pub fn passwd_and_group(users: &[String]) -> (String, String) {
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    let mut group = String::from("root:x:0:\nnogroup:x:65534:\n");
    for (i, u) in users.iter().enumerate() {
        let id = 1000 + i;
        let _ = writeln!(passwd, "{u}:x:{id}:{id}::/var/lib/{u}:/usr/sbin/nologin");
        let _ = writeln!(group, "{u}:x:{id}:");
    }
    (passwd, group)
}

/// Writes `data` to `dir/rel` with `mode`, making its parents: one file
/// of an overlay.
pub fn put(dir: &Path, rel: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes the overlay into the empty directory `dir`.
pub fn write(
    dir: &Path,
    m: &Manifest,
    host: &HostConfig,
    bins: &HostBinaries,
    packages: &[PackageVersion],
) -> anyhow::Result<()> {
    let put = |rel: &str, data: &[u8], mode: u32| put(dir, rel, data, mode);
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));

    put("usr/lib/os-release", os_release(m).as_bytes(), 0o644)?;
    put("usr/lib/berth/host.json", host.to_json().as_bytes(), 0o644)?;
    if let Some(ssh) = &m.ssh {
        let keys: String = ssh
            .authorized_keys
            .iter()
            .map(|k| format!("{k}\n"))
            .collect();
        put("usr/lib/berth/ssh/authorized_keys", keys.as_bytes(), 0o644)?;
    }
    let kargs = crate::build::image_kargs(m).render_image_file();
    put(
        berth_sysroot::contract::KARGS_PATH.trim_start_matches('/'),
        kargs.as_bytes(),
        0o644,
    )?;
    put("usr/lib/berth/berth-init", &read(&bins.init)?, 0o755)?;
    put("usr/bin/berthctl", &read(&bins.berthctl)?, 0o755)?;
    let list: String = packages
        .iter()
        .map(|p| format!("{} {}\n", p.name, p.version))
        .collect();
    put("usr/lib/berth/packages.txt", list.as_bytes(), 0o644)?;

    let (passwd, group) = passwd_and_group(&service_users(host));
    put("usr/etc/passwd", passwd.as_bytes(), 0o644)?;
    put("usr/etc/group", group.as_bytes(), 0o644)?;
    put(
        "usr/etc/shadow",
        b"root:*:1::::::\nnobody:*:1::::::\n",
        0o600,
    )?;
    put(
        "usr/etc/hostname",
        format!("{}\n", host.hostname).as_bytes(),
        0o644,
    )?;
    put(
        "usr/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost\n",
            host.hostname
        )
        .as_bytes(),
        0o644,
    )?;
    put(
        "usr/etc/nsswitch.conf",
        b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        0o644,
    )?;
    // An empty machine-id: the host makes its own at first boot.
    put("usr/etc/machine-id", b"", 0o444)?;
    let link = |target: &str, rel: &str| -> anyhow::Result<()> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        symlink(target, &p).with_context(|| format!("linking {}", p.display()))
    };
    link("../lib/os-release", "usr/etc/os-release")?;
    link("../lib/berth/berth-init", "usr/sbin/init")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_hostapi::config::Service;

    #[test]
    fn os_release_has_the_manifest_version() {
        let m = Manifest::parse(
            Path::new("m.toml"),
            "name = \"edge\"\nversion = \"2.1.0\"\n",
        )
        .unwrap();
        let text = os_release(&m);
        assert!(text.contains("\nID=berth\n"));
        assert!(text.contains("\nVERSION_ID=2.1.0\n"));
        assert!(text.starts_with("NAME=Berth\n"));
        assert!(text.contains("PRETTY_NAME=\"Berth edge 2.1.0\""));
    }

    #[test]
    fn service_users_get_stable_ids() {
        let host = HostConfig {
            services: vec![
                Service {
                    name: "a".into(),
                    user: Some("web".into()),
                    ..Service::default()
                },
                Service {
                    name: "b".into(),
                    user: Some("app".into()),
                    group: Some("web".into()),
                    ..Service::default()
                },
                Service {
                    name: "c".into(),
                    user: Some("root".into()),
                    ..Service::default()
                },
            ],
            ..HostConfig::default()
        };
        let users = service_users(&host);
        assert_eq!(users, ["app", "web"]);
        let (passwd, group) = passwd_and_group(&users);
        assert!(passwd.contains("app:x:1000:1000:"));
        assert!(passwd.contains("web:x:1001:1001:"));
        assert!(group.contains("web:x:1001:"));
    }
}
