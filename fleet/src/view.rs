//! The fleet view: every live host in one line, a summary (hosts per
//! version, groups halted by a failed update, hosts gone), and the
//! announced services, built from one prefix read of each kind of key
//! (hosts, seen, services, and the lock server's semaphores), so it costs
//! four requests for any fleet size.
//!
//! Whether a host holds a reboot slot is what its agent says, checked
//! against the lock server's key for its group when this etcd has one: an
//! agent cannot learn that an operator released its slot (FleetLock has
//! no read request), so after `berth fleet unlock` the key is right and
//! the agent's word is stale.
//!
//! [`FleetView::build`] is pure (keys in, view out); [`FleetView::read`]
//! does the reads. [`FleetView::text`] and serde's JSON are the two
//! renderings `berth fleet status` prints.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::etcd::{Client, KeyValue};
use crate::registry::{
    HOSTS_PREFIX, HostRecord, RegistryError, SEEN_PREFIX, SERVICES_PREFIX, SeenRecord,
    ServiceRecord,
};

/// One live host, as `fleet status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLine {
    /// Host id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// OS version.
    pub version: String,
    /// Booted commit.
    pub commit: String,
    /// Boot counting state of the booted deployment.
    pub boot_state: String,
    /// The update agent's phase, if it runs.
    pub agent_state: Option<String>,
    /// The FleetLock group, if any.
    pub group: Option<String>,
    /// Whether it holds a reboot slot.
    pub slot_held: bool,
    /// Why, if it says.
    pub slot_reason: Option<String>,
    /// The last commit that failed to boot there.
    pub last_failed_commit: Option<String>,
    /// Addresses.
    pub addresses: Vec<String>,
    /// Seconds since the record was written.
    pub last_seen_secs: u64,
}

/// A group whose rollout stopped: a host in it keeps its reboot slot
/// after a failed update, so no other host of the group may reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaltedGroup {
    /// The FleetLock group (`default` when the host names none).
    pub group: String,
    /// The host holding the slot.
    pub host: String,
    /// Its hostname.
    pub hostname: String,
    /// The commit that failed there, if known.
    pub failed_commit: Option<String>,
    /// The agent's reason, if it gives one.
    pub reason: Option<String>,
}

/// A host seen before whose registry key is gone (its lease expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoneHost {
    /// Host id.
    pub id: String,
    /// Hostname when last seen.
    pub hostname: String,
    /// Version when last seen.
    pub version: String,
    /// Seconds since it was last seen.
    pub last_seen_secs: u64,
}

/// The summary under the host lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Live hosts.
    pub hosts: usize,
    /// Live hosts per OS version.
    pub versions: BTreeMap<String, usize>,
    /// Groups halted by a failed update.
    pub halted: Vec<HaltedGroup>,
    /// Hosts gone.
    pub gone: usize,
}

/// The whole fleet as etcd holds it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetView {
    /// The etcd revision of the host read.
    pub revision: i64,
    /// When the view was built (unix seconds).
    pub now: u64,
    /// Live hosts, by hostname then id.
    pub hosts: Vec<HostLine>,
    /// Hosts gone, by hostname then id.
    pub gone: Vec<GoneHost>,
    /// Announced service endpoints by service name, in host-id order.
    pub services: BTreeMap<String, Vec<ServiceRecord>>,
    /// The summary.
    pub summary: Summary,
    /// Keys whose value did not decode (key: error), left out above.
    pub unreadable: Vec<String>,
}

/// The holders of each group whose semaphore key is in this etcd.
type LockHolders = BTreeMap<String, std::collections::BTreeSet<String>>;

fn lock_holders(locks: &[KeyValue], bad: &mut Vec<String>) -> LockHolders {
    let mut out = LockHolders::new();
    for kv in locks {
        match crate::lock::store::group_state(kv) {
            Ok(g) => {
                out.insert(g.group, g.holders.into_iter().map(|h| h.id).collect());
            }
            Err(e) => bad.push(format!("{}: {e}", kv.key_str())),
        }
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue, bad: &mut Vec<String>) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            bad.push(format!("{}: {e}", kv.key_str()));
            None
        }
    }
}

/// The group name a host without one counts in (FleetLock's default).
pub const DEFAULT_GROUP: &str = "default";

