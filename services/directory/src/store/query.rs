//! The seam between the shared SQL code and the two databases: a [`Query`] (SQL text with
//! `$n` placeholders, which sqlx binds by number on SQLite too, and its values), the
//! [`Dialect`] each backend implements (how to run a query, and the SQL that differs), and
//! [`Columns`], how the shared row mapping reads a row of either.

use std::{borrow::Cow, future::Future};

use sqlx::{Database, Decode, Encode, Type};

use super::{Candidate, CandidateFilter, StoreResult};

/// One bound value, of a Rust type both databases encode the same way as before.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// TEXT.
    Text(Cow<'a, str>),
    /// TEXT or NULL.
    OptText(Option<Cow<'a, str>>),
    /// BIGINT.
    Int(i64),
    /// DOUBLE PRECISION / REAL.
    Float(f64),
    /// DOUBLE PRECISION / REAL or NULL.
    OptFloat(Option<f64>),
    /// BYTEA / BLOB.
    Bytes(&'a [u8]),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Self::Text(Cow::Borrowed(value))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(value: &'a String) -> Self {
        Self::Text(Cow::Borrowed(value))
    }
}

impl From<String> for Value<'_> {
    fn from(value: String) -> Self {
        Self::Text(Cow::Owned(value))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Self::OptText(value.map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Value<'_> {
    fn from(value: Option<String>) -> Self {
        Self::OptText(value.map(Cow::Owned))
    }
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<f64> for Value<'_> {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl From<Option<f64>> for Value<'_> {
    fn from(value: Option<f64>) -> Self {
        Self::OptFloat(value)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(value: &'a [u8]) -> Self {
        Self::Bytes(value)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(value: &'a Vec<u8>) -> Self {
        Self::Bytes(value)
    }
}

/// A statement and its values: `bind` adds a value for a `$n` already in the text,
/// `push_bind` adds both (the `QueryBuilder` style, for statements built piece by piece).
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    sql: String,
    values: Vec<Value<'a>>,
}

impl<'a> Query<'a> {
    /// A statement with this text.
    #[must_use]
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            values: Vec::new(),
        }
    }

    /// Adds the value of the next `$n` of the text.
    #[must_use]
    pub fn bind(mut self, value: impl Into<Value<'a>>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, sql: impl AsRef<str>) -> &mut Self {
        self.sql.push_str(sql.as_ref());
        self
    }

    /// Appends a placeholder for `value`.
    pub fn push_bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.values.push(value.into());
        let placeholder = format!("${}", self.values.len());
        self.sql.push_str(&placeholder);
        self
    }

    /// Appends `$a, $b, ...`, one placeholder per id.
    pub fn push_in(&mut self, ids: &'a [String]) -> &mut Self {
        for (index, id) in ids.iter().enumerate() {
            if index > 0 {
                self.sql.push_str(", ");
            }
            self.push_bind(id);
        }
        self
    }

    /// Appends `VALUES (...), (...)`, a row of placeholders per item, with the values
    /// `row` gives for it.
    pub fn push_values<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut row: impl FnMut(T) -> Vec<Value<'a>>,
    ) -> &mut Self {
        self.sql.push_str("VALUES ");
        for (index, item) in items.into_iter().enumerate() {
            self.sql.push_str(if index == 0 { "(" } else { ", (" });
            for (column, value) in row(item).into_iter().enumerate() {
                if column > 0 {
                    self.sql.push_str(", ");
                }
                self.push_bind(value);
            }
            self.sql.push(')');
        }
        self
    }

    /// The statement as sqlx's, for a database that encodes every [`Value`] type.
    pub fn to_sqlx<'q, DB>(&'q self) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
    where
        DB: Database,
        &'q str: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
        f64: Encode<'q, DB> + Type<DB>,
        Option<f64>: Encode<'q, DB> + Type<DB>,
        &'q [u8]: Encode<'q, DB> + Type<DB>,
    {
        let mut query = sqlx::query(&self.sql);
        for value in &self.values {
            query = match value {
                Value::Text(text) => query.bind(text.as_ref()),
                Value::OptText(text) => query.bind(text.as_deref()),
                Value::Int(int) => query.bind(*int),
                Value::Float(float) => query.bind(*float),
                Value::OptFloat(float) => query.bind(*float),
                Value::Bytes(bytes) => query.bind(*bytes),
            };
        }
        query
    }

    /// Runs the statement; the number of rows it changed.
    ///
    /// # Errors
    /// The database's.
    pub async fn execute<D: Dialect>(&self, conn: &mut D::Connection) -> Result<u64, sqlx::Error> {
        D::execute(conn, self).await
    }

    /// Runs the statement; the rows it returned.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_all<D: Dialect>(
        &self,
        conn: &mut D::Connection,
    ) -> Result<Vec<D::Row>, sqlx::Error> {
        D::fetch_all(conn, self).await
    }

    /// Runs the statement; the first row it returned, if any.
    ///
    /// # Errors
    /// The database's.
    pub async fn fetch_optional<D: Dialect>(
        &self,
        conn: &mut D::Connection,
    ) -> Result<Option<D::Row>, sqlx::Error> {
        D::fetch_optional(conn, self).await
    }
}

