//! SubmitIncident end to end (validation, durable commit, triage, routing's answer) at a
//! steady 200 calls/s against real PostgreSQL and a fake routing server that answers at once,
//! with a floor measured in the same run: one committed PostgreSQL insert through sqlx at the
//! same rate. Prints p50/p99 of both and their ratios. `make bench` runs it.
//!
//! `cargo bench -p relay-intake --bench submit -- security` measures instead SubmitIncident
//! with TLS and token checks on against plaintext without authentication, in the same run
//! (see [`security`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

#[path = "submit/security.rs"]
mod security;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use relay_tests::TestDatabase;
use sqlx::Connection;
use support::{FakeRouting, TestIntake, submission};

const RATE: u64 = 200;
const SECONDS: u64 = 15;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn open_loop<F, Fut>(calls: u64, mut call: F) -> Vec<Duration>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for n in 0..calls {
        ticker.tick().await;
        let future = call(n);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            future.await;
            start.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies.sort();
    latencies
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|arg| arg == "security") {
        runtime.block_on(security::compare());
        return;
    }
    runtime.block_on(async {
        let db = TestDatabase::new().await;
        // Floor: one committed insert through sqlx, same pool size, same rate.
        {
            let mut connection = sqlx::PgConnection::connect(db.url()).await.unwrap();
            sqlx::query("CREATE TABLE floor (id TEXT PRIMARY KEY, body BYTEA NOT NULL)")
                .execute(&mut connection)
                .await
                .unwrap();
            connection.close().await.unwrap();
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(db.url())
            .await
            .unwrap();
        let floor = open_loop(RATE * SECONDS, |n| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO floor (id, body) VALUES ($1, $2)")
                    .bind(format!("row-{n}"))
                    .bind(vec![0_u8; 600])
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        })
        .await;
        pool.close().await;

        let routing = FakeRouting::started().await;
        let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
        // Warm up connections.
        for n in 0..50 {
            app.client
                .clone()
                .submit_incident(submission(&format!("warm-{n}"), "WELFARE"))
                .await
                .unwrap();
        }
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let submit = open_loop(RATE * SECONDS, |n| {
            let mut client = app.client.clone();
            let failures = std::sync::Arc::clone(&failures);
            async move {
                let assigned = client
                    .submit_incident(submission(&format!("bench-{n}"), "WELFARE"))
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().routing)
                    .is_some_and(|r| r.state == relay_proto::intake::RoutingState::Assigned as i32);
                if !assigned {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
        app.stop().await;

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
        let (s50, s99) = (percentile(&submit, 0.5), percentile(&submit, 0.99));
        println!(
            "intake SubmitIncident end to end, {RATE} calls/s for {SECONDS} s ({} calls)",
            submit.len()
        );
        println!(
            "floor (one committed sqlx insert): p50 {:.2} ms, p99 {:.2} ms",
            ms(f50),
            ms(f99)
        );
        println!(
            "SubmitIncident:                    p50 {:.2} ms, p99 {:.2} ms",
            ms(s50),
            ms(s99)
        );
        println!(
            "ratio to floor:                    p50 {:.1}x, p99 {:.1}x; goal p99 < 20 ms: {}",
            ms(s50) / ms(f50),
            ms(s99) / ms(f99),
            if ms(s99) < 20.0 { "met" } else { "NOT met" }
        );
    });
}
