//! QEMU's machine protocol (QMP), just enough to send one command: tests
//! use it for what an operator does from outside the guest, such as
//! pressing the ACPI power button.

use std::io::{BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{Error, Result};

/// The QMP socket's name in a VM's directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// Connects to the QMP socket at `socket`, leaves capabilities
/// negotiation and runs `command` (no arguments); an `error` reply is an
/// error.
pub fn execute(socket: &Path, command: &str) -> Result<()> {
    Qmp::connect(socket)?.execute(command, None).map(|_| ())
}

/// One QMP session, for a sequence of commands with arguments.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to the socket at `socket` and leaves capabilities
    /// negotiation.
    pub fn connect(socket: &Path) -> Result<Qmp> {
        let stream =
            UnixStream::connect(socket).map_err(Error::io("connecting to QEMU's QMP socket"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(Error::io("setting the QMP timeout"))?;
        let writer = stream
            .try_clone()
            .map_err(Error::io("cloning the QMP socket"))?;
        let mut qmp = Qmp {
            writer,
            reader: BufReader::new(stream),
        };
        read_reply(&mut qmp.reader, None)?; // the greeting
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        writeln!(self.writer, "{msg}").map_err(Error::io("writing a QMP command"))?;
        read_reply(&mut self.reader, Some(command))
    }
}

/// Reads QMP lines until the greeting (`command` None) or the reply to
/// `command`, skipping asynchronous events; returns the reply's `return`.
fn read_reply(
    reader: &mut impl std::io::BufRead,
    command: Option<&str>,
) -> Result<serde_json::Value> {
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(Error::io("reading from QMP"))?
            == 0
        {
            return Err(Error::Setup("QMP: QEMU closed the socket".into()));
        }
        let reply: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| Error::Setup(format!("QMP: {e}: {line:?}")))?;
        match command {
            None if reply.get("QMP").is_some() => return Ok(reply),
            Some(cmd) if reply.get("error").is_some() => {
                return Err(Error::Setup(format!("QMP {cmd}: {}", reply["error"])));
            }
            Some(_) if reply.get("return").is_some() => return Ok(reply["return"].clone()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_skip_events_and_report_errors() {
        let ok = b"{\"event\": \"POWERDOWN\"}\n{\"return\": {}}\n";
        read_reply(&mut &ok[..], Some("system_powerdown")).unwrap();
        let err = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n";
        let e = read_reply(&mut &err[..], Some("x")).unwrap_err();
        assert!(e.to_string().contains("GenericError"), "{e}");
        let greeting = b"{\"QMP\": {\"version\": {}}}\n";
        read_reply(&mut &greeting[..], None).unwrap();
        assert!(read_reply(&mut &b""[..], None).is_err());
    }
}
