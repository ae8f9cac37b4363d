//! Program reports: the figures of a hand-built set of incidents, written through the store on
//! both backends, match the figures worked out by hand in the comments below (every metric of
//! docs/program-metrics.md, those that must be zero, and a period with no calls); and the
//! gRPC read validates its input and never carries caller details.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use relay_intake::{
    report::{self, Report, ReportRequest},
    store::{IncidentStore, PostgresStore, SqliteStore, StoredIncident, timestamp_of},
    synthetic::{record, source, wait},
};
use relay_proto::{
    common::UnservedReason,
    intake::{
        CallerContact, CloseOutcome, Disposition, Incident, IncidentTimeline, TriageDecision,
    },
    reports::{GetProgramReportRequest, report_service_client::ReportServiceClient},
};
use relay_runtime::storage;
use relay_tests::TestDatabase;
use secrecy::SecretString;
use support::{FakeRouting, TestIntake, submission};

/// 2026-03-02T10:00:00Z, a Monday.
const T0: i64 = 1_772_445_600;
const S: i64 = 1_000_000;

fn at(seconds: i64) -> i64 {
    (T0 + seconds) * S
}

struct Call {
    id: &'static str,
    region: &'static str,
    received: i64,
    disposition: Disposition,
    apco: &'static str,
    priority: i32,
    timeline: IncidentTimeline,
    outcome: CloseOutcome,
    referrals: usize,
}

fn stored(call: Call) -> StoredIncident {
    let mut timeline = call.timeline;
    timeline.received = source(call.received);
    StoredIncident {
        incident: Incident {
            incident_id: call.id.into(),
            cad_system: "cad".into(),
            cad_incident_id: call.id.into(),
            incident_type: call.apco.into(),
            apco_incident_type: call.apco.into(),
            region: call.region.into(),
            priority: call.priority,
            // Caller details, which no report may show.
            narrative: "NARRATIVE-SECRET".into(),
            caller: Some(CallerContact {
                name: "CALLERNAME-SECRET".into(),
                phone: "+15415550199".into(),
                callback_number: None,
            }),
            received_at: Some(timestamp_of(call.received)),
            state: 1,
            triage: Some(TriageDecision {
                disposition: call.disposition as i32,
                ..TriageDecision::default()
            }),
            close_outcome: call.outcome as i32,
            referral_ids: (0..call.referrals).map(|i| format!("ref-{i}")).collect(),
            timeline: Some(timeline),
            revision: 1,
            ..Incident::default()
        },
        override_disposition: 0,
        team_status: 0,
    }
}

