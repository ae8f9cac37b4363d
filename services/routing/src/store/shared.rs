//! What the PostgreSQL and SQLite records share: the column lists, the row decoders, the
//! SQL of every read (the same text on both: sqlx binds `$n` on SQLite too) and the tables of
//! the event sequencer ([`relay_runtime::sequencer`]). Each backend writes in its own way:
//! PostgreSQL as one statement, SQLite statement by statement; both append events as
//! pending, and the sequencer numbers them gaplessly per region.

use relay_runtime::sequencer::{PendingRow, Tables};

/// The tables of routing's sequencer: pending assignment events, streamed per region.
pub(super) const SEQUENCER_TABLES: Tables<'static> = Tables {
    pending: "pending_events",
    key: "region",
    columns: "pending_id, region, payload",
    counters: "region_counters",
    last: "last_seq",
};

/// How many pending events one sequencer transaction moves.
pub(super) const SEQUENCER_BATCH: i64 = 1000;

/// A pending event as the sequencer takes it: the `AssignmentEvent` (prost, `event_id`
/// empty) of a region.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PendingEvent {
    pub pending_id: i64,
    pub region: String,
    pub payload: Vec<u8>,
}

impl PendingRow for PendingEvent {
    fn pending_id(&self) -> i64 {
        self.pending_id
    }

    fn stream_key(&self) -> &str {
        &self.region
    }
}

