//! The record a program reports from (issue 12): why a call waited or went unserved is kept,
//! program hours answer an eligible call at once, a NEEDS_REVIEW call and an unconfirmed
//! recommendation escalate after their limits with a reason the CAD sees, and ListIncidents
//! filters on routing state and unserved reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use chrono::{Datelike, Utc};
use relay_proto::{
    common::UnservedReason,
    intake::{GetIncidentRequest, Incident, IncidentEventKind, ListIncidentsRequest, RoutingState},
    routing::{Assignment, AssignmentEvent, AssignmentEventKind, AssignmentState},
};
use relay_runtime::clock::{Clock, OffsetClock};
use relay_tests::TestDatabase;
use support::{FakeRouting, REGION, Script, TestIntake, eventually, submission, violated_fields};
use tonic::Code;

async fn incident(app: &TestIntake, id: &str) -> Incident {
    app.client
        .clone()
        .get_incident(GetIncidentRequest {
            incident_id: id.into(),
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap()
}

async fn submit(app: &TestIntake, cad_id: &str, incident_type: &str) -> Incident {
    app.submit(submission(cad_id, incident_type)).await
}

fn unserved(incident: &Incident) -> i32 {
    incident.timeline.as_ref().unwrap().first_unserved_reason
}

#[tokio::test]
async fn an_eligible_call_outside_program_hours_is_escalated_at_once_and_never_routed() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    // Open only on the day after tomorrow (UTC), so now is outside.
    let later = (Utc::now().weekday().num_days_from_monday() + 2) % 7;
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][later as usize];
    let programs = serde_json::json!({
        REGION: { "time_zone": "UTC", "hours": [format!("{day} 00:00-01:00")] }
    });
    let app = TestIntake::start(db.url(), &routing, None, &[("programs", programs)], None).await;
    let call = submit(&app, "H-1", "WELFARE").await;
    let outcome = call.routing.clone().unwrap();
    assert_eq!(outcome.state, RoutingState::Escalated as i32);
    assert_eq!(
        outcome.unserved_reason,
        UnservedReason::OutsideProgramHours as i32
    );
    assert_eq!(unserved(&call), UnservedReason::OutsideProgramHours as i32);
    assert!(call.timeline.unwrap().escalated.is_some());
    // A traditional call is not the program's to serve: no unserved reason.
    let police = submit(&app, "H-2", "ROBBERY").await;
    assert_eq!(unserved(&police), 0);
    // Two outbox passes: the second began after both calls were committed.
    let passes = app.intake.passes().outbox();
    assert!(eventually(10, || async { app.intake.passes().outbox() >= passes + 2 }).await);
    assert!(
        routing.assign_calls().is_empty(),
        "nothing is sent to routing outside hours"
    );
    app.stop().await;
}

#[tokio::test]
async fn program_hours_that_cannot_be_read_stop_the_start_naming_the_region() {
    let db = TestDatabase::new().await;
    let config = relay_runtime::Config::builder("intake")
.set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", db.url())
        .set("database.migrate_on_start", true)
        .set(
            "intake.programs",
            serde_json::json!({ "metro": { "time_zone": "Mars/Olympus", "hours": ["daily 07:00-19:00"] } }),
        )
        .build()
        .unwrap();
    let Err(error) = relay_intake::Application::build(config).await else {
        panic!("a bad time zone stops the start");
    };
    let error = error.to_string();
    assert!(error.contains("intake.programs.metro"), "{error}");
    assert!(error.contains("IANA"), "{error}");
}

#[tokio::test]
async fn a_review_nobody_makes_escalates_with_its_reason_after_the_regions_wait() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let clock = OffsetClock::new();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let programs = serde_json::json!({ REGION: { "review_wait_seconds": 120 } });
    let app = TestIntake::start(
        db.url(),
        &routing,
        None,
        &[("programs", programs), ("deadline_interval_ms", 50.into())],
        Some(shared),
    )
    .await;
    // An unknown code needs a dispatcher's review.
    let call = submit(&app, "R-1", "XYZZY").await;
    assert_eq!(
        call.routing.clone().unwrap().state,
        RoutingState::NotRouted as i32
    );
    clock.advance_seconds(60);
    // Two deadline passes: the second began after the clock moved.
    let passes = app.intake.passes().deadlines();
    assert!(
        eventually(10, || async {
            app.intake.passes().deadlines() >= passes + 2
        })
        .await
    );
    assert_eq!(
        incident(&app, &call.incident_id)
            .await
            .routing
            .unwrap()
            .state,
        RoutingState::NotRouted as i32,
        "not before the region's wait"
    );
    clock.advance_seconds(61);
    let id = call.incident_id.clone();
    assert!(
        eventually(10, || async {
            incident(&app, &id).await.routing.unwrap().state == RoutingState::Escalated as i32
        })
        .await
    );
    let escalated = incident(&app, &id).await;
    assert_eq!(unserved(&escalated), UnservedReason::ReviewTimeout as i32);
    assert!(
        escalated
            .routing
            .unwrap()
            .rationale
            .contains("no dispatcher reviewed the call within 120 s")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_recommendation_nobody_confirms_expires_and_routing_is_told() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    routing.script(Script::Recommend);
    let clock = OffsetClock::new();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let app = TestIntake::start(
        db.url(),
        &routing,
        None,
        &[
            ("recommendation_expiry_seconds", 90.into()),
            ("deadline_interval_ms", 50.into()),
        ],
        Some(shared),
    )
    .await;
    let mut request = submission("REC-1", "WELFARE");
    request.routing_mode = relay_proto::common::AssignmentMode::Recommend.into();
    let call = app.submit(request).await;
    assert_eq!(
        call.routing.clone().unwrap().state,
        RoutingState::Recommended as i32
    );
    assert!(call.timeline.clone().unwrap().recommended.is_some());
    clock.advance_seconds(91);
    let id = call.incident_id.clone();
    assert!(
        eventually(10, || async {
            incident(&app, &id).await.routing.unwrap().state == RoutingState::Escalated as i32
        })
        .await
    );
    assert_eq!(
        unserved(&incident(&app, &id).await),
        UnservedReason::RecommendationExpired as i32
    );
    assert!(
        eventually(10, || async {
            routing.cancel_calls().iter().any(|c| c.incident_id == id)
        })
        .await,
        "routing drops the recommendation"
    );
    app.stop().await;
}

