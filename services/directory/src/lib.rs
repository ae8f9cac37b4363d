//! Referral directory: HSDS 3.0 social services with open-now search, live capacity and
//! referrals (gRPC `relay.directory.v1.DirectoryService`).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0. Storage is behind [`store::DirectoryStore`], with a
//! PostgreSQL backend and a SQLite one (for `relay dev`), picked from the database URL.
//! [`import`] loads HSDS tabular data packages; [`generate`] makes a synthetic one.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use relay_proto::directory::{Service, directory_service_server::DirectoryServiceServer};
use relay_proto::intake::intake_service_client::IntakeServiceClient;
use relay_runtime::{
    BoxError, Config,
    server::{BoundServer, ServiceHost},
    storage::{Database, QueryBound, Storage},
};
use serde::Deserialize;

pub mod error;
pub mod export;
pub mod generate;
pub mod handler;
pub mod import;
pub mod referral;
pub mod retention;
pub mod schedule;
pub mod search;
pub mod store;
pub mod validate;

pub use handler::DirectoryServiceHandler;
use relay_runtime::clock::Clock;
use store::{Bounded, PostgresStore, Row, SqliteStore};

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.directory.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "directory";

/// The migrations of [`SCHEMA`], applied by `relay-directory migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The migrations of the SQLite backend (`relay dev`).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// The directory's own settings (`[directory]`, `RELAY_DIRECTORY__*`); the pool size and
/// migrations at start are in `[database]`, as for every service.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DirectorySettings {
    /// Days after its creation when a referral's notes are erased
    /// (`RELAY_DIRECTORY__PERSONAL_DATA_RETENTION_DAYS`, default 30, at least 1).
    #[serde(default)]
    pub personal_data_retention_days: Option<i64>,
    /// How often the retention job runs, in seconds
    /// (`RELAY_DIRECTORY__RETENTION_INTERVAL_SECONDS`, default 3600).
    #[serde(default)]
    pub retention_interval_seconds: Option<u64>,
    /// Check each new referral's incident with intake at `intake_endpoint`
    /// (`RELAY_DIRECTORY__CHECK_INCIDENTS`, default false).
    #[serde(default)]
    pub check_incidents: Option<bool>,
    /// Deadline of that check, in milliseconds (`RELAY_DIRECTORY__INTAKE_DEADLINE_MS`,
    /// default 2000).
    #[serde(default)]
    pub intake_deadline_ms: Option<u64>,
}

impl DirectorySettings {
    /// The retention in days, checked.
    ///
    /// # Errors
    /// When it is below 1 (a referral's notes would be erased as soon as written).
    pub fn retention_days(&self) -> Result<i64, BoxError> {
        match self.personal_data_retention_days {
            None => Ok(30),
            Some(days) if days >= 1 => Ok(days),
            Some(days) => Err(format!(
                "directory.personal_data_retention_days (RELAY_DIRECTORY__PERSONAL_DATA_RETENTION_DAYS) must be at least 1, not {days}"
            )
            .into()),
        }
    }
}

/// Microseconds since the epoch as a protobuf timestamp.
#[must_use]
pub fn micros_to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf timestamp as microseconds since the epoch (saturating).
#[must_use]
pub fn timestamp_to_micros(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos / 1000))
}

/// Microseconds since the epoch of a time.
#[must_use]
pub fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// A time from microseconds since the epoch.
#[must_use]
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// The normalized rows of a (validated) service, in the order they must be written.
#[must_use]
pub fn rows_of_service(service: &Service, now: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(organization) = &service.organization {
        rows.push(Row::Organization {
            id: organization.id.clone(),
            name: organization.name.clone(),
            description: organization.description.clone(),
            url: organization.url.clone(),
            email: organization.email.clone(),
        });
    }
    for term in &service.taxonomy_terms {
        rows.push(Row::TaxonomyTerm(term.clone()));
    }
    let mut bare = service.clone();
    bare.taxonomy_terms.clear();
    bare.phones.clear();
    bare.locations.clear();
    bare.languages.clear();
    rows.push(Row::Service(Box::new(bare), now));
    for term in &service.taxonomy_terms {
        rows.push(Row::ServiceTaxonomy {
            service_id: service.id.clone(),
            term_id: term.id.clone(),
        });
    }
    for (position, code) in service.languages.iter().enumerate() {
        rows.push(Row::Language {
            service_id: service.id.clone(),
            code: code.to_ascii_lowercase(),
            position: i64::try_from(position).unwrap_or(i64::MAX),
        });
    }
    for (index, phone) in service.phones.iter().enumerate() {
        rows.push(Row::Phone {
            id: format!("{}:phone:{index:03}", service.id),
            service_id: service.id.clone(),
            phone: phone.clone(),
        });
    }
    for (position, location) in service.locations.iter().enumerate() {
        let position = i64::try_from(position).unwrap_or(i64::MAX);
        rows.push(Row::Location {
            id: location.location_id.clone(),
            name: location.name.clone(),
            point: location.point.map(|p| (p.latitude, p.longitude)),
            time_zone: location.time_zone.clone(),
        });
        if let Some(address) = &location.address {
            rows.push(Row::Address {
                location_id: location.location_id.clone(),
                address: address.clone(),
            });
        }
        rows.push(Row::ServiceAtLocation {
            id: format!("{}@{}", service.id, location.location_id),
            service_id: service.id.clone(),
            location_id: location.location_id.clone(),
            position,
        });
        for (index, schedule) in location.schedules.iter().enumerate() {
            rows.push(Row::Schedule {
                id: format!("{}@{}:{index:03}", service.id, location.location_id),
                service_id: Some(service.id.clone()),
                location_id: Some(location.location_id.clone()),
                service_at_location_id: None,
                position: i64::try_from(index).unwrap_or(i64::MAX),
                schedule: schedule.clone(),
            });
        }
    }
    rows
}

