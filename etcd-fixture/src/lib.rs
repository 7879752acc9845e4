//! Throwaway etcd servers for tests and benchmarks: Debian's `/usr/bin/etcd`
//! (package etcd-server) on loopback, with a temporary data directory and
//! free ports (never 2379, where the package's own daemon may listen), as
//! one member or as a cluster whose members can be stopped and restarted.
//!
//! A cluster can also speak TLS to its clients and require their
//! certificates ([`EtcdCluster::start_tls`], keys made with openssl), and
//! have etcd's authentication on ([`EtcdCluster::enable_auth`], set up
//! with Debian's etcdctl, not with Berth's client).
//!
//! A test that finds no etcd skips, unless `BERTH_REQUIRE_ETCD=1` or
//! `BERTH_REQUIRE_QEMU=1` (what the README's test command sets) is in the
//! environment: then it fails, so CI cannot pass without a real etcd.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
    tls: Option<TlsFiles>,
    /// The user and password file clients log in with, once auth is on.
    credentials: Option<(String, PathBuf)>,
}

/// PEM files of a throwaway certificate authority, the certificate the
/// members serve (for 127.0.0.1 and localhost), and one client
/// certificate they accept.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The CA's key, to issue more client certificates.
    pub ca_key: PathBuf,
    /// The members' certificate and key.
    pub server_cert: PathBuf,
    /// See `server_cert`.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, with no CommonName (see
    /// [`TlsFiles::issue_client`]).
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
}

fn openssl(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("openssl").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TlsFiles {
    /// Makes a CA (P-256, valid two days), the members' certificate and a
    /// client certificate in `dir`.
    pub fn generate(dir: &Path) -> std::io::Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name);
        let s = |path: &Path| path.to_string_lossy().into_owned();
        let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth-test-ca",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
        ])?;
        let mut files = TlsFiles {
            ca,
            ca_key,
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
        };
        files.issue(
            "server",
            "/CN=etcd",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        let (cert, key) = files.issue_client("client", None)?;
        files.client_cert = cert;
        files.client_key = key;
        Ok(files)
    }

    /// Issues a client certificate `<name>.pem` (and `<name>.key`) beside
    /// the CA, with `common_name` as its CN or with no CN at all. etcd's
    /// JSON gateway refuses every request that presents a certificate
    /// with a CN while authentication is on (CVE-2018-16886, etcd#10366),
    /// so a client that logs in with a password needs one without.
    pub fn issue_client(
        &self,
        name: &str,
        common_name: Option<&str>,
    ) -> std::io::Result<(PathBuf, PathBuf)> {
        let subject = match common_name {
            Some(cn) => format!("/O=berth-fleet/CN={cn}"),
            None => "/O=berth-fleet".to_string(),
        };
        self.issue(name, &subject, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(
        &self,
        name: &str,
        subject: &str,
        extensions: &str,
    ) -> std::io::Result<(PathBuf, PathBuf)> {
        let dir = self.ca.parent().unwrap_or(Path::new("."));
        let (cert, key, csr, ext) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        let s = |path: &Path| path.to_string_lossy().into_owned();
        std::fs::write(&ext, extensions)?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&self.ca),
            "-CAkey",
            &s(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&cert),
        ])?;
        Ok((cert, key))
    }
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers writes.
    pub fn start(binary: &Path, size: usize) -> std::io::Result<EtcdCluster> {
        Self::start_with(binary, size, false)
    }

    /// Starts `size` members that serve clients over TLS only and require
    /// a client certificate signed by the cluster's own CA (peers stay on
    /// plain HTTP: loopback, and not what the tests are about).
    pub fn start_tls(binary: &Path, size: usize) -> std::io::Result<EtcdCluster> {
        Self::start_with(binary, size, true)
    }

    fn start_with(binary: &Path, size: usize, tls: bool) -> std::io::Result<EtcdCluster> {
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
        let tls = if tls {
            Some(TlsFiles::generate(&dir.path().join("tls"))?)
        } else {
            None
        };
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            dir,
            token,
            members,
            tls,
            credentials: None,
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
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
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

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Every member's client URL, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// The TLS files of a cluster started with [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A client configuration naming every member, with the CA and client
    /// certificate of a TLS cluster and the user of one with auth on.
    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::with_endpoints(self.endpoints());
        if let Some(tls) = &self.tls {
            config.ca_file = Some(tls.ca.clone());
            config.cert_file = Some(tls.client_cert.clone());
            config.key_file = Some(tls.client_key.clone());
        }
        if let Some((user, file)) = &self.credentials {
            config.username = Some(user.clone());
            config.password_file = Some(file.clone());
        }
        config
    }

    /// Turns etcd's authentication on with Debian's etcdctl (next to the
    /// etcd binary): a `root` user with `password` and the root role.
    /// From then on [`EtcdCluster::config`] logs in as root with a
    /// password file (0600) in the cluster's directory, whose path this
    /// returns.
    pub fn enable_auth(&mut self, password: &str) -> std::io::Result<PathBuf> {
        let etcdctl = self.binary.with_file_name("etcdctl");
        let mut base = vec![format!("--endpoints={}", self.endpoints().join(","))];
        if let Some(tls) = &self.tls {
            base.push(format!("--cacert={}", tls.ca.display()));
            base.push(format!("--cert={}", tls.client_cert.display()));
            base.push(format!("--key={}", tls.client_key.display()));
        }
        let steps: [&[&str]; 3] = [
            &[
                "user",
                "add",
                "root",
                &format!("--new-user-password={password}"),
            ],
            &["user", "grant-role", "root", "root"],
            &["auth", "enable"],
        ];
        for step in steps {
            let out = Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args(&base)
                .args(step)
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "etcdctl {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        let file = self.dir.path().join("root.password");
        std::fs::write(&file, format!("{password}\n"))?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        self.credentials = Some(("root".to_string(), file.clone()));
        Ok(file)
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
