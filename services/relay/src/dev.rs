//! `relay dev`: the four services in one process on embedded storage, each on its own
//! loopback port, talking to each other over real gRPC exactly as in production.
//!
//! Availability keeps live state in process (its in-memory team store) and its roster in
//! SQLite; routing claims teams through that same store (the fleet adapter routing uses over
//! Redis in production); intake, routing and the directory keep their records in SQLite files
//! of their own. Nothing needs to be installed.
//!
//! The services serve TLS and ask every caller for a credential, as a deployment does: the
//! data folder gets a local CA, a server certificate, the services' own client certificate
//! (which they present to each other, mapped to every scope) and a token signing key with its
//! JWKS ([`DevFiles::ensure`]); `relay dev` prints the CA's path and a ready token with every
//! scope as `export RELAY_CA_FILE=...` and `export RELAY_TOKEN=...` lines, which
//! `relay simulate`, the demo and the CAD examples read. `--insecure` serves plaintext without
//! credentials instead, with a warning.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use relay_runtime::{
    BoxError, Config,
    clock::{Clock, SystemClock},
    config::{ClockSettings, LogFormat},
    security::pki::{DevFiles, write_file},
    telemetry,
};

/// The subject of the token `relay dev` prints.
pub const DEV_SUBJECT: &str = "relay-dev";
/// How long that token is valid: a working day and then some.
const DEV_TOKEN_SECONDS: i64 = 24 * 3600;

/// What `relay dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// First of the four ports: intake, availability, routing, directory.
    pub port_base: u16,
    /// Where state is kept between runs; `None`: a temporary folder removed at exit.
    pub data_dir: Option<PathBuf>,
    /// Simulated time for every service (`--clock-speed`, `--clock-origin`,
    /// `--clock-anchor`); unset: the wall clock.
    pub clock: ClockSettings,
    /// Plaintext, no credential (`--insecure`); otherwise TLS and tokens.
    pub insecure: bool,
    /// Each principal's requests per second (`--rate-limit`; burst twice that); unset: the
    /// services' defaults.
    pub rate_limit: Option<u32>,
}

fn config(
    service: &'static str,
    port: u16,
    database: &std::path::Path,
    base: u16,
    pki: Option<&DevFiles>,
    rate_limit: Option<u32>,
) -> Result<Config, BoxError> {
    let endpoint = |offset: u16| format!("http://127.0.0.1:{}", base + offset);
    let mut builder = Config::builder(service);
    if service == "intake" {
        // Intake's EIDO HTTP port on a free port (printed at start), like the admin ports.
        builder = builder.set("http_listen", "127.0.0.1:0");
    }
    if let Some(files) = pki {
        // TLS with the local CA; tokens checked against the dev signing key's JWKS; the
        // services call each other over TLS with their own client certificate, whose
        // identity gets every scope. The dev token drives a whole simulated CAD and fleet as
        // one principal, so it gets the service class of rate limit.
        builder = files.configure(builder, &[DEV_SUBJECT]);
    }
    if let Some(per_second) = rate_limit {
        builder = builder
            .set("security.limits.requests_per_second", per_second)
            .set("security.limits.burst", per_second.saturating_mul(2));
    }
    Ok(builder
        .set("insecure_dev", true)
        .set("listen", format!("127.0.0.1:{port}"))
        // One process serves the four: their metrics share one registry, each admin endpoint
        // on a free port (logged at start), so two `relay dev` never collide.
        .set("admin_listen", "127.0.0.1:0")
        .set("database_url", format!("sqlite://{}", database.display()))
        .set("intake_endpoint", endpoint(0))
        .set("availability_endpoint", endpoint(1))
        .set("routing_endpoint", endpoint(2))
        .set("directory_endpoint", endpoint(3))
        .set("availability.backend", "memory")
        .build()?)
}

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs the suite until SIGINT or SIGTERM.
///
/// # Errors
/// When a port is taken, the data folder cannot be used, or a service fails.
pub async fn run(options: DevOptions) -> Result<(), BoxError> {
    let telemetry = telemetry::init(
        "relay-dev",
        &std::env::var("RELAY_LOG").unwrap_or_else(|_| String::from("warn")),
        LogFormat::Text,
    )?;
    let temporary;
    let dir = match options.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().to_owned()
        }
    };
    let base = options.port_base;
    if base > u16::MAX - 3 {
        return Err(format!("--port-base {base} leaves no room for four ports").into());
    }
    let pki = if options.insecure {
        None
    } else {
        Some(DevFiles::ensure(&dir)?)
    };
    let token = dev_token(pki.as_ref(), &dir)?;
    let pki = pki.as_ref();
    // One clock for the four services, so that every time rule follows the same (possibly
    // simulated) time; `relay dev` is a development setup, so a simulated one is allowed.
    let simulated = if options.clock.is_simulated() {
        Some(options.clock.scaled()?)
    } else {
        None
    };
    let clock: Arc<dyn Clock> = match simulated {
        Some(scaled) => Arc::new(scaled),
        None => Arc::new(SystemClock),
    };
    let suite = Suite::build(&dir, base, pki, &clock, options.rate_limit).await?;
    suite.announce(pki, token.as_deref());
    if let Some(scaled) = simulated {
        println!(
            "clock: simulated, {} at {} and {}x as fast (relay simulate --speed {} --clock-origin {} --clock-anchor {})",
            rfc3339(scaled.origin()),
            rfc3339(scaled.anchor()),
            clock.speed(),
            clock.speed(),
            rfc3339(scaled.origin()),
            rfc3339(scaled.anchor()),
        );
    }
    println!("data in {}; Ctrl-C stops", dir.display());
    let Suite {
        intake,
        availability,
        routing,
        directory,
    } = suite;

    let stop = tokio_util::sync::CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        tokio::spawn(async move {
            relay_runtime::shutdown::signal().await;
            stop.cancel();
        })
    };
    let until = |stop: tokio_util::sync::CancellationToken| async move { stop.cancelled().await };
    let result = tokio::try_join!(
        intake.run_until_stopped(until(stop.clone())),
        availability.run_until_stopped(until(stop.clone())),
        routing.run_until_stopped(until(stop.clone())),
        directory.run_until_stopped(until(stop.clone())),
    );
    signal.abort();
    telemetry.shutdown();
    result.map(|_| ())
}

