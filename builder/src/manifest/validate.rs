//! From TOML text to a checked [`Manifest`]: syntax and schema errors from
//! the TOML parser (located by its spans, keyed by serde_path_to_error),
//! then the semantic checks (names, versions, units, references).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_hostapi::config::Network;
use berth_hostapi::update::Strategy;
use toml::Spanned;

use super::schema::{RawManifest, RawNetwork};
use super::units::{parse_duration_ms, parse_size};
use super::{
    DEFAULT_DISK_SIZE, DEFAULT_ESP_SIZE, Disk, Host, Kernel, Located, Manifest, ManifestError,
    Source, Update, UpdateTrust, line_col,
};

/// Collects errors against one manifest text.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    pub(super) fn err(
        &self,
        key: &str,
        span: &Range<usize>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn located<T>(&self, key: impl Into<String>, s: Spanned<T>) -> Located<T> {
        let span = s.span();
        Located {
            value: s.into_inner(),
            key: key.into(),
            span,
        }
    }
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let raw = deserialize(path, text)?;
    let c = Checker { path, text };
    build(&c, raw)
}

fn deserialize(path: &Path, text: &str) -> Result<RawManifest, ManifestError> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // A `Spanned` value adds toml's private field to the path: the
        // user wrote the key, not that.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        toml_error(path, text, key, e.inner())
    })
}

fn toml_error(path: &Path, text: &str, key: String, e: &toml::de::Error) -> ManifestError {
    ManifestError {
        file: path.to_path_buf(),
        position: e.span().map(|s| line_col(text, s.start)),
        key,
        message: e.message().trim().to_string(),
    }
}

fn build(c: &Checker, raw: RawManifest) -> Result<Manifest, ManifestError> {
    let name_spans: Vec<Range<usize>> = raw.services.iter().map(|s| s.name.span()).collect();
    let container_spans: Vec<Range<usize>> = raw.containers.iter().map(|k| k.name.span()).collect();
    let name = check_name(c, "name", raw.name)?;
    let version = check_version(c, raw.version)?;
    let source = check_source(c, raw.source)?;
    let kernel = Kernel {
        package: match raw.kernel.package {
            Some(p) => check_package(c, "kernel.package", p)?,
            None => Located {
                value: "linux-image-amd64".into(),
                key: "kernel.package".into(),
                span: 0..0,
            },
        },
        cmdline: raw
            .kernel
            .cmdline
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        modules: raw
            .kernel
            .modules
            .into_iter()
            .enumerate()
            .map(|(i, m)| check_module(c, &format!("kernel.modules[{i}]"), m))
            .collect::<Result<_, _>>()?,
    };
    let disk = check_disk(c, raw.disk)?;
    let host = check_host(c, raw.host)?;
    let network = check_network(c, raw.network)?;
    let (services, containers) = super::services::check(c, raw.services, raw.containers)?;
    if matches!(network, Network::Dhcp { .. }) {
        if let Some(s) = services
            .iter()
            .position(|s| s.name == berth_hostapi::services::DHCP_SERVICE)
        {
            let span = name_spans.get(s).cloned().unwrap_or(0..0);
            return Err(c.err(
                &format!("service[{s}].name"),
                &span,
                "\"dhcp\" is the DHCP client's service when [network] mode = \"dhcp\": choose another name",
            ));
        }
    }
    // The key and span of the first service or container named `name`:
    // the names Berth's own services take when their section is set.
    let unit_named = |name: &str| -> Option<(String, std::ops::Range<usize>)> {
        services
            .iter()
            .position(|s| s.name == name)
            .map(|i| {
                let span = name_spans.get(i).cloned().unwrap_or(0..0);
                (format!("service[{i}].name"), span)
            })
            .or_else(|| {
                containers.iter().position(|k| k.name == name).map(|i| {
                    let span = container_spans.get(i).cloned().unwrap_or(0..0);
                    (format!("container[{i}].name"), span)
                })
            })
    };
    let update = match raw.update {
        Some(u) => Some(check_update(c, u)?),
        None => None,
    };
    if update
        .as_ref()
        .is_some_and(|u| u.policy.strategy != Strategy::Manual)
    {
        if let Some((key, span)) = unit_named(berth_hostapi::update::AGENT_SERVICE) {
            return Err(c.err(
                &key,
                &span,
                "\"update-agent\" is the update agent's service when [update] strategy is not \
                 \"manual\": choose another name",
            ));
        }
    }
    let ssh = match raw.ssh {
        Some(s) if s.enable => Some(check_ssh(c, s)?),
        _ => None,
    };
    if ssh.is_some() {
        if let Some(i) = services.iter().position(|s| s.name == super::SSH_SERVICE) {
            let span = name_spans.get(i).cloned().unwrap_or(0..0);
            return Err(c.err(
                &format!("service[{i}].name"),
                &span,
                "\"sshd\" is the SSH server's service when [ssh] is enabled: choose another name",
            ));
        }
    }
    let fleet = match raw.fleet {
        Some(f) => Some(super::fleet::check(c, f)?),
        None => None,
    };
    if fleet.is_some() {
        if let Some((key, span)) = unit_named(berth_hostapi::fleet::REGISTRY_SERVICE) {
            return Err(super::fleet::name_clash(c, &key, &span));
        }
    }
    let secure_boot = match raw.secure_boot {
        Some(s) => Some(super::secure_boot::check(c, s)?),
        None => None,
    };
    let fleet_lock_server = match raw.fleet_lock_server {
        Some(s) => {
            let lock = super::fleet::lock_server(c, s)?;
            let name = berth_hostapi::fleet::LOCK_SERVER_SERVICE;
            if let Some((key, span)) = unit_named(name) {
                return Err(c.err(
                    &key,
                    &span,
                    format!(
                        "\"{name}\" is the lock server's service when [fleet-lock-server] is set: choose another name"
                    ),
                ));
            }
            Some(lock)
        }
        None => None,
    };
    Ok(Manifest {
        path: c.path.to_path_buf(),
        text: c.text.to_string(),
        name,
        version,
        description: raw.description,
        source,
        kernel,
        disk,
        host,
        network,
        services,
        containers,
        update,
        ssh,
        secure_boot,
        fleet,
        fleet_lock_server,
    })
}

