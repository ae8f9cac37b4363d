//! One pending-to-gapless sequencer: how a service gives the events of a stream consecutive
//! sequence numbers without making every writer wait for the stream's counter.
//!
//! A change appends its events to a *pending* table (an id from a sequence object, no shared
//! row locked), so the commits of one stream's changes run in parallel. The sequencer, one at
//! a time across replicas (a transaction-scoped advisory lock on PostgreSQL; SQLite has one
//! writer anyway), then moves committed pending rows out in batches, in id order, and numbers
//! each stream's rows with the next consecutive sequences from that stream's counter row, all
//! in one transaction per batch:
//!
//! - gapless and resumable: numbers are allocated at move time, under the lock, so they are
//!   consecutive whatever order the changes committed in; a crash leaves the rows pending,
//!   never half-moved;
//! - each row moves once: the batch is taken with `DELETE .. RETURNING`, so even two
//!   sequencers that both got past the lock could not move one row twice.
//!
//! The sequencer is parametrized by its stream key (a column of the pending table and of the
//! counter table: the CAD system for intake, the region for routing). [`Sequencer::take`]
//! deletes and numbers a batch inside the caller's transaction; the caller writes the
//! numbered rows to its stream table in its own shape and commits.

use std::collections::HashMap;

/// The tables a [`Sequencer`] works on.
#[derive(Debug, Clone, Copy)]
pub struct Tables<'a> {
    /// The pending table: a `pending_id` (ascending with commit order per writer) and the key
    /// column, plus what the caller carries over.
    pub pending: &'a str,
    /// The stream key column, in both the pending and the counter table.
    pub key: &'a str,
    /// The pending columns to return, in the order of the row type's `FromRow`.
    pub columns: &'a str,
    /// The counter table: one row per stream key.
    pub counters: &'a str,
    /// The counter column: the last sequence given in the stream.
    pub last: &'a str,
}

/// A pending row as the sequencer needs to see it.
pub trait PendingRow {
    /// Its pending id (the order rows are numbered in).
    fn pending_id(&self) -> i64;
    /// Its stream key.
    fn stream_key(&self) -> &str;
}

/// A stream that grew in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The stream key.
    pub key: String,
    /// The last sequence the stream had before this batch (0 for a new stream).
    pub previous: i64,
    /// How many rows of the batch it got.
    pub count: i64,
}

/// A row and the sequence it was given in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered<R> {
    /// Its sequence in its stream.
    pub sequence: i64,
    /// The pending row.
    pub row: R,
}

/// One batch taken off the pending table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<R> {
    /// The rows, in pending-id order, numbered.
    pub rows: Vec<Numbered<R>>,
    /// The streams that grew, in order of their first row.
    pub streams: Vec<Stream>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            streams: Vec::new(),
        }
    }
}

/// The streams of `rows` (already in pending-id order) and how many rows each has, in order of
/// first appearance.
#[must_use]
pub fn count_streams<R: PendingRow>(rows: &[R]) -> Vec<(String, i64)> {
    let mut counts: Vec<(String, i64)> = Vec::new();
    for row in rows {
        match counts.iter_mut().find(|(key, _)| key == row.stream_key()) {
            Some(entry) => entry.1 += 1,
            None => counts.push((row.stream_key().to_owned(), 1)),
        }
    }
    counts
}

/// Numbers `rows` (in pending-id order): each stream's rows get `previous + 1`, `+ 2`, ...
/// Rows of a stream missing from `streams` are an error (a defect).
///
/// # Errors
/// Names the stream key that `streams` lacks.
pub fn number<R: PendingRow>(rows: Vec<R>, streams: &[Stream]) -> Result<Vec<Numbered<R>>, String> {
    let mut next: HashMap<&str, i64> = streams
        .iter()
        .map(|s| (s.key.as_str(), s.previous))
        .collect();
    rows.into_iter()
        .map(|row| {
            let last = next
                .get_mut(row.stream_key())
                .ok_or_else(|| format!("sequencer lost stream {}", row.stream_key()))?;
            *last += 1;
            Ok(Numbered {
                sequence: *last,
                row,
            })
        })
        .collect()
}

/// A sequencer over one pending table and its counters (see the module documentation).
#[derive(Debug, Clone)]
pub struct Sequencer {
    lock: Option<String>,
    take: String,
    reserve: String,
}

