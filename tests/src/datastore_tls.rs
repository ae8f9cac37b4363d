//! PostgreSQL and Redis servers of a test's own that speak TLS only, with certificates from a
//! certificate authority the test makes (rcgen), for tests of Relay's encrypted connections to
//! its data stores (issue 14).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority of the test's own, with its certificate in `ca.pem` of `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir).finish()
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TestCa {
    /// A new authority named `name`, writing its files under a new folder in the temp dir.
    ///
    /// # Panics
    /// When the key or the folder cannot be made.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name(&format!("relay-ca-{name}")));
        std::fs::create_dir_all(&dir).expect("ca dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Relay test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.join("ca.pem"), issuer.pem()).expect("write ca.pem");
        Self { issuer, dir }
    }

    /// The authority's certificate (PEM file).
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The folder its files are in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `localhost` and 127.0.0.1, signed by this authority, written
    /// as `<name>.pem` and `<name>.key`.
    ///
    /// # Panics
    /// When signing or writing fails.
    #[must_use]
    pub fn issue_server(&self, name: &str) -> CertFiles {
        let mut params =
            CertificateParams::new(vec![String::from("localhost"), String::from("127.0.0.1")])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    crate::free_port()
}

/// A `redis-server` listening on TLS only (no plaintext port), with one ACL user `relay` and
/// the default user switched off. Killed when dropped.
#[derive(Debug)]
pub struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    /// The ACL user's password.
    pub const PASSWORD: &'static str = "relay-test-secret";

    /// Starts it with a certificate from `ca` and waits until the TLS port accepts.
    ///
    /// # Panics
    /// When `redis-server` cannot run, lacks TLS, or does not listen within 10 seconds.
    #[must_use]
    pub fn start(ca: &TestCa) -> Self {
        let files = ca.issue_server("redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&files.cert)
            .arg("--tls-key-file")
            .arg(&files.key)
            .arg("--tls-ca-cert-file")
            .arg(ca.cert_path())
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--user", "default", "off"])
            .args(["--user", "relay", "on", &format!(">{}", Self::PASSWORD)])
            .args(["~*", "&*", "+@all"])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tests need redis-server on PATH (Debian: redis-server)");
        let mut server = Self { child, port };
        server.wait_for_port();
        server
    }

    fn wait_for_port(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("redis-server with TLS exited: {status} (built without TLS?)");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never listened on TLS"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `rediss://relay:PASSWORD@127.0.0.1:PORT`, or with another password.
    #[must_use]
    pub fn url_with_password(&self, password: &str) -> String {
        format!("rediss://relay:{password}@127.0.0.1:{}", self.port)
    }

    /// `rediss://relay:PASSWORD@127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        self.url_with_password(Self::PASSWORD)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temp folder) that accepts TLS
/// connections only (`hostssl` lines alone in pg_hba.conf). Stopped and removed when dropped.
#[derive(Debug)]
pub struct TlsPostgres {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The folder of PostgreSQL's server binaries (`initdb`, `postgres`).
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .expect("tests need PostgreSQL's server binaries under /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command that runs as the `postgres` user when this process is root (PostgreSQL refuses
/// to run as root), as this user otherwise. `setpriv` execs the program itself, so the child
/// is the server and signals reach it.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl TlsPostgres {
    /// Makes and starts the cluster with a certificate from `ca`, and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// When initdb or the server fails, or it does not accept within 30 seconds.
    pub async fn start(ca: &TestCa) -> Self {
        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(crate::unique_name("relay-pg-tls"));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("pg dir");
        let files = ca.issue_server("postgres");
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::copy(&files.cert, &cert).expect("copy cert");
        std::fs::copy(&files.key, &key).expect("copy key");
        set_mode(&key, 0o600);
        chown_postgres(&dir);
        let initdb = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        // TLS only: a plaintext connection finds no pg_hba line and is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
        let port = free_port();
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args([
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
                "-c",
                "log_min_messages=warning",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let server = Self { child, port, dir };
        let url = server.url(&ca.cert_path());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                Ok(connection) => {
                    let _ = sqlx::Connection::close(connection).await;
                    break;
                }
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "PostgreSQL with TLS never accepted: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// A URL that requires TLS and checks the server's certificate against `ca` (a PEM file)
    /// and its name (`sslmode=verify-full`).
    #[must_use]
    pub fn url(&self, ca: &Path) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// A URL without TLS (`sslmode=disable`), which the server refuses.
    #[must_use]
    pub fn plaintext_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, the server ends its backends and exits at once.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_postgres(dir: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} failed", dir.display());
    }
}
