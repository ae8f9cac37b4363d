//! Shared setup of routing's tests: a migrated PostgreSQL record, an in-process fleet and a
//! manual clock.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use relay_proto::{
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::AssignTeamRequest,
};
use relay_routing::{
    engine::Engine,
    fleet::MemoryFleet,
    ranking::{Position, TeamSnapshot},
    settings::RoutingSettings,
    store::{PostgresStore, Store},
};
use relay_runtime::clock::ManualClock;
use relay_runtime::paging::PageTokens;
use relay_tests::TestDatabase;

pub const INCIDENT: GeoPoint = GeoPoint {
    latitude: 44.05,
    longitude: -123.09,
};

pub struct World {
    pub engine: Engine,
    pub fleet: Arc<MemoryFleet>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<PostgresStore>,
    pub database: TestDatabase,
    pub region: String,
}

pub async fn postgres_store(database: &TestDatabase) -> Arc<PostgresStore> {
    let url = secrecy::SecretString::from(database.url().to_owned());
    let pool = relay_runtime::storage::postgres_pool(&url, relay_routing::SCHEMA, 8).expect("pool");
    relay_runtime::storage::migrate_postgres(
        &pool,
        relay_routing::SCHEMA,
        &relay_routing::MIGRATOR,
    )
    .await
    .expect("migrate");
    Arc::new(PostgresStore::new(pool))
}

pub async fn world() -> World {
    let database = TestDatabase::new().await;
    let store = postgres_store(&database).await;
    let clock = Arc::new(ManualClock::default());
    let fleet = Arc::new(MemoryFleet::new(clock.clone()));
    let engine = engine_over(store.clone(), fleet.clone(), clock.clone());
    World {
        engine,
        fleet,
        clock,
        store,
        database,
        region: relay_tests::unique_name("region"),
    }
}

pub fn engine_over(
    store: Arc<dyn Store>,
    fleet: Arc<MemoryFleet>,
    clock: Arc<ManualClock>,
) -> Engine {
    Engine::new(
        store,
        fleet,
        clock,
        RoutingSettings::default(),
        PageTokens::new(b"test"),
    )
}

pub fn at(latitude: f64, longitude: f64) -> GeoPoint {
    GeoPoint {
        latitude,
        longitude,
    }
}

/// A team `meters_north` of the incident, position `age_s` old at `now`.
pub fn team(
    id: &str,
    meters_north: f64,
    caps: &[&str],
    age_s: i64,
    now: DateTime<Utc>,
) -> TeamSnapshot {
    TeamSnapshot {
        team_id: id.to_owned(),
        display_name: format!("Team {id}"),
        status: TeamStatus::Available,
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        position: Some(Position {
            point: at(
                INCIDENT.latitude + meters_north / 111_195.0,
                INCIDENT.longitude,
            ),
            recorded_at: now - Duration::seconds(age_s),
        }),
        shift_ends_at: None,
    }
}

pub fn assign(
    request_id: &str,
    incident_id: &str,
    region: &str,
    mode: AssignmentMode,
    priority: i32,
    required: &[&str],
) -> AssignTeamRequest {
    AssignTeamRequest {
        request_id: request_id.to_owned(),
        incident_id: incident_id.to_owned(),
        region: region.to_owned(),
        location: Some(INCIDENT),
        required_capabilities: required.iter().map(|c| (*c).to_owned()).collect(),
        preferred_capabilities: vec![],
        priority,
        mode: mode.into(),
        expected_duration_seconds: None,
        cad_system: "cad-1".into(),
        cad_incident_id: String::new(),
    }
}

/// `request` with the CAD's own incident number.
pub fn with_cad_incident_id(mut request: AssignTeamRequest, cad: &str) -> AssignTeamRequest {
    request.cad_incident_id = cad.into();
    request
}
