//! The program report over a large record: RELAY_REPORT_BENCH_INCIDENTS (1,000,000) synthetic
//! incidents with full timelines, spread over 2025, in a fresh PostgreSQL database; then the
//! report of the whole year (every incident), of one month, and of one region for the year,
//! each timed twice, with the plan PostgreSQL chose for the scan (EXPLAIN ANALYZE). The goal:
//! a year of 1,000,000 incidents in under 10 s. `make bench` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::time::Instant;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use prost::Message;
use relay_intake::{
    report::{self, ReportRequest},
    store::{IncidentStore, PostgresStore},
};
use relay_runtime::storage;
use relay_tests::TestDatabase;
use secrecy::SecretString;

const BATCH: u64 = 5_000;
const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

async fn load(pool: &sqlx::PgPool, count: u64, from: i64, to: i64) {
    let start = Instant::now();
    let mut first = 0;
    while first < count {
        let n = BATCH.min(count - first);
        let incidents: Vec<_> =
            relay_intake::synthetic::incidents(n, first, from, to, &REGIONS, 17).collect();
        let column = |f: &dyn Fn(&relay_proto::intake::Incident) -> String| -> Vec<String> {
            incidents.iter().map(|s| f(&s.incident)).collect()
        };
        let ints = |f: &dyn Fn(&relay_proto::intake::Incident) -> i64| -> Vec<i64> {
            incidents.iter().map(|s| f(&s.incident)).collect()
        };
        // The body as the store keeps it: without the personal fields.
        let bodies: Vec<Vec<u8>> = incidents
            .iter()
            .map(|s| {
                let mut body = s.incident.clone();
                body.narrative.clear();
                body.caller = None;
                body.encode_to_vec()
            })
            .collect();
        sqlx::query(
            "INSERT INTO incidents (incident_id, cad_system, cad_incident_id, region, state, \
             disposition, received_at, revision, body, routing_state, unserved_reason) \
             SELECT i, c, ci, r, s::int4, d::int4, ra, 1, b, 0, u::int4 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
             $7::int8[], $8::bytea[], $9::int8[]) AS t(i, c, ci, r, s, d, ra, b, u)",
        )
        .bind(column(&|i| i.incident_id.clone()))
        .bind(column(&|i| i.cad_system.clone()))
        .bind(column(&|i| i.cad_incident_id.clone()))
        .bind(column(&|i| i.region.clone()))
        .bind(ints(&|i| i64::from(i.state)))
        .bind(ints(&|i| {
            i64::from(i.triage.as_ref().map_or(0, |t| t.disposition))
        }))
        .bind(ints(&|i| {
            relay_intake::store::micros_of(i.received_at.as_ref())
        }))
        .bind(bodies)
        .bind(ints(&|i| {
            i64::from(i.timeline.as_ref().map_or(0, |t| t.first_unserved_reason))
        }))
        .execute(pool)
        .await
        .unwrap();
        first += n;
        if first % 100_000 == 0 {
            println!(
                "  loaded {first} incidents ({:.0} s)",
                start.elapsed().as_secs_f64()
            );
        }
    }
    sqlx::query("VACUUM ANALYZE incidents")
        .execute(pool)
        .await
        .unwrap();
    let size: (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('incidents'), (SELECT avg(length(body))::int8 FROM incidents)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    println!(
        "loaded {count} incidents in {:.0} s: table with indexes {:.0} MiB, body {} bytes on average",
        start.elapsed().as_secs_f64(),
        size.0 as f64 / 1_048_576.0,
        size.1
    );
}

async fn explain(pool: &sqlx::PgPool, request: &ReportRequest) {
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS) SELECT body FROM incidents WHERE received_at >= $1 \
         AND received_at < $2 AND ($3 = '' OR region = $3)",
    )
    .bind(request.from.timestamp_micros())
    .bind(request.to.timestamp_micros())
    .bind(&request.region)
    .fetch_all(pool)
    .await
    .unwrap();
    for line in plan {
        println!("    {line}");
    }
}

fn main() {
    let count: u64 = std::env::var("RELAY_REPORT_BENCH_INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = TestDatabase::new().await;
        let url = SecretString::from(db.url().to_owned());
        let pool = storage::postgres_pool(&url, relay_intake::SCHEMA, 4).unwrap();
        storage::migrate_postgres(&pool, relay_intake::SCHEMA, &relay_intake::MIGRATOR)
            .await
            .unwrap();
        let (from, to) = (time("2025-01-01T00:00:00Z"), time("2026-01-01T00:00:00Z"));
        load(&pool, count, from.timestamp_micros(), to.timestamp_micros()).await;
        let store = PostgresStore::new(pool.clone());
        let cases = [
            ("the year, every region", from, to, ""),
            (
                "one month (March), every region",
                time("2025-03-01T00:00:00Z"),
                time("2025-04-01T00:00:00Z"),
                "",
            ),
            ("the year, one region", from, to, "east"),
        ];
        let mut worst: f64 = 0.0;
        for (name, from, to, region) in cases {
            let request = ReportRequest {
                from,
                to,
                region: region.into(),
                time_zone: Tz::UTC,
            };
            println!("report of {name}:");
            explain(&pool, &request).await;
            for run in 1..=2 {
                let start = Instant::now();
                let report =
                    report::compute(&store as &dyn IncidentStore, request.clone(), Utc::now())
                        .await
                        .unwrap();
                let seconds = start.elapsed().as_secs_f64();
                if from == time("2025-01-01T00:00:00Z") && region.is_empty() {
                    worst = worst.max(seconds);
                }
                println!(
                    "  run {run}: {:.2} s, {} incidents, {} figures",
                    seconds,
                    report.headline("calls_received").unwrap().value,
                    report.figures.len()
                );
            }
        }
        println!(
            "report of {count} incidents: {worst:.2} s at worst (goal: under 10 s): {}",
            if worst < 10.0 { "met" } else { "NOT MET" }
        );
        pool.close().await;
    });
}
