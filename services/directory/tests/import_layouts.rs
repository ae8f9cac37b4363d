//! Property: whatever the layout a package comes in (HSDS 1.x with a descriptor and `data/`,
//! 1.x without a descriptor, 2.0, 3.0; extracted or zipped; with or without a byte order mark
//! and CRLF line ends; weekdays and times in any of the shapes 211 exports use), what is
//! imported can be found again through the service's own code: by id, by text, near its
//! point, and open exactly when its schedule says.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod common;

use std::path::Path;

use chrono::{Duration, NaiveDate, TimeZone};
use common::{Kind, database, get, open_at, search_ids, start_on, zip_folder};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use relay_directory::import::{ImportOptions, import};
use relay_proto::{common::GeoPoint, directory::SearchServicesRequest};

/// The zone every generated location is in (given as the import's default).
const ZONE: chrono_tz::Tz = chrono_tz::America::Los_Angeles;

/// One word per service, found by text search in its name and nowhere else.
const WORDS: [&str; 5] = ["harbor", "meadow", "willow", "granite", "falcon"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// 1.x: `datapackage.json` with the template's singular names, CSVs in `data/`.
    V1Descriptor,
    /// 1.x: the CSVs alone, named as 1.x names its tables.
    V1Files,
    /// 2.0: descriptor at the root with plural names, RRULE `schedules.csv` without ids.
    V2,
    /// 3.0: descriptor with 3.0 names, `schedules.csv` with ids.
    V3,
}

#[derive(Debug, Clone)]
struct GenService {
    id: String,
    point: (f64, f64),
    /// 0 = Monday.
    weekday: u32,
    /// Minutes after local midnight; opens < closes <= 1440.
    opens: u32,
    closes: u32,
    /// How the 1.x weekday is written (0..4) and how times are written (0..4).
    weekday_form: usize,
    time_form: usize,
    /// 1.x: the schedule names its service_at_location (else its service and location).
    by_sal: bool,
}

#[derive(Debug, Clone)]
struct Package {
    layout: Layout,
    zipped: bool,
    bom: bool,
    crlf: bool,
    services: Vec<GenService>,
}

fn service(index: usize) -> impl Strategy<Value = GenService> {
    (
        "[a-z0-9]{1,6}",
        44.0..44.1_f64,
        -123.2..-123.0_f64,
        0..7_u32,
        0..46_u32,
        1..48_u32,
        0..4_usize,
        0..4_usize,
        any::<bool>(),
    )
        .prop_map(
            move |(suffix, lat, lon, weekday, opens, length, weekday_form, time_form, by_sal)| {
                let opens = opens * 30;
                GenService {
                    id: format!("s{index}-{suffix}"),
                    point: (lat, lon),
                    weekday,
                    opens,
                    closes: (opens + length * 30).min(1440),
                    weekday_form,
                    time_form,
                    by_sal,
                }
            },
        )
}

fn package() -> impl Strategy<Value = Package> {
    let layout = prop_oneof![
        Just(Layout::V1Descriptor),
        Just(Layout::V1Files),
        Just(Layout::V2),
        Just(Layout::V3),
    ];
    let services = (1..=WORDS.len()).prop_flat_map(|n| (0..n).map(service).collect::<Vec<_>>());
    (
        layout,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        services,
    )
        .prop_map(|(layout, zipped, bom, crlf, services)| Package {
            layout,
            zipped,
            bom,
            crlf,
            services,
        })
}

/// A time the way the chosen form writes it.
fn time_text(minutes: u32, form: usize) -> String {
    let (h, m) = (minutes / 60, minutes % 60);
    match form {
        0 => format!("{h:02}:{m:02}"),
        1 => format!("{h:02}{m:02}"),
        2 => format!("{h:02}:{m:02}:00"),
        _ => {
            // 12-hour clock: 24:00 is midnight, 12:00am.
            let h24 = h % 24;
            let twelve = if h24 % 12 == 0 { 12 } else { h24 % 12 };
            let meridiem = if h24 < 12 { "am" } else { "pm" };
            format!("{twelve}:{m:02}{meridiem}")
        }
    }
}

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn weekday_text(weekday: u32, form: usize) -> String {
    let name = DAYS[weekday as usize];
    match form {
        0 => name.to_owned(),
        1 => name[..3].to_ascii_lowercase(),
        2 => (weekday + 1).to_string(),
        _ => name.to_ascii_uppercase(),
    }
}

fn byday(weekday: u32) -> String {
    DAYS[weekday as usize][..2].to_ascii_uppercase()
}

