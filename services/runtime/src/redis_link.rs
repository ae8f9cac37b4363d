//! The one Redis connection type of availability and routing: a single server (a primary, or
//! the address an operator or Sentinel keeps pointing at the primary) through redis-rs'
//! `ConnectionManager`, or a Redis Cluster through its cluster client.
//!
//! `RELAY_REDIS_URL` names a single server (`redis://host:6379`), or a cluster: several nodes
//! separated by commas (`redis://a:6379,redis://b:6379,redis://c:6379`), or one node with
//! `RELAY_REDIS_CLUSTER=true` (a managed cluster's configuration endpoint). The cluster client
//! learns the slot map from any node, follows `MOVED` and `ASK` redirections, and reloads the
//! map after a failover.
//!
//! TLS: a `rediss://` URL connects over TLS and checks the server's certificate against the
//! system's roots, or against the CA in `RELAY_REDIS_CA_FILE`; `RELAY_REDIS_CERT_FILE` and
//! `RELAY_REDIS_KEY_FILE` give a client certificate to servers that ask for one
//! (`tls-auth-clients yes`). A Redis ACL user and password go in the URL
//! (`rediss://relay:PASSWORD@host:6380`).
//!
//! On a cluster a pipeline is sent per slot: commands are grouped by their key's slot, each
//! group goes to its primary, and the replies come back in the pipeline's order. A script (or
//! a transaction) must still keep to one slot, which the keyspace's `{region}` hash tags do.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::try_join_all};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};

/// How long a connection attempt to one node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reply may take (blocking reads excepted).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster request may take in all, redirections and retries included: long
/// enough to ride out a primary's failover (`cluster-node-timeout` plus the election).
pub const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After this many requests in a row time out on a cluster's shared connection, it is
/// replaced by a new one (see [`SharedCluster`]).
pub const CLUSTER_TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// Where Redis is: one server or a cluster (no connection is made until one is asked for).
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (boxed: a client with TLS settings is large).
    Single(Box<Client>),
    /// A Redis Cluster: a client for shared connections, and one without a response timeout
    /// for blocking reads.
    Cluster(Box<ClusterClients>),
}

/// The two clients of a cluster.
#[derive(Clone)]
pub struct ClusterClients {
    /// Shared connections (bounded responses, retries through a failover).
    shared: ClusterClient,
    /// Connections for blocking commands (`XREAD BLOCK`).
    blocking: ClusterClient,
}

/// The certificates of a TLS connection to Redis, PEM encoded (read from files by
/// `Config::redis_target`).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA the server's certificate must chain to; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    fn into_certificates(self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .client
                .map(|(client_cert, client_key)| ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.ca,
        }
    }
}

/// Makes ring the process's TLS provider (redis-rs builds its TLS settings from the process
/// default, sqlx and tonic name ring themselves); a provider already installed stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `host:port` of a URL, for errors (never the password).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, host)| host)
        .to_owned()
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry passwords: say only which kind.
        f.write_str(if self.is_cluster() {
            "RedisTarget::Cluster"
        } else {
            "RedisTarget::Single"
        })
    }
}

impl From<Client> for RedisTarget {
    fn from(client: Client) -> Self {
        Self::Single(Box::new(client))
    }
}

impl RedisTarget {
    /// Parses `urls`: one URL is a single server unless `cluster` is set; several, separated
    /// by commas, are the seed nodes of a cluster.
    ///
    /// # Errors
    /// When a URL is invalid.
    pub fn open(urls: &str, cluster: bool) -> RedisResult<Self> {
        Self::open_with_tls(urls, cluster, None)
    }

