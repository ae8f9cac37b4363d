//! The SQL of the trail, the same text on PostgreSQL and SQLite, generic over the sqlx
//! database like [`crate::idempotency::RequestLog`].
//!
//! Appending takes the head row's lock with its first statement (an `UPDATE ... RETURNING`:
//! a row lock on PostgreSQL, the write lock on SQLite), so appends are serialized per
//! service and the chain has no gap and no fork. Inside a change's transaction it is the
//! last statement before the commit, so the lock is held for one round trip or two.

use super::{AuditEntry, AuditRecord, GENESIS, chain_hash};

const BUMP_HEAD: &str =
    "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, anchor_seq";
const INSERT: &str = "INSERT INTO audit_log (seq, record_time, principal, credential, rpc, \
     resources, outcome, reason, request_id, trace_id, peer, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
const SET_HEAD_HASH: &str = "UPDATE audit_head SET hash = $1 WHERE id = 1";
/// [`INSERT`] and the head's new hash in one statement (PostgreSQL's data-modifying CTE): one
/// round trip fewer while the head is locked.
const INSERT_AND_SET_HEAD: &str = "WITH appended AS (INSERT INTO audit_log (seq, record_time, \
     principal, credential, rpc, resources, outcome, reason, request_id, trace_id, peer, \
     prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)) \
     UPDATE audit_head SET hash = $13 WHERE id = 1";
const COLUMNS: &str = "seq, record_time, principal, credential, rpc, resources, outcome, \
     reason, request_id, trace_id, peer, prev_hash, hash";
const HEAD: &str = "SELECT seq, hash, anchor_seq, anchor_hash FROM audit_head WHERE id = 1";
const LOCK_HEAD: &str = "UPDATE audit_head SET anchor_seq = anchor_seq WHERE id = 1 \
     RETURNING anchor_seq";
const OLDEST: &str =
    "SELECT seq, hash, record_time FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";
const DELETE_UPTO: &str = "DELETE FROM audit_log WHERE seq <= $1";
const SET_ANCHOR: &str = "UPDATE audit_head SET anchor_seq = $1, anchor_hash = $2 WHERE id = 1";

/// The trail's head: the last record's seq and hash, and the anchor (the last pruned
/// record's seq and hash; 0 and [`GENESIS`] before any pruning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last seq appended.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// The last pruned seq.
    pub anchor_seq: i64,
    /// Its hash: the `prev_hash` of the first record kept.
    pub anchor_hash: String,
}

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneOutcome {
    /// Records deleted.
    pub deleted: u64,
    /// The new anchor's seq (0 when nothing was pruned).
    pub anchor_seq: i64,
}

type Row = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn entry_of(row: Row) -> Result<AuditEntry, sqlx::Error> {
    let (seq, time, principal, credential, rpc, resources, outcome, reason) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
    let resources: Vec<String> =
        serde_json::from_str(&resources).map_err(|error| sqlx::Error::ColumnDecode {
            index: "resources".into(),
            source: Box::new(error),
        })?;
    Ok(AuditEntry {
        seq,
        record: AuditRecord {
            time,
            principal,
            credential,
            rpc,
            resources,
            outcome,
            reason,
            request_id: row.8,
            trace_id: row.9,
            peer: row.10,
        },
        prev_hash: row.11,
        hash: row.12,
    })
}

/// The trail's statements (every service's tables have the same names in its own schema).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLog;

