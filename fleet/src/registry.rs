//! The live host registry and service discovery: what each host keeps in
//! etcd about itself, under a lease it renews, so that a host that dies
//! drops out by itself when its lease expires.
//!
//! Keys (every name and id in a key is checked by [`check_segment`]):
//!
//! - `/berth/hosts/<host id>`: a [`HostRecord`], under the host's lease.
//! - `/berth/services/<name>/<host id>`: a [`ServiceRecord`] for each
//!   announced service that berth-init counts ready, under the same lease.
//! - `/berth/fleet/seen/<host id>`: a [`SeenRecord`], with no lease, so the
//!   fleet view can name a host that is gone (seen, but no longer live).
//!
//! The values are JSON with a `"schema"` number ([`SCHEMA`]). Readers
//! ignore fields they do not know and default the ones that are missing,
//! since hosts of several Berth versions share one registry.
//!
//! [`Registrar`] does the etcd side; what to publish is computed by the
//! caller (berthctl collects it on the host), and [`diff`] (pure) decides
//! which keys change. [`run`] is the loop: renew at about a third of the
//! TTL, publish changes, re-grant and re-publish all after a lost lease.
//! It does not collect facts about the host nor handle signals: that is
//! `berthctl fleet run`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::etcd::{Client, EtcdError};

/// The record format this code writes.
pub const SCHEMA: u32 = 1;
/// Where host records live.
pub const HOSTS_PREFIX: &str = "/berth/hosts/";
/// Where announced services live (`<name>/<host id>` below it).
pub const SERVICES_PREFIX: &str = "/berth/services/";
/// Where the lease-free "last seen" records live.
pub const SEEN_PREFIX: &str = "/berth/fleet/seen/";
/// The lease TTL when none is configured, in seconds.
pub const DEFAULT_LEASE_TTL: u64 = 30;
/// The shortest lease TTL accepted, in seconds: renewing every TTL/3 must
/// leave a slow request or two of slack.
pub const MIN_LEASE_TTL: u64 = 5;
/// The longest name or id allowed in a key segment, in bytes.
pub const MAX_SEGMENT: usize = 128;

/// What a host publishes about itself at `/berth/hosts/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRecord {
    /// Record format ([`SCHEMA`]).
    pub schema: u32,
    /// The host's app-specific id (derived from its machine id).
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// Its addresses (IPv4 first, then global IPv6), without prefix length.
    pub addresses: Vec<String>,
    /// The image name (manifest `name`).
    pub image: String,
    /// The booted OS version.
    pub version: String,
    /// The booted commit checksum.
    pub commit: String,
    /// Boot counting of the booted deployment: `good`, `trial`, `bad`, `no-entry`.
    pub boot_state: String,
    /// The update agent's phase (`idle`, `deploying`…), if it runs.
    pub agent_state: Option<String>,
    /// The FleetLock group the agent takes reboot slots in, if any.
    pub fleet_lock_group: Option<String>,
    /// Whether the host holds a reboot slot now.
    pub slot_held: bool,
    /// Why it holds it (the agent's words), if it says.
    pub slot_reason: Option<String>,
    /// The last commit that failed to boot on this host, if any.
    pub last_failed_commit: Option<String>,
    /// When this record was written (unix seconds).
    pub updated_at: u64,
    /// The TTL of the lease it lives under, in seconds.
    pub lease_ttl: u64,
}

impl Default for HostRecord {
    fn default() -> Self {
        HostRecord {
            schema: SCHEMA,
            id: String::new(),
            hostname: String::new(),
            addresses: Vec::new(),
            image: String::new(),
            version: String::new(),
            commit: String::new(),
            boot_state: String::new(),
            agent_state: None,
            fleet_lock_group: None,
            slot_held: false,
            slot_reason: None,
            last_failed_commit: None,
            updated_at: 0,
            lease_ttl: 0,
        }
    }
}

