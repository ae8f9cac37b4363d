//! Issue 18, scale-out: availability and routing on a real Redis Cluster (three primaries, a
//! replica each, started by the test on local ports; see `relay_tests::redis_cluster`), as real
//! processes (`relay_tests::suite`) given every node in `RELAY_REDIS_URL`.
//!
//! - a script across two slots is refused by the cluster (CROSSSLOT), the guard that the
//!   store's conformance suite on the cluster (availability's `conformance.rs`) relies on;
//! - under load, a region's slot moves to another primary (`ASK` while it moves, `MOVED`
//!   after), and a region's primary is killed (its replica takes over): every guarantee holds;
//! - two routing replicas never dispatch a team twice with regions on all three primaries.
//!
//! The first and the last run in `make test` (about 8 s and 20 s on the 2-core machine); the
//! two under load take half a minute or more each and are part of `make chaos`.

use std::{collections::BTreeMap, time::Duration};

use redis::AsyncCommands;
use relay_proto::{
    availability::{
        ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::{
        AssignTeamRequest, ReleaseTeamRequest, routing_service_client::RoutingServiceClient,
    },
};
use relay_runtime::redis_link::RedisTarget;
use relay_tests::{
    chaos::{assignments, overlaps, transient},
    redis_cluster::RedisCluster,
    suite::Suite,
    unique_name,
};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;

/// A Lua script given keys of two regions is refused with CROSSSLOT by the real cluster, even
/// through the connection that splits pipelines by slot; and a key built inside a script
/// on another primary is refused too. (The guard the conformance suite on the cluster
/// depends on: were the cluster to accept these, a script across regions would go unseen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_touches_two_slots_is_refused() {
    let cluster = RedisCluster::start().await;
    let regions = cluster.regions_on_distinct_primaries("crossslot", 2).await;
    let target = RedisTarget::open(&cluster.urls(), true).expect("urls");
    let mut connection = target.shared().expect("connection");
    let (north, south) = (
        format!("relay:{{{}}}:teams", regions[0]),
        format!("relay:{{{}}}:teams", regions[1]),
    );
    let declared: redis::RedisResult<i64> = redis::Script::new(
        "redis.call('SADD', KEYS[1], 'a'); return redis.call('SADD', KEYS[2], 'a')",
    )
    .key(&north)
    .key(&south)
    .invoke_async(&mut connection)
    .await;
    let error = declared.expect_err("a script across two slots ran");
    assert_eq!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{error}"
    );
    // A key the script builds itself (here from an argument) on another primary. (Redis lets
    // a script reach an undeclared key whose slot the same node serves, so the scripts never
    // build key names: scripts.rs checks that.)
    let built: redis::RedisResult<i64> =
        redis::Script::new("return redis.call('SADD', ARGV[1], 'a')")
            .key(&north)
            .arg(&south)
            .invoke_async(&mut connection)
            .await;
    let error = built.expect_err("a script reached a key on another primary");
    assert!(error.to_string().contains("non local key"), "{error}");
    // Plain commands across regions, one pipeline: split by slot, answered in order.
    let _: () = connection.sadd(&north, "n").await.expect("sadd");
    let _: () = connection.sadd(&south, "s").await.expect("sadd");
    let (n, s): (Vec<String>, Vec<String>) = redis::pipe()
        .smembers(&north)
        .smembers(&south)
        .query_async(&mut connection)
        .await
        .expect("a pipeline across slots");
    assert_eq!((n, s), (vec!["n".to_owned()], vec!["s".to_owned()]));
}

/// The suite (availability, two routing replicas, intake, directory) on `cluster`.
async fn suite_on(cluster: &RedisCluster) -> Suite {
    let urls = cluster.urls();
    Suite::start_with(
        &[
            ("RELAY_REDIS_URL", urls.as_str()),
            ("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1"),
        ],
        2,
    )
    .await
}

fn here(index: usize) -> GeoPoint {
    #[allow(clippy::cast_precision_loss)]
    let step = (index % 10) as f64;
    GeoPoint {
        latitude: 44.04 + 0.002 * step,
        longitude: -123.10,
    }
}