#[tokio::test]
async fn why_a_call_waited_stays_on_it_after_a_team_is_assigned_and_lists_filter_by_it() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    routing.script(Script::Queue);
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let waited = submit(&app, "W-1", "WELFARE").await;
    let still = submit(&app, "W-2", "WELFARE").await;
    let police = submit(&app, "W-3", "ROBBERY").await;
    assert_eq!(
        waited.routing.clone().unwrap().state,
        RoutingState::Queued as i32
    );
    // The queue assigns the first call later.
    app.intake
        .apply_assignment_event(
            REGION,
            &AssignmentEvent {
                event_id: "w-assigned".into(),
                kind: AssignmentEventKind::Assigned as i32,
                incident_id: waited.incident_id.clone(),
                cad_system: "county-cad".into(),
                assignment: Some(Assignment {
                    assignment_id: "asg-w".into(),
                    incident_id: waited.incident_id.clone(),
                    team_id: "team-w".into(),
                    state: AssignmentState::Active as i32,
                    assigned_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                    ..Assignment::default()
                }),
                ..AssignmentEvent::default()
            },
        )
        .await
        .unwrap();
    let assigned = incident(&app, &waited.incident_id).await;
    assert_eq!(
        assigned.routing.clone().unwrap().state,
        RoutingState::Assigned as i32
    );
    let timeline = assigned.timeline.unwrap();
    assert_eq!(
        timeline.first_unserved_reason,
        UnservedReason::AllBusy as i32,
        "the reason it waited is kept"
    );
    assert!(timeline.queued.is_some() && timeline.assigned.is_some());
    assert!(timeline.unserved_wait.is_some());
    let list = |routing_state: RoutingState, unserved_reason: UnservedReason| {
        let mut client = app.client.clone();
        async move {
            let mut ids: Vec<String> = client
                .list_incidents(ListIncidentsRequest {
                    cad_system: "county-cad".into(),
                    routing_state: routing_state.into(),
                    unserved_reason: unserved_reason.into(),
                    ..ListIncidentsRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .incidents
                .into_iter()
                .map(|i| i.incident_id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![waited.incident_id.clone(), still.incident_id.clone()];
    both.sort();
    assert_eq!(
        list(RoutingState::Unspecified, UnservedReason::AllBusy).await,
        both
    );
    assert_eq!(
        list(RoutingState::Assigned, UnservedReason::Unspecified).await,
        vec![waited.incident_id.clone()]
    );
    assert_eq!(
        list(RoutingState::Queued, UnservedReason::AllBusy).await,
        vec![still.incident_id.clone()]
    );
    assert_eq!(
        list(RoutingState::NotRouted, UnservedReason::Unspecified).await,
        vec![police.incident_id.clone()]
    );
    assert!(
        list(RoutingState::Queued, UnservedReason::NoTeamInRange)
            .await
            .is_empty()
    );
    // Bad values name their field.
    let status = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest {
            routing_state: 99,
            unserved_reason: -4,
            ..ListIncidentsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec!["routing_state", "unserved_reason"]
    );
    // The RECEIVED event carries the CAD's received_at, and every event its region.
    let events = app
        .intake
        .store()
        .events_after("county-cad", 0, 100)
        .await
        .unwrap();
    let received = events
        .iter()
        .find(|e| e.kind == IncidentEventKind::Received as i32)
        .unwrap();
    assert_eq!(received.source_time, waited.received_at);
    assert!(events.iter().all(|e| e.region == REGION));
    app.stop().await;
}

#[tokio::test]
async fn timestamps_outside_their_range_are_refused_naming_the_field_and_write_nothing() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let now = Utc::now().timestamp();
    for (what, seconds, nanos) in [
        ("before year 1, as a CAD sent it", -62_135_596_801, 0),
        ("after year 9999", 253_402_300_800, 0),
        ("nanos out of range", now, 1_000_000_000),
        ("eight days old", now - 8 * 86_400, 0),
    ] {
        let mut request = submission(&format!("T-{seconds}"), "WELFARE");
        request.received_at = Some(prost_types::Timestamp { seconds, nanos });
        let status = app
            .client
            .clone()
            .submit_incident(request)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(violated_fields(&status), vec!["received_at"], "{what}");
    }
    let status = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest {
            received_after: Some(prost_types::Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            }),
            ..ListIncidentsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["received_after"]);
    let listed = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.incidents.is_empty(), "nothing was written");
    app.stop().await;
}
