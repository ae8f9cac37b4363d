//! Measuring a dependency fault from outside (`pg_outage.rs`, `slow_consumer.rs`): a monitor
//! of a service's gRPC health that keeps every change with its time, probes that call one RPC
//! in a loop and keep each call's code and latency (and the calls they make), percentiles, and
//! a process's resident memory.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A channel to `endpoint` that connects on first use (and again after a failure).
///
/// # Panics
/// When `endpoint` is not a URI.
#[must_use]
pub fn lazy_channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_lazy()
}

/// `message` as a request carrying `deadline` (`grpc-timeout`).
#[must_use]
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// The probes' SubmitIncident: call `probe-{n}` of CAD `cad` in `region`, received now.
#[must_use]
pub fn probe_submission(
    cad: &str,
    region: &str,
    n: u64,
) -> relay_proto::intake::SubmitIncidentRequest {
    relay_proto::intake::SubmitIncidentRequest {
        cad_system: cad.to_owned(),
        cad_incident_id: format!("probe-{n}"),
        incident_type: "WELFARE".into(),
        priority: 3,
        location: Some(relay_proto::common::GeoPoint {
            latitude: 45.5152,
            longitude: -122.6784,
        }),
        address: "1 SW Broadway".into(),
        region: region.to_owned(),
        received_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        ..relay_proto::intake::SubmitIncidentRequest::default()
    }
}

/// The probes' UpsertTeam: team `probe-{n}` in `region`, under request id `probe-upsert-{n}`.
#[must_use]
pub fn probe_team(region: &str, n: u64) -> relay_proto::availability::UpsertTeamRequest {
    relay_proto::availability::UpsertTeamRequest {
        request_id: format!("probe-upsert-{n}"),
        team_id: format!("probe-{n}"),
        display_name: format!("Probe {n}"),
        region: region.to_owned(),
        capabilities: vec!["clinician".into()],
        ..relay_proto::availability::UpsertTeamRequest::default()
    }
}

/// Polls one service's `grpc.health.v1` every 20 ms and records each change of SERVING.
pub struct HealthMonitor {
    changes: Arc<Mutex<Vec<(Instant, bool)>>>,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    /// Starts polling `endpoint` (`http://ADDR`).
    ///
    /// # Panics
    /// When the endpoint is not a URI.
    #[must_use]
    pub fn start(endpoint: &str) -> Self {
        let channel = Channel::from_shared(endpoint.to_owned())
            .expect("endpoint")
            .connect_lazy();
        let mut client = HealthClient::new(channel);
        let changes: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
        let log = changes.clone();
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(Duration::from_millis(500));
                let serving = client
                    .check(request)
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
                if last != Some(serving) {
                    log.lock().expect("lock").push((Instant::now(), serving));
                    last = Some(serving);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { changes, task }
    }

    /// How long after `since` the service was first seen with `serving` (`None`: not yet).
    ///
    /// # Panics
    /// When the lock is poisoned.
    #[must_use]
    pub fn first_after(&self, since: Instant, serving: bool) -> Option<Duration> {
        self.changes
            .lock()
            .expect("lock")
            .iter()
            .find(|(at, s)| *at >= since && *s == serving)
            .map(|(at, _)| at.duration_since(since))
    }

    /// Whether the last state seen was SERVING.
    ///
    /// # Panics
    /// When the lock is poisoned.
    #[must_use]
    pub fn serving(&self) -> bool {
        self.changes
            .lock()
            .expect("lock")
            .last()
            .is_some_and(|(_, s)| *s)
    }

    /// Waits until the service is seen with `serving` after `since`, at most `limit`; how long
    /// after `since` it was.
    pub async fn wait_for(
        &self,
        since: Instant,
        serving: bool,
        limit: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(after) = self.first_after(since, serving) {
                return Some(after);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One probe call: when it started, how long it took, what it answered.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// When the call was sent.
    pub started: Instant,
    /// How long until its answer.
    pub elapsed: Duration,
    /// Its code (`Ok` for success).
    pub code: Code,
}

impl Outcome {
    /// When the answer came.
    #[must_use]
    pub fn ended(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// Calls one RPC in a loop (a pause of 50 ms between calls) and keeps every outcome.
pub struct Probe {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    running: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Probe {
    /// Starts calling `call(n)` for n = 1, 2, ...; it returns the call's code.
    pub fn start<F, Fut>(mut call: F) -> Self
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = Code> + Send,
    {
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let (log, go) = (outcomes.clone(), running.clone());
        let task = tokio::spawn(async move {
            let mut n = 0;
            while go.load(Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let code = call(n).await;
                log.lock().expect("lock").push(Outcome {
                    started,
                    elapsed: started.elapsed(),
                    code,
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            outcomes,
            running,
            task,
        }
    }

    /// Stops after the call in flight and returns every outcome.
    ///
    /// # Panics
    /// When the probe task panicked.
    pub async fn stop(self) -> Vec<Outcome> {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.expect("probe task");
        std::mem::take(&mut *self.outcomes.lock().expect("lock"))
    }
}

/// The code of a call's result.
pub fn code_of<T>(result: &Result<T, tonic::Status>) -> Code {
    result
        .as_ref()
        .map_or_else(tonic::Status::code, |_| Code::Ok)
}

/// The `q` quantile (0..=1) of `values` (nearest rank); zero when empty.
#[must_use]
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `p50 / p99 / max` of `values` in milliseconds, for a report line.
#[must_use]
pub fn spread(values: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        ms(quantile(values, 0.5)),
        ms(quantile(values, 0.99)),
        ms(quantile(values, 1.0)),
        values.len()
    )
}

/// The resident memory (`VmRSS`) of process `pid`, in kB.
///
/// # Panics
/// When `/proc/<pid>/status` cannot be read.
#[must_use]
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
