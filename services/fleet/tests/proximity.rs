//! Property test: for random teams and query points, `find_available` (what FindAvailableTeams
//! serves) returns exactly the teams that a brute-force great-circle scan over every team
//! returns, in the same order (nearest first, ties by team_id), on both backends; and that
//! `nearest_available` (routing's bounded read) is an exact prefix of that scan with a
//! frontier no team it left out is nearer than.
//!
//! Positions come from a coarse grid around a center so that equal distances (ties) happen
//! often; statuses, capabilities and missing positions vary per team.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use relay_fleet::{
    FleetStore, Keyspace, LocationReport, MemoryTeamStore, RedisTeamStore,
    model::{Position, TeamDefinition, TeamStatus, TeamSummary, distance_meters},
};

#[derive(Debug, Clone)]
struct Spec {
    position: Option<(i32, i32)>,
    available: bool,
    capabilities: Vec<&'static str>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::option::weighted(0.9, (-6..=6i32, -6..=6i32)),
        prop::bool::weighted(0.75),
        prop::sample::subsequence(vec!["clinician", "emt", "peer"], 0..=3),
    )
        .prop_map(|(position, available, capabilities)| Spec {
            position,
            available,
            capabilities,
        })
}

const CENTER: Position = Position {
    latitude: 44.05,
    longitude: -123.09,
};
/// Grid step in degrees: about 550 m of latitude.
const STEP: f64 = 0.005;

fn grid(cell: (i32, i32)) -> Position {
    Position {
        latitude: CENTER.latitude + f64::from(cell.0) * STEP,
        longitude: CENTER.longitude + f64::from(cell.1) * STEP,
    }
}

/// Some shifts end, so the read summaries carry one.
fn shift_end(index: usize, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    index
        .is_multiple_of(3)
        .then(|| now + chrono::Duration::hours(i64::try_from(index).unwrap_or(0)))
}

async fn check(
    store: &dyn FleetStore,
    region: &str,
    teams: &[Spec],
    query: (i32, i32),
    radius: f64,
    required: &[String],
    limit: usize,
) -> Result<(), TestCaseError> {
    let now = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("time");
    let mut reports = Vec::new();
    for (index, team) in teams.iter().enumerate() {
        let id = format!("team-{index:02}");
        let mut capabilities: Vec<String> =
            team.capabilities.iter().map(|c| (*c).to_owned()).collect();
        capabilities.sort();
        store
            .upsert_team(
                &TeamDefinition {
                    team_id: id.clone(),
                    display_name: id.clone(),
                    region: region.to_owned(),
                    capabilities,
                    shift_ends_at: shift_end(index, now),
                },
                None,
                now,
            )
            .await
            .expect("upsert");
        if team.available {
            store
                .set_status(&id, TeamStatus::Available, "", None, now)
                .await
                .expect("available");
        }
        if let Some(cell) = team.position {
            reports.push(LocationReport {
                team_id: id,
                position: grid(cell),
                recorded_at: now,
                heading_degrees: None,
                speed_meters_per_second: None,
                accuracy_meters: None,
            });
        }
    }
    store.report_locations(&reports, now).await.expect("report");

    let point = grid(query);
    // The bounded read routing ranks from: an exact nearest-first prefix of every AVAILABLE
    // team in the radius, and a frontier no team left out is nearer than.
    let nearest = store
        .nearest_available(region, point, radius, limit)
        .await
        .expect("nearest");
    let mut all: Vec<(String, f64)> = teams
        .iter()
        .enumerate()
        .filter(|(_, t)| t.available)
        .filter_map(|(i, t)| {
            let d = distance_meters(point, grid(t.position?));
            (d <= radius).then(|| (format!("team-{i:02}"), d))
        })
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let read: Vec<(String, f64)> = nearest
        .teams
        .iter()
        .map(|(t, d)| (t.team_id.clone(), *d))
        .collect();
    prop_assert!(read.len() <= limit);
    prop_assert_eq!(&read[..], &all[..read.len()]);
    // Each summary holds the values the team was given.
    for (summary, _) in &nearest.teams {
        let index: usize = summary.team_id["team-".len()..].parse().expect("index");
        let mut capabilities: Vec<String> = teams[index]
            .capabilities
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        capabilities.sort();
        let expected = TeamSummary {
            team_id: summary.team_id.clone(),
            display_name: summary.team_id.clone(),
            capabilities,
            status: TeamStatus::Available,
            location: teams[index].position.map(grid),
            location_updated_at: Some(now),
            shift_ends_at: shift_end(index, now),
        };
        prop_assert_eq!(summary, &expected);
    }
    match nearest.frontier {
        None => prop_assert_eq!(read.len(), all.len()),
        Some(frontier) => {
            for (id, d) in &all[read.len()..] {
                prop_assert!(
                    *d >= frontier,
                    "{} at {} m is nearer than the frontier {}",
                    id,
                    d,
                    frontier
                );
            }
        }
    }

    let found = store
        .find_available(region, point, radius, required, limit)
        .await
        .expect("find");
    let got: Vec<(String, f64)> = found.iter().map(|(t, d)| (t.team_id.clone(), *d)).collect();

    // Brute force: every team, great-circle distance, the same rules.
    let mut expected: Vec<(String, f64)> = teams
        .iter()
        .enumerate()
        .filter(|(_, t)| t.available)
        .filter(|(_, t)| {
            required
                .iter()
                .all(|r| t.capabilities.contains(&r.as_str()))
        })
        .filter_map(|(i, t)| {
            let d = distance_meters(point, grid(t.position?));
            (d <= radius).then(|| (format!("team-{i:02}"), d))
        })
        .collect();
    expected.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(limit);
    prop_assert_eq!(got, expected);
    Ok(())
}

fn case() -> impl Strategy<Value = (Vec<Spec>, (i32, i32), f64, Vec<String>, usize)> {
    (
        prop::collection::vec(spec(), 1..25),
        (-7..=7i32, -7..=7i32),
        prop_oneof![Just(550.0), 100.0..4_000.0f64, Just(100_000.0)],
        prop::sample::subsequence(vec!["clinician".to_owned(), "emt".to_owned()], 0..=1),
        1..12usize,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn memory_find_matches_brute_force((teams, query, radius, required, limit) in case()) {
        let store = MemoryTeamStore::new(Duration::from_secs(60));
        runtime().block_on(check(&store, "north", &teams, query, radius, &required, limit))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn redis_find_matches_brute_force((teams, query, radius, required, limit) in case()) {
        let prefix = relay_tests::unique_name("prox");
        let runtime = runtime();
        let result = runtime.block_on(async {
            let client = redis::Client::open(relay_tests::redis_url()).expect("redis url");
            let store: Arc<dyn FleetStore> = Arc::new(
                RedisTeamStore::new(client, Keyspace::new(prefix.clone()), Duration::from_secs(60))
                    .expect("store"),
            );
            let result = check(&*store, "north", &teams, query, radius, &required, limit).await;
            relay_tests::redis_delete_prefix(&prefix).await;
            result
        });
        result?;
    }
}
