//! SQLite (`relay dev`), as a [`Dialect`] of [`SqlStore`]: the same tables, a [`Write`]
//! applied statement by statement in one transaction, the reads of a lookup one after
//! another, and events numbered by the same sequencer as on PostgreSQL, with no lock.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prost::Message;
use relay_proto::routing::{Assignment, AssignmentSource};
use relay_runtime::sequencer::{Numbered, Sequencer};
use sqlx::{Sqlite, SqliteConnection};

use super::{
    EndAssignment, IncidentWrite, Lookup, RequestRecord, StoreError, Write, assignment_state_name,
    from_timestamp, join_tags, lookup_assignment_each, lookup_each,
    sql::{PendingEvent, SEQUENCER_TABLES},
    sql_store::{Dialect, SqlStore},
};

/// The SQLite implementation of [`Store`](super::Store).
pub type SqliteStore = SqlStore<Sqlite>;

/// SQLite names the columns, not the index, of a violated unique index.
fn constraint(error: &sqlx::Error) -> Option<String> {
    let message = error.as_database_error()?.message().to_owned();
    if message.contains("assignments.team_id") {
        Some("assignments_one_active_per_team".into())
    } else if message.contains("assignments.incident_id") {
        Some("assignments_one_active_per_incident".into())
    } else {
        None
    }
}

/// SQLite has one writer at a time: the sequencer's DELETE waits for it, no lock needed.
static SEQUENCER: LazyLock<Sequencer> = LazyLock::new(|| Sequencer::new(SEQUENCER_TABLES, None));

impl Dialect for Sqlite {
    fn sequencer() -> &'static Sequencer {
        &SEQUENCER
    }

    /// Writes a numbered batch into `events`. The batch's time is taken under SQLite's one
    /// writer, so it never decreases along a region's numbers.
    async fn insert_numbered(
        tx: &mut sqlx::SqliteConnection,
        rows: Vec<Numbered<PendingEvent>>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        for numbered in rows {
            sqlx::query(
                "INSERT INTO events (region, seq, payload, event_time) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(numbered.row.region)
            .bind(numbered.sequence)
            .bind(numbered.row.payload)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    async fn lookup(
        store: &SqlStore<Self>,
        request_id: &str,
        incident_id: &str,
    ) -> Result<Lookup, StoreError> {
        lookup_each(store, request_id, incident_id).await
    }

    async fn lookup_assignment(
        store: &SqlStore<Self>,
        request_id: &str,
        assignment_id: &str,
    ) -> Result<Lookup, StoreError> {
        lookup_assignment_each(store, request_id, assignment_id).await
    }

    async fn write(store: &SqlStore<Self>, write: Write) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut tx = relay_runtime::storage::begin_write(store.pool()).await?;
        if let Some(request) = &write.request {
            remember(&mut tx, request, now).await?;
        }
        if let Some(change) = &write.incident {
            write_incident(&mut tx, change).await?;
        }
        if let Some(end) = &write.end_assignment {
            end_assignment(&mut tx, end).await?;
        }
        if let Some(a) = &write.new_assignment {
            record_assignment(&mut tx, a).await?;
        }
        for event in &write.events {
            // Unnumbered: the sequencer numbers them (see sequence_events).
            sqlx::query("INSERT INTO pending_events (region, payload) VALUES (?1, ?2)")
                .bind(&write.region)
                .bind(event.encode_to_vec())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(record) = &write.audit {
            relay_runtime::audit::AuditLog::append::<sqlx::Sqlite>(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Remembers the request's response; refused when its request_id is remembered already.
async fn remember(
    tx: &mut SqliteConnection,
    request: &RequestRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "INSERT INTO requests (request_id, fingerprint, response, create_time) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&request.request_id)
    .bind(&request.fingerprint)
    .bind(&request.response)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::DuplicateRequest);
    }
    Ok(())
}

/// Creates or updates the incident at the version read.
async fn write_incident(
    tx: &mut SqliteConnection,
    change: &IncidentWrite,
) -> Result<(), StoreError> {
    let r = &change.record;
    let sql = if change.expected_version == 0 {
        "INSERT INTO incidents (incident_id, region, cad_system, priority, latitude, longitude, \
             required_capabilities, preferred_capabilities, expected_duration_seconds, state, \
             queued_time, escalate_time, unserved_reason, version, update_time, cad_incident_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14 + 1, ?15, ?16) \
             ON CONFLICT (incident_id) DO NOTHING"
    } else {
        "UPDATE incidents SET region = ?2, cad_system = ?3, priority = ?4, latitude = ?5, \
             longitude = ?6, required_capabilities = ?7, preferred_capabilities = ?8, \
             expected_duration_seconds = ?9, state = ?10, queued_time = ?11, \
             escalate_time = ?12, unserved_reason = ?13, version = ?14 + 1, update_time = ?15, \
             cad_incident_id = ?16 WHERE incident_id = ?1 AND version = ?14"
    };
    let done = sqlx::query(sql)
        .bind(&r.incident_id)
        .bind(&r.region)
        .bind(&r.cad_system)
        .bind(r.priority)
        .bind(r.location.latitude)
        .bind(r.location.longitude)
        .bind(join_tags(&r.required_capabilities))
        .bind(join_tags(&r.preferred_capabilities))
        .bind(r.expected_duration_seconds)
        .bind(r.state.as_str())
        .bind(r.queued_time)
        .bind(r.escalate_time)
        .bind(r.unserved_reason)
        .bind(change.expected_version)
        .bind(r.update_time)
        .bind(&r.cad_incident_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::VersionConflict);
    }
    Ok(())
}

/// Ends an ACTIVE assignment.
async fn end_assignment(tx: &mut SqliteConnection, end: &EndAssignment) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE assignments SET state = ?2, end_time = ?3, end_reason = ?4, \
             end_cause = ?5 WHERE assignment_id = ?1 AND state = 'ACTIVE'",
    )
    .bind(&end.assignment_id)
    .bind(assignment_state_name(end.state))
    .bind(end.end_time)
    .bind(&end.end_reason)
    .bind(i32::from(end.end_cause))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotActive);
    }
    Ok(())
}

