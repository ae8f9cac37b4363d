//! Issue 14: Relay reaches PostgreSQL and Redis over TLS, checks their certificates, and logs
//! in to Redis as an ACL user.
//!
//! The test makes its own certificate authority, a PostgreSQL cluster that accepts TLS
//! connections only, and a Redis that listens on a TLS port only with the default user off.
//! Availability (which uses both: the roster in PostgreSQL, the live state in Redis) becomes
//! SERVING and keeps a team; PostgreSQL's `pg_stat_ssl` shows its connections encrypted. With
//! a certificate authority that did not sign the server's certificate, or a wrong Redis
//! password, it never becomes SERVING, and says why without printing the password.

use std::time::Duration;

use relay_proto::availability::{
    GetTeamRequest, UpsertTeamRequest, availability_service_client::AvailabilityServiceClient,
};
use relay_tests::{
    ServiceProcess,
    datastore_tls::{TestCa, TlsPostgres, TlsRedis},
    unique_name, wait_until_serving,
};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;

fn availability(database_url: &str, redis_url: &str, redis_ca: &std::path::Path) -> ServiceProcess {
    let prefix = unique_name("relay");
    ServiceProcess::start(
        "relay-availability",
        &[
            ("RELAY_DATABASE_URL", database_url),
            ("RELAY_REDIS_URL", redis_url),
            (
                "RELAY_REDIS_CA_FILE",
                redis_ca.to_str().expect("utf-8 path"),
            ),
            ("RELAY_AVAILABILITY__KEY_PREFIX", prefix.as_str()),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
            ("RELAY_LOG", "info"),
        ],
    )
}

/// Waits a few readiness rounds: the service must not become SERVING, and its log must say
/// `why`. Returns the log.
async fn never_serving(service: &ServiceProcess, why: &str) -> String {
    if wait_until_serving(&service.endpoint(), Duration::from_secs(4))
        .await
        .is_ok()
    {
        panic!("became SERVING although {why}");
    }
    let logs = service.stderr_lines().join("\n");
    assert!(logs.contains(why), "the log does not say {why}:\n{logs}");
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_uses_postgresql_and_redis_over_verified_tls() {
    let ca = TestCa::new("stores");
    let postgres = TlsPostgres::start(&ca).await;
    let redis = TlsRedis::start(&ca);
    let database_url = postgres.url(&ca.cert_path());

    // The servers take TLS only: a plaintext PostgreSQL connection is refused.
    let plaintext = PgConnection::connect(&postgres.plaintext_url()).await;
    assert!(plaintext.is_err(), "PostgreSQL accepted plaintext");

    let service = availability(&database_url, &redis.url(), &ca.cert_path());
    service.wait_until_serving().await;
    let mut client = AvailabilityServiceClient::new(
        Channel::from_shared(service.endpoint())
            .expect("endpoint")
            .connect_lazy(),
    );
    let created = client
        .upsert_team(UpsertTeamRequest {
            request_id: String::from("tls-1"),
            team_id: String::from("team-tls"),
            display_name: String::from("Encrypted"),
            region: String::from("north"),
            capabilities: vec![String::from("clinician")],
            shift_ends_at: None,
            expected_revision: 0,
        })
        .await
        .expect("upsert over TLS stores")
        .into_inner();
    assert!(created.created);
    let team = client
        .get_team(GetTeamRequest {
            team_id: String::from("team-tls"),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(team.team.expect("team").display_name, "Encrypted");

    let mut connection = PgConnection::connect(&database_url).await.expect("connect");
    let encrypted: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'relay-availability'",
    )
    .fetch_all(&mut connection)
    .await
    .expect("pg_stat_ssl");
    assert!(!encrypted.is_empty(), "availability has no connection open");
    assert!(
        encrypted.iter().all(|ssl| *ssl),
        "a connection without TLS: {encrypted:?}"
    );
    let roster: i64 =
        sqlx::query_scalar("SELECT count(*) FROM availability.teams WHERE team_id = 'team-tls'")
            .fetch_one(&mut connection)
            .await
            .expect("roster row");
    assert_eq!(roster, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_or_a_wrong_password_keeps_availability_out_of_service() {
    let ca = TestCa::new("stores");
    let stranger = TestCa::new("stranger");
    let postgres = TlsPostgres::start(&ca).await;
    let redis = TlsRedis::start(&ca);
    let database_url = postgres.url(&ca.cert_path());

    // Redis' certificate is not signed by the CA availability trusts.
    let service = availability(&database_url, &redis.url(), &stranger.cert_path());
    never_serving(&service, "redis: invalid peer certificate: UnknownIssuer").await;

    // PostgreSQL's certificate is not signed by the CA in sslrootcert.
    let service = availability(
        &postgres.url(&stranger.cert_path()),
        &redis.url(),
        &ca.cert_path(),
    );
    never_serving(
        &service,
        "database: invalid peer certificate: UnknownIssuer",
    )
    .await;

    // The right CA and a wrong Redis password: refused by Redis' ACL.
    let wrong = "not-the-password";
    let service = availability(
        &database_url,
        &redis.url_with_password(wrong),
        &ca.cert_path(),
    );
    let logs = never_serving(&service, "Password authentication failed").await;
    assert!(!logs.contains(wrong), "a password in the log:\n{logs}");
    assert!(
        !logs.contains(TlsRedis::PASSWORD),
        "a password in the log:\n{logs}"
    );
}
