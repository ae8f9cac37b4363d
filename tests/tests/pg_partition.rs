//! Issue 18 (partition): when PostgreSQL goes silent (a network partition: packets dropped,
//! connections left open, nothing refused), each service's first call that needs the database
//! fails `UNAVAILABLE` within the per-operation bound (`database.query_timeout_ms`, 3 s) and a
//! small margin, not at its deadline; and each service answers again once the network heals.
//!
//! The four services reach PostgreSQL through a TCP proxy the test stalls (it keeps every
//! connection open and accepts new ones, but forwards no byte). Before the stall each service
//! has served a call from its pool, so the first call of the partition runs on an established
//! connection: the case sqlx alone does not bound (its acquire timeout covers only the wait
//! for a connection). The calls carry a deadline well past the bound, so a failure in time is
//! the bound's doing.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use relay_proto::{
    availability::availability_service_client::AvailabilityServiceClient,
    directory::{GetServiceRequest, directory_service_client::DirectoryServiceClient},
    intake::intake_service_client::IntakeServiceClient,
    routing::{GetAssignmentRequest, routing_service_client::RoutingServiceClient},
};
use relay_tests::{
    TestDatabase,
    outage::{self, code_of, lazy_channel, probe_submission, probe_team},
    proxy::{TcpProxy, socket_addr_of, url_via},
    suite::Suite,
    unique_name,
};
use tonic::{Code, transport::Channel};

/// The bound of one database operation: `database.query_timeout_ms`, default 3000.
const BOUND: Duration = Duration::from_secs(3);
/// What a caller may wait beyond the bound on a loaded machine (the same 3.5 s in all as
/// `pg_outage`'s promise).
const MARGIN: Duration = Duration::from_millis(500);
/// The deadline of each call: far enough past the bound that only the bound fails a call in
/// time (the server's own request timeout is 10 s).
const DEADLINE: Duration = Duration::from_secs(8);

type Call = Pin<Box<dyn Future<Output = Code> + Send>>;

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    outage::with_deadline(message, DEADLINE)
}

/// One RPC per service that needs PostgreSQL; `n` makes each call's ids its own.
#[derive(Clone)]
struct Callers {
    intake: IntakeServiceClient<Channel>,
    availability: AvailabilityServiceClient<Channel>,
    routing: RoutingServiceClient<Channel>,
    directory: DirectoryServiceClient<Channel>,
    cad: String,
    region: String,
}

impl Callers {
    fn new(suite: &Suite) -> Self {
        Self {
            intake: IntakeServiceClient::new(lazy_channel(&suite.intake.endpoint())),
            availability: AvailabilityServiceClient::new(lazy_channel(
                &suite.availability.endpoint(),
            )),
            routing: RoutingServiceClient::new(lazy_channel(&suite.routing.endpoint())),
            directory: DirectoryServiceClient::new(lazy_channel(&suite.directory.endpoint())),
            cad: unique_name("partition_cad"),
            region: unique_name("partition_region"),
        }
    }

    /// The four calls, by service name.
    fn calls(&self, n: u64) -> Vec<(&'static str, Call)> {
        let mut intake = self.intake.clone();
        let submit = probe_submission(&self.cad, &self.region, n);
        let mut availability = self.availability.clone();
        let upsert = probe_team(&self.region, n);
        let mut routing = self.routing.clone();
        let mut directory = self.directory.clone();
        vec![
            (
                "intake SubmitIncident",
                Box::pin(
                    async move { code_of(&intake.submit_incident(with_deadline(submit)).await) },
                ),
            ),
            (
                "availability UpsertTeam",
                Box::pin(
                    async move { code_of(&availability.upsert_team(with_deadline(upsert)).await) },
                ),
            ),
            (
                "routing GetAssignment",
                Box::pin(async move {
                    let request = GetAssignmentRequest {
                        assignment_id: uuid::Uuid::new_v4().to_string(),
                    };
                    code_of(&routing.get_assignment(with_deadline(request)).await)
                }),
            ),
            (
                "directory GetService",
                Box::pin(async move {
                    let request = GetServiceRequest {
                        service_id: uuid::Uuid::new_v4().to_string(),
                    };
                    code_of(&directory.get_service(with_deadline(request)).await)
                }),
            ),
        ]
    }
}

/// Whether a call was served: OK, or NOT_FOUND for the lookups of ids nobody has.
fn served(code: Code) -> bool {
    matches!(code, Code::Ok | Code::NotFound)
}

/// Runs the four calls at once; each one's code and how long it took.
async fn call_all(callers: &Callers, n: u64) -> Vec<(&'static str, Code, Duration)> {
    let tasks: Vec<_> = callers
        .calls(n)
        .into_iter()
        .map(|(name, call)| {
            tokio::spawn(async move {
                let started = Instant::now();
                let code = call.await;
                (name, code, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("call task"));
    }
    outcomes
}

/// Calls every service until each has served a call, within 30 s (after a start, or after the
/// network heals); returns how long that took.
async fn wait_until_served(callers: &Callers, first: u64, what: &str) -> Duration {
    let began = Instant::now();
    let deadline = began + Duration::from_secs(30);
    let mut n = first;
    let mut pending: Vec<&'static str> = vec![
        "intake SubmitIncident",
        "availability UpsertTeam",
        "routing GetAssignment",
        "directory GetService",
    ];
    while !pending.is_empty() {
        let outcomes = call_all(callers, n).await;
        n += 1;
        for (name, code, _) in outcomes {
            if served(code) {
                pending.retain(|p| *p != name);
            }
        }
        assert!(
            Instant::now() < deadline,
            "not served within 30 s {what}: {pending:?}"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    began.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fails_each_services_first_call_within_the_bound_and_heals() {
    let database = TestDatabase::new().await;
    let proxy = TcpProxy::start(socket_addr_of(database.url(), 5432)).await;
    let proxied = url_via(database.url(), proxy.addr());
    let suite = Suite::start_on(database, &[("RELAY_DATABASE_URL", proxied.as_str())], 1).await;
    let callers = Callers::new(&suite);
    // Each pool holds an established connection that has just served a call.
    wait_until_served(&callers, 1_000, "before the partition").await;

    proxy.stall();
    let outcomes = call_all(&callers, 2_000).await;
    for (name, code, elapsed) in &outcomes {
        eprintln!("partition: {name}: {code:?} after {elapsed:?}");
    }
    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|(_, code, elapsed)| *code != Code::Unavailable || *elapsed > BOUND + MARGIN)
        .map(|(name, code, elapsed)| format!("{name}: {code:?} after {elapsed:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "first calls of a partition not UNAVAILABLE within {:?}: {wrong:?}",
        BOUND + MARGIN
    );

    proxy.restore();
    let healed = wait_until_served(&callers, 3_000, "after the network healed").await;
    eprintln!("every service served again {healed:?} after the network healed");
    drop(proxy);
    suite.clean_up().await;
}
