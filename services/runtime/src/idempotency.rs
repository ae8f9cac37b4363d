//! Idempotent mutations: one request fingerprint and one replay path for every service.
//!
//! A mutation carries a client-chosen `request_id`. The first time it succeeds, the service
//! remembers a [`RequestRecord`]: the id, the RPC, a [`fingerprint`] of the request, and the
//! encoded response. The record is written **in the same transaction as the change** (see
//! [`RequestLog::remember`]), so a crash can never leave a change without its record (a retry
//! would apply it twice) or a record without its change (a retry would answer a change that
//! never happened). A retry with the same id and the same request gets the remembered
//! response ([`replay`]); the same id with another request is refused
//! ([`ReplayError::Reused`]), which each service maps to its existing `REQUEST_ID_REUSED`
//! error.
//!
//! The table is the service's own (a name and these columns: `request_id TEXT PRIMARY KEY,
//! rpc TEXT, fingerprint TEXT, response BYTEA/BLOB, create_time BIGINT` micros), on
//! PostgreSQL or SQLite.

use prost::Message;
use sha2::{Digest, Sha256};

/// A digest of a request (its RPC name and its protobuf encoding), to tell a retry from the
/// reuse of a `request_id` for another request. The RPC is part of the digest, so the same id
/// sent to two RPCs never replays one's answer for the other.
#[must_use]
pub fn fingerprint(rpc: &str, request: &impl Message) -> String {
    let mut preimage = rpc.as_bytes().to_vec();
    preimage.push(0);
    preimage.extend(request.encode_to_vec());
    digest(&preimage)
}

/// The text of a fingerprint: SHA-256, base64url without padding.
fn digest(bytes: &[u8]) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        Sha256::digest(bytes),
    )
}

/// Whether `stored`, the fingerprint a record of `rpc` holds, names the request that
/// `fingerprint` names.
///
/// Records written before the services shared [`fingerprint`] hold its preimage rather than
/// its digest: the RPC name, a zero byte and the request's encoding (routing), or the encoding
/// alone, the RPC name in a column of its own (the directory). Such a record matches when the
/// digest of its preimage does, so a retry that spans the upgrade still replays; these
/// records leave with the request log's retention.
#[must_use]
pub fn same_request(rpc: &str, stored: &[u8], fingerprint: &str) -> bool {
    if stored == fingerprint.as_bytes() {
        return true;
    }
    let mut preimage = rpc.as_bytes().to_vec();
    preimage.push(0);
    preimage.extend_from_slice(stored);
    digest(stored) == fingerprint || digest(&preimage) == fingerprint
}

/// A remembered mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The client's request_id.
    pub request_id: String,
    /// The RPC name.
    pub rpc: String,
    /// The [`fingerprint`] of the request.
    pub fingerprint: String,
    /// The prost-encoded response returned the first time.
    pub response: Vec<u8>,
}

impl RequestRecord {
    /// The record of `response`, the answer to the request `fingerprint` names.
    #[must_use]
    pub fn new(request_id: &str, rpc: &str, fingerprint: &str, response: &impl Message) -> Self {
        Self {
            request_id: request_id.to_owned(),
            rpc: rpc.to_owned(),
            fingerprint: fingerprint.to_owned(),
            response: response.encode_to_vec(),
        }
    }
}

/// Why a remembered response cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The request_id was used for a different request.
    #[error("request_id was already used for a different request")]
    Reused,
    /// The remembered response does not decode (a defect or a corrupted row).
    #[error("remembered response is corrupt: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

/// The remembered response of `record` for a retry of the request `fingerprint` names.
///
/// # Errors
/// [`ReplayError::Reused`] when the record is of another request; [`ReplayError::Corrupt`]
/// when its response does not decode.
pub fn replay<R: Message + Default>(
    record: &RequestRecord,
    fingerprint: &str,
) -> Result<R, ReplayError> {
    replay_stored(
        &record.rpc,
        record.fingerprint.as_bytes(),
        &record.response,
        fingerprint,
    )
}

/// [`replay`] for a service that keeps its records in its own shape: the record's RPC (empty
/// when the service does not store it), its stored fingerprint and its encoded response.
///
/// # Errors
/// As [`replay`].
pub fn replay_stored<R: Message + Default>(
    rpc: &str,
    stored_fingerprint: &[u8],
    response: &[u8],
    fingerprint: &str,
) -> Result<R, ReplayError> {
    if !same_request(rpc, stored_fingerprint, fingerprint) {
        return Err(ReplayError::Reused);
    }
    Ok(R::decode(response)?)
}

/// The SQL of a service's request log table (the same text on PostgreSQL and SQLite).
#[derive(Debug, Clone)]
pub struct RequestLog {
    insert: String,
    find: String,
    purge: String,
}

impl RequestLog {
    /// The log kept in `table` (see the module documentation for its columns).
    #[must_use]
    pub fn new(table: &str) -> Self {
        Self {
            insert: format!(
                "INSERT INTO {table} (request_id, rpc, fingerprint, response, create_time) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING \
                 RETURNING create_time"
            ),
            find: format!(
                "SELECT request_id, rpc, fingerprint, response FROM {table} WHERE request_id = $1"
            ),
            purge: format!("DELETE FROM {table} WHERE create_time < $1"),
        }
    }

    /// The statement that forgets records created before `$1` (micros).
    #[must_use]
    pub fn purge_sql(&self) -> &str {
        &self.purge
    }

