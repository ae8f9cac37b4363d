//! Model-based test of the rule behind the CAD's picture: intake's view of each incident
//! converges to routing's record and to the teams' statuses, whatever order routing's and
//! availability's events reach it in, across duplicates, replays and an intake restart; no
//! team is ever shown on two open incidents; and the CAD's stream is in causal order.
//!
//! Each case generates a random history for a few teams and incidents (assignments from the
//! queue, team statuses, clears, hand-backs, escalations), as routing's record and
//! availability's stream would hold it, then feeds the two streams to intake in a random
//! interleaving (each stream keeps its own order, as a consumer sees it), replaying parts of
//! each and restarting intake once. After each case it checks every incident against the
//! model and replays the CAD's stream through a checker. Runs on PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use prost_types::Timestamp;
use rand::{Rng, SeedableRng, rngs::StdRng};
use relay_intake::store::{StoredIncident, micros_of};
use relay_proto::{
    availability::Team,
    common::TeamStatus,
    intake::{IncidentEvent, IncidentEventKind, RoutingState},
    routing::{
        Assignment, AssignmentEndCause, AssignmentEvent, AssignmentEventKind, AssignmentState,
    },
};
use relay_tests::TestDatabase;
use support::{FakeRouting, REGION, Script, TestIntake, submission};

/// Cases per backend; each case is a fresh CAD system in the same database.
const CASES: u64 = 30;

/// One fact in one upstream stream.
#[derive(Debug, Clone)]
enum Fact {
    Routing(Box<AssignmentEvent>),
    Team {
        event_id: String,
        team: Box<Team>,
        time: Timestamp,
    },
}

/// What the model expects of one incident at the end.
#[derive(Debug, Clone, Default)]
struct Expected {
    /// The assignment, as routing's record holds it at the end.
    assignment: Option<Assignment>,
    /// The team's busy statuses for that assignment, in order, with their times.
    statuses: Vec<(TeamStatus, i64)>,
    escalated: bool,
}

struct History {
    routing: Vec<AssignmentEvent>,
    teams: Vec<Fact>,
    expected: HashMap<String, Expected>,
}

fn ts(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap(),
    }
}

