//! Responder availability: the roster of community teams and their live status and position (gRPC relay.availability.v1.AvailabilityService).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0.
//!
//! Storage: live state (status, position, incident, revision, fencing counter, events) lives
//! in a [`relay_fleet::TeamStore`] (Redis, or in process), the crate availability shares with
//! routing; the roster (who exists) is durable in PostgreSQL (schema `availability`) or SQLite
//! (embedded mode), and the live store is rebuilt from it at start.

use std::{sync::Arc, time::Duration};

use std::net::SocketAddr;

use relay_proto::availability::availability_service_server::AvailabilityServiceServer;
use relay_runtime::{
    BoxError, Config,
    server::{BoundServer, CheckFuture, ServiceHost},
    storage::{Database, Storage},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub mod error;
pub mod handler;
mod metrics;
pub mod roster;
pub mod service;

pub use handler::{AvailabilityServiceHandler, team_to_proto};
pub use service::Availability;

use relay_fleet::{
    DispatchStore, FleetStore, Keyspace, MemoryTeamStore, RedisTeamStore, TeamStore, keyspace,
    live_state,
};
use relay_runtime::clock::Clock;

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.availability.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "availability";

/// The migrations of [`SCHEMA`], applied by `relay-availability migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The migrations of the SQLite roster (embedded mode).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// Where live state is kept (`availability.backend`). Not to be confused with the roster's
/// database, PostgreSQL or SQLite by `RELAY_DATABASE_URL` (see [`STORAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveStore {
    /// Redis at `RELAY_REDIS_URL` (production).
    #[default]
    Redis,
    /// In this process (embedded mode, `relay dev`): lost on exit, rebuilt from the roster.
    Memory,
}

/// The `[availability]` settings (`RELAY_AVAILABILITY__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AvailabilitySettings {
    /// Where live state is kept: `redis` (default) or `memory`.
    pub backend: LiveStore,
    /// Prefix of every Redis key (default `relay`).
    pub key_prefix: String,
    /// How long team events are kept for WatchTeams resumption, in seconds (default 24 h).
    pub event_retention_seconds: u64,
    /// An AVAILABLE team whose position is older than this counts in the
    /// `relay_teams_stale_position` gauge (default 300: routing's default staleness limit).
    pub stale_position_seconds: u64,
    /// How often the team gauges (`relay_teams`, `relay_teams_stale_position`) are sampled.
    pub sample_interval_seconds: u64,
    /// How often the live-state epoch is checked for a loss of Redis's data, milliseconds
    /// (default 1000; see [`relay_fleet::live_state`]).
    pub live_state_check_ms: u64,
}

impl Default for AvailabilitySettings {
    fn default() -> Self {
        Self {
            backend: LiveStore::Redis,
            key_prefix: String::from(keyspace::DEFAULT_PREFIX),
            event_retention_seconds: 24 * 3600,
            stale_position_seconds: 300,
            sample_interval_seconds: 15,
            live_state_check_ms: 1_000,
        }
    }
}

/// Availability's database (the roster): schema [`SCHEMA`], its migrations, a pool of 10,
/// and migrated at start unless `database.migrate_on_start` is false, so a fresh database works.
pub static STORAGE: Storage =
    Storage::new(SCHEMA, &MIGRATOR, &SQLITE_MIGRATOR).migrate_on_start(true);

