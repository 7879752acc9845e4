//! The host registry, service discovery and the fleet view against a real
//! etcd (Debian's, on loopback).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_etcd_fixture::{EtcdCluster, etcd_or_skip};
use berth_fleet::etcd::Client;
use berth_fleet::registry::{
    self, HostRecord, Registrar, RegistrarConfig, Renewal, SeenRecord, ServiceRecord, discover,
    host_key, seen_key, service_key,
};
use berth_fleet::view::FleetView;

fn host(id: &str, version: &str) -> HostRecord {
    HostRecord {
        id: id.into(),
        hostname: format!("host-{id}"),
        addresses: vec!["10.0.0.7".into()],
        image: "minimal".into(),
        version: version.into(),
        commit: "c0ffee".into(),
        boot_state: "good".into(),
        agent_state: Some("idle".into()),
        ..HostRecord::default()
    }
}

fn web(port: u16) -> ServiceRecord {
    ServiceRecord {
        name: "web".into(),
        address: "10.0.0.7".into(),
        port,
        ..ServiceRecord::default()
    }
}

fn wait_until(limit: Duration, mut what: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn exists(c: &Client, key: &str) -> bool {
    c.get(key.as_bytes()).unwrap().is_some()
}

fn config(ttl: u64) -> RegistrarConfig {
    RegistrarConfig {
        lease_ttl: ttl,
        ..RegistrarConfig::default()
    }
}

#[test]
fn a_dead_host_drops_out_when_its_lease_expires() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let stop = Arc::new(AtomicBool::new(false));
    let mut reg = Registrar::new(cluster.client(), config(registry::MIN_LEASE_TTL));
    let flag = stop.clone();
    let runner = std::thread::spawn(move || {
        registry::run(
            &mut reg,
            &flag,
            || (host("h1", "1.0"), vec![web(80)]),
            |e| eprintln!("registrar: {e}"),
        );
        reg.lease()
    });
    let key = host_key("h1").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || exists(&c, &key)).is_some(),
        "the host record never appeared"
    );
    let kv = c.get(key.as_bytes()).unwrap().unwrap();
    assert_ne!(kv.lease, 0, "the host record is under a lease");
    let record: HostRecord = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!((record.schema, record.lease_ttl), (1, 5));
    let svc = c
        .get(service_key("web", "h1").unwrap().as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(svc.lease, kv.lease, "services live under the host's lease");

    // Held beyond one TTL by the renewals.
    std::thread::sleep(Duration::from_secs(6));
    assert!(exists(&c, &key), "renewals keep the record");

    // The host dies: no more renewals, no revoke.
    stop.store(true, Ordering::Relaxed);
    let lease = runner.join().unwrap();
    assert_eq!(lease, Some(kv.lease));
    let gone = wait_until(Duration::from_secs(5 + 4), || !exists(&c, &key))
        .expect("the record outlived its lease");
    eprintln!("host record gone {gone:?} after the last renewal stopped");
    assert!(!exists(&c, &service_key("web", "h1").unwrap()));
    assert!(exists(&c, &seen_key("h1").unwrap()), "seen stays");
    let view = FleetView::read(&c, registry::unix_now()).unwrap();
    assert_eq!(view.hosts.len(), 0);
    assert_eq!(view.gone.len(), 1);
    assert_eq!(view.gone[0].hostname, "host-h1");
}

#[test]
fn revoke_removes_at_once_and_a_lost_lease_is_granted_again() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let mut reg = Registrar::new(cluster.client(), config(30));
    let now = registry::unix_now();
    reg.publish(&host("h2", "1.0"), &[web(80)], now).unwrap();
    let first = reg.lease().unwrap();
    let key = host_key("h2").unwrap();
    assert!(exists(&c, &key));

    // Someone revokes the lease behind the registrar's back: the keys go;
    // the next renewal notices and the next publish puts all again.
    c.lease_revoke(first).unwrap();
    assert!(!exists(&c, &key));
    assert_eq!(reg.renew().unwrap(), Renewal::Lost);
    reg.publish(&host("h2", "1.0"), &[web(80)], now).unwrap();
    let second = reg.lease().unwrap();
    assert_ne!(second, first);
    assert_eq!(c.get(key.as_bytes()).unwrap().unwrap().lease, second);
    assert!(exists(&c, &service_key("web", "h2").unwrap()));

    // Lost again, and this time a changed record finds out on the put (404).
    c.lease_revoke(second).unwrap();
    reg.publish(&host("h2", "1.1"), &[web(80)], now).unwrap();
    let third = reg.lease().unwrap();
    assert_ne!(third, second);
    let kv = c.get(key.as_bytes()).unwrap().unwrap();
    assert_eq!(kv.lease, third);
    assert_eq!(
        serde_json::from_slice::<HostRecord>(&kv.value)
            .unwrap()
            .version,
        "1.1"
    );
    assert!(
        exists(&c, &service_key("web", "h2").unwrap()),
        "the services are put again with the host"
    );
    assert!(matches!(reg.renew().unwrap(), Renewal::Renewed(ttl) if ttl > 25));

    // A clean stop: everything under the lease goes now, seen stays.
    reg.revoke().unwrap();
    assert!(!exists(&c, &key));
    assert!(!exists(&c, &service_key("web", "h2").unwrap()));
    assert!(exists(&c, &seen_key("h2").unwrap()));
    assert_eq!(reg.lease(), None);
}

