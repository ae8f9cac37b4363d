use super::*;

fn assigned_incident() -> StoredIncident {
    StoredIncident {
        incident: Incident {
            incident_id: "inc-1".into(),
            state: IncidentState::Open as i32,
            routing: Some(RoutingOutcome {
                state: RoutingState::Assigned as i32,
                assignment_id: "a1".into(),
                team_id: "t1".into(),
                ..RoutingOutcome::default()
            }),
            ..Incident::default()
        },
        override_disposition: 0,
        team_status: TeamStatus::EnRoute as i32,
    }
}

#[test]
fn a_lost_live_state_waits_for_a_dispatcher_and_is_never_shown_as_the_team_clearing() {
    let before = assigned_incident();
    let lost = Assignment {
        assignment_id: "a1".into(),
        team_id: "t1".into(),
        state: AssignmentState::Released as i32,
        end_cause: AssignmentEndCause::LiveStateLost as i32,
        end_reason: "live state lost".into(),
        ..Assignment::default()
    };
    let plan = ended(&before, &lost, 1_000_000).expect("a change");
    assert_eq!(
        routing_state(&plan.next.incident),
        RoutingState::Recommended
    );
    assert_eq!(plan.next.team_status, 0);
    let [event] = plan.events.as_slice() else {
        panic!("one event: {:?}", plan.events);
    };
    assert_eq!(event.kind(), IncidentEventKind::Released);
    assert!(
        event.detail.contains("live state was lost"),
        "{}",
        event.detail
    );
    let timeline = plan.next.incident.timeline.as_ref().expect("timeline");
    assert!(timeline.released.is_some() && timeline.cleared.is_none());
    // The restore (or a dispatcher's choice) is applied as a new assignment.
    let restored = Assignment {
        assignment_id: "a2".into(),
        team_id: "t1".into(),
        state: AssignmentState::Active as i32,
        ..Assignment::default()
    };
    let back = assigned(
        &plan.next,
        &restored,
        RoutingOutcome::default(),
        &[],
        2_000_000,
    )
    .expect("assigned again");
    assert_eq!(routing_state(&back.next.incident), RoutingState::Assigned);
}
