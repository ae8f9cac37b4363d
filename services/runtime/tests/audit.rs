//! `relay_runtime::audit` on a real PostgreSQL (in its own schema) and on SQLite: appends
//! chain, concurrent appends stay gapless, a change and its record commit together, tampering
//! is found where it happened, and pruning keeps the chain verifiable.

use relay_runtime::{
    audit::{AuditLog, AuditRecord, AuditSink, FindingKind},
    storage::{Database, Migrations},
};
use relay_tests::TestDatabase;
use secrecy::SecretString;

static AUDIT: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/audit");
const MIGRATIONS: Migrations = Migrations {
    postgres: &AUDIT,
    sqlite: &AUDIT,
};

fn record(n: usize) -> AuditRecord {
    AuditRecord {
        time: i64::try_from(n).expect("small") * 1_000,
        principal: format!("cad-{n}"),
        credential: "token".into(),
        rpc: "/relay.intake.v1.IntakeService/SubmitIncident".into(),
        resources: vec![format!("incident:{n}")],
        outcome: "OK".into(),
        request_id: format!("req-{n}"),
        ..AuditRecord::default()
    }
}

async fn postgres() -> (TestDatabase, Database) {
    let test = TestDatabase::new().await;
    let url = SecretString::from(test.url().to_owned());
    let database = Database::open(&url, "audit_probe", 8).expect("open");
    database.migrate(&MIGRATIONS).await.expect("migrate");
    (test, database)
}

async fn sqlite(dir: &tempfile::TempDir) -> Database {
    let url = SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("audit.db").display()
    ));
    let database = Database::open(&url, "audit_probe", 4).expect("open");
    database.migrate(&MIGRATIONS).await.expect("migrate");
    database
}

async fn execute(database: &Database, sql: &str) {
    match database {
        Database::Postgres { pool, .. } => sqlx::query(sql).execute(pool).await.map(drop),
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
    }
    .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn finding(sink: &AuditSink) -> (i64, FindingKind) {
    let finding = sink
        .verify()
        .await
        .expect("database")
        .expect_err("tampering found");
    (finding.seq, finding.kind)
}

/// Appends five records, checks the chain, then tampers in each way on a copy of the state
/// and checks what verify says.
async fn tampering_is_found(database: &Database) {
    let sink = AuditSink::new(database.clone());
    for n in 1..=5 {
        sink.append_alone(&[record(n)]).await.expect("append");
    }
    let verified = sink.verify().await.expect("database").expect("valid");
    assert_eq!((verified.records, verified.last_seq), (5, 5));

    execute(
        database,
        "UPDATE audit_log SET principal = 'mallory' WHERE seq = 3",
    )
    .await;
    assert_eq!(finding(&sink).await, (3, FindingKind::Edited));
    execute(
        database,
        "UPDATE audit_log SET principal = 'cad-3' WHERE seq = 3",
    )
    .await;
    assert!(sink.verify().await.expect("database").is_ok());

    // Swap the contents of rows 2 and 4 (everything but the seq).
    let columns = "record_time, principal, credential, rpc, resources, outcome, reason, \
                   request_id, trace_id, peer, prev_hash, hash";
    execute(
        database,
        &format!("CREATE TABLE swap AS SELECT seq, {columns} FROM audit_log WHERE seq IN (2, 4)"),
    )
    .await;
    execute(database, "DELETE FROM audit_log WHERE seq IN (2, 4)").await;
    execute(
        database,
        &format!("INSERT INTO audit_log (seq, {columns}) SELECT 6 - seq, {columns} FROM swap"),
    )
    .await;
    assert_eq!(finding(&sink).await, (2, FindingKind::Reordered));
    execute(database, "DELETE FROM audit_log WHERE seq IN (2, 4)").await;
    execute(
        database,
        &format!("INSERT INTO audit_log (seq, {columns}) SELECT seq, {columns} FROM swap"),
    )
    .await;
    assert!(sink.verify().await.expect("database").is_ok());

    execute(
        database,
        &format!(
            "INSERT INTO audit_log (seq, {columns}) SELECT 6, {columns} FROM swap WHERE seq = 2"
        ),
    )
    .await;
    assert_eq!(finding(&sink).await, (6, FindingKind::Inserted));
    execute(database, "DELETE FROM audit_log WHERE seq = 6").await;

    execute(database, "DELETE FROM audit_log WHERE seq = 4").await;
    assert_eq!(finding(&sink).await, (4, FindingKind::Deleted));
}

/// A change and its record in one transaction: rolled back together, committed together.
async fn the_record_commits_with_its_change<DB>(pool: &sqlx::Pool<DB>, database: &Database)
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let sink = AuditSink::new(database.clone());
    let mut tx = pool.begin().await.expect("begin");
    let entry = AuditLog::append::<DB>(&mut tx, &record(1))
        .await
        .expect("append");
    assert_eq!(entry.seq, 1);
    tx.rollback().await.expect("rollback");
    assert_eq!(sink.head().await.expect("head").seq, 0);

    let mut tx = pool.begin().await.expect("begin");
    let first = AuditLog::append::<DB>(&mut tx, &record(1))
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("begin");
    let second = AuditLog::append::<DB>(&mut tx, &record(2))
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(second.prev_hash, first.hash);
    let head = sink.head().await.expect("head");
    assert_eq!((head.seq, &head.hash), (2, &second.hash));
    let entries = sink
        .entries(0, (i64::MIN, i64::MAX), 10)
        .await
        .expect("read");
    assert_eq!(entries, vec![first, second]);
}

