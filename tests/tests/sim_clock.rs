//! Simulated time across the four service processes (`[clock]`, as `relay dev --clock-speed`
//! sets it): at 60 simulated seconds per wall second, every time rule follows the simulated
//! clock, not the wall clock. A queued call escalates after its escalation limit in simulated
//! time (and not before); intake's deadline job escalates an unreviewed call after the review
//! wait in simulated time; a position goes stale after the staleness limit in simulated time;
//! and a team whose shift ends during a call finishes it, goes off duty as it clears, and is
//! offered nothing more.
//!
//! Times in the assertions are the services' own record times, read from the incidents, so
//! they are simulated times; the test reads the same clock (same origin and speed) to stamp
//! its calls and positions and to wait.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use relay_proto::{
    availability::{
        ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus, UnservedReason},
    intake::{
        GetIncidentRequest, Incident, IncidentEventKind, IncidentTimeline, RoutingState, StepTime,
        SubmitIncidentRequest, intake_service_client::IntakeServiceClient,
    },
};
use relay_runtime::{
    clock::{Clock, ScaledClock},
    validate::to_timestamp,
};
use relay_tests::{
    suite::{Events, Suite},
    unique_name,
};
use tonic::transport::Channel;

const SPEED: f64 = 60.0;
/// Simulated seconds of slack after a limit: the upkeep loops tick every 50 ms of wall time
/// (3 simulated seconds) and intake hears of an escalation through routing's events.
const SLACK: i64 = 120;
const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};

fn time_of(timestamp: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let t = timestamp.expect("a time");
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).expect("nanos")).expect("valid")
}

/// Waits on the wall clock until `clock` reads `at`.
async fn until(clock: &ScaledClock, at: DateTime<Utc>) {
    let left = (at - clock.now()).to_std().unwrap_or_default();
    tokio::time::sleep(left.div_f64(SPEED)).await;
}

struct World {
    clock: ScaledClock,
    cad: String,
    teams: AvailabilityServiceClient<Channel>,
    intake: IntakeServiceClient<Channel>,
}

impl World {
    async fn team_on_duty(
        &mut self,
        region: &str,
        team_id: &str,
        shift_ends_at: Option<DateTime<Utc>>,
    ) {
        self.teams
            .upsert_team(UpsertTeamRequest {
                request_id: unique_name("r"),
                team_id: team_id.into(),
                display_name: team_id.into(),
                region: region.into(),
                capabilities: vec!["clinician".into(), "emt".into()],
                shift_ends_at: shift_ends_at.map(to_timestamp),
                ..UpsertTeamRequest::default()
            })
            .await
            .expect("upsert team");
        self.status(team_id, TeamStatus::Available, "").await;
        self.teams
            .report_location(ReportLocationRequest {
                team_id: team_id.into(),
                location: Some(HERE),
                // Simulated time: the wall clock would be far behind it.
                recorded_at: Some(to_timestamp(self.clock.now())),
                ..ReportLocationRequest::default()
            })
            .await
            .expect("a position stamped in simulated time is accepted");
    }

    async fn status(&mut self, team_id: &str, status: TeamStatus, incident: &str) -> TeamStatus {
        let team = self
            .teams
            .set_team_status(SetTeamStatusRequest {
                request_id: unique_name("r"),
                team_id: team_id.into(),
                status: status.into(),
                incident_id: incident.into(),
                ..SetTeamStatusRequest::default()
            })
            .await
            .expect("status")
            .into_inner()
            .team
            .expect("team");
        TeamStatus::try_from(team.status).expect("known status")
    }

    async fn call(
        &mut self,
        region: &str,
        id: &str,
        incident_type: &str,
        priority: i32,
    ) -> Incident {
        self.intake
            .submit_incident(SubmitIncidentRequest {
                cad_system: self.cad.clone(),
                cad_incident_id: id.into(),
                incident_type: incident_type.into(),
                priority,
                location: Some(HERE),
                address: "1 SW Broadway".into(),
                region: region.into(),
                narrative: "simulated call".into(),
                received_at: Some(to_timestamp(self.clock.now())),
                ..SubmitIncidentRequest::default()
            })
            .await
            .expect("a call stamped in simulated time is accepted")
            .into_inner()
            .incident
            .expect("incident")
    }

    async fn incident(&mut self, incident_id: &str) -> Incident {
        self.intake
            .get_incident(GetIncidentRequest {
                incident_id: incident_id.into(),
                ..GetIncidentRequest::default()
            })
            .await
            .expect("get incident")
            .into_inner()
            .incident
            .expect("incident")
    }
}

/// Asserts that `incident` escalated for `reason` between `limit` and `limit + SLACK`
/// simulated seconds after the step `since` picks from its timeline.
#[track_caller]
fn check_escalation(
    incident: &Incident,
    since: fn(&IncidentTimeline) -> Option<&StepTime>,
    limit: i64,
    reason: UnservedReason,
) {
    let timeline = incident.timeline.clone().expect("timeline");
    // The start by the deciding service's own time where it gives one (routing's queued
    // time; intake's triage has only its record time), the escalation as intake recorded it.
    let start = since(&timeline).and_then(|s| s.source_time.as_ref().or(s.record_time.as_ref()));
    let end = timeline
        .escalated
        .as_ref()
        .and_then(|s| s.record_time.as_ref());
    let waited = time_of(end) - time_of(start);
    assert!(
        waited >= TimeDelta::seconds(limit) && waited <= TimeDelta::seconds(limit + SLACK),
        "escalated after {waited} simulated, limit {limit} s"
    );
    assert_eq!(
        incident.routing.as_ref().map(|r| r.unserved_reason),
        Some(reason as i32)
    );
}

