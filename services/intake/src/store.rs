//! Intake's storage: a trait the domain logic uses, with one implementation per backend
//! (PostgreSQL for production, SQLite for `relay dev`) generated from the same SQL.
//!
//! The domain never sees SQL. It reads an incident, computes the new snapshot and the events
//! the change produces, and hands them to [`IncidentStore::apply_change`], which commits
//! everything in one transaction: the incident (checked against the revision it read:
//! optimistic concurrency), its events (queued for sequencing, below), the outbox rows for
//! routing, the idempotency record of the request, and the consumed event id of an upstream
//! stream.
//!
//! **Sequencing.** A change does not allocate its events' per-CAD sequences: doing so took
//! the row lock on the CAD's counter and held it through the commit's WAL flush, so every
//! commit of one CAD waited for the previous one. Instead a change appends its events to
//! `pending_events` (an id from a sequence object, no shared row locked), and
//! [`IncidentStore::sequence_events`], run by one sequencer at a time across replicas (a
//! transaction-scoped advisory lock on PostgreSQL; SQLite has one writer anyway), moves
//! committed pending events into `incident_events` in batches, in id order, giving each
//! CAD's events the next gapless sequences, in one transaction per batch.
//!
//! - Gapless and resumable: sequences are allocated by the sequencer at move time, under its
//!   lock, so they are consecutive whatever order the changes committed in; the move is one
//!   transaction, so a crash leaves the rows pending, never half-moved.
//! - Per-incident order: the changes of one incident are ordered by the revision check on
//!   its row (a change's `UPDATE` waits for the previous writer's commit, and the events are
//!   inserted after it), so a later change draws a higher id and becomes visible no earlier.
//!   A lower id still uncommitted while a higher one is moved belongs to another incident and
//!   simply gets a later sequence.
//! - A watcher sees an event once it is sequenced: shortly after its commit (the sequencer is
//!   woken in-process right after each commit and polls for other replicas' events).

use prost::Message;
use relay_proto::intake::{Incident, IncidentEvent, RoutingState};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be decoded (a defect or a corrupted row).
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl From<prost::DecodeError> for StoreError {
    fn from(error: prost::DecodeError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// An incident as stored: the API view plus internal state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredIncident {
    /// The incident as the API returns it.
    pub incident: Incident,
    /// The dispatcher override in force (`Disposition` as i32, 0 for none).
    pub override_disposition: i32,
    /// The assigned team's last known status (`TeamStatus` as i32, 0 for none).
    pub team_status: i32,
}

/// A routing request waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Unique id of the row.
    pub outbox_id: String,
    /// The incident it concerns.
    pub incident_id: String,
    /// What to call.
    pub kind: OutboxKind,
    /// The prost-encoded request (its request_id makes retries harmless).
    pub payload: Vec<u8>,
    /// Delivery attempts made so far.
    pub attempts: i32,
    /// Not delivered before this time (micros); also the lease of the attempt in progress.
    pub next_attempt_at: i64,
}

/// The routing RPC an outbox row calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// `RoutingService.AssignTeam`.
    Assign,
    /// `RoutingService.CancelRouting`.
    Cancel,
    /// `RoutingService.ReleaseTeam`.
    Release,
}

impl OutboxKind {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assign => "assign",
            Self::Cancel => "cancel",
            Self::Release => "release",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "assign" => Ok(Self::Assign),
            "cancel" => Ok(Self::Cancel),
            "release" => Ok(Self::Release),
            other => Err(StoreError::Corrupt(format!("outbox kind {other}"))),
        }
    }
}

/// A remembered mutation, for `request_id` idempotency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The client's request_id.
    pub request_id: String,
    /// The RPC name.
    pub rpc: String,
    /// A digest of the request, to detect reuse for another request.
    pub fingerprint: String,
    /// The prost-encoded response returned the first time.
    pub response: Vec<u8>,
}

/// An event consumed from another service's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// `routing` or `availability`.
    pub source: &'static str,
    /// The region of the stream.
    pub region: String,
    /// The upstream event id.
    pub event_id: String,
}

/// One change to commit atomically.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The incident's new state, `None` when the change touches no incident.
    pub incident: Option<StoredIncident>,
    /// The revision the change was computed from (optimistic concurrency).
    pub expected_revision: i64,
    /// Events to append (queued for the sequencer; `sequence` is ignored).
    pub events: Vec<IncidentEvent>,
    /// Outbox rows to add.
    pub outbox: Vec<OutboxItem>,
    /// Outbox row this change settles (refused if already settled).
    pub settles_outbox: Option<String>,
    /// The mutation's idempotency record (refused if the request_id is taken).
    pub request: Option<RequestRecord>,
    /// Upstream event consumed (refused if already consumed).
    pub consumed: Option<Consumed>,
    /// Team statuses to keep for the incident until its assignment is recorded.
    pub observe: Vec<Observation>,
    /// Kept team statuses the change applied (deleted with it).
    pub applied_observations: Vec<Observation>,
    /// The commit time (micros).
    pub now: i64,
}

