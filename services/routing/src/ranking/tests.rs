use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::eta::{GreatCircleEstimator, great_circle_meters};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("valid")
}

fn at(latitude: f64, longitude: f64) -> GeoPoint {
    GeoPoint {
        latitude,
        longitude,
    }
}

fn team(
    id: &str,
    status: TeamStatus,
    caps: &[&str],
    point: Option<GeoPoint>,
    age_s: i64,
) -> TeamSnapshot {
    TeamSnapshot {
        team_id: id.to_owned(),
        display_name: format!("Team {id}"),
        status,
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        position: point.map(|point| Position {
            point,
            recorded_at: now() - chrono::Duration::seconds(age_s),
        }),
        shift_ends_at: None,
    }
}

const INCIDENT: GeoPoint = GeoPoint {
    latitude: 44.05,
    longitude: -123.09,
};

fn input<'a>(required: &'a [String], preferred: &'a [String]) -> RankInput<'a> {
    RankInput {
        location: INCIDENT,
        required,
        preferred,
        expected_duration_seconds: 3_600,
        now: now(),
    }
}

fn ids(ranking: &Ranking) -> Vec<(&str, Option<ExclusionReason>)> {
    ranking
        .candidates
        .iter()
        .map(|t| (t.team_id.as_str(), t.exclusion()))
        .collect()
}

#[test]
fn nearest_eligible_first_then_excluded_with_reasons() {
    let region = RegionSettings::default();
    let teams = vec![
        team(
            "far",
            TeamStatus::Available,
            &["clinician"],
            Some(at(44.10, -123.09)),
            10,
        ),
        team(
            "near",
            TeamStatus::Available,
            &["clinician"],
            Some(at(44.051, -123.09)),
            10,
        ),
        team(
            "stale",
            TeamStatus::Available,
            &["clinician"],
            Some(at(44.0501, -123.09)),
            3_600,
        ),
        team(
            "busy",
            TeamStatus::OnScene,
            &["clinician"],
            Some(at(44.0502, -123.09)),
            10,
        ),
        team(
            "nocap",
            TeamStatus::Available,
            &["peer"],
            Some(at(44.0503, -123.09)),
            10,
        ),
        team("nopos", TeamStatus::Available, &["clinician"], None, 0),
        team(
            "off",
            TeamStatus::OffDuty,
            &["clinician"],
            Some(at(44.05, -123.09)),
            10,
        ),
        team(
            "outside",
            TeamStatus::Available,
            &["clinician"],
            Some(at(46.0, -123.09)),
            10,
        ),
    ];
    let required = vec![String::from("clinician")];
    let ranking = rank(&teams, &input(&required, &[]), &region, &region.estimator());
    assert_eq!(
        ids(&ranking),
        [
            ("near", None),
            ("far", None),
            ("stale", Some(ExclusionReason::StalePosition)),
            ("busy", Some(ExclusionReason::NotAvailable)),
            ("nocap", Some(ExclusionReason::MissingCapability)),
            ("outside", Some(ExclusionReason::OutOfRange)),
            ("nopos", Some(ExclusionReason::NoPosition)),
        ]
    );
    assert_eq!(ranking.unserved(), None);
    let stale = &ranking.candidates[2];
    assert!(
        stale.rationale.contains("60 min old (limit 5 min)"),
        "{}",
        stale.rationale
    );
    assert!(ranking.candidates[4].rationale.contains("lacks clinician"));
}

#[test]
fn shift_ending_before_the_call_could_finish_excludes() {
    let region = RegionSettings::default();
    let mut ending = team(
        "ending",
        TeamStatus::Available,
        &[],
        Some(at(44.051, -123.09)),
        10,
    );
    ending.shift_ends_at = Some(now() + chrono::Duration::minutes(30));
    let mut fine = team(
        "fine",
        TeamStatus::Available,
        &[],
        Some(at(44.06, -123.09)),
        10,
    );
    fine.shift_ends_at = Some(now() + chrono::Duration::hours(3));
    let ranking = rank(
        &[ending, fine],
        &input(&[], &[]),
        &region,
        &region.estimator(),
    );
    assert_eq!(
        ids(&ranking),
        [
            ("fine", None),
            ("ending", Some(ExclusionReason::ShiftEnding))
        ]
    );
}

