//! SQLite, for `relay dev`, as a [`Dialect`] of [`SqlStore`]: a new incident is inserted in a
//! transaction, and the sequencer needs no lock (SQLite has one writer at a time: the
//! sequencer's DELETE waits for it).

use std::sync::LazyLock;

use relay_proto::intake::IncidentEvent;
use relay_runtime::{
    audit::{AuditLog, AuditRecord},
    sequencer::Sequencer,
};
use sqlx::Sqlite;

use super::{
    OutboxItem, StoreError, StoredIncident, Write, incident_arguments,
    sql::{INSERT_INCIDENT, SEQUENCER_TABLES},
    sql_store::{Dialect, SqlStore},
};

static SEQUENCER: LazyLock<Sequencer> = LazyLock::new(|| Sequencer::new(SEQUENCER_TABLES, None));

/// The SQLite implementation of [`IncidentStore`](super::IncidentStore).
pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    fn sequencer() -> &'static Sequencer {
        &SEQUENCER
    }

    async fn insert_new(
        store: &SqlStore<Self>,
        stored: &StoredIncident,
        events: &[IncidentEvent],
        outbox: &[OutboxItem],
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError> {
        let args = incident_arguments::<Sqlite>(stored, Write::Insert)?;
        let mut tx = relay_runtime::storage::begin_write(store.pool()).await?;
        let inserted = sqlx::query_with(INSERT_INCIDENT, args)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        SqlStore::insert_outbox(&mut tx, outbox, now).await?;
        SqlStore::queue_events(&mut tx, events, &stored.incident.cad_system, now).await?;
        if let Some(record) = audit {
            AuditLog::append::<Sqlite>(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