    /// Writes `record` on `conn`, the transaction of the change it answers. False when the
    /// request_id is already taken (by a retry that won, or by another request): the caller
    /// rolls its change back and replays what [`Self::find`] returns.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn remember<DB>(
        &self,
        conn: &mut DB::Connection,
        record: &RequestRecord,
        now: i64,
    ) -> Result<bool, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let inserted: Option<i64> = sqlx::query_scalar(&self.insert)
            .bind(record.request_id.clone())
            .bind(record.rpc.clone())
            .bind(record.fingerprint.clone())
            .bind(record.response.clone())
            .bind(now)
            .fetch_optional(conn)
            .await?;
        Ok(inserted.is_some())
    }

    /// The record of `request_id`, if any.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn find<'e, DB, E>(
        &self,
        executor: E,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, sqlx::Error>
    where
        DB: sqlx::Database,
        E: sqlx::Executor<'e, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        for<'q> Vec<u8>: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let row: Option<(String, String, String, Vec<u8>)> = sqlx::query_as(&self.find)
            .bind(request_id.to_owned())
            .fetch_optional(executor)
            .await?;
        Ok(
            row.map(|(request_id, rpc, fingerprint, response)| RequestRecord {
                request_id,
                rpc,
                fingerprint,
                response,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_replays_and_another_request_is_refused() {
        let first = prost_types::Duration {
            seconds: 1,
            nanos: 0,
        };
        let other = prost_types::Duration {
            seconds: 2,
            nanos: 0,
        };
        let print = fingerprint("Rpc", &first);
        assert_eq!(print, fingerprint("Rpc", &first));
        assert_ne!(print, fingerprint("Rpc", &other));
        assert_ne!(print, fingerprint("OtherRpc", &first));
        let answer = prost_types::Timestamp {
            seconds: 7,
            nanos: 8,
        };
        let record = RequestRecord::new("req-1", "Rpc", &print, &answer);
        let replayed: prost_types::Timestamp = replay(&record, &print).expect("replay");
        assert_eq!(replayed, answer);
        assert!(matches!(
            replay::<prost_types::Timestamp>(&record, &fingerprint("Rpc", &other)),
            Err(ReplayError::Reused)
        ));
        let corrupt = RequestRecord {
            response: vec![0xff],
            ..record
        };
        assert!(matches!(
            replay::<prost_types::Timestamp>(&corrupt, &print),
            Err(ReplayError::Corrupt(_))
        ));
    }

    fn seconds(seconds: i64) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos: 0 }
    }

    #[test]
    fn records_holding_the_old_preimage_still_match() {
        let (request, other) = (seconds(1), seconds(2));
        let print = fingerprint("Rpc", &request);
        // The format of the fingerprints services have stored: it must never change.
        assert_eq!(print, "xh8Fn2kVlhD4nB7Q_dkfnzDl1hHwkwCs5DbRA9xlNKI");
        let mut with_rpc = b"Rpc\0".to_vec();
        with_rpc.extend(request.encode_to_vec());
        assert!(same_request("", &with_rpc, &print));
        assert!(same_request("Rpc", &request.encode_to_vec(), &print));
        assert!(!same_request("OtherRpc", &request.encode_to_vec(), &print));
        assert!(!same_request("Rpc", &other.encode_to_vec(), &print));
        assert!(!same_request("", &request.encode_to_vec(), &print));
        let answer = prost_types::Timestamp {
            seconds: 7,
            nanos: 8,
        };
        let replayed: prost_types::Timestamp =
            replay_stored("", &with_rpc, &answer.encode_to_vec(), &print).expect("replay");
        assert_eq!(replayed, answer);
    }

    #[tokio::test]
    async fn the_record_is_written_once_in_the_callers_transaction() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        sqlx::query(
            "CREATE TABLE log (request_id TEXT PRIMARY KEY, rpc TEXT NOT NULL, \
             fingerprint TEXT NOT NULL, response BLOB NOT NULL, create_time BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("table");
        let log = RequestLog::new("log");
        let record = RequestRecord {
            request_id: "req-1".into(),
            rpc: "Rpc".into(),
            fingerprint: "fp".into(),
            response: vec![1, 2],
        };
        let mut tx = pool.begin().await.expect("begin");
        assert!(
            log.remember::<sqlx::Sqlite>(&mut *tx, &record, 5)
                .await
                .expect("insert")
        );
        tx.rollback().await.expect("rollback");
        assert_eq!(log.find(&pool, "req-1").await.expect("find"), None);

        let mut tx = pool.begin().await.expect("begin");
        assert!(
            log.remember::<sqlx::Sqlite>(&mut *tx, &record, 5)
                .await
                .expect("insert")
        );
        tx.commit().await.expect("commit");
        let mut tx = pool.begin().await.expect("begin");
        let again = RequestRecord {
            fingerprint: "other".into(),
            ..record.clone()
        };
        assert!(
            !log.remember::<sqlx::Sqlite>(&mut *tx, &again, 6)
                .await
                .expect("insert")
        );
        tx.rollback().await.expect("rollback");
        assert_eq!(log.find(&pool, "req-1").await.expect("find"), Some(record));
        let purged = sqlx::query(log.purge_sql())
            .bind(6_i64)
            .execute(&pool)
            .await
            .expect("purge")
            .rows_affected();
        assert_eq!(purged, 1);
    }
}
