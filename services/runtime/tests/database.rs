//! `relay_runtime::storage::Database`: one way to open, migrate, check and close a service's
//! database, on a real PostgreSQL (in its own schema) and on SQLite.

use relay_runtime::storage::{Database, Migrations};
use relay_tests::TestDatabase;
use secrecy::SecretString;

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/sqlite");
const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

async fn exercise(database: &Database) {
    // Lazy: opening connects to nothing; the check is what reaches the server.
    (database.check())().await.expect("reachable");
    database.migrate(&MIGRATIONS).await.expect("migrate");
    // Twice is harmless (a second replica starting, `migrate` then `serve`).
    database.migrate(&MIGRATIONS).await.expect("migrate again");
    let inserted = match database {
        Database::Postgres { pool, .. } => sqlx::query("INSERT INTO probe VALUES (1, 'x')")
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Database::Sqlite(pool) => sqlx::query("INSERT INTO probe VALUES (1, 'x')")
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    };
    assert_eq!(inserted.expect("insert into the migrated table"), 1);
    database.close().await;
    let error = (database.check())().await.expect_err("closed");
    assert!(error.starts_with(database.kind()), "{error}");
}

#[tokio::test]
async fn postgres_migrates_into_its_own_schema_checks_and_closes() {
    let test = TestDatabase::new().await;
    let url = SecretString::from(test.url().to_owned());
    let database = Database::open(&url, "probe_service", 2).expect("open");
    assert_eq!(database.kind(), "postgres");
    exercise(&database).await;
    // The table is in the service's schema, not in public.
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(test.url())
        .await
        .expect("connect");
    let schema: String = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'probe'",
    )
    .fetch_one(&mut connection)
    .await
    .expect("probe table");
    assert_eq!(schema, "probe_service");
}

#[tokio::test]
async fn sqlite_migrates_checks_and_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("probe.db").display()
    ));
    let database = Database::open(&url, "probe_service", 10).expect("open");
    assert_eq!(database.kind(), "sqlite");
    exercise(&database).await;
}

#[test]
fn a_bad_schema_name_is_refused() {
    let url = SecretString::from(String::from("postgres://127.0.0.1/x"));
    let error = Database::open(&url, "Bad-Schema", 2).expect_err("bad schema");
    assert!(error.to_string().contains("Bad-Schema"), "{error}");
}

/// Writers that read before they write (every store's transaction: find the request, then
/// write) take turns on SQLite instead of failing with SQLITE_BUSY: each begins with
/// `begin_write` (`BEGIN IMMEDIATE`). With a plain deferred `BEGIN`, some of these fail at
/// once, because a WAL snapshot gone stale cannot wait for the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writers_that_read_first_take_turns() {
    let dir = tempfile::tempdir().expect("dir");
    let url = SecretString::from(format!("sqlite://{}", dir.path().join("w.db").display()));
    let pool = relay_runtime::storage::sqlite_pool(&url, 8).expect("pool");
    sqlx::query("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    sqlx::query("INSERT INTO counter (id, n) VALUES (1, 0)")
        .execute(&pool)
        .await
        .expect("row");
    let writers = (0..8).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..25 {
                let mut tx = relay_runtime::storage::begin_write(&pool).await?;
                let (n,): (i64,) = sqlx::query_as("SELECT n FROM counter WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                tokio::task::yield_now().await;
                sqlx::query("UPDATE counter SET n = ? WHERE id = 1")
                    .bind(n + 1)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok::<(), sqlx::Error>(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("task").expect("every write takes its turn");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT n FROM counter WHERE id = 1")
        .fetch_one(&pool)
        .await
        .expect("read");
    assert_eq!(n, 200, "no increment lost");
}
