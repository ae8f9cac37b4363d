//! The one implementation of [`IncidentStore`]: [`SqlStore`], generic over the sqlx database,
//! running the SQL of `sql.rs` with the row and parameter mapping of `mod.rs`. What differs
//! between PostgreSQL and SQLite is a [`Dialect`] (`postgres.rs`, `sqlite.rs`): how a new
//! incident is inserted (one statement on PostgreSQL), and how the sequencer keeps to one at a
//! time (an advisory lock on PostgreSQL).

use std::{collections::HashMap, future::Future};

use prost::Message;
use relay_proto::intake::{Incident, IncidentEvent, RoutingState};
use relay_runtime::{
    audit::{AuditLog, AuditRecord},
    idempotency::RequestRecord,
    sequencer::Sequencer,
    storage::RowsAffected,
};
use sqlx::Transaction;

use super::{
    Change, ChangeOutcome, Consumed, CreateOutcome, IncidentRow, IncidentStore, ListFilter,
    Observation, OutboxItem, PendingEvent, Sequenced, StoreError, StoredIncident, Write, event_of,
    incident_arguments, observation_of, outbox_of, pending_body, sequenced,
    sql::{
        ADVANCE_CURSOR, ASSIGNED_TO_TEAM, CLAIM_OUTBOX, DELETE_OBSERVATION, EVENT_TIME_AT,
        EVENTS_AFTER, FIRST_SEQUENCE, GET_BY_CAD, GET_INCIDENT, INCIDENT_FOR_TEAM, INSERT_CONSUMED,
        INSERT_EVENTS, INSERT_OBSERVATION, INSERT_OUTBOX, INSERT_PENDING, LAST_SEQUENCE,
        LIST_INCIDENTS, OBSERVATIONS, OUTBOX_BACKLOG, PENDING_EVENTS, PURGE_HISTORY,
        PURGE_PERSONAL_DATA, REQUEST_LOG, RESCHEDULE_OUTBOX, SCAN_RECEIVED, SETTLE_OUTBOX,
        STREAM_CURSOR, UPDATE_INCIDENT,
    },
    stamp,
};

/// `head` with `VALUES` for `rows` rows of `columns` numbered parameters each: one statement
/// for a batch of rows.
fn values_sql(head: &str, rows: usize, columns: usize) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect();
    format!("{head}VALUES {}", tuples.join(", "))
}

/// What differs between the databases intake runs on.
pub trait Dialect: sqlx::Database + Sized {
    /// The sequencer on this database.
    fn sequencer() -> &'static Sequencer;