impl AuditLog {
    /// Appends `record` on `conn`, the transaction of the change it records: the last
    /// statement before the commit. Returns its entry.
    ///
    /// # Errors
    /// When the database fails (the caller's transaction then rolls back: no change without
    /// its record).
    pub async fn append<DB>(
        conn: &mut DB::Connection,
        record: &AuditRecord,
    ) -> Result<AuditEntry, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let (seq, prev_hash, _): (i64, String, i64) = sqlx::query_as(BUMP_HEAD)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| sqlx::Error::Protocol("audit_head has no row".into()))?;
        let hash = chain_hash(&prev_hash, seq, record);
        let resources = serde_json::to_string(&record.resources)
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        // SQLite has no data-modifying CTE: the head's hash is a statement of its own there.
        let fused = DB::NAME == "PostgreSQL";
        sqlx::query(if fused { INSERT_AND_SET_HEAD } else { INSERT })
            .bind(seq)
            .bind(record.time)
            .bind(record.principal.clone())
            .bind(record.credential.clone())
            .bind(record.rpc.clone())
            .bind(resources)
            .bind(record.outcome.clone())
            .bind(record.reason.clone())
            .bind(record.request_id.clone())
            .bind(record.trace_id.clone())
            .bind(record.peer.clone())
            .bind(prev_hash.clone())
            .bind(hash.clone())
            .execute(&mut *conn)
            .await?;
        if !fused {
            sqlx::query(SET_HEAD_HASH)
                .bind(hash.clone())
                .execute(&mut *conn)
                .await?;
        }
        Ok(AuditEntry {
            seq,
            record: record.clone(),
            prev_hash,
            hash,
        })
    }

    /// Appends `records` in a transaction of their own (records with no change to join:
    /// refusals, failed writes, reads of caller details).
    ///
    /// # Errors
    /// When the database fails; nothing is appended then.
    pub async fn append_alone<DB>(
        pool: &sqlx::Pool<DB>,
        records: &[AuditRecord],
    ) -> Result<(), sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let mut tx = crate::storage::begin_write(pool).await?;
        for record in records {
            Self::append::<DB>(&mut tx, record).await?;
        }
        tx.commit().await
    }

    /// The head row.
    ///
    /// # Errors
    /// When the database fails or the row is missing.
    pub async fn head<DB>(pool: &sqlx::Pool<DB>) -> Result<Head, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let mut conn = pool.acquire().await?;
        let (seq, hash, anchor_seq, anchor_hash): (i64, String, i64, String) =
            sqlx::query_as(HEAD).fetch_one(&mut *conn).await?;
        Ok(Head {
            seq,
            hash,
            anchor_seq,
            anchor_hash,
        })
    }

    /// Up to `limit` entries after `after_seq`, in seq order, whose time is in
    /// `[since, until)`.
    ///
    /// # Errors
    /// When the database fails or a row does not decode.
    pub async fn entries<DB>(
        pool: &sqlx::Pool<DB>,
        after_seq: i64,
        (since, until): (i64, i64),
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 AND record_time >= $2 \
             AND record_time < $3 ORDER BY seq LIMIT $4"
        );
        let mut conn = pool.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(after_seq)
            .bind(since)
            .bind(until)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(entry_of).collect()
    }

    /// Forgets up to `batch` of the oldest records written before `before` (micros), in one
    /// transaction that moves the anchor to the last one forgotten and appends an
    /// `audit.pruned` record naming it, so the chain stays verifiable from the anchor.
    ///
    /// # Errors
    /// When the database fails; nothing is forgotten then.
    pub async fn prune<DB>(
        pool: &sqlx::Pool<DB>,
        before: i64,
        batch: i64,
    ) -> Result<PruneOutcome, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let mut tx = crate::storage::begin_write(pool).await?;
        let anchor: i64 = sqlx::query_scalar(LOCK_HEAD).fetch_one(&mut *tx).await?;
        let oldest: Vec<(i64, String, i64)> = sqlx::query_as(OLDEST)
            .bind(anchor)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        // A prefix only: the chain is cut at one place.
        let Some((seq, hash, _)) = oldest.iter().take_while(|(_, _, t)| *t < before).last() else {
            tx.rollback().await?;
            return Ok(PruneOutcome::default());
        };
        let deleted = sqlx::query(DELETE_UPTO)
            .bind(*seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SET_ANCHOR)
            .bind(*seq)
            .bind(hash.clone())
            .execute(&mut *tx)
            .await?;
        let deleted = rows_affected::<DB>(&deleted);
        let record = AuditRecord::of_trail(
            super::verify::PRUNED,
            format!("anchor seq={seq} hash={hash} deleted={deleted}"),
        );
        Self::append::<DB>(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(PruneOutcome {
            deleted,
            anchor_seq: *seq,
        })
    }
}

fn rows_affected<DB: sqlx::Database>(result: &DB::QueryResult) -> u64 {
    // The query result types share `rows_affected` without a trait; go through Any.
    let any: &dyn std::any::Any = result;
    if let Some(pg) = any.downcast_ref::<sqlx::postgres::PgQueryResult>() {
        pg.rows_affected()
    } else if let Some(lite) = any.downcast_ref::<sqlx::sqlite::SqliteQueryResult>() {
        lite.rows_affected()
    } else {
        0
    }
}

/// The genesis head, as the migrations insert it.
#[must_use]
pub fn genesis_head() -> Head {
    Head {
        seq: 0,
        hash: GENESIS.to_owned(),
        anchor_seq: 0,
        anchor_hash: GENESIS.to_owned(),
    }
}
