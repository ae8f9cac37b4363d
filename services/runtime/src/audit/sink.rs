//! A service's trail behind its [`Database`], whichever backend it is: what the handlers,
//! the refusal layer, the pruning task and `relay audit` append to and read from.

use super::{AuditEntry, AuditLog, AuditRecord, Head, PruneOutcome, Verified, Verifier};
use crate::storage::{Database, QueryBound};

/// The trail of one service's database.
#[derive(Debug, Clone)]
pub struct AuditSink {
    database: Database,
    bound: Option<QueryBound>,
}

/// Entries read per round trip by [`AuditSink::walk`].
const PAGE: i64 = 1000;

impl AuditSink {
    /// The trail in `database` (migrated with the service's migrations, which create it).
    #[must_use]
    pub fn new(database: Database) -> Self {
        Self {
            database,
            bound: None,
        }
    }

    /// With each append bounded by `bound` (`database.query_timeout_ms`): a caller waiting
    /// on its record fails within the bound when the database is partitioned.
    #[must_use]
    pub fn bounded(mut self, bound: QueryBound) -> Self {
        self.bound = Some(bound);
        self
    }

    /// The database.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Appends `records` in one transaction of their own.
    ///
    /// # Errors
    /// When the database fails: nothing is appended.
    pub async fn append_alone(&self, records: &[AuditRecord]) -> Result<(), sqlx::Error> {
        if records.is_empty() {
            return Ok(());
        }
        let append = async {
            match &self.database {
                Database::Postgres { pool, .. } => AuditLog::append_alone(pool, records).await,
                Database::Sqlite(pool) => AuditLog::append_alone(pool, records).await,
            }
        };
        match self.bound {
            Some(bound) => bound.run(append).await,
            None => append.await,
        }
    }

    /// The head row.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn head(&self) -> Result<Head, sqlx::Error> {
        match &self.database {
            Database::Postgres { pool, .. } => AuditLog::head(pool).await,
            Database::Sqlite(pool) => AuditLog::head(pool).await,
        }
    }

    /// Up to `limit` entries after `after_seq` with a time in `[since, until)`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn entries(
        &self,
        after_seq: i64,
        window: (i64, i64),
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        match &self.database {
            Database::Postgres { pool, .. } => {
                AuditLog::entries(pool, after_seq, window, limit).await
            }
            Database::Sqlite(pool) => AuditLog::entries(pool, after_seq, window, limit).await,
        }
    }

    /// Calls `visit` on every entry after `after_seq` with a time in `[since, until)`, in
    /// seq order, a page at a time; stops at the first error `visit` returns.
    ///
    /// # Errors
    /// When the database fails, or `visit`'s error.
    pub async fn walk<E: From<sqlx::Error>>(
        &self,
        mut after_seq: i64,
        window: (i64, i64),
        mut visit: impl FnMut(&AuditEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let page = self.entries(after_seq, window, PAGE).await?;
            for entry in &page {
                visit(entry)?;
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after_seq = last.seq,
                _ => return Ok(()),
            }
        }
    }

    /// Checks the whole chain from its anchor. The outer error is the database's, the inner
    /// the first break.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn verify(&self) -> Result<Result<Verified, super::Finding>, sqlx::Error> {
        enum Stop {
            Database(sqlx::Error),
            Finding(super::Finding),
        }
        impl From<sqlx::Error> for Stop {
            fn from(error: sqlx::Error) -> Self {
                Self::Database(error)
            }
        }
        let head = self.head().await?;
        let mut walk = Verifier::new(head.clone());
        // Every row, whatever its time: a forged row may carry any time.
        let outcome = self
            .walk(i64::MIN, (i64::MIN, i64::MAX), |entry| {
                walk.feed(entry).map_err(Stop::Finding)
            })
            .await;
        match outcome {
            Ok(()) => Ok(walk.finish()),
            Err(Stop::Finding(finding)) => Ok(Err(finding)),
            Err(Stop::Database(error)) => Err(error),
        }
    }

    /// One pruning pass: up to `batch` records older than `before` (micros).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn prune(&self, before: i64, batch: i64) -> Result<PruneOutcome, sqlx::Error> {
        match &self.database {
            Database::Postgres { pool, .. } => AuditLog::prune(pool, before, batch).await,
            Database::Sqlite(pool) => AuditLog::prune(pool, before, batch).await,
        }
    }
}
