//! The refusals and failed writes of every service, recorded by one tower layer.
//!
//! [`AuditLayer`] sits between the request context and authentication, so it sees every
//! answer the auth and rate-limit layers give as well as the handler's. It records each call
//! to a Relay RPC answered `UNAUTHENTICATED`, `PERMISSION_DENIED` or `RESOURCE_EXHAUSTED`,
//! and each non-`OK` answer to a write RPC (an RPC whose scope is neither `*.read` nor
//! `*.watch`, from the `(relay.auth.v1.scope)` option: no hand list per service). Health and
//! reflection are not recorded. A successful write is recorded by its store, in the
//! transaction of the change (or, for a change held only in Redis, by its handler before it
//! is applied: availability's status and location reports).
//!
//! Records go through a bounded queue to a background writer, which appends them in batches
//! ([`AuditSink::append_alone`]): a flood of refusals never waits on the database. When the
//! queue is full, records are counted (`relay_audit_dropped_total`) and an `audit.dropped`
//! record says how many once there is room.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::{Request, Response};
use opentelemetry::metrics::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{AuditRecord, AuditSink, CallIds, settings::AuditSettings};
use crate::security::auth::Authenticator;

/// Records appended per transaction by the writer.
const BATCH: usize = 256;

/// Whether the RPC at `path` writes: its scope is neither a read nor a watch. `None` for a
/// path that is no Relay RPC (health, reflection), which is not audited.
#[must_use]
pub fn is_write(path: &str) -> Option<bool> {
    relay_proto::scopes::scope_of(path)
        .map(|scope| !(scope.ends_with(".read") || scope.ends_with(".watch")))
}

/// Whether a call to a write (or not) answered `code` is recorded by the layer.
#[must_use]
pub fn recorded(write: bool, code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated | Code::PermissionDenied | Code::ResourceExhausted
    ) || (write && code != Code::Ok)
}

fn dropped_counter() -> &'static Counter<u64> {
    static COUNTER: std::sync::OnceLock<Counter<u64>> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        crate::metrics::meter()
            .u64_counter("relay_audit_dropped")
            .with_description(
                "Audit records of refused calls and failed writes dropped: the queue was full \
                 or the database refused them",
            )
            .build()
    })
}

/// The queue to the background writer.
#[derive(Debug, Clone)]
struct Queue {
    sender: mpsc::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
    authenticator: Arc<Authenticator>,
}

impl Queue {
    fn push(&self, record: AuditRecord) {
        if self.sender.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            dropped_counter().add(1, &[]);
        }
    }
}

/// The layer; without a sink (a service with no database) it records nothing.
#[derive(Debug, Clone, Default)]
pub struct AuditLayer {
    queue: Option<Queue>,
}

impl AuditLayer {
    /// A layer recording nothing.
    #[must_use]
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts the writer and the pruning task of `sink` (both end when `token` is
    /// cancelled), and returns the layer feeding the writer. `authenticator` names the
    /// caller of a call the auth layer refused after identifying it (a missing scope).
    #[must_use]
    pub fn start(
        sink: AuditSink,
        settings: &AuditSettings,
        authenticator: Arc<Authenticator>,
        token: &CancellationToken,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(settings.queue);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_task(
            sink.clone(),
            receiver,
            Arc::clone(&dropped),
            token.clone(),
        ));
        tokio::spawn(prune_task(sink, settings.clone(), token.clone()));
        Self {
            queue: Some(Queue {
                sender,
                dropped,
                authenticator,
            }),
        }
    }
}