impl FleetView {
    /// The view of these keys (values of `/berth/hosts/`,
    /// `/berth/fleet/seen/`, `/berth/services/` and the lock server's
    /// `/berth/fleet-lock/groups/`) at time `now`.
    pub fn build(
        hosts: &[KeyValue],
        seen: &[KeyValue],
        services: &[KeyValue],
        locks: &[KeyValue],
        now: u64,
    ) -> FleetView {
        let mut unreadable = Vec::new();
        let holders = lock_holders(locks, &mut unreadable);
        let mut live: Vec<HostRecord> = hosts
            .iter()
            .filter_map(|kv| decode(kv, &mut unreadable))
            .collect();
        for h in &mut live {
            let group = h.fleet_lock_group.as_deref().unwrap_or(DEFAULT_GROUP);
            if let Some(ids) = holders.get(group) {
                // Released by an operator, or never granted here.
                if h.slot_held && !ids.contains(&h.id) {
                    h.slot_held = false;
                    h.slot_reason = None;
                }
            }
        }
        live.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        let live_ids: std::collections::BTreeSet<&str> =
            live.iter().map(|h| h.id.as_str()).collect();
        let mut gone: Vec<GoneHost> = seen
            .iter()
            .filter_map(|kv| decode::<SeenRecord>(kv, &mut unreadable))
            .filter(|s| !live_ids.contains(s.id.as_str()))
            .map(|s| GoneHost {
                last_seen_secs: now.saturating_sub(s.seen_at),
                id: s.id,
                hostname: s.hostname,
                version: s.version,
            })
            .collect();
        gone.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        let mut by_service: BTreeMap<String, Vec<ServiceRecord>> = BTreeMap::new();
        for s in services
            .iter()
            .filter_map(|kv| decode::<ServiceRecord>(kv, &mut unreadable))
        {
            by_service.entry(s.name.clone()).or_default().push(s);
        }
        let mut summary = Summary {
            hosts: live.len(),
            gone: gone.len(),
            ..Summary::default()
        };
        for h in &live {
            *summary.versions.entry(h.version.clone()).or_default() += 1;
            if halted(h) {
                summary.halted.push(HaltedGroup {
                    group: h
                        .fleet_lock_group
                        .clone()
                        .unwrap_or_else(|| DEFAULT_GROUP.into()),
                    host: h.id.clone(),
                    hostname: h.hostname.clone(),
                    failed_commit: h.last_failed_commit.clone(),
                    reason: h.slot_reason.clone(),
                });
            }
        }
        summary.halted.sort_by(|a, b| a.group.cmp(&b.group));
        let hosts = live
            .into_iter()
            .map(|h| HostLine {
                last_seen_secs: now.saturating_sub(h.updated_at),
                id: h.id,
                hostname: h.hostname,
                version: h.version,
                commit: h.commit,
                boot_state: h.boot_state,
                agent_state: h.agent_state,
                group: h.fleet_lock_group,
                slot_held: h.slot_held,
                slot_reason: h.slot_reason,
                last_failed_commit: h.last_failed_commit,
                addresses: h.addresses,
            })
            .collect();
        FleetView {
            revision: 0,
            now,
            hosts,
            gone,
            services: by_service,
            summary,
            unreadable,
        }
    }

    /// Reads the registry and the lock keys (four prefix reads) and
    /// builds the view.
    pub fn read(client: &Client, now: u64) -> Result<FleetView, RegistryError> {
        let hosts = client.prefix(HOSTS_PREFIX.as_bytes())?;
        let seen = client.prefix(SEEN_PREFIX.as_bytes())?;
        let services = client.prefix(SERVICES_PREFIX.as_bytes())?;
        let locks = client.prefix(crate::lock::store::KEY_PREFIX.as_bytes())?;
        Ok(FleetView {
            revision: hosts.revision,
            ..FleetView::build(&hosts.kvs, &seen.kvs, &services.kvs, &locks.kvs, now)
        })
    }

    /// The text `berth fleet status` prints: a table of live hosts, then
    /// the summary.
    pub fn text(&self) -> String {
        let mut rows = vec![[
            "HOST".to_string(),
            "ID".into(),
            "VERSION".into(),
            "BOOT".into(),
            "AGENT".into(),
            "SLOT".into(),
            "LAST SEEN".into(),
        ]];
        for h in &self.hosts {
            let slot = match (&h.group, h.slot_held) {
                (g, true) => format!("held ({})", g.as_deref().unwrap_or(DEFAULT_GROUP)),
                (Some(g), false) => format!("- ({g})"),
                (None, false) => "-".into(),
            };
            rows.push([
                h.hostname.clone(),
                short(&h.id).to_string(),
                h.version.clone(),
                h.boot_state.clone(),
                h.agent_state.clone().unwrap_or_else(|| "-".into()),
                slot,
                age(h.last_seen_secs),
            ]);
        }
        let mut out = table(&rows);
        let s = &self.summary;
        let versions: Vec<String> = s
            .versions
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        out.push_str(&format!(
            "\n{} host{} live{}{}\n",
            s.hosts,
            if s.hosts == 1 { "" } else { "s" },
            if versions.is_empty() {
                ""
            } else {
                "; versions "
            },
            versions.join(", ")
        ));
        if s.halted.is_empty() {
            out.push_str("halted groups: none\n");
        }
        for g in &s.halted {
            out.push_str(&format!(
                "halted: group {} held by {} ({}){}{}\n",
                g.group,
                g.hostname,
                short(&g.host),
                g.failed_commit
                    .as_ref()
                    .map_or(String::new(), |c| format!(", failed commit {}", short(c))),
                g.reason
                    .as_ref()
                    .map_or(String::new(), |r| format!(": {r}")),
            ));
        }
        if self.gone.is_empty() {
            out.push_str("gone: none\n");
        }
        for g in &self.gone {
            out.push_str(&format!(
                "gone: {} ({}) version {}, last seen {}\n",
                g.hostname,
                short(&g.id),
                g.version,
                age(g.last_seen_secs)
            ));
        }
        for u in &self.unreadable {
            out.push_str(&format!("unreadable: {u}\n"));
        }
        out
    }