fn routing_state(incident: &Incident) -> RoutingState {
    incident
        .routing
        .as_ref()
        .and_then(|r| RoutingState::try_from(r.state).ok())
        .unwrap_or(RoutingState::Unspecified)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_time_rule_follows_the_simulated_clock() {
    let origin = Utc::now();
    let clock = ScaledClock::new(origin, origin, SPEED).expect("clock");
    let shift_region = unique_name("shift");
    let origin_text = origin.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let duration_key = format!(
        "RELAY_ROUTING__REGIONS__{}__DEFAULT_EXPECTED_DURATION_SECONDS",
        shift_region.to_uppercase()
    );
    let suite = Suite::start(&[
        ("RELAY_INSECURE_DEV", "true"),
        ("RELAY_CLOCK__SPEED", "60"),
        ("RELAY_CLOCK__ORIGIN", &origin_text),
        ("RELAY_INTAKE__REVIEW_WAIT_SECONDS", "240"),
        // Calls in the shift region take a minute, so a team with minutes of shift left
        // passes routing's shift check.
        (&duration_key, "60"),
    ])
    .await;
    let intake = IntakeServiceClient::connect(suite.intake.endpoint())
        .await
        .expect("intake");
    let mut world = World {
        clock,
        cad: unique_name("cad"),
        teams: AvailabilityServiceClient::connect(suite.availability.endpoint())
            .await
            .expect("availability"),
        intake: intake.clone(),
    };
    let mut events = Events::watch(intake, &world.cad).await;
    let region = unique_name("region");

    // One team, busy on a first call; a priority-1 call (escalation limit 300 s) queues.
    world.team_on_duty(&region, "t1", None).await;
    let positioned = world.clock.now();
    let first = world.call(&region, "first", "WELFARE", 3).await;
    assert_eq!(routing_state(&first), RoutingState::Assigned, "{first:?}");
    let queued = world.call(&region, "queued", "WELFARE", 1).await;
    assert_eq!(routing_state(&queued), RoutingState::Queued, "{queued:?}");
    // An unknown call type needs review; the review wait is 240 simulated seconds.
    let review = world.call(&region, "review", "ZZNOTACODE", 3).await;
    assert_eq!(
        routing_state(&review),
        RoutingState::NotRouted,
        "{review:?}"
    );

    let wall = Instant::now();
    events
        .until(&queued.incident_id, IncidentEventKind::Escalated)
        .await;
    events
        .until(&review.incident_id, IncidentEventKind::Escalated)
        .await;
    assert!(
        wall.elapsed() < Duration::from_secs(60),
        "the limits passed in simulated time, not in wall time"
    );

    // By the services' own (simulated) record times: after the limit, and not long after.
    let escalated = world.incident(&queued.incident_id).await;
    check_escalation(
        &escalated,
        |t| t.queued.as_ref(),
        300,
        UnservedReason::AllBusy,
    );
    let reviewed = world.incident(&review.incident_id).await;
    check_escalation(
        &reviewed,
        |t| t.triaged.as_ref(),
        240,
        UnservedReason::ReviewTimeout,
    );

    // Stale positions: t1 clears past the 300 s staleness limit of its last position; a new
    // call cannot go to it.
    until(&world.clock, positioned + TimeDelta::seconds(310)).await;
    world
        .status("t1", TeamStatus::Available, &first.incident_id)
        .await;
    let stale = world.call(&region, "stale", "WELFARE", 3).await;
    assert_ne!(routing_state(&stale), RoutingState::Assigned, "{stale:?}");
    assert_eq!(
        stale.routing.as_ref().map(|r| r.unserved_reason),
        Some(UnservedReason::AllPositionsStale as i32),
        "{stale:?}"
    );

    // Shifts: t2's shift ends 400 simulated seconds from now, while it is on a call.
    let shift_end = world.clock.now() + TimeDelta::seconds(400);
    world
        .team_on_duty(&shift_region, "t2", Some(shift_end))
        .await;
    let call = world.call(&shift_region, "shift", "WELFARE", 3).await;
    assert_eq!(routing_state(&call), RoutingState::Assigned, "{call:?}");
    for status in [TeamStatus::EnRoute, TeamStatus::OnScene] {
        assert_eq!(world.status("t2", status, &call.incident_id).await, status);
    }
    until(&world.clock, shift_end + TimeDelta::seconds(10)).await;
    assert_eq!(
        world
            .status("t2", TeamStatus::Available, &call.incident_id)
            .await,
        TeamStatus::OffDuty,
        "a team whose shift ended goes off duty as it clears"
    );
    events
        .until(&call.incident_id, IncidentEventKind::Cleared)
        .await;
    let next = world.call(&shift_region, "after-shift", "WELFARE", 3).await;
    assert_ne!(routing_state(&next), RoutingState::Assigned, "{next:?}");
    assert_eq!(
        next.routing.as_ref().map(|r| r.unserved_reason),
        Some(UnservedReason::NoTeamsInRegion as i32),
        "{next:?}"
    );
    assert_eq!(events.causal_violation(), None);
    suite.clean_up().await;
}
