//! Typed configuration in layers: defaults, then an optional TOML file, then `RELAY_*`
//! environment variables (the environment wins).
//!
//! The top-level keys are the operator's contract in DESIGN.md: `RELAY_LISTEN`,
//! `RELAY_DATABASE_URL`, `RELAY_REDIS_URL`, `RELAY_ROUTING_ENDPOINT`,
//! `RELAY_AVAILABILITY_ENDPOINT`, `RELAY_DIRECTORY_ENDPOINT`, `RELAY_INTAKE_ENDPOINT` and
//! `RELAY_LOG`. Nested settings use a double underscore, e.g.
//! `RELAY_SERVER__REQUEST_TIMEOUT_MS=5000` sets `[server] request_timeout_ms = 5000`.
//! A service reads its own section with [`Config::section`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// The default ports of the four services, in the order intake, availability, routing,
/// directory.
pub const DEFAULT_PORTS: [(&str, u16); 4] = [
    ("intake", 50051),
    ("availability", 50052),
    ("routing", 50053),
    ("directory", 50054),
];

/// The default admin (metrics) ports, by service short name.
pub const DEFAULT_ADMIN_PORTS: [(&str, u16); 4] = [
    ("intake", 9451),
    ("availability", 9452),
    ("routing", 9453),
    ("directory", 9454),
];

/// The default port of a service by its short name (`intake`, `routing`, ...).
#[must_use]
pub fn default_port(service: &str) -> Option<u16> {
    DEFAULT_PORTS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, port)| *port)
}

/// A configuration that could not be loaded. The message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// A configuration error about one key.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    fn from_figment(error: figment::Error) -> Self {
        let messages: Vec<String> = error.into_iter().map(|e| describe(&e)).collect();
        Self(messages.join("; "))
    }

    /// As [`Self::from_figment`] for an error read inside the section `section`: figment
    /// reports such a path with the section last (`bogus_key.intake`), which would name the
    /// wrong variable; the section goes first (`intake.bogus_key`, RELAY_INTAKE__BOGUS_KEY).
    fn from_section(error: figment::Error, section: &str) -> Self {
        let messages: Vec<String> = error
            .into_iter()
            .map(|mut e| {
                if e.path.last().map(String::as_str) == Some(section) && e.path.len() > 1 {
                    e.path.pop();
                }
                if e.path.first().map(String::as_str) != Some(section) {
                    e.path.insert(0, section.to_owned());
                }
                describe(&e)
            })
            .collect();
        Self(messages.join("; "))
    }
}

/// One figment error as "key (origin): what is wrong", on a single line. The origin is the
/// environment variable or the file the value came from.
fn describe(error: &figment::Error) -> String {
    let key = if error.path.is_empty() {
        String::from("<root>")
    } else {
        error.path.join(".")
    };
    let origin = match (&error.metadata, &error.profile) {
        (Some(metadata), _) if metadata.name.contains("environment variable") => {
            format!(
                "environment variable RELAY_{}",
                error.path.join("__").to_uppercase()
            )
        }
        (Some(metadata), Some(profile)) => {
            let keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
            let origin = metadata.interpolate(profile, &keys);
            match &metadata.source {
                Some(source) => format!("{origin} in {source}"),
                None => format!("{origin} from {}", metadata.name),
            }
        }
        (Some(metadata), None) => metadata.name.to_string(),
        _ => String::from("defaults"),
    };
    format!("invalid value for `{key}` ({origin}): {}", error.kind)
}