/// A team status availability reported for an incident before intake recorded that team's
/// assignment to it. Applied, in order, when the assignment is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The incident the team reported the status for.
    pub incident_id: String,
    /// The team.
    pub team_id: String,
    /// Availability's event id (the key, with the incident and team).
    pub event_id: String,
    /// The `TeamStatus` reported, as i32.
    pub status: i32,
    /// The team's own time of the status (micros).
    pub source_time: i64,
    /// When intake observed it (micros).
    pub record_time: i64,
}

/// What happened to a [`Change`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Committed; how many events were queued for the sequencer.
    Applied(usize),
    /// The incident's revision moved on; re-read and recompute.
    Conflict,
    /// The request_id was taken (by this or another request); nothing was written.
    RequestExists(RequestRecord),
    /// The outbox row was already settled; nothing was written.
    AlreadySettled,
    /// The upstream event was already consumed; nothing was written.
    AlreadyConsumed,
}

/// What `create_incident` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The incident is new; its events are queued for the sequencer.
    Created,
    /// `(cad_system, cad_incident_id)` existed: the stored incident.
    Existing(Box<StoredIncident>),
}

/// What one [`IncidentStore::sequence_events`] pass moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sequenced {
    /// How many events were given sequences.
    pub events: usize,
    /// The CAD systems whose streams grew.
    pub cad_systems: Vec<String>,
    /// The earliest commit time (micros) among the moved events: how far behind the
    /// sequencer was.
    pub oldest_event_time: Option<i64>,
    /// The events moved, in sequence order (each counted once, by the replica that moved it).
    pub moved: Vec<IncidentEvent>,
}

/// Filters of `list_incidents`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// CAD system, empty for any.
    pub cad_system: String,
    /// Region, empty for any.
    pub region: String,
    /// `IncidentState`, 0 for any.
    pub state: i32,
    /// `Disposition`, 0 for any.
    pub disposition: i32,
    /// `RoutingState`, 0 for any.
    pub routing_state: i32,
    /// `UnservedReason` (the first one the incident had), 0 for any.
    pub unserved_reason: i32,
    /// Inclusive lower bound of received_at (micros).
    pub received_after: Option<i64>,
    /// Exclusive upper bound of received_at (micros).
    pub received_before: Option<i64>,
    /// Keyset cursor: strictly after (received_at, incident_id) in descending order.
    pub after: Option<(i64, String)>,
    /// Page size.
    pub limit: i64,
}