    /// Like [`RedisTarget::open`], with the CA and client certificate of `rediss://` URLs.
    ///
    /// # Errors
    /// When a URL is invalid, or `tls` is given for a URL that is not `rediss://`.
    pub fn open_with_tls(urls: &str, cluster: bool, tls: Option<RedisTls>) -> RedisResult<Self> {
        let nodes: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if let Some(plain) = nodes.iter().find(|u| !u.starts_with("rediss://")) {
            if tls.is_some() {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a Redis CA or client certificate is configured but a Redis URL is not rediss://",
                    host_of(plain),
                )));
            }
        } else {
            install_crypto_provider();
        }
        let certificates = tls.map(RedisTls::into_certificates);
        if nodes.len() <= 1 && !cluster {
            let url = urls.trim();
            return Ok(Self::Single(Box::new(match certificates {
                Some(certificates) => Client::build_with_tls(url, certificates)?,
                None => Client::open(url)?,
            })));
        }
        Self::cluster_with_tls(nodes, certificates)
    }

    /// A cluster reached through any of `nodes`.
    ///
    /// # Errors
    /// When a URL is invalid.
    pub fn cluster<T: redis::IntoConnectionInfo + Clone>(nodes: Vec<T>) -> RedisResult<Self> {
        Self::cluster_with_tls(nodes, None)
    }

    fn cluster_with_tls<T: redis::IntoConnectionInfo + Clone>(
        nodes: Vec<T>,
        certificates: Option<TlsCertificates>,
    ) -> RedisResult<Self> {
        let mut shared = ClusterClient::builder(nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT));
        let mut blocking = ClusterClient::builder(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .overall_response_timeout(None);
        if let Some(certificates) = certificates {
            shared = shared.certs(certificates.clone());
            blocking = blocking.certs(certificates);
        }
        Ok(Self::Cluster(Box::new(ClusterClients {
            shared: shared.build()?,
            blocking: blocking.build()?,
        })))
    }

    /// Whether this is a cluster.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The shared, multiplexed connection: it connects lazily (on first use) and reconnects by
    /// itself; clone it freely.
    ///
    /// # Errors
    /// When the connection cannot be set up.
    pub fn shared(&self) -> RedisResult<RedisConnection> {
        Ok(match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2);
                RedisConnection::Manager(ConnectionManager::new_lazy_with_config(
                    Client::clone(client),
                    config,
                )?)
            }
            Self::Cluster(clients) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                RedisConnection::SharedCluster(SharedCluster::new(clients.shared.clone(), config))
            }
        })
    }

    /// A new connection of its own without a response timeout, for blocking commands (which
    /// would hold up every other caller of a shared connection).
    ///
    /// # Errors
    /// When no connection can be made.
    pub async fn dedicated(&self) -> RedisResult<RedisConnection> {
        Ok(match self {
            Self::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                RedisConnection::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Self::Cluster(clients) => {
                let config = ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
                RedisConnection::Cluster(
                    clients
                        .blocking
                        .get_async_connection_with_config(config)
                        .await?,
                )
            }
        })
    }
}

/// A connection to a [`RedisTarget`]; implements [`ConnectionLike`], so commands, pipelines
/// and scripts run on it as on any redis-rs connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// A single server's shared connection.
    Manager(ConnectionManager),
    /// A single server's connection of its own.
    Multiplexed(MultiplexedConnection),
    /// A cluster's shared connection, replaced when it stops answering.
    SharedCluster(SharedCluster),
    /// A cluster connection of its own (blocking reads).
    Cluster(ClusterConnection),
}

/// A cluster's shared connection that replaces itself when it stops answering.
///
/// Why: under load, while a slot migrated between primaries, redis-rs' cluster connection
/// (1.8) was seen to stop answering for good after a slot-map refresh: every request of one
/// routing replica timed out for minutes while a new connection from the same process, and
/// the other replica, were served (the `cluster` chaos test left 58 of 123 calls without a
/// routing outcome). A cluster that is really down costs nothing more here: a replacement
/// connects lazily, on its first request. So after
/// [`CLUSTER_TIMEOUTS_BEFORE_RECONNECT`] timeouts in a row the connection is dropped and a
/// new one takes its place for every clone; any answer (even an error reply) resets the
/// count, while other I/O errors leave it as it is.
#[derive(Clone)]
pub struct SharedCluster(Arc<Healing>);

/// What the clones of a [`SharedCluster`] share.
struct Healing {
    current: RwLock<ClusterConnection>,
    client: ClusterClient,
    config: ClusterConfig,
    timeouts: AtomicU32,
    replaced: AtomicU32,
}

impl SharedCluster {
    fn new(client: ClusterClient, config: ClusterConfig) -> Self {
        let connection = client.get_pending_async_connection_with_config(config.clone());
        Self(Arc::new(Healing {
            current: RwLock::new(connection),
            client,
            config,
            timeouts: AtomicU32::new(0),
            replaced: AtomicU32::new(0),
        }))
    }

    /// How many times the connection was replaced.
    #[must_use]
    pub fn replacements(&self) -> u32 {
        self.0.replaced.load(Ordering::Acquire)
    }

    fn connection(&self) -> ClusterConnection {
        self.0
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a timed-out request, and replaces the connection after enough in a row.
    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(error) if error.is_timeout() => {
                let seen = self.0.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
                if seen >= CLUSTER_TIMEOUTS_BEFORE_RECONNECT
                    && self
                        .0
                        .timeouts
                        .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    tracing::warn!(
                        timeouts = seen,
                        "the Redis Cluster connection stopped answering; replacing it"
                    );
                    let fresh = self
                        .0
                        .client
                        .get_pending_async_connection_with_config(self.0.config.clone());
                    *self
                        .0
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                    self.0.replaced.fetch_add(1, Ordering::AcqRel);
                }
            }
            Ok(_) => self.0.timeouts.store(0, Ordering::Release),
            // An error reply is an answer; a refused or dropped connection says nothing of
            // whether this connection is stuck.
            Err(error) if error.is_io_error() => {}
            Err(_) => self.0.timeouts.store(0, Ordering::Release),
        }
    }
}