/// The availability service, bound and ready to run.
pub struct Application {
    server: BoundServer,
    domain: Availability,
    dispatch: Arc<dyn DispatchStore>,
    database: Database,
    config: Config,
    settings: AvailabilitySettings,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.server.local_addr())
            .field("backend", &self.settings.backend)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Builds the service from its configuration and binds `RELAY_LISTEN`.
    ///
    /// # Errors
    /// When a required setting is missing or the address cannot be bound.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let clock = config.settings.clock()?;
        Self::build_with_clock(config, clock).await
    }

    /// As [`Self::build`], with the clock the service reads (tests pass a
    /// [`relay_runtime::clock::ManualClock`]).
    ///
    /// # Errors
    /// When a required setting is missing or the address cannot be bound.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, BoxError> {
        let settings: AvailabilitySettings = config.section("availability")?;
        let retention = Duration::from_secs(settings.event_retention_seconds.max(60));
        let database = STORAGE.open(&config)?;
        let roster: Arc<dyn roster::RosterStore> = Arc::new(relay_runtime::storage::Bounded::new(
            roster::SqlRoster::on(&database),
            STORAGE.bound(&config),
        ));
        let fleet: Arc<dyn FleetStore> = match settings.backend {
            LiveStore::Redis => Arc::new(RedisTeamStore::new(
                config.redis_target()?,
                Keyspace::new(settings.key_prefix.clone()),
                retention,
            )?),
            LiveStore::Memory => Arc::new(MemoryTeamStore::new(retention)),
        };
        let team_store: Arc<dyn TeamStore> = fleet.clone();
        let dispatch: Arc<dyn DispatchStore> = fleet;
        let domain = Availability::new(team_store.clone(), roster.clone(), clock);
        let pages = config.settings.page_tokens()?;
        let audit = relay_runtime::audit::AuditSink::new(database.clone());
        let host = ServiceHost::from_config(&config).audit(audit.clone(), &config.settings.audit);
        let shutdown = host.shutdown_token();
        // A client stream must be answered within the server's request timeout: answer at
        // three quarters of it, leaving time to apply the last batch.
        let stream_max_age = config.settings.server.request_timeout() * 3 / 4;
        let handler = AvailabilityServiceHandler::new(
            domain.clone(),
            pages,
            shutdown.clone(),
            stream_max_age,
        )
        .with_audit(audit.bounded(STORAGE.bound(&config)));
        let store_check = team_store.clone();
        let live_check = domain.live().clone();
        let host = host
            .add_service(AvailabilityServiceServer::new(handler))
            .readiness_check("team store", move || -> CheckFuture {
                let store = store_check.clone();
                Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
            })
            .readiness_check(database.kind(), database.check())
            .readiness_check("roster loaded", move || -> CheckFuture {
                let intact = live_check.is_intact();
                Box::pin(async move {
                    if intact {
                        Ok(())
                    } else {
                        Err(String::from(
                            "the live state is not built from the roster yet, or was lost and is being rebuilt",
                        ))
                    }
                })
            });
        let server = host.bind(config.settings.listen.0).await?;
        Ok(Self {
            server,
            domain,
            dispatch,
            database,
            config,
            settings,
            shutdown,
        })
    }

    /// The address the service listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The domain this service serves (tests and embedding programs use its store).
    #[must_use]
    pub fn domain(&self) -> &Availability {
        &self.domain
    }

    /// The same live store, as routing dispatches from it (`relay dev` runs routing on the
    /// in-process store of its availability).
    #[must_use]
    pub fn dispatch(&self) -> &Arc<dyn DispatchStore> {
        &self.dispatch
    }

    /// Serves until `shutdown` completes, then drains in-flight calls. Meanwhile a start task
    /// applies the roster migrations (unless `database.migrate_on_start` is false) and rebuilds the live
    /// state from the roster, retrying with backoff; health turns SERVING after it succeeds.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let Self {
            server,
            domain,
            dispatch: _,
            database,
            config,
            settings,
            shutdown: token,
        } = self;
        let settings_stale = settings.stale_position_seconds;
        // Stale positions follow the domain's clock: sample as often in its time.
        let sample_every = domain
            .clock()
            .pace(Duration::from_secs(settings.sample_interval_seconds.max(1)));
        let check_every = Duration::from_millis(settings.live_state_check_ms.max(10));
        let sampler_token = token.clone();
        let watch_token = token.clone();
        let start_domain = domain.clone();
        let start = tokio::spawn(async move {
            let domain = start_domain;
            let mut delay = Duration::from_millis(100);
            loop {
                let attempt = async {
                    STORAGE.start(&config, &database).await?;
                    let created = domain.build_live_state().await?;
                    Ok::<usize, BoxError>(created)
                };
                match attempt.await {
                    Ok(created) => {
                        tracing::info!(recreated = created, "live state rebuilt from the roster");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not rebuild the live state from the roster; retrying");
                    }
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        let watch_domain = domain.clone();
        let watch = tokio::spawn(live_state::run_watch(
            domain.live().clone(),
            check_every,
            watch_token,
            move || {
                let domain = watch_domain.clone();
                async move { domain.check_live_state().await }
            },
        ));
        let sampler = tokio::spawn(metrics::run_sampler(
            domain.clone(),
            sample_every,
            Duration::from_secs(settings_stale),
            sampler_token,
        ));
        let result = server.run_until_stopped(shutdown).await;
        start.abort();
        sampler.abort();
        watch.abort();
        result
    }
}

relay_runtime::service!(
    Application,
    storage = STORAGE,
    name = "availability",
    about = "Responder availability: the roster of community teams and their live status and position (gRPC relay.availability.v1.AvailabilityService).",
);