#[test]
fn a_service_is_announced_while_ready_and_removed_when_not() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let mut reg = Registrar::new(cluster.client(), config(30));
    let now = registry::unix_now();
    assert!(discover(&c, "web").unwrap().is_empty());
    let changes = reg.publish(&host("h3", "1.0"), &[web(8080)], now).unwrap();
    assert_eq!(changes.put.len(), 1);
    let found = discover(&c, "web").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].host.as_str(), found[0].endpoint().as_str()),
        ("h3", "10.0.0.7:8080")
    );
    // Unchanged: nothing is written.
    assert!(
        reg.publish(&host("h3", "1.0"), &[web(8080)], now)
            .unwrap()
            .is_empty()
    );
    // No longer ready.
    let changes = reg.publish(&host("h3", "1.0"), &[], now).unwrap();
    assert_eq!(changes.delete, ["web"]);
    assert!(discover(&c, "web").unwrap().is_empty());
    assert!(exists(&c, &host_key("h3").unwrap()), "the host stays");
    // A name that would reach outside the service's folder is refused.
    assert!(discover(&c, "../hosts").is_err());
    let bad = ServiceRecord {
        name: "a/b".into(),
        ..web(1)
    };
    assert!(reg.publish(&host("h3", "1.0"), &[bad], now).is_err());
}

fn put_json(c: &Client, key: &str, value: &impl serde::Serialize) {
    c.put(key.as_bytes(), &serde_json::to_vec(value).unwrap(), 0)
        .unwrap();
}

#[test]
fn the_fleet_view_sums_versions_halted_groups_and_gone_hosts() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let now = registry::unix_now();
    let mut failed = host("b", "2.0");
    failed.fleet_lock_group = Some("workers".into());
    failed.slot_held = true;
    failed.last_failed_commit = Some("deadbeef".into());
    failed.slot_reason = Some("failed update to 2.0 (deadbeef)".into());
    failed.boot_state = "good".into();
    let mut rebooting = host("c", "1.0");
    rebooting.slot_held = true;
    rebooting.agent_state = Some("rebooting".into());
    for h in [host("a", "1.0"), failed, rebooting] {
        put_json(
            &c,
            &host_key(&h.id).unwrap(),
            &HostRecord {
                updated_at: now - 3,
                ..h.clone()
            },
        );
        put_json(
            &c,
            &seen_key(&h.id).unwrap(),
            &SeenRecord {
                id: h.id.clone(),
                hostname: h.hostname.clone(),
                version: h.version.clone(),
                seen_at: now - 3,
                ..SeenRecord::default()
            },
        );
    }
    put_json(
        &c,
        &seen_key("z").unwrap(),
        &SeenRecord {
            id: "z".into(),
            hostname: "host-z".into(),
            version: "0.9".into(),
            seen_at: now - 7200,
            ..SeenRecord::default()
        },
    );
    put_json(
        &c,
        &service_key("web", "a").unwrap(),
        &ServiceRecord {
            host: "a".into(),
            ..web(80)
        },
    );
    let view = FleetView::read(&c, now).unwrap();
    let names: Vec<&str> = view.hosts.iter().map(|h| h.hostname.as_str()).collect();
    assert_eq!(names, ["host-a", "host-b", "host-c"]);
    assert_eq!(
        view.summary.versions,
        [("1.0".to_string(), 2), ("2.0".to_string(), 1)].into()
    );
    assert_eq!(view.summary.halted.len(), 1, "{:?}", view.summary.halted);
    assert_eq!(view.summary.halted[0].group, "workers");
    assert_eq!(view.summary.halted[0].hostname, "host-b");
    assert_eq!(view.summary.gone, 1);
    assert_eq!(view.gone[0].hostname, "host-z");
    assert_eq!(view.gone[0].last_seen_secs, 7200);
    assert_eq!(view.services["web"].len(), 1);
    let text = view.text();
    eprintln!("{text}");
    assert!(
        text.contains("3 hosts live; versions 1.0: 2, 2.0: 1"),
        "{text}"
    );
    assert!(
        text.contains("halted: group workers held by host-b (b), failed commit deadbeef"),
        "{text}"
    );
    assert!(
        text.contains("gone: host-z (z) version 0.9, last seen 2h ago"),
        "{text}"
    );
    assert!(
        view.services_text(Some("web"))
            .contains("10.0.0.7:80  host-a")
    );
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["summary"]["gone"], 1);
    assert_eq!(json["hosts"][1]["slot_held"], true);
}

#[test]
fn a_thousand_hosts_view_is_fast() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let now = registry::unix_now();
    // Written as one transaction per 100 keys, to keep the setup quick.
    for chunk in 0..10 {
        let ops: Vec<berth_fleet::etcd::Op> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let h = HostRecord {
                    updated_at: now,
                    ..host(
                        &format!("{n:032x}"),
                        if n % 10 == 0 { "2.0" } else { "1.0" },
                    )
                };
                berth_fleet::etcd::Op::Put {
                    key: host_key(&h.id).unwrap().into_bytes(),
                    value: serde_json::to_vec(&h).unwrap(),
                    lease: 0,
                }
            })
            .collect();
        c.txn(&[], &ops, &[]).unwrap();
    }
    let start = Instant::now();
    let view = FleetView::read(&c, now).unwrap();
    let text = view.text();
    let took = start.elapsed();
    eprintln!(
        "fleet view of 1,000 hosts: read, built and rendered in {took:?} ({} bytes of text)",
        text.len()
    );
    assert_eq!(view.summary.hosts, 1000);
    assert_eq!(view.summary.versions["2.0"], 100);
    assert!(took < Duration::from_secs(5), "{took:?}");
}