/// An address to listen on. Accepts `host:port`, `[v6]:port` and `:port` (all interfaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if let Some(port) = value.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("`{value}` is not a port number"))?;
            return Ok(Self(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            )));
        }
        value
            .parse()
            .map(Self)
            .map_err(|_| format!("`{value}` is not an address such as 0.0.0.0:50051 or :50051"))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Figment turns `RELAY_LISTEN=50051` into a number; accept that as a port too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Port(u16),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::Port(port) => Ok(Self(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            ))),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default, for terminals).
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Settings of the gRPC server, the same for every service (`[server]`, `RELAY_SERVER__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Longest time one unary call (or the start of a stream) may take, in milliseconds.
    /// A client's shorter `grpc-timeout` wins.
    pub request_timeout_ms: u64,
    /// Calls served at once on one connection; more are refused with `RESOURCE_EXHAUSTED` at
    /// once (load shedding) rather than queued.
    pub concurrency_limit_per_connection: usize,
    /// How long in-flight calls may run after SIGTERM before the process exits anyway, in
    /// seconds. Kubernetes' `terminationGracePeriodSeconds` must be longer than this plus the
    /// `preStop` sleep.
    pub shutdown_grace_seconds: u64,
    /// Connections are closed (gracefully) after this many seconds so that clients reconnect
    /// and spread over new replicas; 0 turns it off.
    pub max_connection_age_seconds: u64,
    /// How often readiness re-checks PostgreSQL and Redis, in milliseconds.
    pub readiness_interval_ms: u64,
    /// Consecutive failed readiness checks before health turns NOT_SERVING (dampening).
    pub readiness_failure_threshold: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            concurrency_limit_per_connection: 512,
            shutdown_grace_seconds: 20,
            max_connection_age_seconds: 300,
            readiness_interval_ms: 2_000,
            readiness_failure_threshold: 3,
        }
    }
}

impl ServerSettings {
    /// [`Self::request_timeout_ms`] as a duration.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Self::shutdown_grace_seconds`] as a duration.
    #[must_use]
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// [`Self::max_connection_age_seconds`] as a duration, `None` when turned off.
    #[must_use]
    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_seconds > 0)
            .then(|| Duration::from_secs(self.max_connection_age_seconds))
    }

    /// [`Self::readiness_interval_ms`] as a duration.
    #[must_use]
    pub fn readiness_interval(&self) -> Duration {
        Duration::from_millis(self.readiness_interval_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.request_timeout_ms", self.request_timeout_ms),
            ("server.readiness_interval_ms", self.readiness_interval_ms),
            (
                "server.concurrency_limit_per_connection",
                self.concurrency_limit_per_connection as u64,
            ),
            (
                "server.readiness_failure_threshold",
                u64::from(self.readiness_failure_threshold),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(format!(
                    "invalid value for `{key}`: must be greater than 0"
                )));
            }
        }
        Ok(())
    }
}

