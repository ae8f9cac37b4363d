//! Black-box tests of IntakeService over gRPC, against real PostgreSQL and fake routing and
//! availability servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::HashMap, sync::Arc};

use relay_proto::{
    common::TeamStatus,
    intake::{
        CallerContact, CancelIncidentRequest, CloseIncidentRequest, CloseOutcome, Disposition,
        GetIncidentRequest, IncidentEventKind, IncidentState, ListIncidentsRequest, RiskFlag,
        RoutingState, UpdateIncidentRequest, watch_incident_events_response::Kind,
    },
};
use relay_runtime::clock::{Clock, OffsetClock};
use relay_tests::TestDatabase;
use support::{
    FakeAvailability, FakeRouting, REGION, Script, TestIntake, eventually, reason, submission,
    violated_fields, watch, with_flags,
};
use tonic::Code;

fn routing_state(incident: &relay_proto::intake::Incident) -> i32 {
    incident.routing.as_ref().map_or(0, |r| r.state)
}

async fn kinds_of(intake: &TestIntake, incident_id: &str) -> Vec<i32> {
    // Committed events reach the stream when the sequencer moves them; do it now.
    intake.intake.sequence_now().await.unwrap();
    intake
        .intake
        .store()
        .events_after("county-cad", 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.incident_id == incident_id)
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_welfare_check_is_triaged_routed_and_assigned_and_resubmission_changes_nothing() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;

    let first = app
        .client
        .submit_incident(submission("C-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let triage = first.triage.clone().unwrap();
    assert_eq!(triage.disposition, Disposition::CommunityResponse as i32);
    assert_eq!(triage.rule_ids, vec!["welfare-check"]);
    assert_eq!(triage.protocol_version, "2026.1");
    assert_eq!(
        first.routing.as_ref().unwrap().state,
        RoutingState::Assigned as i32
    );
    assert!(!first.routing.as_ref().unwrap().team_id.is_empty());

    let mut again = submission("C-1", "EDP");
    again.priority = 1;
    let second = app
        .client
        .submit_incident(again)
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let (a, b) = (first.incident.unwrap(), second.incident.unwrap());
    assert_eq!(a.incident_id, b.incident_id);
    assert_eq!(b.incident_type, "WELFARE", "differences are ignored");
    assert_eq!(
        routing.assign_calls().len(),
        1,
        "nothing is dispatched twice"
    );

    let got = app
        .client
        .get_incident(GetIncidentRequest {
            cad_system: "county-cad".into(),
            cad_incident_id: "C-1".into(),
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(got.incident_id, a.incident_id);
    let kinds = kinds_of(&app, &a.incident_id).await;
    assert_eq!(
        kinds,
        vec![
            IncidentEventKind::Received as i32,
            IncidentEventKind::Triaged as i32,
            IncidentEventKind::Assigned as i32
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_identical_submissions_create_one_incident_and_one_routing_request() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            client
                .submit_incident(submission("SAME-1", "INTOX"))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for call in calls {
        let response = call.await.unwrap();
        created += usize::from(response.created);
        ids.push(response.incident.unwrap().incident_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one incident");
    assert_eq!(created, 1, "exactly one call created it");
    assert!(
        eventually(5, || async {
            app.intake.store().pending_outbox().await.unwrap() == 0
        })
        .await
    );
    assert_eq!(routing.assign_calls().len(), 1, "one routing request");
    let listed = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.incidents.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn with_routing_stopped_a_hundred_incidents_are_accepted_and_all_reach_an_outcome_once() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::new().await; // not started
    let app = TestIntake::start(
        db.url(),
        &routing,
        None,
        &[("submit_wait_ms", 20.into())],
        None,
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..100 {
        let response = app
            .client
            .clone()
            .submit_incident(submission(&format!("OUT-{n}"), "WELFARE"))
            .await
            .unwrap()
            .into_inner();
        assert!(response.created);
        assert_eq!(
            response.routing.unwrap().state,
            RoutingState::Pending as i32
        );
        ids.push(response.incident.unwrap().incident_id);
    }
    assert_eq!(app.intake.store().pending_outbox().await.unwrap(), 100);
    assert!(routing.assign_calls().is_empty());
    routing.start().await;
    let store = app.intake.store().clone();
    assert!(
        eventually(60, || async { store.pending_outbox().await.unwrap() == 0 }).await,
        "every routing request is delivered"
    );
    app.intake.sequence_now().await.unwrap();
    let events = store.events_after("county-cad", 0, 100_000).await.unwrap();
    let mut assigned: HashMap<String, usize> = HashMap::new();
    for event in &events {
        if event.kind == IncidentEventKind::Assigned as i32 {
            *assigned.entry(event.incident_id.clone()).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            assigned.get(id),
            Some(&1),
            "incident {id} has exactly one outcome"
        );
        let incident = store.get_incident(id).await.unwrap().unwrap().incident;
        assert_eq!(routing_state(&incident), RoutingState::Assigned as i32);
    }
    // Each incident was routed with one request_id; the fake answered each request once.
    let mut per_incident: HashMap<String, Vec<String>> = HashMap::new();
    for call in routing.assign_calls() {
        per_incident
            .entry(call.incident_id)
            .or_default()
            .push(call.request_id);
    }
    assert_eq!(per_incident.len(), 100);
    for request_ids in per_incident.values() {
        assert!(request_ids.iter().all(|r| r == &request_ids[0]));
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_each_field_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let mut bad = submission("", "");
    bad.cad_system = "bad system!".into();
    bad.priority = 9;
    bad.location = Some(relay_proto::common::GeoPoint {
        latitude: 91.0,
        longitude: f64::NAN,
    });
    bad.narrative = "x".repeat(8193);
    bad.risk_flags = vec![0, RiskFlag::Weapons as i32, RiskFlag::Weapons as i32];
    bad.received_at = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    });
    bad.required_capabilities = vec!["Not A Tag".into()];
    let status = app.client.submit_incident(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "INVALID_FIELD");
    let fields = violated_fields(&status);
    for field in [
        "cad_system",
        "cad_incident_id",
        "incident_type",
        "priority",
        "location.latitude",
        "location.longitude",
        "narrative",
        "risk_flags[0]",
        "risk_flags[2]",
        "received_at",
        "required_capabilities[0]",
    ] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    let mut unknown_region = submission("R-1", "WELFARE");
    unknown_region.region = "elsewhere".into();
    let status = app
        .client
        .submit_incident(unknown_region)
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "REGION_UNKNOWN");
    assert_eq!(violated_fields(&status), vec!["region"]);
    let missing = relay_proto::intake::SubmitIncidentRequest::default();
    let status = app.client.submit_incident(missing).await.unwrap_err();
    assert!(violated_fields(&status).contains(&"location".to_owned()));
    assert!(violated_fields(&status).contains(&"received_at".to_owned()));
    let listed = app
        .client
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.incidents.is_empty(), "nothing was written");
    assert!(routing.assign_calls().is_empty());

    // An unknown incident type is accepted and goes to review, not routed.
    let review = app
        .client
        .submit_incident(submission("U-1", "LOCAL-XYZ"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        review.triage.unwrap().disposition,
        Disposition::NeedsReview as i32
    );
    assert_eq!(
        review.routing.unwrap().state,
        RoutingState::NotRouted as i32
    );
    assert!(routing.assign_calls().is_empty());

    // Update, cancel, close and get validate too.
    let status = app
        .client
        .update_incident(UpdateIncidentRequest {
            priority: Some(0),
            notes: Some(String::new()),
            override_disposition: Some(0),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap_err();
    let fields = violated_fields(&status);
    for field in [
        "request_id",
        "incident_id",
        "priority",
        "notes",
        "override_disposition",
    ] {
        assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
    }
    let status = app
        .client
        .close_incident(CloseIncidentRequest {
            request_id: "r".into(),
            incident_id: "i".into(),
            outcome: 0,
            referral_ids: vec!["bad id".into()],
            notes: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["outcome", "referral_ids[0]"]);
    let status = app
        .client
        .get_incident(GetIncidentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .client
        .get_incident(GetIncidentRequest {
            incident_id: "inc-missing".into(),
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INCIDENT_NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn a_weapon_reported_after_assignment_raises_a_safety_alert_at_once() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let submitted = app
        .client
        .submit_incident(submission("S-1", "EDP"))
        .await
        .unwrap()
        .into_inner();
    let incident = submitted.incident.unwrap();
    assert_eq!(routing_state(&incident), RoutingState::Assigned as i32);
    let team = incident.routing.as_ref().unwrap().team_id.clone();
    let mut stream = watch(&mut app.client, "county-cad", 0).await;

    let update = UpdateIncidentRequest {
        request_id: "upd-1".into(),
        incident_id: incident.incident_id.clone(),
        expected_revision: incident.revision,
        add_risk_flags: vec![RiskFlag::Weapons as i32],
        notes: Some("caller says he has a knife".into()),
        ..UpdateIncidentRequest::default()
    };
    let response = app
        .client
        .update_incident(update.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(response.safety_alert_raised);
    let triage = response.triage.unwrap();
    assert_eq!(triage.disposition, Disposition::TraditionalResponse as i32);
    assert!(triage.rule_ids.contains(&"flag-weapons".to_owned()));
    let after = response.incident.unwrap();
    assert_eq!(after.revision, incident.revision + 1);
    assert_eq!(
        routing_state(&after),
        RoutingState::Assigned as i32,
        "Relay does not withdraw the team"
    );
    // The durable timeline keeps it (the event expires with the history).
    let timeline = after.timeline.clone().unwrap_or_default();
    assert_eq!(timeline.safety_alerts, 1);
    assert!(
        timeline
            .first_safety_alert
            .as_ref()
            .is_some_and(|t| t.record_time.is_some())
    );
    assert!(
        incident
            .timeline
            .as_ref()
            .is_none_or(|t| t.safety_alerts == 0 && t.first_safety_alert.is_none()),
        "no alert before the update"
    );

    // The alert is on the stream, naming the team and the flag.
    let mut alert = None;
    while alert.is_none() {
        let message = stream.message().await.unwrap().unwrap();
        if let Some(Kind::Event(event)) = message.kind
            && event.kind == IncidentEventKind::SafetyAlert as i32
        {
            alert = Some(event);
        }
    }
    let alert = alert.unwrap();
    assert_eq!(alert.team_id, team);
    assert_eq!(alert.risk_flags, vec![RiskFlag::Weapons as i32]);
    assert!(!alert.detail.contains("knife"));

    // The same request again returns the same answer; a different one with the same id is refused.
    let again = app
        .client
        .update_incident(update.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.incident.unwrap().revision, after.revision);
    let mut reused = update.clone();
    reused.priority = Some(1);
    let status = app.client.update_incident(reused).await.unwrap_err();
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    // A stale revision is refused.
    let stale = UpdateIncidentRequest {
        request_id: "upd-2".into(),
        incident_id: incident.incident_id.clone(),
        expected_revision: incident.revision,
        priority: Some(1),
        ..UpdateIncidentRequest::default()
    };
    let status = app.client.update_incident(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(reason(&status), "REVISION_MISMATCH");
    app.stop().await;
}

#[tokio::test]
async fn a_dispatcher_may_resolve_a_review_but_never_against_the_flags() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let review = app
        .client
        .submit_incident(submission("O-1", "LOCALCODE"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let response = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "ovr-1".into(),
            incident_id: review.incident_id.clone(),
            override_disposition: Some(Disposition::CommunityResponse as i32),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let triage = response.triage.unwrap();
    assert_eq!(triage.disposition, Disposition::CommunityResponse as i32);
    assert_eq!(triage.rule_ids, vec!["dispatcher_override"]);
    assert!(
        eventually(5, || async {
            routing
                .assign_calls()
                .iter()
                .any(|c| c.incident_id == review.incident_id)
        })
        .await,
        "now routable, so routed"
    );

    let armed = app
        .client
        .submit_incident(with_flags(
            submission("O-2", "LOCALCODE"),
            &[RiskFlag::Weapons],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        armed.triage.unwrap().disposition,
        Disposition::TraditionalResponse as i32
    );
    let status = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "ovr-2".into(),
            incident_id: armed.incident.unwrap().incident_id,
            override_disposition: Some(Disposition::CommunityResponse as i32),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "OVERRIDE_NOT_ALLOWED");
    app.stop().await;
}

#[tokio::test]
async fn cancel_releases_the_team_and_close_records_the_outcome() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let one = app
        .client
        .submit_incident(submission("X-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let cancelled = app
        .client
        .cancel_incident(CancelIncidentRequest {
            request_id: "cancel-1".into(),
            incident_id: one.incident_id.clone(),
            reason: "duplicate call".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(cancelled.state, IncidentState::Cancelled as i32);
    assert_eq!(routing_state(&cancelled), RoutingState::Cancelled as i32);
    assert!(
        eventually(5, || async {
            routing
                .cancel_calls()
                .iter()
                .any(|c| c.incident_id == one.incident_id)
        })
        .await
    );
    let status = app
        .client
        .cancel_incident(CancelIncidentRequest {
            request_id: "cancel-2".into(),
            incident_id: one.incident_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INCIDENT_NOT_OPEN");

    let two = app
        .client
        .submit_incident(submission("X-2", "INTOX"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let assignment_id = two.routing.as_ref().unwrap().assignment_id.clone();
    let close = CloseIncidentRequest {
        request_id: "close-2".into(),
        incident_id: two.incident_id.clone(),
        outcome: CloseOutcome::Referred as i32,
        referral_ids: vec!["ref-1".into(), "ref-2".into()],
        notes: "connected to shelter".into(),
    };
    let closed = app
        .client
        .close_incident(close.clone())
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(closed.state, IncidentState::Closed as i32);
    assert_eq!(closed.close_outcome, CloseOutcome::Referred as i32);
    assert_eq!(closed.referral_ids, vec!["ref-1", "ref-2"]);
    assert_eq!(routing_state(&closed), RoutingState::Released as i32);
    let replay = app
        .client
        .close_incident(close)
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(replay.revision, closed.revision, "a retry changes nothing");
    assert!(
        eventually(5, || async {
            routing
                .release_calls()
                .iter()
                .any(|c| c.assignment_id == assignment_id)
        })
        .await
    );
    let kinds = kinds_of(&app, &two.incident_id).await;
    assert!(kinds.ends_with(&[
        IncidentEventKind::Released as i32,
        IncidentEventKind::Closed as i32
    ]));
    app.stop().await;
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let base = chrono::Utc::now().timestamp() - 1000;
    for n in 0..7 {
        let mut request = submission(
            &format!("L-{n}"),
            if n % 2 == 0 { "WELFARE" } else { "ROBBERY" },
        );
        request.received_at = Some(prost_types::Timestamp {
            seconds: base + n,
            nanos: 0,
        });
        app.client.submit_incident(request).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_incidents(ListIncidentsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..ListIncidentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.incidents.into_iter().map(|i| i.cad_incident_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["L-6", "L-5", "L-4", "L-3", "L-2", "L-1", "L-0"]);
    let traditional = app
        .client
        .list_incidents(ListIncidentsRequest {
            disposition: Disposition::TraditionalResponse as i32,
            region: REGION.into(),
            ..ListIncidentsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(traditional.incidents.len(), 3);
    // A token is bound to its filters.
    let first = app
        .client
        .list_incidents(ListIncidentsRequest {
            page_size: 1,
            ..ListIncidentsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = app
        .client
        .list_incidents(ListIncidentsRequest {
            page_size: 1,
            state: IncidentState::Open as i32,
            page_token: first.next_page_token,
            ..ListIncidentsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");
    app.stop().await;
}

#[tokio::test]
async fn a_watcher_disconnected_mid_stream_resumes_with_no_gap_and_no_duplicate() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    for n in 0..4 {
        app.client
            .submit_incident(submission(&format!("W-{n}"), "WELFARE"))
            .await
            .unwrap();
    }
    // 3 events each (received, triaged, assigned): 12 so far.
    let mut stream = watch(&mut app.client, "county-cad", 0).await;
    let first = stream.message().await.unwrap().unwrap();
    let Some(Kind::Heartbeat(heartbeat)) = first.kind else {
        panic!("the first message is a heartbeat")
    };
    assert_eq!(heartbeat.last_sequence, 12);
    let mut sequences = Vec::new();
    while sequences.len() < 5 {
        if let Some(Kind::Event(event)) = stream.message().await.unwrap().unwrap().kind {
            sequences.push(event.sequence);
        }
    }
    drop(stream); // the client goes away mid-stream
    // More happens while it is away.
    for n in 4..6 {
        app.client
            .submit_incident(submission(&format!("W-{n}"), "WELFARE"))
            .await
            .unwrap();
    }
    let last = *sequences.last().unwrap();
    let mut stream = watch(&mut app.client, "county-cad", last).await;
    while sequences.len() < 18 {
        if let Some(Kind::Event(event)) = stream.message().await.unwrap().unwrap().kind {
            sequences.push(event.sequence);
        }
    }
    assert_eq!(
        sequences,
        (1..=18).collect::<Vec<i64>>(),
        "gapless, no duplicate"
    );
    // Live events keep coming on the resumed stream.
    app.client
        .submit_incident(submission("W-live", "ROBBERY"))
        .await
        .unwrap();
    let mut live = Vec::new();
    while live.len() < 2 {
        if let Some(Kind::Event(event)) = stream.message().await.unwrap().unwrap().kind {
            live.push(event.sequence);
        }
    }
    assert_eq!(live, vec![19, 20]);
    let status = app
        .client
        .watch_incident_events(relay_proto::intake::WatchIncidentEventsRequest {
            cad_system: "county-cad".into(),
            after_sequence: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(reason(&status), "SEQUENCE_AHEAD");
    app.stop().await;
}

#[tokio::test]
async fn quiet_streams_get_heartbeats() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let mut app = TestIntake::start(
        db.url(),
        &routing,
        None,
        &[("heartbeat_ms", 50.into())],
        None,
    )
    .await;
    let mut stream = watch(&mut app.client, "quiet-cad", 0).await;
    for _ in 0..3 {
        let message = stream.message().await.unwrap().unwrap();
        assert!(matches!(message.kind, Some(Kind::Heartbeat(h)) if h.last_sequence == 0));
    }
    app.stop().await;
}

#[tokio::test]
async fn team_statuses_and_queue_assignments_reach_the_timeline_once_even_across_restarts() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    routing.script(Script::Queue);
    let availability = FakeAvailability::started().await;
    let app = TestIntake::start(db.url(), &routing, Some(&availability), &[], None).await;
    // Let the upstream consumers connect before anything happens.
    let store = app.intake.store().clone();
    assert!(
        eventually(10, || async {
            routing.watchers() >= 1 && availability.watchers() >= 1
        })
        .await
    );
    let queued = app
        .client
        .clone()
        .submit_incident(submission("Q-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(routing_state(&queued), RoutingState::Queued as i32);
    // The consumer has seen routing's QUEUED event once it records a cursor.
    assert!(
        eventually(10, || async {
            store
                .stream_cursor("routing", REGION)
                .await
                .unwrap()
                .is_some()
        })
        .await
    );
    // Routing's queue assigns a team later.
    routing.push_event(relay_proto::routing::AssignmentEvent {
        kind: relay_proto::routing::AssignmentEventKind::Assigned as i32,
        incident_id: queued.incident_id.clone(),
        cad_system: "county-cad".into(),
        assignment: Some(relay_proto::routing::Assignment {
            assignment_id: "asg-q".into(),
            incident_id: queued.incident_id.clone(),
            team_id: "team-q".into(),
            region: REGION.into(),
            state: 1,
            source: 2,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = queued.incident_id.clone();
    assert!(
        eventually(10, || async {
            store
                .get_incident(&id)
                .await
                .unwrap()
                .unwrap()
                .incident
                .routing
                .unwrap()
                .state
                == RoutingState::Assigned as i32
        })
        .await
    );
    availability.push_status(REGION, "team-q", TeamStatus::EnRoute, &queued.incident_id);
    availability.push_status(REGION, "team-q", TeamStatus::OnScene, &queued.incident_id);
    assert!(
        eventually(10, || async {
            kinds_of(&app, &id)
                .await
                .contains(&(IncidentEventKind::OnScene as i32))
        })
        .await
    );
    // Restart intake: it resumes after the last stored event ids, so nothing repeats.
    app.stop().await;
    let app = TestIntake::start(db.url(), &routing, Some(&availability), &[], None).await;
    assert!(
        eventually(10, || async {
            routing.watchers() >= 2 && availability.watchers() >= 2
        })
        .await
    );
    availability.push_status(REGION, "team-q", TeamStatus::Available, "");
    // Routing, which follows availability too, ends the assignment as the team cleared.
    assert!(routing.team_cleared("team-q"));
    assert!(
        eventually(10, || async {
            kinds_of(&app, &id)
                .await
                .contains(&(IncidentEventKind::Cleared as i32))
        })
        .await
    );
    let kinds = kinds_of(&app, &id).await;
    assert_eq!(
        kinds,
        vec![
            IncidentEventKind::Received as i32,
            IncidentEventKind::Triaged as i32,
            IncidentEventKind::Queued as i32,
            IncidentEventKind::Assigned as i32,
            IncidentEventKind::EnRoute as i32,
            IncidentEventKind::OnScene as i32,
            IncidentEventKind::Cleared as i32,
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_retention_job_erases_caller_data_and_narrative_and_keeps_the_rest() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let clock = OffsetClock::new();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let mut app = TestIntake::start(
        db.url(),
        &routing,
        None,
        &[("personal_data_retention_days", 30.into())],
        Some(shared),
    )
    .await;
    let mut request = submission("P-1", "WELFARE");
    request.narrative = "man sleeping in doorway, seems confused".into();
    request.caller = Some(CallerContact {
        name: "Jane Caller".into(),
        phone: "+15415550100".into(),
        callback_number: None,
    });
    let id = app
        .client
        .submit_incident(request)
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap()
        .incident_id;
    let (purged, _) = app.intake.run_retention_once().await.unwrap();
    assert_eq!(purged, 0, "nothing is old enough yet");
    clock.advance_seconds(31 * 86_400);
    // The background job also runs once at start, and may run after the clock moved: the
    // incident is purged by exactly one of the two runs, so count both (this raced before).
    let (purged, _) = app.intake.run_retention_once().await.unwrap();
    let by_background = app
        .intake
        .store()
        .get_incident(&id)
        .await
        .unwrap()
        .unwrap()
        .incident
        .narrative
        .is_empty()
        && purged == 0;
    assert_eq!(purged + u64::from(by_background), 1);
    let incident = app
        .client
        .get_incident(GetIncidentRequest {
            incident_id: id,
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert!(incident.narrative.is_empty());
    assert!(incident.caller.is_none());
    assert_eq!(
        incident.incident_type, "WELFARE",
        "the rest is kept for reporting"
    );
    assert_eq!(
        incident.triage.unwrap().disposition,
        Disposition::CommunityResponse as i32
    );
    app.stop().await;
}

#[tokio::test]
async fn updates_requeue_a_queued_incident_and_stop_routing_one_that_becomes_unsafe() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    routing.script(Script::Queue);
    let mut app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let queued = app
        .client
        .submit_incident(submission("RQ-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(routing_state(&queued), RoutingState::Queued as i32);
    let moved = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "rq-move".into(),
            incident_id: queued.incident_id.clone(),
            location: Some(relay_proto::common::GeoPoint {
                latitude: 44.06,
                longitude: -123.1,
            }),
            priority: Some(2),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!moved.safety_alert_raised, "no team is assigned");
    let id = queued.incident_id.clone();
    assert!(
        eventually(5, || async {
            routing
                .assign_calls()
                .iter()
                .any(|c| c.incident_id == id && c.priority == 2)
        })
        .await,
        "re-queued with the new values"
    );
    let calls: Vec<_> = routing
        .assign_calls()
        .into_iter()
        .filter(|c| c.incident_id == id)
        .collect();
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].request_id, calls[1].request_id);

    let unsafe_now = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "rq-weapon".into(),
            incident_id: id.clone(),
            add_risk_flags: vec![RiskFlag::Violence as i32],
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unsafe_now.safety_alert_raised);
    assert_eq!(
        unsafe_now.triage.unwrap().disposition,
        Disposition::TraditionalResponse as i32
    );
    assert_eq!(
        routing_state(&unsafe_now.incident.unwrap()),
        RoutingState::NotRouted as i32
    );
    assert!(
        eventually(5, || async {
            routing.cancel_calls().iter().any(|c| c.incident_id == id)
        })
        .await,
        "routing is told to stop"
    );
    // A note alone changes the revision but not the decision.
    let before = app
        .client
        .get_incident(GetIncidentRequest {
            incident_id: id.clone(),
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let noted = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "rq-note".into(),
            incident_id: id.clone(),
            notes: Some("callback made".into()),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(noted.revision, before.revision + 1);
    assert_eq!(noted.triage, before.triage);
    assert_eq!(noted.notes.len(), 1);
    // An update that changes nothing makes no new revision.
    let same = app
        .client
        .update_incident(UpdateIncidentRequest {
            request_id: "rq-same".into(),
            incident_id: id.clone(),
            priority: Some(2),
            ..UpdateIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(same.revision, noted.revision);
    app.stop().await;
}

#[tokio::test]
async fn a_watch_cannot_resume_before_the_retained_history() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let clock = OffsetClock::new();
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let mut app = TestIntake::start(db.url(), &routing, None, &[], Some(shared)).await;
    app.client
        .submit_incident(submission("H-1", "WELFARE"))
        .await
        .unwrap();
    clock.advance_seconds(8 * 86_400);
    app.intake.run_retention_once().await.unwrap();
    // The CAD's clock is eight days on too.
    let mut later = submission("H-2", "ROBBERY");
    later.received_at = Some(prost_types::Timestamp {
        seconds: clock.now_micros() / 1_000_000,
        nanos: 0,
    });
    app.client.submit_incident(later).await.unwrap();
    // Events 1..3 are gone; 4 and 5 (H-2 received and triaged) remain.
    let status = app
        .client
        .watch_incident_events(relay_proto::intake::WatchIncidentEventsRequest {
            cad_system: "county-cad".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "EVENT_HISTORY_EXPIRED");
    let mut stream = watch(&mut app.client, "county-cad", 3).await;
    let Some(Kind::Heartbeat(heartbeat)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("heartbeat first")
    };
    assert_eq!(heartbeat.last_sequence, 5);
    let Some(Kind::Event(event)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("event")
    };
    assert_eq!(event.sequence, 4);
    app.stop().await;
}

#[tokio::test]
async fn routing_events_are_applied_once_even_when_repeated_or_missed_during_an_outage() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    routing.script(Script::Queue);
    let availability = FakeAvailability::started().await;
    let mut app = TestIntake::start(db.url(), &routing, Some(&availability), &[], None).await;
    assert!(eventually(10, || async { routing.watchers() >= 1 }).await);
    let id = app
        .client
        .submit_incident(submission("RE-1", "WELFARE"))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap()
        .incident_id;
    let store = app.intake.store().clone();
    assert!(
        eventually(10, || async {
            store
                .stream_cursor("routing", REGION)
                .await
                .unwrap()
                .is_some()
        })
        .await
    );
    // Routing goes down; while it is down its queue assigns the incident.
    routing.stop().await;
    let assigned = relay_proto::routing::AssignmentEvent {
        kind: relay_proto::routing::AssignmentEventKind::Assigned as i32,
        incident_id: id.clone(),
        cad_system: "county-cad".into(),
        assignment: Some(relay_proto::routing::Assignment {
            assignment_id: "asg-outage".into(),
            incident_id: id.clone(),
            team_id: "team-outage".into(),
            state: 1,
            source: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    routing.push_event(assigned.clone());
    routing.start().await;
    assert!(
        eventually(15, || async {
            kinds_of(&app, &id)
                .await
                .contains(&(IncidentEventKind::Assigned as i32))
        })
        .await,
        "the consumer resumed after its last event id"
    );
    // The same event delivered again (a reconnect may repeat the last one) changes nothing.
    let mut repeated = assigned.clone();
    repeated.event_id = store
        .stream_cursor("routing", REGION)
        .await
        .unwrap()
        .unwrap();
    app.intake
        .apply_assignment_event(REGION, &repeated)
        .await
        .unwrap();
    let kinds = kinds_of(&app, &id).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == IncidentEventKind::Assigned as i32)
            .count(),
        1
    );
    let incident = app
        .client
        .get_incident(GetIncidentRequest {
            incident_id: id,
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(incident.routing.unwrap().team_id, "team-outage");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_protocol_file_stops_the_start_with_its_line() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "version = \"x\"\nunknown_type_reason = \"a\"\nunlisted_type_reason = \"b\"\n[[type_rules]]\nid = \"r\"\ntypes = [\"NOPE\"]\ndisposition = \"community\"\nreason = \"c\"\n").unwrap();
    let config = relay_runtime::Config::builder("intake")
        .set("insecure_dev", true)
        .set("listen", "127.0.0.1:0")
        .set("database_url", db.url())
        .set("intake.protocol_path", path.display().to_string())
        .build()
        .unwrap();
    let error = relay_intake::Application::build(config).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("line 6"), "{message}");
    assert!(message.contains("NOPE"), "{message}");
}
