//! A generated metro directory (10,000 services here; the benchmark imports 100,000)
//! imports cleanly and searches return exactly what a brute-force scan of the generator's
//! own model says, across filters and pages.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

mod common;

use std::collections::BTreeSet;

use common::{Kind, backend, database, start_on};
use relay_directory::{
    generate::{self, GeneratedService, METRO_CENTER, TAXONOMY},
    import::{ImportOptions, import},
};
use relay_proto::{
    common::GeoPoint,
    directory::{SearchServicesRequest, directory_service_client::DirectoryServiceClient},
};
use tonic::transport::Channel;

/// Services in the generated directory of this test.
const SERVICES: usize = 10_000;

fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = relay_runtime::geo::EARTH_RADIUS_METERS;
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

async fn all_pages(
    client: &mut DirectoryServiceClient<Channel>,
    request: SearchServicesRequest,
) -> Vec<(String, f64, bool)> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_services(SearchServicesRequest {
                page_token: token,
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(
            page.results
                .into_iter()
                .map(|r| (r.service.unwrap().id, r.distance_meters, r.open_now)),
        );
        token = page.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

fn parent_is(model: &GeneratedService, code: &str) -> bool {
    let (_, term_code, _, parent, _) = TAXONOMY[model.term];
    term_code == code
        || TAXONOMY
            .iter()
            .any(|(id, c, ..)| *id == parent && *c == code)
}

/// On both backends: SQLite (`relay dev`) searches the same denormalized search rows.
async fn a_generated_metro_imports_and_searches_match_brute_force(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let model = generate::write_package(dir.path(), SERVICES, 7).unwrap();
    let backend = backend(&url).await;
    let options = ImportOptions {
        default_time_zone: generate::METRO_TIME_ZONE.into(),
    };
    let report = with_store!(backend, |store| import(
        &store,
        dir.path(),
        &options,
        &mut |_| {}
    )
    .await
    .unwrap());
    assert_eq!(report.rejected, 0, "{:?}", report.rejections.first());
    assert_eq!(
        report
            .files
            .iter()
            .find(|f| f.file == "services.csv")
            .unwrap()
            .stored,
        SERVICES as u64
    );
    let mut h = start_on(kind, url, db, tmp).await;

    // Category + near + open at Tuesday 2026-03-10 10:00 PDT (17:00Z), 3 km, parent code BH.
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-10T17:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let center = (METRO_CENTER.0 + 0.01, METRO_CENTER.1 - 0.02);
    let point = Some(GeoPoint {
        latitude: center.0,
        longitude: center.1,
    });
    let got = all_pages(
        &mut h.client,
        SearchServicesRequest {
            location: point,
            radius_meters: 3000.0,
            taxonomy_codes: vec!["BH".into()],
            open_at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: 0,
            }),
            page_size: 40,
            ..Default::default()
        },
    )
    .await;
    let mut want: Vec<(f64, String)> = model
        .iter()
        .filter(|m| parent_is(m, "BH") && m.hours.open_at(at))
        .map(|m| (haversine(center, m.point), m.id.clone()))
        .filter(|(d, _)| *d <= 3000.0)
        .collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    assert!(
        want.len() > 20,
        "the query should have a few pages of results: {}",
        want.len()
    );
    assert_eq!(
        got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        want.iter().map(|w| w.1.clone()).collect::<Vec<_>>()
    );
    for ((_, distance, open), (expected, _)) in got.iter().zip(&want) {
        assert!(*open);
        assert!(
            (distance - expected).abs() < 1.0,
            "{distance} vs {expected}"
        );
    }

    // Text + near: "youth shelter" within 5 km.
    let got: BTreeSet<String> = all_pages(
        &mut h.client,
        SearchServicesRequest {
            query: "youth shelter".into(),
            location: point,
            radius_meters: 5000.0,
            page_size: 500,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|g| g.0)
    .collect();
    let want: BTreeSet<String> = model
        .iter()
        .filter(|m| {
            m.name.contains("Youth")
                && TAXONOMY[m.term].1 == "BH-1800"
                && haversine(center, m.point) <= 5000.0
        })
        .map(|m| m.id.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // Language + near.
    let got: BTreeSet<String> = all_pages(
        &mut h.client,
        SearchServicesRequest {
            languages: vec!["vi".into()],
            location: point,
            radius_meters: 4000.0,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|g| g.0)
    .collect();
    let want: BTreeSet<String> = model
        .iter()
        .filter(|m| m.languages.contains(&"vi") && haversine(center, m.point) <= 4000.0)
        .map(|m| m.id.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

both!(a_generated_metro_imports_and_searches_match_brute_force);
