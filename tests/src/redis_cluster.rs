//! A real Redis Cluster of a test's own: six `redis-server --cluster-enabled yes` processes on
//! free local ports (each in its own temporary directory, nothing saved), joined by
//! `redis-cli --cluster create --cluster-replicas 1` into three primaries with a replica each,
//! and killed (directories removed) when dropped. Every step is bounded in time.
//!
//! `cluster-node-timeout` is 2000 ms, so a replica takes over from a killed primary within a
//! few seconds.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::Value;

use crate::unique_name;

/// How long the cluster may take to form or to recover.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// `cluster-node-timeout` of every node.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// One node: its process and port.
#[derive(Debug)]
struct Node {
    child: Child,
    port: u16,
}

/// A running Redis Cluster; torn down on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    crate::free_port_with(10_000)
}

/// Sends one command to the node at `port`, bounded by 5 seconds.
///
/// # Errors
/// When the node does not answer or refuses.
pub async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let timed_out = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut connection).await
    })
    .await
    .map_err(|_| timed_out())?
}

/// Runs `command` to completion within `limit`, killing it past that.
fn run_bounded(mut command: Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tests need redis-cli on PATH (Debian: redis-tools)");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("{command:?} ran past {limit:?}: {output:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Polls `check` until it is true, panicking with `what` after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three primaries, one replica each) and waits
    /// until every node says `cluster_state:ok` and every replica is in sync.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or a step does not finish in time.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique_name("relay_cluster"));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let port = free_port();
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node directory");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--loglevel", "warning"])
                .arg("--dir")
                .arg(&node_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tests need redis-server on PATH (Debian: redis-server)");
            cluster.nodes.push(Node { child, port });
        }
        for port in cluster.ports() {
            until(
                Duration::from_secs(10),
                "a node answers PING",
                || async move { query::<String>(port, &["PING"]).await.is_ok() },
            )
            .await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = run_bounded(create, FORM_TIMEOUT);
        assert!(output.status.success(), "cluster create: {output:?}");
        cluster.wait_until_healthy().await;
        cluster
    }

    /// Waits until every live node says `cluster_state:ok`, sees the same three primaries
    /// covering every slot, and every replica's link to its primary is up.
    ///
    /// # Panics
    /// When that does not happen within 30 seconds.
    pub async fn wait_until_healthy(&self) {
        let ports = self.ports();
        until(FORM_TIMEOUT, "the cluster is healthy", || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let Ok(info) = query::<String>(port, &["CLUSTER", "INFO"]).await else {
                        return false;
                    };
                    if !info.contains("cluster_state:ok") {
                        return false;
                    }
                    let Ok(role) = query::<String>(port, &["INFO", "replication"]).await else {
                        return false;
                    };
                    if role.contains("role:slave") && !role.contains("master_link_status:up") {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }

    /// The ports of the live nodes.
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every live node's URL, separated by commas (what `RELAY_REDIS_URL` takes).
    #[must_use]
    pub fn urls(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primaries by the slot ranges they serve: port -> ranges (start, end), from the
    /// first live node that answers `CLUSTER SLOTS`.
    ///
    /// # Panics
    /// When no live node answers.
    pub async fn primaries(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        for port in self.ports() {
            let Ok(Value::Array(ranges)) = query::<Value>(port, &["CLUSTER", "SLOTS"]).await else {
                continue;
            };
            let mut map: BTreeMap<u16, Vec<(u16, u16)>> = BTreeMap::new();
            for range in ranges {
                let Value::Array(parts) = range else { continue };
                let number = |v: Option<&Value>| match v {
                    Some(Value::Int(n)) => u16::try_from(*n).ok(),
                    _ => None,
                };
                let primary = match parts.get(2) {
                    Some(Value::Array(node)) => number(node.get(1)),
                    _ => None,
                };
                if let (Some(start), Some(end), Some(primary)) =
                    (number(parts.first()), number(parts.get(1)), primary)
                {
                    map.entry(primary).or_default().push((start, end));
                }
            }
            return map;
        }
        panic!("no node answers CLUSTER SLOTS");
    }

    /// `CLUSTER KEYSLOT key`, asked of a live node.
    ///
    /// # Panics
    /// When no live node answers.
    pub async fn slot(&self, key: &str) -> u16 {
        for port in self.ports() {
            if let Ok(slot) = query::<u16>(port, &["CLUSTER", "KEYSLOT", key]).await {
                return slot;
            }
        }
        panic!("no node answers CLUSTER KEYSLOT");
    }

    /// The port of the primary serving `key`'s slot.
    ///
    /// # Panics
    /// When no primary serves it.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        self.primaries()
            .await
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
            .expect("a primary for every slot")
    }

    /// `count` region names (`<prefix>_<n>`) whose hash tags land on `count` different
    /// primaries (at most three).
    pub async fn regions_on_distinct_primaries(&self, prefix: &str, count: usize) -> Vec<String> {
        let mut chosen: BTreeMap<u16, String> = BTreeMap::new();
        for n in 0..10_000 {
            let region = format!("{prefix}_{n}");
            let primary = self.primary_of(&format!("{{{region}}}")).await;
            chosen.entry(primary).or_insert(region);
            if chosen.len() >= count {
                break;
            }
        }
        chosen.into_values().collect()
    }

    /// Kills the node at `port` with SIGKILL (nothing flushed) and forgets it.
    pub fn kill(&mut self, port: u16) {
        if let Some(index) = self.nodes.iter().position(|n| n.port == port) {
            let mut node = self.nodes.remove(index);
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Moves `slot` from the primary at `from` to the primary at `to`, the way
    /// `redis-cli --cluster reshard` does: IMPORTING on the target, MIGRATING on the source,
    /// `MIGRATE` of its keys a few at a time (clients get `ASK` meanwhile), then the new owner
    /// announced to every node (clients get `MOVED`). `pause` is waited between batches, so
    /// load sees the slot half moved. Returns how many keys moved.
    ///
    /// # Panics
    /// When a step fails.
    pub async fn migrate_slot(&self, slot: u16, from: u16, to: u16, pause: Duration) -> usize {
        let slot_text = slot.to_string();
        let from_id: String = query(from, &["CLUSTER", "MYID"]).await.expect("source id");
        let to_id: String = query(to, &["CLUSTER", "MYID"]).await.expect("target id");
        let _: () = query(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        )
        .await
        .expect("importing");
        let _: () = query(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        )
        .await
        .expect("migrating");
        let to_port = to.to_string();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = query(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "2"])
                .await
                .expect("keys in slot");
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                to_port.as_str(),
                "",
                "0",
                "5000",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            let _: String = query(from, &args).await.expect("migrate");
            moved += keys.len();
            tokio::time::sleep(pause).await;
        }
        for port in [to, from] {
            let _: () = query(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id])
                .await
                .expect("announce the new owner");
        }
        for port in self.ports() {
            let _: redis::RedisResult<()> =
                query(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]).await;
        }
        moved
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