/// Intake's storage.
#[tonic::async_trait]
pub trait IncidentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts a new incident with its events and outbox rows, unless its
    /// `(cad_system, cad_incident_id)` exists, in which case nothing is written.
    async fn create_incident(
        &self,
        incident: &StoredIncident,
        events: Vec<IncidentEvent>,
        outbox: Vec<OutboxItem>,
        now: i64,
    ) -> Result<CreateOutcome, StoreError>;
    /// One incident by Relay id.
    async fn get_incident(&self, incident_id: &str) -> Result<Option<StoredIncident>, StoreError>;
    /// One incident by the CAD's id.
    async fn get_by_cad(
        &self,
        cad_system: &str,
        cad_incident_id: &str,
    ) -> Result<Option<StoredIncident>, StoreError>;
    /// Incidents matching `filter`, newest received_at first, ties by incident_id descending.
    async fn list_incidents(&self, filter: &ListFilter) -> Result<Vec<StoredIncident>, StoreError>;
    /// The open incident whose assigned team is `team_id`, if any.
    async fn incident_for_team(&self, team_id: &str) -> Result<Option<StoredIncident>, StoreError>;
    /// Incidents (in any state) whose routing shows `team_id` ASSIGNED, newest first.
    async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError>;
    /// The team statuses kept for an incident, in the order they were observed.
    async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError>;
    /// Commits a change (see [`Change`]).
    async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError>;
    /// A remembered mutation.
    async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Takes up to `limit` due outbox rows and leases them until `lease_until`.
    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Schedules the next attempt of an undelivered row after a failure.
    async fn reschedule_outbox(
        &self,
        outbox_id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Undelivered outbox rows (for tests and metrics).
    async fn pending_outbox(&self) -> Result<i64, StoreError>;
    /// Undelivered outbox rows: their count, and the earliest creation time (micros).
    async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Moves up to `limit` committed pending events, oldest first, into the event stream,
    /// allocating each CAD's next gapless sequences, in one transaction. One sequencer runs
    /// at a time across every store on the same database (others wait).
    async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError>;
    /// Events committed but not sequenced yet: their count, and the earliest commit time.
    async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Sequenced events of `cad_system` with a sequence above `after`, at most `limit`, in
    /// order.
    async fn events_after(
        &self,
        cad_system: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IncidentEvent>, StoreError>;
    /// The last sequence issued for `cad_system` (0 when none) and the first retained one.
    async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError>;
    /// The last upstream event id consumed from `source` for `region`.
    async fn stream_cursor(&self, source: &str, region: &str)
    -> Result<Option<String>, StoreError>;
    /// Records an upstream event that changes no incident; false if already consumed.
    async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError>;
    /// Erases narrative, caller contact and notes of incidents received before `before`.
    async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError>;
    /// Deletes sequenced events, consumed ids and request records older than `before`.
    async fn purge_history(&self, before: i64) -> Result<u64, StoreError>;
    /// Hands `visit` every incident received (by the CAD's received_at, micros) in
    /// `[from, to)`, of `region` (empty: every region), in no particular order, as stored
    /// without its personal columns (no narrative, caller contact or notes): what a program
    /// report reads. Returns how many it visited.
    async fn scan_received(
        &self,
        from: i64,
        to: i64,
        region: &str,
        visit: &mut (dyn FnMut(Incident) + Send),
    ) -> Result<u64, StoreError>;
}

// ---- Row encoding shared by both backends -------------------------------------------------

/// The columns of an incident row, in the order of the SQL below.
pub(crate) struct IncidentColumns {
    pub body: Vec<u8>,
    pub narrative: String,
    pub caller: Option<Vec<u8>>,
    pub notes: Option<Vec<u8>>,
    pub close_notes: String,
}

/// Splits an incident into its non-personal body and its personal columns.
pub(crate) fn split_incident(incident: &Incident) -> IncidentColumns {
    let mut body = incident.clone();
    let narrative = std::mem::take(&mut body.narrative);
    let caller = body.caller.take().map(|c| c.encode_to_vec());
    let notes = if body.notes.is_empty() {
        None
    } else {
        let list = NoteList {
            notes: std::mem::take(&mut body.notes),
        };
        Some(list.encode_to_vec())
    };
    let close_notes = std::mem::take(&mut body.close_notes);
    IncidentColumns {
        body: body.encode_to_vec(),
        narrative,
        caller,
        notes,
        close_notes,
    }
}

/// Rebuilds an incident from its columns.
pub(crate) fn join_incident(columns: IncidentColumns) -> Result<Incident, StoreError> {
    let mut incident = Incident::decode(columns.body.as_slice())?;
    incident.narrative = columns.narrative;
    incident.caller = columns
        .caller
        .map(|bytes| relay_proto::intake::CallerContact::decode(bytes.as_slice()))
        .transpose()?;
    incident.notes = columns
        .notes
        .map(|bytes| NoteList::decode(bytes.as_slice()))
        .transpose()?
        .map(|list| list.notes)
        .unwrap_or_default();
    incident.close_notes = columns.close_notes;
    Ok(incident)
}

/// The notes column: a repeated `IncidentNote` (field 1), so it decodes with prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NoteList {
    #[prost(message, repeated, tag = "1")]
    pub notes: Vec<relay_proto::intake::IncidentNote>,
}

/// The stored body of a pending event: its sequence is not known yet (the sequencer stores it
/// in its own column, and `events_after` puts it back).
fn pending_body(event: &IncidentEvent) -> Vec<u8> {
    let mut event = event.clone();
    event.sequence = 0;
    event.encode_to_vec()
}

pub(crate) fn decode_event(body: &[u8]) -> Result<IncidentEvent, StoreError> {
    Ok(IncidentEvent::decode(body)?)
}

pub(crate) fn parse_kind(text: &str) -> Result<OutboxKind, StoreError> {
    OutboxKind::parse(text)
}

