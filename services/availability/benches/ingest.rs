//! `cargo bench -p relay-availability --bench ingest` (run by `make bench`): StreamLocations
//! ingestion against the machine's real Redis, and in the same run the raw rate of pipelined
//! `GEOADD` + `HSET` from a bare redis client for the same updates, with the ratio.
//!
//! The service runs in this process (as in the API tests) with its own database and key
//! prefix; client and server share the machine's cores, as an AVL feed on the same host would.
//! Keys are deleted afterwards (never FLUSHALL: the server is shared).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use relay_availability::Application;
use relay_proto::{
    availability::{
        SetTeamStatusRequest, StreamLocationsRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
};
use relay_runtime::clock::SystemClock;
use relay_runtime::{Config, validate::to_timestamp};
use tonic::transport::Channel;

const TEAMS: usize = 1_000;
const UPDATES: usize = 200_000;
const STREAMS: usize = 4;
const PIPELINE: usize = 256;
const REGION: &str = "bench";

fn position(update: usize) -> (f64, f64) {
    let team = update % TEAMS;
    let round = update / TEAMS;
    (
        44.0 + (team as f64) * 0.0005 + (round as f64) * 0.000_01,
        -123.0 + (team as f64) * 0.0003,
    )
}

fn messages(stream: usize, base: chrono::DateTime<Utc>) -> Vec<StreamLocationsRequest> {
    (0..UPDATES)
        .filter(|update| update % STREAMS == stream)
        .map(|update| {
            let (latitude, longitude) = position(update);
            let round = i64::try_from(update / TEAMS).unwrap_or(0);
            StreamLocationsRequest {
                team_id: format!("team-{:04}", update % TEAMS),
                location: Some(GeoPoint {
                    latitude,
                    longitude,
                }),
                recorded_at: Some(to_timestamp(base + chrono::Duration::milliseconds(round))),
                heading_degrees: Some(90.0),
                speed_meters_per_second: Some(8.0),
                accuracy_meters: Some(4.0),
            }
        })
        .collect()
}

async fn service_rate(client: &AvailabilityServiceClient<Channel>) -> f64 {
    let base = Utc::now() - chrono::Duration::minutes(10);
    let batches: Vec<Vec<StreamLocationsRequest>> =
        (0..STREAMS).map(|s| messages(s, base)).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for batch in batches {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            // The server answers early when a stream reaches its maximum age: resend the rest
            // on a new stream, as the contract tells feeds to.
            let mut sent = 0;
            let mut accepted = 0;
            while sent < batch.len() {
                let summary = client
                    .stream_locations(tokio_stream::iter(batch[sent..].to_vec()))
                    .await
                    .expect("stream")
                    .into_inner();
                assert_eq!(
                    summary.rejected_count,
                    0,
                    "{:?}",
                    summary.rejections.first()
                );
                accepted += summary.accepted_count;
                sent += usize::try_from(summary.accepted_count + summary.stale_count).unwrap_or(0);
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.expect("task");
    }
    let elapsed = started.elapsed();
    assert_eq!(usize::try_from(accepted).unwrap_or(0), UPDATES);
    UPDATES as f64 / elapsed.as_secs_f64()
}

async fn raw_rate(prefix: &str) -> f64 {
    let client = redis::Client::open(relay_tests::redis_url()).expect("url");
    let geo = format!("{prefix}:{{raw}}:available");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..STREAMS {
        let client = client.clone();
        let geo = geo.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let updates: Vec<usize> = (0..UPDATES).filter(|u| u % STREAMS == stream).collect();
            for chunk in updates.chunks(PIPELINE) {
                let mut pipe = redis::pipe();
                for &update in chunk {
                    let (lat, lon) = position(update);
                    let team = format!("team-{:04}", update % TEAMS);
                    pipe.cmd("GEOADD")
                        .arg(&geo)
                        .arg(lon)
                        .arg(lat)
                        .arg(&team)
                        .ignore();
                    pipe.cmd("HSET")
                        .arg(format!("{prefix}:{{raw}}:team:{team}"))
                        .arg("lat")
                        .arg(lat)
                        .arg("lon")
                        .arg(lon)
                        .arg("loc_at")
                        .arg(update)
                        .ignore();
                }
                let (): () = pipe.query_async(&mut connection).await.expect("pipeline");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    UPDATES as f64 / started.elapsed().as_secs_f64()
}

async fn setup(client: &mut AvailabilityServiceClient<Channel>) {
    for team in 0..TEAMS {
        let team_id = format!("team-{team:04}");
        client
            .upsert_team(UpsertTeamRequest {
                request_id: format!("bench-upsert-{team}"),
                team_id: team_id.clone(),
                display_name: team_id.clone(),
                region: REGION.into(),
                capabilities: vec!["emt".into()],
                shift_ends_at: None,
                expected_revision: 0,
            })
            .await
            .expect("upsert");
        client
            .set_team_status(SetTeamStatusRequest {
                request_id: format!("bench-status-{team}"),
                team_id,
                status: TeamStatus::Available as i32,
                incident_id: String::new(),
                expected_revision: 0,
            })
            .await
            .expect("available");
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let database = relay_tests::TestDatabase::new().await;
        let prefix = relay_tests::unique_name("bench");
        let config = Config::builder("availability")
.set("insecure_dev", true)
            .set("listen", "127.0.0.1:0")
            .set("database_url", database.url())
            .set("redis_url", relay_tests::redis_url())
            .set("availability.key_prefix", prefix.as_str())
            .set("server.readiness_interval_ms", 50)
            .build()
            .expect("config");
        let app = Application::build_with_clock(config, Arc::new(SystemClock))
            .await
            .expect("build");
        let endpoint = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect_lazy();
        let client_channel = channel.clone();
        let mut client = AvailabilityServiceClient::new(channel);
        // Wait until health says SERVING: migrations applied, roster loaded.
        let mut health = tonic_health::pb::health_client::HealthClient::new(client_channel.clone());
        for _ in 0..400 {
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        setup(&mut client).await;

        // Warm up both paths once (connections, script cache), then measure.
        let _ = raw_rate(&prefix).await;
        let service = service_rate(&client).await;
        let raw = raw_rate(&prefix).await;
        println!("availability ingest: {UPDATES} updates for {TEAMS} teams over {STREAMS} streams");
        println!(
            "  StreamLocations (gRPC, a script call per chunk, event per update): {service:>10.0} updates/s"
        );
        println!(
            "  raw pipelined GEOADD+HSET, bare redis client:             {raw:>10.0} updates/s"
        );
        println!("  ratio: {:.2}", service / raw);

        let _ = stop.send(());
        let _ = server.await;
        relay_tests::redis_delete_prefix(&prefix).await;
    });
}
