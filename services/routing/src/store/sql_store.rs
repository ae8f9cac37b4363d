//! The one implementation of [`Store`]: [`SqlStore`], generic over the sqlx database, running
//! the SQL of `sql.rs` with the row mapping of `mod.rs`. What differs between PostgreSQL and
//! SQLite is a [`Dialect`] (`postgres.rs`, `sqlite.rs`): how a [`Write`] is applied (one
//! statement on PostgreSQL, statement by statement on SQLite), the joined reads PostgreSQL
//! answers in one round trip, how the sequencer keeps to one at a time (an advisory lock on
//! PostgreSQL) and how a numbered batch is written.

use std::future::Future;

use chrono::{DateTime, Utc};
use prost::Message;
use relay_proto::routing::{Assignment, AssignmentEvent};
use relay_runtime::{
    sequencer::{Numbered, Sequencer},
    storage::RowsAffected,
};
use sqlx::Row;

use super::{
    IncidentRecord, Lookup, QueueCursor, RecordRow, RequestRecord, Store, StoreError, Write,
    sql::{
        ACTIVE_OF_INCIDENT, ACTIVE_OF_REGION, ACTIVE_OF_TEAM, ANY_PENDING, ASSIGNMENT,
        DUE_ESCALATIONS, EVENTS_AFTER, FIRST_SEQUENCE, INCIDENT, LAST_SEQUENCE, LATEST_OF_INCIDENT,
        PENDING_COUNT, PENDING_OLDEST, PRUNE_EVENTS, PRUNE_REQUESTS, PendingEvent, QUEUE_AFTER,
        QUEUE_FIRST, REGIONS, REQUEST, SEQUENCER_BATCH,
    },
};

/// What differs between the databases routing runs on.
pub trait Dialect: sqlx::Database + Sized {
    /// The sequencer on this database.
    fn sequencer() -> &'static Sequencer;

    /// Writes a numbered batch into `events`, with an event time that never decreases along
    /// a region's numbers (so pruning by time never leaves a hole before a kept event).
    fn insert_numbered(
        conn: &mut Self::Connection,
        rows: Vec<Numbered<PendingEvent>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Store::write`]: one transaction, or nothing of it.
    fn write(
        store: &SqlStore<Self>,
        write: Write,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Store::lookup`].
    fn lookup(
        store: &SqlStore<Self>,
        request_id: &str,
        incident_id: &str,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// [`Store::lookup_assignment`].
    fn lookup_assignment(
        store: &SqlStore<Self>,
        request_id: &str,
        assignment_id: &str,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;
}

relay_runtime::sql_store! {
    /// Routing's record on one sqlx database (see [`super::PostgresStore`] and
    /// [`super::SqliteStore`]).
    pub struct SqlStore;
}

/// The decoded event of a numbered row.
fn numbered_event<R>(row: &R) -> Result<(i64, AssignmentEvent), StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row.try_get("seq")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut event = AssignmentEvent::decode(payload.as_slice())
        .map_err(|e| StoreError::Backend(Box::new(e)))?;
    event.event_id = seq.to_string();
    Ok((seq, event))
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl<DB> SqlStore<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'a> &'a str: sqlx::ColumnIndex<DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> f64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    /// The assignment `sql` finds by its one parameter, `key`.
    async fn one_assignment(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(|row| row.assignment_at(""))
            .transpose()
    }
}

#[tonic::async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'a> &'a str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> f64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    PendingEvent: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn incident(&self, incident_id: &str) -> Result<Option<IncidentRecord>, StoreError> {
        sqlx::query(INCIDENT)
            .bind(incident_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(|row| row.incident_at(""))
            .transpose()
    }

    async fn assignment(&self, assignment_id: &str) -> Result<Option<Assignment>, StoreError> {
        self.one_assignment(ASSIGNMENT, assignment_id).await
    }

