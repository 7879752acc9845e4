//! The etcd gateway client against a real etcd (Debian's, on loopback).

use std::time::{Duration, Instant};

use berth_etcd_fixture::{EtcdCluster, TlsFiles, etcd_or_skip};
use berth_fleet::etcd::{Client, Compare, EtcdConfig, EtcdError, Op};

#[test]
fn reads_writes_and_compare_and_swap_on_one_member() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    assert_eq!(c.get(b"/t/a").unwrap(), None);
    let rev = c.put(b"/t/a", b"one", 0).unwrap();
    let kv = c.get(b"/t/a").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], rev));

    // Create-if-absent fails on an existing key; update-if-unchanged works once.
    let absent = c
        .txn(
            &[Compare::ModRevision(b"/t/a".to_vec(), 0)],
            &[Op::Put {
                key: b"/t/a".to_vec(),
                value: b"x".to_vec(),
                lease: 0,
            }],
            &[],
        )
        .unwrap();
    assert!(!absent.succeeded);
    let swap = Op::Put {
        key: b"/t/a".to_vec(),
        value: b"two".to_vec(),
        lease: 0,
    };
    let first = c
        .txn(
            &[Compare::ModRevision(b"/t/a".to_vec(), rev)],
            std::slice::from_ref(&swap),
            &[],
        )
        .unwrap();
    let second = c
        .txn(&[Compare::ModRevision(b"/t/a".to_vec(), rev)], &[swap], &[])
        .unwrap();
    assert!(first.succeeded && !second.succeeded);
    assert_eq!(c.get(b"/t/a").unwrap().unwrap().value, b"two");
    // History: the value as of the first revision.
    assert_eq!(c.get_at(b"/t/a", rev).unwrap().unwrap().value, b"one");

    c.put(b"/t/b", b"", 0).unwrap();
    c.put(b"/u", b"other", 0).unwrap();
    let keys: Vec<String> = c
        .prefix(b"/t/")
        .unwrap()
        .kvs
        .iter()
        .map(|kv| kv.key_str())
        .collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert_eq!(c.delete(b"/t/b").unwrap(), 1);
    assert_eq!(c.delete(b"/t/b").unwrap(), 0);
}

#[test]
fn keys_under_a_lease_go_when_it_is_revoked_or_expires() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let lease = c.lease_grant(2).unwrap();
    assert_eq!(lease.ttl, 2);
    c.put(b"/h/1", b"alive", lease.id).unwrap();
    assert_eq!(c.get(b"/h/1").unwrap().unwrap().lease, lease.id);
    assert_eq!(c.lease_keepalive(lease.id).unwrap(), Some(2));
    let start = Instant::now();
    while c.get(b"/h/1").unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.lease_keepalive(lease.id).unwrap(),
        None,
        "a dead lease renews to nothing"
    );
    let err = c.put(b"/h/1", b"x", lease.id).unwrap_err();
    assert!(matches!(err, EtcdError::Refused { .. }), "{err}");

    let lease = c.lease_grant(60).unwrap();
    c.put(b"/h/2", b"alive", lease.id).unwrap();
    c.lease_revoke(lease.id).unwrap();
    assert_eq!(c.get(b"/h/2").unwrap(), None);
    c.lease_revoke(lease.id).unwrap();
}

#[test]
fn a_three_member_cluster_works_with_one_down_and_fails_clearly_with_two() {
    let Some(etcd) = etcd_or_skip() else { return };
    let mut cluster = EtcdCluster::start(&etcd, 3).unwrap();
    let c = cluster.client();
    c.put(b"/q", b"1", 0).unwrap();
    cluster.stop(0);
    c.put(b"/q", b"2", 0).unwrap();
    assert_eq!(c.get(b"/q").unwrap().unwrap().value, b"2");
    cluster.stop(1);
    let start = Instant::now();
    let err = c.put(b"/q", b"3", 0).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    cluster.restart(1).unwrap();
    cluster.wait_ready().unwrap();
    // The put that timed out may still commit once a quorum is back
    // (it was in the leader's log): why writers use compare-and-swap.
    let value = c.get(b"/q").unwrap().unwrap().value;
    assert!(value == b"2" || value == b"3", "{value:?}");
    c.put(b"/q", b"4", 0).unwrap();
}

/// What a `put` through a client with `config` gives, as text for asserts.
fn put_with(config: &EtcdConfig) -> Result<i64, EtcdError> {
    Client::new(config)?.put(b"/t/tls", b"v", 0)
}