impl AuditLayer {
    /// Records the answer `status` to a call that did not come through the gRPC layers
    /// (intake's EIDO HTTP port, guarded as the RPC at `rpc_path`), as the layer records a
    /// gRPC call's: refusals, and failures of writes. `extensions` carry the call's ids and
    /// connection; `headers` its credential, to name a caller refused after it was
    /// identified (the credential itself is never recorded).
    pub fn record_answer(
        &self,
        rpc_path: &str,
        extensions: &http::Extensions,
        headers: &http::HeaderMap,
        status: &tonic::Status,
    ) {
        let (Some(queue), Some(write)) = (&self.queue, is_write(rpc_path)) else {
            return;
        };
        if !recorded(write, status.code()) {
            return;
        }
        let pending = Pending::from_parts(rpc_path, write, extensions, headers);
        queue.push(pending.record(status, &queue.authenticator));
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audited {
            inner,
            queue: self.queue.clone(),
        }
    }
}

/// The service made by [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct Audited<S> {
    inner: S,
    queue: Option<Queue>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What the layer keeps of a request to record its refusal: the path, the ids, the
/// connection and the credential header (the credential itself is never recorded).
struct Pending {
    path: String,
    write: bool,
    extensions: http::Extensions,
    headers: http::HeaderMap,
}

impl Pending {
    fn of<B>(request: &Request<B>, write: bool) -> Self {
        Self::from_parts(
            request.uri().path(),
            write,
            request.extensions(),
            request.headers(),
        )
    }

    fn from_parts(
        path: &str,
        write: bool,
        source: &http::Extensions,
        source_headers: &http::HeaderMap,
    ) -> Self {
        let mut extensions = http::Extensions::new();
        if let Some(ids) = source.get::<CallIds>() {
            extensions.insert(ids.clone());
        }
        if let Some(info) = source.get::<TlsConnectInfo<TcpConnectInfo>>() {
            extensions.insert(info.clone());
        }
        if let Some(info) = source.get::<TcpConnectInfo>() {
            extensions.insert(info.clone());
        }
        let mut headers = http::HeaderMap::new();
        if let Some(value) = source_headers.get(http::header::AUTHORIZATION) {
            headers.insert(http::header::AUTHORIZATION, value.clone());
        }
        Self {
            path: path.to_owned(),
            write,
            extensions,
            headers,
        }
    }

    /// The record of the call answered `status`, naming the caller when its credential is
    /// valid (asked of the authenticator for a path that is no RPC, so no scope is checked).
    fn record(mut self, status: &tonic::Status, authenticator: &Authenticator) -> AuditRecord {
        let peer = crate::security::tls::peer_identity(&self.extensions);
        if let Ok(Some(principal)) = authenticator.authorize("", &self.headers, peer.as_ref()) {
            self.extensions.insert(principal);
        }
        AuditRecord::of_extensions(&self.extensions, &self.path, Vec::new()).with_status(status)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let watched = self
            .queue
            .clone()
            .and_then(|queue| Some((queue, is_write(request.uri().path())?)));
        let Some((queue, write)) = watched else {
            return Box::pin(self.inner.call(request));
        };
        let pending = Pending::of(&request, write);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // A refusal and a unary error are trailers-only: the status is in the headers.
            if let Some(status) = tonic::Status::from_header_map(response.headers())
                && recorded(pending.write, status.code())
            {
                queue.push(pending.record(&status, &queue.authenticator));
            }
            Ok(response)
        })
    }
}

/// Appends what the queue holds, a batch per transaction, until `token` is cancelled and
/// the queue is drained.
async fn write_task(
    sink: AuditSink,
    mut receiver: mpsc::Receiver<AuditRecord>,
    dropped: Arc<AtomicU64>,
    token: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            record = receiver.recv() => record,
            () = token.cancelled() => {
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditRecord::of_trail("audit.dropped", format!("n={lost}")));
        }
        if let Err(error) = sink.append_alone(&batch).await {
            let records = (batch.len() - usize::from(lost > 0)) as u64;
            tracing::warn!(%error, records, "audit records could not be written");
            // Counted (the earlier losses again), so the next batch says how many are missing.
            dropped.fetch_add(records + lost, Ordering::Relaxed);
            dropped_counter().add(records, &[]);
        }
    }
}