/// Generates an [`IncidentStore`] for one sqlx backend. Both backends run the same SQL text
/// (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`, integer micros for times), so one
/// implementation serves both and the conformance suite proves it.
macro_rules! sql_store {
    ($name:ident, $db:ty, $pool:ty, $sequencer_lock:expr, $create:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            /// A store on `pool` (migrated separately).
            #[must_use]
            pub fn new(pool: $pool) -> Self {
                Self { pool }
            }

            /// The pool.
            #[must_use]
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// Queues a change's events for the sequencer. No shared row is locked: the id
            /// comes from a sequence object, so concurrent changes of one CAD commit in
            /// parallel. Called after the incident row is written (see the module doc: that
            /// write is what orders one incident's events).
            async fn queue_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[IncidentEvent],
                cad_system: &str,
                now: i64,
            ) -> Result<usize, StoreError> {
                if events.is_empty() {
                    return Ok(0);
                }
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO pending_events (cad_system, incident_id, event_time, body) ",
                );
                insert.push_values(events, |mut row, event| {
                    row.push_bind(cad_system.to_owned())
                        .push_bind(event.incident_id.clone())
                        .push_bind(now)
                        .push_bind(pending_body(event));
                });
                insert.build().execute(&mut **tx).await?;
                Ok(events.len())
            }

            async fn insert_outbox(
                tx: &mut sqlx::Transaction<'_, $db>,
                items: &[OutboxItem],
                now: i64,
            ) -> Result<(), StoreError> {
                for item in items {
                    sqlx::query(
                        "INSERT INTO outbox (outbox_id, incident_id, kind, payload, attempts, next_attempt_at, create_time) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
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

            /// Writes a new incident, its outbox rows and its events in one transaction, unless
            /// its `(cad_system, cad_incident_id)` exists; false when it did.
            #[allow(dead_code)] // PostgreSQL uses its one-statement form
            async fn insert_new_in_transaction(
                &self,
                stored: &StoredIncident,
                events: &[IncidentEvent],
                outbox: &[OutboxItem],
                now: i64,
            ) -> Result<bool, StoreError> {
                let columns = split_incident(&stored.incident);
                let mut tx = self.pool.begin().await?;
                let inserted = bind_new_incident!(
                    sqlx::query(concat!(insert_new_incident!(), " ON CONFLICT (cad_system, cad_incident_id) DO NOTHING")),
                    stored,
                    columns
                )
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                Self::insert_outbox(&mut tx, outbox, now).await?;
                Self::queue_events(&mut tx, events, &stored.incident.cad_system, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn fetch_one_incident(
                &self,
                sql: &str,
                a: &str,
                b: Option<&str>,
            ) -> Result<Option<StoredIncident>, StoreError> {
                let mut query = sqlx::query_as::<_, IncidentRow>(sql).bind(a);
                if let Some(b) = b {
                    query = query.bind(b);
                }
                query.fetch_optional(&self.pool).await?.map(IncidentRow::into_stored).transpose()
            }
        }

        #[tonic::async_trait]
        impl IncidentStore for $name {
            async fn create_incident(
                &self,
                stored: &StoredIncident,
                events: Vec<IncidentEvent>,
                outbox: Vec<OutboxItem>,
                now: i64,
            ) -> Result<CreateOutcome, StoreError> {
                if self.$create(stored, &events, &outbox, now).await? {
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
                self.fetch_one_incident(
                    concat!("SELECT ", incident_columns!(), " FROM incidents WHERE incident_id = $1"),
                    incident_id,
                    None,
                )
                .await
            }

            async fn get_by_cad(
                &self,
                cad_system: &str,
                cad_incident_id: &str,
            ) -> Result<Option<StoredIncident>, StoreError> {
                self.fetch_one_incident(
                    concat!(
                        "SELECT ", incident_columns!(),
                        " FROM incidents WHERE cad_system = $1 AND cad_incident_id = $2"
                    ),
                    cad_system,
                    Some(cad_incident_id),
                )
                .await
            }

            async fn list_incidents(&self, filter: &ListFilter) -> Result<Vec<StoredIncident>, StoreError> {
                let (after_time, after_id) = filter
                    .after
                    .clone()
                    .map_or((None, None), |(t, id)| (Some(t), Some(id)));
                let rows = sqlx::query_as::<_, IncidentRow>(concat!(
                    "SELECT ", incident_columns!(), " FROM incidents WHERE \
                     ($1 = '' OR cad_system = $1) AND ($2 = '' OR region = $2) \
                     AND ($3 = 0 OR state = $3) AND ($4 = 0 OR disposition = $4) \
                     AND ($5 IS NULL OR received_at >= $5) AND ($6 IS NULL OR received_at < $6) \
                     AND ($7 IS NULL OR received_at < $7 OR (received_at = $7 AND incident_id < $8)) \
                     AND ($10 = 0 OR routing_state = $10) AND ($11 = 0 OR unserved_reason = $11) \
                     ORDER BY received_at DESC, incident_id DESC LIMIT $9"
                ))
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
                self.fetch_one_incident(
                    concat!(
                        "SELECT ", incident_columns!(),
                        " FROM incidents WHERE state = 1 AND team_id = $1 AND team_status <> 0 \
                         ORDER BY received_at DESC LIMIT 1"
                    ),
                    team_id,
                    None,
                )
                .await
            }

            async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError> {
                let rows = sqlx::query_as::<_, IncidentRow>(concat!(
                    "SELECT ", incident_columns!(),
                    " FROM incidents WHERE team_id = $1 AND routing_state = $2 \
                     ORDER BY received_at DESC, incident_id DESC"
                ))
                .bind(team_id)
                .bind(RoutingState::Assigned as i32)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(IncidentRow::into_stored).collect()
            }

            async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError> {
                let rows: Vec<(String, String, String, i32, i64, i64)> = sqlx::query_as(
                    "SELECT incident_id, team_id, event_id, status, source_time, record_time \
                     FROM team_observations WHERE incident_id = $1 ORDER BY record_time, event_id",
                )
                .bind(incident_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(incident_id, team_id, event_id, status, source_time, record_time)| Observation {
                        incident_id,
                        team_id,
                        event_id,
                        status,
                        source_time,
                        record_time,
                    })
                    .collect())
            }

            async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError> {
                let mut tx = self.pool.begin().await?;
                if let Some(request) = &change.request {
                    let inserted = sqlx::query(
                        "INSERT INTO request_log (request_id, rpc, fingerprint, response, create_time) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
                    )
                    .bind(&request.request_id)
                    .bind(&request.rpc)
                    .bind(&request.fingerprint)
                    .bind(&request.response)
                    .bind(change.now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 0 {
                        tx.rollback().await?;
                        return match self.find_request(&request.request_id).await? {
                            Some(existing) => Ok(ChangeOutcome::RequestExists(existing)),
                            None => Ok(ChangeOutcome::Conflict),
                        };
                    }
                }
                if let Some(consumed) = &change.consumed {
                    if !consume(&mut tx, consumed, change.now).await? {
                        tx.rollback().await?;
                        return Ok(ChangeOutcome::AlreadyConsumed);
                    }
                }
                if let Some(outbox_id) = &change.settles_outbox {
                    let settled = sqlx::query(
                        "UPDATE outbox SET delivered_at = $2 WHERE outbox_id = $1 AND delivered_at IS NULL",
                    )
                    .bind(outbox_id)
                    .bind(change.now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if settled == 0 {
                        tx.rollback().await?;
                        return Ok(ChangeOutcome::AlreadySettled);
                    }
                }
                let mut queued = 0;
                if let Some(stored) = &change.incident {
                    let incident = &stored.incident;
                    let columns = split_incident(incident);
                    let updated = sqlx::query(
                        "UPDATE incidents SET region = $3, state = $4, disposition = $5, received_at = $6, \
                         revision = $7, body = $8, override_disposition = $9, team_status = $10, \
                         narrative = CASE WHEN purged_at IS NULL THEN $11 ELSE '' END, \
                         caller = CASE WHEN purged_at IS NULL THEN $12 ELSE NULL END, \
                         notes = CASE WHEN purged_at IS NULL THEN $13 ELSE NULL END, \
                         close_notes = CASE WHEN purged_at IS NULL THEN $14 ELSE '' END, team_id = $15, \
                         routing_state = $16, unserved_reason = $17 \
                         WHERE incident_id = $1 AND revision = $2",
                    )
                    .bind(&incident.incident_id)
                    .bind(change.expected_revision)
                    .bind(&incident.region)
                    .bind(incident.state)
                    .bind(incident.triage.as_ref().map_or(0, |t| t.disposition))
                    .bind(micros_of(incident.received_at.as_ref()))
                    .bind(incident.revision)
                    .bind(&columns.body)
                    .bind(stored.override_disposition)
                    .bind(stored.team_status)
                    .bind(&columns.narrative)
                    .bind(&columns.caller)
                    .bind(&columns.notes)
                    .bind(&columns.close_notes)
                    .bind(team_of(incident))
                    .bind(routing_state_of(incident))
                    .bind(unserved_reason_of(incident))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if updated == 0 {
                        tx.rollback().await?;
                        return Ok(ChangeOutcome::Conflict);
                    }
                    for seen in &change.observe {
                        sqlx::query(
                            "INSERT INTO team_observations (incident_id, team_id, event_id, status, \
                             source_time, record_time) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (incident_id, team_id, event_id) DO NOTHING",
                        )
                        .bind(&seen.incident_id)
                        .bind(&seen.team_id)
                        .bind(&seen.event_id)
                        .bind(seen.status)
                        .bind(seen.source_time)
                        .bind(seen.record_time)
                        .execute(&mut *tx)
                        .await?;
                    }
                    for seen in &change.applied_observations {
                        sqlx::query(
                            "DELETE FROM team_observations WHERE incident_id = $1 AND team_id = $2 \
                             AND event_id = $3",
                        )
                        .bind(&seen.incident_id)
                        .bind(&seen.team_id)
                        .bind(&seen.event_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Self::insert_outbox(&mut tx, &change.outbox, change.now).await?;
                    queued = Self::queue_events(&mut tx, &change.events, &incident.cad_system, change.now).await?;
                }
                tx.commit().await?;
                Ok(ChangeOutcome::Applied(queued))
            }

            async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
                let row: Option<(String, String, String, Vec<u8>)> = sqlx::query_as(
                    "SELECT request_id, rpc, fingerprint, response FROM request_log WHERE request_id = $1",
                )
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(request_id, rpc, fingerprint, response)| RequestRecord {
                    request_id,
                    rpc,
                    fingerprint,
                    response,
                }))
            }

            async fn claim_outbox(
                &self,
                now: i64,
                lease_until: i64,
                limit: i64,
            ) -> Result<Vec<OutboxItem>, StoreError> {
                let rows: Vec<(String, String, String, Vec<u8>, i32, i64)> = sqlx::query_as(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2 WHERE outbox_id IN \
                     (SELECT outbox_id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
                      AND NOT EXISTS (SELECT 1 FROM outbox earlier WHERE earlier.incident_id = outbox.incident_id \
                      AND earlier.delivered_at IS NULL AND earlier.outbox_id < outbox.outbox_id) \
                      ORDER BY next_attempt_at LIMIT $3) \
                     AND delivered_at IS NULL AND next_attempt_at <= $1 \
                     RETURNING outbox_id, incident_id, kind, payload, attempts, next_attempt_at",
                )
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(outbox_id, incident_id, kind, payload, attempts, next_attempt_at)| {
                        Ok(OutboxItem {
                            outbox_id,
                            incident_id,
                            kind: parse_kind(&kind)?,
                            payload,
                            attempts,
                            next_attempt_at,
                        })
                    })
                    .collect()
            }

            async fn reschedule_outbox(
                &self,
                outbox_id: &str,
                next_attempt_at: i64,
                error: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE outbox SET next_attempt_at = $2, last_error = $3 \
                     WHERE outbox_id = $1 AND delivered_at IS NULL",
                )
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
                Ok(sqlx::query_as(
                    "SELECT COUNT(*), MIN(create_time) FROM outbox WHERE delivered_at IS NULL",
                )
                .fetch_one(&self.pool)
                .await?)
            }

            async fn events_after(
                &self,
                cad_system: &str,
                after: i64,
                limit: i64,
            ) -> Result<Vec<IncidentEvent>, StoreError> {
                let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT sequence, event_time, body FROM incident_events WHERE cad_system = $1 AND sequence > $2 \
                     ORDER BY sequence LIMIT $3",
                )
                .bind(cad_system)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|(sequence, event_time, body)| {
                        // The body was encoded before its sequence existed; the column has it,
                        // and the event_time the sequencer kept from decreasing along the stream.
                        let mut event = decode_event(body)?;
                        event.sequence = *sequence;
                        event.event_time = Some(timestamp_of(*event_time));
                        Ok(event)
                    })
                    .collect()
            }

            async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError> {
                let mut tx = self.pool.begin().await?;
                if let Some(lock) = $sequencer_lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                // DELETE .. RETURNING: the rows this transaction moves are exactly the rows it
                // deleted, so even two sequencers that both got here could not move one twice.
                let mut rows: Vec<(i64, String, String, i64, Vec<u8>)> = sqlx::query_as(
                    "DELETE FROM pending_events WHERE pending_id IN \
                     (SELECT pending_id FROM pending_events ORDER BY pending_id LIMIT $1) \
                     RETURNING pending_id, cad_system, incident_id, event_time, body",
                )
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.rollback().await?;
                    return Ok(Sequenced::default());
                }
                rows.sort_unstable_by_key(|row| row.0);
                // Per CAD, in order of first appearance: (cad, events in this batch).
                let mut counts: Vec<(String, i64)> = Vec::new();
                for (_, cad, ..) in &rows {
                    match counts.iter_mut().find(|(c, _)| c == cad) {
                        Some(entry) => entry.1 += 1,
                        None => counts.push((cad.clone(), 1)),
                    }
                }
                // Per CAD: (the last sequence given, the stream's latest event_time).
                let mut cursors: std::collections::HashMap<String, (i64, i64)> =
                    std::collections::HashMap::with_capacity(counts.len());
                for (cad, count) in &counts {
                    let last: i64 = sqlx::query_scalar(
                        "INSERT INTO cad_sequences (cad_system, last_sequence) VALUES ($1, $2) \
                         ON CONFLICT (cad_system) DO UPDATE SET last_sequence = cad_sequences.last_sequence + $2 \
                         RETURNING last_sequence",
                    )
                    .bind(cad)
                    .bind(count)
                    .fetch_one(&mut *tx)
                    .await?;
                    let previous = last - count;
                    // event_time must not decrease along a CAD's sequence, or the retention
                    // job (which deletes by event_time) could delete an event and keep an
                    // earlier one: a hole in the stream. A change that waited to be sequenced
                    // (or a replica with a slower clock) is therefore stamped no earlier than
                    // the event before it.
                    let floor: Option<i64> = sqlx::query_scalar(
                        "SELECT event_time FROM incident_events WHERE cad_system = $1 AND sequence = $2",
                    )
                    .bind(cad)
                    .bind(previous)
                    .fetch_optional(&mut *tx)
                    .await?;
                    cursors.insert(cad.clone(), (previous, floor.unwrap_or(i64::MIN)));
                }
                let oldest_event_time = rows.iter().map(|row| row.3).min();
                let mut moved = Vec::with_capacity(rows.len());
                for (_, cad, incident_id, event_time, body) in rows {
                    let cursor = cursors
                        .get_mut(&cad)
                        .ok_or_else(|| StoreError::Corrupt("sequencer lost a CAD".into()))?;
                    cursor.0 += 1;
                    cursor.1 = cursor.1.max(event_time);
                    moved.push((cad, cursor.0, incident_id, cursor.1, body));
                }
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO incident_events (cad_system, sequence, incident_id, event_time, body) ",
                );
                insert.push_values(&moved, |mut row, (cad, sequence, incident_id, event_time, body)| {
                    row.push_bind(cad.clone())
                        .push_bind(*sequence)
                        .push_bind(incident_id.clone())
                        .push_bind(*event_time)
                        .push_bind(body.clone());
                });
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Sequenced {
                    events: moved.len(),
                    cad_systems: counts.into_iter().map(|(cad, _)| cad).collect(),
                    oldest_event_time,
                    moved: moved
                        .iter()
                        .map(|(_, _, _, _, body)| decode_event(body))
                        .collect::<Result<_, _>>()?,
                })
            }

            async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError> {
                Ok(sqlx::query_as("SELECT COUNT(*), MIN(event_time) FROM pending_events")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError> {
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT last_sequence FROM cad_sequences WHERE cad_system = $1")
                        .bind(cad_system)
                        .fetch_optional(&self.pool)
                        .await?;
                let first: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(sequence) FROM incident_events WHERE cad_system = $1")
                        .bind(cad_system)
                        .fetch_one(&self.pool)
                        .await?;
                Ok((last.unwrap_or(0), first))
            }

            async fn stream_cursor(&self, source: &str, region: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT last_event_id FROM stream_cursors WHERE source = $1 AND region = $2",
                )
                .bind(source)
                .bind(region)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                let fresh = consume(&mut tx, consumed, now).await?;
                tx.commit().await?;
                Ok(fresh)
            }

            async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError> {
                Ok(sqlx::query(
                    "UPDATE incidents SET narrative = '', caller = NULL, notes = NULL, close_notes = '', \
                     purged_at = $2 WHERE received_at < $1 AND purged_at IS NULL",
                )
                .bind(before)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn scan_received(
                &self,
                from: i64,
                to: i64,
                region: &str,
                visit: &mut (dyn FnMut(Incident) + Send),
            ) -> Result<u64, StoreError> {
                use futures::TryStreamExt;
                // The body column alone: the personal columns never leave the database. The
                // period's range on incidents_received finds the rows; region filters them.
                let query = sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT body FROM incidents WHERE received_at >= $1 AND received_at < $2 \
                     AND ($3 = '' OR region = $3)",
                )
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

            async fn purge_history(&self, before: i64) -> Result<u64, StoreError> {
                let mut total = 0;
                for sql in [
                    "DELETE FROM incident_events WHERE event_time < $1",
                    "DELETE FROM consumed_events WHERE create_time < $1",
                    "DELETE FROM request_log WHERE create_time < $1",
                    "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
                    // A status kept for an assignment that was never recorded (the claim was
                    // undone): nothing will apply it.
                    "DELETE FROM team_observations WHERE record_time < $1",
                ] {
                    total += sqlx::query(sql).bind(before).execute(&self.pool).await?.rows_affected();
                }
                Ok(total)
            }
        }

        async fn consume(
            tx: &mut sqlx::Transaction<'_, $db>,
            consumed: &Consumed,
            now: i64,
        ) -> Result<bool, StoreError> {
            let inserted = sqlx::query(
                "INSERT INTO consumed_events (source, region, event_id, create_time) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (source, region, event_id) DO NOTHING",
            )
            .bind(consumed.source)
            .bind(&consumed.region)
            .bind(&consumed.event_id)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO stream_cursors (source, region, last_event_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (source, region) DO UPDATE SET last_event_id = excluded.last_event_id",
            )
            .bind(consumed.source)
            .bind(&consumed.region)
            .bind(&consumed.event_id)
            .execute(&mut **tx)
            .await?;
            Ok(true)
        }
    };
}

