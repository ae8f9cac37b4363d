//! Issue 19: the database settings every service has are one block, `[database]`
//! (`RELAY_DATABASE__*`), and the names operators set before (`RELAY_INTAKE__RUN_MIGRATIONS`,
//! `RELAY_INTAKE__MAX_CONNECTIONS`, `RELAY_DIRECTORY__MAX_CONNECTIONS`,
//! `RELAY_AVAILABILITY__MIGRATE_ON_START`) still work on their own service, the new names
//! winning when both are set.

use std::net::SocketAddr;

use relay_tests::{ServiceProcess, TestDatabase, admin_get};
use sqlx::{Connection, PgConnection};

fn free_local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], relay_tests::free_port()))
}

/// `relay_db_pool_max_connections{pool}` of the service whose admin port is `admin`.
async fn pool_size(admin: SocketAddr, pool: &str) -> f64 {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics");
    let label = format!("pool=\"{pool}\"");
    body.lines()
        .filter(|line| line.starts_with("relay_db_pool_max_connections") && line.contains(&label))
        .find_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .unwrap_or_else(|| panic!("no relay_db_pool_max_connections{{{label}}} in:\n{body}"))
}

async fn tables_in(url: &str, schema: &str) -> i64 {
    let mut connection = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1")
        .bind(schema)
        .fetch_one(&mut connection)
        .await
        .expect("count tables")
}

#[tokio::test]
async fn the_old_names_still_set_the_shared_database_block_and_the_new_ones_win() {
    let database = TestDatabase::new().await;
    assert_eq!(
        tables_in(database.url(), "intake").await,
        0,
        "a fresh database"
    );

    // Intake with its old names only: migrated at start, a pool of 3. (Its section refuses
    // unknown keys, so the old names must not reach it either.)
    let admin = free_local_addr().to_string();
    let intake = ServiceProcess::start(
        "relay-intake",
        &[
            ("RELAY_DATABASE_URL", database.url()),
            ("RELAY_ADMIN_LISTEN", admin.as_str()),
            ("RELAY_INTAKE__CONSUME_UPSTREAM", "false"),
            ("RELAY_INTAKE__RUN_MIGRATIONS", "true"),
            ("RELAY_INTAKE__MAX_CONNECTIONS", "3"),
        ],
    );
    intake.wait_until_serving().await;
    assert!(
        tables_in(database.url(), "intake").await > 0,
        "RELAY_INTAKE__RUN_MIGRATIONS=true migrated intake at start"
    );
    assert!((pool_size(admin.parse().expect("addr"), "intake").await - 3.0).abs() < f64::EPSILON);

    // The directory with both names: the shared one wins.
    let admin = free_local_addr().to_string();
    let directory = ServiceProcess::start(
        "relay-directory",
        &[
            ("RELAY_DATABASE_URL", database.url()),
            ("RELAY_ADMIN_LISTEN", admin.as_str()),
            ("RELAY_DIRECTORY__MAX_CONNECTIONS", "3"),
            ("RELAY_DATABASE__MAX_CONNECTIONS", "5"),
            ("RELAY_DATABASE__MIGRATE_ON_START", "true"),
        ],
    );
    directory.wait_until_serving().await;
    assert!(tables_in(database.url(), "directory").await > 0);
    assert!(
        (pool_size(admin.parse().expect("addr"), "directory").await - 5.0).abs() < f64::EPSILON
    );
    drop(intake);
    drop(directory);
}