    /// Writes a new incident, its outbox rows, its events and its audit record, unless its
    /// `(cad_system, cad_incident_id)` exists; false when it did.
    fn insert_new(
        store: &SqlStore<Self>,
        stored: &StoredIncident,
        events: &[IncidentEvent],
        outbox: &[OutboxItem],
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

relay_runtime::sql_store! {
    /// Intake's store on one sqlx database (see [`super::PostgresStore`] and
    /// [`super::SqliteStore`]).
    pub struct SqlStore;
}

// The transaction steps the dialects share; their bounds name the crate-private row types,
// and none of them is public.
#[allow(private_bounds)]
impl<DB> SqlStore<DB>
where
    DB: Dialect,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    IncidentRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    PendingEvent: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn fetch_incident(
        &self,
        sql: &'static str,
        keys: &[&str],
    ) -> Result<Option<StoredIncident>, StoreError> {
        let mut query = sqlx::query_as::<_, IncidentRow>(sql);
        for key in keys {
            query = query.bind(*key);
        }
        query
            .fetch_optional(&self.pool)
            .await?
            .map(IncidentRow::into_stored)
            .transpose()
    }

    /// Writes `change` in `tx` after its guards (request, consumed event, settled row) held:
    /// the incident at the revision read, its observations, outbox rows and events. None
    /// when the revision moved on.
    async fn write_incident(
        tx: &mut Transaction<'_, DB>,
        change: &Change,
    ) -> Result<Option<usize>, StoreError> {
        let Some(stored) = &change.incident else {
            return Ok(Some(0));
        };
        let args = incident_arguments::<DB>(stored, Write::Update(change.expected_revision))?;
        let updated = sqlx::query_with(UPDATE_INCIDENT, args)
            .execute(&mut **tx)
            .await?
            .rows();
        if updated == 0 {
            return Ok(None);
        }
        for seen in &change.observe {
            sqlx::query(INSERT_OBSERVATION)
                .bind(&seen.incident_id)
                .bind(&seen.team_id)
                .bind(&seen.event_id)
                .bind(seen.status)
                .bind(seen.source_time)
                .bind(seen.record_time)
                .execute(&mut **tx)
                .await?;
        }
        for seen in &change.applied_observations {
            sqlx::query(DELETE_OBSERVATION)
                .bind(&seen.incident_id)
                .bind(&seen.team_id)
                .bind(&seen.event_id)
                .execute(&mut **tx)
                .await?;
        }
        Self::insert_outbox(tx, &change.outbox, change.now).await?;
        let cad_system = &stored.incident.cad_system;
        Ok(Some(
            Self::queue_events(tx, &change.events, cad_system, change.now).await?,
        ))
    }

    /// Queues a change's events for the sequencer. No shared row is locked: the id comes from a
    /// sequence object, so concurrent changes of one CAD commit in parallel. Called after the
    /// incident row is written (see the module doc: that write is what orders one incident's
    /// events).
    pub(crate) async fn queue_events(
        tx: &mut Transaction<'_, DB>,
        events: &[IncidentEvent],
        cad_system: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let sql = values_sql(INSERT_PENDING, events.len(), 4);
        let mut insert = sqlx::query(&sql);
        for event in events {
            insert = insert
                .bind(cad_system.to_owned())
                .bind(event.incident_id.clone())
                .bind(now)
                .bind(pending_body(event));
        }
        insert.execute(&mut **tx).await?;
        Ok(events.len())
    }

    pub(crate) async fn insert_outbox(
        tx: &mut Transaction<'_, DB>,
        items: &[OutboxItem],
        now: i64,
    ) -> Result<(), StoreError> {
        for item in items {
            sqlx::query(INSERT_OUTBOX)
                .bind(&item.outbox_id)
                .bind(&item.incident_id)
                .bind(item.kind.as_str())
                .bind(&item.payload)
                .bind(item.attempts)
                .bind(item.next_attempt_at)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Records an upstream event id and moves its stream's cursor; false if already consumed.
    async fn consume(
        tx: &mut Transaction<'_, DB>,
        consumed: &Consumed,
        now: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(INSERT_CONSUMED)
            .bind(consumed.source)
            .bind(&consumed.region)
            .bind(&consumed.event_id)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows();
        if inserted == 0 {
            return Ok(false);
        }
        sqlx::query(ADVANCE_CURSOR)
            .bind(consumed.source)
            .bind(&consumed.region)
            .bind(&consumed.event_id)
            .execute(&mut **tx)
            .await?;
        Ok(true)
    }
}

#[tonic::async_trait]
impl<DB> IncidentStore for SqlStore<DB>
where
    DB: Dialect,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    IncidentRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    PendingEvent: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn create_audited(
        &self,
        stored: &StoredIncident,
        events: Vec<IncidentEvent>,
        outbox: Vec<OutboxItem>,
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> Result<CreateOutcome, StoreError> {
        if DB::insert_new(self, stored, &events, &outbox, now, audit).await? {
            return Ok(CreateOutcome::Created);
        }
        let incident = &stored.incident;
        let existing = self
            .get_by_cad(&incident.cad_system, &incident.cad_incident_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("conflicting incident vanished".into()))?;
        Ok(CreateOutcome::Existing(Box::new(existing)))
    }

    async fn get_incident(&self, incident_id: &str) -> Result<Option<StoredIncident>, StoreError> {
        self.fetch_incident(GET_INCIDENT, &[incident_id]).await
    }

    async fn get_by_cad(
        &self,
        cad_system: &str,
        cad_incident_id: &str,
    ) -> Result<Option<StoredIncident>, StoreError> {
        self.fetch_incident(GET_BY_CAD, &[cad_system, cad_incident_id])
            .await
    }

    async fn list_incidents(&self, filter: &ListFilter) -> Result<Vec<StoredIncident>, StoreError> {
        let (after_time, after_id) = filter
            .after
            .clone()
            .map_or((None, None), |(t, id)| (Some(t), Some(id)));
        let rows = sqlx::query_as::<_, IncidentRow>(LIST_INCIDENTS)
            .bind(&filter.cad_system)
            .bind(&filter.region)
            .bind(filter.state)
            .bind(filter.disposition)
            .bind(filter.received_after)
            .bind(filter.received_before)
            .bind(after_time)
            .bind(after_id.unwrap_or_default())
            .bind(filter.limit)
            .bind(filter.routing_state)
            .bind(filter.unserved_reason)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(IncidentRow::into_stored).collect()
    }

    async fn incident_for_team(&self, team_id: &str) -> Result<Option<StoredIncident>, StoreError> {
        self.fetch_incident(INCIDENT_FOR_TEAM, &[team_id]).await
    }

    async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError> {
        let rows = sqlx::query_as::<_, IncidentRow>(ASSIGNED_TO_TEAM)
            .bind(team_id)
            .bind(RoutingState::Assigned as i32)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(IncidentRow::into_stored).collect()
    }

    async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError> {
        let rows = sqlx::query_as(OBSERVATIONS)
            .bind(incident_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(observation_of).collect())
    }

    async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError> {
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        if let Some(request) = &change.request
            && !REQUEST_LOG
                .remember::<DB>(&mut tx, request, change.now)
                .await?
        {
            tx.rollback().await?;
            return match self.find_request(&request.request_id).await? {
                Some(existing) => Ok(ChangeOutcome::RequestExists(existing)),
                None => Ok(ChangeOutcome::Conflict),
            };
        }
        if let Some(consumed) = &change.consumed
            && !Self::consume(&mut tx, consumed, change.now).await?
        {
            tx.rollback().await?;
            return Ok(ChangeOutcome::AlreadyConsumed);
        }
        if let Some(outbox_id) = &change.settles_outbox {
            let settled = sqlx::query(SETTLE_OUTBOX)
                .bind(outbox_id)
                .bind(change.now)
                .execute(&mut *tx)
                .await?
                .rows();
            if settled == 0 {
                tx.rollback().await?;
                return Ok(ChangeOutcome::AlreadySettled);
            }
        }
        let Some(queued) = Self::write_incident(&mut tx, &change).await? else {
            tx.rollback().await?;
            return Ok(ChangeOutcome::Conflict);
        };
        // Last, so the trail's head is locked for the commit alone.
        if let Some(record) = &change.audit {
            AuditLog::append::<DB>(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(ChangeOutcome::Applied(queued))
    }

    async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        Ok(REQUEST_LOG.find(&self.pool, request_id).await?)
    }

    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows: Vec<_> = sqlx::query_as(CLAIM_OUTBOX)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(outbox_of).collect()
    }

    async fn reschedule_outbox(
        &self,
        outbox_id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(RESCHEDULE_OUTBOX)
            .bind(outbox_id)
            .bind(next_attempt_at)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pending_outbox(&self) -> Result<i64, StoreError> {
        Ok(self.outbox_backlog().await?.0)
    }

    async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        Ok(sqlx::query_as(OUTBOX_BACKLOG).fetch_one(&self.pool).await?)
    }

    async fn events_after(
        &self,
        cad_system: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IncidentEvent>, StoreError> {
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(EVENTS_AFTER)
            .bind(cad_system)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_of).collect()
    }

    async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError> {
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let batch = DB::sequencer()
            .take::<DB, PendingEvent>(&mut tx, limit)
            .await?;
        if batch.rows.is_empty() {
            tx.rollback().await?;
            return Ok(Sequenced::default());
        }
        let mut floors = HashMap::with_capacity(batch.streams.len());
        for stream in &batch.streams {
            let floor: Option<i64> = sqlx::query_scalar(EVENT_TIME_AT)
                .bind(&stream.key)
                .bind(stream.previous)
                .fetch_optional(&mut *tx)
                .await?;
            floors.insert(stream.key.clone(), floor.unwrap_or(i64::MIN));
        }
        let oldest = batch.rows.iter().map(|n| n.row.event_time).min();
        let cad_systems = batch.streams.into_iter().map(|s| s.key).collect();
        let stamped = stamp(batch.rows, floors)?;
        let sql = values_sql(INSERT_EVENTS, stamped.len(), 5);
        let mut insert = sqlx::query(&sql);
        for s in &stamped {
            insert = insert
                .bind(s.cad_system.clone())
                .bind(s.sequence)
                .bind(s.incident_id.clone())
                .bind(s.event_time)
                .bind(s.body.clone());
        }
        insert.execute(&mut *tx).await?;
        tx.commit().await?;
        sequenced(&stamped, oldest, cad_systems)
    }

    async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError> {
        Ok(sqlx::query_as(PENDING_EVENTS).fetch_one(&self.pool).await?)
    }

    async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError> {
        let last: Option<i64> = sqlx::query_scalar(LAST_SEQUENCE)
            .bind(cad_system)
            .fetch_optional(&self.pool)
            .await?;
        let first: Option<i64> = sqlx::query_scalar(FIRST_SEQUENCE)
            .bind(cad_system)
            .fetch_one(&self.pool)
            .await?;
        Ok((last.unwrap_or(0), first))
    }

    async fn stream_cursor(
        &self,
        source: &str,
        region: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(STREAM_CURSOR)
            .bind(source)
            .bind(region)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError> {
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let fresh = Self::consume(&mut tx, consumed, now).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(PURGE_PERSONAL_DATA)
            .bind(before)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows())
    }

    async fn purge_history(&self, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        for sql in PURGE_HISTORY.into_iter().chain([REQUEST_LOG.purge_sql()]) {
            total += sqlx::query(sql)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows();
        }
        Ok(total)
    }

    async fn scan_received(
        &self,
        from: i64,
        to: i64,
        region: &str,
        visit: &mut (dyn FnMut(Incident) + Send),
    ) -> Result<u64, StoreError> {
        use futures::TryStreamExt;
        // The body column alone: the personal columns never leave the database.
        let query = sqlx::query_scalar::<_, Vec<u8>>(SCAN_RECEIVED)
            .bind(from)
            .bind(to)
            .bind(region.to_owned());
        let mut rows = query.fetch(&self.pool);
        let mut visited = 0;
        while let Some(body) = rows.try_next().await? {
            visit(Incident::decode(body.as_slice())?);
            visited += 1;
        }
        Ok(visited)
    }
}
