//! PostgreSQL (schema `intake`), as a [`Dialect`] of [`SqlStore`]: the one-statement insert of
//! a new incident on the path of every SubmitIncident, and the sequencer's advisory lock.

use std::sync::LazyLock;

use relay_proto::intake::IncidentEvent;
use relay_runtime::{
    audit::{AuditLog, AuditRecord},
    sequencer::Sequencer,
};
use sqlx::{Arguments, Postgres, postgres::PgArguments};

use super::{
    OutboxItem, StoreError, StoredIncident, Write, incident_arguments, pending_body,
    sql::{INSERT_INCIDENT, SEQUENCER_TABLES},
    sql_store::{Dialect, SqlStore},
};

/// One sequencer at a time per database and schema, across replicas; the lock is held until
/// the batch commits, so the next one sees its moves.
static SEQUENCER: LazyLock<Sequencer> = LazyLock::new(|| {
    Sequencer::new(
        SEQUENCER_TABLES,
        Some(
            "SELECT pg_advisory_xact_lock(hashtext('relay-intake-sequencer'), \
             hashtext(current_schema()))",
        ),
    )
});

/// [`INSERT_INCIDENT`] with its outbox rows and events, in one statement (data-modifying
/// CTEs, atomic without BEGIN and COMMIT): one round trip to the server instead of five. The
/// outbox rows and events are written only when the incident row is. Parameters: the
/// incident's ($1 to $18), the time ($19), the outbox rows as arrays ($20 to $25), the
/// events' incident ids and bodies ($26, $27).
static INSERT_NEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH new_incident AS ({INSERT_INCIDENT} RETURNING cad_system), \
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
    )
});

/// The PostgreSQL implementation of [`IncidentStore`](super::IncidentStore).
pub type PostgresStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    fn sequencer() -> &'static Sequencer {
        &SEQUENCER
    }

    /// [`INSERT_NEW`]: one round trip to the server instead of five; with an audit record,
    /// in a transaction that appends it after the incident (when the incident is new).
    async fn insert_new(
        store: &SqlStore<Self>,
        stored: &StoredIncident,
        events: &[IncidentEvent],
        outbox: &[OutboxItem],
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        let mut args: PgArguments = incident_arguments::<Postgres>(stored, Write::Insert)?;
        add_new_rows(&mut args, events, outbox, now).map_err(sqlx::Error::Encode)?;
        let query = sqlx::query_scalar_with(&INSERT_NEW, args);
        let Some(record) = audit else {
            let inserted: i64 = query.fetch_one(store.pool()).await?;
            return Ok(inserted > 0);
        };
        let mut tx = store.pool().begin().await?;
        let inserted: i64 = query.fetch_one(&mut *tx).await?;
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        AuditLog::append::<Postgres>(&mut tx, record).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The parameters of [`INSERT_NEW`] after the incident's.
fn add_new_rows(
    args: &mut PgArguments,
    events: &[IncidentEvent],
    outbox: &[OutboxItem],
    now: i64,
) -> Result<(), sqlx::error::BoxDynError> {
    let column = |f: fn(&OutboxItem) -> String| outbox.iter().map(f).collect::<Vec<_>>();
    args.add(now)?;
    args.add(column(|o| o.outbox_id.clone()))?;
    args.add(column(|o| o.incident_id.clone()))?;
    args.add(column(|o| o.kind.as_str().to_owned()))?;
    args.add(outbox.iter().map(|o| o.payload.clone()).collect::<Vec<_>>())?;
    args.add(outbox.iter().map(|o| o.attempts).collect::<Vec<_>>())?;
    args.add(outbox.iter().map(|o| o.next_attempt_at).collect::<Vec<_>>())?;
    args.add(
        events
            .iter()
            .map(|e| e.incident_id.clone())
            .collect::<Vec<_>>(),
    )?;
    args.add(events.iter().map(pending_body).collect::<Vec<_>>())?;
    Ok(())
}
