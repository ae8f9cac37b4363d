//! Black-box tests of the gRPC API: the service runs in-process on port 0 against the
//! machine's PostgreSQL and Redis (its own database and key prefix), and is called through the
//! generated client, as a CAD or a terminal would.

mod common;

use std::{sync::Arc, time::Duration};

use common::{RedisEnv, Setup, TestApp, bad_fields, reason, start_time, upsert};
use relay_fleet::model::TeamStatus as Status;
use relay_proto::{
    availability::{
        FindAvailableTeamsRequest, GetTeamRequest, ListTeamsRequest, ReportLocationRequest,
        SetTeamStatusRequest, StreamLocationsRequest, TeamEventKind, WatchTeamsRequest,
    },
    common::{GeoPoint, TeamStatus},
};
use relay_runtime::clock::{Clock, ManualClock};
use relay_runtime::validate::to_timestamp;
use tokio_stream::StreamExt;
use tonic::Code;

fn point(latitude: f64, longitude: f64) -> Option<GeoPoint> {
    Some(GeoPoint {
        latitude,
        longitude,
    })
}

fn set_status(
    team_id: &str,
    status: TeamStatus,
    incident: &str,
    expected: i64,
) -> SetTeamStatusRequest {
    SetTeamStatusRequest {
        request_id: relay_tests::unique_name("req"),
        team_id: team_id.into(),
        status: status as i32,
        incident_id: incident.into(),
        expected_revision: expected,
    }
}

fn location(
    team_id: &str,
    lat: f64,
    lon: f64,
    at: chrono::DateTime<chrono::Utc>,
) -> ReportLocationRequest {
    ReportLocationRequest {
        team_id: team_id.into(),
        location: point(lat, lon),
        recorded_at: Some(to_timestamp(at)),
        heading_degrees: None,
        speed_meters_per_second: Some(3.5),
        accuracy_meters: None,
    }
}

async fn redis_app() -> (RedisEnv, TestApp) {
    let env = RedisEnv::new().await;
    let app = TestApp::start(&env.setup, Arc::new(ManualClock::new(start_time()))).await;
    (env, app)
}

