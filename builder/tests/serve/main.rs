//! `berth serve` under hostile clients: the real binary in a child
//! process, raw sockets on the loopback. What it must keep doing while
//! some clients misbehave is answer the others, quickly, in bounded
//! memory, and only with files of the repository.

mod harness;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::{
    CONFIG, Server, closed_within, connect, get, raise_nofile_limit, read_reply, repo, send,
    wait_until,
};

const MIB: u64 = 1024 * 1024;

/// Idle connections held open in the load test (the number).
const IDLE: usize = 2000;

/// The bound on the server's peak resident memory (VmHWM) in the load
/// test. Measured: 41 MiB, of which 15 MiB is the idle server (the binary
/// and its libraries) and ~13 KiB each idle connection (hyper's read and
/// write buffers, the task, its timers). 64 MiB leaves room for another
/// allocator's habits and stays well below the 100 MiB that buffering
/// the header line would take.
const RSS_BOUND_KIB: u64 = 64 * 1024;

#[test]
fn holds_2000_idle_connections_and_a_100_mb_header_and_still_answers_in_a_second() {
    let nofile = raise_nofile_limit();
    assert!(
        nofile >= IDLE as u64 + 300,
        "this test needs {} file descriptors, the hard RLIMIT_NOFILE is {nofile}",
        IDLE + 300
    );
    let repo = repo();
    // The head timeout is long so that nothing is closed for idleness
    // while the test runs on a busy machine (the timeout has its own test).
    let server = Server::start(repo.path(), &["--header-timeout", "600"]);
    let addr = server.addr;

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i} of {IDLE}: {e}\n{}", server.log()))
        })
        .collect();
    // Accepted and held by the server, not just queued by the kernel.
    assert!(
        wait_until(Duration::from_secs(60), || server.sockets() > IDLE),
        "the server holds {} of {IDLE} connections\n{}",
        server.sockets().saturating_sub(1),
        server.log()
    );

    let sent = Arc::new(AtomicU64::new(0));
    let header = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            let mut stream = connect(addr, Duration::from_secs(60));
            stream
                .write_all(b"GET /config HTTP/1.1\r\nHost: test\r\nX-Filler: ")
                .unwrap();
            let chunk = vec![b'a'; MIB as usize];
            for _ in 0..100 {
                if let Err(e) = stream.write_all(&chunk) {
                    return Some(e);
                }
                sent.fetch_add(MIB, Ordering::Relaxed);
            }
            None
        })
    };
    // The line is on its way (or already cut off by the server).
    assert!(wait_until(Duration::from_secs(60), || {
        sent.load(Ordering::Relaxed) >= MIB || header.is_finished()
    }));

    // Only the fresh request is timed: the bound holds on a loaded machine.
    let started = Instant::now();
    let reply = get(addr, "/config");
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, CONFIG.as_bytes());
    assert!(
        took < Duration::from_secs(1),
        "a fresh GET /config took {took:?}"
    );

    let error = header.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        error.is_some() && sent < 100 * MIB,
        "the server read all of a 100 MB header line (the client sent {sent} bytes)"
    );
    let peak = server.status("VmHWM");
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB, the bound is {RSS_BOUND_KIB} KiB"
    );
    let threads = server.status("Threads");
    // At most 4 runtime threads, 16 file readers and the main thread.
    assert!(threads <= 21, "{threads} threads for {IDLE} connections");
    // The idle connections are still open: the server answered while
    // holding them, rather than by dropping them.
    for mut stream in idle {
        stream.set_nonblocking(true).unwrap();
        let read = stream.read(&mut [0]);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle connection was closed: {read:?}"
        );
    }
    eprintln!(
        "fresh GET {took:?}, peak RSS {peak} KiB, {threads} threads, header client cut off after {} MiB",
        sent / MIB
    );
}