impl Located<String> {
    pub(super) fn map_path(self) -> Located<PathBuf> {
        Located {
            value: PathBuf::from(self.value),
            key: self.key,
            span: self.span,
        }
    }
}

/// `[update]`: the URL, who signs, and the agent's policy. The three `gpg-*` keys go
/// together (a public key with nothing to sign with would publish commits
/// every host refuses; a signer without the public key gives hosts nothing
/// to check with), and `verify = false` excludes them all.
fn check_update(c: &Checker, u: super::schema::RawUpdate) -> Result<Update, ManifestError> {
    let policy = super::policy::check(c, &u)?;
    let url = check_url(c, "update.url", u.url)?;
    let public = u.gpg_key.map(|k| c.located("update.gpg-key", k).map_path());
    let homedir = u
        .gpg_homedir
        .map(|k| c.located("update.gpg-homedir", k).map_path());
    let key_id = u.gpg_key_id.map(|k| c.located("update.gpg-key-id", k));
    let given: Vec<(&str, Range<usize>)> = [
        public.as_ref().map(|k| ("update.gpg-key", k.span.clone())),
        homedir
            .as_ref()
            .map(|k| ("update.gpg-homedir", k.span.clone())),
        key_id
            .as_ref()
            .map(|k| ("update.gpg-key-id", k.span.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let verify = u.verify.map(|v| c.located("update.verify", v));
    if let Some(v) = verify.as_ref().filter(|v| !v.value) {
        if let Some((key, span)) = given.first() {
            return Err(c.err(
                key,
                span,
                "contradicts update.verify = false (nothing is signed then): remove one of them",
            ));
        }
        return Ok(Update {
            url,
            trust: UpdateTrust::Off(v.clone()),
            policy,
        });
    }
    let (public, homedir, key_id) = match (public, homedir, key_id) {
        (None, None, None) => {
            return Ok(Update {
                url,
                trust: UpdateTrust::RepositoryKey,
                policy,
            });
        }
        (Some(p), Some(h), Some(k)) => (p, h, k),
        (p, h, k) => {
            let missing: Vec<&str> = [
                p.is_none().then_some("update.gpg-key"),
                h.is_none().then_some("update.gpg-homedir"),
                k.is_none().then_some("update.gpg-key-id"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let (key, span) = &given[0];
            return Err(c.err(
                key,
                span,
                format!(
                    "needs {} too: gpg-key (the public key hosts trust), gpg-homedir and gpg-key-id \
                     (the secret key that signs) go together; leave all three out to sign with \
                     the repository's own key",
                    missing.join(" and ")
                ),
            ));
        }
    };
    if !is_key_id(&key_id.value) {
        return Err(c.err(
            &key_id.key,
            &key_id.span,
            format!(
                "\"{}\" is not a GPG key id or fingerprint (8, 16 or 40 hex digits)",
                key_id.value
            ),
        ));
    }
    Ok(Update {
        url,
        trust: UpdateTrust::Manifest(super::ManifestKey {
            public,
            homedir,
            key_id,
        }),
        policy,
    })
}

/// A key id gpgme can look up: a short or long key id, or a fingerprint.
fn is_key_id(s: &str) -> bool {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    [8, 16, 40].contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// `[ssh]`: a port and public keys in OpenSSH's one-line format.
fn check_ssh(c: &Checker, raw: super::schema::RawSsh) -> Result<super::Ssh, ManifestError> {
    let port = match raw.port {
        Some(p) => {
            let span = p.span();
            let v = p.into_inner();
            if v == 0 {
                return Err(c.err("ssh.port", &span, "must be a TCP port (1-65535)"));
            }
            v
        }
        None => 22,
    };
    let mut keys = Vec::new();
    for (i, k) in raw.authorized_keys.into_iter().enumerate() {
        let span = k.span();
        let key = k.into_inner();
        let mut parts = key.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let ok =
            (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
                && parts.next().is_some_and(|b| b.len() > 16)
                && !key.contains('\n');
        if !ok {
            return Err(c.err(
                &format!("ssh.authorized-keys[{i}]"),
                &span,
                "is not an SSH public key line (\"ssh-ed25519 AAAA... comment\")",
            ));
        }
        keys.push(key);
    }
    Ok(super::Ssh {
        port,
        authorized_keys: keys,
    })
}

/// Names used in file names, refs and service names.
pub(super) fn check_name(
    c: &Checker,
    key: &str,
    s: Spanned<String>,
) -> Result<String, ManifestError> {
    let span = s.span();
    let name = s.into_inner();
    if name.is_empty() {
        return Err(c.err(key, &span, "must not be empty"));
    }
    let ok_first = name.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if !ok_first || !ok_rest || name.len() > 63 {
        return Err(c.err(
            key,
            &span,
            format!(
                "\"{name}\" is not a valid name: use 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(name)
}

/// os-release VERSION_ID rules: lowercase letters, digits, '.', '_' and
/// '-'; we also require a leading digit so versions sort as people expect.
fn check_version(c: &Checker, s: Spanned<String>) -> Result<String, ManifestError> {
    let span = s.span();
    let v = s.into_inner();
    let ok = v.starts_with(|ch: char| ch.is_ascii_digit())
        && v.len() <= 64
        && v.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch));
    if !ok {
        return Err(c.err(
            "version",
            &span,
            format!(
                "\"{v}\" is not a valid version: start with a digit, then use only lowercase letters, digits, '.', '_' and '-' (e.g. \"1.2.0\")"
            ),
        ));
    }
    Ok(v)
}

fn check_source(c: &Checker, raw: super::schema::RawSource) -> Result<Source, ManifestError> {
    let suite = match raw.suite {
        Some(s) => {
            let span = s.span();
            let v = s.into_inner();
            if v.is_empty()
                || !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(c.err(
                    "source.suite",
                    &span,
                    format!("\"{v}\" is not a suite name"),
                ));
            }
            v
        }
        None => "bookworm".into(),
    };
    let mirror = match raw.mirror {
        Some(m) => check_url(c, "source.mirror", m)?,
        None => "http://deb.debian.org/debian".into(),
    };
    let components = if raw.components.is_empty() {
        vec!["main".to_string()]
    } else {
        raw.components
            .into_iter()
            .map(Spanned::into_inner)
            .collect()
    };
    let packages = raw
        .packages
        .into_iter()
        .enumerate()
        .map(|(i, p)| check_package(c, &format!("source.packages[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(Source {
        suite,
        mirror,
        components,
        packages,
    })
}

fn check_url(c: &Checker, key: &str, s: Spanned<String>) -> Result<String, ManifestError> {
    let span = s.span();
    let url = s.into_inner();
    let ok = ["http://", "https://", "file://"]
        .iter()
        .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme));
    if !ok || url.contains(char::is_whitespace) {
        return Err(c.err(
            key,
            &span,
            format!("\"{url}\" is not an http(s):// or file:// URL"),
        ));
    }
    Ok(url)
}

/// Debian package names (policy 5.6.1), optionally with apt's `=version`
/// or `/suite` suffix.
fn check_package(
    c: &Checker,
    key: &str,
    s: Spanned<String>,
) -> Result<Located<String>, ManifestError> {
    let span = s.span();
    let p = s.into_inner();
    let name = p.split(['=', '/']).next().unwrap_or("");
    let ok = name.len() >= 2
        && name.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "+-.".contains(ch));
    if !ok {
        return Err(c.err(key, &span, format!("\"{p}\" is not a Debian package name")));
    }
    Ok(Located {
        value: p,
        key: key.to_string(),
        span,
    })
}

fn check_module(c: &Checker, key: &str, s: Spanned<String>) -> Result<String, ManifestError> {
    let span = s.span();
    let m = s.into_inner();
    if m.is_empty()
        || !m
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch))
    {
        return Err(c.err(key, &span, format!("\"{m}\" is not a kernel module name")));
    }
    Ok(m.replace('-', "_"))
}

fn check_disk(c: &Checker, raw: super::schema::RawDisk) -> Result<Disk, ManifestError> {
    let size = sized(c, "disk.size", raw.size, DEFAULT_DISK_SIZE)?;
    let esp_size = sized(c, "disk.esp-size", raw.esp_size, DEFAULT_ESP_SIZE)?;
    if !(64 << 20..=1 << 30).contains(&esp_size.value) {
        return Err(c.err(
            "disk.esp-size",
            &esp_size.span,
            "must be between 64M and 1G (FAT32 needs at least 65525 clusters)",
        ));
    }
    if size.value < esp_size.value + (64 << 20) {
        return Err(c.err(
            "disk.size",
            &size.span,
            format!(
                "{} leaves no room for the root partition next to a {} ESP",
                super::units::human_bytes(size.value),
                super::units::human_bytes(esp_size.value)
            ),
        ));
    }
    Ok(Disk { size, esp_size })
}

fn sized(
    c: &Checker,
    key: &str,
    raw: Option<Spanned<String>>,
    default: u64,
) -> Result<Located<u64>, ManifestError> {
    match raw {
        Some(s) => {
            let span = s.span();
            let value = parse_size(s.get_ref()).map_err(|m| c.err(key, &span, m))?;
            Ok(Located {
                value,
                key: key.into(),
                span,
            })
        }
        None => Ok(Located {
            value: default,
            key: key.into(),
            span: 0..0,
        }),
    }
}

fn check_host(c: &Checker, raw: super::schema::RawHost) -> Result<Host, ManifestError> {
    let hostname = match raw.hostname {
        Some(h) => {
            let span = h.span();
            let h = h.into_inner();
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                });
            if !ok {
                return Err(c.err(
                    "host.hostname",
                    &span,
                    format!("\"{h}\" is not a valid hostname"),
                ));
            }
            h
        }
        None => "berth".into(),
    };
    let ready_deadline_ms = match raw.ready_deadline {
        Some(d) => {
            let span = d.span();
            parse_duration_ms(d.get_ref()).map_err(|m| c.err("host.ready-deadline", &span, m))?
        }
        None => 300_000,
    };
    let watchdog_timeout_ms = match raw.watchdog_timeout {
        Some(t) => {
            let span = t.span();
            check_watchdog_timeout(t.get_ref())
                .map_err(|m| c.err("host.watchdog-timeout", &span, m))?
        }
        None => DEFAULT_WATCHDOG_TIMEOUT_MS,
    };
    let mut sysctls = BTreeMap::new();
    for (key, value) in raw.sysctls {
        let span = value.span();
        let k = format!("host.sysctls.\"{key}\"");
        if key.is_empty()
            || !key
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-/".contains(ch))
        {
            return Err(c.err(&k, &span, format!("\"{key}\" is not a sysctl name")));
        }
        let v = match value.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => u8::from(b).to_string(),
            other => {
                return Err(c.err(
                    &k,
                    &span,
                    format!(
                        "must be a string, integer or boolean, not {}",
                        other.type_str()
                    ),
                ));
            }
        };
        sysctls.insert(key, v);
    }
    Ok(Host {
        hostname,
        debug_shell: raw.debug_shell,
        ready_deadline_ms,
        watchdog_timeout_ms,
        sysctls,
    })
}

/// `[host] watchdog-timeout` when the manifest gives none (berth-init's
/// own default, docs/init.md).
pub const DEFAULT_WATCHDOG_TIMEOUT_MS: u64 = 60_000;

/// A watchdog timeout: `"off"` (or `"0s"`) for none, else 5 s to 1 h:
/// shorter would reset a loaded host whose PID 1 is only slow, and every
/// watchdog driver takes an hour (softdog up to 65535 s).
fn check_watchdog_timeout(text: &str) -> Result<u64, String> {
    if text.trim() == "off" {
        return Ok(0);
    }
    let ms = parse_duration_ms(text)?;
    if ms != 0 && !(5_000..=3_600_000).contains(&ms) {
        return Err(format!(
            "`{text}` is out of range: \"off\", or from \"5s\" to \"1h\""
        ));
    }
    Ok(ms)
}

fn check_network(c: &Checker, raw: RawNetwork) -> Result<Network, ManifestError> {
    let interface = raw
        .interface
        .map(Spanned::into_inner)
        .unwrap_or_else(|| "eth0".into());
    let (mode, span) = match raw.mode {
        Some(m) => {
            let span = m.span();
            (m.into_inner(), span)
        }
        None => ("none".to_string(), 0..0),
    };
    match mode.as_str() {
        "none" => Ok(Network::None),
        "dhcp" => Ok(Network::Dhcp {
            client: vec![
                "udhcpc".into(),
                "-f".into(),
                "-i".into(),
                interface.clone(),
                "-s".into(),
                "/etc/udhcpc/default.script".into(),
            ],
            interface,
        }),
        "static" => {
            let address = raw.address.ok_or_else(|| {
                c.err(
                    "network.address",
                    &span,
                    "is required when mode = \"static\"",
                )
            })?;
            let aspan = address.span();
            let address = address.into_inner();
            if !valid_cidr(&address) {
                return Err(c.err("network.address", &aspan, format!("\"{address}\" is not an IPv4 address with a prefix length (e.g. \"10.0.2.15/24\")")));
            }
            let gateway = match raw.gateway {
                Some(g) => {
                    let gspan = g.span();
                    let g = g.into_inner();
                    if g.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(c.err(
                            "network.gateway",
                            &gspan,
                            format!("\"{g}\" is not an IPv4 address"),
                        ));
                    }
                    Some(g)
                }
                None => None,
            };
            let mut dns = Vec::new();
            for (i, d) in raw.dns.into_iter().enumerate() {
                let dspan = d.span();
                let d = d.into_inner();
                if d.parse::<std::net::IpAddr>().is_err() {
                    return Err(c.err(
                        &format!("network.dns[{i}]"),
                        &dspan,
                        format!("\"{d}\" is not an IP address"),
                    ));
                }
                dns.push(d);
            }
            Ok(Network::Static {
                interface,
                address,
                gateway,
                dns,
            })
        }
        other => Err(c.err(
            "network.mode",
            &span,
            format!("unknown mode \"{other}\" (expected \"dhcp\", \"static\" or \"none\")"),
        )),
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    addr.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}