async fn revision(app: &mut TestApp, team_id: &str) -> i64 {
    app.client
        .get_team(GetTeamRequest {
            team_id: team_id.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .team
        .expect("team")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_each_field_and_writes_nothing() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();

    let mut request = upsert("team 7", "");
    request.request_id = String::new();
    request.display_name = String::new();
    request.capabilities = vec!["emt".into(), "Bad Tag".into()];
    request.expected_revision = -1;
    let status = app.client.upsert_team(request).await.expect_err("invalid");
    assert_eq!(
        bad_fields(&status),
        [
            "request_id",
            "team_id",
            "display_name",
            "region",
            "capabilities[1]",
            "expected_revision"
        ]
    );
    assert_eq!(reason(&status), "INVALID_FIELD");
    let mut request = upsert("t1", "north");
    request.capabilities = (0..33).map(|i| format!("c{i}")).collect();
    request.display_name = "x".repeat(101);
    let status = app.client.upsert_team(request).await.expect_err("invalid");
    assert_eq!(bad_fields(&status), ["display_name", "capabilities"]);
    let status = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect_err("nothing was written");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "TEAM_NOT_FOUND");

    app.client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create");
    let before = revision(&mut app, "t1").await;

    let status = app
        .client
        .get_team(GetTeamRequest {
            team_id: "x".repeat(65),
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["team_id"]);

    let status = app
        .client
        .list_teams(ListTeamsRequest {
            region: "no spaces".into(),
            status: 99,
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["region", "status", "page_size"]);
    let status = app
        .client
        .list_teams(ListTeamsRequest {
            page_token: "forged.token".into(),
            ..ListTeamsRequest::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");

    for (request, fields) in [
        (
            set_status("t1", TeamStatus::Unspecified, "", 0),
            vec!["status"],
        ),
        (
            SetTeamStatusRequest {
                status: 42,
                ..set_status("t1", TeamStatus::Available, "", 0)
            },
            vec!["status"],
        ),
        (
            set_status("t1", TeamStatus::EnRoute, "", 0),
            vec!["incident_id"],
        ),
        (
            SetTeamStatusRequest {
                request_id: String::new(),
                ..set_status("", TeamStatus::Available, "bad id!", -2)
            },
            vec!["request_id", "team_id", "incident_id", "expected_revision"],
        ),
    ] {
        let status = app
            .client
            .set_team_status(request)
            .await
            .expect_err("invalid");
        assert_eq!(bad_fields(&status), fields);
    }

    let mut bad = location("t1", f64::NAN, 181.0, now + chrono::Duration::seconds(120));
    bad.heading_degrees = Some(360.0);
    bad.speed_meters_per_second = Some(-1.0);
    bad.accuracy_meters = Some(f64::INFINITY);
    let status = app.client.report_location(bad).await.expect_err("invalid");
    assert_eq!(
        bad_fields(&status),
        [
            "location.latitude",
            "location.longitude",
            "recorded_at",
            "heading_degrees",
            "speed_meters_per_second",
            "accuracy_meters"
        ]
    );
    let mut missing = location("t1", 44.0, -123.0, now);
    missing.location = None;
    missing.recorded_at = None;
    let status = app
        .client
        .report_location(missing)
        .await
        .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["location", "recorded_at"]);
    // 59 seconds ahead is fine (device clocks drift).
    app.client
        .report_location(location(
            "t1",
            44.0,
            -123.0,
            now + chrono::Duration::seconds(59),
        ))
        .await
        .expect("within the skew");
    let after = revision(&mut app, "t1").await;
    assert_eq!(after, before + 1, "only the valid report changed the team");

    for (radius, limit, caps, location, fields) in [
        (0.0, 0, vec![], point(44.0, -123.0), vec!["radius_meters"]),
        (
            100_001.0,
            -1,
            vec![],
            point(44.0, -123.0),
            vec!["radius_meters", "limit"],
        ),
        (
            f64::NAN,
            0,
            vec!["EMT".to_owned()],
            None,
            vec!["location", "radius_meters", "required_capabilities[0]"],
        ),
    ] {
        let status = app
            .client
            .find_available_teams(FindAvailableTeamsRequest {
                region: "north".into(),
                location,
                radius_meters: radius,
                required_capabilities: caps,
                limit,
            })
            .await
            .expect_err("invalid");
        assert_eq!(bad_fields(&status), fields);
    }

    let status = app
        .client
        .watch_teams(WatchTeamsRequest {
            region: String::new(),
            after_event_id: "abc".into(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["region", "after_event_id"]);

    // Unknown teams.
    let status = app
        .client
        .set_team_status(set_status("nobody", TeamStatus::Available, "", 0))
        .await
        .expect_err("unknown");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "TEAM_NOT_FOUND")
    );
    let status = app
        .client
        .report_location(location("nobody", 44.0, -123.0, now))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_map_to_their_codes_and_reasons() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();
    let created = app
        .client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create")
        .into_inner();
    assert!(created.created);
    let team = created.team.expect("team");
    assert_eq!(
        team.capabilities,
        ["clinician", "emt"],
        "sorted, without duplicates"
    );
    assert_eq!(team.status, TeamStatus::OffDuty as i32);
    assert_eq!(team.revision, 1);

    let cases = [
        (
            set_status("t1", TeamStatus::OnScene, "inc-1", 0),
            Code::FailedPrecondition,
            "INVALID_STATUS_TRANSITION",
        ),
        (
            set_status("t1", TeamStatus::Available, "", 7),
            Code::Aborted,
            "REVISION_MISMATCH",
        ),
    ];
    for (request, code, why) in cases {
        let status = app
            .client
            .set_team_status(request)
            .await
            .expect_err("refused");
        assert_eq!((status.code(), reason(&status).as_str()), (code, why));
    }
    app.client
        .set_team_status(set_status("t1", TeamStatus::Available, "", 1))
        .await
        .expect("available");
    let status = app
        .client
        .set_team_status(set_status("t1", TeamStatus::Dispatched, "inc-1", 0))
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "DISPATCH_REQUIRES_ROUTING");
    let status = app
        .client
        .upsert_team(upsert("t1", "south"))
        .await
        .expect_err("on duty");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "REGION_CHANGE_NOT_ALLOWED")
    );
    let mut update_only = upsert("t2", "north");
    update_only.expected_revision = 1;
    let status = app
        .client
        .upsert_team(update_only)
        .await
        .expect_err("no such team");
    assert_eq!(status.code(), Code::Aborted);

    // Routing claims through the library; terminals then follow the incident.
    app.client
        .report_location(location("t1", 44.0, -123.0, now))
        .await
        .expect("position");
    let claim = app
        .dispatch
        .claim(
            "north",
            "t1",
            "inc-1",
            None,
            now,
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("claim");
    assert_eq!(claim.fencing_token, 1);
    let status = app
        .client
        .set_team_status(set_status("t1", TeamStatus::EnRoute, "inc-2", 0))
        .await
        .expect_err("other incident");
    assert_eq!(reason(&status), "INCIDENT_MISMATCH");
    let team = app
        .client
        .set_team_status(set_status("t1", TeamStatus::EnRoute, "inc-1", 0))
        .await
        .expect("en route")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(
        (team.status, team.incident_id.as_str()),
        (TeamStatus::EnRoute as i32, "inc-1")
    );
    let team = app
        .client
        .set_team_status(set_status("t1", TeamStatus::Available, "inc-1", 0))
        .await
        .expect("clear")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(
        (team.status, team.incident_id.as_str()),
        (TeamStatus::Available as i32, "")
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_request_id_change_nothing_further() {
    let (env, mut app) = redis_app().await;
    let request = upsert("t1", "north");
    let first = app
        .client
        .upsert_team(request.clone())
        .await
        .expect("first")
        .into_inner();
    let again = app
        .client
        .upsert_team(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        first, again,
        "the original response, created = true included"
    );
    let mut different = request.clone();
    different.display_name = "other".into();
    let status = app.client.upsert_team(different).await.expect_err("reused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::InvalidArgument, "REQUEST_ID_REUSED")
    );

    let change = set_status("t1", TeamStatus::Available, "", 0);
    let first = app
        .client
        .set_team_status(change.clone())
        .await
        .expect("first")
        .into_inner();
    app.client
        .set_team_status(set_status("t1", TeamStatus::OutOfService, "", 0))
        .await
        .expect("out of service");
    let again = app
        .client
        .set_team_status(change)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again);
    let team = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(
        team.status,
        TeamStatus::OutOfService as i32,
        "the retry did not run again"
    );
    app.stop().await;
    env.cleanup().await;
}

/// 32 tasks race SetTeamStatus with the same expected_revision: exactly one wins, the rest
/// are ABORTED, and afterwards the GEO set holds exactly the available, positioned teams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_status_changes_with_one_revision_have_one_winner() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();
    for (index, team) in ["t0", "t1", "t2"].iter().enumerate() {
        app.client
            .upsert_team(upsert(team, "north"))
            .await
            .expect("create");
        app.client
            .set_team_status(set_status(team, TeamStatus::Available, "", 0))
            .await
            .expect("available");
        app.client
            .report_location(location(team, 44.0 + index as f64 * 0.01, -123.0, now))
            .await
            .expect("position");
    }
    for team in ["t0", "t1"] {
        let expected = revision(&mut app, team).await;
        let mut tasks = Vec::new();
        for task in 0..32 {
            let mut client = app.client.clone();
            let target = if task % 2 == 0 {
                TeamStatus::OutOfService
            } else {
                TeamStatus::OffDuty
            };
            let team = team.to_owned();
            tasks.push(tokio::spawn(async move {
                client
                    .set_team_status(set_status(&team, target, "", expected))
                    .await
            }));
        }
        let mut wins = 0;
        let mut aborted = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(response) => {
                    wins += 1;
                    assert_eq!(
                        response.into_inner().team.expect("team").revision,
                        expected + 1
                    );
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Aborted, "{status:?}");
                    assert_eq!(reason(&status), "REVISION_MISMATCH");
                    aborted += 1;
                }
            }
        }
        assert_eq!((wins, aborted), (1, 31), "{team}");
        assert_eq!(revision(&mut app, team).await, expected + 1);
    }

    // The GEO set agrees with the hashes: read both raw from Redis.
    let keys = relay_fleet::Keyspace::new(env.setup.prefix.clone());
    let client = redis::Client::open(relay_tests::redis_url()).expect("url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut in_geo: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.available("north"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("zrange");
    in_geo.sort();
    let mut expected = Vec::new();
    for team in ["t0", "t1", "t2"] {
        let (status, lat): (String, String) = redis::cmd("HMGET")
            .arg(keys.team("north", team))
            .arg("status")
            .arg("lat")
            .query_async(&mut redis)
            .await
            .expect("hmget");
        if status == (Status::Available as i32).to_string() && !lat.is_empty() {
            expected.push(team.to_owned());
        }
    }
    assert_eq!(in_geo, expected);
    assert_eq!(in_geo, ["t2"]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_positions_out_of_order_never_move_a_team_back() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();
    for team in ["a", "b"] {
        app.client
            .upsert_team(upsert(team, "north"))
            .await
            .expect("create");
        app.client
            .set_team_status(set_status(team, TeamStatus::Available, "", 0))
            .await
            .expect("available");
    }
    let at = |s: i64| now - chrono::Duration::seconds(100 - s);
    let report = |team: &str, lat: f64, s: i64| StreamLocationsRequest {
        team_id: team.into(),
        location: point(lat, -123.0),
        recorded_at: Some(to_timestamp(at(s))),
        heading_degrees: Some(10.0),
        speed_meters_per_second: None,
        accuracy_meters: None,
    };
    let mut messages = vec![
        report("a", 44.30, 30),
        report("b", 45.10, 10),
        report("a", 44.10, 10),    // older than the stored one: stale
        report("ghost", 44.0, 10), // unknown team
        report("a", 44.30, 30),    // the same again: stale
        StreamLocationsRequest {
            location: point(95.0, -123.0),
            ..report("b", 0.0, 50)
        }, // invalid
        report("b", 45.20, 20),
        report("a", 44.20, 20), // stale
    ];
    // Many more, shuffled in time, for team b: only the newest may win.
    for s in (21..70).rev() {
        messages.push(report(
            "b",
            45.0 + f64::from(u8::try_from(s).expect("small")) / 100.0,
            s,
        ));
    }
    messages.push(report("b", 45.99, 70));
    let total = messages.len();
    let summary = app
        .client
        .stream_locations(tokio_stream::iter(messages))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        (
            summary.accepted_count,
            summary.stale_count,
            summary.rejected_count
        ),
        (5, 51, 2)
    );
    assert_eq!(
        usize::try_from(summary.accepted_count + summary.stale_count + summary.rejected_count)
            .expect("n"),
        total
    );
    let rejected: Vec<(i64, &str, &str, &str)> = summary
        .rejections
        .iter()
        .map(|r| {
            (
                r.index,
                r.team_id.as_str(),
                r.field.as_str(),
                r.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (3, "ghost", "team_id", "TEAM_NOT_FOUND"),
            (5, "b", "location.latitude", "INVALID_FIELD")
        ]
    );
    for (team, lat, s) in [("a", 44.30, 30), ("b", 45.99, 70)] {
        let team = app
            .client
            .get_team(GetTeamRequest {
                team_id: team.into(),
            })
            .await
            .expect("get")
            .into_inner()
            .team
            .expect("team");
        assert_eq!(team.location, point(lat, -123.0));
        assert_eq!(team.location_updated_at, Some(to_timestamp(at(s))));
    }
    // A unary report older than the stored one is stale, not an error.
    let stale = app
        .client
        .report_location(location("b", 1.0, 1.0, at(69)))
        .await
        .expect("stale")
        .into_inner();
    assert!(stale.stale && !stale.accepted);
    // FindAvailableTeams sees the newest positions.
    let found = app
        .client
        .find_available_teams(FindAvailableTeamsRequest {
            region: "north".into(),
            location: point(44.30, -123.0),
            radius_meters: 100_000.0,
            required_capabilities: vec!["emt".into()],
            limit: 0,
        })
        .await
        .expect("find")
        .into_inner();
    let ids: Vec<String> = found
        .matches
        .iter()
        .map(|m| m.team.as_ref().expect("team").team_id.clone())
        .collect();
    assert_eq!(ids, ["a"], "b is 187 km away");
    assert!(found.matches[0].distance_meters < 1.0);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_change_in_order_and_resume_without_gaps() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();
    let mut watch = app
        .client
        .watch_teams(WatchTeamsRequest {
            region: "north".into(),
            after_event_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    app.client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create");
    app.client
        .upsert_team(upsert("t9", "south"))
        .await
        .expect("other region");
    app.client
        .set_team_status(set_status("t1", TeamStatus::Available, "", 0))
        .await
        .expect("available");
    app.client
        .report_location(location("t1", 44.0, -123.0, now))
        .await
        .expect("position");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        seen.push(event);
    }
    let kinds: Vec<i32> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            TeamEventKind::Upserted as i32,
            TeamEventKind::StatusChanged as i32,
            TeamEventKind::LocationChanged as i32
        ]
    );
    let revisions: Vec<i64> = seen
        .iter()
        .map(|e| e.team.as_ref().expect("team").revision)
        .collect();
    assert_eq!(revisions, [1, 2, 3]);
    drop(watch);

    // A change while nobody watches, then a resume from the first event.
    app.client
        .set_team_status(set_status("t1", TeamStatus::OffDuty, "", 0))
        .await
        .expect("off duty");
    let mut resumed = app
        .client
        .watch_teams(WatchTeamsRequest {
            region: "north".into(),
            after_event_id: seen[0].event_id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut again = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        again.push(event);
    }
    assert_eq!(again[0].event_id, seen[1].event_id);
    assert_eq!(again[1].event_id, seen[2].event_id);
    assert_eq!(
        again[2].team.as_ref().expect("team").status,
        TeamStatus::OffDuty as i32
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_teams_pages_with_signed_tokens() {
    let (env, mut app) = redis_app().await;
    for index in 0..7 {
        app.client
            .upsert_team(upsert(
                &format!("t{index}"),
                if index % 2 == 0 { "north" } else { "south" },
            ))
            .await
            .expect("create");
    }
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let page = app
            .client
            .list_teams(ListTeamsRequest {
                region: "north".into(),
                status: 0,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.teams.into_iter().map(|t| t.team_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all, ["t0", "t2", "t4", "t6"]);
    let first = app
        .client
        .list_teams(ListTeamsRequest {
            page_size: 2,
            ..ListTeamsRequest::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.teams.len(), 2);
    let status = app
        .client
        .list_teams(ListTeamsRequest {
            region: "south".into(),
            page_token: first.next_page_token,
            ..ListTeamsRequest::default()
        })
        .await
        .expect_err("token of another query");
    assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");
    app.stop().await;
    env.cleanup().await;
}

/// The roster survives the loss of Redis' data and a restart. The shared Redis is used by
/// other tests at the same time, so instead of FLUSHALL this test deletes every key under its
/// own prefix, which is everything this service instance stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_survives_losing_redis_and_a_restart() {
    let env = RedisEnv::new().await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut app = TestApp::start(&env.setup, clock.clone()).await;
    let now = clock.now();
    let mut request = upsert("t1", "north");
    request.shift_ends_at = Some(to_timestamp(now + chrono::Duration::hours(8)));
    let created = app
        .client
        .upsert_team(request)
        .await
        .expect("create")
        .into_inner()
        .team
        .expect("team");
    app.client
        .upsert_team(upsert("t2", "south"))
        .await
        .expect("create");
    app.client
        .set_team_status(set_status("t1", TeamStatus::Available, "", 0))
        .await
        .expect("available");
    app.client
        .report_location(location("t1", 44.0, -123.0, now))
        .await
        .expect("position");
    let claim = app
        .dispatch
        .claim(
            "north",
            "t1",
            "inc-1",
            None,
            now,
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("claim");
    let before = revision(&mut app, "t1").await;
    app.stop().await;

    relay_tests::redis_delete_prefix(&env.setup.prefix).await;

    let mut app = TestApp::start(&env.setup, clock.clone()).await;
    let team = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("the roster came back")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(team.display_name, created.display_name);
    assert_eq!(team.region, "north");
    assert_eq!(team.capabilities, created.capabilities);
    assert_eq!(team.shift_ends_at, created.shift_ends_at);
    // Live state is gone until the team reports again; the revision never goes back.
    assert_eq!(team.status, TeamStatus::OffDuty as i32);
    assert_eq!(team.location, None);
    assert!(team.revision > before, "{} > {before}", team.revision);
    let listed = app
        .client
        .list_teams(ListTeamsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.teams.len(), 2);
    // A claim after the loss gets a larger fencing token than any before it.
    app.client
        .set_team_status(set_status("t1", TeamStatus::Available, "", 0))
        .await
        .expect("available");
    app.client
        .report_location(location("t1", 44.0, -123.0, now))
        .await
        .expect("position");
    let later = app
        .dispatch
        .claim(
            "north",
            "t1",
            "inc-2",
            None,
            now,
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("claim");
    assert!(later.fencing_token > claim.fencing_token);

    // A plain restart (Redis intact) keeps live state.
    app.stop().await;
    let mut app = TestApp::start(&env.setup, clock).await;
    let team = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(team.status, TeamStatus::Dispatched as i32);
    assert_eq!(team.incident_id, "inc-2");
    app.stop().await;
    env.cleanup().await;
}

/// Embedded mode (`relay dev`): live state in process, roster in SQLite; the roster survives a
/// restart of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_keeps_the_roster_in_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        database_url: format!("sqlite://{}", dir.path().join("availability.db").display()),
        prefix: String::from("unused"),
        backend: "memory",
        request_timeout_ms: None,
    };
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut app = TestApp::start(&setup, clock.clone()).await;
    app.client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create");
    app.client
        .set_team_status(set_status("t1", TeamStatus::Available, "", 0))
        .await
        .expect("available");
    app.stop().await;
    let mut app = TestApp::start(&setup, clock).await;
    let team = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("roster restored")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(team.display_name, "Team t1");
    assert_eq!(team.status, TeamStatus::OffDuty as i32);
    app.stop().await;
}

/// A feed keeps its stream open longer than the server's request timeout: the server answers
/// early with the counts so far (the client then resends from their sum), and at shutdown a
/// watch ends with UNAVAILABLE, reason SHUTTING_DOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_are_answered_early_and_watches_end_at_shutdown() {
    let mut env = RedisEnv::new().await;
    env.setup.request_timeout_ms = Some(400);
    let app = TestApp::start(&env.setup, Arc::new(ManualClock::new(start_time()))).await;
    let mut client = app.client.clone();
    let now = app.clock.now();
    client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create");

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(StreamLocationsRequest {
            team_id: "t1".into(),
            location: point(44.0, -123.0),
            recorded_at: Some(to_timestamp(now)),
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
        })
        .await
        .expect("send");
    // The sender stays open: the stream never half-closes on its own.
    let summary = client
        .stream_locations(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("answered early, not timed out")
        .into_inner();
    assert_eq!(
        (
            summary.accepted_count,
            summary.stale_count,
            summary.rejected_count
        ),
        (1, 0, 0)
    );
    drop(sender);

    let mut watch = client
        .watch_teams(WatchTeamsRequest {
            region: "north".into(),
            after_event_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    app.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("ends in time")
        .expect("a final message");
    let status = ended.expect_err("an error ends the watch");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SHUTTING_DOWN")
    );
    env.cleanup().await;
}

/// A stream that sends bytes that are not a message ends with INVALID_ARGUMENT; the valid
/// reports before it were applied, and nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_garbage_is_refused_after_applying_what_came_before() {
    let (env, mut app) = redis_app().await;
    let now = app.clock.now();
    app.client
        .upsert_team(upsert("t1", "north"))
        .await
        .expect("create");
    let valid = |lat: f64, seconds: i64| {
        prost::Message::encode_to_vec(&StreamLocationsRequest {
            team_id: "t1".into(),
            location: point(lat, -123.0),
            recorded_at: Some(to_timestamp(now - chrono::Duration::seconds(seconds))),
            heading_degrees: None,
            speed_meters_per_second: None,
            accuracy_meters: None,
        })
    };
    // Field 1 (team_id) claims 255 bytes and carries 2: not decodable.
    let garbage = vec![0x0a, 0xff, 0x01, b'x', b'y'];
    let messages = vec![valid(44.1, 20), garbage, valid(44.2, 10)];
    let channel = tonic::transport::Channel::from_shared(app.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let status = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            http::uri::PathAndQuery::from_static(
                "/relay.availability.v1.AvailabilityService/StreamLocations",
            ),
            // Bytes as they are: something that is not protobuf.
            relay_tests::raw::RawCodec,
        )
        .await
        .expect_err("garbage ends the stream");
    assert_eq!(bad_fields(&status), ["message"]);
    let team = app
        .client
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(
        team.location,
        point(44.1, -123.0),
        "the report before the garbage only"
    );
    app.stop().await;
    env.cleanup().await;
}
