//! The CAD's picture stays right through a release, across the four binaries on real Redis and
//! PostgreSQL (issue 12): one team takes call after call; 50 times it clears by status
//! (EN_ROUTE, ON_SCENE, AVAILABLE) and 50 times the call is handed back (ReleaseTeam). Every
//! call's end is labelled as routing recorded it (CLEARED vs RELEASED), GetIncident shows the
//! routing RELEASED with the team's times on the timeline, DISPATCHED follows ASSIGNED, and the
//! CAD's stream, replayed in order, never shows the team on two calls.

use std::time::SystemTime;

use relay_proto::{
    availability::{
        ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    intake::{
        CloseIncidentRequest, CloseOutcome, GetIncidentRequest, IncidentEventKind,
        ListIncidentsRequest, RoutingState, SubmitIncidentRequest,
        intake_service_client::IntakeServiceClient,
    },
    routing::{ReleaseTeamRequest, routing_service_client::RoutingServiceClient},
};
use relay_tests::{
    suite::{Events, Suite},
    unique_name,
};

const REPETITIONS: usize = 50;

const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    ClearByStatus,
    HandBack,
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::too_many_lines)]
async fn every_release_is_labelled_as_routing_recorded_it_and_the_team_is_never_on_two_calls() {
    let suite = Suite::start(&[]).await;
    let region = unique_name("region");
    let cad = unique_name("cad");
    let mut teams = AvailabilityServiceClient::connect(suite.availability.endpoint())
        .await
        .expect("availability");
    let mut routing = RoutingServiceClient::connect(suite.routing.endpoint())
        .await
        .expect("routing");
    let mut intake = IntakeServiceClient::connect(suite.intake.endpoint())
        .await
        .expect("intake");
    let mut events = Events::watch(intake.clone(), &cad).await;
    teams
        .upsert_team(UpsertTeamRequest {
            request_id: unique_name("r"),
            team_id: "t1".into(),
            display_name: "Unit 1".into(),
            region: region.clone(),
            capabilities: vec!["clinician".into(), "emt".into(), "peer".into()],
            ..UpsertTeamRequest::default()
        })
        .await
        .expect("upsert team");
    let set = |status: TeamStatus, incident: &str| SetTeamStatusRequest {
        request_id: unique_name("r"),
        team_id: "t1".into(),
        status: status.into(),
        incident_id: incident.to_owned(),
        ..SetTeamStatusRequest::default()
    };
    teams
        .set_team_status(set(TeamStatus::Available, ""))
        .await
        .expect("on duty");

    let endings = [Ending::ClearByStatus, Ending::HandBack];
    for (n, ending) in endings
        .iter()
        .flat_map(|e| std::iter::repeat_n(*e, REPETITIONS))
        .enumerate()
    {
        teams
            .report_location(ReportLocationRequest {
                team_id: "t1".into(),
                location: Some(HERE),
                recorded_at: now(),
                ..ReportLocationRequest::default()
            })
            .await
            .expect("position");
        let submitted = intake
            .submit_incident(SubmitIncidentRequest {
                cad_system: cad.clone(),
                cad_incident_id: format!("cad-{n}"),
                incident_type: "WELFARE".into(),
                priority: 3,
                location: Some(GeoPoint {
                    latitude: HERE.latitude + 0.01,
                    longitude: HERE.longitude,
                }),
                address: "1 SW Broadway".into(),
                region: region.clone(),
                received_at: now(),
                ..SubmitIncidentRequest::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .incident
            .expect("incident");
        let id = submitted.incident_id.clone();
        events.until(&id, IncidentEventKind::Dispatched).await;
        let incident = intake
            .get_incident(GetIncidentRequest {
                incident_id: id.clone(),
                ..GetIncidentRequest::default()
            })
            .await
            .expect("get")
            .into_inner()
            .incident
            .expect("incident");
        let assignment_id = incident.routing.expect("routing").assignment_id;
        let expected = match ending {
            Ending::ClearByStatus => {
                for status in [
                    TeamStatus::EnRoute,
                    TeamStatus::OnScene,
                    TeamStatus::Available,
                ] {
                    teams
                        .set_team_status(set(status, &id))
                        .await
                        .expect("status");
                }
                IncidentEventKind::Cleared
            }
            Ending::HandBack => {
                routing
                    .release_team(ReleaseTeamRequest {
                        request_id: unique_name("r"),
                        assignment_id: assignment_id.clone(),
                        reason: "handed back".into(),
                    })
                    .await
                    .expect("release");
                IncidentEventKind::Released
            }
        };
        let kinds = events
            .until_any(
                &id,
                &[IncidentEventKind::Cleared, IncidentEventKind::Released],
            )
            .await;
        let label = *kinds.last().expect("an ending");
        assert_eq!(label, expected, "call {n} ({ending:?}) ended as {kinds:?}");
        let first = |k: IncidentEventKind| kinds.iter().position(|x| *x == k);
        assert!(
            first(IncidentEventKind::Assigned) < first(IncidentEventKind::Dispatched),
            "call {n}: DISPATCHED must follow ASSIGNED: {kinds:?}"
        );
        let incident = intake
            .get_incident(GetIncidentRequest {
                incident_id: id.clone(),
                ..GetIncidentRequest::default()
            })
            .await
            .expect("get")
            .into_inner()
            .incident
            .expect("incident");
        let routing_outcome = incident.routing.expect("routing");
        assert_eq!(
            routing_outcome.state(),
            RoutingState::Released,
            "call {n} ({ending:?}): GetIncident still shows {:?}",
            routing_outcome.state()
        );
        let timeline = incident.timeline.expect("timeline");
        assert!(
            timeline.dispatched.is_some(),
            "call {n}: dispatch time kept"
        );
        if ending == Ending::ClearByStatus {
            assert!(timeline.on_scene.is_some() && timeline.cleared.is_some());
        } else {
            assert!(timeline.released.is_some() && timeline.cleared.is_none());
        }
        intake
            .close_incident(CloseIncidentRequest {
                request_id: unique_name("r"),
                incident_id: id.clone(),
                outcome: CloseOutcome::ResolvedOnScene.into(),
                ..CloseIncidentRequest::default()
            })
            .await
            .expect("close");
        if let Some(violation) = events.causal_violation() {
            panic!("call {n}: {violation}");
        }
    }
    // No incident is left showing the team ASSIGNED while it is free.
    let assigned = intake
        .list_incidents(ListIncidentsRequest {
            cad_system: cad.clone(),
            routing_state: RoutingState::Assigned.into(),
            ..ListIncidentsRequest::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert!(assigned.is_empty(), "{} still ASSIGNED", assigned.len());
    let released = intake
        .list_incidents(ListIncidentsRequest {
            cad_system: cad.clone(),
            routing_state: RoutingState::Released.into(),
            page_size: 500,
            ..ListIncidentsRequest::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert_eq!(released.len(), 2 * REPETITIONS);
    suite.clean_up().await;
}