/// The settings every service shares. Service-specific settings live in their own section.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Where the service listens (`RELAY_LISTEN`).
    pub listen: ListenAddr,
    /// PostgreSQL (`postgres://...`) or SQLite (`sqlite://path`) URL (`RELAY_DATABASE_URL`).
    #[serde(default)]
    pub database_url: Option<SecretString>,
    /// Redis URL (`redis://...` or `rediss://...`) (`RELAY_REDIS_URL`); several, separated by
    /// commas, are the nodes of a Redis Cluster.
    #[serde(default)]
    pub redis_url: Option<SecretString>,
    /// Whether a single `redis_url` is a Redis Cluster's node or configuration endpoint
    /// (`RELAY_REDIS_CLUSTER`, default false). See `relay_runtime::redis_link`.
    #[serde(default)]
    pub redis_cluster: bool,
    /// The CA (PEM file) a `rediss://` server's certificate must chain to
    /// (`RELAY_REDIS_CA_FILE`); unset: the system's roots.
    #[serde(default)]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM file) for Redis servers that require one
    /// (`RELAY_REDIS_CERT_FILE`, with `RELAY_REDIS_KEY_FILE`).
    #[serde(default)]
    pub redis_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM file) (`RELAY_REDIS_KEY_FILE`).
    #[serde(default)]
    pub redis_key_file: Option<std::path::PathBuf>,
    /// Where intake listens (`RELAY_INTAKE_ENDPOINT`).
    pub intake_endpoint: String,
    /// Where availability listens (`RELAY_AVAILABILITY_ENDPOINT`).
    pub availability_endpoint: String,
    /// Where routing listens (`RELAY_ROUTING_ENDPOINT`).
    pub routing_endpoint: String,
    /// Where the directory listens (`RELAY_DIRECTORY_ENDPOINT`).
    pub directory_endpoint: String,
    /// Log filter in `tracing` syntax (`RELAY_LOG`), e.g. `info` or `info,relay_routing=debug`.
    #[serde(default = "default_log")]
    pub log: String,
    /// `text` or `json` (`RELAY_LOG_FORMAT`).
    #[serde(default)]
    pub log_format: LogFormat,
    /// gRPC server settings (`[server]`, `RELAY_SERVER__*`).
    #[serde(default)]
    pub server: ServerSettings,
    /// Where the admin HTTP endpoint (`GET /metrics`) listens (`RELAY_ADMIN_LISTEN`). Unset:
    /// the service's default admin port on the gRPC listen address's host, or a free port when
    /// the gRPC port is 0 (tests, `relay dev`).
    #[serde(default)]
    pub admin_listen: Option<ListenAddr>,
    /// The key that signs list page tokens (`RELAY_PAGE_TOKEN_SECRET`), the same for every
    /// service and every replica: a page token from one replica is refused by another signed
    /// with a different key. Required unless [`Settings::insecure_dev`].
    #[serde(default)]
    pub page_token_secret: Option<SecretString>,
    /// A development setup in one process (`RELAY_INSECURE_DEV=true`; `relay dev` sets it):
    /// page tokens may be signed with a random key, and the clock may be simulated
    /// ([`Settings::clock`]). Never set it in a deployment.
    #[serde(default)]
    pub insecure_dev: bool,
    /// The clock every time rule reads (`[clock]`, `RELAY_CLOCK__*`): the wall clock unless
    /// a simulation sets a speed or an origin.
    #[serde(default)]
    pub clock: ClockSettings,
    /// The service's database: pool size, migrations at start, and the time bound of each
    /// operation (`[database]`, `RELAY_DATABASE__*`; the URL is `RELAY_DATABASE_URL`).
    #[serde(default)]
    pub database: DatabaseSettings,
    /// TLS, authentication and scopes (`[security]`, `RELAY_SECURITY__*`, and the
    /// operator's names `RELAY_TLS_CERT`, `RELAY_AUTH_JWKS`, ...): see
    /// [`crate::security::SecuritySettings`].
    #[serde(default)]
    pub security: crate::security::SecuritySettings,
    /// The audit trail's retention and queue (`[audit]`, `RELAY_AUDIT__*`).
    #[serde(default)]
    pub audit: crate::audit::settings::AuditSettings,
}

/// The database settings every service has, one block under the same names for each
/// (`[database]`, `RELAY_DATABASE__*`); each process reads its own environment, so a value
/// set for one service's pods applies to that service. The URL is `RELAY_DATABASE_URL`.
///
/// Unset keys take the service's own default (see `relay_runtime::storage::Storage`): the
/// pool size differs by service, and only availability migrates PostgreSQL at start unless
/// told (SQLite, `relay dev`, is always migrated at start).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connections in the pool (`RELAY_DATABASE__MAX_CONNECTIONS`); unset: the service's
    /// default.
    pub max_connections: Option<u32>,
    /// Apply the service's PostgreSQL migrations at start (`RELAY_DATABASE__MIGRATE_ON_START`);
    /// unset: the service's default. `relay-<service> migrate` applies them alone.
    pub migrate_on_start: Option<bool>,
    /// The longest one database operation (a statement, or a transaction, including the wait
    /// for a pooled connection) may take before the call fails `UNAVAILABLE`, in milliseconds
    /// (`RELAY_DATABASE__QUERY_TIMEOUT_MS`, default 3000): what bounds a call when PostgreSQL
    /// is partitioned away (packets dropped, connections left open). Keep it below
    /// `server.request_timeout_ms`.
    pub query_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: None,
            migrate_on_start: None,
            query_timeout_ms: 3_000,
        }
    }
}

