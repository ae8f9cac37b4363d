//! The test harness every Relay test shares.
//!
//! Tests run against the real servers: PostgreSQL at `RELAY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and Redis at `RELAY_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Each test gets its own database ([`TestDatabase`], dropped
//! afterwards) and its own Redis key namespace ([`unique_name`] for regions and prefixes), so
//! tests run in parallel and twice in a row. [`ServiceProcess`] starts a service binary as a
//! real process on an ephemeral port.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor, PgConnection};

pub mod audit;
pub mod bench;
pub mod chaos;
pub mod datastore_tls;
pub mod outage;
pub mod proxy;
pub mod raw;
pub mod redis_cluster;
pub mod redis_server;
pub mod slow;
pub mod status;
pub mod suite;

/// The PostgreSQL server tests use (a URL to any database on it).
#[must_use]
pub fn postgres_admin_url() -> String {
    std::env::var("RELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"))
}

/// The Redis server tests use.
#[must_use]
pub fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS_URL").unwrap_or_else(|_| String::from("redis://127.0.0.1:6379"))
}

/// A name no other test (or earlier run) uses: `prefix_<32 hex digits>`.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

fn database_url(admin: &str, name: &str) -> String {
    // Replace the database part of the admin URL (everything after the last '/', before '?').
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable: tests need it (see `make test`).
    pub async fn new() -> Self {
        let admin = postgres_admin_url();
        let name = unique_name("relay_test");
        let mut connection = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {admin}: {e}"));
        connection
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .expect("create test database");
        connection.close().await.ok();
        let url = database_url(&admin, &name);
        Self { name, url }
    }

    /// The URL of this database.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = postgres_admin_url();
        let name = self.name.clone();
        // Drop may run inside or outside a runtime: use a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut connection = PgConnection::connect(&admin).await.ok()?;
                connection
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Deletes every Redis key that starts with `prefix` (for tests that used a key prefix).
///
/// # Panics
/// When Redis is unreachable.
pub async fn redis_delete_prefix(prefix: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("tests need Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .expect("del");
    }
}

/// A free port on 127.0.0.1 for a server a test starts (a service's admin endpoint, a Redis,
/// a PostgreSQL), taken below the kernel's ephemeral range (32768 and up on Linux): a port
/// the kernel hands out for `bind(0)` or for an outgoing connection can be taken by another
/// process between this check and the server's own bind, which once failed a chaos run with
/// "Address already in use". Ports are handed out round-robin from a start that differs per
/// process, and each is checked free (with `port + companion`, when not 0, for a Redis
/// Cluster node's bus port).
///
/// # Panics
/// When no port in the range is free.
#[must_use]
pub fn free_port_with(companion: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 12_000; // 10000..22000, so that a bus port (+10000) stays below 32768
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, seed % COUNT, Ordering::SeqCst, Ordering::SeqCst);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..COUNT {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % COUNT;
        let port = u16::try_from(FIRST + offset).expect("below 65536");
        if free(port) && (companion == 0 || free(port + companion)) {
            return port;
        }
    }
    panic!("no free port in 10000..22000");
}

/// [`free_port_with`] for a server with one port.
#[must_use]
pub fn free_port() -> u16 {
    free_port_with(0)
}

/// Where cargo put the workspace's binaries (beside this test executable's `deps/` folder).
///
/// # Panics
/// When the test executable's path is unexpected.
#[must_use]
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A service binary running as a child process; killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl ServiceProcess {
    /// Starts `binary` with `RELAY_LISTEN=127.0.0.1:0` and the given extra environment, and
    /// waits for its `... listening on http://ADDR` line.
    ///
    /// # Panics
    /// When the process exits or prints nothing within 30 seconds.
    #[must_use]
    pub fn start(binary: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary_path(binary));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RELAY_LISTEN", "127.0.0.1:0")
            // One process each, signing page tokens with its own key; a test that checks the
            // production refusal clears it.
            .env("RELAY_INSECURE_DEV", "true")
            .env("RELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn service");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = line_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let logs: Vec<String> = err_rx.try_iter().collect();
                panic!(
                    "{binary} printed no listening line; stderr:\n{}",
                    logs.join("\n")
                )
            });
        let addr = line
            .rsplit_once("://")
            .and_then(|(_, addr)| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from {binary}: {line}"));
        Self {
            child,
            addr,
            stderr: err_rx,
        }
    }

    /// The address the process listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for a tonic client.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the process reports SERVING on `grpc.health.v1` (its dependencies are
    /// reachable and its start-up work is done).
    ///
    /// # Panics
    /// When it does not within 30 seconds.
    pub async fn wait_until_serving(&self) {
        if let Err(last) = wait_until_serving(&self.endpoint(), Duration::from_secs(30)).await {
            panic!(
                "{} never became SERVING (last {last}); stderr: {:?}",
                self.endpoint(),
                self.stderr_lines()
            );
        }
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with the system `kill` command.
    ///
    /// # Panics
    /// When `kill` cannot be run.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `timeout`; `None` if it is still running.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr so far.
    #[must_use]
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

/// Waits until the gRPC server at `endpoint` (`http://ADDR`) reports SERVING on
/// `grpc.health.v1`, at most `limit`; the last answer seen when it does not.
///
/// # Errors
/// The last status (or error) seen, when it is not SERVING within `limit`.
///
/// # Panics
/// When `endpoint` is not a URI.
pub async fn wait_until_serving(endpoint: &str, limit: Duration) -> Result<(), String> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_lazy();
    wait_until_serving_on(channel, limit).await
}

/// As [`wait_until_serving`], over a channel of the caller's (TLS, for instance).
///
/// # Errors
/// The last answer, when it never was SERVING within `limit`.
pub async fn wait_until_serving_on(
    channel: tonic::transport::Channel,
    limit: Duration,
) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut client = HealthClient::new(channel);
    let deadline = Instant::now() + limit;
    loop {
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a service's admin endpoint (plain HTTP/1.1): the status code and the body.
///
/// # Panics
/// When the endpoint does not answer with an HTTP response.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin endpoint");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {head}"));
    (status, body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn database_urls_swap_the_database_name() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
