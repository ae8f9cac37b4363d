//! AssignTeam latency and throughput with 10,000 teams in one region, on the production path
//! (the teams' Redis keyspace through relay-fleet's Redis store, the PostgreSQL record), against the
//! floor of the same primitives from bare clients, measured in the same run:
//! - a tonic unary call on loopback (the same server's health Check);
//! - the same `GEOSEARCH` routing sends (the region's AVAILABLE set, nearest 16 within 2 km,
//!   its first reach) from a bare
//!   redis client;
//! - one committed PostgreSQL insert (for AUTO_ASSIGN, which records the assignment).
//!
//! RECOMMEND's floor is unary + GEOSEARCH; an AUTO_ASSIGN + ReleaseTeam cycle's is twice
//! unary + GEOSEARCH + insert. Every phase also reports the machine CPU per operation, and the
//! other primitives of a RECOMMEND (key read, HMGETs of the teams found, SET) give the rate
//! these cores could reach at best. The whole sequence runs three rounds in turn (the shared
//! machine drifts between phases); the last line gives the median ratios.
//! `cargo bench -p relay-routing --bench assign` (needs PostgreSQL and Redis, as `make test`).
//!
//! `cargo bench -p relay-routing --bench assign -- cluster` measures instead RECOMMEND with
//! regions on the three primaries of a Redis Cluster against the same on one Redis server, in
//! the same run (see [`cluster`]).
//!
//! `cargo bench -p relay-routing --bench assign -- security` measures RECOMMEND with TLS and
//! token checks on against plaintext without authentication, in the same run (see
//! [`security`]).

#[path = "assign/cluster.rs"]
mod cluster;
#[path = "assign/security.rs"]
mod security;

use std::time::{Duration, Instant};

use chrono::Utc;
use relay_fleet::{
    Keyspace, LocationReport, RedisTeamStore, TeamStore,
    model::{Position as StorePosition, TeamDefinition},
    store::redis::SUMMARY_FIELDS,
};
use relay_proto::{
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::{
        AssignTeamRequest, ReleaseTeamRequest, routing_service_client::RoutingServiceClient,
    },
};
use relay_routing::Application;
use relay_runtime::Config;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The allocator the routing binary runs with (see its main.rs), so the benchmark measures
/// the same code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TEAMS: usize = 10_000;
const CONCURRENCY: usize = 16;
/// Every phase runs this many times in turn; the summary line gives the median ratios.
const ROUNDS: usize = 3;
const CENTER: GeoPoint = GeoPoint {
    latitude: 44.05,
    longitude: -123.09,
};

struct Stats {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time the whole machine spent (every process, from /proc/stat) during the run.
    busy: Duration,
}

/// CPU time the machine has spent not idle since boot, summed over its cores (Linux
/// /proc/stat, in clock ticks of 10 ms); zero where it cannot be read.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq (steal, time another guest ran, is not ours):
    // all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, n)| n)
        .sum();
    Duration::from_millis(busy * 10)
}

impl Stats {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.latencies.len() as f64;
        n / self.elapsed.as_secs_f64()
    }

    /// Machine CPU time per operation (every process: client, server, Redis, PostgreSQL).
    fn cpu_per_op(&self) -> Duration {
        self.busy.div_f64(self.latencies.len().max(1) as f64)
    }

    fn print(&self) {
        println!(
            "{:<34} n={:<6} p50={:>9.3} ms  p99={:>9.3} ms  {:>9.0}/s  cpu/op={:>6.0} us",
            self.name,
            self.latencies.len(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.per_second(),
            self.cpu_per_op().as_secs_f64() * 1e6
        );
    }
}

/// Runs `total` operations over `CONCURRENCY` workers; `op(i)` returns its own latency.
async fn run<F, Fut>(name: &'static str, total: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let start = Instant::now();
    let busy = machine_busy();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = worker;
                while i < total {
                    out.push(op(i).await);
                    i += CONCURRENCY;
                }
                out
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    Stats {
        name,
        latencies,
        elapsed: start.elapsed(),
        busy: machine_busy().saturating_sub(busy),
    }
}

/// Loads `count` teams of the region into availability's Redis keyspace through its store:
/// each on a 100 x 100 grid about 30 km across, AVAILABLE, with a fresh position.
async fn load_teams(store: &RedisTeamStore, region: &str, count: usize) {
    let now = Utc::now();
    let mut reports = Vec::with_capacity(count);
    for index in 0..count {
        #[allow(clippy::cast_precision_loss)]
        let (row, col) = ((index / 100) as f64, (index % 100) as f64);
        let team_id = format!("{region}-team-{index:05}");
        store
            .upsert_team(
                &TeamDefinition {
                    team_id: team_id.clone(),
                    display_name: format!("Team {index}"),
                    region: region.to_owned(),
                    capabilities: vec!["clinician".into()],
                    shift_ends_at: None,
                },
                None,
                now,
            )
            .await
            .expect("upsert");
        store
            .set_status(&team_id, TeamStatus::Available, "", None, now)
            .await
            .expect("available");
        reports.push(LocationReport {
            team_id,
            position: StorePosition {
                latitude: CENTER.latitude - 0.135 + row * 0.0027,
                longitude: CENTER.longitude - 0.19 + col * 0.0038,
            },
            recorded_at: now,
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
        });
    }
    for chunk in reports.chunks(500) {
        store
            .report_locations(chunk, Utc::now())
            .await
            .expect("positions");
    }
}

