//! AssignTeam latency and throughput with 10,000 teams in one region, against the floor of the
//! same primitives from bare clients, measured in the same run:
//! - RECOMMEND (rank 10,000 teams, record the incident) vs a loopback tonic unary call (the
//!   health Check of the same server) and one committed PostgreSQL insert;
//! - AUTO_ASSIGN + ReleaseTeam cycles vs the same floor;
//! - the GEOSEARCH a Redis fleet adapter would send (10,000 members, nearest 50), for reference:
//!   this run's fleet is the in-process one, so it is not part of the measured path.
//!
//! `cargo bench -p relay-routing --bench assign` (needs PostgreSQL and Redis, as `make test`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use relay_proto::{
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::{
        AssignTeamRequest, ReleaseTeamRequest, routing_service_client::RoutingServiceClient,
    },
};
use relay_routing::{
    Application,
    clock::SystemClock,
    fleet::MemoryFleet,
    ranking::{Position, TeamSnapshot},
};
use relay_runtime::Config;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TEAMS: usize = 10_000;
const CONCURRENCY: usize = 16;
const CENTER: GeoPoint = GeoPoint {
    latitude: 44.05,
    longitude: -123.09,
};

struct Stats {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
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

    fn print(&self) {
        println!(
            "{:<34} n={:<6} p50={:>9.3} ms  p99={:>9.3} ms  {:>9.0}/s",
            self.name,
            self.latencies.len(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.per_second()
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
    }
}

fn teams(region: &str, fleet: &MemoryFleet) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(TEAMS);
    for index in 0..TEAMS {
        // A 100 x 100 grid about 30 km across.
        #[allow(clippy::cast_precision_loss)]
        let (row, col) = ((index / 100) as f64, (index % 100) as f64);
        let point = GeoPoint {
            latitude: CENTER.latitude - 0.135 + row * 0.0027,
            longitude: CENTER.longitude - 0.19 + col * 0.0038,
        };
        points.push((point.longitude, point.latitude));
        fleet.upsert_team(
            region,
            TeamSnapshot {
                team_id: format!("team-{index:05}"),
                display_name: format!("Team {index}"),
                status: TeamStatus::Available,
                capabilities: vec!["clinician".into()],
                position: Some(Position {
                    point,
                    recorded_at: Utc::now(),
                }),
                shift_ends_at: None,
            },
        );
    }
    points
}

fn request(i: usize, prefix: &str, region: &str, mode: AssignmentMode) -> AssignTeamRequest {
    #[allow(clippy::cast_precision_loss)]
    let jitter = (i % 97) as f64 * 0.001;
    AssignTeamRequest {
        request_id: format!("{prefix}-{i}"),
        incident_id: format!("{prefix}-inc-{i}"),
        region: region.to_owned(),
        location: Some(GeoPoint {
            latitude: CENTER.latitude + jitter,
            longitude: CENTER.longitude - jitter,
        }),
        required_capabilities: vec!["clinician".into()],
        preferred_capabilities: vec![],
        priority: 2,
        mode: mode.into(),
        expected_duration_seconds: None,
        cad_system: "bench".into(),
    }
}

fn ratio(a: &Stats, floor: &Stats) -> f64 {
    a.percentile(0.99).as_secs_f64() / floor.percentile(0.99).as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let database = relay_tests::TestDatabase::new().await;
    let region = relay_tests::unique_name("bench");
    let fleet = Arc::new(MemoryFleet::default());
    let points = teams(&region, &fleet);
    let config = Config::builder("routing")
        .set("listen", "127.0.0.1:0")
        .set("database_url", database.url())
        .set("routing.maintenance_interval_ms", 60_000)
        .build()
        .expect("config");
    Application::migrate(&config).await.expect("migrate");
    let app = Application::build_with_fleet(config, fleet.clone(), Arc::new(SystemClock))
        .await
        .expect("build");
    let endpoint = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

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
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(CONCURRENCY).unwrap_or(16))
        .connect(database.url())
        .await
        .expect("pg");
    sqlx::query("CREATE TABLE floor (id TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL)")
        .execute(&pg)
        .await
        .expect("table");
    let insert = {
        let pg = pg.clone();
        run("floor: PostgreSQL committed insert", 4_000, move |i| {
            let pg = pg.clone();
            async move {
                let start = Instant::now();
                sqlx::query("INSERT INTO floor (id, at) VALUES ($1, now())")
                    .bind(format!("row-{i}"))
                    .execute(&pg)
                    .await
                    .expect("insert");
                start.elapsed()
            }
        })
        .await
    };
    let redis = redis::Client::open(relay_tests::redis_url()).expect("redis");
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis up");
    let key = format!("{region}:geo");
    for chunk in points.chunks(1_000).enumerate() {
        let mut cmd = redis::cmd("GEOADD");
        cmd.arg(&key);
        for (offset, (lon, lat)) in chunk.1.iter().enumerate() {
            cmd.arg(*lon)
                .arg(*lat)
                .arg(format!("team-{}", chunk.0 * 1_000 + offset));
        }
        let _: i64 = cmd.query_async(&mut connection).await.expect("geoadd");
    }
    let geo = {
        let key = key.clone();
        run("reference: GEOSEARCH 10k, nearest 50", 4_000, move |_| {
            let mut connection = connection.clone();
            let key = key.clone();
            async move {
                let start = Instant::now();
                let _: Vec<String> = redis::cmd("GEOSEARCH")
                    .arg(&key)
                    .arg("FROMLONLAT")
                    .arg(CENTER.longitude)
                    .arg(CENTER.latitude)
                    .arg("BYRADIUS")
                    .arg(50)
                    .arg("km")
                    .arg("ASC")
                    .arg("COUNT")
                    .arg(50)
                    .query_async(&mut connection)
                    .await
                    .expect("geosearch");
                start.elapsed()
            }
        })
        .await
    };

