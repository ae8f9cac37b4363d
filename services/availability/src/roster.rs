//! The durable roster (team definitions) behind [`RosterStore`]: PostgreSQL in production
//! (schema `availability`), SQLite in embedded mode. Live state is never stored here; it is
//! rebuilt in the [`crate::TeamStore`] from this roster when the service starts.

use sqlx::{PgPool, Row, SqlitePool};

use crate::model::{TeamDefinition, from_micros, to_micros};

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
    /// Creates or replaces a team's definition (the stored revision never decreases).
    async fn save(&self, entry: &RosterEntry) -> Result<(), RosterError>;
    /// Every team definition, ordered by team id.
    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError>;
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), RosterError>;
}

/// The roster in PostgreSQL (a pool whose `search_path` is the `availability` schema).
#[derive(Debug, Clone)]
pub struct PostgresRoster {
    pool: PgPool,
}

impl PostgresRoster {
    /// A roster on `pool`.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The roster in SQLite (embedded mode).
#[derive(Debug, Clone)]
pub struct SqliteRoster {
    pool: SqlitePool,
}

impl SqliteRoster {
    /// A roster on `pool`.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
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

#[tonic::async_trait]
impl RosterStore for PostgresRoster {
    async fn save(&self, entry: &RosterEntry) -> Result<(), RosterError> {
        let d = &entry.definition;
        sqlx::query(
            "INSERT INTO teams (team_id, display_name, region, capabilities, shift_ends_at_us, revision) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (team_id) DO UPDATE SET display_name = excluded.display_name, \
             region = excluded.region, capabilities = excluded.capabilities, \
             shift_ends_at_us = excluded.shift_ends_at_us, \
             revision = GREATEST(teams.revision, excluded.revision), updated_at = now()",
        )
        .bind(&d.team_id)
        .bind(&d.display_name)
        .bind(&d.region)
        .bind(d.capabilities.join(","))
        .bind(d.shift_ends_at.map(to_micros))
        .bind(entry.revision)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError> {
        let rows = sqlx::query(LOAD).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(entry_from).collect::<Result<_, _>>()?)
    }

    async fn ping(&self) -> Result<(), RosterError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl RosterStore for SqliteRoster {
    async fn save(&self, entry: &RosterEntry) -> Result<(), RosterError> {
        let d = &entry.definition;
        sqlx::query(
            "INSERT INTO teams (team_id, display_name, region, capabilities, shift_ends_at_us, revision) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (team_id) DO UPDATE SET display_name = excluded.display_name, \
             region = excluded.region, capabilities = excluded.capabilities, \
             shift_ends_at_us = excluded.shift_ends_at_us, \
             revision = max(teams.revision, excluded.revision), updated_at = CURRENT_TIMESTAMP",
        )
        .bind(&d.team_id)
        .bind(&d.display_name)
        .bind(&d.region)
        .bind(d.capabilities.join(","))
        .bind(d.shift_ends_at.map(to_micros))
        .bind(entry.revision)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError> {
        let rows = sqlx::query(LOAD).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(entry_from).collect::<Result<_, _>>()?)
    }

    async fn ping(&self) -> Result<(), RosterError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