#[test]
fn preferences_reorder_near_ties_only_and_say_so() {
    let region = RegionSettings {
        tie_window_seconds: 60,
        ..RegionSettings::default()
    };
    // ~111 m per 0.001 degree; at 40 km/h * 1.4 road factor that is ~14 s per step.
    let teams = vec![
        team(
            "a",
            TeamStatus::Available,
            &[],
            Some(at(44.051, -123.09)),
            10,
        ),
        team(
            "b",
            TeamStatus::Available,
            &["lang:es"],
            Some(at(44.053, -123.09)),
            10,
        ),
        team(
            "c",
            TeamStatus::Available,
            &["lang:es"],
            Some(at(44.10, -123.09)),
            10,
        ),
    ];
    let preferred = vec![String::from("lang:es")];
    let ranking = rank(
        &teams,
        &input(&[], &preferred),
        &region,
        &region.estimator(),
    );
    let order: Vec<&str> = ranking.eligible().map(|t| t.team_id.as_str()).collect();
    assert_eq!(order, ["b", "a", "c"], "c is far outside the tie window");
    assert!(
        ranking.candidates[0]
            .rationale
            .contains("ranked ahead of faster a")
    );
    assert!(!ranking.candidates[1].rationale.contains("ranked ahead"));
}

#[test]
fn unserved_reasons_follow_the_funnel() {
    let region = RegionSettings::default();
    let required = vec![String::from("clinician")];
    let check = |teams: Vec<TeamSnapshot>, want: UnservedReason| {
        let ranking = rank(&teams, &input(&required, &[]), &region, &region.estimator());
        assert_eq!(ranking.unserved(), Some(want), "{:?}", ids(&ranking));
    };
    let near = Some(at(44.051, -123.09));
    check(vec![], UnservedReason::NoTeamsInRegion);
    check(
        vec![
            team("x", TeamStatus::OffDuty, &["clinician"], near, 1),
            team("y", TeamStatus::OutOfService, &["clinician"], near, 1),
        ],
        UnservedReason::NoTeamsInRegion,
    );
    check(
        vec![team("x", TeamStatus::Available, &["peer"], near, 1)],
        UnservedReason::MissingCapability,
    );
    check(
        vec![team("x", TeamStatus::EnRoute, &["clinician"], near, 1)],
        UnservedReason::AllBusy,
    );
    check(
        vec![
            team("x", TeamStatus::Available, &["clinician"], near, 9_999),
            team("y", TeamStatus::Available, &["clinician"], None, 0),
        ],
        UnservedReason::AllPositionsStale,
    );
    check(
        vec![team(
            "x",
            TeamStatus::Available,
            &["clinician"],
            Some(at(47.0, -123.09)),
            1,
        )],
        UnservedReason::NoTeamInRange,
    );
    let mut ending = team("x", TeamStatus::Available, &["clinician"], near, 1);
    ending.shift_ends_at = Some(now());
    check(vec![ending], UnservedReason::ShiftEnding);
}

#[test]
fn a_team_lost_to_another_call_moves_behind_and_counts_as_busy() {
    let region = RegionSettings::default();
    let teams = vec![team(
        "only",
        TeamStatus::Available,
        &[],
        Some(at(44.051, -123.09)),
        1,
    )];
    let mut ranking = rank(&teams, &input(&[], &[]), &region, &region.estimator());
    assert_eq!(ranking.unserved(), None);
    ranking.mark_claimed_by_another_call("only");
    assert_eq!(
        ids(&ranking),
        [("only", Some(ExclusionReason::ClaimedByAnotherCall))]
    );
    assert_eq!(ranking.unserved(), Some(UnservedReason::AllBusy));
}

