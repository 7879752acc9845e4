//! From TOML text to a checked [`Manifest`]: syntax and schema errors from
//! the TOML parser (located by its spans, keyed by serde_path_to_error),
//! then the semantic checks (names, versions, units, references).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_hostapi::config::{Network, Readiness, Restart, Service, ServiceKind};
use toml::Spanned;

use super::schema::{RawManifest, RawNetwork, RawService};
use super::units::{parse_duration_ms, parse_size};
use super::{
    DEFAULT_DISK_SIZE, DEFAULT_ESP_SIZE, Disk, Host, Kernel, Located, Manifest, ManifestError,
    Source, Update, line_col,
};

/// Collects errors against one manifest text.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn located<T>(&self, key: impl Into<String>, s: Spanned<T>) -> Located<T> {
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
        let key = e.path().to_string();
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
    let services = check_services(c, raw.services)?;
    if matches!(network, Network::Dhcp { .. }) {
        if let Some(s) = services.iter().position(|s| s.name == crate::host_config::DHCP_SERVICE) {
            let span = name_spans.get(s).cloned().unwrap_or(0..0);
            return Err(c.err(
                &format!("service[{s}].name"),
                &span,
                "\"dhcp\" is the DHCP client's service when [network] mode = \"dhcp\": choose another name",
            ));
        }
    }
    let update = match raw.update {
        Some(u) => Some(Update {
            url: check_url(c, "update.url", u.url)?,
            gpg_key: u.gpg_key.map(|k| c.located("update.gpg-key", k).map_path()),
            gpg_homedir: u
                .gpg_homedir
                .map(|k| c.located("update.gpg-homedir", k).map_path()),
            gpg_key_id: u.gpg_key_id.map(Spanned::into_inner),
        }),
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
        update,
    })
}

impl Located<String> {
    fn map_path(self) -> Located<PathBuf> {
        Located {
            value: PathBuf::from(self.value),
            key: self.key,
            span: self.span,
        }
    }
}

/// Names used in file names, refs and service names.
fn check_name(c: &Checker, key: &str, s: Spanned<String>) -> Result<String, ManifestError> {
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
        sysctls,
    })
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

/// Signals a service may name as its stop signal.
const STOP_SIGNALS: [&str; 9] = [
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGPWR",
];

