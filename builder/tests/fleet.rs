//! `berth fleet status` and `berth fleet services` against a real etcd
//! (Debian's, on loopback), through the built binary: output and exit codes.

use std::process::Command;

use berth_fleet::fixture::{EtcdCluster, etcd_or_skip, free_port};
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
