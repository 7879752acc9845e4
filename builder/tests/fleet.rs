//! `berth fleet status`, `services`, `locks` and `unlock` against a real
//! etcd (Debian's, on loopback), through the built binary: output and exit
//! codes.

use std::process::Command;

use berth_etcd_fixture::{EtcdCluster, etcd_or_skip, free_port};
use berth_fleet::registry::{self, HostRecord, ServiceRecord, host_key, service_key};

fn berth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_ETCD_ENDPOINTS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fleet_status_and_services_print_the_registry() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let now = registry::unix_now();
    let h = HostRecord {
        id: "850fc687996545cf91f79b613a99f540".into(),
        hostname: "web-1".into(),
        version: "1.2.0".into(),
        boot_state: "good".into(),
        agent_state: Some("idle".into()),
        updated_at: now,
        ..HostRecord::default()
    };
    c.put(
        host_key(&h.id).unwrap().as_bytes(),
        &serde_json::to_vec(&h).unwrap(),
        0,
    )
    .unwrap();
    let s = ServiceRecord {
        name: "web".into(),
        host: h.id.clone(),
        address: "10.0.2.15".into(),
        port: 8080,
        updated_at: now,
        ..ServiceRecord::default()
    };
    c.put(
        service_key("web", &h.id).unwrap().as_bytes(),
        &serde_json::to_vec(&s).unwrap(),
        0,
    )
    .unwrap();
    let url = cluster.endpoints()[0].clone();

    let (code, out, err) = berth(&["fleet", "status", "--etcd", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HOST"), "{out}");
    assert!(
        out.contains("web-1  850fc6879965  1.2.0    good  idle"),
        "{out}"
    );
    assert!(out.contains("1 host live; versions 1.2.0: 1"), "{out}");

    let (code, out, _) = berth(&["fleet", "status", "--etcd", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["hosts"], 1);

    let (code, out, _) = berth(&["fleet", "services", "web", "--etcd", &url]);
    assert_eq!(code, 0);
    assert!(out.contains("web      10.0.2.15:8080  web-1"), "{out}");
    let (code, out, _) = berth(&["fleet", "services", "--etcd", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["web"][0]["port"], 8080);

    // Usage errors exit 2; an etcd nobody listens on exits 1.
    assert_eq!(berth(&["fleet", "status"]).0, 2, "--etcd is required");
    assert_eq!(berth(&["fleet", "status", "--etcd", "10.0.0.1:2379"]).0, 2);
    assert_eq!(berth(&["fleet", "services", "a/b", "--etcd", &url]).0, 2);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = berth(&["fleet", "status", "--etcd", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reading the fleet registry") && err.contains("unavailable"),
        "{err}"
    );
}

#[test]
fn fleet_locks_shows_holders_and_unlock_releases_only_the_named_one() {
    use berth_fleet::lock::store::{Locked, Store};
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let url = cluster.endpoints()[0].clone();

    let (code, out, err) = berth(&["fleet", "locks", "--etcd", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "no FleetLock groups in etcd yet\n");

    // Two of the group's three slots taken, as the lock server takes them.
    let store = Store::new(cluster.client());
    assert!(matches!(
        store.lock("web", "host-a", 3).unwrap(),
        Locked::Granted
    ));
    assert!(matches!(
        store.lock("web", "host-b", 3).unwrap(),
        Locked::Granted
    ));

    let (code, out, err) = berth(&["fleet", "locks", "--etcd", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("group web: 2 of 3 slots held\n"), "{out}");
    assert!(
        out.contains("  host-a  since ") && out.contains("  host-b  since "),
        "{out}"
    );
    let (code, out, _) = berth(&["fleet", "locks", "--etcd", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["groups"][0]["group"], "web");
    assert_eq!(v["groups"][0]["holders"].as_array().unwrap().len(), 2);

    // An operator releases host-a's slot; host-b keeps its own.
    let (code, out, err) = berth(&["fleet", "unlock", "web", "host-a", "--etcd", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "released host-a's slot in group web\n");
    assert!(!store.holds("web", "host-a").unwrap());
    assert!(store.holds("web", "host-b").unwrap());
    // Releasing again is fine, and says so; --json says whether it released.
    let (code, out, _) = berth(&["fleet", "unlock", "web", "host-a", "--etcd", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["released"], false, "{out}");
    let (_, out, _) = berth(&["fleet", "locks", "--etcd", &url]);
    assert!(out.starts_with("group web: 1 of 3 slots held\n"), "{out}");
    assert!(!out.contains("host-a"), "{out}");

    // A bad group or an empty id is a usage error (2) and changes nothing;
    // an etcd nobody listens on is a failure (1).
    assert_eq!(
        berth(&["fleet", "unlock", "we/b", "host-b", "--etcd", &url]).0,
        2
    );
    assert_eq!(berth(&["fleet", "unlock", "web", "", "--etcd", &url]).0, 2);
    assert!(store.holds("web", "host-b").unwrap());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = berth(&["fleet", "unlock", "web", "host-b", "--etcd", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("releasing host-b's slot in web"), "{err}");
    let (code, _, err) = berth(&["fleet", "locks", "--etcd", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reading the FleetLock groups"), "{err}");
}