#[test]
fn over_tls_the_client_needs_the_ca_and_its_certificate_and_then_a_password() {
    let Some(etcd) = etcd_or_skip() else { return };
    let mut cluster = EtcdCluster::start_tls(&etcd, 1).unwrap();
    let tls = cluster.tls().unwrap().clone();
    let full = cluster.config();
    assert!(full.endpoints.iter().all(|e| e.starts_with("https://")));
    let c = cluster.client();
    let rev = c.put(b"/t/tls", b"over tls", 0).unwrap();
    assert_eq!(c.get(b"/t/tls").unwrap().unwrap().mod_revision, rev);

    // Plain HTTP to a TLS member, no client certificate, or a CA the
    // member's certificate is not from: nothing is written, and the error
    // says which endpoint and why.
    let plain = EtcdConfig::with_endpoints(
        full.endpoints
            .iter()
            .map(|e| e.replacen("https://", "http://", 1)),
    );
    let no_cert = EtcdConfig {
        cert_file: None,
        key_file: None,
        ..full.clone()
    };
    let other_ca_dir = tempfile::tempdir().unwrap();
    let other_ca = TlsFiles::generate(other_ca_dir.path()).unwrap();
    let wrong_ca = EtcdConfig {
        ca_file: Some(other_ca.ca.clone()),
        ..full.clone()
    };
    let web_roots = EtcdConfig {
        ca_file: None,
        ..full.clone()
    };
    for (what, config) in [
        ("plain http", &plain),
        ("no client certificate", &no_cert),
        ("another CA", &wrong_ca),
        ("the web roots", &web_roots),
    ] {
        let err = put_with(config).expect_err(what);
        assert!(
            err.to_string().contains("127.0.0.1:"),
            "{what}: {err} does not name the endpoint"
        );
    }
    // A certificate the cluster's CA did not sign is refused in the handshake.
    let foreign = EtcdConfig {
        cert_file: Some(other_ca.client_cert.clone()),
        key_file: Some(other_ca.client_key.clone()),
        ..full.clone()
    };
    assert!(put_with(&foreign).unwrap_err().is_unavailable());
    // Half a client identity is a configuration error, before any request.
    let half = EtcdConfig {
        key_file: None,
        ..full.clone()
    };
    assert!(matches!(Client::new(&half), Err(EtcdError::Config(_))));
    assert_eq!(c.get(b"/t/tls").unwrap().unwrap().value, b"over tls");

    // With authentication on, the certificate alone is not enough: the
    // client logs in with the user's password from its file.
    let password_file = cluster.enable_auth("a long test password").unwrap();
    let no_user = full.clone();
    match put_with(&no_user) {
        Err(EtcdError::Refused { message, .. }) => {
            assert!(message.contains("user name is empty"), "{message}")
        }
        other => panic!("no user on an auth cluster: {other:?}"),
    }
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not the password\n").unwrap();
    let wrong_password = EtcdConfig {
        username: Some("root".into()),
        password_file: Some(wrong.path().to_path_buf()),
        ..full.clone()
    };
    match put_with(&wrong_password) {
        Err(EtcdError::Refused { message, .. }) => {
            assert!(message.contains("invalid user ID or password"), "{message}");
            // Which member said it, and to what.
            assert!(
                message.starts_with(&format!("{}/v3/", full.endpoints[0])),
                "{message}"
            );
        }
        other => panic!("wrong password: {other:?}"),
    }
    let logged_in = cluster.config();
    assert_eq!(
        logged_in.password_file.as_deref(),
        Some(password_file.as_path())
    );
    let c = Client::new(&logged_in).unwrap();
    let rev = c.put(b"/t/tls", b"as root", 0).unwrap();
    assert_eq!(c.get(b"/t/tls").unwrap().unwrap().mod_revision, rev);

    // etcd's gateway refuses a certificate with a CommonName while auth is
    // on, even with the right password: the error says what to do.
    let (cert, key) = tls.issue_client("named", Some("root")).unwrap();
    let named = EtcdConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        ..logged_in.clone()
    };
    match put_with(&named) {
        Err(EtcdError::Refused { message, .. }) => {
            assert!(message.contains("certificate without a CN"), "{message}");
            assert!(
                message.starts_with(&format!("{}/v3/", full.endpoints[0])),
                "{message}"
            );
        }
        other => panic!("a certificate with a CN under auth: {other:?}"),
    }
    assert_eq!(c.get(b"/t/tls").unwrap().unwrap().value, b"as root");
}
