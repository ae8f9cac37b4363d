//! `make bench` for the directory: imports a generated metro directory (100,000 services by
//! default; `RELAY_BENCH_SERVICES` overrides) into a fresh PostgreSQL database and a fresh
//! SQLite file (`relay dev`; `RELAY_BENCH_BACKENDS=postgres` or `sqlite` runs one), then
//! measures SearchServices latency through gRPC for three typical query shapes, against a
//! baseline measured in the same run: a bare SQL query of the same shape sent through sqlx
//! (the candidate query alone on the `search_rows` table the service searches, ordered by
//! planar distance or text rank with a LIMIT, without exact ranking, opening hours or loading
//! the services). `RELAY_BENCH_ROUNDS` (default 1) repeats the measurement on the same data,
//! one table row per round, to show the spread.
//! Prints a Markdown table for docs/benchmarks.md.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use relay_directory::{
    Application, Backend,
    generate::{self, METRO_CENTER},
    import::{ImportOptions, import},
    store::DirectoryStore,
};
use relay_proto::{
    common::GeoPoint,
    directory::{SearchServicesRequest, directory_service_client::DirectoryServiceClient},
};
use relay_tests::TestDatabase;
use secrecy::SecretString;

const QUERIES: usize = 300;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

fn random_point(rng: &mut StdRng) -> (f64, f64) {
    let d = 20_000.0 * rng.random::<f64>().sqrt();
    let a = rng.random::<f64>() * std::f64::consts::TAU;
    (
        METRO_CENTER.0 + d * a.sin() / 111_320.0,
        METRO_CENTER.1 + d * a.cos() / (111_320.0 * METRO_CENTER.0.to_radians().cos()),
    )
}

fn bbox(p: (f64, f64), r: f64) -> (f64, f64, f64, f64) {
    let dlat = r / 111_195.0;
    let dlon = dlat / p.0.to_radians().cos();
    (p.0 - dlat, p.0 + dlat, p.1 - dlon, p.1 + dlon)
}

struct Shape {
    name: &'static str,
    request: fn((f64, f64), &prost_types::Timestamp) -> SearchServicesRequest,
    /// The bare SQL of the shape on PostgreSQL and on SQLite; `$1..$4` are the bounding box
    /// (min lat, max lat, min lon, max lon).
    baseline: [&'static str; 2],
    radius: f64,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "text + near + open now (\"youth shelter\", 5 km, open_at)",
        request: |p, at| SearchServicesRequest {
            query: "youth shelter".into(),
            location: Some(GeoPoint {
                latitude: p.0,
                longitude: p.1,
            }),
            radius_meters: 5000.0,
            open_at: Some(*at),
            ..SearchServicesRequest::default()
        },
        baseline: [
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude, r.schedules, ts_rank_cd(r.search_vector, q, 32) \
             FROM search_rows r CROSS JOIN websearch_to_tsquery('english', 'youth shelter') AS q \
             WHERE r.search_vector @@ q AND point(r.longitude, r.latitude) <@ box(point($3, $1), point($4, $2)) \
             ORDER BY 6 DESC LIMIT 50",
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude, r.schedules, f.score \
             FROM (SELECT service_id, -bm25(services_fts) AS score FROM services_fts WHERE services_fts MATCH '\"youth\" \"shelter\"') f \
             JOIN search_rows r ON r.service_id = f.service_id \
             WHERE r.latitude BETWEEN $1 AND $2 AND r.longitude BETWEEN $3 AND $4 ORDER BY 6 DESC LIMIT 50",
        ],
        radius: 5000.0,
    },
    Shape {
        name: "category + near (BH and descendants, 5 km)",
        request: |p, _| SearchServicesRequest {
            taxonomy_codes: vec!["BH".into()],
            location: Some(GeoPoint {
                latitude: p.0,
                longitude: p.1,
            }),
            radius_meters: 5000.0,
            ..SearchServicesRequest::default()
        },
        baseline: [
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude FROM search_rows r \
             WHERE point(r.longitude, r.latitude) <@ box(point($3, $1), point($4, $2)) \
             AND r.term_ids && ARRAY['tx-bh', 'tx-bh-shelter', 'tx-bh-food', 'tx-bh-meals'] \
             ORDER BY (r.latitude - ($1 + $2) / 2) ^ 2 + (r.longitude - ($3 + $4) / 2) ^ 2 LIMIT 50",
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude FROM search_rows r \
             WHERE r.latitude BETWEEN $1 AND $2 AND r.longitude BETWEEN $3 AND $4 \
             AND EXISTS (SELECT 1 FROM service_taxonomy st WHERE st.service_id = r.service_id \
             AND st.taxonomy_term_id IN ('tx-bh', 'tx-bh-shelter', 'tx-bh-food', 'tx-bh-meals')) \
             ORDER BY (r.latitude - ($1 + $2) / 2) * (r.latitude - ($1 + $2) / 2) + (r.longitude - ($3 + $4) / 2) * (r.longitude - ($3 + $4) / 2) LIMIT 50",
        ],
        radius: 5000.0,
    },
    Shape {
        name: "near only (3 km)",
        request: |p, _| SearchServicesRequest {
            location: Some(GeoPoint {
                latitude: p.0,
                longitude: p.1,
            }),
            radius_meters: 3000.0,
            ..SearchServicesRequest::default()
        },
        baseline: [
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude FROM search_rows r \
             WHERE point(r.longitude, r.latitude) <@ box(point($3, $1), point($4, $2)) \
             ORDER BY (r.latitude - ($1 + $2) / 2) ^ 2 + (r.longitude - ($3 + $4) / 2) ^ 2 LIMIT 50",
            "SELECT r.service_id, r.location_id, r.latitude, r.longitude FROM search_rows r \
             WHERE r.latitude BETWEEN $1 AND $2 AND r.longitude BETWEEN $3 AND $4 \
             ORDER BY (r.latitude - ($1 + $2) / 2) * (r.latitude - ($1 + $2) / 2) + (r.longitude - ($3 + $4) / 2) * (r.longitude - ($3 + $4) / 2) LIMIT 50",
        ],
        radius: 3000.0,
    },
];

