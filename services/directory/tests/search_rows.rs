//! `relay dev` parity: SQLite keeps the same denormalized search rows as PostgreSQL (one per
//! ACTIVE service and location, with its point, time zone, term ids and schedules), built
//! on import and UpsertService, so a search reads one table on both.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Kind, active_service, backend, database, shared_hsds, start_on, upsert_service};
use relay_directory::import::{ImportOptions, import};
use relay_proto::directory::ServiceLocation;
use serde_json::Value;

/// One search row, comparable across backends: ids, name, point, zone, sorted term ids and
/// the schedules as JSON values.
type SearchRow = (
    String,
    String,
    String,
    Option<(f64, f64)>,
    String,
    Vec<String>,
    Value,
);

/// A search row as both backends' SQL returns it (term ids as a JSON array).
type RawRow = (
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    String,
    String,
    String,
);

async fn search_rows(url: &str) -> Vec<SearchRow> {
    let backend = backend(url).await;
    let rows: Vec<RawRow> = match backend {
        relay_directory::Backend::Postgres(store) => sqlx::query_as(
            "SELECT service_id, location_id, name, latitude, longitude, time_zone, \
                 array_to_json(term_ids)::text, schedules FROM search_rows",
        )
        .fetch_all(store.pool())
        .await
        .unwrap(),
        relay_directory::Backend::Sqlite(store) => sqlx::query_as(
            "SELECT service_id, location_id, name, latitude, longitude, time_zone, term_ids, \
                 schedules FROM search_rows",
        )
        .fetch_all(store.pool())
        .await
        .unwrap(),
    };
    let mut out: Vec<SearchRow> = rows
        .into_iter()
        .map(|(s, l, name, lat, lon, zone, terms, schedules)| {
            let mut terms: Vec<String> = serde_json::from_str(&terms).unwrap();
            terms.sort();
            (
                s,
                l,
                name,
                lat.zip(lon),
                zone,
                terms,
                serde_json::from_str(&schedules).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[tokio::test]
async fn sqlite_keeps_the_same_search_rows_as_postgres() {
    let mut rows = Vec::new();
    for kind in [Kind::Postgres, Kind::Sqlite] {
        let (url, db, dir) = database(kind).await;
        let store = backend(&url).await;
        let options = ImportOptions {
            default_time_zone: "America/Los_Angeles".into(),
        };
        for package in [
            shared_hsds(),
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/hsds-1.1-211"),
        ] {
            with_store!(store.clone(), |store| import(
                &store,
                &package,
                &options,
                &mut |_| {}
            )
            .await
            .unwrap());
        }
        // A write through the API rebuilds the rows of that service.
        let mut h = start_on(kind, url.clone(), db, dir).await;
        let location = ServiceLocation {
            location_id: "loc-new".into(),
            name: "New place".into(),
            point: Some(relay_proto::common::GeoPoint {
                latitude: 44.05,
                longitude: -123.09,
            }),
            time_zone: "America/Los_Angeles".into(),
            ..ServiceLocation::default()
        };
        upsert_service(
            &mut h,
            active_service("svc-new", "Warming center", vec![location]),
        )
        .await;
        let got = search_rows(&url).await;
        assert!(
            got.iter().any(|r| r.0 == "svc-new" && r.1 == "loc-new"),
            "{kind:?}"
        );
        assert!(
            got.iter()
                .any(|r| r.0 == "svc-shelter" && r.6.as_array().is_some_and(|a| !a.is_empty())),
            "{kind:?}: schedules kept"
        );
        rows.push(got);
        drop(h);
    }
    assert_eq!(rows[0], rows[1], "PostgreSQL and SQLite search rows differ");
}