/// The directory's database: schema [`SCHEMA`], its migrations, a pool of 10, and PostgreSQL
/// migrated by `relay-directory migrate` (unless `database.migrate_on_start`).
pub static STORAGE: Storage = Storage::new(SCHEMA, &MIGRATOR, &SQLITE_MIGRATOR);

/// The store of either backend, on a [`Database`]'s pool: the directory's store is generic
/// (one [`store::SqlStore`] per dialect), so the server, the importer and the exporter pick
/// the concrete one here.
#[derive(Debug, Clone)]
pub enum Backend {
    /// PostgreSQL.
    Postgres(PostgresStore),
    /// SQLite.
    Sqlite(SqliteStore),
}

impl Backend {
    /// The store on `database`'s pool.
    #[must_use]
    pub fn on(database: &Database) -> Self {
        match database {
            Database::Postgres { pool, .. } => Self::Postgres(PostgresStore::new(pool.clone())),
            Database::Sqlite(pool) => Self::Sqlite(SqliteStore::new(pool.clone())),
        }
    }
}

/// The handler on `store`, checking incidents with `intake` when given.
fn handler<S: store::DirectoryStore>(
    store: S,
    tokens: &relay_runtime::paging::PageTokens,
    clock: &Arc<dyn Clock>,
    intake: Option<&handler::IntakeClient>,
) -> DirectoryServiceHandler<S> {
    let handler = DirectoryServiceHandler::with_clock(store, tokens.clone(), Arc::clone(clock));
    match intake {
        Some(intake) => handler.with_intake(intake.clone()),
        None => handler,
    }
}

/// The directory service, bound and ready to run.
#[derive(Debug)]
pub struct Application {
    server: BoundServer,
    backend: Backend,
    bound: QueryBound,
    clock: Arc<dyn Clock>,
    retention_days: i64,
    retention_every: Duration,
}

impl Application {
    /// Builds the service from its configuration and binds `RELAY_LISTEN`. PostgreSQL or
    /// SQLite is chosen from `RELAY_DATABASE_URL`; SQLite databases are migrated at start
    /// (`relay dev` has no separate migrate step).
    ///
    /// # Errors
    /// When a required setting is missing or the address cannot be bound.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let clock = config.settings.clock()?;
        Self::build_with_clock(config, clock).await
    }

    /// [`Application::build`] with mutations and the retention job on `clock` (tests move a
    /// [`relay_runtime::clock::ManualClock`]).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, BoxError> {
        let settings: DirectorySettings = config.section("directory")?;
        let retention_days = settings.retention_days()?;
        let retention_every = clock.pace(Duration::from_secs(
            settings.retention_interval_seconds.unwrap_or(3600).max(1),
        ));
        let tokens = config.settings.page_tokens()?;
        let database = STORAGE.open(&config)?;
        STORAGE.start(&config, &database).await?;
        let backend = Backend::on(&database);
        let bound = STORAGE.bound(&config);
        let intake = if settings.check_incidents.unwrap_or(false) {
            let deadline =
                Duration::from_millis(settings.intake_deadline_ms.unwrap_or(2000).max(1));
            let channel = relay_runtime::client::channel_for(
                &config,
                &config.settings.intake_endpoint,
                deadline,
            )
            .map_err(|error| format!("intake_endpoint (RELAY_INTAKE_ENDPOINT): {error}"))?;
            Some(IntakeServiceClient::with_interceptor(
                channel,
                relay_runtime::client::TracePropagation,
            ))
        } else {
            None
        };
        let host = ServiceHost::from_config(&config)
            .audit(
                relay_runtime::audit::AuditSink::new(database.clone()),
                &config.settings.audit,
            )
            .readiness_check(database.kind(), database.check());
        let host = match backend.clone() {
            Backend::Postgres(store) => host.add_service(DirectoryServiceServer::new(handler(
                Bounded::new(store, bound),
                &tokens,
                &clock,
                intake.as_ref(),
            ))),
            Backend::Sqlite(store) => host.add_service(DirectoryServiceServer::new(handler(
                Bounded::new(store, bound),
                &tokens,
                &clock,
                intake.as_ref(),
            ))),
        };
        let server = host.bind(config.settings.listen.0).await?;
        Ok(Self {
            server,
            backend,
            bound,
            clock,
            retention_days,
            retention_every,
        })
    }

    /// The address the service listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls. The referral notes
    /// retention job runs alongside and stops with it.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let token = self.server.shutdown_token();
        let (days, every) = (self.retention_days, self.retention_every);
        let bound = self.bound;
        let job = match self.backend {
            Backend::Postgres(store) => tokio::spawn(
                retention::Retention::new(Bounded::new(store, bound), self.clock, days)
                    .run(every, token.clone()),
            ),
            Backend::Sqlite(store) => tokio::spawn(
                retention::Retention::new(Bounded::new(store, bound), self.clock, days)
                    .run(every, token.clone()),
            ),
        };
        let result = self.server.run_until_stopped(shutdown).await;
        token.cancel();
        let _ = job.await;
        result
    }
}

relay_runtime::service!(
    Application,
    storage = STORAGE,
    name = "directory",
    about = "Referral directory: HSDS 3.0 social services with open-now search, live capacity and referrals (gRPC relay.directory.v1.DirectoryService).",
);
