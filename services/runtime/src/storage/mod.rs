//! Connections to PostgreSQL and Redis, and the readiness checks built on them.
//!
//! Each service owns one PostgreSQL schema (`intake`, `routing`, ...). Its pool sets
//! `search_path` to that schema, so its tables and its `_sqlx_migrations` record live there and
//! four services can share one database without touching each other's tables. Pools connect
//! lazily: a service starts (NOT_SERVING) while its database is down and turns SERVING when the
//! readiness check reaches it.
//!
//! A service describes its database once, as a [`Storage`] (schema, migrations, defaults);
//! [`Storage::open`] gives its [`Database`] from the `[database]` settings, which the service
//! migrates at start ([`Storage::start`]), checks (readiness) and closes, and from whose pool
//! it builds its stores. Every store operation a caller waits on runs under the
//! [`QueryBound`] of `database.query_timeout_ms`: without it, a call whose pooled connection
//! stops getting answers (a network partition: packets dropped, the connection left open)
//! waits for its whole deadline, since sqlx bounds only the wait for a connection.

use std::{future::Future, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{BoxError, config::Config, redis_link::RedisTarget, server::CheckFuture};

mod macros;

/// How long a caller waits for a pooled connection before the call fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle longer than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Errors opening or migrating storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The schema name is not a plain lowercase identifier.
    #[error("schema name `{0}` must match [a-z_]+")]
    BadSchema(String),
    /// PostgreSQL refused or failed.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

fn check_schema(schema: &str) -> Result<(), StorageError> {
    if !schema.is_empty() && schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Ok(())
    } else {
        Err(StorageError::BadSchema(schema.to_owned()))
    }
}

/// A lazily connecting pool whose sessions use `schema` as their `search_path`.
///
/// A connection is pinged before it is handed out only when it sat idle for
/// [`PING_AFTER_IDLE`] (after a database restart, say). sqlx's default pings on every
/// acquire, a round trip to PostgreSQL before each query; a busy connection has just proved
/// itself (sqlx also pings each one as it returns to the pool), and a query on a connection
/// that broke anyway fails with the error the caller handles.
///
/// # Errors
/// When the URL or the schema name is invalid.
pub fn postgres_pool(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
) -> Result<PgPool, StorageError> {
    check_schema(schema)?;
    let options = PgConnectOptions::from_str(url.expose_secret())?
        .options([("search_path", schema)])
        .application_name(&format!("relay-{schema}"));
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options);
    crate::metrics::observe_pool(schema, &pool, max_connections);
    Ok(pool)
}

/// Creates `schema` if needed and applies `migrator` inside it.
///
/// # Errors
/// When PostgreSQL is unreachable or a migration fails.
pub async fn migrate_postgres(
    pool: &PgPool,
    schema: &str,
    migrator: &Migrator,
) -> Result<(), StorageError> {
    check_schema(schema)?;
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    // Two services migrating at once can race on the catalog; the second attempt sees the schema.
    if sqlx::query(&create).execute(pool).await.is_err() {
        sqlx::query(&create).execute(pool).await?;
    }
    migrator.run(pool).await?;
    Ok(())
}

/// A readiness check that sends `PING` (on a cluster, to every primary through one shared
/// connection, made on the first check).
///
/// # Errors
/// When the shared connection cannot be set up.
pub fn redis_check(
    target: &RedisTarget,
) -> Result<impl Fn() -> CheckFuture + Send + Sync + 'static, StorageError> {
    let connection = target.shared()?;
    Ok(move || -> CheckFuture {
        let mut connection = connection.clone();
        Box::pin(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(|_| ())
                .map_err(|error| format!("redis: {error}"))
        })
    })
}

/// A SQLite pool for `relay dev` (`sqlite://path/to/file.db`; the file is created if missing),
/// in WAL mode with a busy timeout so concurrent writers wait instead of failing.
///
/// # Errors
/// When the URL is invalid.
pub fn sqlite_pool(
    url: &SecretString,
    max_connections: u32,
) -> Result<sqlx::SqlitePool, StorageError> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let options = SqliteConnectOptions::from_str(url.expose_secret())?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    crate::metrics::observe_pool("sqlite", &pool, max_connections);
    Ok(pool)
}

/// Begins a transaction that writes. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`): a deferred transaction that reads, then writes, cannot wait for another
/// writer (in WAL mode SQLite answers `SQLITE_BUSY` at once when the snapshot it read is
/// stale, whatever the busy timeout), so two writers would fail rather than take turns. With
/// `BEGIN IMMEDIATE` the second waits its turn within the busy timeout. On PostgreSQL, `BEGIN`.
///
/// # Errors
/// When no connection can be had or the database refuses to begin.
pub async fn begin_write<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    if DB::NAME == <sqlx::Sqlite as sqlx::Database>::NAME {
        pool.begin_with("BEGIN IMMEDIATE").await
    } else {
        pool.begin().await
    }
}

