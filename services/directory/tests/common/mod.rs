//! Shared test setup: a directory service on PostgreSQL (its own database) or SQLite (its own
//! file), started in process on port 0 and called through the generated client.

#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod intake;

use std::path::{Path, PathBuf};

use relay_directory::{
    Application, Backend,
    store::{PostgresStore, SqliteStore},
};
use relay_proto::directory::directory_service_client::DirectoryServiceClient;
use relay_tests::TestDatabase;
use secrecy::SecretString;
use tonic::transport::Channel;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// A running service and what it owns.
pub struct Harness {
    pub client: DirectoryServiceClient<Channel>,
    pub url: String,
    pub kind: Kind,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _database: Option<TestDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The shared HSDS 3.0 example package (`../shared/hsds` beside the repository).
pub fn shared_hsds() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/hsds");
    assert!(
        path.join("services.csv").is_file(),
        "the HSDS 3.0 examples must be at {} (the shared/ folder beside the repository)",
        path.display()
    );
    path
}

/// A fresh, migrated database of `kind`: its URL and the guards that delete it.
pub async fn database(kind: Kind) -> (String, Option<TestDatabase>, Option<tempfile::TempDir>) {
    match kind {
        Kind::Postgres => {
            let db = TestDatabase::new().await;
            (db.url().to_owned(), Some(db), None)
        }
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("directory.db").display());
            (url, None, Some(dir))
        }
    }
}

/// Opens and migrates the store at `url`.
pub async fn backend(url: &str) -> Backend {
    let database = relay_directory::STORAGE
        .migrated(&SecretString::from(url.to_owned()), 4)
        .await
        .unwrap();
    Backend::on(&database)
}

/// Runs `f` with the concrete store of `backend`.
#[macro_export]
macro_rules! with_store {
    ($backend:expr, |$store:ident| $body:expr) => {
        match $backend {
            relay_directory::Backend::Postgres($store) => $body,
            relay_directory::Backend::Sqlite($store) => $body,
        }
    };
}

/// One test per backend of each `async fn case(kind: Kind)` named: `postgres::case` and
/// `sqlite::case`.
#[macro_export]
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Kind::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Kind::Sqlite).await;
                }
            )*
        }
    };
}

/// Starts the service on a new database of `kind`.
pub async fn start(kind: Kind) -> Harness {
    let (url, database, dir) = database(kind).await;
    backend(&url).await;
    start_on(kind, url, database, dir).await
}

/// Starts the service on an existing, migrated database.
pub async fn start_on(
    kind: Kind,
    url: String,
    database: Option<TestDatabase>,
    dir: Option<tempfile::TempDir>,
) -> Harness {
    start_configured(
        kind,
        (url, database, dir),
        &[],
        std::sync::Arc::new(relay_runtime::clock::SystemClock),
    )
    .await
}

/// Starts the service on a new database of `kind` with extra settings (`("directory.x",
/// "1")`) and a clock.
pub async fn start_with(
    kind: Kind,
    settings: &[(&str, serde_json::Value)],
    clock: std::sync::Arc<dyn relay_runtime::clock::Clock>,
) -> Harness {
    let (url, database, dir) = database(kind).await;
    backend(&url).await;
    start_configured(kind, (url, database, dir), settings, clock).await
}

async fn start_configured(
    kind: Kind,
    (url, database, dir): (String, Option<TestDatabase>, Option<tempfile::TempDir>),
    settings: &[(&str, serde_json::Value)],
    clock: std::sync::Arc<dyn relay_runtime::clock::Clock>,
) -> Harness {
    let mut config = relay_runtime::Config::builder("directory")
        .set("listen", "127.0.0.1:0")
        .set("database_url", url.clone())
        .set("page_token_secret", "test-secret");
    for (key, value) in settings {
        config = config.set(key, value.clone());
    }
    let app = Application::build_with_clock(config.build().unwrap(), clock)
        .await
        .unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = DirectoryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        client,
        url,
        kind,
        stop: Some(stop),
        _database: database,
        _dir: dir,
    }
}

/// An RFC 3339 instant as a protobuf timestamp.
pub fn ts(text: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// Zips every file below `dir` into `zip_path`, each under `prefix/` (211 exports often wrap
/// everything in one folder).
pub fn zip_folder(dir: &Path, zip_path: &Path, prefix: &str) {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    for path in files {
        let relative = path
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        zip.start_file(
            format!("{prefix}/{relative}"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, &std::fs::read(&path).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

pub async fn get(h: &mut Harness, id: &str) -> relay_proto::directory::Service {
    h.client
        .get_service(relay_proto::directory::GetServiceRequest {
            service_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap_or_else(|| panic!("service {id} was imported"))
}

/// The ids of the services open at `at` (RFC 3339), sorted.
pub async fn open_at(h: &mut Harness, at: &str) -> Vec<String> {
    search_ids(
        h,
        relay_proto::directory::SearchServicesRequest {
            open_at: Some(ts(at)),
            ..Default::default()
        },
    )
    .await
}

pub async fn search_ids(
    h: &mut Harness,
    request: relay_proto::directory::SearchServicesRequest,
) -> Vec<String> {
    let mut ids: Vec<String> = h
        .client
        .search_services(request)
        .await
        .unwrap()
        .into_inner()
        .results
        .iter()
        .map(|r| r.service.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// An ACTIVE service of organization `org` with these locations.
pub fn active_service(
    id: &str,
    name: &str,
    locations: Vec<relay_proto::directory::ServiceLocation>,
) -> relay_proto::directory::Service {
    relay_proto::directory::Service {
        id: id.into(),
        organization: Some(relay_proto::directory::Organization {
            id: "org".into(),
            name: "Lane Mutual Aid".into(),
            ..Default::default()
        }),
        name: name.into(),
        status: relay_proto::directory::ServiceStatus::Active as i32,
        locations,
        ..Default::default()
    }
}

/// Stores `service` through UpsertService (request id = the service id).
pub async fn upsert_service(h: &mut Harness, service: relay_proto::directory::Service) {
    h.client
        .upsert_service(relay_proto::directory::UpsertServiceRequest {
            request_id: service.id.clone(),
            service: Some(service),
        })
        .await
        .unwrap();
}

pub fn _unused(_: PostgresStore, _: SqliteStore) {}
