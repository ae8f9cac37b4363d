//! The durable roster (team definitions) behind [`RosterStore`]: PostgreSQL in production
//! (schema `availability`), SQLite in embedded mode. Live state is never stored here; it is
//! rebuilt in the [`relay_fleet::TeamStore`] from this roster when the service starts. The
//! service uses it as a [`Bounded`] roster: every operation (begin, each save, the commit, the
//! load) under the database's bound (`database.query_timeout_ms`), so that a partitioned
//! database fails an upsert `UNAVAILABLE` within the bound instead of holding it for its
//! deadline.

use relay_runtime::audit::{AuditLog, AuditRecord};
use relay_runtime::storage::{Bounded, Database};
use sqlx::{PgPool, Postgres, Row, Sqlite, SqlitePool, Transaction};

use relay_fleet::model::{TeamDefinition, from_micros, to_micros};

/// A roster storage failure.
#[derive(Debug, thiserror::Error)]
#[error("roster database: {0}")]
pub struct RosterError(#[from] sqlx::Error);

/// One roster row: a definition and the revision of its last roster change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// The team's roster fields.
    pub definition: TeamDefinition,
    /// The revision of the last roster change.
    pub revision: i64,
}

/// Durable storage of team definitions.
#[tonic::async_trait]
pub trait RosterStore: Send + Sync + 'static {
    /// Starts a roster change: a database transaction. Nothing it saves is visible until
    /// [`RosterWrite::commit`]; dropped without a commit, it changes nothing. (There is no
    /// save outside a transaction: the upsert must be able to undo its roster write.)
    async fn begin(&self) -> Result<Box<dyn RosterWrite>, RosterError>;
    /// Every team definition, ordered by team id.
    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError>;
}

/// A roster change in progress (see [`RosterStore::begin`]). A save locks the team's row until
/// the commit, so concurrent changes of one team are applied one after the other.
#[tonic::async_trait]
pub trait RosterWrite: Send {
    /// Creates or replaces a team's definition within the change (the stored revision never
    /// decreases).
    async fn save(&mut self, entry: &RosterEntry) -> Result<(), RosterError>;
    /// Makes the change durable.
    async fn commit(self: Box<Self>) -> Result<(), RosterError>;
    /// Appends the audit record of the call that made the change, in its transaction (the
    /// last statement before [`Self::commit`]).
    async fn audit(&mut self, record: &AuditRecord) -> Result<(), RosterError>;
}

/// The roster in PostgreSQL (a pool whose `search_path` is the `availability` schema) or in
/// SQLite (embedded mode).
#[derive(Debug, Clone)]
pub enum SqlRoster {
    /// PostgreSQL (production).
    Postgres(PgPool),
    /// SQLite (embedded mode).
    Sqlite(SqlitePool),
}

impl SqlRoster {
    /// The roster on `database`'s pool.
    #[must_use]
    pub fn on(database: &Database) -> Self {
        match database {
            Database::Postgres { pool, .. } => Self::Postgres(pool.clone()),
            Database::Sqlite(pool) => Self::Sqlite(pool.clone()),
        }
    }
}

const LOAD: &str = "SELECT team_id, display_name, region, capabilities, shift_ends_at_us, revision \
                    FROM teams ORDER BY team_id";

fn entry_from<R: Row>(row: &R) -> Result<RosterEntry, sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let capabilities: String = row.try_get("capabilities")?;
    let shift: Option<i64> = row.try_get("shift_ends_at_us")?;
    Ok(RosterEntry {
        definition: TeamDefinition {
            team_id: row.try_get("team_id")?,
            display_name: row.try_get("display_name")?,
            region: row.try_get("region")?,
            capabilities: if capabilities.is_empty() {
                Vec::new()
            } else {
                capabilities.split(',').map(str::to_owned).collect()
            },
            shift_ends_at: shift.map(from_micros),
        },
        revision: row.try_get("revision")?,
    })
}

const SAVE_PG: &str = "INSERT INTO teams (team_id, display_name, region, capabilities, shift_ends_at_us, revision) \
    VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (team_id) DO UPDATE SET display_name = excluded.display_name, \
    region = excluded.region, capabilities = excluded.capabilities, \
    shift_ends_at_us = excluded.shift_ends_at_us, \
    revision = GREATEST(teams.revision, excluded.revision), updated_at = now()";

