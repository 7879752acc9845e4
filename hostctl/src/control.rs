//! The client side of berth-init's control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth_hostapi::control::{Request, Response, ServiceStatus};

/// Sends `req` and returns a reader over the response lines.
fn send(
    socket: &Path,
    req: &Request,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Response>>> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to berth-init at {} (is this a Berth host?)",
            socket.display()
        )
    })?;
    stream
        .write_all(req.to_line().as_bytes())
        .context("sending the request to berth-init")?;
    Ok(BufReader::new(stream).lines().map(|line| {
        let line = line.context("reading berth-init's answer")?;
        serde_json::from_str::<Response>(&line)
            .with_context(|| format!("berth-init answered something unexpected: {line}"))
    }))
}

/// A request answered by one `ok` or `error`.
pub fn simple(socket: &Path, req: &Request) -> anyhow::Result<ExitCode> {
    match send(socket, req)?.next() {
        Some(Ok(Response::Ok)) => Ok(ExitCode::SUCCESS),
        Some(Ok(Response::Error { message })) => bail!("{message}"),
        Some(Ok(other)) => bail!("unexpected answer from berth-init: {other:?}"),
        Some(Err(e)) => Err(e),
        None => bail!("berth-init closed the connection without answering"),
    }
}

/// The state of every service, as berth-init reports it.
pub fn service_states(socket: &Path) -> anyhow::Result<Vec<ServiceStatus>> {
    match send(socket, &Request::Services)?.next() {
        Some(Ok(Response::Services { services })) => Ok(services),
        Some(Ok(Response::Error { message })) => bail!("{message}"),
        Some(Ok(other)) => bail!("unexpected answer from berth-init: {other:?}"),
        Some(Err(e)) => Err(e),
        None => bail!("berth-init closed the connection without answering"),
    }
}

/// `berthctl services`.
pub fn services(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let services = service_states(socket)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&services)?);
    } else {
        print!("{}", table(&services));
    }
    Ok(ExitCode::SUCCESS)
}

/// The services as an aligned text table.
pub(crate) fn table(services: &[ServiceStatus]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "KIND".into(),
        "STATE".into(),
        "PID".into(),
        "RESTARTS".into(),
        "UPTIME".into(),
        "LAST EXIT".into(),
    ]];
    for s in services {
        rows.push([
            s.name.clone(),
            s.kind.clone(),
            s.state.clone(),
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.restarts.to_string(),
            s.uptime_secs.map_or("-".into(), |u| format!("{u}s")),
            s.last_exit.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    berth_fleet::view::table(&rows)
}

/// `berthctl logs NAME [--follow]`.
pub fn logs(socket: &Path, name: &str, lines: usize, follow: bool) -> anyhow::Result<ExitCode> {
    let req = Request::Logs {
        name: name.to_string(),
        lines,
        follow,
    };
    let stdout = std::io::stdout();
    for resp in send(socket, &req)? {
        match resp? {
            Response::LogLine { line } => {
                let mut out = stdout.lock();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Response::Ok => break,
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from berth-init: {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[ServiceStatus {
            name: "web".into(),
            kind: "container".into(),
            state: "ready".into(),
            pid: Some(42),
            restarts: 1,
            last_exit: Some("exit 1".into()),
            uptime_secs: Some(7),
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME  KIND       STATE  PID  RESTARTS"));
        assert!(lines[1].starts_with("web   container  ready  42   1"));
        assert!(lines[1].ends_with("exit 1"));
    }

    #[test]
    fn simple_request_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let req: Request = serde_json::from_str(line.trim()).unwrap();
            let resp = match req {
                Request::Restart { name } if name == "ghost" => Response::Error {
                    message: "no service named ghost".into(),
                },
                _ => Response::Ok,
            };
            (&stream).write_all(resp.to_line().as_bytes()).unwrap();
        });
        let err = simple(
            &path,
            &Request::Restart {
                name: "ghost".into(),
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no service named ghost");
        server.join().unwrap();
    }
}
