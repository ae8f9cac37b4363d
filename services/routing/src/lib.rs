//! Routing: ranks free teams for a call, claims the chosen one atomically, and queues calls no team can take (gRPC relay.routing.v1.RoutingService).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0.

use std::net::SocketAddr;

use relay_proto::routing::routing_service_server::RoutingServiceServer;
use relay_runtime::{
    BoxError, Config,
    cli::{Service, Shutdown},
    server::{BoundServer, ServiceHost},
    storage,
};

pub mod eta;
mod handler;
pub mod ranking;
pub mod settings;

pub use handler::RoutingServiceHandler;

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.routing.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "routing";

/// The migrations of [`SCHEMA`], applied by `relay-routing migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The routing service, bound and ready to run.
#[derive(Debug)]
pub struct Application {
    server: BoundServer,
}

impl Application {
    /// Builds the service from its configuration and binds `RELAY_LISTEN`.
    ///
    /// # Errors
    /// When a required setting is missing or the address cannot be bound.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let pool = storage::postgres_pool(config.database_url()?, SCHEMA, 10)?;
        let redis = storage::redis_client(config.redis_url()?)?;
        let host = ServiceHost::new(&config.settings.server)
            .add_service(RoutingServiceServer::new(RoutingServiceHandler))
            .readiness_check("postgres", storage::postgres_check(pool))
            .readiness_check("redis", storage::redis_check(redis));
        let server = host.bind(config.settings.listen.0).await?;
        Ok(Self { server })
    }

    /// The address the service listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        self.server.run_until_stopped(shutdown).await
    }

    /// Creates the `routing` schema and applies [`MIGRATOR`].
    ///
    /// # Errors
    /// When PostgreSQL is unreachable or a migration fails.
    pub async fn migrate(config: &Config) -> Result<(), BoxError> {
        let pool = storage::postgres_pool(config.database_url()?, SCHEMA, 1)?;
        storage::migrate_postgres(&pool, SCHEMA, &MIGRATOR).await?;
        pool.close().await;
        Ok(())
    }
}

impl Service for Application {
    const NAME: &'static str = "routing";
    const ABOUT: &'static str = "Routing: ranks free teams for a call, claims the chosen one atomically, and queues calls no team can take (gRPC relay.routing.v1.RoutingService).";

    async fn build(config: Config) -> Result<Self, BoxError> {
        Self::build(config).await
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr()
    }

    async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), BoxError> {
        self.run_until_stopped(shutdown).await
    }

    async fn migrate(config: Config) -> Result<(), BoxError> {
        Self::migrate(&config).await
    }
}