/// Teams `<region>-t<n>`, AVAILABLE with a fresh position, in each region.
async fn teams_on_duty(availability: &str, regions: &[String], per_region: usize) {
    let mut client = AvailabilityServiceClient::connect(availability.to_owned())
        .await
        .expect("availability");
    for region in regions {
        for index in 0..per_region {
            let team_id = format!("{region}-t{index}");
            client
                .upsert_team(UpsertTeamRequest {
                    request_id: unique_name("upsert"),
                    team_id: team_id.clone(),
                    display_name: format!("Team {index}"),
                    region: region.clone(),
                    capabilities: vec!["clinician".into()],
                    ..UpsertTeamRequest::default()
                })
                .await
                .expect("upsert");
            client
                .set_team_status(SetTeamStatusRequest {
                    request_id: unique_name("status"),
                    team_id: team_id.clone(),
                    status: TeamStatus::Available.into(),
                    ..SetTeamStatusRequest::default()
                })
                .await
                .expect("on duty");
            client
                .report_location(ReportLocationRequest {
                    team_id,
                    location: Some(here(index)),
                    recorded_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                    ..ReportLocationRequest::default()
                })
                .await
                .expect("position");
        }
    }
}

/// AssignTeam, sent again while the answer is transient (as a CAD integration does).
async fn assign(
    client: &mut RoutingServiceClient<Channel>,
    request: &AssignTeamRequest,
) -> Option<relay_proto::routing::Assignment> {
    for attempt in 1..=20_u64 {
        match client.assign_team(request.clone()).await {
            Ok(response) => return response.into_inner().assignment,
            Err(status) if transient(status.code()) => {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(status) => panic!("AssignTeam {}: {status:?}", request.incident_id),
        }
    }
    panic!("AssignTeam {} kept failing", request.incident_id)
}

/// Two routing replicas take calls in three regions, one on each primary, concurrently;
/// every assignment is handed back on the other replica, so teams are claimed again and
/// again. A sampler watches routing's record throughout, and afterwards no team's
/// assignments overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_never_dispatch_twice_with_regions_on_every_primary() {
    const PER_REGION: usize = 8;
    const CALLS: usize = 300;
    let cluster = RedisCluster::start().await;
    let regions = cluster
        .regions_on_distinct_primaries(&unique_name("region"), 3)
        .await;
    assert_eq!(regions.len(), 3, "three regions on three primaries");
    let suite = suite_on(&cluster).await;
    teams_on_duty(&suite.availability.endpoint(), &regions, PER_REGION).await;
    let database = suite.database().url().to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (stop, database) = (stop.clone(), database.clone());
        tokio::spawn(async move {
            let mut record = PgConnection::connect(&database).await.expect("connect");
            let mut samples = 0_u32;
            while !stop.is_cancelled() {
                let doubled: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT team_id, count(*) FROM routing.assignments \
                     WHERE state = 'ACTIVE' GROUP BY team_id HAVING count(*) > 1",
                )
                .fetch_all(&mut record)
                .await
                .expect("sample");
                assert!(doubled.is_empty(), "double dispatch observed: {doubled:?}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    let replicas = [
        suite.routing.endpoint(),
        suite.routing_replicas[0].endpoint(),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..CALLS {
        let mut one = RoutingServiceClient::connect(replicas[index % 2].clone())
            .await
            .expect("routing");
        let mut other = RoutingServiceClient::connect(replicas[(index + 1) % 2].clone())
            .await
            .expect("routing");
        let request = AssignTeamRequest {
            request_id: unique_name("assign"),
            incident_id: format!("inc-{index:03}"),
            region: regions[index % 3].clone(),
            location: Some(here(index)),
            required_capabilities: vec!["clinician".into()],
            priority: 3,
            mode: AssignmentMode::AutoAssign.into(),
            cad_system: "cad-cluster".into(),
            ..AssignTeamRequest::default()
        };
        calls.spawn(async move {
            let Some(assignment) = assign(&mut one, &request).await else {
                return 0;
            };
            let released = other
                .release_team(ReleaseTeamRequest {
                    request_id: unique_name("release"),
                    assignment_id: assignment.assignment_id,
                    reason: "handed back".into(),
                })
                .await;
            assert!(
                released.is_ok()
                    || released
                        .as_ref()
                        .is_err_and(|s| s.code() == tonic::Code::FailedPrecondition),
                "{released:?}"
            );
            1
        });
    }
    let mut assigned = 0;
    while let Some(joined) = calls.join_next().await {
        assigned += joined.expect("a call");
    }
    stop.cancel();
    let samples = sampler.await.expect("sampler");
    assert!(samples > 0, "the sampler never ran");
    let intervals = assignments(&database).await;
    let overlapping = overlaps(&intervals);
    let mut by_region: BTreeMap<&str, usize> = BTreeMap::new();
    for interval in &intervals {
        let region = regions
            .iter()
            .find(|r| interval.team_id.starts_with(r.as_str()))
            .map_or("?", String::as_str);
        *by_region.entry(region).or_default() += 1;
    }
    eprintln!(
        "two routers on a cluster: {CALLS} calls, {assigned} assigned at once, {} \
         assignments recorded by region {by_region:?}, {samples} samples, {} overlapping",
        intervals.len(),
        overlapping.len()
    );
    assert!(overlapping.is_empty(), "{overlapping:#?}");
    assert!(
        by_region.len() == 3,
        "every region had assignments: {by_region:?}"
    );
}

/// Slower tests (half a minute or more each): `make chaos`.
#[cfg(feature = "chaos")]
mod under_load {
    use std::time::Instant;

    use relay_tests::chaos::{Load, Verdict, metric_sum};

    use super::*;

    /// Waits until the load has `more` calls acknowledged beyond now (at most a minute).
    async fn until_acknowledged(load: &Load, more: usize) {
        let target = load.acknowledged_so_far() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while load.acknowledged_so_far() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Claims refused by routing's record (fencing, team busy), over both replicas.
    async fn refused(suite: &Suite) -> (f64, f64) {
        let mut sum = (0.0, 0.0);
        for name in ["routing", "routing-1"] {
            let text = suite.scrape(name).await;
            sum.0 += metric_sum(
                &text,
                "relay_routing_claims_refused_total",
                "STALE_FENCING_TOKEN",
            );
            sum.1 += metric_sum(&text, "relay_routing_claims_refused_total", "TEAM_BUSY");
        }
        sum
    }

    async fn check(suite: &Suite, load: &mut Load, title: &str, began: Instant) {
        let verdict = Verdict::after(load, suite.database().url(), Duration::from_secs(120)).await;
        let (fenced, busy) = refused(suite).await;
        eprint!("{}", suite.warnings(40));
        verdict.report_and_check(title, began.elapsed().as_secs_f64(), fenced, busy);
    }

    /// The load's region's slot moves to another primary, a few keys at a time, while calls
    /// come in and teams clear them: clients meet `ASK` during the move and `MOVED` after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slot_moving_between_primaries_under_load_is_survived() {
        let began = Instant::now();
        let cluster = RedisCluster::start().await;
        let suite = suite_on(&cluster).await;
        let mut load = Load::on(&suite).await;
        until_acknowledged(&load, 10).await;
        let tag = format!("{{{}}}", load.region);
        let slot = cluster.slot(&tag).await;
        let from = cluster.primary_of(&tag).await;
        let to = *cluster
            .primaries()
            .await
            .keys()
            .find(|p| **p != from)
            .expect("another primary");
        let moved = cluster
            .migrate_slot(slot, from, to, Duration::from_millis(200))
            .await;
        assert_eq!(cluster.primary_of(&tag).await, to, "the slot did not move");
        eprintln!(
            "{:>5.1}s moved slot {slot} ({}, {moved} keys, 2 at a time) from :{from} to :{to} \
             under load",
            began.elapsed().as_secs_f64(),
            load.region
        );
        until_acknowledged(&load, 20).await;
        check(&suite, &mut load, "redis cluster slot migration", began).await;
    }

    /// The primary of the load's region is killed with SIGKILL; its replica takes over after
    /// `cluster-node-timeout` (2 s). The services keep their configuration: the cluster
    /// client finds the new primary by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_primary_failing_under_load_is_survived_without_double_dispatch() {
        let began = Instant::now();
        let mut cluster = RedisCluster::start().await;
        let suite = suite_on(&cluster).await;
        let mut load = Load::on(&suite).await;
        until_acknowledged(&load, 10).await;
        let tag = format!("{{{}}}", load.region);
        let primary = cluster.primary_of(&tag).await;
        cluster.kill(primary);
        let killed_at = Instant::now();
        cluster.wait_until_healthy().await;
        let promoted = cluster.primary_of(&tag).await;
        assert_ne!(promoted, primary);
        eprintln!(
            "{:>5.1}s killed primary :{primary} of {}; replica :{promoted} serving after {:.1}s",
            began.elapsed().as_secs_f64(),
            load.region,
            killed_at.elapsed().as_secs_f64()
        );
        until_acknowledged(&load, 20).await;
        check(&suite, &mut load, "redis cluster primary failover", began).await;
    }
}