/// A random history over `incidents` (already queued in intake) and `teams`.
#[allow(clippy::too_many_lines)]
fn history(rng: &mut StdRng, case: u64, cad: &str, incidents: &[String], teams: usize) -> History {
    let team_ids: Vec<String> = (0..teams).map(|i| format!("c{case}-team-{i}")).collect();
    let mut busy: HashMap<String, (String, Assignment, usize)> = HashMap::new(); // team -> (incident, assignment, progress)
    let mut waiting: Vec<String> = incidents.to_vec();
    let mut expected: HashMap<String, Expected> = incidents
        .iter()
        .map(|i| (i.clone(), Expected::default()))
        .collect();
    let mut routing = Vec::new();
    let mut team_facts = Vec::new();
    let mut clock: i64 = 1_800_000_000_000_000 + i64::try_from(case).unwrap() * 1_000_000_000;
    let mut next_id = 0;
    let mut team_event = |team: &str, status: TeamStatus, incident: &str, at: i64| {
        next_id += 1;
        Fact::Team {
            event_id: format!("c{case}-a{next_id:06}"),
            team: Box::new(Team {
                team_id: team.into(),
                region: REGION.into(),
                status: status as i32,
                incident_id: incident.into(),
                ..Team::default()
            }),
            time: ts(at),
        }
    };
    for step in 0..rng.random_range(8..30) {
        clock += 1_000_000;
        let free: Vec<&String> = team_ids.iter().filter(|t| !busy.contains_key(*t)).collect();
        let choice = rng.random_range(0..10);
        if choice < 4 && !free.is_empty() && !waiting.is_empty() {
            // The queue assigns a waiting incident to a free team: availability marks the team
            // DISPATCHED as routing claims it, then routing records the assignment.
            let team = free[rng.random_range(0..free.len())].clone();
            let incident = waiting.remove(rng.random_range(0..waiting.len()));
            let assignment = Assignment {
                assignment_id: format!("c{case}-asg-{step}"),
                incident_id: incident.clone(),
                team_id: team.clone(),
                region: REGION.into(),
                assigned_at: Some(ts(clock)),
                state: AssignmentState::Active as i32,
                source: 2,
                cad_system: cad.into(),
                ..Assignment::default()
            };
            team_facts.push(team_event(&team, TeamStatus::Dispatched, &incident, clock));
            let event = AssignmentEvent {
                kind: AssignmentEventKind::Assigned as i32,
                incident_id: incident.clone(),
                cad_system: cad.into(),
                assignment: Some(assignment.clone()),
                event_time: Some(ts(clock)),
                ..AssignmentEvent::default()
            };
            // Routing's stream may number a team's new ASSIGNED before the RELEASED of its
            // previous call: the new assignment's event row takes its id before the unique
            // index makes it wait for the end of the previous one to commit.
            let previous_end = routing.last().is_some_and(|e: &AssignmentEvent| {
                e.kind == AssignmentEventKind::Released as i32
                    && e.assignment.as_ref().is_some_and(|a| a.team_id == team)
            });
            if previous_end && rng.random_bool(0.5) {
                routing.insert(routing.len() - 1, event);
            } else {
                routing.push(event);
            }
            let e = expected.get_mut(&incident).unwrap();
            e.assignment = Some(assignment.clone());
            e.statuses.push((TeamStatus::Dispatched, clock));
            busy.insert(team, (incident, assignment, 0));
        } else if choice < 7 && !busy.is_empty() {
            // A busy team moves on with its call.
            let teams: Vec<String> = busy.keys().cloned().collect();
            let team = &teams[rng.random_range(0..teams.len())];
            let (incident, _, progress) = busy.get_mut(team).unwrap();
            let next = [
                TeamStatus::EnRoute,
                TeamStatus::OnScene,
                TeamStatus::Transporting,
            ];
            if *progress < next.len() {
                let status = next[*progress];
                *progress += 1;
                team_facts.push(team_event(team, status, incident, clock));
                expected
                    .get_mut(incident.as_str())
                    .unwrap()
                    .statuses
                    .push((status, clock));
            }
        } else if choice < 9 && !busy.is_empty() {
            // The call ends: the team clears (availability first, then routing's record), or
            // a dispatcher hands it back (routing's record first, then the team is freed).
            let teams: Vec<String> = busy.keys().cloned().collect();
            let team = teams[rng.random_range(0..teams.len())].clone();
            let (incident, mut assignment, _) = busy.remove(&team).unwrap();
            let cleared = rng.random_bool(0.5);
            assignment.state = AssignmentState::Released as i32;
            assignment.end_time = Some(ts(clock));
            if cleared {
                assignment.end_cause = AssignmentEndCause::TeamCleared as i32;
                assignment.end_reason = "team cleared".into();
                team_facts.push(team_event(&team, TeamStatus::Available, "", clock));
            } else {
                assignment.end_cause = AssignmentEndCause::Released as i32;
                // A CAD's reason text can be anything, even the words routing uses itself.
                assignment.end_reason = "team cleared".into();
            }
            routing.push(AssignmentEvent {
                kind: AssignmentEventKind::Released as i32,
                incident_id: incident.clone(),
                cad_system: cad.into(),
                assignment: Some(assignment.clone()),
                event_time: Some(ts(clock)),
                ..AssignmentEvent::default()
            });
            if !cleared {
                team_facts.push(team_event(&team, TeamStatus::Available, "", clock));
            }
            expected.get_mut(&incident).unwrap().assignment = Some(assignment);
        } else if !waiting.is_empty() && rng.random_bool(0.3) {
            // A call waits too long and is escalated.
            let incident = waiting.remove(rng.random_range(0..waiting.len()));
            routing.push(AssignmentEvent {
                kind: AssignmentEventKind::Escalated as i32,
                incident_id: incident.clone(),
                cad_system: cad.into(),
                reason: 3,
                event_time: Some(ts(clock)),
                ..AssignmentEvent::default()
            });
            expected.get_mut(&incident).unwrap().escalated = true;
        }
    }
    for (i, event) in routing.iter_mut().enumerate() {
        event.event_id = format!("c{case}-r{i:06}");
    }
    History {
        routing,
        teams: team_facts,
        expected,
    }
}

/// The order in which intake gets the facts: a random merge of the two streams, where each
/// stream sometimes replays from an earlier point (a consumer reconnecting after its cursor).
fn deliveries(rng: &mut StdRng, history: &History) -> Vec<Fact> {
    let streams: [Vec<Fact>; 2] = [
        history
            .routing
            .iter()
            .map(|e| Fact::Routing(Box::new(e.clone())))
            .collect(),
        history.teams.clone(),
    ];
    let mut at = [0usize; 2];
    let mut out = Vec::new();
    while at[0] < streams[0].len() || at[1] < streams[1].len() {
        let s = if at[0] >= streams[0].len() {
            1
        } else if at[1] >= streams[1].len() {
            0
        } else {
            usize::from(rng.random_bool(0.5))
        };
        out.push(streams[s][at[s]].clone());
        at[s] += 1;
        if rng.random_bool(0.08) {
            at[s] = at[s].saturating_sub(rng.random_range(1..4));
        }
    }
    out
}