/// The hand-built set. Region "east" unless said otherwise; received times are the CAD's.
fn calls() -> Vec<Call> {
    vec![
        // A: community, WELFARE, p3, Mon 10:00. Assigned at +60 s (routing's time), dispatched
        // +90, en route +120, on scene +600, cleared +1800 (the team's times); triaged +3 s
        // (Relay's record time only). Two safety alerts after assignment (the first at +700).
        // Closed REFERRED with 2 referrals.
        Call {
            id: "A",
            region: "east",
            received: at(0),
            disposition: Disposition::CommunityResponse,
            apco: "WELFARE",
            priority: 3,
            timeline: IncidentTimeline {
                triaged: record(at(3)),
                assigned: source(at(60)),
                dispatched: source(at(90)),
                en_route: source(at(120)),
                on_scene: source(at(600)),
                cleared: source(at(1800)),
                closed: record(at(1900)),
                first_safety_alert: record(at(700)),
                safety_alerts: 2,
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::Referred,
            referrals: 2,
        },
        // B: co-response, EDP, p2, Mon 11:00. Queued ALL_BUSY, waited 300 s, assigned +302,
        // on scene +1202, cleared +2402. Closed RESOLVED_ON_SCENE, no referral.
        Call {
            id: "B",
            region: "east",
            received: at(3600),
            disposition: Disposition::CoResponse,
            apco: "EDP",
            priority: 2,
            timeline: IncidentTimeline {
                triaged: record(at(3601)),
                queued: record(at(3602)),
                assigned: source(at(3902)),
                on_scene: source(at(4802)),
                cleared: source(at(6002)),
                closed: record(at(6100)),
                first_unserved_reason: UnservedReason::AllBusy as i32,
                unserved_wait: wait(300),
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::ResolvedOnScene,
            referrals: 0,
        },
        // C: community, WELFARE, p3, Mon 22:00. Outside program hours, escalated after 900 s.
        // Closed HANDED_TO_POLICE.
        Call {
            id: "C",
            region: "east",
            received: at(12 * 3600),
            disposition: Disposition::CommunityResponse,
            apco: "WELFARE",
            priority: 3,
            timeline: IncidentTimeline {
                triaged: record(at(12 * 3600 + 2)),
                queued: record(at(12 * 3600 + 2)),
                escalated: record(at(12 * 3600 + 902)),
                closed: record(at(12 * 3600 + 2000)),
                first_unserved_reason: UnservedReason::OutsideProgramHours as i32,
                unserved_wait: wait(900),
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::HandedToPolice,
            referrals: 0,
        },
        // D: community, INTOX, p4, Tue 08:00. Cancelled before routing answered.
        Call {
            id: "D",
            region: "east",
            received: at(22 * 3600),
            disposition: Disposition::CommunityResponse,
            apco: "INTOX",
            priority: 4,
            timeline: IncidentTimeline {
                triaged: record(at(22 * 3600 + 1)),
                cancelled: record(at(22 * 3600 + 60)),
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::Unspecified,
            referrals: 0,
        },
        // E: traditional, ASSAULT, p1, Tue 09:00. Open.
        Call {
            id: "E",
            region: "east",
            received: at(23 * 3600),
            disposition: Disposition::TraditionalResponse,
            apco: "ASSAULT",
            priority: 1,
            timeline: IncidentTimeline {
                triaged: record(at(23 * 3600 + 1)),
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::Unspecified,
            referrals: 0,
        },
        // F: needs review (unknown code), p3, Tue 23:30; nobody reviewed it in time.
        Call {
            id: "F",
            region: "east",
            received: at(37 * 3600 + 1800),
            disposition: Disposition::NeedsReview,
            apco: "",
            priority: 3,
            timeline: IncidentTimeline {
                triaged: record(at(37 * 3600 + 1801)),
                escalated: record(at(37 * 3600 + 2400)),
                first_unserved_reason: UnservedReason::ReviewTimeout as i32,
                ..IncidentTimeline::default()
            },
            outcome: CloseOutcome::Unspecified,
            referrals: 0,
        },
        // Outside the report: another region, and the two edges of the period.
        unrouted("W", "west", at(100)),
        unrouted("before", "east", at(-10 * 3600) - S),
        unrouted("at-end", "east", at(38 * 3600)),
    ]
}

/// A community call with nothing but its reception.
fn unrouted(id: &'static str, region: &'static str, received: i64) -> Call {
    Call {
        id,
        region,
        received,
        disposition: Disposition::CommunityResponse,
        apco: "WELFARE",
        priority: 3,
        timeline: IncidentTimeline::default(),
        outcome: CloseOutcome::Unspecified,
        referrals: 0,
    }
}

fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

fn request(zone: Tz) -> ReportRequest {
    ReportRequest {
        from: time("2026-03-02T00:00:00Z"),
        to: time("2026-03-04T00:00:00Z"),
        region: "east".into(),
        time_zone: zone,
    }
}

/// Asserts one figure: its value and how many incidents it is computed from.
#[track_caller]
fn check(report: &Report, metric: &str, breakdown: &str, key: &str, value: f64, n: i64) {
    let figure = report
        .figure(metric, breakdown, key)
        .unwrap_or_else(|| panic!("no figure {metric} {breakdown} {key}"));
    assert!(
        (figure.value - value).abs() < 1e-9 && figure.sample_size == n,
        "{metric} {breakdown}={key}: got {} (n={}), expected {value} (n={n})",
        figure.value,
        figure.sample_size
    );
}

async fn load(store: &dyn IncidentStore) {
    for call in calls() {
        store
            .create_incident(&stored(call), vec![], vec![], 1)
            .await
            .unwrap();
    }
}

async fn the_figures_match_the_hand_computed_ones(store: Arc<dyn IncidentStore>) {
    load(store.as_ref()).await;
    let now = time("2026-03-05T00:00:00Z");
    let report = report::compute(store.as_ref(), request(Tz::UTC), now)
        .await
        .unwrap();
    let r = &report;

    // Volume: A-F are in; W (west), "before" and "at-end" (to is exclusive) are not.
    check(r, "calls_received", "", "", 6.0, 6);
    check(
        r,
        "calls_triaged",
        "disposition",
        "COMMUNITY_RESPONSE",
        3.0,
        3,
    );
    check(r, "calls_triaged", "disposition", "CO_RESPONSE", 1.0, 1);
    check(
        r,
        "calls_triaged",
        "disposition",
        "TRADITIONAL_RESPONSE",
        1.0,
        1,
    );
    check(r, "calls_triaged", "disposition", "NEEDS_REVIEW", 1.0, 1);
    check(r, "eligible_calls", "", "", 4.0, 4);
    check(r, "calls_received", "incident_type", "WELFARE", 2.0, 2);
    check(r, "calls_received", "incident_type", "EDP", 1.0, 1);
    check(r, "calls_received", "incident_type", "INTOX", 1.0, 1);
    check(r, "calls_received", "incident_type", "ASSAULT", 1.0, 1);
    check(r, "calls_received", "incident_type", "UNKNOWN", 1.0, 1);

    // Reach: A and B served of A, B, C, D.
    check(r, "eligible_calls_served", "", "", 2.0, 2);
    check(r, "eligible_calls_served_share", "", "", 0.5, 4);
    check(r, "eligible_calls_unserved", "", "", 2.0, 2);
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "OUTSIDE_PROGRAM_HOURS",
        1.0,
        1,
    );
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "CANCELLED_BEFORE_ASSIGNMENT",
        1.0,
        1,
    );
    // B waited ALL_BUSY but was served: not unserved.
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "ALL_BUSY",
        0.0,
        0,
    );
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "NO_TEAMS_IN_REGION",
        0.0,
        0,
    );
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "ROUTING_REFUSED",
        0.0,
        0,
    );
    check(
        r,
        "eligible_calls_unserved",
        "unserved_reason",
        "RECOMMENDATION_EXPIRED",
        0.0,
        0,
    );
    check(r, "eligible_calls_escalated", "", "", 1.0, 1);
    check(r, "review_timeouts", "", "", 1.0, 1);
    check(r, "unserved_wait_p50", "", "", 900.0, 1);
    check(r, "unserved_wait_p90", "", "", 900.0, 1);
    check(
        r,
        "unserved_wait_p50",
        "unserved_reason",
        "OUTSIDE_PROGRAM_HOURS",
        900.0,
        1,
    );
    check(r, "eligible_calls_served_after_waiting", "", "", 1.0, 1);
    check(r, "served_after_waiting_wait_p50", "", "", 300.0, 1);

    // Speed. received→triaged: A 3, B 1, C 2, D 1, E 1, F 1 → sorted 1 1 1 1 2 3; nearest
    // rank: p50 = 3rd = 1, p90 = ceil(5.4) = 6th = 3.
    check(r, "received_to_triaged_p50", "", "", 1.0, 6);
    check(r, "received_to_triaged_p90", "", "", 3.0, 6);
    check(r, "received_to_assigned_p50", "", "", 60.0, 2);
    check(r, "received_to_assigned_p90", "", "", 302.0, 2);
    check(r, "received_to_dispatched_p50", "", "", 90.0, 1);
    check(r, "received_to_en_route_p90", "", "", 120.0, 1);
    check(r, "received_to_on_scene_p50", "", "", 600.0, 2);
    check(r, "received_to_on_scene_p90", "", "", 1202.0, 2);
    check(r, "on_scene_to_cleared_p50", "", "", 1200.0, 2);
    // Priority 3: A 3, C 2, F 1 → p50 2nd = 2, p90 3rd = 3.
    check(r, "received_to_triaged_p50", "priority", "3", 2.0, 3);
    check(r, "received_to_triaged_p90", "priority", "3", 3.0, 3);
    check(r, "received_to_assigned_p50", "priority", "2", 302.0, 1);
    check(r, "received_to_on_scene_p50", "priority", "1", 0.0, 0);
    let basis = |metric: &str| r.headline(metric).unwrap().time_basis.clone();
    assert_eq!(basis("received_to_triaged_p50"), "mixed");
    assert_eq!(basis("received_to_on_scene_p50"), "source");

    // Outcomes.
    check(r, "calls_closed", "", "", 3.0, 3);
    check(r, "calls_closed", "close_outcome", "REFERRED", 1.0, 1);
    check(
        r,
        "calls_closed",
        "close_outcome",
        "RESOLVED_ON_SCENE",
        1.0,
        1,
    );
    check(
        r,
        "calls_closed",
        "close_outcome",
        "HANDED_TO_POLICE",
        1.0,
        1,
    );
    check(
        r,
        "calls_closed",
        "close_outcome",
        "TRANSPORTED_TO_SERVICE",
        0.0,
        0,
    );
    check(r, "co_response_share", "", "", 0.25, 4);
    // Safety alerts after assignment: A had two, B (served) none.
    check(r, "calls_with_safety_alert", "", "", 1.0, 1);
    check(r, "safety_alerts_raised", "", "", 2.0, 1);
    check(r, "served_calls_with_safety_alert_share", "", "", 0.5, 2);

    // Connections: A (2 referrals) and B (none) are the served, closed calls.
    check(r, "referrals_per_served_call", "", "", 1.0, 2);
    check(r, "served_calls_with_referral_share", "", "", 0.5, 2);

    // When (UTC): Mon 10, 11, 22; Tue 08, 09, 23.
    for (hour, n) in [
        ("10", 1),
        ("11", 1),
        ("22", 1),
        ("08", 1),
        ("09", 1),
        ("23", 1),
        ("00", 0),
    ] {
        check(
            r,
            "calls_received",
            "hour_of_day",
            hour,
            f64::from(n),
            i64::from(n),
        );
    }
    check(r, "calls_received", "day_of_week", "mon", 3.0, 3);
    check(r, "calls_received", "day_of_week", "tue", 3.0, 3);
    check(r, "calls_received", "day_of_week", "sun", 0.0, 0);
    check(
        r,
        "eligible_calls_unserved",
        "weekday_hour",
        "mon 22",
        1.0,
        1,
    );
    check(
        r,
        "eligible_calls_unserved",
        "weekday_hour",
        "tue 08",
        1.0,
        1,
    );
    check(
        r,
        "eligible_calls_unserved",
        "weekday_hour",
        "mon 10",
        0.0,
        0,
    );

    // Trend, by day: Mon A B C (3 eligible, 2 served), Tue D E F (1 eligible, 0 served).
    assert_eq!(report.bucket, "day");
    let trend: Vec<(String, u64, u64, u64)> = report
        .buckets
        .iter()
        .map(|(start, b)| (start.to_rfc3339(), b.received, b.eligible, b.served))
        .collect();
    assert_eq!(
        trend,
        vec![
            ("2026-03-02T00:00:00+00:00".to_owned(), 3, 3, 2),
            ("2026-03-03T00:00:00+00:00".to_owned(), 3, 1, 0),
        ]
    );

    // The same calls in Los Angeles time (UTC-8 before 8 March 2026): Mon 02, 03, 14 and
    // Tue 00, 01, 15; the days start at 08:00Z, so the period touches three of them.
    let report = report::compute(
        store.as_ref(),
        request("America/Los_Angeles".parse().unwrap()),
        now,
    )
    .await
    .unwrap();
    let r = &report;
    for (hour, n) in [
        ("02", 1),
        ("03", 1),
        ("14", 1),
        ("00", 1),
        ("01", 1),
        ("15", 1),
        ("10", 0),
    ] {
        check(
            r,
            "calls_received",
            "hour_of_day",
            hour,
            f64::from(n),
            i64::from(n),
        );
    }
    check(
        r,
        "eligible_calls_unserved",
        "weekday_hour",
        "mon 14",
        1.0,
        1,
    );
    check(
        r,
        "eligible_calls_unserved",
        "weekday_hour",
        "tue 00",
        1.0,
        1,
    );
    let trend: Vec<(String, u64)> = report
        .buckets
        .iter()
        .map(|(start, b)| (start.to_rfc3339(), b.received))
        .collect();
    assert_eq!(
        trend,
        vec![
            ("2026-03-01T08:00:00+00:00".to_owned(), 0),
            ("2026-03-02T08:00:00+00:00".to_owned(), 3),
            ("2026-03-03T08:00:00+00:00".to_owned(), 3),
        ]
    );

    // Every region: W joins (community, not served, no reason: not yet routed).
    let mut all = request(Tz::UTC);
    all.region = String::new();
    let report = report::compute(store.as_ref(), all, now).await.unwrap();
    check(&report, "calls_received", "", "", 7.0, 7);
    check(
        &report,
        "eligible_calls_unserved",
        "unserved_reason",
        "NOT_YET_ROUTED",
        1.0,
        1,
    );

    // A period with no calls: every count zero, every share and percentile without data.
    let empty = ReportRequest {
        from: time("2026-05-01T00:00:00Z"),
        to: time("2026-06-15T00:00:00Z"),
        region: "east".into(),
        time_zone: Tz::UTC,
    };
    let report = report::compute(store.as_ref(), empty, now).await.unwrap();
    assert_eq!(report.bucket, "week");
    // Weeks start on Monday: 27 April (holding 1 May) to 8 June.
    assert_eq!(report.buckets.len(), 7);
    assert_eq!(
        report.buckets[0].0.to_rfc3339(),
        "2026-04-27T00:00:00+00:00"
    );
    for figure in &report.figures {
        assert!(
            figure.value == 0.0 && figure.sample_size == 0,
            "{figure:?} should be zero in an empty period"
        );
    }
    check(&report, "eligible_calls_served_share", "", "", 0.0, 0);
    check(&report, "calls_with_safety_alert", "", "", 0.0, 0);
    check(&report, "safety_alerts_raised", "", "", 0.0, 0);
    check(
        &report,
        "served_calls_with_safety_alert_share",
        "",
        "",
        0.0,
        0,
    );
}

