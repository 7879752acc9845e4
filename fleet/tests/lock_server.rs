//! The FleetLock server against a real etcd (Debian's, on loopback):
//! the protocol as its document states it, spoken in raw HTTP; many
//! clients at once; two replicas with one restarted; a cluster losing
//! members; and the binary's configuration errors.
//!
//! What is checked is etcd's own record: every revision of a group's key,
//! read back with `get_at`, never lists more holders than slots.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_etcd_fixture::{EtcdCluster, etcd_or_skip, free_port};
use berth_fleet::etcd::Client;
use berth_fleet::lock::{self, Config, GroupConfig, Semaphore, Server, group_key};
use berth_fleet::protocol::{self, ErrorBody};

/// An HTTP answer, read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error body, which must be JSON `{kind, value}`.
    fn error(&self) -> ErrorBody {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not {{kind,value}}: {e}: {self:?}"))
    }

    fn kind(&self) -> String {
        self.error().kind
    }
}

/// One request on a fresh connection (`Connection: close`), written and
/// read by hand, so nothing between the test and the server fixes it up.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {bytes:?}")))?;
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    })
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    raw(addr, &head, body)
}

const PROTO: (&str, &str) = ("fleet-lock-protocol", "true");
const JSON: (&str, &str) = ("content-type", "application/json");

fn body(id: &str, group: &str) -> Vec<u8> {
    serde_json::json!({"client_params": {"id": id, "group": group}})
        .to_string()
        .into_bytes()
}

/// A well-formed FleetLock request.
fn fleet(addr: SocketAddr, path: &str, id: &str, group: &str) -> std::io::Result<Answer> {
    request(addr, "POST", path, &[PROTO, JSON], &body(id, group))
}

fn lock(addr: SocketAddr, id: &str, group: &str) -> Answer {
    fleet(addr, "/v1/pre-reboot", id, group).unwrap()
}

fn unlock(addr: SocketAddr, id: &str, group: &str) -> Answer {
    fleet(addr, "/v1/steady-state", id, group).unwrap()
}

fn config(etcd: berth_fleet::etcd::EtcdConfig, groups: &[(&str, u32)]) -> Config {
    let mut c = Config::new(etcd);
    c.address = "127.0.0.1".into();
    c.port = 0;
    c.groups = groups
        .iter()
        .map(|(name, slots)| GroupConfig {
            name: name.to_string(),
            slots: *slots,
        })
        .collect();
    c
}

/// An in-process server on a free port.
fn server(cluster: &EtcdCluster, groups: &[(&str, u32)]) -> (Server, SocketAddr) {
    let s = lock::serve(config(cluster.config(), groups)).unwrap();
    let addr = s.local_addr();
    (s, addr)
}