/// The INSERT of a new incident, parameters $1 to $18 in the order of [`bind_new_incident`].
macro_rules! insert_new_incident {
    () => {
        "INSERT INTO incidents (incident_id, cad_system, cad_incident_id, region, state, disposition, \
         received_at, revision, body, override_disposition, team_status, narrative, caller, notes, close_notes, team_id, \
         routing_state, unserved_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    };
}

/// Binds $1 to $18 of [`insert_new_incident`].
macro_rules! bind_new_incident {
    ($query:expr, $stored:expr, $columns:expr) => {{
        let incident = &$stored.incident;
        $query
            .bind(&incident.incident_id)
            .bind(&incident.cad_system)
            .bind(&incident.cad_incident_id)
            .bind(&incident.region)
            .bind(incident.state)
            .bind(incident.triage.as_ref().map_or(0, |t| t.disposition))
            .bind(micros_of(incident.received_at.as_ref()))
            .bind(incident.revision)
            .bind(&$columns.body)
            .bind($stored.override_disposition)
            .bind($stored.team_status)
            .bind(&$columns.narrative)
            .bind(&$columns.caller)
            .bind(&$columns.notes)
            .bind(&$columns.close_notes)
            .bind(team_of(incident))
            .bind(routing_state_of(incident))
            .bind(unserved_reason_of(incident))
    }};
}

macro_rules! incident_columns {
    () => {
        "body, narrative, caller, notes, close_notes, override_disposition, team_status"
    };
}

#[derive(sqlx::FromRow)]
struct IncidentRow {
    body: Vec<u8>,
    narrative: String,
    caller: Option<Vec<u8>>,
    notes: Option<Vec<u8>>,
    close_notes: String,
    override_disposition: i32,
    team_status: i32,
}

impl IncidentRow {
    fn into_stored(self) -> Result<StoredIncident, StoreError> {
        let incident = join_incident(IncidentColumns {
            body: self.body,
            narrative: self.narrative,
            caller: self.caller,
            notes: self.notes,
            close_notes: self.close_notes,
        })?;
        Ok(StoredIncident {
            incident,
            override_disposition: self.override_disposition,
            team_status: self.team_status,
        })
    }
}

/// The team routing assigned to an incident, empty when none.
fn team_of(incident: &Incident) -> &str {
    incident.routing.as_ref().map_or("", |r| r.team_id.as_str())
}

fn routing_state_of(incident: &Incident) -> i32 {
    incident.routing.as_ref().map_or(0, |r| r.state)
}

fn unserved_reason_of(incident: &Incident) -> i32 {
    incident
        .timeline
        .as_ref()
        .map_or(0, |t| t.first_unserved_reason)
}

/// Micros since the epoch of an optional timestamp (0 when unset).
#[must_use]
pub fn micros_of(time: Option<&prost_types::Timestamp>) -> i64 {
    time.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos / 1000))
    })
}

