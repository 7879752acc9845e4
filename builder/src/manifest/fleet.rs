//! `[fleet]`: the etcd cluster hosts register in (the host registry and
//! service discovery, docs/fleet.md), and `announce = PORT` on services
//! and containers. Only the text is checked here; reaching etcd is the
//! host's business.

use toml::Spanned;

use berth_hostapi::fleet::{DEFAULT_LEASE_TTL_SECS, FleetConfig, REGISTRY_SERVICE};

use super::schema::{RawFleet, RawFleetLockServer};
use super::units::parse_duration_ms;
use super::validate::Checker;
use super::{FleetLockServer, ManifestError};

/// The shortest `lease-ttl`: renewals go every third of it, and a slow
/// request or two must fit in between.
pub const MIN_LEASE_TTL_SECS: u64 = 5;

/// The checked `[fleet]` table.
pub(super) fn check(c: &Checker, raw: RawFleet) -> Result<FleetConfig, ManifestError> {
    let list_span = raw.etcd.span();
    let urls = raw.etcd.into_inner();
    if urls.is_empty() {
        return Err(c.err(
            "fleet.etcd",
            &list_span,
            "must list at least one etcd client URL (e.g. \"http://10.0.0.1:2379\")",
        ));
    }
    let mut etcd = Vec::new();
    for (i, u) in urls.into_iter().enumerate() {
        let span = u.span();
        let url = u.into_inner();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| {
            let host = r.split('/').next().unwrap_or("");
            !host.is_empty() && !host.starts_with(':')
        }) && !url.contains(char::is_whitespace);
        if !ok {
            return Err(c.err(
                &format!("fleet.etcd[{i}]"),
                &span,
                format!("\"{url}\" is not an http:// or https:// URL of an etcd client endpoint"),
            ));
        }
        etcd.push(url);
    }
    let lease_ttl_secs = match raw.lease_ttl {
        Some(t) => {
            let span = t.span();
            let ms =
                parse_duration_ms(t.get_ref()).map_err(|m| c.err("fleet.lease-ttl", &span, m))?;
            if ms < MIN_LEASE_TTL_SECS * 1000 || ms % 1000 != 0 {
                return Err(c.err(
                    "fleet.lease-ttl",
                    &span,
                    format!(
                        "must be whole seconds, at least {MIN_LEASE_TTL_SECS}s (the lease is renewed every third of it)"
                    ),
                ));
            }
            ms / 1000
        }
        None => DEFAULT_LEASE_TTL_SECS,
    };
    Ok(FleetConfig {
        etcd,
        lease_ttl_secs,
        ..FleetConfig::default()
    })
}

/// A unit's `announce = PORT`.
pub(super) fn announce(
    c: &Checker,
    key: &str,
    v: Option<Spanned<i64>>,
) -> Result<Option<u16>, ManifestError> {
    let Some(v) = v else { return Ok(None) };
    let span = v.span();
    let port = *v.get_ref();
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .map(Some)
        .ok_or_else(|| c.err(key, &span, format!("{port} is not a TCP port (1-65535)")))
}

/// The error for a unit that takes the registry's service name while
/// `[fleet]` is set; `at` is its key (`service[2].name`).
pub(super) fn name_clash(c: &Checker, at: &str, span: &std::ops::Range<usize>) -> ManifestError {
    c.err(
        at,
        span,
        format!(
            "\"{REGISTRY_SERVICE}\" is the fleet registry's service when [fleet] is set: choose another name"
        ),
    )
}

/// The checked `[fleet-lock-server]` table: a non-empty path (the build
/// reads the file, crate::fleet_lock_server).
pub(super) fn lock_server(
    c: &Checker,
    raw: RawFleetLockServer,
) -> Result<FleetLockServer, ManifestError> {
    if raw.config.get_ref().trim().is_empty() {
        return Err(c.err(
            "fleet-lock-server.config",
            &raw.config.span(),
            "must not be empty (the lock server's configuration file, relative to the manifest)",
        ));
    }
    Ok(FleetLockServer {
        config: c.located("fleet-lock-server.config", raw.config).map_path(),
    })
}