fn arb_team(index: usize) -> impl Strategy<Value = TeamSnapshot> {
    let statuses = prop_oneof![
        4 => Just(TeamStatus::Available),
        1 => Just(TeamStatus::OnScene),
        1 => Just(TeamStatus::OffDuty),
        1 => Just(TeamStatus::OutOfService),
    ];
    (
        statuses,
        prop::collection::vec(
            prop_oneof![Just("clinician"), Just("emt"), Just("lang:es")],
            0..3,
        ),
        prop::option::weighted(0.9, (43.7..44.4_f64, -123.5..-122.7_f64)),
        0..900_i64,
        prop::option::of(0..10_800_i64),
    )
        .prop_map(move |(status, caps, point, age, shift)| {
            let mut t = team(
                &format!("t{index:03}"),
                status,
                &caps,
                point.map(|(la, lo)| at(la, lo)),
                age,
            );
            t.shift_ends_at = shift.map(|s| now() + chrono::Duration::seconds(s));
            t
        })
}

fn arb_teams() -> impl Strategy<Value = Vec<TeamSnapshot>> {
    (0..40_usize).prop_flat_map(|n| (0..n).map(arb_team).collect::<Vec<_>>())
}

proptest! {
    /// The first eligible team is the minimal-ETA team among those a brute-force scan of
    /// the hard constraints accepts (ties by team_id), and every candidate's exclusion is
    /// the first failing constraint.
    #[test]
    fn the_chosen_team_is_the_brute_force_minimum(teams in arb_teams(), need_clinician in any::<bool>()) {
        let region = RegionSettings::default();
        let estimator = GreatCircleEstimator { road_factor: region.road_factor, speed_meters_per_second: region.average_speed_kmh / 3.6 };
        let required: Vec<String> = if need_clinician { vec!["clinician".into()] } else { vec![] };
        let ranking = rank(&teams, &input(&required, &[]), &region, &estimator);

        let brute: Vec<(u32, String)> = teams.iter().filter_map(|t| {
            let p = t.position?;
            let d = great_circle_meters(p.point, INCIDENT);
            let eta = (d * region.road_factor / (region.average_speed_kmh / 3.6)).ceil() as u32;
            let ok = t.status == TeamStatus::Available
                && required.iter().all(|r| t.capabilities.contains(r))
                && (now() - p.recorded_at).num_seconds() <= region.staleness_limit_seconds as i64
                && d <= region.max_distance_meters && eta <= region.max_eta_seconds
                && t.shift_ends_at.is_none_or(|end| end >= now() + chrono::Duration::seconds(i64::from(eta) + 3_600));
            ok.then(|| (eta, t.team_id.clone()))
        }).collect();
        let best = brute.iter().min().map(|(_, id)| id.as_str());
        prop_assert_eq!(ranking.eligible().next().map(|t| t.team_id.as_str()), best);
        prop_assert_eq!(ranking.eligible().count(), brute.len());
        prop_assert_eq!(ranking.unserved().is_none(), !brute.is_empty());
        // Off-duty teams are never candidates; everyone else is, exactly once.
        let on = teams.iter().filter(|t| t.status != TeamStatus::OffDuty).count();
        prop_assert_eq!(ranking.candidates.len(), on);
        // Eligible teams come in ETA order.
        let etas: Vec<u32> = ranking.eligible().map(|t| t.eta_seconds).collect();
        prop_assert!(etas.windows(2).all(|w| w[0] <= w[1]));
    }

    /// With preferences, the chosen team is never slower than the fastest eligible team by
    /// more than the tie window, and has at least as many preferred capabilities as every
    /// team within the window.
    #[test]
    fn preferences_never_cost_more_than_the_tie_window(teams in arb_teams()) {
        let region = RegionSettings::default();
        let preferred = vec![String::from("lang:es")];
        let ranking = rank(&teams, &input(&[], &preferred), &region, &region.estimator());
        if let Some(chosen) = ranking.eligible().next() {
            let fastest = ranking.eligible().map(|t| t.eta_seconds).min().unwrap_or(0);
            prop_assert!(chosen.eta_seconds - fastest <= region.tie_window_seconds);
            for other in ranking.eligible().filter(|t| t.eta_seconds - fastest <= region.tie_window_seconds) {
                prop_assert!(chosen.matched_preferred.len() >= other.matched_preferred.len());
            }
        }
    }
}