async fn pg_store(db: &TestDatabase) -> Arc<dyn IncidentStore> {
    let url = SecretString::from(db.url().to_owned());
    let pool = storage::postgres_pool(&url, relay_intake::SCHEMA, 4).unwrap();
    storage::migrate_postgres(&pool, relay_intake::SCHEMA, &relay_intake::MIGRATOR)
        .await
        .unwrap();
    Arc::new(PostgresStore::new(pool))
}

#[tokio::test]
async fn postgres_report_figures_match_hand_computed() {
    let db = TestDatabase::new().await;
    the_figures_match_the_hand_computed_ones(pg_store(&db).await).await;
}

#[tokio::test]
async fn sqlite_report_figures_match_hand_computed() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("intake.db").display()
    ));
    let pool = storage::sqlite_pool(&url, 4).unwrap();
    relay_intake::SQLITE_MIGRATOR.run(&pool).await.unwrap();
    the_figures_match_the_hand_computed_ones(Arc::new(SqliteStore::new(pool))).await;
}

fn ts(rfc3339: &str) -> Option<prost_types::Timestamp> {
    Some(timestamp_of(time(rfc3339).timestamp_micros()))
}

#[tokio::test]
async fn get_program_report_validates_and_never_carries_caller_details() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let mut request = submission("REPORT-PRIV-1", "WELFARE");
    request.narrative = "NARRATIVE-SECRET on the bridge".into();
    request.caller = Some(CallerContact {
        name: "CALLERNAME-SECRET".into(),
        phone: "+15415550199".into(),
        callback_number: Some("+15415550777".into()),
    });
    app.submit(request).await;

    let mut client = ReportServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    let now = Utc::now();
    let ok = GetProgramReportRequest {
        from_time: Some(timestamp_of(
            (now - chrono::Duration::days(1)).timestamp_micros(),
        )),
        to_time: Some(timestamp_of(
            (now + chrono::Duration::hours(1)).timestamp_micros(),
        )),
        region: support::REGION.into(),
    };
    let report = client
        .get_program_report(ok.clone())
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let received = report
        .figures
        .iter()
        .find(|f| {
            f.metric == "calls_received" && f.breakdown.is_empty() && f.bucket_start_time.is_none()
        })
        .unwrap();
    assert_eq!(received.value, 1.0);
    assert_eq!(report.time_zone, "UTC");
    let bytes = prost::Message::encode_to_vec(&report);
    let text = String::from_utf8_lossy(&bytes);
    for secret in [
        "NARRATIVE-SECRET",
        "CALLERNAME-SECRET",
        "5550199",
        "5550777",
    ] {
        assert!(!text.contains(secret), "{secret} is in the report");
    }

    // Bad input: each is INVALID_ARGUMENT naming the field.
    let cases: Vec<(GetProgramReportRequest, &str)> = vec![
        (
            GetProgramReportRequest {
                from_time: None,
                ..ok.clone()
            },
            "from_time",
        ),
        (
            GetProgramReportRequest {
                to_time: None,
                ..ok.clone()
            },
            "to_time",
        ),
        (
            GetProgramReportRequest {
                from_time: Some(prost_types::Timestamp {
                    seconds: i64::MAX / 2,
                    nanos: 0,
                }),
                ..ok.clone()
            },
            "from_time",
        ),
        (
            GetProgramReportRequest {
                to_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..ok.clone()
            },
            "to_time",
        ),
        (
            GetProgramReportRequest {
                from_time: ts("2026-03-04T00:00:00Z"),
                to_time: ts("2026-03-04T00:00:00Z"),
                region: String::new(),
            },
            "to_time",
        ),
        (
            GetProgramReportRequest {
                from_time: ts("2025-01-01T00:00:00Z"),
                to_time: ts("2026-01-03T00:00:00Z"),
                region: String::new(),
            },
            "to_time",
        ),
        (
            GetProgramReportRequest {
                region: "bad region!".into(),
                ..ok.clone()
            },
            "region",
        ),
        (
            GetProgramReportRequest {
                region: "nowhere".into(),
                ..ok.clone()
            },
            "region",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .get_program_report(request.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violations = details.bad_request().unwrap().field_violations.clone();
        assert!(
            violations.iter().any(|v| v.field == field),
            "{request:?}: {violations:?} should name {field}"
        );
        let info = details.error_info().unwrap();
        assert_eq!(info.domain, "relay.reports.v1");
    }
    // Exactly 366 days is allowed.
    client
        .get_program_report(GetProgramReportRequest {
            from_time: ts("2025-01-01T00:00:00Z"),
            to_time: ts("2026-01-02T00:00:00Z"),
            region: String::new(),
        })
        .await
        .unwrap();
    app.stop().await;
}