/// The call location of operation `i`: spread over the middle of the grid.
fn location(i: usize) -> GeoPoint {
    #[allow(clippy::cast_precision_loss)]
    let jitter = (i % 97) as f64 * 0.001;
    GeoPoint {
        latitude: CENTER.latitude + jitter,
        longitude: CENTER.longitude - jitter,
    }
}

fn request(i: usize, prefix: &str, region: &str, mode: AssignmentMode) -> AssignTeamRequest {
    AssignTeamRequest {
        request_id: format!("{prefix}-{i}"),
        incident_id: format!("{prefix}-inc-{i}"),
        region: region.to_owned(),
        location: Some(location(i)),
        required_capabilities: vec!["clinician".into()],
        preferred_capabilities: vec![],
        priority: 2,
        mode: mode.into(),
        expected_duration_seconds: None,
        cad_system: "bench".into(),
        cad_incident_id: String::new(),
    }
}

fn ratio(a: &Stats, floor: &Stats) -> f64 {
    a.percentile(0.99).as_secs_f64() / floor.percentile(0.99).as_secs_f64()
}

/// One round's measurements.
struct Round {
    echo: Stats,
    insert: Stats,
    geo: Stats,
    read: Stats,
    hashes: Stats,
    remember: Stats,
    recommend: Stats,
    cycle: Stats,
}

impl Round {
    fn recommend_ratio(&self) -> f64 {
        p99(&self.recommend) / (p99(&self.echo) + p99(&self.geo))
    }

    fn cycle_ratio(&self) -> f64 {
        p99(&self.cycle) / (2.0 * p99(&self.echo) + p99(&self.geo) + p99(&self.insert))
    }

    /// The machine CPU a RECOMMEND's primitives cost, each measured alone (client, server and
    /// Redis or PostgreSQL together), seconds.
    fn primitives(&self) -> f64 {
        [
            &self.echo,
            &self.geo,
            &self.read,
            &self.hashes,
            &self.remember,
        ]
        .iter()
        .map(|stats| stats.cpu_per_op().as_secs_f64())
        .sum()
    }

    /// If the primitives' costs add, no RECOMMEND rate on these cores can exceed
    /// cores / their sum.
    fn bound(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        #[allow(clippy::cast_precision_loss)]
        let cores = cores as f64;
        cores / self.primitives()
    }

    fn report(&self, round: usize) {
        println!(
            "round {round}: routing AssignTeam, {TEAMS} teams in one region, {CONCURRENCY} concurrent callers"
        );
        for stats in [
            &self.echo,
            &self.insert,
            &self.geo,
            &self.read,
            &self.hashes,
            &self.remember,
            &self.recommend,
            &self.cycle,
        ] {
            stats.print();
        }
        println!(
            "p99 ratio RECOMMEND / (unary + GEOSEARCH): {:.2} (goal <= 3); RECOMMEND throughput {:.0}/s (goal >= 5000)",
            self.recommend_ratio(),
            self.recommend.per_second()
        );
        println!(
            "RECOMMEND primitives (unary, GEOSEARCH, key read, HMGET x16, SET) cost {:.0} us of \
             machine CPU together; RECOMMEND cost {:.0} us ({:.2}x); at most {:.0}/s on these \
             cores, RECOMMEND reached {:.0}/s ({:.2} of it)",
            self.primitives() * 1e6,
            self.recommend.cpu_per_op().as_secs_f64() * 1e6,
            self.recommend.cpu_per_op().as_secs_f64() / self.primitives(),
            self.bound(),
            self.recommend.per_second(),
            self.recommend.per_second() / self.bound()
        );
        println!(
            "p99 ratio AUTO_ASSIGN+release / (2 x unary + GEOSEARCH + insert): {:.2} (goal <= 3)",
            self.cycle_ratio()
        );
        println!(
            "p99 ratios to single floors: RECOMMEND / unary {:.2}, RECOMMEND / GEOSEARCH {:.2}, \
             RECOMMEND / insert {:.2}",
            ratio(&self.recommend, &self.echo),
            ratio(&self.recommend, &self.geo),
            ratio(&self.recommend, &self.insert)
        );
    }
}

