//! Referral directory: HSDS 3.0 social services with open-now search, live capacity and referrals (gRPC relay.directory.v1.DirectoryService).
//!
//! The crate is a library with a thin `main`: [`Application::build`] binds the server from a
//! [`Config`], and [`Application::run_until_stopped`] serves until shutdown. Tests build the
//! same `Application` on port 0.

use std::net::SocketAddr;

use relay_proto::directory::directory_service_server::DirectoryServiceServer;
use relay_runtime::{
    BoxError, Config,
    cli::{Service, Shutdown},
    server::{BoundServer, ServiceHost},
    storage,
};

mod handler;

pub use handler::DirectoryServiceHandler;

/// The error domain (`google.rpc.ErrorInfo.domain`) of this service: its proto package.
pub const DOMAIN: &str = "relay.directory.v1";

/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "directory";

/// The migrations of [`SCHEMA`], applied by `relay-directory migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The directory service, bound and ready to run.
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
        let host = ServiceHost::new(&config.settings.server)
            .add_service(DirectoryServiceServer::new(DirectoryServiceHandler))
            .readiness_check("postgres", storage::postgres_check(pool));
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

    /// Creates the `directory` schema and applies [`MIGRATOR`].
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
    const NAME: &'static str = "directory";
    const ABOUT: &'static str = "Referral directory: HSDS 3.0 social services with open-now search, live capacity and referrals (gRPC relay.directory.v1.DirectoryService).";

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