impl DatabaseSettings {
    /// [`Self::query_timeout_ms`] as a duration.
    #[must_use]
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.query_timeout_ms == 0 {
            return Err(ConfigError::new(
                "invalid value for `database.query_timeout_ms` (RELAY_DATABASE__QUERY_TIMEOUT_MS): \
                 must be greater than 0",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::new(
                "invalid value for `database.max_connections` (RELAY_DATABASE__MAX_CONNECTIONS): \
                 must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// The names the `[database]` keys had in a service's own section, still read from the
/// environment: (service, old key, `[database]` key). `RELAY_INTAKE__RUN_MIGRATIONS=true` on
/// intake is `RELAY_DATABASE__MIGRATE_ON_START=true`; the new name wins when both are set. An
/// old name of another service is ignored, as that service's section always was.
pub const DATABASE_ENV_ALIASES: [(&str, &str, &str); 4] = [
    (
        "intake",
        "intake.run_migrations",
        "database.migrate_on_start",
    ),
    (
        "intake",
        "intake.max_connections",
        "database.max_connections",
    ),
    (
        "availability",
        "availability.migrate_on_start",
        "database.migrate_on_start",
    ),
    (
        "directory",
        "directory.max_connections",
        "database.max_connections",
    ),
];

/// Simulated time for `relay dev` and `relay simulate` (`[clock]`, `RELAY_CLOCK__SPEED`,
/// `RELAY_CLOCK__ORIGIN`, `RELAY_CLOCK__ANCHOR`): every time rule of the service (queue
/// escalation, review waits, recommendation expiry, stale positions, program hours, shift
/// ends, retention, the 60 s limit on timestamps ahead of the server) then follows
/// `origin + speed × (wall now − anchor)`. Services and a simulator given the same three
/// values read the same time. Refused unless `insecure_dev` is set: a deployment always runs
/// on the wall clock.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClockSettings {
    /// Simulated seconds per wall-clock second; unset: 1.
    pub speed: Option<f64>,
    /// The simulated time at `anchor`, RFC 3339; unset: the wall time when the clock is made.
    pub origin: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall instant at which the clock reads `origin`, RFC 3339; unset: `origin`.
    pub anchor: Option<chrono::DateTime<chrono::Utc>>,
}

impl ClockSettings {
    /// Whether these settings ask for anything but the wall clock.
    #[must_use]
    pub fn is_simulated(&self) -> bool {
        self.speed.is_some() || self.origin.is_some() || self.anchor.is_some()
    }

    /// The clock these settings describe: [`crate::clock::SystemClock`] when nothing is
    /// set, else a [`crate::clock::ScaledClock`], allowed only when `insecure_dev`.
    ///
    /// # Errors
    /// A simulated clock outside development, or an invalid speed.
    pub fn build(
        &self,
        insecure_dev: bool,
    ) -> Result<std::sync::Arc<dyn crate::clock::Clock>, ConfigError> {
        if !self.is_simulated() {
            return Ok(std::sync::Arc::new(crate::clock::SystemClock));
        }
        if !insecure_dev {
            return Err(ConfigError::new(
                "`clock` (RELAY_CLOCK__SPEED, RELAY_CLOCK__ORIGIN, RELAY_CLOCK__ANCHOR) sets a \
                 simulated clock, which only a development setup may use: unset it, or set \
                 RELAY_INSECURE_DEV=true for `relay dev` and simulations",
            ));
        }
        Ok(std::sync::Arc::new(self.scaled()?))
    }

    /// The simulated clock these settings describe (origin: now when unset; anchor: the
    /// origin when unset; speed: 1 when unset), whatever the environment.
    ///
    /// # Errors
    /// An invalid speed.
    pub fn scaled(&self) -> Result<crate::clock::ScaledClock, ConfigError> {
        let origin = self.origin.unwrap_or_else(chrono::Utc::now);
        let anchor = self.anchor.unwrap_or(origin);
        crate::clock::ScaledClock::new(origin, anchor, self.speed.unwrap_or(1.0))
            .map_err(|e| ConfigError::new(format!("invalid value for `clock.speed`: {e}")))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.speed {
            Some(speed) if !(speed.is_finite() && speed > 0.0) => Err(ConfigError::new(format!(
                "invalid value for `clock.speed` (RELAY_CLOCK__SPEED): {speed} is not a number \
                 greater than 0"
            ))),
            _ => Ok(()),
        }
    }
}

impl Settings {
    /// The clock of the service: [`crate::clock::SystemClock`], or the simulated
    /// [`crate::clock::ScaledClock`] of [`Settings::clock`] in [`Settings::insecure_dev`].
    ///
    /// # Errors
    /// When `[clock]` is set outside development: one line naming the variables.
    pub fn clock(&self) -> Result<std::sync::Arc<dyn crate::clock::Clock>, ConfigError> {
        self.clock.build(self.insecure_dev)
    }

    /// The page-token signer: from [`Settings::page_token_secret`], or a random key in
    /// [`Settings::insecure_dev`].
    ///
    /// # Errors
    /// When no secret is set outside development: one line naming the variable.
    pub fn page_tokens(&self) -> Result<crate::paging::PageTokens, ConfigError> {
        use secrecy::ExposeSecret;
        match &self.page_token_secret {
            Some(secret) if !secret.expose_secret().is_empty() => Ok(
                crate::paging::PageTokens::new(secret.expose_secret().as_bytes()),
            ),
            _ if self.insecure_dev => Ok(crate::paging::PageTokens::random()),
            _ => Err(ConfigError(
                "missing `page_token_secret` (RELAY_PAGE_TOKEN_SECRET): every replica must sign \
                 page tokens with the same key; set it from a secret (or RELAY_INSECURE_DEV=true \
                 for a single development process)"
                    .into(),
            )),
        }
    }

    /// The admin address of `service` (see [`Settings::admin_listen`]).
    #[must_use]
    pub fn admin_addr(&self, service: &str) -> SocketAddr {
        if let Some(addr) = &self.admin_listen {
            return addr.0;
        }
        let port = if self.listen.0.port() == 0 {
            0
        } else {
            DEFAULT_ADMIN_PORTS
                .iter()
                .find(|(name, _)| *name == service)
                .map_or(0, |(_, port)| *port)
        };
        SocketAddr::new(self.listen.0.ip(), port)
    }
}

fn default_log() -> String {
    String::from("info")
}

/// A loaded configuration: the shared [`Settings`] and the layers they came from, from which a
/// service reads its own section.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service this configuration was loaded for (`intake`, `routing`, ...).
    pub service: &'static str,
    /// The settings every service shares.
    pub settings: Settings,
    figment: Figment,
    operator: bool,
}

impl Config {
    /// Whether TLS and authentication may be off: in a development setup
    /// (`insecure_dev`), or for a configuration built in code alone, with neither a file nor
    /// the environment (a test, or a program embedding a service, which chooses its own
    /// transport). What an operator gives (a file, `RELAY_*` variables, so every binary)
    /// follows the secure default. See [`crate::security::SecuritySettings::posture`].
    #[must_use]
    pub fn insecure_allowed(&self) -> bool {
        self.settings.insecure_dev || !self.operator
    }

    /// Starts a configuration for `service` (its short name) with the documented defaults.
    #[must_use]
    pub fn builder(service: &'static str) -> ConfigBuilder {
        let port = default_port(service).unwrap_or(0);
        let mut figment = Figment::new()
            .merge(Serialized::default("listen", format!("0.0.0.0:{port}")))
            .merge(Serialized::default("log", "info"));
        for (name, port) in DEFAULT_PORTS {
            figment = figment.merge(Serialized::default(
                &format!("{name}_endpoint"),
                format!("http://127.0.0.1:{port}"),
            ));
        }
        ConfigBuilder {
            service,
            figment,
            operator: false,
        }
    }

    /// Loads the configuration of `service` from an optional TOML file and the environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and its source when a value is missing or invalid.
    pub fn load(service: &'static str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Self::builder(service);
        if let Some(file) = file {
            builder = builder.file(file)?;
        }
        builder.env().build()
    }

    /// Reads the service's own section, e.g. `[routing]` (`RELAY_ROUTING__*`); a missing
    /// section gives the type's defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key when a value is invalid.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        if self.figment.contains(key) {
            self.figment
                .extract_inner(key)
                .map_err(|e| ConfigError::from_section(e, key))
        } else {
            Ok(T::default())
        }
    }

    /// The database URL, or an error naming `RELAY_DATABASE_URL` when it is not set.
    ///
    /// # Errors
    /// When `database_url` is not configured.
    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        self.settings.database_url.as_ref().ok_or_else(|| {
            ConfigError::new(format!(
                "missing value for `database_url` (RELAY_DATABASE_URL): relay-{} needs a PostgreSQL or SQLite URL",
                self.service
            ))
        })
    }

