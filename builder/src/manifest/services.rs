//! Checking `[[service]]` and `[[container]]` entries: both become
//! supervised services, so they share one name space, one `after` graph
//! and the same restart, readiness and stop settings.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use berth_hostapi::config::{Readiness, Restart, Service, ServiceKind};
use toml::Spanned;

use super::schema::{RawContainer, RawService};
use super::units::{parse_duration_ms, parse_size};
use super::validate::{Checker, check_name};
use super::{Container, ContainerNetwork, ManifestError};
use crate::container::spec;

/// Signals a service may name as its stop signal.
const STOP_SIGNALS: [&str; 9] = [
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGPWR",
];

/// Settings every supervised unit has.
struct Common {
    restart: Restart,
    ready: Readiness,
    stop_signal: String,
    stop_timeout_ms: u64,
}

struct RawCommon {
    restart: Option<Spanned<String>>,
    ready: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
}

fn duration(
    c: &Checker,
    key: &str,
    v: Option<Spanned<String>>,
    default: u64,
) -> Result<u64, ManifestError> {
    match v {
        Some(d) => {
            let span = d.span();
            parse_duration_ms(d.get_ref()).map_err(|m| c.err(key, &span, m))
        }
        None => Ok(default),
    }
}

fn common(
    c: &Checker,
    at: &dyn Fn(&str) -> String,
    raw: RawCommon,
) -> Result<Common, ManifestError> {
    let restart = match raw.restart {
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
    let ready = match raw.ready {
        Some(r) => {
            let span = r.span();
            parse_ready(r.get_ref()).map_err(|m| c.err(&at("ready"), &span, m))?
        }
        None => Readiness::Started,
    };
    let stop_signal = match raw.stop_signal {
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
    let stop_timeout_ms = duration(
        c,
        &at("stop-timeout"),
        raw.stop_timeout,
        Service::default().stop_timeout_ms,
    )?;
    Ok(Common {
        restart,
        ready,
        stop_signal,
        stop_timeout_ms,
    })
}

/// A service's `user` or `group`: the builder writes it into the image's
/// /etc/passwd and /etc/group, so a `:`, a `,` or a newline in it would
/// make fields or whole entries of its own (`web:x:0:0` would be a
/// second root). A name as useradd takes it, or a number.
fn account(
    c: &Checker,
    key: &str,
    value: Option<Spanned<String>>,
) -> Result<Option<String>, ManifestError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let span = v.span();
    let v = v.into_inner();
    let number = !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit());
    let name = !v.is_empty()
        && v.len() <= 32
        && !v.starts_with('-')
        && v.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
    if !(number || name) {
        return Err(c.err(
            key,
            &span,
            format!(
                "{v:?} is not a user or group name (letters, digits, '_', '-', '.') or a number"
            ),
        ));
    }
    Ok(Some(v))
}