fn holder_ids(client: &Client, group: &str) -> Vec<String> {
    client
        .get(&group_key(group))
        .unwrap()
        .map(|kv| Semaphore::from_json(&kv.value).unwrap().holders)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

/// Every distinct value the group's key had, oldest first, read from
/// etcd's history one revision at a time.
fn history(client: &Client, group: &str) -> Vec<Semaphore> {
    let key = group_key(group);
    let Some(now) = client.get(&key).unwrap() else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    let mut last = 0;
    for rev in now.create_revision..=now.mod_revision {
        if let Some(kv) = client.get_at(&key, rev).unwrap() {
            if kv.mod_revision != last {
                last = kv.mod_revision;
                seen.push(Semaphore::from_json(&kv.value).unwrap());
            }
        }
    }
    seen
}

/// Asserts that no revision of the key had more holders than `slots` and
/// returns every id that ever held a slot.
fn check_history(client: &Client, group: &str, slots: usize) -> BTreeSet<String> {
    let values = history(client, group);
    assert!(!values.is_empty(), "no history for {group}");
    let mut ids = BTreeSet::new();
    for (i, s) in values.iter().enumerate() {
        assert!(
            s.holders.len() <= slots,
            "revision #{i} of {group} had {} holders: {s:?}",
            s.holders.len()
        );
        ids.extend(s.holders.iter().map(|h| h.id.clone()));
    }
    ids
}

#[test]
fn the_protocol_as_its_document_says() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let (srv, addr) = server(&cluster, &[("default", 1)]);
    let c = cluster.client();
    let pre = "/v1/pre-reboot";

    // The header is required, and must say true.
    let a = request(addr, "POST", pre, &[JSON], &body("a", "default")).unwrap();
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    let a = request(
        addr,
        "POST",
        pre,
        &[("fleet-lock-protocol", "false"), JSON],
        &body("a", "default"),
    )
    .unwrap();
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    // The body is JSON with both fields non-empty, and a valid group.
    let a = request(addr, "POST", pre, &[PROTO, JSON], b"{\"client_params\":").unwrap();
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    let a = request(addr, "POST", pre, &[PROTO, JSON], b"{\"id\":\"a\"}").unwrap();
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    let a = lock(addr, "", "default");
    assert_eq!(
        (a.status, a.kind().as_str()),
        (400, "invalid_client_identity")
    );
    for group in ["", "a b", "a/b", "a_b"] {
        let a = lock(addr, "a", group);
        assert_eq!(
            (a.status, a.kind().as_str()),
            (400, "invalid_client_identity"),
            "{group:?}"
        );
    }
    let a = lock(addr, "a", "elsewhere");
    assert_eq!((a.status, a.kind().as_str()), (400, "unknown_group"));
    assert!(a.error().value.contains("elsewhere"), "{a:?}");
    assert_eq!(
        c.get(&group_key("default")).unwrap(),
        None,
        "nothing written"
    );

    // Lock, and lock again (recursive): 200 with an empty body.
    let a = lock(addr, "a", "default");
    assert_eq!((a.status, a.body.len()), (200, 0), "{a:?}");
    let rev = c.get(&group_key("default")).unwrap().unwrap().mod_revision;
    let a = lock(addr, "a", "default");
    assert_eq!((a.status, a.body.len()), (200, 0), "{a:?}");
    assert_eq!(
        c.get(&group_key("default")).unwrap().unwrap().mod_revision,
        rev,
        "a recursive lock writes nothing"
    );
    // One slot: the second client is refused.
    let a = lock(addr, "b", "default");
    assert!(!(200..300).contains(&a.status), "{a:?}");
    assert_eq!((a.status, a.kind().as_str()), (409, "semaphore_full"));
    // Unlocking what one does not hold is success, and changes nothing.
    let a = unlock(addr, "b", "default");
    assert_eq!((a.status, a.body.len()), (200, 0), "{a:?}");
    assert_eq!(holder_ids(&c, "default"), ["a"]);
    // The holder unlocks; then the other can lock.
    assert_eq!(unlock(addr, "a", "default").status, 200);
    assert!(holder_ids(&c, "default").is_empty());
    assert_eq!(lock(addr, "b", "default").status, 200);
    assert_eq!(holder_ids(&c, "default"), ["b"]);
    let stored: serde_json::Value =
        serde_json::from_slice(&c.get(&group_key("default")).unwrap().unwrap().value).unwrap();
    assert_eq!(stored["slots"], 1);
    assert_eq!(stored["holders"][0]["id"], "b");
    assert!(stored["holders"][0]["since"].as_u64().unwrap() > 1_600_000_000);

    // Only POST on the two endpoints, only GET on the views, nothing else.
    let a = request(addr, "GET", pre, &[PROTO], b"").unwrap();
    assert_eq!((a.status, a.kind().as_str()), (405, "method_not_allowed"));
    let a = request(
        addr,
        "POST",
        "/v1/other",
        &[PROTO, JSON],
        &body("a", "default"),
    )
    .unwrap();
    assert_eq!((a.status, a.kind().as_str()), (404, "not_found"));
    let a = request(addr, "POST", "/metrics", &[], b"").unwrap();
    assert_eq!(a.status, 405);
    let big = vec![b' '; 65 * 1024];
    let a = request(addr, "POST", pre, &[PROTO, JSON], &big).unwrap();
    assert_eq!((a.status, a.kind().as_str()), (413, "bad_request"));

    // The read-only views.
    let a = request(addr, "GET", "/v1/locks", &[], b"").unwrap();
    assert_eq!(a.status, 200);
    let locks: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(locks["groups"][0]["group"], "default");
    assert_eq!(locks["groups"][0]["slots"], 1);
    assert_eq!(locks["groups"][0]["holders"][0]["id"], "b");
    let a = request(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let a = request(addr, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().contains("version=0.0.4"));
    let text = String::from_utf8(a.body).unwrap();
    for line in [
        "berth_fleetlock_slots{group=\"default\"} 1",
        "berth_fleetlock_holders{group=\"default\"} 1",
        "berth_fleetlock_requests_total{endpoint=\"pre-reboot\",outcome=\"granted\"} 2",
        "berth_fleetlock_requests_total{endpoint=\"pre-reboot\",outcome=\"already_held\"} 1",
        "berth_fleetlock_requests_total{endpoint=\"pre-reboot\",outcome=\"semaphore_full\"} 1",
        "berth_fleetlock_requests_total{endpoint=\"pre-reboot\",outcome=\"unknown_group\"} 1",
        "berth_fleetlock_requests_total{endpoint=\"steady-state\",outcome=\"not_held\"} 1",
        "# TYPE berth_fleetlock_requests_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    srv.shutdown();
}

#[test]
fn the_update_agents_client_works_with_the_server() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let (srv, addr) = server(&cluster, &[("web", 1)]);
    // A base URL with a path-less host and no trailing slash.
    let base = format!("http://{addr}");
    let a = protocol::Client::new(&base, "host-a", "web", Duration::from_secs(10));
    let b = protocol::Client::new(&base, "host-b", "web", Duration::from_secs(10));
    a.pre_reboot().unwrap();
    a.pre_reboot().unwrap();
    let err = b.pre_reboot().unwrap_err();
    assert_eq!(err.kind(), "semaphore_full", "{err}");
    b.steady_state().unwrap();
    a.steady_state().unwrap();
    b.pre_reboot().unwrap();
    let other = protocol::Client::new(&base, "host-c", "db", Duration::from_secs(10));
    assert_eq!(other.pre_reboot().unwrap_err().kind(), "unknown_group");
    assert_eq!(holder_ids(&cluster.client(), "web"), ["host-b"]);
    srv.shutdown();
}

/// One client's life: ask until granted, hold a moment, give back (also
/// until it works). `addrs` are tried in turn when one cannot be reached.
/// `holding` counts the clients that believe they hold a slot.
fn client_cycle(addrs: &[SocketAddr], id: &str, group: &str, slots: usize, holding: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = fastrand::usize(..addrs.len());
    let mut ask = |path: &str| {
        let mut pause = 20;
        loop {
            assert!(Instant::now() < deadline, "{id}: {path} never succeeded");
            let addr = addrs[n % addrs.len()];
            match fleet(addr, path, id, group) {
                Ok(a) if a.status == 200 => return,
                Ok(a) => {
                    let kind = a.kind();
                    assert!(
                        kind == "semaphore_full" || kind == "conflict",
                        "{id}: {path}: {a:?}"
                    );
                }
                // A replica being restarted: try another.
                Err(_) => n += 1,
            }
            // Poll as a client should, with jitter and a growing pause (Zincati
            // waits 5 min; this is compressed to keep the test short).
            std::thread::sleep(Duration::from_millis(fastrand::u64(pause / 2..pause)));
            pause = (pause * 2).min(400);
        }
    };
    ask("/v1/pre-reboot");
    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(
        now <= slots,
        "{now} clients believe they hold one of {slots} slots"
    );
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..5)));
    holding.fetch_sub(1, Ordering::SeqCst);
    ask("/v1/steady-state");
}