/// Writes one CSV file, with the package's oddities.
fn table(package: &Package, dir: &Path, file: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut writer = csv::WriterBuilder::new()
        .terminator(if package.crlf {
            csv::Terminator::CRLF
        } else {
            csv::Terminator::Any(b'\n')
        })
        .from_writer(Vec::new());
    writer.write_record(header).unwrap();
    for row in rows {
        writer.write_record(row).unwrap();
    }
    let mut bytes = if package.bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    bytes.extend(writer.into_inner().unwrap());
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes `package` below `dir`; returns what to import.
#[allow(clippy::too_many_lines)]
fn write_package(package: &Package, dir: &Path) -> std::path::PathBuf {
    let root = dir.join("package");
    let s = &package.services;
    let (prefix, sal, schedules, addresses) = match package.layout {
        Layout::V1Descriptor => (
            "data/",
            "services_at_location.csv",
            "regular_schedules.csv",
            "physical_addresses.csv",
        ),
        Layout::V1Files => (
            "",
            "services_at_location.csv",
            "regular_schedules.csv",
            "physical_addresses.csv",
        ),
        Layout::V2 => (
            "",
            "services_at_location.csv",
            "schedules.csv",
            "physical_addresses.csv",
        ),
        Layout::V3 => (
            "",
            "service_at_location.csv",
            "schedules.csv",
            "addresses.csv",
        ),
    };
    let at = |file: &str| format!("{prefix}{file}");
    table(
        package,
        &root,
        &at("organizations.csv"),
        &["id", "name", "description"],
        &[vec!["org".into(), "Generated 211".into(), String::new()]],
    );
    table(
        package,
        &root,
        &at("services.csv"),
        &["id", "organization_id", "name", "description", "status"],
        &s.iter()
            .enumerate()
            .map(|(i, g)| {
                vec![
                    g.id.clone(),
                    "org".into(),
                    format!("Service {}", WORDS[i]),
                    "A generated service".into(),
                    // 1.x exports leave the status empty.
                    if matches!(package.layout, Layout::V1Descriptor | Layout::V1Files) {
                        String::new()
                    } else {
                        "active".into()
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    table(
        package,
        &root,
        &at("locations.csv"),
        &["id", "organization_id", "name", "latitude", "longitude"],
        &s.iter()
            .map(|g| {
                vec![
                    format!("l-{}", g.id),
                    "org".into(),
                    String::new(),
                    g.point.0.to_string(),
                    g.point.1.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    table(
        package,
        &root,
        &at(addresses),
        // Only the columns a small export fills in.
        &["id", "location_id", "address_1", "city"],
        &s.iter()
            .map(|g| {
                vec![
                    format!("a-{}", g.id),
                    format!("l-{}", g.id),
                    "1 Main St".into(),
                    "Eugene".into(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    table(
        package,
        &root,
        &at(sal),
        &["id", "service_id", "location_id"],
        &s.iter()
            .map(|g| vec![format!("sal-{}", g.id), g.id.clone(), format!("l-{}", g.id)])
            .collect::<Vec<_>>(),
    );
    let opens = |g: &GenService| time_text(g.opens, g.time_form);
    let closes = |g: &GenService| time_text(g.closes, g.time_form);
    match package.layout {
        Layout::V1Descriptor | Layout::V1Files => table(
            package,
            &root,
            &at(schedules),
            &[
                "service_id",
                "location_id",
                "service_at_location_id",
                "weekday",
                "opens_at",
                "closes_at",
            ],
            &s.iter()
                .map(|g| {
                    let (service, location, sal) = if g.by_sal {
                        (String::new(), String::new(), format!("sal-{}", g.id))
                    } else {
                        (g.id.clone(), format!("l-{}", g.id), String::new())
                    };
                    vec![
                        service,
                        location,
                        sal,
                        weekday_text(g.weekday, g.weekday_form),
                        opens(g),
                        closes(g),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        Layout::V2 | Layout::V3 => table(
            package,
            &root,
            &at(schedules),
            &[
                "id",
                "service_at_location_id",
                "freq",
                "byday",
                "opens_at",
                "closes_at",
                "timezone",
            ],
            &s.iter()
                .map(|g| {
                    vec![
                        // 2.0 exports leave schedule ids out; 3.0 has them.
                        if package.layout == Layout::V3 {
                            format!("sch-{}", g.id)
                        } else {
                            String::new()
                        },
                        format!("sal-{}", g.id),
                        "WEEKLY".into(),
                        byday(g.weekday),
                        opens(g),
                        closes(g),
                        if package.layout == Layout::V2 {
                            "America/Los_Angeles".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    let names: &[(&str, &str)] = match package.layout {
        Layout::V1Files => &[],
        Layout::V1Descriptor => &[
            ("organization", "organizations.csv"),
            ("service", "services.csv"),
            ("location", "locations.csv"),
            ("physical_address", "physical_addresses.csv"),
            ("service_at_location", "services_at_location.csv"),
            ("regular_schedule", "regular_schedules.csv"),
        ],
        Layout::V2 => &[
            ("organizations", "organizations.csv"),
            ("services", "services.csv"),
            ("locations", "locations.csv"),
            ("physical_addresses", "physical_addresses.csv"),
            ("services_at_location", "services_at_location.csv"),
            ("schedules", "schedules.csv"),
        ],
        Layout::V3 => &[
            ("organization", "organizations.csv"),
            ("service", "services.csv"),
            ("location", "locations.csv"),
            ("address", "addresses.csv"),
            ("service_at_location", "service_at_location.csv"),
            ("schedule", "schedules.csv"),
        ],
    };
    if !names.is_empty() {
        let resources: Vec<_> = names
            .iter()
            .map(|(name, file)| serde_json::json!({"name": name, "path": at(file)}))
            .collect();
        std::fs::write(
            root.join("datapackage.json"),
            serde_json::json!({"name": "generated", "resources": resources}).to_string(),
        )
        .unwrap();
    }
    if package.zipped {
        let zip_path = dir.join("package.zip");
        zip_folder(&root, &zip_path, "export");
        zip_path
    } else {
        root
    }
}

/// The instant of local wall-clock `minutes` on the generated service's weekday, in a week
/// without a daylight-saving change.
fn instant(weekday: u32, minutes: u32) -> String {
    let monday = NaiveDate::from_ymd_opt(2026, 2, 16).unwrap();
    let local = monday.and_hms_opt(0, 0, 0).unwrap()
        + Duration::days(i64::from(weekday))
        + Duration::minutes(i64::from(minutes));
    ZONE.from_local_datetime(&local)
        .single()
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339()
}

async fn check(kind: Kind, package: Package) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_package(&package, dir.path());
    let (url, db, tmp) = database(kind).await;
    let backend = common::backend(&url).await;
    let options = ImportOptions {
        default_time_zone: ZONE.name().into(),
    };
    let report = with_store!(backend, |store| import(
        &store,
        &path,
        &options,
        &mut |_| {}
    )
    .await)
    .unwrap();
    assert_eq!(report.rejections, [], "{package:#?}");
    let n = package.services.len() as u64;
    // One organization; per service a service, location, address, link and schedule.
    assert_eq!(report.stored, 1 + 5 * n, "{:#?}", report.files);
    assert!(report.files.iter().all(|f| f.rows == f.stored));
    let mut h = start_on(kind, url, db, tmp).await;
    for (i, g) in package.services.iter().enumerate() {
        // By id.
        let service = get(&mut h, &g.id).await;
        assert_eq!(service.name, format!("Service {}", WORDS[i]));
        assert_eq!(service.locations.len(), 1);
        let location = &service.locations[0];
        assert_eq!(location.location_id, format!("l-{}", g.id));
        assert_eq!(location.time_zone, ZONE.name());
        let schedule = &location.schedules[..];
        assert_eq!(schedule.len(), 1, "{package:#?}");
        assert_eq!(schedule[0].byday, byday(g.weekday));
        assert_eq!(schedule[0].opens_at, time_text(g.opens, 0));
        assert_eq!(schedule[0].closes_at, time_text(g.closes, 0));
        // By text: its word is in its name only.
        let found = search_ids(
            &mut h,
            SearchServicesRequest {
                query: WORDS[i].into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(found, std::slice::from_ref(&g.id));
        // Near its point.
        let near = search_ids(
            &mut h,
            SearchServicesRequest {
                location: Some(GeoPoint {
                    latitude: g.point.0,
                    longitude: g.point.1,
                }),
                radius_meters: 50.0,
                ..Default::default()
            },
        )
        .await;
        assert!(near.contains(&g.id), "{near:?}");
        // Open a minute after it opens and a minute before it closes; not a minute before
        // it opens (it has no other hours).
        for minute in [g.opens + 1, g.closes - 1] {
            let open = open_at(&mut h, &instant(g.weekday, minute)).await;
            assert!(open.contains(&g.id), "{minute} {package:#?}");
        }
        if g.opens > 0 {
            let open = open_at(&mut h, &instant(g.weekday, g.opens - 1)).await;
            assert!(!open.contains(&g.id), "{package:#?}");
        }
    }
}

fn run(kind: Kind, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    runner
        .run(&package(), |package| {
            runtime.block_on(check(kind, package));
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_layout_imports_findably_on_sqlite() {
    run(Kind::Sqlite, 24);
}

#[test]
fn every_layout_imports_findably_on_postgres() {
    run(Kind::Postgres, 12);
}
