//! The whole call lifecycle across the four binaries as separate processes, against the
//! machine's Redis and PostgreSQL, driven only through the published relay-proto client stubs,
//! as a CAD would: a call arrives, is triaged, gets the nearest suitable team, and the CAD's
//! event stream sees assigned, en route, on scene, cleared and closed in order, with a referral
//! recorded. Also: an unsafe call never reaches a team; a call with no team free queues and is
//! assigned when one frees up; a duplicate submission dispatches nothing new.

use std::time::SystemTime;

use relay_proto::{
    availability::{
        GetTeamRequest, ReportLocationRequest, SetTeamStatusRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::{GeoPoint, TeamStatus},
    directory::{
        CreateReferralRequest, Organization, Service, ServiceLocation, ServiceStatus,
        UpsertServiceRequest, directory_service_client::DirectoryServiceClient,
    },
    intake::{
        CloseIncidentRequest, CloseOutcome, Disposition, IncidentEventKind, RiskFlag, RoutingState,
        SubmitIncidentRequest, SubmitIncidentResponse, intake_service_client::IntakeServiceClient,
    },
};
use relay_tests::{
    suite::{Events, Suite},
    unique_name,
};

const HERE: GeoPoint = GeoPoint {
    latitude: 45.5152,
    longitude: -122.6784,
};

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

fn position(kinds: &[IncidentEventKind], kind: IncidentEventKind) -> usize {
    kinds
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_else(|| panic!("{kind:?} missing from {kinds:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_goes_from_the_cad_to_a_team_and_back_to_closed() {
    let suite = Suite::start(&[]).await;
    let (availability, directory, intake) = (&suite.availability, &suite.directory, &suite.intake);
    let region = unique_name("region");
    let cad = unique_name("cad");
    let mut teams = AvailabilityServiceClient::connect(availability.endpoint())
        .await
        .expect("availability");
    let mut cad_client = IntakeServiceClient::connect(intake.endpoint())
        .await
        .expect("intake");
    let mut referrals = DirectoryServiceClient::connect(directory.endpoint())
        .await
        .expect("directory");
    let mut events = Events::watch(cad_client.clone(), &cad).await;

    // One team on duty, near the calls.
    teams
        .upsert_team(UpsertTeamRequest {
            request_id: unique_name("r"),
            team_id: "t1".into(),
            display_name: "Unit 1".into(),
            region: region.clone(),
            capabilities: vec![
                "clinician".into(),
                "emt".into(),
                "paramedic".into(),
                "peer".into(),
            ],
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
    teams
        .report_location(ReportLocationRequest {
            team_id: "t1".into(),
            location: Some(HERE),
            recorded_at: now(),
            ..ReportLocationRequest::default()
        })
        .await
        .expect("position");

    let call = |id: &str, flags: Vec<RiskFlag>| SubmitIncidentRequest {
        cad_system: cad.clone(),
        cad_incident_id: id.to_owned(),
        incident_type: "WELFARE".into(),
        priority: 3,
        location: Some(GeoPoint {
            latitude: HERE.latitude + 0.01,
            longitude: HERE.longitude,
        }),
        address: "1 SW Broadway".into(),
        region: region.clone(),
        narrative: "caller worried about a neighbour".into(),
        risk_flags: flags.into_iter().map(i32::from).collect(),
        received_at: now(),
        ..SubmitIncidentRequest::default()
    };

    // An unsafe call never reaches a team.
    let unsafe_call = cad_client
        .submit_incident(call("cad-unsafe", vec![RiskFlag::Weapons]))
        .await
        .expect("submit")
        .into_inner();
    let disposition = unsafe_call.triage.as_ref().map(|t| t.disposition());
    assert!(
        !matches!(
            disposition,
            Some(Disposition::CommunityResponse | Disposition::CoResponse)
        ),
        "a weapons call was triaged {disposition:?}"
    );

    // A call is triaged and gets the team.
    let first = cad_client
        .submit_incident(call("cad-1", vec![]))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        first.triage.as_ref().map(|t| t.disposition()),
        Some(Disposition::CommunityResponse)
    );
    let first_id = first
        .incident
        .as_ref()
        .expect("incident")
        .incident_id
        .clone();
    events.until(&first_id, IncidentEventKind::Assigned).await;

    // A duplicate submission returns the same incident and dispatches nothing new.
    let again: SubmitIncidentResponse = cad_client
        .submit_incident(call("cad-1", vec![]))
        .await
        .expect("resubmit")
        .into_inner();
    assert!(!again.created);
    assert_eq!(
        again.incident.as_ref().map(|i| i.incident_id.clone()),
        Some(first_id.clone())
    );

    // A second call finds no team free and queues.
    let second = cad_client
        .submit_incident(call("cad-2", vec![]))
        .await
        .expect("submit")
        .into_inner();
    let second_id = second
        .incident
        .as_ref()
        .expect("incident")
        .incident_id
        .clone();
    events.until(&second_id, IncidentEventKind::Queued).await;

    // The team works the first call, a referral is made, the team clears and the call closes.
    for status in [
        TeamStatus::EnRoute,
        TeamStatus::OnScene,
        TeamStatus::Available,
    ] {
        teams
            .set_team_status(set(status, &first_id))
            .await
            .expect("status");
    }
    referrals
        .upsert_service(UpsertServiceRequest {
            request_id: unique_name("r"),
            service: Some(Service {
                id: "svc-1".into(),
                organization: Some(Organization {
                    id: "org-1".into(),
                    name: "Crisis Center".into(),
                    ..Organization::default()
                }),
                name: "Walk-in crisis support".into(),
                status: ServiceStatus::Active.into(),
                locations: vec![ServiceLocation {
                    location_id: "loc-1".into(),
                    name: "Downtown".into(),
                    point: Some(HERE),
                    time_zone: "America/Los_Angeles".into(),
                    ..ServiceLocation::default()
                }],
                ..Service::default()
            }),
        })
        .await
        .expect("upsert service");
    let referral = referrals
        .create_referral(CreateReferralRequest {
            request_id: unique_name("r"),
            incident_id: first_id.clone(),
            service_id: "svc-1".into(),
            location_id: "loc-1".into(),
            notes: String::new(),
        })
        .await
        .expect("referral")
        .into_inner()
        .referral
        .expect("referral");
    cad_client
        .close_incident(CloseIncidentRequest {
            request_id: unique_name("r"),
            incident_id: first_id.clone(),
            outcome: CloseOutcome::Referred.into(),
            referral_ids: vec![referral.referral_id.clone()],
            notes: String::new(),
        })
        .await
        .expect("close");

    let kinds = events.until(&first_id, IncidentEventKind::Closed).await;
    let order = [
        IncidentEventKind::Assigned,
        IncidentEventKind::EnRoute,
        IncidentEventKind::OnScene,
        IncidentEventKind::Cleared,
        IncidentEventKind::Closed,
    ];
    let positions: Vec<usize> = order.iter().map(|k| position(&kinds, *k)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == IncidentEventKind::Assigned)
            .count(),
        1,
        "the duplicate dispatched again: {kinds:?}"
    );
    let sequences: Vec<i64> = events.seen.iter().map(|e| e.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps: {sequences:?}"
    );

    // The freed team is given the queued call.
    events.until(&second_id, IncidentEventKind::Assigned).await;
    let team = teams
        .get_team(GetTeamRequest {
            team_id: "t1".into(),
        })
        .await
        .expect("team")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(team.status(), TeamStatus::Dispatched);
    assert_eq!(team.incident_id, second_id);

    // The unsafe call was never routed to the team.
    let unsafe_id = unsafe_call
        .incident
        .as_ref()
        .expect("incident")
        .incident_id
        .clone();
    assert!(
        events
            .seen
            .iter()
            .all(|e| !(e.incident_id == unsafe_id && e.kind() == IncidentEventKind::Assigned)),
        "the unsafe call was assigned"
    );
    assert_ne!(
        unsafe_call.routing.as_ref().map(|r| r.state()),
        Some(RoutingState::Assigned)
    );
    suite.clean_up().await;
}
