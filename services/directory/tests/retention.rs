//! Referral notes retention: notes (which may hold personal details) are erased once the
//! referral is older than `personal_data_retention_days`; the referral, its status and its
//! times stay. Run on a manual clock, on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Harness, Kind, active_service, backend, start_with, upsert_service};
use relay_directory::retention::Retention;
use relay_proto::directory::{
    CreateReferralRequest, ListReferralsRequest, Referral, ReferralStatus, ServiceLocation,
    UpdateReferralRequest,
};
use relay_runtime::clock::ManualClock;

async fn referrals(h: &mut Harness) -> Vec<Referral> {
    h.client
        .list_referrals(ListReferralsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .referrals
}

async fn refer(h: &mut Harness, request_id: &str, incident_id: &str, notes: &str) -> Referral {
    h.client
        .create_referral(CreateReferralRequest {
            request_id: request_id.into(),
            incident_id: incident_id.into(),
            service_id: "svc".into(),
            location_id: "loc".into(),
            notes: notes.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap()
}

/// Counts the idempotency records of referral RPCs (whose bytes carry notes).
async fn referral_requests(url: &str) -> i64 {
    let backend = backend(url).await;
    with_store!(backend, |store| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM requests WHERE rpc IN ('CreateReferral', 'UpdateReferral')"
    )
    .fetch_one(store.pool())
    .await
    .unwrap())
}

async fn notes_are_erased_after_the_retention(kind: Kind) {
    let start = chrono::Utc::now().timestamp_micros();
    let clock = ManualClock::at(start);
    let mut h = start_with(
        kind,
        &[("directory.personal_data_retention_days", 30.into())],
        Arc::new(clock.clone()),
    )
    .await;
    let station = ServiceLocation {
        location_id: "loc".into(),
        name: "Station".into(),
        time_zone: "America/Los_Angeles".into(),
        ..ServiceLocation::default()
    };
    upsert_service(
        &mut h,
        active_service("svc", "Night shelter", vec![station]),
    )
    .await;
    let old = refer(
        &mut h,
        "r-old",
        "inc-1",
        "Caller Jane, 541-555-0100, needs a bed",
    )
    .await;
    clock.advance_days(1);
    let connected = h
        .client
        .update_referral(UpdateReferralRequest {
            request_id: "u-old".into(),
            referral_id: old.referral_id.clone(),
            status: ReferralStatus::Connected as i32,
            notes: Some("Jane checked in at 9pm".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    clock.advance_days(19);
    let recent = refer(&mut h, "r-recent", "inc-2", "Caller John, room 4").await;

    let url = h.url.clone();
    let backend = backend(&url).await;
    let job = |days| {
        let clock = Arc::new(clock.clone());
        let backend = backend.clone();
        async move {
            with_store!(backend, |store| Retention::new(store, clock, days)
                .run_once()
                .await
                .unwrap())
        }
    };
    // Day 20: nothing is past 30 days; records younger than a day are kept.
    let erased = job(30).await;
    assert_eq!((erased.referrals, erased.requests), (0, 2));
    assert!(referrals(&mut h).await.iter().all(|r| !r.notes.is_empty()));
    assert_eq!(
        referral_requests(&url).await,
        1,
        "the recent CreateReferral record is kept"
    );

    // Day 31: the first referral's notes go; its status, incident and times stay.
    clock.advance_days(11);
    let erased = job(30).await;
    assert_eq!((erased.referrals, erased.requests), (1, 1));
    let after = referrals(&mut h).await;
    let first = after
        .iter()
        .find(|r| r.referral_id == old.referral_id)
        .unwrap();
    assert_eq!(first.notes, "");
    assert_eq!(first.status, ReferralStatus::Connected as i32);
    assert_eq!(first.incident_id, "inc-1");
    assert_eq!(first.create_time, old.create_time);
    assert_eq!(
        first.update_time, connected.update_time,
        "the outcome's time stays"
    );
    let second = after
        .iter()
        .find(|r| r.referral_id == recent.referral_id)
        .unwrap();
    assert_eq!(second.notes, "Caller John, room 4");
    assert_eq!(referral_requests(&url).await, 0);
    // Running again erases nothing more.
    assert_eq!(job(30).await.referrals, 0);
}

/// The setting is read, and a retention under a day is refused at start with its key.
async fn the_setting_is_checked(kind: Kind) {
    let (url, _db, _dir) = common::database(kind).await;
    let config = relay_runtime::Config::builder("directory")
        .set("listen", "127.0.0.1:0")
        .set("database_url", url)
        .set("directory.personal_data_retention_days", 0)
        .build()
        .unwrap();
    let error = relay_directory::Application::build(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("RELAY_DIRECTORY__PERSONAL_DATA_RETENTION_DAYS"),
        "{error}"
    );
}

both!(notes_are_erased_after_the_retention, the_setting_is_checked);
