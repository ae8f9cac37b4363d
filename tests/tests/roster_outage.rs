//! Issue 18, defect 1: an UpsertTeam that fails because PostgreSQL (the durable roster) is
//! unreachable must record nothing, as common.proto promises of every failed request. Before
//! the fix the team landed in Redis without its roster row: visible to ListTeams and routing,
//! and gone after the next rebuild.
//!
//! PostgreSQL is made unreachable for this one availability process only, through a TCP proxy
//! the test cuts and restores; the shared server keeps running.

use std::time::Duration;

use relay_proto::availability::{
    GetTeamRequest, ListTeamsRequest, UpsertTeamRequest,
    availability_service_client::AvailabilityServiceClient,
};
use relay_tests::{
    ServiceProcess, TestDatabase,
    proxy::{TcpProxy, socket_addr_of, url_via},
    redis_delete_prefix, redis_url, unique_name,
};
use sqlx::{Connection, PgConnection};
use tonic::{Code, transport::Channel};

fn upsert(request_id: &str, team_id: &str, display_name: &str) -> UpsertTeamRequest {
    UpsertTeamRequest {
        request_id: request_id.to_owned(),
        team_id: team_id.to_owned(),
        display_name: display_name.to_owned(),
        region: String::from("north"),
        capabilities: vec![String::from("mental_health")],
        shift_ends_at: None,
        expected_revision: 0,
    }
}

async fn team_ids(client: &mut AvailabilityServiceClient<Channel>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_teams(ListTeamsRequest {
                region: String::new(),
                status: 0,
                page_size: 100,
                page_token: page_token.clone(),
            })
            .await
            .expect("list teams")
            .into_inner();
        ids.extend(page.teams.into_iter().map(|t| t.team_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

async fn roster_ids(database_url: &str) -> Vec<String> {
    let mut connection = PgConnection::connect(database_url).await.expect("connect");
    sqlx::query_scalar("SELECT team_id FROM availability.teams ORDER BY team_id")
        .fetch_all(&mut connection)
        .await
        .expect("roster rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upsert_leaves_nothing_and_a_retry_after_recovery_succeeds() {
    let database = TestDatabase::new().await;
    let proxy = TcpProxy::start(socket_addr_of(database.url(), 5432)).await;
    let proxied = url_via(database.url(), proxy.addr());
    let redis = redis_url();
    let prefix = unique_name("relay");
    let service = ServiceProcess::start(
        "relay-availability",
        &[
            ("RELAY_DATABASE_URL", proxied.as_str()),
            ("RELAY_REDIS_URL", redis.as_str()),
            ("RELAY_AVAILABILITY__KEY_PREFIX", prefix.as_str()),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
            ("RELAY_LOG", "warn"),
        ],
    );
    service.wait_until_serving().await;
    let channel = Channel::from_shared(service.endpoint())
        .expect("endpoint")
        .connect_lazy();
    let mut client = AvailabilityServiceClient::new(channel);

    let first = client
        .upsert_team(upsert("req-a", "team-a", "Alpha"))
        .await
        .expect("upsert while PostgreSQL is up")
        .into_inner();
    assert!(first.created);

    proxy.cut();
    // Several teams, each a new request: a half-written record showed up in 4 to 9 of 10.
    let mut refused = 0;
    for i in 0..10 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            client.upsert_team(upsert(&format!("req-{i}"), &format!("team-{i}"), "Down")),
        )
        .await
        .expect("an answer within 20 s");
        let status = outcome.expect_err("an upsert cannot succeed without its roster");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{status:?}"
        );
        refused += 1;
    }
    // An update of an existing team fails too and leaves the old fields.
    let update = client
        .upsert_team(upsert("req-a-2", "team-a", "Renamed while down"))
        .await;
    assert!(update.is_err(), "{update:?}");

    let listed = team_ids(&mut client).await;
    eprintln!(
        "while PostgreSQL was unreachable: {refused} upserts refused; teams listed: {listed:?}"
    );
    assert_eq!(
        listed,
        vec![String::from("team-a")],
        "a failed upsert left a team"
    );
    let missing = client
        .get_team(GetTeamRequest {
            team_id: String::from("team-3"),
        })
        .await
        .expect_err("team-3 was never created");
    assert_eq!(missing.code(), Code::NotFound);
    let alpha = client
        .get_team(GetTeamRequest {
            team_id: String::from("team-a"),
        })
        .await
        .expect("team-a")
        .into_inner();
    assert_eq!(alpha.team.expect("team").display_name, "Alpha");

    proxy.restore();
    // The same requests again, now that PostgreSQL answers: each creates its team.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0..10 {
        loop {
            match client
                .upsert_team(upsert(&format!("req-{i}"), &format!("team-{i}"), "Down"))
                .await
            {
                Ok(response) => {
                    assert!(response.into_inner().created, "team-{i} existed already");
                    break;
                }
                Err(status) if std::time::Instant::now() < deadline => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("retry after recovery failed: {status:?}"),
            }
        }
    }
    let mut expected: Vec<String> = (0..10).map(|i| format!("team-{i}")).collect();
    expected.push(String::from("team-a"));
    expected.sort();
    assert_eq!(team_ids(&mut client).await, expected);
    assert_eq!(roster_ids(database.url()).await, expected);

    drop(service);
    drop(proxy);
    redis_delete_prefix(&prefix).await;
}