/// Whether a database URL names SQLite rather than PostgreSQL.
#[must_use]
pub fn is_sqlite(url: &SecretString) -> bool {
    url.expose_secret().starts_with("sqlite:")
}

/// A service's two sets of migrations: PostgreSQL's (in its schema) and SQLite's (`relay dev`).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Applied inside the service's schema on PostgreSQL.
    pub postgres: &'static Migrator,
    /// Applied to the SQLite file.
    pub sqlite: &'static Migrator,
}

/// A service's database, PostgreSQL (in its own schema) or SQLite, chosen by the URL: the one
/// way every service opens, migrates, checks and closes its storage.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL, sessions in `schema`.
    Postgres {
        /// The pool (`search_path` = `schema`).
        pool: PgPool,
        /// The service's schema.
        schema: &'static str,
    },
    /// SQLite (`relay dev`).
    Sqlite(sqlx::SqlitePool),
}

impl Database {
    /// Opens (lazily: nothing connects until first use) the database at `url`: `sqlite:` URLs
    /// are SQLite, anything else PostgreSQL with sessions in `schema`. SQLite pools are kept
    /// small (one writer at a time in any case).
    ///
    /// # Errors
    /// When the URL or the schema name is invalid.
    pub fn open(
        url: &SecretString,
        schema: &'static str,
        max_connections: u32,
    ) -> Result<Self, StorageError> {
        if is_sqlite(url) {
            Ok(Self::Sqlite(sqlite_pool(url, max_connections.min(4))?))
        } else {
            Ok(Self::Postgres {
                pool: postgres_pool(url, schema, max_connections)?,
                schema,
            })
        }
    }

    /// Applies the migrations of this backend (creating the schema on PostgreSQL).
    ///
    /// # Errors
    /// When the database is unreachable or a migration fails.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        match self {
            Self::Postgres { pool, schema } => {
                migrate_postgres(pool, schema, migrations.postgres).await
            }
            Self::Sqlite(pool) => Ok(migrations.sqlite.run(pool).await?),
        }
    }

    /// The readiness check's name: `postgres` or `sqlite`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// A readiness check that runs `SELECT 1`.
    pub fn check(&self) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
        let database = self.clone();
        move || {
            let database = database.clone();
            Box::pin(async move {
                let outcome = match &database {
                    Database::Postgres { pool, .. } => {
                        sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
                    }
                    Database::Sqlite(pool) => {
                        sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
                    }
                };
                outcome.map_err(|error| format!("{}: {error}", database.kind()))
            })
        }
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        match self {
            Self::Postgres { pool, .. } => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// A service's database as the service ships it: its schema, its migrations, and what it
/// uses when `[database]` (`RELAY_DATABASE__*`) does not say. Each service has one, as a
/// `static`.
#[derive(Debug, Clone, Copy)]
pub struct Storage {
    /// The PostgreSQL schema the service owns.
    pub schema: &'static str,
    /// Its migrations.
    pub migrations: Migrations,
    /// The pool size when `database.max_connections` is unset.
    pub max_connections: u32,
    /// Whether PostgreSQL is migrated at start when `database.migrate_on_start` is unset
    /// (SQLite always is: `relay dev` has no separate step).
    pub migrate_on_start: bool,
}

impl Storage {
    /// A service's database in `schema` with these migrations: a pool of 10, and PostgreSQL
    /// migrated by `relay-<service> migrate` only (see [`Self::max_connections`] and
    /// [`Self::migrate_on_start`] to change those defaults).
    #[must_use]
    pub const fn new(
        schema: &'static str,
        postgres: &'static Migrator,
        sqlite: &'static Migrator,
    ) -> Self {
        Self {
            schema,
            migrations: Migrations { postgres, sqlite },
            max_connections: 10,
            migrate_on_start: false,
        }
    }

    /// With a default pool size of `max_connections`.
    #[must_use]
    pub const fn max_connections(self, max_connections: u32) -> Self {
        Self {
            max_connections,
            ..self
        }
    }

    /// With PostgreSQL migrated at start unless `database.migrate_on_start` says otherwise.
    #[must_use]
    pub const fn migrate_on_start(self, migrate_on_start: bool) -> Self {
        Self {
            migrate_on_start,
            ..self
        }
    }

    /// Opens (lazily) the database at `RELAY_DATABASE_URL`, with the configured pool size.
    ///
    /// # Errors
    /// When the URL is missing or invalid.
    pub fn open(&self, config: &Config) -> Result<Database, BoxError> {
        let settings = &config.settings.database;
        let max_connections = settings
            .max_connections
            .unwrap_or(self.max_connections)
            .max(1);
        Ok(Database::open(
            config.database_url()?,
            self.schema,
            max_connections,
        )?)
    }

    /// Whether [`Self::start`] migrates `database`: SQLite always, PostgreSQL as
    /// `database.migrate_on_start` says (else the service's default).
    #[must_use]
    pub fn migrates_at_start(&self, config: &Config, database: &Database) -> bool {
        matches!(database, Database::Sqlite(_))
            || config
                .settings
                .database
                .migrate_on_start
                .unwrap_or(self.migrate_on_start)
    }

    /// What a service does with its database as it starts: applies the migrations when
    /// [`Self::migrates_at_start`].
    ///
    /// # Errors
    /// When the database is unreachable or a migration fails.
    pub async fn start(&self, config: &Config, database: &Database) -> Result<(), StorageError> {
        if self.migrates_at_start(config, database) {
            database.migrate(&self.migrations).await?;
        }
        Ok(())
    }

    /// `relay-<service> migrate`: opens one connection, applies the migrations, closes.
    ///
    /// # Errors
    /// When the URL is missing or invalid, the database is unreachable, or a migration fails.
    pub async fn migrate(&self, config: &Config) -> Result<(), BoxError> {
        let database = Database::open(config.database_url()?, self.schema, 1)?;
        let result = database.migrate(&self.migrations).await;
        database.close().await;
        Ok(result?)
    }

    /// The database at `url` with a pool of `max_connections`, migrated: what a command or a
    /// test that works on the service's tables directly (import, export, reports) starts from.
    ///
    /// # Errors
    /// When the URL is invalid, the database is unreachable, or a migration fails.
    pub async fn migrated(
        &self,
        url: &SecretString,
        max_connections: u32,
    ) -> Result<Database, StorageError> {
        let database = Database::open(url, self.schema, max_connections)?;
        database.migrate(&self.migrations).await?;
        Ok(database)
    }

    /// The bound of each store operation (`database.query_timeout_ms`).
    #[must_use]
    pub fn bound(&self, config: &Config) -> QueryBound {
        QueryBound::new(config.settings.database.query_timeout())
    }
}

/// A store whose every operation runs under a [`QueryBound`]: each service implements its store
/// trait for `Bounded<S>` by running the same operation of `S` under [`Bounded::bound`]
/// (its `store/bounded.rs`), and serves callers from a `Bounded` store.
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    bound: QueryBound,
}

