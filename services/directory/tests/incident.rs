//! A referral names an incident: with `check_incidents` on, CreateReferral asks intake's
//! GetIncident first. NOT_FOUND refuses the referral (FAILED_PRECONDITION,
//! INCIDENT_NOT_FOUND); intake down or too slow records it with incident_checked false.
//! Against an in-process fake intake, on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    Harness, Kind, active_service, intake::FakeIntake, start, start_with, upsert_service,
};
use relay_proto::directory::{CreateReferralRequest, ListReferralsRequest, Referral};
use relay_runtime::clock::SystemClock;
use tonic::Code;
use tonic_types::StatusExt;

fn referral(request_id: &str, incident_id: &str) -> CreateReferralRequest {
    CreateReferralRequest {
        request_id: request_id.into(),
        incident_id: incident_id.into(),
        service_id: "svc".into(),
        location_id: String::new(),
        notes: String::new(),
    }
}

async fn create(h: &mut Harness, request_id: &str, incident_id: &str) -> Referral {
    h.client
        .create_referral(referral(request_id, incident_id))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap()
}

async fn listed(h: &mut Harness, incident_id: &str) -> Vec<Referral> {
    h.client
        .list_referrals(ListReferralsRequest {
            incident_id: incident_id.into(),
            ..ListReferralsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .referrals
}

async fn incidents_are_checked_with_intake(kind: Kind) {
    let intake = FakeIntake::started(&["inc-1", "inc-2"]).await;
    let endpoint = intake.endpoint();
    let mut h = start_with(
        kind,
        &[
            ("directory.check_incidents", true.into()),
            ("directory.intake_deadline_ms", 300.into()),
            ("intake_endpoint", endpoint.as_str().into()),
        ],
        Arc::new(SystemClock),
    )
    .await;
    upsert_service(&mut h, active_service("svc", "Crisis line", vec![])).await;

    // Intake knows the incident: checked.
    let first = create(&mut h, "r1", "inc-1").await;
    assert!(first.incident_checked);
    assert_eq!(intake.calls(), 1);
    // A retry replays the recorded answer without asking intake again.
    assert_eq!(create(&mut h, "r1", "inc-1").await, first);
    assert_eq!(intake.calls(), 1);
    assert!(listed(&mut h, "inc-1").await[0].incident_checked);

    // Intake says NOT_FOUND: refused, nothing recorded.
    let status = h
        .client
        .create_referral(referral("r2", "inc-404"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "INCIDENT_NOT_FOUND");
    assert_eq!(info.domain, "relay.directory.v1");
    assert!(listed(&mut h, "inc-404").await.is_empty());

    // Intake slower than the deadline: recorded, unchecked, without waiting for intake.
    intake.answer_after(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let slow = create(&mut h, "r3", "inc-2").await;
    assert!(!slow.incident_checked);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    intake.answer_after(Duration::ZERO);

    // Intake down: recorded, unchecked, and listed as such.
    intake.stop().await;
    let down = create(&mut h, "r4", "inc-3").await;
    assert!(!down.incident_checked);
    let stored = listed(&mut h, "inc-3").await;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].incident_checked);

    // Intake back: checked again (and an unknown incident refused again).
    intake.start().await;
    let back = h
        .client
        .create_referral(referral("r5", "inc-405"))
        .await
        .unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition, "{back:?}");
}

/// Without `check_incidents` nothing asks intake, and referrals say they are unchecked.
async fn without_checking_referrals_are_unchecked(kind: Kind) {
    let mut h = start(kind).await;
    upsert_service(&mut h, active_service("svc", "Crisis line", vec![])).await;
    let referral = create(&mut h, "r1", "inc-anything").await;
    assert!(!referral.incident_checked);
}

both!(
    incidents_are_checked_with_intake,
    without_checking_referrals_are_unchecked
);
