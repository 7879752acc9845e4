//! The control socket (/run/berth/init.sock): accepts connections, reads one
//! JSON request line from each, queues the JSON response lines, and keeps
//! `follow` clients for new log lines. Everything is non-blocking; the
//! supervisor's poll loop drives it.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_hostapi::control::{Request, Response};

/// A client that sends no request line within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request line longer than this is refused.
const MAX_REQUEST: usize = 64 * 1024;
/// A client that does not read its answers beyond this is dropped.
const MAX_PENDING: usize = 4 << 20;
/// At most this many connections at once.
const MAX_CLIENTS: usize = 64;

#[derive(Debug)]
struct Client {
    id: u64,
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// The request was read (later input is ignored).
    answered: bool,
    /// The peer closed its side.
    eof: bool,
    /// Sends new lines of this service's log.
    follow: Option<String>,
    deadline: Instant,
    dead: bool,
}

/// Bytes read from an answered client per wake-up: it may only send its
/// end of stream (or follow's hang-up); the rest is ignored.
const MAX_AFTER_ANSWER: usize = 4096;

/// Reads what client `c` sent, at most its request limit per wake-up (a
/// client that streams without end cannot keep PID 1 in this loop): up to
/// one byte past [`MAX_REQUEST`] before its request, [`MAX_AFTER_ANSWER`]
/// after it.
fn read_some(c: &mut Client) {
    let mut budget = if c.answered {
        MAX_AFTER_ANSWER
    } else {
        (MAX_REQUEST + 1).saturating_sub(c.inbuf.len())
    };
    let mut buf = [0u8; 4096];
    while budget > 0 {
        let want = budget.min(buf.len());
        match c.stream.read(buf.get_mut(..want).unwrap_or_default()) {
            Ok(0) => {
                c.eof = true;
                return;
            }
            Ok(n) => {
                budget = budget.saturating_sub(n);
                if !c.answered {
                    c.inbuf.extend_from_slice(buf.get(..n).unwrap_or_default());
                    // One request per connection: stop at its end.
                    if buf.get(..n).is_some_and(|b| b.contains(&b'\n')) {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                c.dead = true;
                return;
            }
        }
    }
}

/// The listening socket and its clients.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    next_id: u64,
}

/// A request from client `client`, or why its line was not one.
pub type Incoming = (u64, Result<Request, String>);

impl ControlServer {
    /// Listens on `path` (mode 0600), replacing a stale socket.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
            next_id: 1,
        })
    }

    /// Descriptors to poll: (fd, wants input, wants output).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool, bool)> {
        let mut out = vec![(self.listener.as_fd(), true, false)];
        for c in &self.clients {
            let wants_in = !c.eof && (!c.answered || c.follow.is_some());
            out.push((c.stream.as_fd(), wants_in, !c.outbuf.is_empty()));
        }
        out
    }

    /// Accepts new clients and reads from all of them; returns complete
    /// requests.
    pub fn poll_requests(&mut self, now: Instant) -> Vec<Incoming> {
        // Bounded too: a flood of connections waits for the next turn.
        for _ in 0..MAX_CLIENTS {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.clients.push(Client {
                id: self.next_id,
                stream,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                answered: false,
                eof: false,
                follow: None,
                deadline: now + REQUEST_TIMEOUT,
                dead: false,
            });
            self.next_id += 1;
        }
        let mut out = Vec::new();
        for c in &mut self.clients {
            if c.eof || c.dead {
                continue;
            }
            read_some(c);
            if c.answered {
                continue;
            }
            if let Some(pos) = c.inbuf.iter().position(|&b| b == b'\n') {
                let line =
                    String::from_utf8_lossy(c.inbuf.get(..pos).unwrap_or_default()).into_owned();
                c.answered = true;
                out.push((
                    c.id,
                    serde_json::from_str::<Request>(line.trim())
                        .map_err(|e| format!("bad request: {e}")),
                ));
            } else if c.inbuf.len() > MAX_REQUEST {
                c.answered = true;
                out.push((c.id, Err("request line too long".into())));
            } else if c.eof && !c.inbuf.is_empty() {
                // A last line without newline still counts.
                let line = String::from_utf8_lossy(&c.inbuf).into_owned();
                c.answered = true;
                out.push((
                    c.id,
                    serde_json::from_str::<Request>(line.trim())
                        .map_err(|e| format!("bad request: {e}")),
                ));
            }
        }
        for c in &mut self.clients {
            // A follower that hangs up is done; a client that hangs up
            // without a request never sends one.
            if c.eof && (!c.answered || c.follow.is_some()) {
                c.dead = true;
            }
        }
        self.clients
            .retain(|c| !c.dead && (c.answered || now < c.deadline));
        out
    }

    /// Queues `responses` for client `id`; with `follow`, the connection
    /// stays open for new lines of that service's log, else it closes once
    /// written.
    pub fn respond(&mut self, id: u64, responses: &[Response], follow: Option<String>) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            for r in responses {
                c.outbuf.extend_from_slice(r.to_line().as_bytes());
            }
            c.follow = follow;
        }
        self.flush();
    }

    /// Sends a new log line of `service` to its followers.
    pub fn broadcast(&mut self, service: &str, line: &str) {
        let mut any = false;
        for c in &mut self.clients {
            if c.follow.as_deref() == Some(service) {
                let text = Response::LogLine {
                    line: line.to_string(),
                }
                .to_line();
                c.outbuf.extend_from_slice(text.as_bytes());
                any = true;
            }
        }
        if any {
            self.flush();
        }
    }

    /// Writes what can be written; closes finished and failed clients.
    pub fn flush(&mut self) {
        for c in &mut self.clients {
            while !c.outbuf.is_empty() && !c.dead {
                match c.stream.write(&c.outbuf) {
                    Ok(0) => c.dead = true,
                    Ok(n) => {
                        c.outbuf.drain(..n.min(c.outbuf.len()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => c.dead = true,
                }
            }
            if c.outbuf.len() > MAX_PENDING {
                c.dead = true;
            }
            if c.answered && c.outbuf.is_empty() && c.follow.is_none() {
                c.dead = true;
            }
        }
        self.clients.retain(|c| !c.dead);
    }

    /// Writes pending answers, waiting up to `timeout` (before exiting).
    pub fn flush_blocking(&mut self, timeout: Duration) {
        let deadline = crate::sys::clock::from_now(timeout);
        while self.clients.iter().any(|c| !c.outbuf.is_empty()) && Instant::now() < deadline {
            self.flush();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The earliest request deadline of a silent client.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .filter(|c| !c.answered)
            .map(|c| c.deadline)
            .min()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the socket's buffers from the client side without blocking;
    /// returns how many bytes were sent.
    fn stuff(client: &mut UnixStream, byte: u8) -> io::Result<usize> {
        client.set_nonblocking(true)?;
        let chunk = [byte; 4096];
        let mut sent = 0;
        loop {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn reads_at_most_the_request_limit_per_wake_up() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("init.sock");
        let mut server = ControlServer::bind(&path)?;
        let mut client = UnixStream::connect(&path)?;
        let sent = stuff(&mut client, b'x')?;
        assert!(sent > 2 * MAX_REQUEST, "only {sent} bytes fit the socket");
        let got = server.poll_requests(Instant::now());
        assert_eq!(got.len(), 1);
        assert!(
            matches!(got.first(), Some((_, Err(m))) if m == "request line too long"),
            "{got:?}"
        );
        let read: usize = server.clients.iter().map(|c| c.inbuf.len()).sum();
        assert!(
            read <= MAX_REQUEST + 1,
            "read {read} of {sent} bytes in one wake-up"
        );
        // Once answered, what it keeps sending is read a little at a time.
        let before = client.take_error();
        assert!(before.is_ok());
        server.poll_requests(Instant::now());
        assert!(
            server
                .clients
                .iter()
                .all(|c| c.inbuf.len() <= MAX_REQUEST + 1)
        );
        Ok(())
    }

    #[test]
    fn a_request_line_is_answered_and_the_rest_ignored() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("init.sock");
        let mut server = ControlServer::bind(&path)?;
        let mut client = UnixStream::connect(&path)?;
        client.write_all(b"{\"op\":\"services\"}\n")?;
        stuff(&mut client, b'y')?;
        let got = server.poll_requests(Instant::now());
        assert!(
            matches!(got.as_slice(), [(_, Ok(Request::Services))]),
            "{got:?}"
        );
        Ok(())
    }
}
