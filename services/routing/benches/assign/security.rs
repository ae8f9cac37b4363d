//! RECOMMEND with TLS and token checks on against plaintext without authentication, in the
//! same run: two routing services in process on the same Redis keys (1,000 AVAILABLE teams of
//! one region) and the same PostgreSQL record, one serving TLS with `relay dev`'s kind of
//! files and checking a bearer token on every call (the JWT's ES256 signature, issuer,
//! audience, expiry, the scope from the descriptors, the per-principal rate limit), the
//! other plaintext with authentication off. Five runs alternate which goes first; each
//! prints both p50/p99 and the p99 ratio, then their median and spread. Goal: p99 ratio at
//! most 1.3.
//!
//! The token's subject gets the service class of rate limit, so the limit is checked on
//! every call without refusing any at these rates.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use relay_fleet::{Keyspace, RedisTeamStore};
use relay_proto::{common::AssignmentMode, routing::routing_service_client::RoutingServiceClient};
use relay_runtime::{
    client::{AuthChannel, Credentials},
    redis_link::RedisTarget,
    security::pki::DevFiles,
};
use relay_tests::{
    TestDatabase,
    bench::{report_ratios, report_run},
    unique_name,
};

use super::{load_teams, request, run, start_routing_with};

/// Teams in the region.
const TEAMS: usize = 1_000;
/// RECOMMENDs per run and setup.
const OPERATIONS: usize = 3_000;
/// Runs (each measures both setups, in alternating order).
const RUNS: usize = 5;

/// The latencies of [`OPERATIONS`] RECOMMENDs through `client`, and how many failed (a
/// loaded machine can make the record time out: counted and reported, not fatal).
async fn recommend(
    client: &RoutingServiceClient<AuthChannel>,
    region: &str,
    tag: &str,
) -> Vec<Duration> {
    let client = client.clone();
    let region = region.to_owned();
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&failures);
    let prefix = tag.to_owned();
    let latencies = run("RECOMMEND", OPERATIONS, move |i| {
        let mut client = client.clone();
        let failures = Arc::clone(&counted);
        let request = request(i, &prefix, &region, AssignmentMode::Recommend);
        async move {
            let start = Instant::now();
            if client.assign_team(request).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            start.elapsed()
        }
    })
    .await
    .latencies;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        println!("{tag}: {failed} of {OPERATIONS} RECOMMENDs failed (counted in the latencies)");
    }
    latencies
}

/// The comparison `-- security` runs.
pub async fn compare() {
    let database = TestDatabase::new().await;
    let region = unique_name("bench_security");
    let prefix = unique_name("bench_security");
    let redis_url = relay_tests::redis_url();
    let target = RedisTarget::open(&redis_url, false).expect("redis url");
    let store = RedisTeamStore::new(
        target,
        Keyspace::new(prefix.clone()),
        Duration::from_secs(3600),
    )
    .expect("store");
    load_teams(&store, &region, TEAMS).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DevFiles::ensure(dir.path()).expect("certificates and keys");
    let token = files.token("bench", 3600).expect("token");
    let ca = std::fs::read(&files.ca).expect("CA");
    let bearer = Credentials::new(Some(ca), Some(token)).expect("credentials");

    let (secure_channel, secure_stop, _) =
        start_routing_with(&redis_url, database.url(), &prefix, Some(&files)).await;
    let (plain_channel, plain_stop, _) =
        start_routing_with(&redis_url, database.url(), &prefix, None).await;
    let secure = RoutingServiceClient::new(bearer.intercept(secure_channel));
    let plain = RoutingServiceClient::new(Credentials::default().intercept(plain_channel));
    // Warm up both: connections, pools, the first token check.
    recommend(&secure, &region, "warm-s").await;
    recommend(&plain, &region, "warm-p").await;

    let mut ratios = Vec::with_capacity(RUNS);
    for run_ in 1..=RUNS {
        let (s_tag, p_tag) = (format!("s{run_}"), format!("p{run_}"));
        let (mut with, mut without) = if run_ % 2 == 1 {
            let with = recommend(&secure, &region, &s_tag).await;
            (with, recommend(&plain, &region, &p_tag).await)
        } else {
            let without = recommend(&plain, &region, &p_tag).await;
            (recommend(&secure, &region, &s_tag).await, without)
        };
        ratios.push(report_run(
            run_,
            &format!(
                "RECOMMEND, {TEAMS} teams, {} concurrent callers",
                super::CONCURRENCY
            ),
            ("TLS + token", &mut with),
            ("plaintext", &mut without),
        ));
    }
    report_ratios("RECOMMEND, TLS + token / plaintext", ratios, 1.3);
    relay_tests::redis_delete_prefix(&prefix).await;
    let _ = secure_stop.send(());
    let _ = plain_stop.send(());
}