#[test]
fn refuses_parent_paths_encoded_escapes_and_every_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(repo.join("objects/ab")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(repo.join("config"), CONFIG).unwrap();
    std::fs::write(repo.join("objects/ab/cd.filez"), "object").unwrap();
    std::fs::write(outside.join("secret"), "SECRET").unwrap();
    symlink(outside.join("secret"), repo.join("out-file")).unwrap();
    symlink(&outside, repo.join("out-dir")).unwrap();
    symlink("/etc/shadow", repo.join("shadow")).unwrap();
    symlink("config", repo.join("in-file")).unwrap();
    symlink("objects", repo.join("in-dir")).unwrap();
    symlink("../../outside/secret", repo.join("objects/ab/up")).unwrap();
    let server = Server::start(&repo, &[]);
    let addr = server.addr;

    assert_eq!(get(addr, "/objects/ab/cd.filez").body, b"object");
    let refused = [
        ("/out-file", 403),
        ("/out-dir/secret", 403),
        ("/shadow", 403),
        ("/in-file", 403),
        ("/in-dir/ab/cd.filez", 403),
        ("/objects/ab/up", 403),
        ("/../outside/secret", 403),
        ("/objects/../../outside/secret", 403),
        ("/%2e%2e/outside/secret", 403),
        ("/%2E%2E/outside/secret", 403),
        ("/objects/%2e%2e%2f%2e%2e%2foutside%2fsecret", 403),
        // An absolute path names a file under the repository, and
        // there is none.
        ("//etc/passwd", 404),
        ("/etc/passwd", 404),
        (&format!("/{}", outside.join("secret").display()), 404),
        // The absolute form of a request target is its path too.
        ("http://test/../outside/secret", 403),
        ("/objects", 404),
        ("/", 404),
    ];
    for (target, status) in refused {
        let reply = get(addr, target);
        assert_eq!(reply.status, status, "GET {target}: {reply:?}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(
            !body.contains("SECRET") && !body.contains("root:"),
            "GET {target} served {body}"
        );
    }
    let star = send(
        addr,
        b"GET * HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(star.status, 400);
}

#[test]
fn a_client_that_stops_reading_does_not_hold_others_or_its_slot() {
    let repo = repo();
    let big = repo.path().join("objects/big");
    let size = 256 * MIB;
    std::fs::File::create(&big).unwrap().set_len(size).unwrap();
    let server = Server::start(repo.path(), &["--send-timeout", "2"]);
    let addr = server.addr;

    let mut stalled = connect(server.addr, Duration::from_secs(10));
    stalled
        .write_all(b"GET /objects/big HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut first = [0; 16];
    stalled.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    // It reads nothing more: the server's writes to it stall as soon as
    // the socket buffers are full. Others are answered meanwhile.
    for _ in 0..5 {
        let started = Instant::now();
        let reply = get(addr, "/config");
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // And the stalled connection is dropped after the send timeout.
    let port = stalled.local_addr().unwrap().port();
    let line = server.wait_for_log(&format!(":{port}: "), Duration::from_secs(60));
    assert!(
        line.as_deref().is_some_and(|l| l.contains("timed out")),
        "no send timeout for the stalled client: {line:?}\n{}",
        server.log()
    );
    let mut received = 16;
    let mut buf = vec![0; 1 << 20];
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while let Ok(n @ 1..) = stalled.read(&mut buf) {
        received += n as u64;
    }
    assert!(received < size, "all of it arrived after the timeout");
}

#[test]
fn slow_and_idle_heads_are_cut_at_the_header_timeout() {
    let repo = repo();
    let server = Server::start(repo.path(), &["--header-timeout", "2"]);
    let addr = server.addr;
    let started = Instant::now();
    // Sends nothing.
    let mut silent = connect(addr, Duration::from_secs(10));
    // Sends a head one byte at a time, never finishing it.
    let slow = std::thread::spawn(move || {
        let mut stream = connect(addr, Duration::from_secs(10));
        stream.write_all(b"GET /config HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if stream.write_all(b"X").is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    });
    // Asks once and keeps the connection open.
    let mut kept = connect(addr, Duration::from_secs(10));
    kept.write_all(b"GET /config HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    assert_eq!(read_reply(&mut reader, false).unwrap().status, 200);

    assert!(closed_within(&mut silent, Duration::from_secs(30)));
    assert!(closed_within(&mut kept, Duration::from_secs(30)));
    let cut = slow.join().unwrap();
    assert!(cut.is_some(), "a head trickling in was never cut off");
    // Not before the timeout: the limit is the one asked for.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(server.log().contains("read header from client timeout"));
}

#[test]
fn connections_past_the_limit_wait_in_the_listen_queue() {
    let repo = repo();
    let server = Server::start(repo.path(), &["--max-connections", "4"]);
    let addr = server.addr;
    let mut idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(30), || server.sockets() == 5));
    let mut waiting = connect(addr, Duration::from_secs(30));
    waiting
        .write_all(b"GET /config HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Not accepted while the four hold their slots...
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        waiting.read(&mut [0]).is_err(),
        "a fifth connection was served"
    );
    assert_eq!(server.sockets(), 5);
    // ...and served as soon as one leaves.
    idle.pop();
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reply = read_reply(&mut BufReader::new(waiting), false).unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn speaks_plain_http_1_1() {
    let repo = repo();
    let server = Server::start(repo.path(), &[]);
    let addr = server.addr;

    // Keep-alive and pipelining: two requests on one connection.
    let mut stream = connect(addr, Duration::from_secs(10));
    stream
        .write_all(
            b"GET /config HTTP/1.1\r\nHost: test\r\n\r\nHEAD /config HTTP/1.1\r\nHost: test\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let get = read_reply(&mut reader, false).unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.body, CONFIG.as_bytes());
    let head = read_reply(&mut reader, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(CONFIG.len().to_string().as_str())
    );

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let request = format!(
            "{method} /config HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let reply = send(addr, request.as_bytes()).unwrap();
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(
        send(addr, b"GET /missing HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap()
            .status,
        404
    );

    // A request body is not read: answered, then the connection closes.
    let mut stream = connect(addr, Duration::from_secs(10));
    stream
        .write_all(b"GET /config HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let reply = read_reply(&mut reader, false).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reader.read(&mut [0]).unwrap(), 0);

    // A complete head over 8 KiB: 431, and the connection is closed.
    let mut big = b"GET /config HTTP/1.1\r\nHost: test\r\nX-Filler: ".to_vec();
    big.resize(big.len() + 10 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let mut stream = connect(addr, Duration::from_secs(10));
    stream.write_all(&big).unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(read_reply(&mut reader, false).unwrap().status, 431);
    assert_eq!(reader.read(&mut [0]).unwrap(), 0);

    // The request log the upgrade tests read.
    let log = server.log();
    for line in [
        "berth: GET /config 200",
        "berth: HEAD /config 200",
        "berth: POST /config 405",
        "berth: GET /missing 404",
    ] {
        assert!(log.lines().any(|l| l == line), "no {line:?} in\n{log}");
    }
}

/// libostree's own fetcher (curl, HTTP/1.1 keep-alive, several requests
/// at once) pulls a commit and then a static delta through the server.
#[test]
fn ostree_pulls_a_commit_and_a_static_delta_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let ostree = |args: &[&str]| {
        let out = Command::new("ostree").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let path = |p: &str| dir.path().join(p).display().to_string();
    let (srv, client, tree) = (path("srv"), path("client"), path("tree"));
    ostree(&["init", "--repo", &srv, "--mode=archive"]);
    std::fs::create_dir_all(dir.path().join("tree/usr/bin")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.path().join("tree/usr/bin/big"), &big).unwrap();
    std::fs::write(dir.path().join("tree/usr/version"), "1").unwrap();
    let v1 = ostree(&["commit", "--repo", &srv, "--branch=test/x", &tree]);
    std::fs::write(dir.path().join("tree/usr/version"), "2").unwrap();
    let v2 = ostree(&["commit", "--repo", &srv, "--branch=test/x", &tree]);
    ostree(&[
        "static-delta",
        "generate",
        "--repo",
        &srv,
        "--from",
        &v1,
        "--to",
        &v2,
    ]);
    ostree(&["summary", "--repo", &srv, "-u"]);

    let server = Server::start(Path::new(&srv), &[]);
    let url = format!("http://{}", server.addr);
    // A client repository that can apply deltas (an archive one cannot).
    ostree(&["init", "--repo", &client, "--mode=bare-user-only"]);
    ostree(&[
        "remote",
        "add",
        "--repo",
        &client,
        "--no-gpg-verify",
        "origin",
        &url,
    ]);
    ostree(&["pull", "--repo", &client, "origin", &format!("test/x@{v1}")]);
    assert_eq!(
        ostree(&["cat", "--repo", &client, &v1, "/usr/version"]),
        "1"
    );
    ostree(&[
        "pull",
        "--repo",
        &client,
        "--require-static-deltas",
        "origin",
        "test/x",
    ]);
    assert_eq!(ostree(&["rev-parse", "--repo", &client, "test/x"]), v2);
    assert_eq!(
        ostree(&["cat", "--repo", &client, &v2, "/usr/version"]),
        "2"
    );
    ostree(&["fsck", "--repo", &client]);
    let log = server.log();
    for request in [
        "GET /config 200",
        "GET /summary 200",
        "GET /delta-indexes/",
        "/superblock 200",
    ] {
        assert!(log.contains(request), "no {request:?} in\n{log}");
    }
}