#[test]
fn two_hundred_clients_never_hold_more_than_three_slots() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let (srv, addr) = server(&cluster, &[("workers", 3)]);
    let start = Instant::now();
    let holding = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let holding = holding.clone();
            std::thread::spawn(move || {
                client_cycle(&[addr], &format!("host-{i:03}"), "workers", 3, &holding)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("200 clients locked and unlocked in {:?}", start.elapsed());
    let c = cluster.client();
    assert!(holder_ids(&c, "workers").is_empty(), "no slot left held");
    let ids = check_history(&c, "workers", 3);
    assert_eq!(ids.len(), 200, "every client's grant is in etcd's history");
    srv.shutdown();
}

/// A `berth-fleetlock` process.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    /// Starts the binary and waits until `/health` says etcd answers.
    fn start(config: &Path, port: u16) -> Replica {
        Self::start_until(config, port, |a| a.status == 200)
    }

    /// Starts the binary and waits until `/health` answers as `ready` says.
    fn start_until(config: &Path, port: u16, ready: impl Fn(&Answer) -> bool) -> Replica {
        let cmd = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"));
        Self::spawn(cmd, config, port, ready)
    }

    /// Runs `cmd` (the binary, or a wrapper that runs it) with the
    /// configuration and the port, as [`Replica::start_until`].
    fn spawn(
        mut cmd: Command,
        config: &Path,
        port: u16,
        ready: impl Fn(&Answer) -> bool,
    ) -> Replica {
        let child = cmd
            .arg("--config")
            .arg(config)
            .args(["--address", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while !request(addr, "GET", "/health", &[], b"").is_ok_and(|a| ready(&a)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no replica on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Replica { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, endpoints: &[String], groups: &str) -> std::path::PathBuf {
    let path = dir.join("fleet-lock.toml");
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "[etcd3]\nendpoints = [{}]\ntimeout-ms = 2000\n{groups}",
            endpoints.join(", ")
        ),
    )
    .unwrap();
    path
}

#[test]
fn two_replicas_share_the_slots_and_one_restarting_loses_none() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &cluster.endpoints(),
        "[[lock.groups]]\nname = \"web\"\nslots = 3\n",
    );
    let (port_a, port_b) = (free_port(), free_port());
    let replica_a = Arc::new(Mutex::new(Replica::start(&file, port_a)));
    let replica_b = Replica::start(&file, port_b);
    let addrs = [replica_a.lock().unwrap().addr, replica_b.addr];
    let holding = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..60)
        .map(|i| {
            let (holding, done) = (holding.clone(), done.clone());
            std::thread::spawn(move || {
                client_cycle(&addrs, &format!("host-{i:02}"), "web", 3, &holding);
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Kill replica A mid-way (no clean shutdown: requests in flight are
    // cut), and start it again on the same port.
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < 20 {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    replica_a.lock().unwrap().kill();
    std::thread::sleep(Duration::from_millis(200));
    let restarted = Replica::start(&file, port_a);
    *replica_a.lock().unwrap() = restarted;
    for t in threads {
        t.join().unwrap();
    }
    assert!(done.load(Ordering::SeqCst) == 60);
    let c = cluster.client();
    assert!(
        holder_ids(&c, "web").is_empty(),
        "a slot was lost: {:?}",
        holder_ids(&c, "web")
    );
    let ids = check_history(&c, "web", 3);
    assert_eq!(ids.len(), 60);
}

#[test]
fn without_an_etcd_quorum_nothing_is_granted() {
    let Some(etcd) = etcd_or_skip() else { return };
    let mut cluster = EtcdCluster::start(&etcd, 3).unwrap();
    let mut etcd_config = cluster.config();
    // Below the ~7 s etcd takes to answer 503 without quorum.
    etcd_config.timeout_ms = 1_500;
    let srv = lock::serve(config(etcd_config, &[("default", 3)])).unwrap();
    let addr = srv.local_addr();
    let c = cluster.client();
    assert_eq!(lock(addr, "a", "default").status, 200);

    // One of three down: still a quorum (after an election, perhaps).
    cluster.stop(0);
    let start = Instant::now();
    loop {
        let a = lock(addr, "b", "default");
        if a.status == 200 {
            break;
        }
        assert_eq!(a.kind(), "etcd_unavailable", "{a:?}");
        assert!(start.elapsed() < Duration::from_secs(20), "{a:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(holder_ids(&c, "default"), ["a", "b"]);

    // Two of three down: refused, clearly, and soon.
    cluster.stop(1);
    let start = Instant::now();
    let a = lock(addr, "c", "default");
    let took = start.elapsed();
    assert_eq!(
        (a.status, a.kind().as_str()),
        (503, "etcd_unavailable"),
        "{a:?}"
    );
    assert!(a.error().value.contains("unavailable"), "{a:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let a = unlock(addr, "a", "default");
    assert_eq!(
        (a.status, a.kind().as_str()),
        (503, "etcd_unavailable"),
        "{a:?}"
    );
    let h = request(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!((h.status, h.kind().as_str()), (503, "etcd_unavailable"));

    // Quorum back: the refused client holds nothing, never more holders
    // than slots, and it can lock now.
    cluster.restart(1).unwrap();
    cluster.wait_ready().unwrap();
    assert_eq!(holder_ids(&c, "default"), ["a", "b"]);
    check_history(&c, "default", 3);
    assert_eq!(lock(addr, "c", "default").status, 200);
    assert_eq!(holder_ids(&c, "default"), ["a", "b", "c"]);
    srv.shutdown();
}

/// Runs the binary on `toml`; returns its exit code and stderr.
fn run_binary(dir: &Path, toml: &str) -> (Option<i32>, String, String) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn configuration_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = "[etcd3]\nendpoints = [\"http://127.0.0.1:1\"]\n";
    for (toml, key) in [
        (format!("{etcd}[service]\nport = 1\nbogus = 2\n"), "bogus"),
        (
            format!("{etcd}[[lock.groups]]\nname = \"a\"\nslots = 0\n"),
            "lock.groups[0].slots",
        ),
        (
            format!(
                "{etcd}[[lock.groups]]\nname = \"ok\"\nslots = 1\n[[lock.groups]]\nname = \"a b\"\nslots = 1\n"
            ),
            "lock.groups[1].name",
        ),
        ("[etcd3]\nendpoints = []\n".to_string(), "etcd3.endpoints"),
        (format!("{etcd}[lock]\ngroups = 3\n"), "lock.groups"),
    ] {
        let (code, stderr, file) = run_binary(dir.path(), &toml);
        assert_eq!(code, Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(&file), "{stderr}");
        assert!(stderr.contains(key), "no {key} in {stderr}");
    }
    let (code, stderr, _) = run_binary(
        dir.path(),
        "[etcd3]\nendpoints = [\"http://127.0.0.1:1\"]\nca-file = \"/nonexistent/ca.pem\"\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    let missing = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"))
        .args(["--config", "/nonexistent/fleet-lock.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));

    // An address in use is a runtime failure: 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, etcd).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"))
        .arg("--config")
        .arg(&path)
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn slots_follow_the_configuration_and_operators_can_list_and_release() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let c = cluster.client();
    let slots_in_etcd = || {
        Semaphore::from_json(&c.get(&group_key("web")).unwrap().unwrap().value)
            .unwrap()
            .slots
    };
    let (one, addr) = server(&cluster, &[("web", 1), ("db", 1)]);
    assert_eq!(lock(addr, "a", "web").status, 200);
    assert_eq!(lock(addr, "x", "db").status, 200);
    one.shutdown();

    // Grown to 2 (airlock#81): the next write records it, b gets in.
    let (two, addr) = server(&cluster, &[("web", 2), ("db", 1)]);
    assert_eq!(lock(addr, "b", "web").status, 200);
    assert_eq!(slots_in_etcd(), 2);
    two.shutdown();

    // Shrunk to 1 under two holders: they keep their slots, nobody new
    // gets one until fewer than 1 hold.
    let (shrunk, addr) = server(&cluster, &[("web", 1), ("db", 1)]);
    assert_eq!(lock(addr, "a", "web").status, 200, "a still holds");
    assert_eq!(lock(addr, "c", "web").kind(), "semaphore_full");
    assert_eq!(unlock(addr, "a", "web").status, 200);
    assert_eq!(slots_in_etcd(), 1);
    assert_eq!(lock(addr, "c", "web").kind(), "semaphore_full");

    // The operator's view and release (what `berth fleet locks` and
    // `berth fleet unlock` call).
    let store = lock::Store::new(cluster.client());
    let groups = store.groups().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(groups[1].slots, 1);
    assert_eq!(groups[1].holders.len(), 1);
    assert_eq!(groups[1].holders[0].id, "b");
    assert!(groups[1].mod_revision > 0);
    assert_eq!(store.release("web", "b").unwrap(), lock::Unlocked::Released);
    assert_eq!(store.release("web", "b").unwrap(), lock::Unlocked::NotHeld);
    assert_eq!(
        store.release("nowhere", "b").unwrap(),
        lock::Unlocked::NotHeld
    );
    assert_eq!(lock(addr, "c", "web").status, 200);
    assert_eq!(holder_ids(&c, "web"), ["c"]);
    check_history(&c, "web", 2);
    shrunk.shutdown();
}

#[test]
fn the_binary_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    let Some(etcd) = etcd_or_skip() else { return };
    let mut cluster = EtcdCluster::start_tls(&etcd, 1).unwrap();
    let password_file = cluster.enable_auth("fleet lock test password").unwrap();
    let tls = cluster.tls().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    // The [etcd3] section as an operator writes it (airlock's keys).
    let write = |name: &str, password_file: &Path| {
        let path = dir.path().join(name);
        let endpoints: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        std::fs::write(
            &path,
            format!(
                "[etcd3]\nendpoints = [{}]\nca-file = {:?}\ncert-file = {:?}\nkey-file = {:?}\n\
                 username = \"root\"\npassword-file = {:?}\ntimeout-ms = 2000\n\
                 [[lock.groups]]\nname = \"default\"\nslots = 1\n",
                endpoints.join(", "),
                tls.ca,
                tls.client_cert,
                tls.client_key,
                password_file,
            ),
        )
        .unwrap();
        path
    };
    let good = Replica::start(&write("good.toml", &password_file), free_port());
    let c = cluster.client();
    assert_eq!(lock(good.addr, "host-a", "default").status, 200);
    assert_eq!(holder_ids(&c, "default"), ["host-a"]);
    let full = lock(good.addr, "host-b", "default");
    assert_eq!((full.status, full.kind().as_str()), (409, "semaphore_full"));
    assert_eq!(unlock(good.addr, "host-a", "default").status, 200);
    assert!(holder_ids(&c, "default").is_empty());

    // A replica with the wrong password grants nothing, and says why.
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not it\n").unwrap();
    let bad = Replica::start_until(&write("bad.toml", &wrong), free_port(), |a| a.status != 200);
    let refused = lock(bad.addr, "host-b", "default");
    assert!(refused.status >= 500, "{refused:?}");
    assert!(
        refused
            .error()
            .value
            .contains("invalid user ID or password"),
        "{refused:?}"
    );
    assert!(holder_ids(&c, "default").is_empty());
    let history = check_history(&c, "default", 1);
    assert_eq!(history.into_iter().collect::<Vec<_>>(), ["host-a"]);
}

/// Reads one answer with a `Content-Length` off a connection left open.
fn read_answer(s: &mut TcpStream) -> std::io::Result<u16> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before an answer"));
        }
        bytes.extend_from_slice(&buf[..n]);
        let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if bytes.len() >= split + 4 + length {
            let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
            return status.ok_or_else(|| std::io::Error::other(head.clone()));
        }
    }
}

/// `clients` connections opened at once to `addr`, each asking
/// `GET /v1/locks` and left open until all have their answer (as a
/// client's pool keeps them); panics naming the failures unless every
/// one got 200 within 20 s.
fn keep_alive_burst(addr: SocketAddr, clients: usize) {
    let start = Arc::new(std::sync::Barrier::new(clients));
    let done = Arc::new(std::sync::Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                let answer = TcpStream::connect(addr).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(20)))?;
                    write!(s, "GET /v1/locks HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
                    let status = read_answer(&mut s)?;
                    Ok((s, status))
                });
                let took = t.elapsed();
                // The connection (in `answer`) stays open until here.
                done.wait();
                let answer = answer.map(|(_, status)| status);
                (answer.map_err(|e| e.to_string()), took)
            })
        })
        .collect();
    done.wait();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!("{clients} keep-alive connections, slowest answer {slowest:?}");
    // Failures by what went wrong: how many, and after how long.
    let mut failed = std::collections::BTreeMap::new();
    for (r, t) in results.iter().filter(|(r, _)| r != &Ok(200)) {
        let e = failed.entry(format!("{r:?}")).or_insert((0, *t));
        e.0 += 1;
        e.1 = e.1.max(*t);
    }
    assert!(failed.is_empty(), "of {clients}, unanswered: {failed:?}");
}