impl<S> Bounded<S> {
    /// `inner`, each operation bounded by `bound`.
    pub const fn new(inner: S, bound: QueryBound) -> Self {
        Self { inner, bound }
    }

    /// The store inside.
    pub const fn inner(&self) -> &S {
        &self.inner
    }

    /// The store inside, to change (a transaction).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The bound.
    pub const fn bound(&self) -> QueryBound {
        self.bound
    }

    /// The store inside and the bound (to consume the store: a commit).
    pub fn into_parts(self) -> (S, QueryBound) {
        (self.inner, self.bound)
    }
}

/// How many rows a statement changed: each backend's result type has it, under no sqlx trait,
/// so a store generic over the database (`SqlStore<DB>`) asks for `DB::QueryResult:
/// RowsAffected`.
pub trait RowsAffected {
    /// The rows the statement inserted, updated or deleted.
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// The time bound of one database operation (`database.query_timeout_ms`, 3 s by default):
/// a statement, or a whole transaction, including the wait for a pooled connection. A
/// partitioned database (packets dropped, connections left open) never answers and sqlx has no
/// bound of its own on a statement, so every store operation a caller waits on runs under
/// [`QueryBound::run`]: past the bound it is dropped (the connection is pinged before it is
/// pooled again, and its transaction rolled back) and fails as [`sqlx::Error::Io`]
/// `TimedOut`, which every service answers `UNAVAILABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryBound(Duration);

impl QueryBound {
    /// A bound of `limit`.
    #[must_use]
    pub const fn new(limit: Duration) -> Self {
        Self(limit)
    }

    /// The limit.
    #[must_use]
    pub const fn limit(self) -> Duration {
        self.0
    }

    /// Runs `operation`, failing it with [`Self::timed_out`] when it takes longer than the
    /// bound.
    ///
    /// # Errors
    /// The operation's error, or the timeout.
    pub async fn run<T, E: From<sqlx::Error>>(
        self,
        operation: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.0, operation).await {
            Ok(outcome) => outcome,
            Err(_) => Err(E::from(self.timed_out())),
        }
    }

    /// The error of an operation that ran out of time.
    #[must_use]
    pub fn timed_out(self) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the database did not answer within {} ms (database.query_timeout_ms)",
                self.0.as_millis()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_operation_past_the_bound_fails_as_a_timeout_naming_the_setting() {
        let bound = QueryBound::new(Duration::from_millis(20));
        let started = std::time::Instant::now();
        let error = bound
            .run(std::future::pending::<Result<(), sqlx::Error>>())
            .await
            .expect_err("never answers");
        assert!(started.elapsed() < Duration::from_secs(2));
        let sqlx::Error::Io(io) = &error else {
            panic!("not an I/O error: {error}");
        };
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            error.to_string().contains("database.query_timeout_ms"),
            "{error}"
        );
        assert_eq!(
            bound.run(async { Ok::<_, sqlx::Error>(7) }).await.ok(),
            Some(7)
        );
    }
}