/// The token `relay dev` prints (every scope, a working day), also written to
/// `<dir>/dev-token`; none without TLS.
fn dev_token(pki: Option<&DevFiles>, dir: &Path) -> Result<Option<String>, BoxError> {
    Ok(match pki {
        Some(files) => {
            let token = files.token(DEV_SUBJECT, DEV_TOKEN_SECONDS)?;
            write_file(&dir.join("dev-token"), &token, true)?;
            Some(token)
        }
        None => None,
    })
}

/// The four services of `relay dev`, built on one clock.
struct Suite {
    intake: relay_intake::Application,
    availability: relay_availability::Application,
    routing: relay_routing::Application,
    directory: relay_directory::Application,
}

impl Suite {
    /// Migrates and builds each service on its SQLite file in `dir`; routing dispatches from
    /// availability's in-process live state.
    async fn build(
        dir: &Path,
        base: u16,
        pki: Option<&DevFiles>,
        clock: &Arc<dyn Clock>,
        rate_limit: Option<u32>,
    ) -> Result<Self, BoxError> {
        let db = |name: &str| dir.join(format!("{name}.db"));
        let availability_config = config(
            "availability",
            base + 1,
            &db("availability"),
            base,
            pki,
            rate_limit,
        )?;
        // Migrate before serving, so no call can arrive before the roster's tables exist.
        relay_availability::Application::migrate(&availability_config).await?;
        let availability =
            relay_availability::Application::build_with_clock(availability_config, clock.clone())
                .await?;
        // Routing dispatches from availability's own in-process live state.
        let fleet = availability.dispatch().clone();

        let routing_config = config("routing", base + 2, &db("routing"), base, pki, rate_limit)?;
        relay_routing::Application::migrate(&routing_config).await?;
        let routing =
            relay_routing::Application::build_with_fleet(routing_config, fleet, clock.clone())
                .await?;

        let intake_config = config("intake", base, &db("intake"), base, pki, rate_limit)?;
        relay_intake::Application::migrate(&intake_config).await?;
        let intake =
            relay_intake::Application::build_with_clock(intake_config, clock.clone()).await?;

        let directory_config = config(
            "directory",
            base + 3,
            &db("directory"),
            base,
            pki,
            rate_limit,
        )?;
        relay_directory::Application::migrate(&directory_config).await?;
        let directory =
            relay_directory::Application::build_with_clock(directory_config, clock.clone()).await?;
        Ok(Self {
            intake,
            availability,
            routing,
            directory,
        })
    }

    /// Prints the credentials, then where each service listens.
    fn announce(&self, pki: Option<&DevFiles>, token: Option<&str>) {
        // The credentials first: a script that waits for the four "listening" lines has them.
        let scheme = match (pki, token) {
            (Some(files), Some(token)) => {
                println!(
                    "relay dev serves gRPC over TLS (local CA below) and every call needs a bearer \
                     token: this one has every scope for 24 hours (`relay token issue` makes others)"
                );
                println!("export RELAY_CA_FILE={}", files.ca.display());
                println!("export RELAY_TOKEN={token}");
                "https"
            }
            _ => {
                tracing::warn!(
                    "relay dev --insecure: plaintext gRPC, no credential asked; for this machine only"
                );
                println!(
                    "relay dev --insecure serves plaintext gRPC and asks no credential: for this \
                     machine only"
                );
                "http"
            }
        };
        println!(
            "intake listening on {scheme}://{}",
            self.intake.local_addr()
        );
        // The EIDO port shares the gRPC listener's TLS and credentials.
        println!("intake EIDO on {scheme}://{}/EIDO", self.intake.http_addr());
        println!(
            "availability listening on {scheme}://{}",
            self.availability.local_addr()
        );
        println!(
            "routing listening on {scheme}://{}",
            self.routing.local_addr()
        );
        println!(
            "directory listening on {scheme}://{}",
            self.directory.local_addr()
        );
    }
}