    // Routing.
    let client = RoutingServiceClient::new(channel.clone());
    let recommend = {
        let client = client.clone();
        let region = region.clone();
        run("RECOMMEND (10k teams)", 2_000, move |i| {
            let mut client = client.clone();
            let request = request(i, "rec", &region, AssignmentMode::Recommend);
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
        let region = region.clone();
        run("AUTO_ASSIGN + ReleaseTeam cycle", 1_000, move |i| {
            let mut client = client.clone();
            let request = request(i, "auto", &region, AssignmentMode::AutoAssign);
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
                        request_id: format!("rel-{i}"),
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

    println!(
        "routing AssignTeam benchmark: {TEAMS} teams in one region, {CONCURRENCY} concurrent callers"
    );
    for stats in [&echo, &insert, &geo, &recommend, &cycle] {
        stats.print();
    }
    println!(
        "p99 ratio RECOMMEND / (unary + insert floor): {:.2}",
        recommend.percentile(0.99).as_secs_f64()
            / (echo.percentile(0.99) + insert.percentile(0.99)).as_secs_f64()
    );
    println!(
        "p99 ratio AUTO_ASSIGN+release / (2 x (unary + insert) floor): {:.2}",
        cycle.percentile(0.99).as_secs_f64()
            / (2.0 * (echo.percentile(0.99) + insert.percentile(0.99)).as_secs_f64())
    );
    println!(
        "p99 ratio RECOMMEND / unary: {:.2}",
        ratio(&recommend, &echo)
    );
    println!(
        "p99 ratio RECOMMEND / insert: {:.2}",
        ratio(&recommend, &insert)
    );

    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(
            &mut redis
                .get_multiplexed_async_connection()
                .await
                .expect("redis"),
        )
        .await
        .expect("del");
    pg.close().await;
    let _ = stop.send(());
    let _ = server.await;
}