    /// Where Redis is (`RELAY_REDIS_URL`, `RELAY_REDIS_CLUSTER`): a single server or a cluster.
    ///
    /// # Errors
    /// When `redis_url` is not configured or invalid.
    pub fn redis_target(&self) -> Result<crate::redis_link::RedisTarget, ConfigError> {
        crate::redis_link::RedisTarget::open_with_tls(
            secrecy::ExposeSecret::expose_secret(self.redis_url()?),
            self.settings.redis_cluster,
            self.redis_tls()?,
        )
        .map_err(|error| ConfigError::new(format!("invalid value for `redis_url`: {error}")))
    }

    /// The CA and client certificate for `rediss://`, read from their files, or `None` when
    /// none is configured.
    fn redis_tls(&self) -> Result<Option<crate::redis_link::RedisTls>, ConfigError> {
        let read = |key: &str, path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map(|path| {
                    std::fs::read(path).map_err(|error| {
                        ConfigError::new(format!(
                            "invalid value for `{key}`: cannot read {}: {error}",
                            path.display()
                        ))
                    })
                })
                .transpose()
        };
        let settings = &self.settings;
        let ca = read("redis_ca_file", &settings.redis_ca_file)?;
        let client = match (
            read("redis_cert_file", &settings.redis_cert_file)?,
            read("redis_key_file", &settings.redis_key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "missing value for `redis_key_file` (RELAY_REDIS_KEY_FILE): `redis_cert_file` needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "missing value for `redis_cert_file` (RELAY_REDIS_CERT_FILE): `redis_key_file` needs its certificate",
                ));
            }
        };
        Ok(
            (ca.is_some() || client.is_some())
                .then_some(crate::redis_link::RedisTls { ca, client }),
        )
    }

    /// The Redis URL, or an error naming `RELAY_REDIS_URL` when it is not set.
    ///
    /// # Errors
    /// When `redis_url` is not configured.
    pub fn redis_url(&self) -> Result<&SecretString, ConfigError> {
        self.settings.redis_url.as_ref().ok_or_else(|| {
            ConfigError::new(format!(
                "missing value for `redis_url` (RELAY_REDIS_URL): relay-{} needs a Redis URL",
                self.service
            ))
        })
    }
}

