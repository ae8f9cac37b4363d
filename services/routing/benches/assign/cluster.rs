//! RECOMMEND with regions on the three primaries of a Redis Cluster (started by the bench,
//! three primaries with a replica each) against the same regions on one Redis server (started
//! the same way, so neither shares the machine's Redis with other work), measured in the same
//! run: routing in process on each, the same teams in each, the same requests spread over the
//! three regions. Five runs alternate the two; each run's throughput and p99 ratio (cluster /
//! one server) are printed, then their median and spread.
//!
//! On one machine the cluster's three primaries share its cores with everything else, so the
//! ratio measures what the cluster client costs, not what three machines would add.

use std::{sync::Arc, time::Duration};

use relay_fleet::{Keyspace, RedisTeamStore};
use relay_proto::{common::AssignmentMode, routing::routing_service_client::RoutingServiceClient};
use relay_runtime::redis_link::RedisTarget;
use relay_tests::{TestDatabase, redis_cluster::RedisCluster, redis_server::RedisServer};

use super::{Stats, load_teams, request, run, start_routing};

/// Teams per region (three regions).
const TEAMS_PER_REGION: usize = 1_000;
/// RECOMMENDs per run and backend.
const OPERATIONS: usize = 5_000;
/// Runs (each measures both backends in turn).
const RUNS: usize = 5;

/// A routing service on `redis_url` with the teams loaded, and its channel.
struct Routing {
    channel: tonic::transport::Channel,
    stop: tokio::sync::oneshot::Sender<()>,
    _database: TestDatabase,
}

async fn routing_on(redis_url: &str, regions: &[String]) -> Routing {
    let database = TestDatabase::new().await;
    let prefix = relay_tests::unique_name("bench_cluster");
    let target = RedisTarget::open(redis_url, false).expect("redis url");
    let store = RedisTeamStore::new(
        target,
        Keyspace::new(prefix.clone()),
        Duration::from_secs(3600),
    )
    .expect("store");
    for region in regions {
        load_teams(&store, region, TEAMS_PER_REGION).await;
    }
    let (channel, stop, _) = start_routing(redis_url, database.url(), &prefix).await;
    Routing {
        channel,
        stop,
        _database: database,
    }
}

async fn recommend(
    name: &'static str,
    routing: &Routing,
    regions: &[String],
    run_: usize,
) -> Stats {
    let client = RoutingServiceClient::new(routing.channel.clone());
    let regions = Arc::new(regions.to_vec());
    run(name, OPERATIONS, move |i| {
        let mut client = client.clone();
        let region = &regions[i % regions.len()];
        let request = request(i, &format!("c{run_}"), region, AssignmentMode::Recommend);
        async move {
            let start = std::time::Instant::now();
            client.assign_team(request).await.expect("recommend");
            start.elapsed()
        }
    })
    .await
}

pub(super) fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// The comparison `-- cluster` runs.
pub async fn compare() {
    let cluster = RedisCluster::start().await;
    let single = RedisServer::start(None).await;
    let regions = cluster
        .regions_on_distinct_primaries(&relay_tests::unique_name("r"), 3)
        .await;
    assert_eq!(regions.len(), 3, "regions on three primaries");
    let on_cluster = routing_on(&cluster.urls(), &regions).await;
    let on_single = routing_on(&single.url(), &regions).await;
    let (mut throughput, mut p99) = (Vec::new(), Vec::new());
    for run_ in 1..=RUNS {
        let one = recommend("RECOMMEND, one Redis", &on_single, &regions, run_).await;
        let three = recommend("RECOMMEND, cluster of 3", &on_cluster, &regions, run_).await;
        println!(
            "run {run_}: {TEAMS_PER_REGION} teams in each of 3 regions, {} concurrent callers",
            super::CONCURRENCY
        );
        one.print();
        three.print();
        let (t, p) = (
            three.per_second() / one.per_second(),
            three.percentile(0.99).as_secs_f64() / one.percentile(0.99).as_secs_f64(),
        );
        println!("run {run_}: cluster / one Redis: throughput {t:.2}, p99 {p:.2}");
        throughput.push(t);
        p99.push(p);
    }
    let (t, t_low, t_high) = median_and_spread(throughput);
    let (p, p_low, p_high) = median_and_spread(p99);
    println!(
        "median of {RUNS} runs, cluster of 3 primaries / one Redis: RECOMMEND throughput \
         {t:.2} (spread {t_low:.2}..{t_high:.2}), p99 {p:.2} (spread {p_low:.2}..{p_high:.2})"
    );
    for routing in [on_cluster, on_single] {
        let _ = routing.stop.send(());
    }
}
