//! A minimal HTTP/1.0 GET over a plain TCP stream, for tests that check a
//! page served by a guest (through QEMU port forwarding) or probe the local
//! registry: no client library, no redirects, no keep-alive.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::wait::{Check, Deadline, wait_until};

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (`200`).
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

/// `GET path` from 127.0.0.1:`port`, each step within `timeout`.
pub fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let bad = || std::io::Error::other(format!("not an HTTP response: {text:?}"));
    // Servers end the head with CRLF CRLF; CGI scripts often write LF LF.
    let (head, body) = match (text.find("\r\n\r\n"), text.find("\n\n")) {
        (Some(crlf), Some(lf)) if lf < crlf => (&text[..lf], &text[lf + 2..]),
        (Some(crlf), _) => (&text[..crlf], &text[crlf + 4..]),
        (None, Some(lf)) => (&text[..lf], &text[lf + 2..]),
        (None, None) => return Err(bad()),
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Retries [`get`] every 500 ms until it gives status `want`; fails with
/// the last response or error seen once `until` passes.
pub fn get_until(
    port: u16,
    path: &str,
    want: u16,
    until: impl Into<Deadline>,
) -> crate::Result<Response> {
    wait_until(
        until,
        Duration::from_millis(500),
        &format!("status {want} from GET {path} on 127.0.0.1:{port}"),
        || match get(port, path, Duration::from_secs(10)) {
            Ok(r) if r.status == want => Ok(Check::Done(r)),
            Ok(r) => Ok(Check::NotYet(format!("status {}: {:?}", r.status, r.body))),
            Err(e) => Ok(Check::NotYet(e.to_string())),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.0 404 Not Found\r\nContent-Type: text/html\r\n\r\nnope\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "nope\n"));
        let cgi = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\n\na=1\n").unwrap();
        assert_eq!((cgi.status, cgi.body.as_str()), (200, "a=1\n"));
        assert!(parse(b"garbage").is_err());
    }
}