async fn deliver(app: &TestIntake, fact: &Fact) {
    match fact {
        Fact::Routing(event) => app
            .intake
            .apply_assignment_event(REGION, event)
            .await
            .unwrap(),
        Fact::Team {
            event_id,
            team,
            time,
        } => app
            .intake
            .apply_team_event(REGION, event_id, team, Some(time))
            .await
            .unwrap(),
    }
}

fn kind(event: &IncidentEvent) -> IncidentEventKind {
    IncidentEventKind::try_from(event.kind).unwrap()
}

/// Replays a CAD's stream the way a CAD would, and fails on a team shown on two incidents,
/// a status of a team on an incident it is not assigned to, or time going backwards.
fn check_stream(case: u64, events: &[IncidentEvent]) {
    let mut on: HashMap<String, String> = HashMap::new();
    let mut last_time = 0;
    for (i, ev) in events.iter().enumerate() {
        let time = micros_of(ev.event_time.as_ref());
        assert!(
            time >= last_time,
            "case {case}: event_time went backwards at sequence {}",
            ev.sequence
        );
        assert_eq!(
            ev.sequence,
            i64::try_from(i).unwrap() + 1,
            "case {case}: gap"
        );
        last_time = time;
        match kind(ev) {
            IncidentEventKind::Assigned => {
                if let Some(other) = on.get(&ev.team_id) {
                    panic!(
                        "case {case}: sequence {} assigns {} to {} while the stream still shows it on {other}",
                        ev.sequence, ev.team_id, ev.incident_id
                    );
                }
                on.insert(ev.team_id.clone(), ev.incident_id.clone());
            }
            IncidentEventKind::Cleared | IncidentEventKind::Released if !ev.team_id.is_empty() => {
                assert_eq!(
                    on.remove(&ev.team_id).as_deref(),
                    Some(ev.incident_id.as_str()),
                    "case {case}: sequence {} ends a call the stream did not show",
                    ev.sequence
                );
            }
            IncidentEventKind::Dispatched
            | IncidentEventKind::EnRoute
            | IncidentEventKind::OnScene
            | IncidentEventKind::Transporting => {
                assert_eq!(
                    on.get(&ev.team_id).map(String::as_str),
                    Some(ev.incident_id.as_str()),
                    "case {case}: sequence {} reports {} on an incident it is not assigned to",
                    ev.sequence,
                    ev.team_id
                );
            }
            _ => {}
        }
    }
}

fn check_incident(
    case: u64,
    stored: &StoredIncident,
    expected: &Expected,
    events: &[IncidentEvent],
) {
    let incident = &stored.incident;
    let id = &incident.incident_id;
    let routing = incident.routing.clone().unwrap_or_default();
    let mine: Vec<&IncidentEvent> = events.iter().filter(|e| &e.incident_id == id).collect();
    let count = |k: IncidentEventKind| mine.iter().filter(|e| kind(e) == k).count();
    let timeline = incident.timeline.clone().unwrap_or_default();
    if std::env::var("MODEL_DEBUG").is_ok() {
        eprintln!("{id}: routing {routing:?} expected {expected:?}");
        for e in &mine {
            eprintln!("  {} {:?} {}", e.sequence, kind(e), e.team_id);
        }
    }
    match &expected.assignment {
        None if expected.escalated => {
            assert_eq!(
                routing.state,
                RoutingState::Escalated as i32,
                "case {case} {id}"
            );
            assert_eq!(timeline.first_unserved_reason, 3, "case {case} {id}");
            assert!(timeline.escalated.is_some() && timeline.unserved_wait.is_some());
        }
        None => assert_eq!(
            routing.state,
            RoutingState::Queued as i32,
            "case {case} {id}"
        ),
        Some(a) => {
            assert_eq!(routing.assignment_id, a.assignment_id, "case {case} {id}");
            assert_eq!(routing.team_id, a.team_id, "case {case} {id}");
            assert_eq!(count(IncidentEventKind::Assigned), 1, "case {case} {id}");
            assert_eq!(
                micros_of(
                    timeline
                        .assigned
                        .as_ref()
                        .and_then(|s| s.source_time.as_ref())
                ),
                micros_of(a.assigned_at.as_ref()),
                "case {case} {id}: assigned time"
            );
            assert_eq!(
                timeline.first_unserved_reason, 3,
                "case {case} {id}: it was queued"
            );
            // Every status the team reported, once, with the team's own time.
            for (status, at) in &expected.statuses {
                let step = match status {
                    TeamStatus::Dispatched => timeline.dispatched.as_ref(),
                    TeamStatus::EnRoute => timeline.en_route.as_ref(),
                    TeamStatus::OnScene => timeline.on_scene.as_ref(),
                    _ => timeline.transporting.as_ref(),
                };
                assert_eq!(
                    micros_of(step.and_then(|s| s.source_time.as_ref())),
                    *at,
                    "case {case} {id}: {status:?} time"
                );
            }
            if a.state == AssignmentState::Active as i32 {
                assert_eq!(
                    routing.state,
                    RoutingState::Assigned as i32,
                    "case {case} {id}"
                );
                let last = expected.statuses.last().unwrap().0;
                assert_eq!(stored.team_status, last as i32, "case {case} {id}");
                for (status, _) in &expected.statuses {
                    let k = lifecycle_kind(*status);
                    assert_eq!(count(k), 1, "case {case} {id}: {k:?} once");
                }
            } else {
                assert_eq!(
                    routing.state,
                    RoutingState::Released as i32,
                    "case {case} {id}"
                );
                let (label, other) = if a.end_cause == AssignmentEndCause::TeamCleared as i32 {
                    (IncidentEventKind::Cleared, IncidentEventKind::Released)
                } else {
                    (IncidentEventKind::Released, IncidentEventKind::Cleared)
                };
                assert_eq!(count(label), 1, "case {case} {id}: labelled {label:?}");
                assert_eq!(count(other), 0, "case {case} {id}: never {other:?}");
            }
        }
    }
}