fn check_services(c: &Checker, raw: Vec<RawService>) -> Result<Vec<Service>, ManifestError> {
    let mut services = Vec::new();
    let mut names = BTreeSet::new();
    let mut afters = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("service[{i}].{field}");
        let name_span = s.name.span();
        let name = check_name(c, &at("name"), s.name)?;
        if !names.insert(name.clone()) {
            return Err(c.err(
                &at("name"),
                &name_span,
                format!("a service named \"{name}\" already exists"),
            ));
        }
        let cmd_span = s.command.span();
        let command = s.command.into_inner();
        if command.is_empty() || command[0].is_empty() {
            return Err(c.err(&at("command"), &cmd_span, "must name a program"));
        }
        let restart = match s.restart {
            Some(r) => {
                let span = r.span();
                match r.get_ref().as_str() {
                    "always" => Restart::Always,
                    "on-failure" => Restart::OnFailure,
                    "never" => Restart::Never,
                    other => {
                        return Err(c.err(
                            &at("restart"),
                            &span,
                            format!("unknown policy \"{other}\" (expected \"always\", \"on-failure\" or \"never\")"),
                        ));
                    }
                }
            }
            None => Restart::Always,
        };
        let ready = match s.ready {
            Some(r) => {
                let span = r.span();
                parse_ready(r.get_ref()).map_err(|m| c.err(&at("ready"), &span, m))?
            }
            None => Readiness::Started,
        };
        let stop_signal = match s.stop_signal {
            Some(sig) => {
                let span = sig.span();
                let v = sig.into_inner().to_ascii_uppercase();
                let v = if v.starts_with("SIG") {
                    v
                } else {
                    format!("SIG{v}")
                };
                if !STOP_SIGNALS.contains(&v.as_str()) {
                    return Err(c.err(
                        &at("stop-signal"),
                        &span,
                        format!(
                            "unknown signal \"{v}\" (expected one of {})",
                            STOP_SIGNALS.join(", ")
                        ),
                    ));
                }
                v
            }
            None => "SIGTERM".into(),
        };
        let ms =
            |field: &str, v: Option<Spanned<String>>, default: u64| -> Result<u64, ManifestError> {
                match v {
                    Some(d) => {
                        let span = d.span();
                        parse_duration_ms(d.get_ref()).map_err(|m| c.err(&at(field), &span, m))
                    }
                    None => Ok(default),
                }
            };
        let defaults = Service::default();
        let stop_timeout_ms = ms("stop-timeout", s.stop_timeout, defaults.stop_timeout_ms)?;
        let backoff_initial_ms = ms(
            "backoff-initial",
            s.backoff_initial,
            defaults.backoff_initial_ms,
        )?;
        let backoff_max_ms = ms("backoff-max", s.backoff_max, defaults.backoff_max_ms)?;
        afters.push((i, s.after.clone()));
        let required = s.required.unwrap_or(true);
        services.push(Service {
            name,
            kind: ServiceKind::Process,
            command,
            env: s.env,
            working_dir: s.working_dir,
            user: s.user,
            group: s.group,
            restart,
            backoff_initial_ms,
            backoff_max_ms: backoff_max_ms.max(backoff_initial_ms),
            after: s.after.into_iter().map(Spanned::into_inner).collect(),
            ready,
            stop_signal,
            stop_timeout_ms,
            pre_start: Vec::new(),
            post_stop: Vec::new(),
            required,
        });
    }
    for (i, after) in afters {
        for (j, a) in after.iter().enumerate() {
            if !names.contains(a.get_ref()) {
                return Err(c.err(
                    &format!("service[{i}].after[{j}]"),
                    &a.span(),
                    format!("no service named \"{}\"", a.get_ref()),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&services) {
        return Err(ManifestError {
            file: c.path.to_path_buf(),
            position: None,
            key: "service.after".into(),
            message: format!(
                "services wait for each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        });
    }
    Ok(services)
}

/// `started`, `exited`, `tcp:PORT` or `exec:COMMAND ARGS...` (split on
/// whitespace; wrap in `sh -c '...'` for anything fancier).
pub(super) fn parse_ready(text: &str) -> Result<Readiness, String> {
    match text.split_once(':') {
        None if text == "started" => Ok(Readiness::Started),
        None if text == "exited" => Ok(Readiness::Exited),
        Some(("tcp", port)) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(|port| Readiness::Tcp { port })
            .ok_or_else(|| format!("\"{port}\" is not a TCP port")),
        Some(("exec", cmd)) => {
            let command: Vec<String> = cmd.split_whitespace().map(String::from).collect();
            if command.is_empty() {
                Err("exec: needs a command".into())
            } else {
                Ok(Readiness::Exec { command })
            }
        }
        _ => Err(format!(
            "unknown readiness \"{text}\" (expected \"started\", \"exited\", \"tcp:PORT\" or \"exec:COMMAND\")"
        )),
    }
}

/// A cycle in the `after` graph, as service names, if there is one.
fn find_cycle(services: &[Service]) -> Option<Vec<String>> {
    let index: BTreeMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; services.len()];
    let mut stack = Vec::new();
    fn visit(
        i: usize,
        services: &[Service],
        index: &BTreeMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[i] = 1;
        stack.push(i);
        for a in &services[i].after {
            let Some(&j) = index.get(a.as_str()) else {
                continue;
            };
            if state[j] == 1 {
                let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..]
                    .iter()
                    .map(|&k| services[k].name.clone())
                    .collect();
                cycle.push(services[j].name.clone());
                return Some(cycle);
            }
            if state[j] == 0 {
                if let Some(c) = visit(j, services, index, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    (0..services.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, services, &index, &mut state, &mut stack)
        } else {
            None
        }
    })
}