/// One endpoint of an announced service, at `/berth/services/<name>/<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceRecord {
    /// Record format ([`SCHEMA`]).
    pub schema: u32,
    /// The service's name (as in the manifest).
    pub name: String,
    /// The id of the host it runs on.
    pub host: String,
    /// The address clients connect to (the host's first address).
    pub address: String,
    /// The TCP port (`announce = PORT`).
    pub port: u16,
    /// When this record was written (unix seconds).
    pub updated_at: u64,
}

impl Default for ServiceRecord {
    fn default() -> Self {
        ServiceRecord {
            schema: SCHEMA,
            name: String::new(),
            host: String::new(),
            address: String::new(),
            port: 0,
            updated_at: 0,
        }
    }
}

impl ServiceRecord {
    /// `address:port`, with brackets around an IPv6 address.
    pub fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// When a host was last seen, at `/berth/fleet/seen/<id>` (no lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeenRecord {
    /// Record format ([`SCHEMA`]).
    pub schema: u32,
    /// The host id.
    pub id: String,
    /// Its hostname then.
    pub hostname: String,
    /// Its OS version then.
    pub version: String,
    /// When (unix seconds).
    pub seen_at: u64,
}

impl Default for SeenRecord {
    fn default() -> Self {
        SeenRecord {
            schema: SCHEMA,
            id: String::new(),
            hostname: String::new(),
            version: String::new(),
            seen_at: 0,
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name or id cannot be part of a key.
    #[error("{what} {value:?} cannot be used in an etcd key: {reason}")]
    InvalidName {
        /// What it names (`host id`, `service name`).
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A record could not be encoded.
    #[error("encoding a registry record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Checks that `value` can be one segment of a key: 1 to [`MAX_SEGMENT`]
/// bytes of ASCII letters, digits, `-`, `_` and `.`, and not `.` or `..`
/// (so no `/`: a name cannot reach into another host's keys).
pub fn check_segment(what: &'static str, value: &str) -> Result<(), RegistryError> {
    let bad = |reason| RegistryError::InvalidName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > MAX_SEGMENT {
        return Err(bad("it is longer than 128 bytes"));
    }
    if value == "." || value == ".." {
        return Err(bad("it is a dot path"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// `/berth/hosts/<id>`.
pub fn host_key(id: &str) -> Result<String, RegistryError> {
    check_segment("host id", id)?;
    Ok(format!("{HOSTS_PREFIX}{id}"))
}

/// `/berth/fleet/seen/<id>`.
pub fn seen_key(id: &str) -> Result<String, RegistryError> {
    check_segment("host id", id)?;
    Ok(format!("{SEEN_PREFIX}{id}"))
}

/// `/berth/services/<name>/`: every endpoint of service `name`.
pub fn service_prefix(name: &str) -> Result<String, RegistryError> {
    check_segment("service name", name)?;
    Ok(format!("{SERVICES_PREFIX}{name}/"))
}

/// `/berth/services/<name>/<host id>`.
pub fn service_key(name: &str, host: &str) -> Result<String, RegistryError> {
    check_segment("host id", host)?;
    Ok(format!("{}{host}", service_prefix(name)?))
}

/// The endpoints of service `name`, in host-id order (one prefix read).
/// Records that do not decode are skipped.
pub fn discover(client: &Client, name: &str) -> Result<Vec<ServiceRecord>, RegistryError> {
    let range = client.prefix(service_prefix(name)?.as_bytes())?;
    Ok(range
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// What publishing a desired state over a published one changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Whether the host record (and the seen record) must be written.
    pub host: bool,
    /// Service records to write (new or changed).
    pub put: Vec<ServiceRecord>,
    /// Names of services to remove (no longer ready, or no longer announced).
    pub delete: Vec<String>,
}

impl Changes {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        !self.host && self.put.is_empty() && self.delete.is_empty()
    }
}

/// The host record with its timestamp zeroed, to compare contents.
fn host_content(h: &HostRecord) -> HostRecord {
    HostRecord {
        updated_at: 0,
        ..h.clone()
    }
}

fn service_content(s: &ServiceRecord) -> ServiceRecord {
    ServiceRecord {
        updated_at: 0,
        ..s.clone()
    }
}

/// Which keys change from `published` (what etcd holds, per this
/// registrar) to `desired`. `heartbeat` forces the host record to be
/// rewritten even if unchanged, so its `updated_at` and the seen record
/// stay fresh.
pub fn diff(
    published_host: Option<&HostRecord>,
    published: &BTreeMap<String, ServiceRecord>,
    desired_host: &HostRecord,
    desired: &[ServiceRecord],
    heartbeat: bool,
) -> Changes {
    let host =
        heartbeat || published_host.is_none_or(|p| host_content(p) != host_content(desired_host));
    let put = desired
        .iter()
        .filter(|s| {
            published
                .get(&s.name)
                .is_none_or(|p| service_content(p) != service_content(s))
        })
        .cloned()
        .collect();
    let delete = published
        .keys()
        .filter(|name| !desired.iter().any(|s| &s.name == *name))
        .cloned()
        .collect();
    Changes { host, put, delete }
}

/// How a registrar publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// The lease TTL in seconds (at least [`MIN_LEASE_TTL`]).
    pub lease_ttl: u64,
    /// How often the host record and the seen record are rewritten when
    /// nothing changed (their `updated_at` is what "last seen" shows).
    pub heartbeat: Duration,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat: Duration::from_secs(60),
        }
    }
}

impl RegistrarConfig {
    /// How often the lease is renewed: a third of its TTL.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(self.lease_ttl.max(MIN_LEASE_TTL) * 1000 / 3)
    }
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// No lease yet (nothing published).
    NoLease,
    /// Renewed; the TTL left (the full TTL).
    Renewed(i64),
    /// The lease was gone (expired or revoked): its keys went with it, and
    /// the next [`Registrar::publish`] grants a new one and writes all again.
    Lost,
}

/// One host's registration: its lease and what it published under it.
#[derive(Debug)]
pub struct Registrar {
    client: Client,
    config: RegistrarConfig,
    lease: Option<i64>,
    host: Option<HostRecord>,
    services: BTreeMap<String, ServiceRecord>,
    last_host_put: Option<Instant>,
}

/// Whether `e` is etcd saying a lease does not exist (a put under an
/// expired lease answers gRPC code 5, HTTP 404).
fn lease_not_found(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Etcd(EtcdError::Refused { code: 5, .. }))
}

impl Registrar {
    /// A registrar that publishes through `client`. Nothing is written
    /// until the first [`publish`](Registrar::publish).
    pub fn new(client: Client, config: RegistrarConfig) -> Registrar {
        Registrar {
            client,
            config: RegistrarConfig {
                lease_ttl: config.lease_ttl.max(MIN_LEASE_TTL),
                ..config
            },
            lease: None,
            host: None,
            services: BTreeMap::new(),
            last_host_put: None,
        }
    }

    /// The etcd client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration in force (the TTL raised to the minimum).
    pub fn config(&self) -> RegistrarConfig {
        self.config
    }

    /// The current lease id, if one is held.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// The services published now, by name.
    pub fn published(&self) -> &BTreeMap<String, ServiceRecord> {
        &self.services
    }

    fn forget(&mut self) {
        self.lease = None;
        self.host = None;
        self.services.clear();
        self.last_host_put = None;
    }

    /// Writes what changed from what is published to `host` and
    /// `services` (the announced services that are ready now), granting
    /// a lease first if none is held. `now` (unix seconds) stamps the
    /// records. A put that finds the lease gone re-grants and writes
    /// everything again, once.
    pub fn publish(
        &mut self,
        host: &HostRecord,
        services: &[ServiceRecord],
        now: u64,
    ) -> Result<Changes, RegistryError> {
        host_key(&host.id)?;
        for s in services {
            service_key(&s.name, &host.id)?;
        }
        match self.publish_once(host, services, now) {
            Err(e) if lease_not_found(&e) => {
                self.forget();
                self.publish_once(host, services, now)
            }
            other => other,
        }
    }

    fn publish_once(
        &mut self,
        host: &HostRecord,
        services: &[ServiceRecord],
        now: u64,
    ) -> Result<Changes, RegistryError> {
        let lease = match self.lease {
            Some(l) => l,
            None => {
                let l = self.client.lease_grant(self.config.lease_ttl as i64)?;
                self.forget();
                self.lease = Some(l.id);
                l.id
            }
        };
        let heartbeat = self
            .last_host_put
            .is_none_or(|t| t.elapsed() >= self.config.heartbeat);
        // What is written, so that the comparison sees what etcd holds.
        let host = &HostRecord {
            schema: SCHEMA,
            updated_at: now,
            lease_ttl: self.config.lease_ttl,
            ..host.clone()
        };
        let services: Vec<ServiceRecord> = services
            .iter()
            .map(|s| ServiceRecord {
                schema: SCHEMA,
                host: host.id.clone(),
                updated_at: now,
                ..s.clone()
            })
            .collect();
        let changes = diff(
            self.host.as_ref(),
            &self.services,
            host,
            &services,
            heartbeat,
        );
        if changes.host {
            let record = host.clone();
            self.client.put(
                host_key(&host.id)?.as_bytes(),
                &serde_json::to_vec(&record)?,
                lease,
            )?;
            self.host = Some(record);
            self.last_host_put = Some(Instant::now());
            let seen = SeenRecord {
                schema: SCHEMA,
                id: host.id.clone(),
                hostname: host.hostname.clone(),
                version: host.version.clone(),
                seen_at: now,
            };
            self.client.put(
                seen_key(&host.id)?.as_bytes(),
                &serde_json::to_vec(&seen)?,
                0,
            )?;
        }
        for s in &changes.put {
            let record = s.clone();
            self.client.put(
                service_key(&s.name, &host.id)?.as_bytes(),
                &serde_json::to_vec(&record)?,
                lease,
            )?;
            self.services.insert(s.name.clone(), record);
        }
        for name in &changes.delete {
            self.client
                .delete(service_key(name, &host.id)?.as_bytes())?;
            self.services.remove(name);
        }
        Ok(changes)
    }

    /// Renews the lease to its full TTL. A lease found gone is dropped
    /// (with what was published under it), so the next publish starts over.
    pub fn renew(&mut self) -> Result<Renewal, RegistryError> {
        let Some(lease) = self.lease else {
            return Ok(Renewal::NoLease);
        };
        match self.client.lease_keepalive(lease)? {
            Some(ttl) => Ok(Renewal::Renewed(ttl)),
            None => {
                self.forget();
                Ok(Renewal::Lost)
            }
        }
    }

    /// Revokes the lease: the host record and its services go at once (a
    /// clean stop). The seen record stays.
    pub fn revoke(&mut self) -> Result<(), RegistryError> {
        if let Some(lease) = self.lease {
            self.client.lease_revoke(lease)?;
        }
        self.forget();
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps up to `d`, waking early when `stop` is set; returns whether it is.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    true
}

/// The registration loop: every [`RegistrarConfig::renew_every`], renew
/// the lease, ask `collect` for the host record and the ready announced
/// services, and publish what changed. An error is passed to `report`
/// and retried after a back-off (1 s, doubling, up to the renewal
/// interval), for ever: etcd down is a state to wait out. Returns when
/// `stop` is set, without revoking (the caller revokes on a clean stop;
/// a test stops without revoking to play a dead host).
pub fn run<C, R>(registrar: &mut Registrar, stop: &AtomicBool, mut collect: C, mut report: R)
where
    C: FnMut() -> (HostRecord, Vec<ServiceRecord>),
    R: FnMut(&RegistryError),
{
    let every = registrar.config().renew_every();
    let mut backoff = Duration::from_secs(1).min(every);
    while !stop.load(Ordering::Relaxed) {
        let step = registrar.renew().and_then(|_| {
            let (host, services) = collect();
            registrar.publish(&host, &services, unix_now())
        });
        let wait = match step {
            Ok(_) => {
                backoff = Duration::from_secs(1).min(every);
                every
            }
            Err(e) => {
                report(&e);
                let wait = backoff;
                backoff = (backoff * 2).min(every);
                wait
            }
        };
        if sleep_unless(stop, wait) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_refuse_slashes_dots_and_long_names() {
        for good in ["web", "850fc687996545cf91f79b613a99f540", "a.b_c-1"] {
            check_segment("service name", good).unwrap();
        }
        let long = "a".repeat(MAX_SEGMENT + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            "x\n",
            long.as_str(),
        ] {
            let e = check_segment("service name", bad).unwrap_err();
            assert!(
                e.to_string().contains("cannot be used in an etcd key"),
                "{e}"
            );
        }
        assert_eq!(host_key("h1").unwrap(), "/berth/hosts/h1");
        assert_eq!(seen_key("h1").unwrap(), "/berth/fleet/seen/h1");
        assert_eq!(service_key("web", "h1").unwrap(), "/berth/services/web/h1");
        assert!(service_key("web", "h/1").is_err());
        assert!(service_key("../hosts", "h1").is_err());
    }

    #[test]
    fn records_read_with_missing_and_unknown_fields() {
        let h: HostRecord =
            serde_json::from_str(r#"{"schema":2,"id":"h","version":"1","future":true}"#).unwrap();
        assert_eq!((h.schema, h.id.as_str(), h.slot_held), (2, "h", false));
        let back: HostRecord = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        let s = ServiceRecord {
            address: "fd00::1".into(),
            port: 80,
            ..ServiceRecord::default()
        };
        assert_eq!(s.endpoint(), "[fd00::1]:80");
        assert_eq!(
            ServiceRecord {
                address: "10.0.0.1".into(),
                ..s
            }
            .endpoint(),
            "10.0.0.1:80"
        );
    }

    fn svc(name: &str, port: u16) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            host: "h".into(),
            address: "10.0.0.1".into(),
            port,
            ..ServiceRecord::default()
        }
    }

    #[test]
    fn diff_puts_new_and_changed_and_deletes_what_went() {
        let host = HostRecord {
            id: "h".into(),
            version: "1".into(),
            ..HostRecord::default()
        };
        let none = BTreeMap::new();
        let first = diff(None, &none, &host, &[svc("web", 80)], false);
        assert!(first.host);
        assert_eq!(first.put, [svc("web", 80)]);

        let published: BTreeMap<String, ServiceRecord> = [
            (
                "web".to_string(),
                ServiceRecord {
                    updated_at: 5,
                    ..svc("web", 80)
                },
            ),
            ("db".to_string(), svc("db", 5432)),
        ]
        .into();
        let stamped = HostRecord {
            updated_at: 9,
            ..host.clone()
        };
        // Same contents (timestamps aside): nothing to do unless a heartbeat is due.
        let same = diff(Some(&stamped), &published, &host, &[svc("web", 80)], false);
        assert_eq!(
            same,
            Changes {
                host: false,
                put: vec![],
                delete: vec!["db".into()]
            }
        );
        assert!(diff(Some(&stamped), &published, &host, &[svc("web", 80)], true).host);
        let moved = HostRecord {
            version: "2".into(),
            ..host.clone()
        };
        let changed = diff(
            Some(&stamped),
            &published,
            &moved,
            &[svc("web", 8080), svc("db", 5432)],
            false,
        );
        assert!(changed.host && changed.delete.is_empty());
        assert_eq!(changed.put, [svc("web", 8080)]);
        assert!(
            diff(
                Some(&stamped),
                &published,
                &host,
                &[svc("web", 80), svc("db", 5432)],
                false
            )
            .is_empty()
        );
    }

    #[test]
    fn renewal_is_a_third_of_the_ttl_and_the_ttl_has_a_floor() {
        let c = RegistrarConfig::default();
        assert_eq!(c.renew_every(), Duration::from_secs(10));
        let r = Registrar::new(
            Client::new(&crate::etcd::EtcdConfig::with_endpoints([
                "http://127.0.0.1:1",
            ]))
            .unwrap(),
            RegistrarConfig { lease_ttl: 1, ..c },
        );
        assert_eq!(r.config().lease_ttl, MIN_LEASE_TTL);
        assert_eq!(r.lease(), None);
    }
}