fn lifecycle_kind(status: TeamStatus) -> IncidentEventKind {
    match status {
        TeamStatus::Dispatched => IncidentEventKind::Dispatched,
        TeamStatus::EnRoute => IncidentEventKind::EnRoute,
        TeamStatus::OnScene => IncidentEventKind::OnScene,
        _ => IncidentEventKind::Transporting,
    }
}

async fn run_cases(url: &str) {
    let routing = FakeRouting::started().await;
    routing.script(Script::Queue);
    let mut app = TestIntake::start(url, &routing, None, &[], None).await;
    for case in 0..CASES {
        let mut rng = StdRng::seed_from_u64(case);
        let cad = format!("model-cad-{case}");
        let mut incidents = Vec::new();
        for n in 0..rng.random_range(3..8) {
            let mut request = submission(&format!("M-{case}-{n}"), "WELFARE");
            request.cad_system.clone_from(&cad);
            let incident = app.submit(request).await;
            assert_eq!(
                incident.routing.unwrap().state,
                RoutingState::Queued as i32,
                "case {case}: the fake queues every call"
            );
            incidents.push(incident.incident_id);
        }
        let teams = rng.random_range(1..4);
        let history = history(&mut rng, case, &cad, &incidents, teams);
        // Routing's record is ahead of its stream: GetAssignment answers from the end state.
        for event in &history.routing {
            routing.push_event(event.clone());
        }
        let order = deliveries(&mut rng, &history);
        let restart_at = rng.random_range(0..=order.len());
        for (i, fact) in order.iter().enumerate() {
            if i == restart_at {
                app.stop().await;
                app = TestIntake::start(url, &routing, None, &[], None).await;
                // What a consumer resuming after its cursor may see again.
                for again in &order[i.saturating_sub(3)..i] {
                    deliver(&app, again).await;
                }
            }
            deliver(&app, fact).await;
        }
        app.intake.sequence_now().await.unwrap();
        let events = app
            .intake
            .store()
            .events_after(&cad, 0, 10_000)
            .await
            .unwrap();
        check_stream(case, &events);
        let mut shown: HashMap<String, String> = HashMap::new();
        for id in &incidents {
            let stored = app.intake.store().get_incident(id).await.unwrap().unwrap();
            check_incident(case, &stored, &history.expected[id], &events);
            let routing = stored.incident.routing.clone().unwrap_or_default();
            if routing.state == RoutingState::Assigned as i32
                && let Some(other) = shown.insert(routing.team_id.clone(), id.clone())
            {
                panic!("case {case}: {} shown on {other} and {id}", routing.team_id);
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_converges_to_routings_record_in_any_event_order_on_postgres() {
    let db = TestDatabase::new().await;
    run_cases(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_converges_to_routings_record_in_any_event_order_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("model.db").display());
    run_cases(&url).await;
}