/// The slot of a command's first key: the key after `numkeys` for scripts and functions, the
/// first argument otherwise; `None` for a command without keys.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"PING" | b"SCRIPT" | b"INFO" | b"TIME" => return None,
        _ => args.get(1)?,
    };
    Some(Slot::for_key(key))
}

/// Sends a non-transaction `pipeline` over a cluster one slot at a time (concurrently) and
/// returns the replies in the pipeline's order.
async fn pipeline_by_slot(
    connection: &ClusterConnection,
    pipeline: &Pipeline,
) -> RedisResult<Vec<Value>> {
    let mut groups: Vec<(Pipeline, Vec<usize>)> = Vec::new();
    let mut by_slot: HashMap<Option<Slot>, usize> = HashMap::new();
    for (index, cmd) in pipeline.cmd_iter().enumerate() {
        let group = *by_slot.entry(slot_of(cmd)).or_insert_with(|| {
            groups.push((Pipeline::new(), Vec::new()));
            groups.len() - 1
        });
        groups[group].0.add_command(cmd.clone());
        groups[group].1.push(index);
    }
    let sent = groups.iter().map(|(part, _)| {
        let mut connection = connection.clone();
        async move { connection.req_packed_commands(part, 0, part.len()).await }
    });
    let replies = try_join_all(sent).await?;
    let mut ordered = vec![Value::Nil; pipeline.len()];
    for ((_, indexes), values) in groups.iter().zip(replies) {
        for (index, value) in indexes.iter().zip(values) {
            ordered[*index] = value;
        }
    }
    Ok(ordered)
}

/// A pipeline on a cluster: a transaction must keep to one slot; any other pipeline is split
/// by slot.
async fn cluster_pipeline(
    connection: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    if !pipeline.is_transaction() && offset == 0 && count == pipeline.len() {
        pipeline_by_slot(connection, pipeline).await
    } else {
        connection
            .req_packed_commands(pipeline, offset, count)
            .await
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::SharedCluster(shared) => {
                let mut connection = shared.connection();
                let shared = shared.clone();
                async move {
                    let result = connection.req_packed_command(cmd).await;
                    shared.observe(&result);
                    result
                }
                .boxed()
            }
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Self::SharedCluster(shared) => {
                let mut connection = shared.connection();
                let shared = shared.clone();
                async move {
                    let result = cluster_pipeline(&mut connection, cmd, offset, count).await;
                    shared.observe(&result);
                    result
                }
                .boxed()
            }
            Self::Cluster(c) => cluster_pipeline(c, cmd, offset, count).boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::SharedCluster(shared) => shared.connection().get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_or_the_flag_make_a_cluster() {
        let single = RedisTarget::open("redis://127.0.0.1:6379", false).expect("single");
        assert!(!single.is_cluster());
        let listed = RedisTarget::open("redis://127.0.0.1:7000, redis://127.0.0.1:7001", false)
            .expect("list");
        assert!(listed.is_cluster());
        let flagged = RedisTarget::open("redis://127.0.0.1:7000", true).expect("flag");
        assert!(flagged.is_cluster());
        assert!(RedisTarget::open("nonsense://x", false).is_err());
    }

    #[tokio::test]
    async fn a_cluster_connection_is_replaced_after_timeouts_in_a_row_only() {
        let target = RedisTarget::open("redis://127.0.0.1:7000,redis://127.0.0.1:7001", false)
            .expect("cluster");
        let Ok(RedisConnection::SharedCluster(shared)) = target.shared() else {
            panic!("a cluster's shared connection heals itself");
        };
        let timeout: RedisResult<()> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )));
        let refused: RedisResult<()> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        // Two timeouts, an answer, two timeouts: never three in a row.
        for result in [&timeout, &timeout, &Ok(()), &timeout, &timeout] {
            shared.observe(result);
        }
        assert_eq!(shared.replacements(), 0);
        // Errors that are not timeouts do not reset the count (the node may be down).
        shared.observe(&refused);
        assert_eq!(shared.replacements(), 0);
        shared.observe(&timeout);
        assert_eq!(
            shared.replacements(),
            1,
            "the third timeout in a row replaces it"
        );
        // Every clone shares the replacement and the count.
        let clone = shared.clone();
        for _ in 0..3 {
            clone.observe(&timeout);
        }
        assert_eq!(shared.replacements(), 2);
    }

    #[test]
    fn commands_are_grouped_by_their_key_slot() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("relay:{north}:team:1").arg("x");
        let mut hmget = redis::cmd("HMGET");
        hmget.arg("relay:{north}:team:2").arg("id");
        let mut other = redis::cmd("HMGET");
        other.arg("relay:{south}:team:2").arg("id");
        assert_eq!(slot_of(&eval), slot_of(&hmget));
        assert_ne!(slot_of(&hmget), slot_of(&other));
        assert_eq!(slot_of(&redis::cmd("PING")), None);
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(slot_of(&keyless), None);
    }
}
