//! Call intake: the CAD-facing front door; stores, triages and routes incidents and streams their events (gRPC relay.intake.v1.IntakeService).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0.
//!
//! - [`protocol`]: the triage rules file, loaded and validated at start.
//! - [`store`]: the storage trait and its PostgreSQL and SQLite implementations.
//! - [`core`]: the domain logic, one concern a module: the pure decisions (`core::domain`),
//!   the commands, the outbox worker, the sequencer, upstream events, deadlines, retention.
//! - [`upstream`]: consumers of routing's and availability's event streams.
//! - [`validate`]: request validation (what the fuzzer drives too).
//! - [`handler`]: the gRPC surface; [`caller_details`]: what a caller without
//!   `caller.details.read` sees of an incident.
//! - [`eido`], [`http`]: NENA EIDO in and out, over gRPC and on the HTTP port.
//! - [`report`], [`report_api`]: program reports and `relay.reports.v1.ReportService`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use relay_proto::{
    availability::availability_service_client::AvailabilityServiceClient,
    intake::intake_service_server::IntakeServiceServer,
    reports::report_service_server::ReportServiceServer,
    routing::routing_service_client::RoutingServiceClient,
};
use relay_runtime::{
    BoxError, Config,
    audit::AuditSink,
    client::{TracePropagation, channel_for},
    server::{BoundServer, ServiceHost},
    storage::{Database, Storage},
};
use tokio::sync::{Notify, broadcast};

pub mod apco;
pub mod caller_details;
pub mod core;
pub mod eido;
pub mod handler;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod program;
pub mod protocol;
pub mod report;
pub mod report_api;
pub mod settings;
pub mod store;
pub mod synthetic;
pub mod upstream;
pub mod validate;

pub use handler::{IntakeServiceHandler, api_error};

use crate::{
    core::Intake,
    program::Programs,
    protocol::Protocol,
    settings::IntakeSettings,
    store::{Bounded, IncidentStore, PostgresStore, SqliteStore},
};
use relay_runtime::clock::Clock;

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.intake.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "intake";

/// The migrations of [`SCHEMA`], applied by `relay-intake migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The SQLite migrations, applied at start when the database URL is `sqlite:`.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// The intake service, bound and ready to run.
#[derive(Debug)]
pub struct Application {
    server: BoundServer,
    intake: Arc<Intake>,
    http_handler: Arc<IntakeServiceHandler>,
    availability: upstream::AvailabilityClient,
    new_regions: tokio::sync::mpsc::UnboundedReceiver<String>,
    http: tokio::net::TcpListener,
    http_local: SocketAddr,
}

/// Intake's default HTTP (EIDO) port, on the gRPC listen address's host.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Where the EIDO HTTP port listens: `http_listen` (`RELAY_HTTP_LISTEN`), else port 8080 on
/// the gRPC listen address's host, or a free port when the gRPC port is 0 (tests, `relay
/// dev`), as the admin port does.
///
/// # Errors
/// When `http_listen` is not an address.
pub fn http_addr(config: &Config) -> Result<SocketAddr, BoxError> {
    let configured: Option<relay_runtime::config::ListenAddr> = config.section("http_listen")?;
    if let Some(addr) = configured {
        return Ok(addr.0);
    }
    let listen = config.settings.listen.0;
    let port = if listen.port() == 0 {
        0
    } else {
        DEFAULT_HTTP_PORT
    };
    Ok(SocketAddr::new(listen.ip(), port))
}

/// Intake's database: schema [`SCHEMA`], its migrations, a pool of 16, and PostgreSQL migrated
/// by `relay-intake migrate` (unless `database.migrate_on_start`).
pub static STORAGE: Storage = Storage::new(SCHEMA, &MIGRATOR, &SQLITE_MIGRATOR).max_connections(16);

/// Opens the database named by the configuration, migrating it when it migrates at start
/// (SQLite always), and the store on it, each operation bounded by `database.query_timeout_ms`.
///
/// # Errors
/// When the URL is missing or invalid, or a migration fails.
pub async fn open_store(config: &Config) -> Result<(Arc<dyn IncidentStore>, Database), BoxError> {
    let database = STORAGE.open(config)?;
    STORAGE.start(config, &database).await?;
    let bound = STORAGE.bound(config);
    let store: Arc<dyn IncidentStore> = match &database {
        Database::Postgres { pool, .. } => {
            Arc::new(Bounded::new(PostgresStore::new(pool.clone()), bound))
        }
        Database::Sqlite(pool) => Arc::new(Bounded::new(SqliteStore::new(pool.clone()), bound)),
    };
    Ok((store, database))
}