    /// The text `berth fleet services` prints: `name address:port host`
    /// lines, for one service or all.
    pub fn services_text(&self, name: Option<&str>) -> String {
        let hostnames: BTreeMap<&str, &str> = self
            .hosts
            .iter()
            .map(|h| (h.id.as_str(), h.hostname.as_str()))
            .collect();
        let mut rows = vec![[
            "SERVICE".to_string(),
            "ENDPOINT".into(),
            "HOST".into(),
            "ID".into(),
        ]];
        for (n, list) in &self.services {
            if name.is_some_and(|want| want != n) {
                continue;
            }
            for s in list {
                rows.push([
                    n.clone(),
                    s.endpoint(),
                    hostnames.get(s.host.as_str()).unwrap_or(&"?").to_string(),
                    short(&s.host).to_string(),
                ]);
            }
        }
        table(&rows)
    }
}

/// Whether host `h` halts its group: it holds its slot and says why (the
/// agent gives a reason only for a slot kept after a failed update, so
/// the release stops at the first host). A failed commit on record alone
/// is not enough: that list is a history, and a host holding a slot to
/// reboot into a newer version may have an old failure.
pub fn halted(h: &HostRecord) -> bool {
    h.slot_held && h.slot_reason.is_some()
}

/// The first 12 characters of an id or checksum.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Rows as left-aligned columns two spaces apart, trailing blanks cut:
/// the tables `berth fleet` and `berthctl services` print.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &impl Serialize) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: serde_json::to_vec(value).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn ages_and_halting() {
        assert_eq!(age(5), "5s ago");
        assert_eq!(age(125), "2m ago");
        assert_eq!(age(7200), "2h ago");
        assert_eq!(age(200_000), "2d ago");
        let mut h = HostRecord::default();
        assert!(!halted(&h));
        h.slot_held = true;
        assert!(!halted(&h), "holding a slot to reboot is not halting");
        h.last_failed_commit = Some("abc".into());
        assert!(!halted(&h), "an old failure on record is not halting");
        h.slot_reason = Some("failed update to 3.0.0 (abc)".into());
        assert!(halted(&h));
    }

    #[test]
    fn the_lock_key_overrules_an_agent_whose_slot_an_operator_released() {
        let host = HostRecord {
            id: "h1".into(),
            slot_held: true,
            slot_reason: Some("failed update to 3.0.0 (abc)".into()),
            ..HostRecord::default()
        };
        let hosts = [kv("/berth/hosts/h1", &host)];
        let lock = |ids: &[&str]| {
            let holders: Vec<_> = ids
                .iter()
                .map(|id| serde_json::json!({"id": id, "since": 1}))
                .collect();
            kv(
                "/berth/fleet-lock/groups/default",
                &serde_json::json!({"slots": 1, "holders": holders}),
            )
        };
        // Held, by the key's word too: halted.
        let v = FleetView::build(&hosts, &[], &[], &[lock(&["h1"])], 10);
        assert_eq!(v.summary.halted.len(), 1, "{v:?}");
        assert!(v.hosts[0].slot_held);
        // Released by an operator: the agent's word is stale.
        let v = FleetView::build(&hosts, &[], &[], &[lock(&[])], 10);
        assert!(v.summary.halted.is_empty(), "{v:?}");
        assert!(!v.hosts[0].slot_held && v.hosts[0].slot_reason.is_none());
        // A lock server on another etcd: only the agent's word.
        let v = FleetView::build(&hosts, &[], &[], &[], 10);
        assert_eq!(v.summary.halted.len(), 1);
        // Another group's key says nothing about this host's.
        let mut other = lock(&[]);
        other.key = b"/berth/fleet-lock/groups/db".to_vec();
        let v = FleetView::build(&hosts, &[], &[], &[other], 10);
        assert_eq!(v.summary.halted.len(), 1);
        // An undecodable key is reported, not fatal.
        let mut bad = lock(&[]);
        bad.value = b"{".to_vec();
        let v = FleetView::build(&hosts, &[], &[], &[bad], 10);
        assert_eq!((v.summary.halted.len(), v.unreadable.len()), (1, 1));
    }

    #[test]
    fn a_record_that_does_not_decode_is_reported_not_fatal() {
        let mut bad = kv("/berth/hosts/x", &1);
        bad.value = b"{not json".to_vec();
        let v = FleetView::build(&[bad], &[], &[], &[], 10);
        assert_eq!(v.hosts.len(), 0);
        assert_eq!(v.unreadable.len(), 1);
        assert!(
            v.text().contains("unreadable: /berth/hosts/x"),
            "{}",
            v.text()
        );
    }
}
