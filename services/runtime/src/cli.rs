//! The `main` of every service binary: `relay-<service> [--config FILE] [serve|migrate]`.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    BoxError,
    config::{Config, ConfigError},
    error::cause_chain,
    shutdown, telemetry,
};

/// The shutdown future handed to a running service.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a service binary provides to [`main`].
pub trait Service: Sized + Send + 'static {
    /// Short name: `intake`, `availability`, `routing` or `directory`.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;

    /// Builds the service and binds its listener.
    fn build(config: Config) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// The bound address.
    fn local_addr(&self) -> SocketAddr;

    /// Serves until `shutdown` completes, then drains.
    fn run_until_stopped(
        self,
        shutdown: Shutdown,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Applies the service's database migrations.
    fn migrate(config: Config) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Implements [`Service`] for a service's `Application`, whose inherent `build(Config)`,
/// `local_addr()` and `run_until_stopped(Shutdown)` the trait calls, and gives it the inherent
/// `migrate(&Config)` of its [`Storage`](crate::storage::Storage) (what `relay-<svc> migrate`
/// and `relay dev` run): the part of every service's `lib.rs` that is not its own.
///
/// ```ignore
/// relay_runtime::service!(Application, storage = STORAGE, name = "routing", about = "Routing: …");
/// ```
#[macro_export]
macro_rules! service {
    ($app:ty, storage = $storage:expr, name = $name:literal, about = $about:literal $(,)?) => {
        impl $app {
            #[doc = concat!("Applies the `", $name, "` migrations to the configured database ")]
            /// (PostgreSQL, creating the schema, or SQLite).
            ///
            /// # Errors
            /// When the database is unreachable or a migration fails.
            pub async fn migrate(config: &$crate::Config) -> Result<(), $crate::BoxError> {
                $storage.migrate(config).await
            }
        }

        impl $crate::cli::Service for $app {
            const NAME: &'static str = $name;
            const ABOUT: &'static str = $about;

            async fn build(config: $crate::Config) -> Result<Self, $crate::BoxError> {
                Self::build(config).await
            }

            fn local_addr(&self) -> std::net::SocketAddr {
                self.local_addr()
            }

            async fn run_until_stopped(
                self,
                shutdown: $crate::cli::Shutdown,
            ) -> Result<(), $crate::BoxError> {
                self.run_until_stopped(shutdown).await
            }

            async fn migrate(config: $crate::Config) -> Result<(), $crate::BoxError> {
                Self::migrate(&config).await
            }
        }
    };
}

#[derive(Debug, Parser)]
struct Cli {
    /// A TOML configuration file. `RELAY_*` environment variables override its values.
    #[arg(long, global = true, value_name = "FILE", env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API until SIGTERM or SIGINT (the default).
    Serve,
    /// Apply this service's database migrations to RELAY_DATABASE_URL and exit.
    Migrate,
}

/// Parses the command line, loads configuration, sets up telemetry and runs the service.
/// Exit codes: 0 after a clean shutdown or migration, 2 for a configuration error, 1 otherwise.
#[must_use]
pub fn main<S: Service>() -> ExitCode {
    let binary = format!("relay-{}", S::NAME);
    let matches = Cli::command()
        .name(binary.clone())
        .bin_name(binary.clone())
        .about(S::ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let config = match Config::load(S::NAME, cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{binary}: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run::<S>(
        &binary,
        cli.command.unwrap_or(Command::Serve),
        config,
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A bad setting is one line naming the key, and exit 2, wherever it was found.
        Err(error) if error.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("{binary}: configuration error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("{binary}: {}", cause_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A configuration error that reached us wrapped in an I/O error (the listener's bind
/// refuses an incomplete `[security]` block), unwrapped so it is one line and exit 2.
fn configuration_error(error: BoxError) -> BoxError {
    let inner = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .and_then(|inner| inner.downcast_ref::<ConfigError>())
        .map(|config| ConfigError::new(config.to_string()));
    match inner {
        Some(config) => Box::new(config),
        None => error,
    }
}

async fn run<S: Service>(binary: &str, command: Command, config: Config) -> Result<(), BoxError> {
    let telemetry = telemetry::init(binary, &config.settings.log, config.settings.log_format)?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "{binary} starting");
    let result = match command {
        Command::Migrate => {
            let result = S::migrate(config).await;
            if result.is_ok() {
                println!("{} migrations applied", S::NAME);
            }
            result
        }
        Command::Serve => {
            // The scheme clients use; a refused posture fails in `build` (at bind), in the
            // order the service reads its settings.
            let scheme = match config.settings.security.posture(config.insecure_allowed()) {
                Ok(posture) if posture.plaintext => "http",
                _ => "https",
            };
            match S::build(config).await {
                Ok(service) => {
                    println!(
                        "{} listening on {scheme}://{}",
                        S::NAME,
                        service.local_addr()
                    );
                    service
                        .run_until_stopped(Box::pin(shutdown::signal()))
                        .await
                }
                Err(error) => Err(configuration_error(error)),
            }
        }
    };
    if let Err(error) = &result
        && error.downcast_ref::<ConfigError>().is_none()
    {
        tracing::error!(error.cause_chain = %cause_chain(error.as_ref()), "{} failed", S::NAME);
    }
    telemetry.shutdown();
    result
}
