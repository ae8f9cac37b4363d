//! Shared setup of routing's tests: a migrated PostgreSQL record, an in-process fleet and a
//! manual clock.
#![allow(dead_code)]

use std::{ops::Deref, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use relay_fleet::{
    DispatchStore, FleetTeam, MemoryTeamStore, StoreError,
    model::{Position as FleetPosition, TeamSummary},
};
use relay_proto::{
    common::{AssignmentMode, GeoPoint, TeamStatus},
    routing::AssignTeamRequest,
};
use relay_routing::{
    engine::Engine,
    ranking::{Position, TeamSnapshot},
    settings::RoutingSettings,
    store::{PostgresStore, Store},
};
use relay_runtime::clock::{Clock, ManualClock, SystemClock};
use relay_runtime::paging::PageTokens;
use relay_tests::TestDatabase;

pub const INCIDENT: GeoPoint = GeoPoint {
    latitude: 44.05,
    longitude: -123.09,
};

/// The in-process fleet of routing's tests: the in-process team store of `relay-fleet` (what
/// routing dispatches from in `relay dev`), with the shortcuts a test takes to set teams up,
/// timed by a clock. Everything else is the store's own ([`Deref`]).
#[derive(Debug)]
pub struct TestFleet {
    store: Arc<MemoryTeamStore>,
    clock: Arc<dyn Clock>,
}

impl Default for TestFleet {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl Deref for TestFleet {
    type Target = MemoryTeamStore;

    fn deref(&self) -> &MemoryTeamStore {
        &self.store
    }
}

impl TestFleet {
    /// An empty fleet whose changes are timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            store: Arc::new(MemoryTeamStore::new(std::time::Duration::from_secs(3600))),
            clock,
        }
    }

    /// The store, as routing dispatches from it.
    pub fn store(&self) -> Arc<MemoryTeamStore> {
        self.store.clone()
    }

    /// Adds or replaces a team in `region` as `snapshot` says (keeping its fencing counter and
    /// the creation time of its live record, as availability's upsert does).
    pub fn upsert_team(&self, region: &str, snapshot: TeamSnapshot) {
        let summary = TeamSummary {
            team_id: snapshot.team_id,
            display_name: snapshot.display_name,
            capabilities: snapshot.capabilities,
            status: snapshot.status,
            location: snapshot
                .position
                .map(|p| FleetPosition::new(p.point.latitude, p.point.longitude)),
            location_updated_at: snapshot.position.map(|p| p.recorded_at),
            shift_ends_at: snapshot.shift_ends_at,
        };
        self.store.put_team(region, summary, self.clock.now());
    }

    /// Sets a team's status as a terminal would, without the state machine (busy statuses
    /// keep the current incident). Returns false for an unknown team.
    pub fn set_status(&self, team_id: &str, status: TeamStatus) -> bool {
        self.store.force_status(team_id, status, self.clock.now())
    }

    /// Forgets every status and claim counter: each team becomes AVAILABLE with no incident
    /// and its counter restarts at 0, as after a Redis failover that lost recent writes and an
    /// availability rebuild from the roster.
    pub fn flush(&self) {
        self.store.lose_writes(self.clock.now());
    }

    /// Every team (for test assertions).
    pub fn all_teams(&self) -> Vec<FleetTeam> {
        self.store.teams().iter().map(FleetTeam::from).collect()
    }

    /// The remembered recommendation of an incident, now.
    pub async fn recommendation(&self, incident_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store
            .recommendation(incident_id, self.clock.now())
            .await
    }
}

pub struct World {
    pub engine: Engine,
    pub fleet: Arc<TestFleet>,
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
    let fleet = Arc::new(TestFleet::new(clock.clone()));
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
    fleet: Arc<TestFleet>,
    clock: Arc<ManualClock>,
) -> Engine {
    Engine::new(
        store,
        fleet.store(),
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