/// Builds a [`Config`] layer by layer; later layers win.
#[derive(Debug)]
pub struct ConfigBuilder {
    service: &'static str,
    figment: Figment,
    /// Whether a file or the environment was added: an operator's configuration.
    operator: bool,
}

impl ConfigBuilder {
    /// Adds a TOML file, which must exist.
    ///
    /// # Errors
    /// When the file does not exist.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::new(format!(
                "configuration file {} does not exist",
                path.display()
            )));
        }
        self.figment = self.figment.merge(Toml::file_exact(path));
        self.operator = true;
        Ok(self)
    }

    /// Adds the `RELAY_*` environment variables (`__` separates nested keys).
    #[must_use]
    pub fn env(mut self) -> Self {
        let service = self.service;
        self.figment = self
            .figment
            // The old names of `[database]` keys (DATABASE_ENV_ALIASES), first, so that the
            // new names, merged next, win.
            .merge(Env::prefixed("RELAY_").split("__").filter_map(move |key| {
                DATABASE_ENV_ALIASES
                    .iter()
                    .find(|(owner, old, _)| *owner == service && key == *old)
                    .map(|(_, _, new)| (*new).into())
            }))
            .merge(
                Env::prefixed("RELAY_")
                    .split("__")
                    .ignore(&["config"])
                    .filter(|key| !DATABASE_ENV_ALIASES.iter().any(|(_, old, _)| key == *old)),
            )
            // The operator's names of DESIGN.md (`RELAY_TLS_CERT`) for keys of `[security]`.
            .merge(Env::prefixed("RELAY_").filter_map(|key| {
                crate::security::ENV_ALIASES
                    .iter()
                    .find(|(alias, _)| key == *alias)
                    .map(|(_, target)| (*target).into())
            }));
        self.operator = true;
        self
    }

    /// Sets one key, as a test or an embedding program would (`"server.request_timeout_ms"`).
    #[must_use]
    pub fn set(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.figment = self.figment.merge(Serialized::default(key, value));
        self
    }

    /// Checks and returns the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid key and where it came from.
    pub fn build(self) -> Result<Config, ConfigError> {
        let settings: Settings = self.figment.extract().map_err(ConfigError::from_figment)?;
        settings.server.validate()?;
        settings.clock.validate()?;
        settings.database.validate()?;
        settings.audit.validate(settings.insecure_dev)?;
        Ok(Config {
            service: self.service,
            settings,
            figment: self.figment,
            operator: self.operator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_operator_table() {
        let config = Config::builder("routing")
            .build()
            .expect("defaults are valid");
        assert_eq!(config.settings.listen.to_string(), "0.0.0.0:50053");
        assert_eq!(config.settings.intake_endpoint, "http://127.0.0.1:50051");
        assert_eq!(config.settings.directory_endpoint, "http://127.0.0.1:50054");
        assert_eq!(config.settings.log, "info");
        assert!(config.settings.database_url.is_none());
    }

    #[test]
    fn listen_accepts_port_only_forms() {
        let config = Config::builder("intake")
            .set("listen", ":6000")
            .build()
            .expect("valid");
        assert_eq!(config.settings.listen.to_string(), "0.0.0.0:6000");
        let config = Config::builder("intake")
            .set("listen", 6001)
            .build()
            .expect("valid");
        assert_eq!(config.settings.listen.to_string(), "0.0.0.0:6001");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = Config::builder("intake")
            .set("listen", "not-an-address")
            .build()
            .expect_err("invalid listen address");
        let message = error.to_string();
        assert!(message.contains("`listen`"), "{message}");
        assert!(message.contains("not-an-address"), "{message}");

        let error = Config::builder("intake")
            .set("server.request_timeout_ms", "soon")
            .build()
            .expect_err("invalid timeout");
        assert!(
            error.to_string().contains("server.request_timeout_ms"),
            "{error}"
        );

        let error = Config::builder("intake")
            .set("server.request_timeout_ms", 0)
            .build()
            .expect_err("zero timeout");
        assert!(
            error.to_string().contains("server.request_timeout_ms"),
            "{error}"
        );
    }

    #[test]
    fn later_layers_win_and_sections_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nlog = \"debug\"\n[demo]\nlimit = 7\n",
        )
        .expect("write");
        let config = Config::builder("intake")
            .file(&file)
            .expect("file exists")
            .set("log", "warn")
            .build()
            .expect("valid");
        assert_eq!(config.settings.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.settings.log, "warn");

        #[derive(Debug, Default, Deserialize, PartialEq)]
        struct Demo {
            limit: u32,
        }
        assert_eq!(
            config.section::<Demo>("demo").expect("valid"),
            Demo { limit: 7 }
        );
        assert_eq!(
            config.section::<Demo>("absent").expect("valid"),
            Demo::default()
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let error = Config::builder("intake")
            .file(Path::new("/nonexistent/relay.toml"))
            .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/relay.toml"));
    }

    #[test]
    fn a_simulated_clock_needs_insecure_dev() {
        let config = Config::builder("routing").build().expect("valid");
        let wall = config.settings.clock().expect("the wall clock");
        assert!((wall.speed() - 1.0).abs() < f64::EPSILON);

        let simulated = || {
            Config::builder("routing")
                .set("clock.speed", 120.0)
                .set("clock.origin", "2020-01-06T08:00:00Z")
        };
        let error = simulated()
            .build()
            .expect("valid values")
            .settings
            .clock()
            .expect_err("refused outside development");
        assert!(error.to_string().contains("RELAY_INSECURE_DEV"), "{error}");

        let config = simulated()
            .set("insecure_dev", true)
            .build()
            .expect("valid");
        let clock = config.settings.clock().expect("simulated");
        assert!((clock.speed() - 120.0).abs() < f64::EPSILON);
        // Anchored at the origin, which is in the past: simulated time is far ahead.
        assert!(clock.now() > chrono::Utc::now() + chrono::TimeDelta::days(30));

        let error = Config::builder("routing")
            .set("clock.speed", 0.0)
            .build()
            .expect_err("zero speed");
        assert!(error.to_string().contains("clock.speed"), "{error}");
    }

    #[test]
    fn security_reads_the_operator_names_and_its_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "[security]\ntls_cert = \"/certs/tls.crt\"\nreflection = \"off\"\n\
             [security.identities.\"spiffe://relay/intake\"]\nscopes = [\"assignments.write\"]\n",
        )
        .expect("write");
        let config = Config::builder("routing")
            .file(&file)
            .expect("file exists")
            .build()
            .expect("valid");
        let security = &config.settings.security;
        assert_eq!(
            security.tls_cert.as_deref(),
            Some(Path::new("/certs/tls.crt"))
        );
        assert_eq!(security.reflection, crate::security::Reflection::Off);
        assert_eq!(
            security.identities["spiffe://relay/intake"].scopes,
            ["assignments.write"]
        );
        let error = Config::builder("routing")
            .set("security.tls_certificate", "x")
            .build()
            .expect_err("unknown key");
        assert!(error.to_string().contains("tls_certificate"), "{error}");
    }

    #[test]
    fn the_database_block_defaults_and_names_its_keys() {
        let config = Config::builder("intake").build().expect("valid");
        assert_eq!(config.settings.database, DatabaseSettings::default());
        assert_eq!(
            config.settings.database.query_timeout(),
            Duration::from_secs(3)
        );
        let config = Config::builder("intake")
            .set("database.max_connections", 7)
            .set("database.migrate_on_start", true)
            .set("database.query_timeout_ms", 1500)
            .build()
            .expect("valid");
        assert_eq!(
            config.settings.database,
            DatabaseSettings {
                max_connections: Some(7),
                migrate_on_start: Some(true),
                query_timeout_ms: 1500,
            }
        );
        for (key, value) in [
            ("database.query_timeout_ms", 0),
            ("database.max_connections", 0),
        ] {
            let error = Config::builder("intake")
                .set(key, value)
                .build()
                .expect_err("zero");
            assert!(error.to_string().contains(key), "{error}");
        }
        let error = Config::builder("intake")
            .set("database.pool_size", 3)
            .build()
            .expect_err("unknown key");
        assert!(error.to_string().contains("pool_size"), "{error}");
    }

    #[test]
    fn required_urls_name_their_variable() {
        let config = Config::builder("routing").build().expect("valid");
        let error = config.redis_url().expect_err("not set");
        assert!(error.to_string().contains("RELAY_REDIS_URL"));
        let error = config.database_url().expect_err("not set");
        assert!(error.to_string().contains("RELAY_DATABASE_URL"));
    }

    #[test]
    fn redis_tls_files_are_checked_and_name_their_keys() {
        let ca = std::env::temp_dir().join(format!("relay-config-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        // A CA for a plaintext URL is a mistake, not a silent downgrade.
        let config = Config::builder("routing")
            .set("redis_url", "redis://127.0.0.1:6379")
            .set("redis_ca_file", ca.to_str().expect("utf-8"))
            .build()
            .expect("valid");
        let error = config.redis_target().expect_err("CA with redis://");
        assert!(error.to_string().contains("not rediss://"), "{error}");
        // A certificate without its key names the missing key.
        let config = Config::builder("routing")
            .set("redis_url", "rediss://127.0.0.1:6380")
            .set("redis_cert_file", ca.to_str().expect("utf-8"))
            .build()
            .expect("valid");
        let error = config.redis_target().expect_err("cert without key");
        assert!(
            error.to_string().contains("RELAY_REDIS_KEY_FILE"),
            "{error}"
        );
        // An unreadable file names its key.
        let config = Config::builder("routing")
            .set("redis_url", "rediss://127.0.0.1:6380")
            .set("redis_ca_file", "/nonexistent/ca.pem")
            .build()
            .expect("valid");
        let error = config.redis_target().expect_err("missing file");
        assert!(error.to_string().contains("`redis_ca_file`"), "{error}");
        // A password in the URL never reaches an error message.
        let config = Config::builder("routing")
            .set("redis_url", "redis://relay:hunter2@127.0.0.1:6379")
            .set("redis_ca_file", ca.to_str().expect("utf-8"))
            .build()
            .expect("valid");
        let error = config.redis_target().expect_err("CA with redis://");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let _ = std::fs::remove_file(ca);
    }
}
