//! Routing: ranks free teams for a call, claims the chosen one atomically, and queues calls no team can take (gRPC relay.routing.v1.RoutingService).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0 with [`Application::build_with_fleet`].
//!
//! Layout: [`ranking`] (pure), the fleet (the teams' live state and the atomic claim: a
//! [`relay_fleet::DispatchStore`], shared with availability through the `relay-fleet`
//! crate), [`store`] (the record in PostgreSQL or SQLite), [`engine`] (the RPCs, the queue,
//! escalation and reconciliation), [`handler`] (gRPC).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use relay_proto::routing::routing_service_server::RoutingServiceServer;
use relay_runtime::{
    BoxError, Config,
    config::ConfigError,
    paging::PageTokens,
    server::{BoundServer, ServiceHost},
    storage::{self, Database, Storage},
};
use tokio_util::sync::CancellationToken;

pub mod engine;
pub mod error;
pub mod eta;
mod handler;
mod metrics;
pub mod ranking;
pub mod settings;
pub mod store;

pub use handler::RoutingServiceHandler;

use relay_fleet::{DispatchStore, Keyspace, MemoryTeamStore, RedisTeamStore};

use crate::{
    engine::Engine,
    settings::RoutingSettings,
    store::{Bounded, PostgresStore, SqliteStore, Store},
};
use relay_runtime::clock::Clock;

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.routing.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "routing";

/// The migrations of [`SCHEMA`], applied by `relay-routing migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The same schema for SQLite (`relay dev`).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// The routing service, bound and ready to run.
#[derive(Debug)]
pub struct Application {
    server: BoundServer,
    engine: Engine,
    background: CancellationToken,
    interval: Duration,
}

/// Routing's database (the record): schema [`SCHEMA`], its migrations, a pool of 10, and
/// PostgreSQL migrated by `relay-routing migrate` (unless `database.migrate_on_start`).
pub static STORAGE: Storage = Storage::new(SCHEMA, &MIGRATOR, &SQLITE_MIGRATOR);

/// Opens the record named by the configuration (PostgreSQL, or SQLite for `sqlite:` URLs),
/// migrated when it migrates at start, each operation bounded by `database.query_timeout_ms`.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, Database), BoxError> {
    let database = STORAGE.open(config)?;
    STORAGE.start(config, &database).await?;
    let bound = STORAGE.bound(config);
    let store: Arc<dyn Store> = match &database {
        Database::Postgres { pool, .. } => {
            Arc::new(Bounded::new(PostgresStore::new(pool.clone()), bound))
        }
        Database::Sqlite(pool) => Arc::new(Bounded::new(SqliteStore::new(pool.clone()), bound)),
    };
    Ok((store, database))
}

fn page_tokens(config: &Config) -> Result<PageTokens, ConfigError> {
    config.settings.page_tokens()
}

impl Application {
    /// Builds the service from its configuration and binds `RELAY_LISTEN`.
    ///
    /// The fleet is the teams' live state in Redis (`RELAY_REDIS_URL`, under routing's own
    /// `routing.key_prefix`, which must equal availability's `availability.key_prefix`), a
    /// [`RedisTeamStore`]; `routing.fleet = "memory"` uses an in-process fleet of routing's
    /// own instead (tests).
    ///
    /// # Errors
    /// When a required setting is missing or the address cannot be bound.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let settings: RoutingSettings = config.section("routing")?;
        let clock: Arc<dyn Clock> = config.settings.clock()?;
        let retention = settings.team_event_retention();
        let fleet: Arc<dyn DispatchStore> = if settings.fleet == "memory" {
            Arc::new(MemoryTeamStore::new(retention))
        } else {
            Arc::new(RedisTeamStore::new(
                config.redis_target()?,
                Keyspace::new(settings.key_prefix.clone()),
                retention,
            )?)
        };
        Self::build_with_fleet(config, fleet, clock).await
    }

    /// Builds the service over `fleet`, timed by `clock`.
    ///
    /// # Errors
    /// When a setting is invalid, the record cannot be opened, or the address cannot be bound.
    pub async fn build_with_fleet(
        config: Config,
        fleet: Arc<dyn DispatchStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BoxError> {
        let settings: RoutingSettings = config.section("routing")?;
        settings
            .validate()
            .map_err(|message| Box::new(ConfigError::new(message)) as BoxError)?;
        let interval = Duration::from_millis(settings.maintenance_interval_ms);
        let (store, database) = open_store(&config).await?;
        let engine = Engine::new(store, fleet, clock, settings, page_tokens(&config)?);
        let host = ServiceHost::from_config(&config).audit(
            relay_runtime::audit::AuditSink::new(database.clone()),
            &config.settings.audit,
        );
        let handler = RoutingServiceHandler::new(engine.clone(), host.shutdown_token());
        let mut host = host
            .add_service(RoutingServiceServer::new(handler))
            .readiness_check(database.kind(), database.check());
        // The fleet's Redis (the keys availability serves): routing is not ready without it. The
        // in-process fleet of `relay dev` runs without Redis.
        if config.settings.redis_url.is_some() {
            host = host.readiness_check("redis", storage::redis_check(&config.redis_target()?)?);
        }
        let server = host.bind(config.settings.listen.0).await?;
        Ok(Self {
            server,
            engine,
            background: CancellationToken::new(),
            interval,
        })
    }

    /// The address the service listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The engine (for tests and embedding).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until `shutdown` completes, then drains in-flight calls. The queue drain (on
    /// fleet announcements) and the periodic upkeep run alongside.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let token = self.server.shutdown_token();
        let background = self.background.clone();
        let drain = tokio::spawn(drain_loop(self.engine.clone(), background.clone()));
        let upkeep = tokio::spawn(upkeep_loop(
            self.engine.clone(),
            self.interval,
            background.clone(),
        ));
        let result = self
            .server
            .run_until_stopped(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = token.cancelled() => {}
                }
            })
            .await;
        background.cancel();
        let _ = drain.await;
        let _ = upkeep.await;
        result
    }
}

/// Offers each team that becomes AVAILABLE to its region's queue.
async fn drain_loop(engine: Engine, stop: CancellationToken) {
    let mut events = engine.fleet().subscribe();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(available) => {
                if let Err(error) = engine
                    .on_team_available(&available.region, &available.team_id)
                    .await
                {
                    tracing::warn!(region = %available.region, team_id = %available.team_id, %error, "queue drain failed; the periodic re-check will retry");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "missed team announcements; the periodic re-check covers them"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Runs [`Engine::maintain`] every `interval`.
async fn upkeep_loop(engine: Engine, interval: Duration, stop: CancellationToken) {
    // Escalation follows the engine's clock: tick as often in its time as in real time.
    let mut ticker = tokio::time::interval(engine.clock().pace(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = engine.maintain().await {
            tracing::warn!(%error, "routing upkeep failed; retrying next round");
        }
    }
}

relay_runtime::service!(
    Application,
    storage = STORAGE,
    name = "routing",
    about = "Routing: ranks free teams for a call, claims the chosen one atomically, and queues calls no team can take (gRPC relay.routing.v1.RoutingService).",
);