const SAVE_SQLITE: &str = "INSERT INTO teams (team_id, display_name, region, capabilities, shift_ends_at_us, revision) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
    ON CONFLICT (team_id) DO UPDATE SET display_name = excluded.display_name, \
    region = excluded.region, capabilities = excluded.capabilities, \
    shift_ends_at_us = excluded.shift_ends_at_us, \
    revision = max(teams.revision, excluded.revision), updated_at = CURRENT_TIMESTAMP";

fn save_pg(entry: &RosterEntry) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    let d = &entry.definition;
    sqlx::query(SAVE_PG)
        .bind(&d.team_id)
        .bind(&d.display_name)
        .bind(&d.region)
        .bind(d.capabilities.join(","))
        .bind(d.shift_ends_at.map(to_micros))
        .bind(entry.revision)
}

fn save_sqlite(
    entry: &RosterEntry,
) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    let d = &entry.definition;
    sqlx::query(SAVE_SQLITE)
        .bind(&d.team_id)
        .bind(&d.display_name)
        .bind(&d.region)
        .bind(d.capabilities.join(","))
        .bind(d.shift_ends_at.map(to_micros))
        .bind(entry.revision)
}

/// A roster transaction on either backend.
enum Write {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

#[tonic::async_trait]
impl RosterWrite for Write {
    async fn save(&mut self, entry: &RosterEntry) -> Result<(), RosterError> {
        match self {
            Self::Postgres(tx) => {
                save_pg(entry).execute(&mut **tx).await?;
            }
            Self::Sqlite(tx) => {
                save_sqlite(entry).execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), RosterError> {
        match *self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    async fn audit(&mut self, record: &AuditRecord) -> Result<(), RosterError> {
        match self {
            Self::Postgres(tx) => AuditLog::append::<Postgres>(tx, record).await?,
            Self::Sqlite(tx) => AuditLog::append::<Sqlite>(tx, record).await?,
        };
        Ok(())
    }
}

#[tonic::async_trait]
impl RosterStore for SqlRoster {
    async fn begin(&self) -> Result<Box<dyn RosterWrite>, RosterError> {
        Ok(Box::new(match self {
            Self::Postgres(pool) => Write::Postgres(pool.begin().await?),
            Self::Sqlite(pool) => Write::Sqlite(relay_runtime::storage::begin_write(pool).await?),
        }))
    }

    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError> {
        Ok(match self {
            Self::Postgres(pool) => {
                let rows = sqlx::query(LOAD).fetch_all(pool).await?;
                rows.iter().map(entry_from).collect::<Result<_, _>>()?
            }
            Self::Sqlite(pool) => {
                let rows = sqlx::query(LOAD).fetch_all(pool).await?;
                rows.iter().map(entry_from).collect::<Result<_, _>>()?
            }
        })
    }
}

#[tonic::async_trait]
impl<R: RosterStore> RosterStore for Bounded<R> {
    async fn begin(&self) -> Result<Box<dyn RosterWrite>, RosterError> {
        let inner = self.bound().run(self.inner().begin()).await?;
        Ok(Box::new(Bounded::new(inner, self.bound())))
    }

    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError> {
        self.bound().run(self.inner().load_all()).await
    }
}

/// A roster change of a [`Bounded`] roster: each save and the commit bounded too.
#[tonic::async_trait]
impl RosterWrite for Bounded<Box<dyn RosterWrite>> {
    async fn save(&mut self, entry: &RosterEntry) -> Result<(), RosterError> {
        let bound = self.bound();
        bound.run(self.inner_mut().save(entry)).await
    }

    async fn commit(self: Box<Self>) -> Result<(), RosterError> {
        let (inner, bound) = self.into_parts();
        bound.run(inner.commit()).await
    }

    async fn audit(&mut self, record: &AuditRecord) -> Result<(), RosterError> {
        let bound = self.bound();
        bound.run(self.inner_mut().audit(record)).await
    }
}
