//! The settings every service has: `[server]`, `[database]`, `[clock]` and the top-level
//! keys, with their defaults and the environment aliases.

use super::*;

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