/// The timestamp of micros since the epoch.
#[must_use]
pub fn timestamp_of(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

pub mod postgres {
    //! The PostgreSQL store (schema `intake`).
    use super::*;
    sql_store!(
        PgStore,
        sqlx::Postgres,
        sqlx::PgPool,
        // One sequencer at a time per database and schema, across replicas; held until the
        // batch commits, so the next one sees its moves.
        Some(
            "SELECT pg_advisory_xact_lock(hashtext('relay-intake-sequencer'), hashtext(current_schema()))"
        ),
        insert_new_in_one_statement,
        "The PostgreSQL implementation of [`IncidentStore`]."
    );

    impl PgStore {
        /// As `insert_new_in_transaction`, in one statement (data-modifying CTEs, atomic
        /// without BEGIN and COMMIT): one round trip to the server instead of five, on the
        /// path of every SubmitIncident. The outbox rows and events are written only when the
        /// incident row is.
        async fn insert_new_in_one_statement(
            &self,
            stored: &StoredIncident,
            events: &[IncidentEvent],
            outbox: &[OutboxItem],
            now: i64,
        ) -> Result<bool, StoreError> {
            let columns = split_incident(&stored.incident);
            let query = sqlx::query_scalar::<_, i64>(concat!(
                "WITH new_incident AS (",
                insert_new_incident!(),
                " ON CONFLICT (cad_system, cad_incident_id) DO NOTHING RETURNING cad_system), \
                 new_outbox AS (INSERT INTO outbox (outbox_id, incident_id, kind, payload, attempts, \
                 next_attempt_at, create_time) \
                 SELECT o.outbox_id, o.incident_id, o.kind, o.payload, o.attempts, o.next_attempt_at, $19 \
                 FROM new_incident, unnest($20::text[], $21::text[], $22::text[], $23::bytea[], \
                 $24::int4[], $25::int8[]) AS o(outbox_id, incident_id, kind, payload, attempts, next_attempt_at)), \
                 new_events AS (INSERT INTO pending_events (cad_system, incident_id, event_time, body) \
                 SELECT new_incident.cad_system, e.incident_id, $19, e.body \
                 FROM new_incident, unnest($26::text[], $27::bytea[]) WITH ORDINALITY AS e(incident_id, body, position) \
                 ORDER BY e.position) \
                 SELECT COUNT(*) FROM new_incident"
            ));
            let inserted = bind_new_incident!(query, stored, columns)
                .bind(now)
                .bind(
                    outbox
                        .iter()
                        .map(|o| o.outbox_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    outbox
                        .iter()
                        .map(|o| o.incident_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    outbox
                        .iter()
                        .map(|o| o.kind.as_str().to_owned())
                        .collect::<Vec<_>>(),
                )
                .bind(outbox.iter().map(|o| o.payload.clone()).collect::<Vec<_>>())
                .bind(outbox.iter().map(|o| o.attempts).collect::<Vec<_>>())
                .bind(outbox.iter().map(|o| o.next_attempt_at).collect::<Vec<_>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.incident_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(events.iter().map(pending_body).collect::<Vec<_>>())
                .fetch_one(&self.pool)
                .await?;
            Ok(inserted > 0)
        }
    }
}

pub mod sqlite {
    //! The SQLite store, for `relay dev`.
    use super::*;
    sql_store!(
        SqliteStore,
        sqlx::Sqlite,
        sqlx::SqlitePool,
        // SQLite has one writer at a time: the sequencer's DELETE waits for it.
        None::<&str>,
        insert_new_in_transaction,
        "The SQLite implementation of [`IncidentStore`]."
    );
}