/// Checks services and containers together.
pub(super) fn check(
    c: &Checker,
    raw_services: Vec<RawService>,
    raw_containers: Vec<RawContainer>,
) -> Result<(Vec<Service>, Vec<Container>), ManifestError> {
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    // (key prefix, name, after list) of every unit, for references and cycles.
    let mut graph: Vec<(String, String, Vec<Spanned<String>>)> = Vec::new();
    let mut unique = |key: &str, span: &Range<usize>, name: &str| -> Result<(), ManifestError> {
        if names.insert(name.to_string(), ()).is_some() {
            return Err(c.err(
                key,
                span,
                format!("a service or container named \"{name}\" already exists"),
            ));
        }
        Ok(())
    };

    let mut services = Vec::new();
    for (i, s) in raw_services.into_iter().enumerate() {
        let at = |field: &str| format!("service[{i}].{field}");
        let name_span = s.name.span();
        let name = check_name(c, &at("name"), s.name)?;
        unique(&at("name"), &name_span, &name)?;
        let cmd_span = s.command.span();
        let command = s.command.into_inner();
        if command.first().is_none_or(|p| p.is_empty()) {
            return Err(c.err(&at("command"), &cmd_span, "must name a program"));
        }
        let common = common(
            c,
            &at,
            RawCommon {
                restart: s.restart,
                ready: s.ready,
                stop_signal: s.stop_signal,
                stop_timeout: s.stop_timeout,
            },
        )?;
        let defaults = Service::default();
        let backoff_initial_ms = duration(
            c,
            &at("backoff-initial"),
            s.backoff_initial,
            defaults.backoff_initial_ms,
        )?;
        let backoff_max_ms = duration(
            c,
            &at("backoff-max"),
            s.backoff_max,
            defaults.backoff_max_ms,
        )?;
        let announce = super::fleet::announce(c, &at("announce"), s.announce)?;
        let user = account(c, &at("user"), s.user)?;
        let group = account(c, &at("group"), s.group)?;
        graph.push((format!("service[{i}]"), name.clone(), s.after.clone()));
        services.push(Service {
            name,
            kind: ServiceKind::Process,
            command,
            env: s.env,
            working_dir: s.working_dir,
            user,
            group,
            restart: common.restart,
            backoff_initial_ms,
            backoff_max_ms: backoff_max_ms.max(backoff_initial_ms),
            after: s.after.into_iter().map(Spanned::into_inner).collect(),
            ready: common.ready,
            stop_signal: common.stop_signal,
            stop_timeout_ms: common.stop_timeout_ms,
            required: s.required.unwrap_or(true),
            announce,
            ..Service::default()
        });
    }

    let mut containers = Vec::new();
    for (i, k) in raw_containers.into_iter().enumerate() {
        let at = |field: &str| format!("container[{i}].{field}");
        let name_span = k.name.span();
        let name = check_name(c, &at("name"), k.name)?;
        unique(&at("name"), &name_span, &name)?;
        let image_span = k.image.span();
        let image = k.image.into_inner();
        if !crate::container::image::TRANSPORTS
            .iter()
            .any(|t| image.starts_with(t) && image.len() > t.len())
        {
            return Err(c.err(
                &at("image"),
                &image_span,
                format!(
                    "container \"{name}\": image \"{image}\" does not start with a known transport ({})",
                    crate::container::image::TRANSPORTS.join(", ")
                ),
            ));
        }
        let command = match k.command {
            Some(cmd) => {
                let span = cmd.span();
                let cmd = cmd.into_inner();
                if cmd.first().is_none_or(|p| p.is_empty()) {
                    return Err(c.err(&at("command"), &span, "must name a program"));
                }
                Some(cmd)
            }
            None => None,
        };
        let mut volumes = Vec::new();
        let mut seen = BTreeSet::new();
        for (j, v) in k.volumes.into_iter().enumerate() {
            let span = v.span();
            let text = v.into_inner();
            let key = at(&format!("volumes[{j}]"));
            let Some((vname, target)) = text.split_once(':') else {
                return Err(c.err(&key, &span, format!("\"{text}\" is not NAME:/PATH")));
            };
            if check_name(c, &key, Spanned::new(span.clone(), vname.to_string())).is_err() {
                return Err(c.err(
                    &key,
                    &span,
                    format!("\"{vname}\" is not a valid volume name"),
                ));
            }
            if !target.starts_with('/') || target.split('/').any(|p| p == "..") || target == "/" {
                return Err(c.err(
                    &key,
                    &span,
                    format!("\"{target}\" is not an absolute path inside the container"),
                ));
            }
            if !seen.insert(vname.to_string()) {
                return Err(c.err(&key, &span, format!("volume \"{vname}\" is listed twice")));
            }
            volumes.push(crate::container::spec::Volume {
                name: vname.to_string(),
                target: target.trim_end_matches('/').to_string(),
            });
        }
        let network = match k.network {
            Some(n) => {
                let span = n.span();
                match n.get_ref().as_str() {
                    "host" => ContainerNetwork::Host,
                    "none" => ContainerNetwork::None,
                    other => {
                        return Err(c.err(
                            &at("network"),
                            &span,
                            format!("unknown network \"{other}\" (expected \"host\" or \"none\")"),
                        ));
                    }
                }
            }
            None => ContainerNetwork::Host,
        };
        let memory = match k.memory {
            Some(m) => {
                let span = m.span();
                let bytes = parse_size(m.get_ref()).map_err(|e| c.err(&at("memory"), &span, e))?;
                if bytes < 4 << 20 {
                    return Err(c.err(&at("memory"), &span, "must be at least 4M"));
                }
                Some(bytes)
            }
            None => None,
        };
        let cpus = match k.cpus {
            Some(v) => {
                let span = v.span();
                let n = *v.get_ref();
                if !(n > 0.0 && n <= 1024.0) {
                    return Err(c.err(
                        &at("cpus"),
                        &span,
                        format!("{n} is not a CPU count (e.g. 0.5, 2)"),
                    ));
                }
                Some(n)
            }
            None => None,
        };
        let pids_limit = match k.pids_limit {
            Some(v) => {
                let span = v.span();
                let n = *v.get_ref();
                if !(1..=spec::MAX_PIDS_LIMIT).contains(&n) {
                    return Err(c.err(
                        &at("pids-limit"),
                        &span,
                        format!(
                            "{n} is not a process count from 1 to {}",
                            spec::MAX_PIDS_LIMIT
                        ),
                    ));
                }
                n
            }
            None => spec::DEFAULT_PIDS_LIMIT,
        };
        let common = common(
            c,
            &at,
            RawCommon {
                restart: k.restart,
                ready: k.ready,
                stop_signal: k.stop_signal,
                stop_timeout: k.stop_timeout,
            },
        )?;
        let announce = super::fleet::announce(c, &at("announce"), k.announce)?;
        graph.push((format!("container[{i}]"), name.clone(), k.after.clone()));
        containers.push(Container {
            name,
            image: super::Located {
                value: image,
                key: at("image"),
                span: image_span,
            },
            command,
            env: k.env,
            restart: common.restart,
            volumes,
            network,
            memory,
            cpus,
            pids_limit,
            ready: common.ready,
            after: k.after.into_iter().map(Spanned::into_inner).collect(),
            stop_signal: common.stop_signal,
            stop_timeout_ms: common.stop_timeout_ms,
            required: k.required.unwrap_or(true),
            tls_verify: k.tls_verify,
            announce,
        });
    }

    for (prefix, _, after) in &graph {
        for (j, a) in after.iter().enumerate() {
            if !names.contains_key(a.get_ref()) {
                return Err(c.err(
                    &format!("{prefix}.after[{j}]"),
                    &a.span(),
                    format!("no service or container named \"{}\"", a.get_ref()),
                ));
            }
        }
    }
    let edges: Vec<(String, Vec<String>)> = graph
        .iter()
        .map(|(_, n, a)| (n.clone(), a.iter().map(|s| s.get_ref().clone()).collect()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        return Err(ManifestError {
            file: c.path.to_path_buf(),
            position: None,
            key: "after".into(),
            message: format!(
                "services wait for each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        });
    }
    Ok((services, containers))
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

/// A cycle in the `after` graph (name, names waited for), if any.
fn find_cycle(units: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    let index: BTreeMap<&str, usize> = units
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit(
        i: usize,
        units: &[(String, Vec<String>)],
        index: &BTreeMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[i] = 1;
        stack.push(i);
        for a in &units[i].1 {
            let Some(&j) = index.get(a.as_str()) else {
                continue;
            };
            if state[j] == 1 {
                let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[from..].iter().map(|&k| units[k].0.clone()).collect();
                cycle.push(units[j].0.clone());
                return Some(cycle);
            }
            if state[j] == 0 {
                if let Some(c) = visit(j, units, index, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; units.len()];
    let mut stack = Vec::new();
    (0..units.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, units, &index, &mut state, &mut stack)
        } else {
            None
        }
    })
}