fn p99(stats: &Stats) -> f64 {
    stats.percentile(0.99).as_secs_f64()
}

/// The floors, the primitives and the two routing phases, once.
#[allow(clippy::too_many_lines)]
async fn measure(
    round: usize,
    channel: &tonic::transport::Channel,
    pg: &sqlx::PgPool,
    redis: &redis::Client,
    keys: &Keyspace,
    region: &str,
    prefix: &str,
) -> Round {
    // Floors.
    let health = HealthClient::new(channel.clone());
    let echo = run("floor: tonic unary (health Check)", 20_000, move |_| {
        let mut client = health.clone();
        async move {
            let start = Instant::now();
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("check");
            start.elapsed()
        }
    })
    .await;
    let insert = {
        let pg = pg.clone();
        run("floor: PostgreSQL committed insert", 4_000, move |i| {
            let pg = pg.clone();
            async move {
                let start = Instant::now();
                sqlx::query("INSERT INTO floor (id, at) VALUES ($1, now())")
                    .bind(format!("row-{round}-{i}"))
                    .execute(&pg)
                    .await
                    .expect("insert");
                start.elapsed()
            }
        })
        .await
    };
    let connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis up");
    let key = keys.available(region);
    let geo = {
        let key = key.clone();
        run("floor: GEOSEARCH nearest 16", 20_000, move |i| {
            let mut connection = connection.clone();
            let key = key.clone();
            async move {
                let start = Instant::now();
                let at = location(i);
                let _: Vec<(String, f64)> = redis::cmd("GEOSEARCH")
                    .arg(&key)
                    .arg("FROMLONLAT")
                    .arg(at.longitude)
                    .arg(at.latitude)
                    .arg("BYRADIUS")
                    .arg(2_005)
                    .arg("m")
                    .arg("ASC")
                    .arg("COUNT")
                    .arg(16)
                    .arg("WITHDIST")
                    .query_async(&mut connection)
                    .await
                    .expect("geosearch");
                start.elapsed()
            }
        })
        .await
    };

    // The other primitives a RECOMMEND is made of, for its throughput bound: the record's
    // one-row read (the remembered response, the incident, its assignment), the hashes of
    // the 16 teams found (one pipeline of HMGETs, the fields the store reads), and the
    // remembered recommendation (a SET with expiry).
    let read = {
        let pg = pg.clone();
        run("primitive: PostgreSQL key read", 20_000, move |i| {
            let pg = pg.clone();
            async move {
                let start = Instant::now();
                let _: Option<(String,)> = sqlx::query_as("SELECT id FROM floor WHERE id = $1")
                    .bind(format!("row-{round}-{}", i % 4_000))
                    .fetch_optional(&pg)
                    .await
                    .expect("read");
                start.elapsed()
            }
        })
        .await
    };
    let hashes = {
        let keys = keys.clone();
        let region = region.to_owned();
        let connection = redis
            .get_multiplexed_async_connection()
            .await
            .expect("redis up");
        run("primitive: HMGET of 16 teams", 20_000, move |i| {
            let mut connection = connection.clone();
            let team_keys: Vec<String> = (0..16)
                .map(|n| {
                    let team = format!("{region}-team-{:05}", (i * 16 + n) % TEAMS);
                    keys.team(&region, &team)
                })
                .collect();
            async move {
                let start = Instant::now();
                let mut pipe = redis::pipe();
                for key in &team_keys {
                    pipe.cmd("HMGET").arg(key).arg(&SUMMARY_FIELDS[..]);
                }
                let _: Vec<Vec<Option<String>>> =
                    pipe.query_async(&mut connection).await.expect("hmget");
                start.elapsed()
            }
        })
        .await
    };
    let remember = {
        let connection = redis
            .get_multiplexed_async_connection()
            .await
            .expect("redis up");
        let prefix = prefix.to_owned();
        run("primitive: SET with expiry", 20_000, move |i| {
            let mut connection = connection.clone();
            let key = format!("{prefix}:floor:{round}:{i}");
            async move {
                let start = Instant::now();
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg("x".repeat(200))
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut connection)
                    .await
                    .expect("set");
                start.elapsed()
            }
        })
        .await
    };

    // Routing.
    let client = RoutingServiceClient::new(channel.clone());
    let recommend = {
        let client = client.clone();
        let region = region.to_owned();
        run("RECOMMEND (10k teams)", 20_000, move |i| {
            let mut client = client.clone();
            let request = request(
                i,
                &format!("rec{round}"),
                &region,
                AssignmentMode::Recommend,
            );
            async move {
                let start = Instant::now();
                client.assign_team(request).await.expect("recommend");
                start.elapsed()
            }
        })
        .await
    };
    let cycle = {
        let client = client.clone();
        let region = region.to_owned();
        run("AUTO_ASSIGN + ReleaseTeam cycle", 3_000, move |i| {
            let mut client = client.clone();
            let request = request(
                i,
                &format!("auto{round}"),
                &region,
                AssignmentMode::AutoAssign,
            );
            async move {
                let start = Instant::now();
                let assigned = client
                    .assign_team(request)
                    .await
                    .expect("assign")
                    .into_inner()
                    .assignment
                    .expect("assigned");
                client
                    .release_team(ReleaseTeamRequest {
                        request_id: format!("rel{round}-{i}"),
                        assignment_id: assigned.assignment_id,
                        reason: String::new(),
                    })
                    .await
                    .expect("release");
                start.elapsed()
            }
        })
        .await
    };

    Round {
        echo,
        insert,
        geo,
        read,
        hashes,
        remember,
        recommend,
        cycle,
    }
}