/// Pruning forgets the oldest records, anchors the chain and says so in the chain.
async fn pruning_keeps_the_chain_verifiable(database: &Database) {
    let sink = AuditSink::new(database.clone());
    sink.append_alone(&(1..=6).map(record).collect::<Vec<_>>())
        .await
        .expect("append");
    // Records 1 to 4 are older than 4_500 micros; two per batch.
    let first = sink.prune(4_500, 2).await.expect("prune");
    assert_eq!((first.deleted, first.anchor_seq), (2, 2));
    let second = sink.prune(4_500, 2).await.expect("prune");
    assert_eq!((second.deleted, second.anchor_seq), (2, 4));
    // Left: 5, 6, and the two audit.pruned records (their time is now): nothing more to prune.
    assert_eq!(sink.prune(4_500, 2).await.expect("prune").deleted, 0);
    let verified = sink
        .verify()
        .await
        .expect("database")
        .expect("valid after pruning");
    assert_eq!(
        (verified.anchor_seq, verified.records, verified.last_seq),
        (4, 4, 8)
    );
    let entries = sink
        .entries(0, (i64::MIN, i64::MAX), 10)
        .await
        .expect("read");
    let pruned: Vec<_> = entries
        .iter()
        .filter(|e| e.record.rpc == "audit.pruned")
        .collect();
    assert_eq!(pruned.len(), 2);
    assert!(
        pruned[1].record.reason.starts_with("anchor seq=4 "),
        "{:?}",
        pruned[1]
    );
    // Deleting the first record kept is still found.
    execute(database, "DELETE FROM audit_log WHERE seq = 5").await;
    assert_eq!(finding(&sink).await, (5, FindingKind::Deleted));
}

#[tokio::test]
async fn postgres_chain_commit_tamper_and_prune() {
    let (_test, database) = postgres().await;
    let Database::Postgres { pool, .. } = &database else {
        unreachable!("postgres")
    };
    the_record_commits_with_its_change(pool, &database).await;
    execute(&database, "DELETE FROM audit_log").await;
    execute(
        &database,
        "UPDATE audit_head SET seq = 0, hash = anchor_hash",
    )
    .await;
    tampering_is_found(&database).await;
}

#[tokio::test]
async fn postgres_pruning() {
    let (_test, database) = postgres().await;
    pruning_keeps_the_chain_verifiable(&database).await;
}

#[tokio::test]
async fn sqlite_chain_commit_tamper_and_prune() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = sqlite(&dir).await;
    let Database::Sqlite(pool) = &database else {
        unreachable!("sqlite")
    };
    the_record_commits_with_its_change(pool, &database).await;
    execute(&database, "DELETE FROM audit_log").await;
    execute(
        &database,
        "UPDATE audit_head SET seq = 0, hash = anchor_hash",
    )
    .await;
    tampering_is_found(&database).await;
    let other = tempfile::tempdir().expect("temp dir");
    pruning_keeps_the_chain_verifiable(&sqlite(&other).await).await;
}

#[tokio::test]
async fn concurrent_appends_on_postgres_give_one_gapless_valid_chain() {
    let (_test, database) = postgres().await;
    let sink = AuditSink::new(database.clone());
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    sink.append_alone(&[record(task * 100 + n)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let verified = sink.verify().await.expect("database").expect("valid");
    assert_eq!((verified.records, verified.last_seq), (160, 160));
}

/// Each service's migrator embeds its own folder, so the trail's migration is a copy in each
/// (PostgreSQL and SQLite): the copies must stay the same text as this crate's.
#[test]
fn every_service_creates_the_same_trail() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let canonical =
        std::fs::read_to_string(root.join("runtime/tests/migrations/audit/0001_audit.sql"))
            .expect("canonical migration");
    let copies = [
        "intake/migrations/20261130000002_audit.sql",
        "intake/migrations_sqlite/20261130000002_audit.sql",
        "routing/migrations/20261130000002_audit.sql",
        "routing/migrations_sqlite/20261130000002_audit.sql",
        "availability/migrations/20261130000002_audit.sql",
        "availability/migrations_sqlite/20261130000002_audit.sql",
        "directory/migrations/0005_audit.sql",
        "directory/migrations_sqlite/0005_audit.sql",
    ];
    for copy in copies {
        let text = std::fs::read_to_string(root.join(copy)).expect(copy);
        assert_eq!(
            text, canonical,
            "{copy} differs from the runtime's audit migration"
        );
    }
}
