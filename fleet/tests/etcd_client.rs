//! The etcd gateway client against a real etcd (Debian's, on loopback).

use std::time::{Duration, Instant};

use berth_etcd_fixture::{EtcdCluster, etcd_or_skip};
use berth_fleet::etcd::{Compare, EtcdError, Op};

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