/// A fleet keeps a connection open per host. 400 opened at once, each
/// left open after its answer, all get one within the read timeout
/// (tiny_http, the server's HTTP before, left 54–77 of them unanswered:
/// its pool queued their tasks behind connections that never closed).
#[test]
fn open_keep_alive_connections_do_not_starve_new_ones() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let (srv, addr) = server(&cluster, &[("workers", 3)]);
    keep_alive_burst(addr, 400);
    srv.shutdown();
}

/// The binary started with a soft limit of 256 open files (the usual
/// default is 1,024, under a large fleet) raises it to the hard limit,
/// and then holds 400 connections.
#[test]
fn the_binary_raises_its_open_file_limit_for_a_connection_per_host() {
    let Some(etcd) = etcd_or_skip() else { return };
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok())
        .unwrap_or(0);
    if hard < 1024 {
        eprintln!("skipped: the hard RLIMIT_NOFILE is {hard}");
        return;
    }
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &cluster.endpoints(),
        "[[lock.groups]]\nname = \"default\"\nslots = 1\n",
    );
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=256:", "--"])
        .arg(env!("CARGO_BIN_EXE_berth-fleetlock"));
    let replica = Replica::spawn(cmd, &file, free_port(), |a| a.status == 200);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", replica.child.id())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3));
    assert_eq!(soft, Some(hard.to_string().as_str()), "{limits}");
    keep_alive_burst(replica.addr, 400);
}