/// Runs `baseline` with the bounding box bound, on the store's pool, and returns its time.
async fn bare_sql<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    sql: &str,
    (a, b, c, d): (f64, f64, f64, f64),
) -> Duration
where
    for<'q> f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
{
    let started = Instant::now();
    let rows = sqlx::query(sql)
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(d)
        .fetch_all(pool)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    std::hint::black_box(rows);
    elapsed
}

/// Imports the package in `dir` into `store`, serves it, and prints one table row per shape
/// and round.
async fn bench<S: DirectoryStore>(
    label: &str,
    url: &str,
    store: &S,
    dir: &std::path::Path,
    rounds: u64,
    after_import: impl AsyncFn(),
    baseline: impl AsyncFn(&str, (f64, f64, f64, f64)) -> Duration,
) {
    let options = ImportOptions {
        default_time_zone: generate::METRO_TIME_ZONE.into(),
    };
    let started = Instant::now();
    let report = import(store, dir, &options, &mut |_| {}).await.unwrap();
    let import_time = started.elapsed();
    assert_eq!(report.rejected, 0);
    after_import().await;
    println!(
        "{label}: import of {} rows: {:.1} s = {:.0} rows/s",
        report.rows,
        import_time.as_secs_f64(),
        report.rows as f64 / import_time.as_secs_f64()
    );
    let config = relay_runtime::Config::builder("directory")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", url.to_owned())
        .build()
        .unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut client = DirectoryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let open_at = chrono::DateTime::parse_from_rfc3339("2026-03-10T17:00:00Z").unwrap();
    let open_at = prost_types::Timestamp {
        seconds: open_at.timestamp(),
        nanos: 0,
    };
    println!();
    println!(
        "| backend | round | query shape | results/page (mean) | SearchServices p50 | p99 | bare SQL p50 | p99 | ratio p50 | ratio p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let which = usize::from(label == "sqlite");
    for round in 1..=rounds {
        for shape in &SHAPES {
            let mut rng = StdRng::seed_from_u64(9 + round);
            // Warm up both paths.
            for _ in 0..20 {
                let p = random_point(&mut rng);
                client
                    .search_services((shape.request)(p, &open_at))
                    .await
                    .unwrap();
                baseline(shape.baseline[which], bbox(p, shape.radius)).await;
            }
            let mut service_times = Vec::with_capacity(QUERIES);
            let mut sql_times = Vec::with_capacity(QUERIES);
            let mut results = 0;
            for _ in 0..QUERIES {
                let p = random_point(&mut rng);
                let started = Instant::now();
                let response = client
                    .search_services((shape.request)(p, &open_at))
                    .await
                    .unwrap()
                    .into_inner();
                service_times.push(started.elapsed());
                results += response.results.len();
                sql_times.push(baseline(shape.baseline[which], bbox(p, shape.radius)).await);
            }
            let (s50, s99) = (
                percentile(&mut service_times, 0.5),
                percentile(&mut service_times, 0.99),
            );
            let (b50, b99) = (
                percentile(&mut sql_times, 0.5),
                percentile(&mut sql_times, 0.99),
            );
            println!(
                "| {label} | {round} | {} | {:.1} | {s50:.2} ms | {s99:.2} ms | {b50:.2} ms | {b99:.2} ms | {:.2} | {:.2} |",
                shape.name,
                results as f64 / QUERIES as f64,
                s50 / b50,
                s99 / b99
            );
        }
    }
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::main]
async fn main() {
    let services: usize = std::env::var("RELAY_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: u64 = std::env::var("RELAY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let backends =
        std::env::var("RELAY_BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".into());
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    generate::write_package(dir.path(), services, 42).unwrap();
    println!(
        "directory benchmark: {services} services; generate: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if backends.contains("postgres") {
        let db = TestDatabase::new().await;
        let url = db.url().to_owned();
        let backend = Backend::on(
            &relay_directory::STORAGE
                .migrated(&SecretString::from(url.clone()), 8)
                .await
                .unwrap(),
        );
        let Backend::Postgres(store) = backend else {
            unreachable!("postgres url")
        };
        let pool = store.pool().clone();
        bench(
            "postgres",
            &url,
            &store,
            dir.path(),
            rounds,
            async || {
                sqlx::query("ANALYZE").execute(&pool).await.unwrap();
            },
            async |sql, b| bare_sql(&pool, sql, b).await,
        )
        .await;
    }
    if backends.contains("sqlite") {
        let file = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", file.path().join("directory.db").display());
        let backend = Backend::on(
            &relay_directory::STORAGE
                .migrated(&SecretString::from(url.clone()), 8)
                .await
                .unwrap(),
        );
        let Backend::Sqlite(store) = backend else {
            unreachable!("sqlite url")
        };
        let pool = store.pool().clone();
        // No ANALYZE: `relay dev` never runs one, so neither does this measurement.
        bench(
            "sqlite",
            &url,
            &store,
            dir.path(),
            rounds,
            async || {},
            async |sql, b| bare_sql(&pool, sql, b).await,
        )
        .await;
    }
}
