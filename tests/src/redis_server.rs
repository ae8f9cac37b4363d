//! A Redis server of a test's own (`redis-server` as a child process on a free port, nothing
//! on disk), for tests that crash, partition or promote Redis without touching the shared one.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` child process; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    /// Starts a server on a free port, a replica of `primary` when given, and waits until it
    /// answers PING.
    ///
    /// # Panics
    /// When `redis-server` cannot be run or does not answer within 10 seconds.
    pub async fn start(primary: Option<SocketAddr>) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // A replica writes the primary's snapshot to disk while it syncs: keep it out of the
            // working tree, one file per server.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .args(["--dbfilename", &format!("relay-test-{}.rdb", addr.port())])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = primary {
            command.args(["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        }
        let child = command
            .spawn()
            .expect("tests need redis-server on PATH (Debian: redis-server)");
        let server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.query::<String>(&["PING"]).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {addr} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://ADDR`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends one command.
    ///
    /// # Errors
    /// When the server does not answer or refuses.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut connection = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await
    }

    /// One field of `INFO replication` (`master_repl_offset`, `master_link_status`, ...).
    ///
    /// # Errors
    /// When the server does not answer.
    pub async fn replication(&self, field: &str) -> redis::RedisResult<Option<String>> {
        let info: String = self.query(&["INFO", "replication"]).await?;
        Ok(info.lines().find_map(|line| {
            line.strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        }))
    }

    /// Kills the server with SIGKILL (no shutdown, nothing flushed) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
