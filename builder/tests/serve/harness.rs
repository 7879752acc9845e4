//! The real `berth serve` binary in a child process, a raw HTTP/1.1
//! client that sends exactly the bytes a test gives it (no client
//! library normalises `..` or encodes for us), and what /proc says about
//! the server.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test repository's `config`.
pub const CONFIG: &str = "[core]\nrepo_version=1\nmode=archive-z2\n";

/// A minimal repository: what `berth serve` checks for.
pub fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config"), CONFIG).unwrap();
    std::fs::create_dir(dir.path().join("objects")).unwrap();
    dir
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (the test
/// side holds thousands of sockets too) and returns it.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).unwrap();
    limit.maximum.unwrap_or(u64::MAX)
}

/// The `berth` binary: `BERTH_BIN` when set (as for the QEMU tests),
/// else the one cargo built for this test.
pub fn berth_bin() -> std::ffi::OsString {
    std::env::var_os("BERTH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_berth").into())
}

/// A running `berth serve`; killed on drop.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `berth serve REPO --port 0 ARGS...` with the soft
    /// RLIMIT_NOFILE at the usual 1024, so that a server which does not
    /// raise its own limit shows it.
    pub fn start(repo: &Path, args: &[&str]) -> Server {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -S -n 1024 && exec "$@""#)
            .arg("sh")
            .arg(berth_bin())
            .arg("serve")
            .arg(repo)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        // Drained all along: a server blocked on a full stderr pipe
        // would look like a server that stopped answering.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("on http://").nth(1) {
                    let _ = tx.send(addr.to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    /// Everything it wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A number from /proc/PID/status (`VmHWM`, `Threads`: kB or a count).
    pub fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// How many sockets it has open (the listener included).
    pub fn sockets(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passed.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Connects to `addr` with `timeout` on reads and writes.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream
}

/// Reads one response from `reader`; `head_request` says whether it
/// answers a HEAD (a Content-Length but no body).
pub fn read_reply(reader: &mut impl BufRead, head_request: bool) -> io::Result<Reply> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in the head: {head:?}"),
            ));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not a status line: {head:?}")))?;
    let mut reply = Reply {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = match reply.header("content-length") {
        Some(len) => len.parse().map_err(io::Error::other)?,
        None => return Err(io::Error::other("no Content-Length")),
    };
    if !head_request {
        reply.body.resize(len, 0);
        reader.read_exact(&mut reply.body)?;
    }
    Ok(reply)
}

/// Sends `request` (raw bytes, a complete request) on a new connection
/// and reads the one response.
pub fn send(addr: SocketAddr, request: &[u8]) -> io::Result<Reply> {
    let mut stream = connect(addr, Duration::from_secs(10));
    stream.write_all(request)?;
    read_reply(&mut BufReader::new(stream), request.starts_with(b"HEAD "))
}

/// `GET target` on a new connection, closed after the response.
pub fn get(addr: SocketAddr, target: &str) -> Reply {
    let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    send(addr, request.as_bytes()).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// Whether the server closed `stream` (EOF or reset) within `timeout`;
/// bytes that arrive first are read and dropped.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