/// Requests no FleetLock client sends, as an attacker would: chunked
/// bodies (honoured, and bounded like any other), a head too large,
/// a request line that is not HTTP.
#[test]
fn odd_and_hostile_requests_get_clear_answers() {
    let Some(etcd) = etcd_or_skip() else { return };
    let cluster = EtcdCluster::start(&etcd, 1).unwrap();
    let (srv, addr) = server(&cluster, &[("default", 1)]);
    let c = cluster.client();
    let head = |extra: &str| {
        format!(
            "POST /v1/pre-reboot HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             fleet-lock-protocol: true\r\ncontent-type: application/json\r\n{extra}\r\n"
        )
    };
    let chunked = |body: &[u8]| {
        let mut out = Vec::new();
        for piece in body.chunks(1000) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };

    let a = raw(
        addr,
        &head("transfer-encoding: chunked\r\n"),
        &chunked(&body("a", "default")),
    )
    .unwrap();
    assert_eq!((a.status, a.body.len()), (200, 0), "{a:?}");
    assert_eq!(holder_ids(&c, "default"), ["a"]);

    let big = vec![b' '; 65 * 1024];
    let a = raw(
        addr,
        &head("transfer-encoding: chunked\r\n"),
        &chunked(&big),
    )
    .unwrap();
    assert_eq!((a.status, a.kind().as_str()), (413, "bad_request"));
    // A length over the limit is refused before any of it is read.
    let a = raw(addr, &head("content-length: 999999999\r\n"), b"").unwrap();
    assert_eq!((a.status, a.kind().as_str()), (413, "bad_request"));

    let b = body("b", "default");
    let huge = format!(
        "content-length: {}\r\nx-padding: {}\r\n",
        b.len(),
        "a".repeat(20 * 1024)
    );
    let a = raw(addr, &head(&huge), &b).unwrap();
    assert_eq!(a.status, 431, "{a:?}");

    let a = raw(addr, "HELLO\r\n\r\n", b"").unwrap();
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(holder_ids(&c, "default"), ["a"], "nothing else was granted");
    srv.shutdown();
}
