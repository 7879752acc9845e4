//! Throwaway etcd servers for tests and benchmarks: Debian's `/usr/bin/etcd`
//! (package etcd-server) on loopback, with a temporary data directory and
//! free ports (never 2379, where the package's own daemon may listen), as
//! one member or as a cluster whose members can be stopped and restarted.
//!
//! A test that finds no etcd skips, unless `BERTH_REQUIRE_ETCD=1` or
//! `BERTH_REQUIRE_QEMU=1` (what the README's test command sets) is in the
//! environment: then it fails, so CI cannot pass without a real etcd.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_fleet::etcd::{Client, EtcdConfig};

/// The etcd binary: `$BERTH_ETCD`, else `/usr/bin/etcd`, if it exists.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("BERTH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    path.is_file().then_some(path)
}

/// Whether this test run must not skip for want of etcd.
fn required() -> bool {
    ["BERTH_REQUIRE_ETCD", "BERTH_REQUIRE_QEMU"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

/// The etcd binary, or `None` (with a note on stderr) when the test
/// should skip. Panics when etcd is missing but required.
pub fn etcd_or_skip() -> Option<PathBuf> {
    match etcd_binary() {
        Some(p) => Some(p),
        None if required() => {
            panic!(
                "no etcd at $BERTH_ETCD or /usr/bin/etcd: install Debian's etcd-server (scripts/install-deps)"
            )
        }
        None => {
            eprintln!("skipped: no etcd (install Debian's etcd-server)");
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process
/// could take it in between, which the fixture's start timeout reports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster of one or more members on loopback. Dropping it
/// kills every member and removes the data.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers writes.
    pub fn start(binary: &std::path::Path, size: usize) -> std::io::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("berth-etcd-").tempdir()?;
        let token = format!(
            "berth-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let members = (1..=size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            dir,
            token,
            members,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_writable(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, index: usize) -> std::io::Result<()> {
        let initial = self.initial_cluster();
        let Some(m) = self.members.get(index) else {
            return Err(std::io::Error::other("no such member"));
        };
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        if let Some(m) = self.members.get_mut(index) {
            m.child = Some(child);
        }
        Ok(())
    }

    fn wait_writable(&self, limit: Duration) -> std::io::Result<()> {
        let client = self.client();
        let start = Instant::now();
        loop {
            if client.put(b"/berth-fixture/ready", b"1", 0).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(std::io::Error::other(format!(
                    "etcd did not accept writes within {limit:?} (logs in {})",
                    self.dir.path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's client URL, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A client configuration naming every member.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::with_endpoints(self.endpoints())
    }

    /// A client for every member.
    pub fn client(&self) -> Client {
        Client::new(&self.config()).unwrap_or_else(|e| panic!("etcd client: {e}"))
    }

    /// Kills member `index` (0-based), keeping its data.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.members.get_mut(index).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data (it rejoins the cluster).
    pub fn restart(&mut self, index: usize) -> std::io::Result<()> {
        self.stop(index);
        self.spawn(index)
    }

    /// Waits until the cluster accepts writes again (after a restart).
    pub fn wait_ready(&self) -> std::io::Result<()> {
        self.wait_writable(Duration::from_secs(30))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}