impl Sequencer {
    /// A sequencer of `tables`. `lock` is a statement run first in the batch's transaction to
    /// keep one sequencer at a time (an advisory lock on PostgreSQL), or `None` where the
    /// database has one writer anyway (SQLite).
    #[must_use]
    pub fn new(tables: Tables<'_>, lock: Option<&str>) -> Self {
        let Tables {
            pending,
            key,
            columns,
            counters,
            last,
        } = tables;
        Self {
            lock: lock.map(str::to_owned),
            take: format!(
                "DELETE FROM {pending} WHERE pending_id IN \
                 (SELECT pending_id FROM {pending} ORDER BY pending_id LIMIT $1) \
                 RETURNING {columns}"
            ),
            reserve: format!(
                "INSERT INTO {counters} ({key}, {last}) VALUES ($1, $2) \
                 ON CONFLICT ({key}) DO UPDATE SET {last} = {counters}.{last} + $2 \
                 RETURNING {last}"
            ),
        }
    }

    /// Takes up to `limit` pending rows, oldest first, off the pending table and numbers them,
    /// advancing each stream's counter, on `conn`: the caller's transaction, in which it then
    /// writes the numbered rows and commits (or rolls back, which puts them back). An empty
    /// batch means nothing was pending.
    ///
    /// # Errors
    /// When the database fails, or a row names a stream that was not counted (a defect,
    /// reported as [`sqlx::Error::Protocol`]).
    pub async fn take<DB, R>(
        &self,
        conn: &mut DB::Connection,
        limit: i64,
    ) -> Result<Batch<R>, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
        R: for<'r> sqlx::FromRow<'r, DB::Row> + PendingRow + Send + Unpin,
    {
        if let Some(lock) = &self.lock {
            sqlx::query(lock).execute(&mut *conn).await?;
        }
        let mut rows: Vec<R> = sqlx::query_as(&self.take)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        if rows.is_empty() {
            return Ok(Batch::default());
        }
        rows.sort_unstable_by_key(PendingRow::pending_id);
        let mut streams = Vec::new();
        for (key, count) in count_streams(&rows) {
            let last: i64 = sqlx::query_scalar(&self.reserve)
                .bind(key.clone())
                .bind(count)
                .fetch_one(&mut *conn)
                .await?;
            streams.push(Stream {
                key,
                previous: last - count,
                count,
            });
        }
        let rows = number(rows, &streams).map_err(sqlx::Error::Protocol)?;
        Ok(Batch { rows, streams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
    struct Row {
        pending_id: i64,
        stream: String,
        body: String,
    }

    impl PendingRow for Row {
        fn pending_id(&self) -> i64 {
            self.pending_id
        }
        fn stream_key(&self) -> &str {
            &self.stream
        }
    }

    fn row(pending_id: i64, stream: &str) -> Row {
        Row {
            pending_id,
            stream: stream.into(),
            body: format!("{stream}{pending_id}"),
        }
    }

    #[test]
    fn each_stream_continues_from_its_own_counter() {
        let rows = vec![row(1, "a"), row(2, "b"), row(3, "a")];
        assert_eq!(
            count_streams(&rows),
            vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
        );
        let streams = [
            Stream {
                key: "a".into(),
                previous: 10,
                count: 2,
            },
            Stream {
                key: "b".into(),
                previous: 0,
                count: 1,
            },
        ];
        let numbered = number(rows, &streams).expect("numbered");
        let sequences: Vec<(i64, i64)> = numbered
            .iter()
            .map(|n| (n.row.pending_id, n.sequence))
            .collect();
        assert_eq!(sequences, vec![(1, 11), (2, 1), (3, 12)]);
        assert!(number(vec![row(4, "c")], &streams).is_err());
    }

    #[tokio::test]
    async fn batches_number_each_stream_gaplessly_and_move_each_row_once() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        for ddl in [
            "CREATE TABLE pending (pending_id INTEGER PRIMARY KEY AUTOINCREMENT, \
             stream TEXT NOT NULL, body TEXT NOT NULL)",
            "CREATE TABLE counters (stream TEXT PRIMARY KEY, last BIGINT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await.expect("table");
        }
        for stream in ["a", "b", "a", "a", "b"] {
            sqlx::query("INSERT INTO pending (stream, body) VALUES ($1, 'x')")
                .bind(stream)
                .execute(&pool)
                .await
                .expect("pending");
        }
        let sequencer = Sequencer::new(
            Tables {
                pending: "pending",
                key: "stream",
                columns: "pending_id, stream, body",
                counters: "counters",
                last: "last",
            },
            None,
        );
        let mut seen = Vec::new();
        loop {
            let mut tx = pool.begin().await.expect("begin");
            let batch: Batch<Row> = sequencer
                .take::<sqlx::Sqlite, Row>(&mut *tx, 2)
                .await
                .expect("take");
            tx.commit().await.expect("commit");
            if batch.rows.is_empty() {
                break;
            }
            seen.extend(batch.rows.into_iter().map(|n| (n.row.stream, n.sequence)));
        }
        let expected: Vec<(String, i64)> = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
        assert_eq!(seen, expected);
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(left, 0);
    }
}