/// Routing in process on `redis_url` (availability's keys under `prefix`) and `database_url`:
/// a channel to it, the sender that stops it, and its task. Plaintext without
/// authentication; see [`start_routing_with`].
async fn start_routing(
    redis_url: &str,
    database_url: &str,
    prefix: &str,
) -> (
    tonic::transport::Channel,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), relay_runtime::BoxError>>,
) {
    start_routing_with(redis_url, database_url, prefix, None).await
}

/// As [`start_routing`]; with `secure`, serving TLS with those files and checking tokens
/// (the channel then trusts their CA; its calls need a token).
async fn start_routing_with(
    redis_url: &str,
    database_url: &str,
    prefix: &str,
    secure: Option<&relay_runtime::security::pki::DevFiles>,
) -> (
    tonic::transport::Channel,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), relay_runtime::BoxError>>,
) {
    let mut builder = Config::builder("routing");
    let mut credentials = relay_runtime::client::Credentials::default();
    if let Some(files) = secure {
        builder = files.configure_server(builder, &["bench"]);
        let ca = std::fs::read(&files.ca).expect("CA");
        credentials = relay_runtime::client::Credentials::new(Some(ca), None).expect("TLS");
    }
    let config = builder
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", database_url)
        .set("redis_url", redis_url)
        .set("routing.key_prefix", prefix)
        .set("routing.maintenance_interval_ms", 60_000)
        .build()
        .expect("config");
    Application::migrate(&config).await.expect("migrate");
    let app = Application::build(config).await.expect("build");
    let endpoint = credentials.uri(&format!("http://{}", app.local_addr()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut endpoint = tonic::transport::Channel::from_shared(endpoint).expect("endpoint");
    if let Some(tls) = credentials.tls() {
        endpoint = endpoint.tls_config(tls).expect("tls");
    }
    let channel = endpoint.connect().await.expect("connect");
    (channel, stop, server)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|arg| arg == "cluster") {
        cluster::compare().await;
        return;
    }
    if std::env::args().any(|arg| arg == "security") {
        security::compare().await;
        return;
    }
    let database = relay_tests::TestDatabase::new().await;
    let region = relay_tests::unique_name("bench");
    let prefix = relay_tests::unique_name("bench_routing");
    let redis = redis::Client::open(relay_tests::redis_url()).expect("redis");
    let keys = Keyspace::new(prefix.clone());
    let store =
        RedisTeamStore::new(redis.clone(), keys.clone(), Duration::from_secs(3600)).expect("store");
    load_teams(&store, &region, TEAMS).await;
    let (channel, stop, server) =
        start_routing(&relay_tests::redis_url(), database.url(), &prefix).await;

    // Like the service's pool (relay-runtime), no ping before each acquire.
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(CONCURRENCY).unwrap_or(16))
        .test_before_acquire(false)
        .connect(database.url())
        .await
        .expect("pg");
    sqlx::query("CREATE TABLE floor (id TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL)")
        .execute(&pg)
        .await
        .expect("table");
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let measured = measure(round, &channel, &pg, &redis, &keys, &region, &prefix).await;
        measured.report(round);
        rounds.push(measured);
    }
    let median = |ratio: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(ratio).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "median of {ROUNDS} rounds: RECOMMEND p99 / (unary + GEOSEARCH) {:.2} (goal <= 3); \
         RECOMMEND {:.0}/s (goal >= 5000), {:.2} of its primitives' bound; \
         AUTO_ASSIGN+release p99 / (2 x unary + GEOSEARCH + insert) {:.2} (goal <= 3)",
        median(Round::recommend_ratio),
        median(|r| r.recommend.per_second()),
        median(|r| r.recommend.per_second() / r.bound()),
        median(Round::cycle_ratio)
    );

    relay_tests::redis_delete_prefix(&prefix).await;
    pg.close().await;
    let _ = stop.send(());
    let _ = server.await;
}
