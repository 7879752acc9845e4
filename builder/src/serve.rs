//! `berth serve REPO`: serves an OSTree archive repository over HTTP so
//! hosts can `berthctl upgrade` from it.
//!
//! An archive repository is plain static files, so any web server works
//! (nginx, `python3 -m http.server`); this one exists so that the build
//! machine needs nothing else. It answers GET and HEAD for files under the
//! repository, a thread per connection, and nothing more. Written by hand
//! because an HTTP framework would be most of the binary for ~100 lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::error::InputError;

/// Options of `berth serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOpts {
    /// The OSTree archive repository (e.g. out/repo).
    pub repo: PathBuf,
    /// TCP port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Do not log requests.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `berth serve` until killed.
pub fn run(opts: &ServeOpts) -> anyhow::Result<()> {
    if !opts.repo.join("config").is_file() || !opts.repo.join("objects").is_dir() {
        return Err(InputError(format!(
            "{} is not an OSTree repository",
            opts.repo.display()
        ))
        .into());
    }
    let listener = TcpListener::bind((opts.bind.as_str(), opts.port))
        .with_context(|| format!("listening on {}:{}", opts.bind, opts.port))?;
    eprintln!(
        "berth: serving {} on http://{}",
        opts.repo.display(),
        listener.local_addr()?
    );
    serve(listener, opts.repo.clone(), !opts.quiet)
}

/// Serves `root` on `listener` forever.
pub fn serve(listener: TcpListener, root: PathBuf, log: bool) -> anyhow::Result<()> {
    let root = Arc::new(root);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let root = Arc::clone(&root);
        std::thread::spawn(move || {
            let _ = handle(stream, &root, log);
        });
    }
    Ok(())
}

/// Maps a request path to a file under `root`; `None` for anything that
/// tries to leave it.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next()?;
    let mut out = root.to_path_buf();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn handle(stream: TcpStream, root: &Path, log: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        // Skip the headers; keep-alive unless the client says close.
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("connection:")
                && h.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let mut parts = request.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let file = resolve(root, target).filter(|p| p.is_file());
        let status = match (method, &file) {
            ("GET" | "HEAD", Some(path)) => {
                let mut f = std::fs::File::open(path)?;
                let len = f.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
                )?;
                if method == "GET" {
                    std::io::copy(&mut (&mut f).take(len), &mut out)?;
                }
                200
            }
            ("GET" | "HEAD", None) => {
                out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
                404
            }
            _ => {
                out.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
                close = true;
                405
            }
        };
        out.flush()?;
        if log {
            eprintln!("berth: {method} {target} {status}");
        }
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_repo() {
        let root = Path::new("/srv/repo");
        assert_eq!(
            resolve(root, "/config"),
            Some(PathBuf::from("/srv/repo/config"))
        );
        assert_eq!(
            resolve(root, "/objects/ab/cd.filez?x=1"),
            Some(PathBuf::from("/srv/repo/objects/ab/cd.filez"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/objects/../../x"), None);
    }

    #[test]
    fn serves_files_and_404s_over_tcp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config"), "[core]\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || serve(listener, root, false));
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        };
        let ok = get("/config");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\n[core]\n"));
        assert!(get("/missing").starts_with("HTTP/1.1 404"));
        assert!(get("/../../etc/passwd").starts_with("HTTP/1.1 404"));
    }
}
