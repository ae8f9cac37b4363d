//! Issue 18, part 2: a Redis failover the way it really happens (part of `make chaos`).
//!
//! Availability and two routing replicas run on a Redis primary of the test's own, with a
//! replica following it through a TCP proxy. Under load (teams on duty and clearing, CADs
//! submitting calls concurrently) the replication link is cut, as a network partition would,
//! so the primary goes on acknowledging writes the replica never sees; then the primary is
//! killed with SIGKILL, the replica promoted (REPLICAOF NO ONE) and the services restarted
//! with the replica's URL, as an operator or Sentinel would. The load goes on; afterwards no
//! team may ever have been actively assigned to two incidents at once (routing's record), every
//! acknowledged call is in intake once, and each reaches an outcome. The counts go to the
//! test's output.

use std::time::{Duration, Instant};

use relay_proto::{
    availability::{GetTeamRequest, availability_service_client::AvailabilityServiceClient},
    common::TeamStatus,
};
use relay_tests::{
    chaos::{Load, Verdict, metric_sum},
    proxy::TcpProxy,
    redis_server::RedisServer,
    suite::Suite,
};
use sqlx::{Connection, PgConnection};

const REFUSED: &str = "relay_routing_claims_refused_total";
const ROUTING: [&str; 2] = ["routing", "routing-1"];

/// Claims refused by routing's record, by reason, summed over both replicas.
async fn refused(suite: &Suite, into: &mut (f64, f64)) {
    for name in ROUTING {
        let text = suite.scrape(name).await;
        into.0 += metric_sum(&text, REFUSED, "STALE_FENCING_TOKEN");
        into.1 += metric_sum(&text, REFUSED, "TEAM_BUSY");
    }
}

/// Teams whose live state (availability, now on the promoted replica) contradicts routing's
/// record: busy in the record but not live, or the other way round.
async fn stale_teams(suite: &Suite, load: &Load) -> usize {
    let mut db = PgConnection::connect(suite.database().url())
        .await
        .expect("connect");
    let active: Vec<(String, String)> = sqlx::query_as(
        "SELECT team_id, incident_id FROM routing.assignments WHERE state = 'ACTIVE'",
    )
    .fetch_all(&mut db)
    .await
    .expect("active assignments");
    let mut client = AvailabilityServiceClient::connect(suite.availability.endpoint())
        .await
        .expect("availability");
    let mut stale = 0;
    for index in 0..load.teams {
        let team_id = format!("t{index:02}");
        let Ok(team) = client
            .get_team(GetTeamRequest {
                team_id: team_id.clone(),
            })
            .await
        else {
            stale += 1;
            continue;
        };
        let team = team.into_inner().team.expect("team");
        let busy = matches!(
            team.status(),
            TeamStatus::Dispatched | TeamStatus::EnRoute | TeamStatus::OnScene
        );
        let recorded = active
            .iter()
            .find(|(t, _)| *t == team_id)
            .map(|(_, i)| i.as_str());
        if busy != recorded.is_some() || (busy && recorded != Some(team.incident_id.as_str())) {
            stale += 1;
        }
    }
    stale
}

/// A replication offset from `INFO replication` (0 when absent).
async fn offset(server: &RedisServer, field: &str) -> i64 {
    server
        .replication(field)
        .await
        .expect("replication info")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn a_failover_that_loses_acknowledged_writes_never_dispatches_a_team_twice() {
    let began = Instant::now();
    let mut primary = RedisServer::start(None).await;
    let link = TcpProxy::start(primary.addr()).await;
    let replica = RedisServer::start(Some(link.addr())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica
        .replication("master_link_status")
        .await
        .ok()
        .flatten()
        .as_deref()
        != Some("up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let primary_url = primary.url();
    let mut suite = Suite::start_with(
        &[
            ("RELAY_REDIS_URL", primary_url.as_str()),
            ("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1"),
        ],
        2,
    )
    .await;
    let mut load = Load::on(&suite).await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    // The partition: the replica stops hearing from the primary, which goes on acknowledging.
    link.cut();
    let replica_offset = offset(&replica, "slave_repl_offset").await;
    let acknowledged_at_cut = load.acknowledged_so_far();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary_offset = offset(&primary, "master_repl_offset").await;
    let acknowledged_at_crash = load.acknowledged_so_far();
    let mut claims_refused = (0.0, 0.0);
    refused(&suite, &mut claims_refused).await;
    primary.kill();
    let _: String = replica
        .query(&["REPLICAOF", "NO", "ONE"])
        .await
        .expect("promote the replica");
    let crashed_at = began.elapsed();
    eprintln!(
        "{:>5.1}s partitioned the replica ({acknowledged_at_cut} calls acknowledged), killed the \
         primary 3 s later ({acknowledged_at_crash} acknowledged; it had written {} bytes of \
         replication stream the replica never got) and promoted the replica",
        crashed_at.as_secs_f64(),
        primary_offset - replica_offset
    );
    assert!(
        primary_offset > replica_offset,
        "the primary acknowledged nothing the replica missed: the test proves nothing"
    );

    // The operator's part: every Redis client moves to the new primary.
    let replica_url = replica.url();
    let moved = [("RELAY_REDIS_URL", replica_url.as_str())];
    suite.kill("availability");
    suite.revive("availability", &moved).await;
    let stale = stale_teams(&suite, &load).await;
    for name in ROUTING {
        suite.kill(name);
        suite.revive(name, &moved).await;
    }
    eprintln!(
        "{:>5.1}s services on the promoted replica; {stale} of {} teams' live state contradicted \
         routing's record when availability came back",
        began.elapsed().as_secs_f64(),
        load.teams
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let verdict = Verdict::after(&mut load, suite.database().url(), Duration::from_secs(120)).await;
    refused(&suite, &mut claims_refused).await;
    verdict.report_and_check(
        "redis failover under load",
        began.elapsed().as_secs_f64(),
        claims_refused.0,
        claims_refused.1,
    );
    drop(suite);
    drop(link);
}