/// Forgets records past the retention, a batch per transaction, every interval.
async fn prune_task(sink: AuditSink, settings: AuditSettings, token: CancellationToken) {
    let mut ticks = tokio::time::interval(settings.prune_interval());
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = token.cancelled() => return,
        }
        let retention = i64::try_from(settings.retention().as_micros()).unwrap_or(i64::MAX);
        let before = super::now_micros().saturating_sub(retention);
        loop {
            match sink.prune(before, i64::from(settings.prune_batch)).await {
                Ok(outcome) if outcome.deleted > 0 => {
                    tracing::info!(
                        deleted = outcome.deleted,
                        anchor = outcome.anchor_seq,
                        "audit records pruned"
                    );
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "audit pruning failed; retrying at the next interval");
                    break;
                }
            }
            if token.is_cancelled() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Database, Migrations};

    static TRAIL: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/audit");

    #[tokio::test]
    async fn a_full_queue_counts_what_it_drops_and_the_trail_says_how_many() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("trail.db").display());
        let database = Database::open(&url.into(), "probe", 2).expect("open");
        let migrations = Migrations {
            postgres: &TRAIL,
            sqlite: &TRAIL,
        };
        database.migrate(&migrations).await.expect("migrate");
        let sink = AuditSink::new(database);
        let (sender, receiver) = mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = Queue {
            sender,
            dropped: Arc::clone(&dropped),
            authenticator: Arc::new(Authenticator::disabled()),
        };
        // No writer yet: two records fit, three are dropped and counted.
        for n in 0..5 {
            queue.push(AuditRecord::of_trail("test", format!("{n}")));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        let token = CancellationToken::new();
        token.cancel();
        // A cancelled writer drains what is queued, then ends.
        write_task(sink.clone(), receiver, Arc::clone(&dropped), token).await;
        let written: Vec<(String, String)> = sink
            .entries(0, (i64::MIN, i64::MAX), 10)
            .await
            .expect("read")
            .into_iter()
            .map(|e| (e.record.rpc, e.record.reason))
            .collect();
        let expected = [("test", "0"), ("test", "1"), ("audit.dropped", "n=3")];
        assert_eq!(
            written,
            expected.map(|(rpc, reason)| (rpc.to_owned(), reason.to_owned()))
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        assert!(sink.verify().await.expect("database").is_ok());

        // A batch the database refuses (here: no trail at all) is counted, earlier losses
        // included, for the next batch to report.
        let url = format!("sqlite://{}", dir.path().join("none.db").display());
        let nowhere = AuditSink::new(Database::open(&url.into(), "probe", 1).expect("open"));
        let (sender, receiver) = mpsc::channel(4);
        sender
            .try_send(AuditRecord::of_trail("test", String::new()))
            .expect("room");
        drop(sender);
        dropped.store(3, Ordering::Relaxed);
        write_task(
            nowhere,
            receiver,
            Arc::clone(&dropped),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn writes_are_the_rpcs_whose_scope_neither_reads_nor_watches() {
        let write = |path| is_write(path);
        assert_eq!(
            write("/relay.intake.v1.IntakeService/SubmitIncident"),
            Some(true)
        );
        assert_eq!(
            write("/relay.intake.v1.IntakeService/GetIncident"),
            Some(false)
        );
        assert_eq!(
            write("/relay.intake.v1.IntakeService/WatchIncidentEvents"),
            Some(false)
        );
        assert_eq!(
            write("/relay.routing.v1.RoutingService/AssignTeam"),
            Some(true)
        );
        assert_eq!(write("/grpc.health.v1.Health/Check"), None);
        assert!(recorded(false, Code::PermissionDenied));
        assert!(recorded(false, Code::ResourceExhausted));
        assert!(!recorded(false, Code::NotFound));
        assert!(recorded(true, Code::InvalidArgument));
        assert!(!recorded(true, Code::Ok));
    }
}