    async fn active_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.one_assignment(ACTIVE_OF_INCIDENT, incident_id).await
    }

    async fn latest_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.one_assignment(LATEST_OF_INCIDENT, incident_id).await
    }

    async fn active_assignment_of_team(
        &self,
        team_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.one_assignment(ACTIVE_OF_TEAM, team_id).await
    }

    async fn active_assignments(&self, region: &str) -> Result<Vec<Assignment>, StoreError> {
        sqlx::query(ACTIVE_OF_REGION)
            .bind(region)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.assignment_at(""))
            .collect()
    }

    async fn queue(
        &self,
        region: &str,
        after: Option<&QueueCursor>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError> {
        let rows = match after {
            None => {
                sqlx::query(QUEUE_FIRST)
                    .bind(region)
                    .bind(limit_of(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(cursor) => {
                sqlx::query(QUEUE_AFTER)
                    .bind(region)
                    .bind(cursor.priority)
                    .bind(cursor.queued_time)
                    .bind(cursor.incident_id.as_str())
                    .bind(limit_of(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(|row| row.incident_at("")).collect()
    }

    async fn due_escalations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError> {
        sqlx::query(DUE_ESCALATIONS)
            .bind(now)
            .bind(limit_of(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.incident_at(""))
            .collect()
    }

    async fn regions(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(REGIONS).fetch_all(&self.pool).await?)
    }

    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let row = sqlx::query(REQUEST)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(RequestRecord {
                request_id: request_id.to_owned(),
                fingerprint: row.try_get("fingerprint")?,
                response: row.try_get("response")?,
            })
        })
        .transpose()
    }

    async fn lookup(&self, request_id: &str, incident_id: &str) -> Result<Lookup, StoreError> {
        DB::lookup(self, request_id, incident_id).await
    }

    async fn lookup_assignment(
        &self,
        request_id: &str,
        assignment_id: &str,
    ) -> Result<Lookup, StoreError> {
        DB::lookup_assignment(self, request_id, assignment_id).await
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        DB::write(self, write).await
    }

    async fn events(
        &self,
        region: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, AssignmentEvent)>, StoreError> {
        self.sequence_events().await?;
        sqlx::query(EVENTS_AFTER)
            .bind(region)
            .bind(after)
            .bind(limit_of(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(numbered_event)
            .collect()
    }

    async fn event_bounds(&self, region: &str) -> Result<(i64, i64), StoreError> {
        self.sequence_events().await?;
        let last: Option<i64> = sqlx::query_scalar(LAST_SEQUENCE)
            .bind(region)
            .fetch_optional(&self.pool)
            .await?;
        let first: Option<i64> = sqlx::query_scalar(FIRST_SEQUENCE)
            .bind(region)
            .fetch_one(&self.pool)
            .await?;
        let last = last.unwrap_or(0);
        Ok((first.unwrap_or(last + 1), last))
    }

    async fn pending_events(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let count: i64 = sqlx::query_scalar(PENDING_COUNT)
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<Vec<u8>> = sqlx::query_scalar(PENDING_OLDEST)
            .fetch_optional(&self.pool)
            .await?;
        let oldest = oldest
            .and_then(|payload| AssignmentEvent::decode(payload.as_slice()).ok())
            .and_then(|event| event.event_time)
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)));
        Ok((count, oldest))
    }

    async fn sequence_events(&self) -> Result<usize, StoreError> {
        // A read first, so that the readers of events (which sequence before they read) open
        // no transaction when nothing is pending.
        let pending: bool = sqlx::query_scalar(ANY_PENDING)
            .fetch_one(&self.pool)
            .await?;
        if !pending {
            return Ok(0);
        }
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let batch = DB::sequencer()
            .take::<DB, PendingEvent>(&mut tx, SEQUENCER_BATCH)
            .await?;
        let moved = batch.rows.len();
        if moved > 0 {
            DB::insert_numbered(&mut tx, batch.rows).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let events = sqlx::query(PRUNE_EVENTS)
            .bind(before)
            .execute(&self.pool)
            .await?;
        let requests = sqlx::query(PRUNE_REQUESTS)
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(events.rows() + requests.rows())
    }
}