impl Application {
    /// Builds the service from its configuration and binds `RELAY_LISTEN`.
    ///
    /// # Errors
    /// When a required setting is missing, the protocol file is invalid (the error names the
    /// line and the reason), or the address cannot be bound.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let clock = config.settings.clock()?;
        Self::build_with_clock(config, clock).await
    }

    /// As [`Self::build`], with a given clock (tests control time with it).
    ///
    /// # Errors
    /// As [`Self::build`].
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, BoxError> {
        let settings: IntakeSettings = config.section("intake")?;
        let protocol = match &settings.protocol_path {
            Some(path) => Protocol::load(path)?,
            None => Protocol::default_protocol()?,
        };
        let programs = Programs::new(&settings.programs).map_err(|e| format!("intake.{e}"))?;
        let (store, database) = open_store(&config).await?;
        let timeout = Duration::from_millis(settings.routing_timeout_ms.max(1));
        let routing = RoutingServiceClient::with_interceptor(
            channel_for(&config, &config.settings.routing_endpoint, timeout)?,
            TracePropagation,
        );
        // Watch streams are long-lived: no per-call timeout on this channel.
        let availability = AvailabilityServiceClient::with_interceptor(
            channel_for(
                &config,
                &config.settings.availability_endpoint,
                Duration::from_secs(365 * 24 * 3600),
            )?,
            TracePropagation,
        );
        let routing = routing.max_decoding_message_size(16 * 1024 * 1024);
        let tokens = config.settings.page_tokens()?;
        tracing::info!(protocol_version = %protocol.version, "triage protocol loaded");
        let (notices, _) = broadcast::channel(1024);
        let (region_sender, new_regions) = tokio::sync::mpsc::unbounded_channel();
        let intake = Arc::new(Intake {
            store,
            protocol: Arc::new(protocol),
            programs,
            settings,
            clock,
            routing,
            notices,
            outbox_wake: Notify::new(),
            sequencer_wake: Notify::new(),
            watched_regions: std::sync::Mutex::default(),
            new_regions: region_sender,
            passes: crate::core::Passes::default(),
        });
        let audit = AuditSink::new(database.clone()).bounded(STORAGE.bound(&config));
        let host = ServiceHost::from_config(&config).audit(audit.clone(), &config.settings.audit);
        let handler = IntakeServiceHandler::new(Arc::clone(&intake), tokens, host.shutdown_token())
            .with_audit(audit);
        // The EIDO HTTP port calls the same handler (SubmitEido, GetEido).
        let http_handler = Arc::new(handler.clone());
        let host = host
            .add_service(IntakeServiceServer::new(handler))
            // Program reports read the same store (relay.reports.v1.ReportService).
            .add_service(ReportServiceServer::new(
                report_api::ReportServiceHandler::new(Arc::clone(&intake)),
            ))
            .readiness_check(database.kind(), database.check());
        let http_addr = http_addr(&config)?;
        let http = tokio::net::TcpListener::bind(http_addr)
            .await
            .map_err(|e| {
                format!("cannot bind the EIDO HTTP port {http_addr} (RELAY_HTTP_LISTEN): {e}")
            })?;
        let http_local = http.local_addr()?;
        let server = host.bind(config.settings.listen.0).await?;
        Ok(Self {
            server,
            intake,
            http_handler,
            availability,
            new_regions,
            http,
            http_local,
        })
    }

    /// The address the service listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The address the EIDO HTTP port listens on.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.http_local
    }

    /// The shared intake state (tests use it to drive the outbox and the retention job).
    #[must_use]
    pub fn intake(&self) -> Arc<Intake> {
        Arc::clone(&self.intake)
    }

    /// Serves until `shutdown` completes, then drains in-flight calls. The outbox worker,
    /// the sequencer, the upstream consumers and the retention job run alongside and stop
    /// with it.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let token = self.server.shutdown_token();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(http::serve(
            self.http,
            self.http_handler,
            self.server.http_security(),
            token.clone(),
        ));
        tasks.spawn(Arc::clone(&self.intake).run_outbox(token.clone()));
        tasks.spawn(Arc::clone(&self.intake).run_sequencer(token.clone()));
        tasks.spawn(Arc::clone(&self.intake).run_retention(token.clone()));
        tasks.spawn(Arc::clone(&self.intake).run_deadlines(token.clone()));
        tasks.spawn(metrics::run_sampler(
            Arc::clone(&self.intake),
            Duration::from_secs(5),
            token.clone(),
        ));
        // The configured regions are watched from the start; any other region from its first
        // incident on (when no regions are configured, every region is accepted).
        for region in &self.intake.settings.regions {
            self.intake.watch_region(region);
        }
        {
            let intake = Arc::clone(&self.intake);
            let availability = self.availability.clone();
            let token = token.clone();
            let mut new_regions = self.new_regions;
            tasks.spawn(async move {
                let mut watchers = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        region = new_regions.recv() => {
                            let Some(region) = region else { break };
                            tracing::info!(%region, "consuming the region's routing and team events");
                            watchers.spawn(upstream::watch_routing(
                                Arc::clone(&intake),
                                region.clone(),
                                token.clone(),
                            ));
                            watchers.spawn(upstream::watch_teams(
                                Arc::clone(&intake),
                                availability.clone(),
                                region,
                                token.clone(),
                            ));
                        }
                    }
                }
                while watchers.join_next().await.is_some() {}
            });
        }
        let result = self.server.run_until_stopped(shutdown).await;
        token.cancel();
        while tasks.join_next().await.is_some() {}
        result
    }
}

relay_runtime::service!(
    Application,
    storage = STORAGE,
    name = "intake",
    about = "Call intake: the CAD-facing front door; stores, triages and routes incidents and streams their events (gRPC relay.intake.v1.IntakeService).",
);