/// Expands to the shared column lists and decoders, and to `impl Store for $store` with the
/// shared reads and sequencer plus the backend's own methods (`$own`). The store has a `pool`
/// field; the expansion site imports what the bodies name, and defines `SEQUENCER` (its
/// [`relay_runtime::sequencer::Sequencer`]) and `insert_numbered` (how it writes a numbered
/// batch into `events`).
macro_rules! record_store {
    ($store:ident, $db:ty, $row:ty, { $($own:tt)* }) => {
        const INCIDENT_COLUMNS: &str = "incident_id, region, cad_system, priority, latitude, longitude, \
             required_capabilities, preferred_capabilities, expected_duration_seconds, state, \
             queued_time, escalate_time, unserved_reason, version, update_time, cad_incident_id";

        const ASSIGNMENT_COLUMNS: &str = "assignment_id, incident_id, team_id, region, distance_meters, \
             eta_seconds, assigned_at, fencing_token, state, source, cad_system, end_time, end_reason, \
             end_cause, cad_incident_id";


        fn incident_from(row: &$row) -> Result<IncidentRecord, StoreError> {
            incident_at(row, "")
        }

        /// An incident from columns named `<prefix><column>`.
        fn incident_at(row: &$row, prefix: &str) -> Result<IncidentRecord, StoreError> {
            let c = |name: &str| format!("{prefix}{name}");
            let state: String = row.try_get(c("state").as_str())?;
            Ok(IncidentRecord {
                incident_id: row.try_get(c("incident_id").as_str())?,
                region: row.try_get(c("region").as_str())?,
                cad_system: row.try_get(c("cad_system").as_str())?,
                priority: row.try_get(c("priority").as_str())?,
                location: GeoPoint {
                    latitude: row.try_get(c("latitude").as_str())?,
                    longitude: row.try_get(c("longitude").as_str())?,
                },
                required_capabilities: split_tags(row.try_get(c("required_capabilities").as_str())?),
                preferred_capabilities: split_tags(row.try_get(c("preferred_capabilities").as_str())?),
                expected_duration_seconds: row.try_get(c("expected_duration_seconds").as_str())?,
                state: IncidentState::parse(&state)
                    .ok_or_else(|| StoreError::Backend(format!("unknown state {state}").into()))?,
                queued_time: row.try_get(c("queued_time").as_str())?,
                escalate_time: row.try_get(c("escalate_time").as_str())?,
                unserved_reason: row.try_get(c("unserved_reason").as_str())?,
                version: row.try_get(c("version").as_str())?,
                update_time: row.try_get(c("update_time").as_str())?,
                cad_incident_id: row.try_get(c("cad_incident_id").as_str())?,
            })
        }

        fn assignment_from(row: &$row) -> Result<Assignment, StoreError> {
            assignment_at(row, "")
        }

        /// An assignment from columns named `<prefix><column>`.
        fn assignment_at(row: &$row, prefix: &str) -> Result<Assignment, StoreError> {
            let c = |name: &str| format!("{prefix}{name}");
            let state = parse_assignment_state(&row.try_get::<String, _>(c("state").as_str())?);
            let end_time: Option<DateTime<Utc>> = row.try_get(c("end_time").as_str())?;
            let end_reason: String = row.try_get(c("end_reason").as_str())?;
            let end_cause = end_cause_of(state, row.try_get(c("end_cause").as_str())?, &end_reason);
            Ok(Assignment {
                assignment_id: row.try_get(c("assignment_id").as_str())?,
                incident_id: row.try_get(c("incident_id").as_str())?,
                team_id: row.try_get(c("team_id").as_str())?,
                region: row.try_get(c("region").as_str())?,
                distance_meters: row.try_get(c("distance_meters").as_str())?,
                eta_seconds: row.try_get(c("eta_seconds").as_str())?,
                assigned_at: Some(timestamp(row.try_get(c("assigned_at").as_str())?)),
                fencing_token: row.try_get(c("fencing_token").as_str())?,
                state: state.into(),
                source: row.try_get(c("source").as_str())?,
                cad_system: row.try_get(c("cad_system").as_str())?,
                end_time: end_time.map(timestamp),
                end_reason,
                end_cause: end_cause.into(),
                cad_incident_id: row.try_get(c("cad_incident_id").as_str())?,
            })
        }

        #[tonic::async_trait]
        impl Store for $store {
            async fn incident(&self, incident_id: &str) -> Result<Option<IncidentRecord>, StoreError> {
                let sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE incident_id = $1");
                sqlx::query(&sql)
                    .bind(incident_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(incident_from)
                    .transpose()
            }

            async fn assignment(&self, assignment_id: &str) -> Result<Option<Assignment>, StoreError> {
                let sql = format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE assignment_id = $1");
                sqlx::query(&sql)
                    .bind(assignment_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(assignment_from)
                    .transpose()
            }

            async fn active_assignment_of_incident(
                &self,
                incident_id: &str,
            ) -> Result<Option<Assignment>, StoreError> {
                let sql = format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE incident_id = $1 AND state = 'ACTIVE'"
                );
                sqlx::query(&sql)
                    .bind(incident_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(assignment_from)
                    .transpose()
            }

            async fn latest_assignment_of_incident(
                &self,
                incident_id: &str,
            ) -> Result<Option<Assignment>, StoreError> {
                let sql = format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE incident_id = $1 \
                     ORDER BY assigned_at DESC, assignment_id DESC LIMIT 1"
                );
                sqlx::query(&sql)
                    .bind(incident_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(assignment_from)
                    .transpose()
            }

            async fn active_assignment_of_team(
                &self,
                team_id: &str,
            ) -> Result<Option<Assignment>, StoreError> {
                let sql = format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE team_id = $1 AND state = 'ACTIVE'"
                );
                sqlx::query(&sql)
                    .bind(team_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(assignment_from)
                    .transpose()
            }

            async fn active_assignments(&self, region: &str) -> Result<Vec<Assignment>, StoreError> {
                let sql = format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE region = $1 AND state = 'ACTIVE' \
                     ORDER BY assigned_at, assignment_id"
                );
                sqlx::query(&sql)
                    .bind(region)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(assignment_from)
                    .collect()
            }

            async fn queue(
                &self,
                region: &str,
                after: Option<&QueueCursor>,
                limit: usize,
            ) -> Result<Vec<IncidentRecord>, StoreError> {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows = match after {
                    None => {
                        let sql = format!(
                            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE region = $1 AND state = 'QUEUED' \
                             ORDER BY priority, queued_time, incident_id LIMIT $2"
                        );
                        sqlx::query(&sql)
                            .bind(region)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    Some(cursor) => {
                        let sql = format!(
                            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE region = $1 AND state = 'QUEUED' \
                             AND (priority, queued_time, incident_id) > ($2, $3, $4) \
                             ORDER BY priority, queued_time, incident_id LIMIT $5"
                        );
                        sqlx::query(&sql)
                            .bind(region)
                            .bind(cursor.priority)
                            .bind(cursor.queued_time)
                            .bind(&cursor.incident_id)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                rows.iter().map(incident_from).collect()
            }

            async fn due_escalations(
                &self,
                now: DateTime<Utc>,
                limit: usize,
            ) -> Result<Vec<IncidentRecord>, StoreError> {
                let sql = format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE state = 'QUEUED' AND escalate_time <= $1 \
                     ORDER BY escalate_time, incident_id LIMIT $2"
                );
                sqlx::query(&sql)
                    .bind(now)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(incident_from)
                    .collect()
            }

            async fn regions(&self) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT region FROM region_counters \
                     UNION SELECT region FROM incidents WHERE state = 'QUEUED' \
                     UNION SELECT region FROM assignments WHERE state = 'ACTIVE' ORDER BY 1",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
                let row = sqlx::query("SELECT fingerprint, response FROM requests WHERE request_id = $1")
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

            async fn events(
                &self,
                region: &str,
                after: i64,
                limit: usize,
            ) -> Result<Vec<(i64, AssignmentEvent)>, StoreError> {
                self.sequence_events().await?;
                let rows = sqlx::query(
                    "SELECT seq, payload FROM events WHERE region = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(region)
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let seq: i64 = row.try_get("seq")?;
                        let payload: Vec<u8> = row.try_get("payload")?;
                        let mut event = AssignmentEvent::decode(payload.as_slice())
                            .map_err(|e| StoreError::Backend(Box::new(e)))?;
                        event.event_id = seq.to_string();
                        Ok((seq, event))
                    })
                    .collect()
            }

            async fn event_bounds(&self, region: &str) -> Result<(i64, i64), StoreError> {
                self.sequence_events().await?;
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT last_seq FROM region_counters WHERE region = $1")
                        .bind(region)
                        .fetch_optional(&self.pool)
                        .await?;
                let first: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(seq) FROM events WHERE region = $1")
                        .bind(region)
                        .fetch_one(&self.pool)
                        .await?;
                let last = last.unwrap_or(0);
                Ok((first.unwrap_or(last + 1), last))
            }

            async fn pending_events(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_events")
                    .fetch_one(&self.pool)
                    .await?;
                let oldest: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT payload FROM pending_events ORDER BY pending_id LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                let oldest = oldest
                    .and_then(|payload| AssignmentEvent::decode(payload.as_slice()).ok())
                    .and_then(|event| event.event_time)
                    .and_then(|t| {
                        DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                    });
                Ok((count, oldest))
            }

            async fn sequence_events(&self) -> Result<usize, StoreError> {
                // A read first, so that the readers of events (which sequence before they
                // read) open no transaction when nothing is pending.
                let pending: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pending_events)")
                        .fetch_one(&self.pool)
                        .await?;
                if !pending {
                    return Ok(0);
                }
                let mut tx = self.pool.begin().await?;
                let batch = SEQUENCER
                    .take::<$db, super::shared::PendingEvent>(&mut tx, super::shared::SEQUENCER_BATCH)
                    .await?;
                let moved = batch.rows.len();
                if moved > 0 {
                    insert_numbered(&mut *tx, batch.rows).await?;
                }
                tx.commit().await?;
                Ok(moved)
            }

            async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let events = sqlx::query("DELETE FROM events WHERE event_time < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                let requests = sqlx::query("DELETE FROM requests WHERE create_time < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                Ok(events.rows_affected() + requests.rows_affected())
            }
            $($own)*
        }
    };
}

pub(super) use record_store;