/// How the shared row mapping reads a column of a row of either database (the same Rust
/// types as `sqlx::Row::try_get` would decode).
pub trait Columns {
    /// How many columns.
    fn width(&self) -> usize;
    /// A TEXT column.
    ///
    /// # Errors
    /// When the column is missing or of another type.
    fn text(&self, index: usize) -> Result<String, sqlx::Error>;
    /// A TEXT column that may be NULL.
    ///
    /// # Errors
    /// As [`Columns::text`].
    fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error>;
    /// A BIGINT column.
    ///
    /// # Errors
    /// As [`Columns::text`].
    fn int(&self, index: usize) -> Result<i64, sqlx::Error>;
    /// A DOUBLE PRECISION column.
    ///
    /// # Errors
    /// As [`Columns::text`].
    fn float(&self, index: usize) -> Result<f64, sqlx::Error>;
    /// A DOUBLE PRECISION column that may be NULL.
    ///
    /// # Errors
    /// As [`Columns::text`].
    fn opt_float(&self, index: usize) -> Result<Option<f64>, sqlx::Error>;
    /// A BYTEA / BLOB column.
    ///
    /// # Errors
    /// As [`Columns::text`].
    fn bytes(&self, index: usize) -> Result<Vec<u8>, sqlx::Error>;
}

impl<R> Columns for R
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn width(&self) -> usize {
        self.len()
    }

    fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        self.try_get(index)
    }

    fn opt_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(index)
    }

    fn int(&self, index: usize) -> Result<i64, sqlx::Error> {
        self.try_get(index)
    }

    fn float(&self, index: usize) -> Result<f64, sqlx::Error> {
        self.try_get(index)
    }

    fn opt_float(&self, index: usize) -> Result<Option<f64>, sqlx::Error> {
        self.try_get(index)
    }

    fn bytes(&self, index: usize) -> Result<Vec<u8>, sqlx::Error> {
        self.try_get(index)
    }
}

/// What differs between the two SQL backends: how a [`Query`] runs, and the SQL of the few
/// statements whose dialects differ (JSON, collation, locking, full text, search).
pub trait Dialect: Database<Row: Columns> {
    /// What makes an `ORDER BY` on text compare bytewise (`COLLATE "C"`; SQLite's default).
    const COLLATE: &'static str;
    /// What locks the referral an update reads (`FOR UPDATE`; SQLite's write lock does).
    const FOR_UPDATE: &'static str;
    /// The JSON array of `[location_id, available, total, as_of_time]` of the capacity
    /// reports of service `s.id`, as text (NULL when none).
    const CAPACITY_JSON: &'static str;

    /// Runs `query`; the rows it changed.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c;

    /// Runs `query`; its rows.
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'c;

    /// Runs `query`; its first row.
    fn fetch_optional<'c>(
        conn: &'c mut Self::Connection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send + 'c;

    /// The SQL expression of the stored document of service `service` (see
    /// [`super::rows::Lists`]).
    fn lists_json(service: &str) -> String;

    /// The SQL expression of the search text of a row of `services`: its names, its
    /// description, its organization's name and its terms' names.
    const SEARCH_TEXT: &'static str;

    /// Rebuilds the search rows of the services `condition` matches (a WHERE clause on
    /// `services` with `$1`, `$2` bound to `a`, `b`), and what the backend's full-text search
    /// reads.
    fn refresh_rows<'c>(
        conn: &'c mut Self::Connection,
        condition: &'c str,
        a: &'c str,
        b: &'c str,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'c;

    /// ACTIVE (service, location) pairs passing `filter`, best first (see
    /// [`CandidateFilter`]).
    fn search_candidates<'c>(
        pool: &'c sqlx::Pool<Self>,
        filter: &'c CandidateFilter,
    ) -> impl Future<Output = StoreResult<Vec<Candidate>>> + Send + 'c;

    /// Appends `record` to the audit trail in the transaction on `conn`
    /// ([`relay_runtime::audit::AuditLog::append`]).
    fn append_audit<'c>(
        conn: &'c mut Self::Connection,
        record: &'c relay_runtime::audit::AuditRecord,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;
}