/// Records a new ACTIVE assignment behind its fencing token.
async fn record_assignment(tx: &mut SqliteConnection, a: &Assignment) -> Result<(), StoreError> {
    let fenced = sqlx::query(
        "INSERT INTO team_tokens (team_id, last_token) VALUES (?1, ?2) \
             ON CONFLICT (team_id) DO UPDATE SET last_token = EXCLUDED.last_token \
             WHERE team_tokens.last_token < EXCLUDED.last_token",
    )
    .bind(&a.team_id)
    .bind(a.fencing_token)
    .execute(&mut *tx)
    .await?;
    if fenced.rows_affected() == 0 {
        return Err(StoreError::StaleToken);
    }
    let inserted = sqlx::query(
        "INSERT INTO assignments (assignment_id, incident_id, team_id, region, \
             distance_meters, eta_seconds, assigned_at, fencing_token, state, source, \
             cad_system, end_time, end_reason, end_cause, cad_incident_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'ACTIVE', ?9, ?10, NULL, '', 0, ?11)",
    )
    .bind(&a.assignment_id)
    .bind(&a.incident_id)
    .bind(&a.team_id)
    .bind(&a.region)
    .bind(a.distance_meters)
    .bind(a.eta_seconds)
    .bind(from_timestamp(a.assigned_at.as_ref()))
    .bind(a.fencing_token)
    .bind(if a.source == 0 {
        AssignmentSource::AutoAssign as i32
    } else {
        a.source
    })
    .bind(&a.cad_system)
    .bind(&a.cad_incident_id)
    .execute(&mut *tx)
    .await;
    if let Err(error) = inserted {
        return Err(match constraint(&error).as_deref() {
            Some("assignments_one_active_per_team") => StoreError::TeamBusy,
            Some("assignments_one_active_per_incident") => StoreError::IncidentBusy,
            _ => error.into(),
        });
    }
    Ok(())
}
