//! The synthetic world of a simulation, generated from a seed alone.
//!
//! The same seed and parameters always give the same teams and calls (ChaCha8, whose output
//! is fixed across platforms and releases).
//!
//! Where the mix comes from (`shared/reference/field-practice.md`, section 3):
//! - Call types: welfare checks are the most common community-response call in Denver STAR's
//!   2022 data and in Albuquerque ACS's top types (with unsheltered individuals and behavioral
//!   health); CAHOOTS lists welfare checks, conflict, substance use, suicide threats and
//!   non-emergent medical. The weights below follow that order: WELFARE 30%, EDP (mental
//!   health) 20%, INTOX 14%, TRESPASS (unsheltered person) 12%, SUICTHRT 8%, NOISE / dispute
//!   6%, DRUGS 4%, PERUNCON 3%, OD 3%.
//! - Risk flags: STAR and B-HEARD exclude calls with weapons, violence or imminent harm, and
//!   CAHOOTS needed police backup on about 150 of 24,000 calls (0.6%); the simulator flags a
//!   minority of calls so that the protocol's exclusions and co-responses are exercised:
//!   weapons 3%, violence 4%, medical emergency 5% (higher on OD and PERUNCON), suicide risk
//!   with means 15% of suicide threats.
//! - Teams: STAR and CAHOOTS pair a medic (EMT or paramedic) with a clinician or crisis
//!   worker; B-HEARD adds a social worker to two EMTs. Every simulated team is
//!   `clinician` + `emt` or `paramedic`; some add `peer`, and about 30% speak Spanish
//!   (`lang:es`).
//! - Time on scene: B-HEARD's mean response under 14 minutes and CAHOOTS' volume suggest
//!   calls of 20 to 90 minutes on scene; the simulator draws a log-normal with a median of 35
//!   minutes, clamped to 10..120.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relay_proto::{common::GeoPoint, intake::RiskFlag};

/// Parameters of a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioConfig {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// How many teams are on shift.
    pub teams: usize,
    /// Mean arrival rate of calls, per simulated hour.
    pub calls_per_hour: f64,
    /// Simulated duration, seconds.
    pub duration_seconds: u64,
    /// Center of the metro area.
    pub center: GeoPoint,
    /// Radius of the metro area, meters.
    pub radius_meters: f64,
    /// The region every team and call belongs to.
    pub region: String,
    /// The CAD system the calls come from.
    pub cad_system: String,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            teams: 8,
            calls_per_hour: 12.0,
            duration_seconds: 4 * 3600,
            // Portland, Oregon: the metro `relay directory generate` fills with services, so
            // referrals at the close of a call find some nearby.
            center: GeoPoint {
                latitude: 45.5152,
                longitude: -122.6784,
            },
            radius_meters: 9_000.0,
            region: String::from("metro"),
            cad_system: String::from("sim-cad"),
        }
    }
}

/// One simulated team.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamPlan {
    /// Its id (`team-01`, ...).
    pub team_id: String,
    /// Its display name.
    pub display_name: String,
    /// Its capability tags.
    pub capabilities: Vec<String>,
    /// Where it waits between calls.
    pub base: GeoPoint,
    /// When its shift ends, seconds after the simulation starts (`None`: after the end).
    pub shift_ends_after_seconds: Option<u64>,
}

/// One simulated call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPlan {
    /// When it arrives, seconds after the simulation starts.
    pub arrives_after_seconds: u64,
    /// The CAD's id for it (`sim-1-000042`).
    pub cad_incident_id: String,
    /// Its APCO common incident type.
    pub incident_type: &'static str,
    /// 1 (highest) .. 5.
    pub priority: i32,
    /// Where it is.
    pub location: GeoPoint,
    /// A street address for it.
    pub address: String,
    /// Its risk flags.
    pub risk_flags: Vec<RiskFlag>,
    /// How long a team spends on scene, seconds.
    pub on_scene_seconds: u64,
    /// Whether the call ends with a referral to a service.
    pub ends_with_referral: bool,
    /// Preferred capabilities (a Spanish-speaking caller prefers `lang:es`).
    pub preferred_capabilities: Vec<String>,
}

/// Everything a simulation will do, decided up front.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The parameters it came from.
    pub config: ScenarioConfig,
    /// The teams.
    pub teams: Vec<TeamPlan>,
    /// The calls, in arrival order.
    pub calls: Vec<CallPlan>,
}

/// Incident types and their weights (percent), see the module documentation.
pub const CALL_MIX: [(&str, u32, i32); 9] = [
    // (type, weight, priority)
    ("WELFARE", 30, 3),
    ("EDP", 20, 2),
    ("INTOX", 14, 3),
    ("TRESPASS", 12, 4),
    ("SUICTHRT", 8, 2),
    ("NOISE", 6, 4),
    ("DRUGS", 4, 3),
    ("PERUNCON", 3, 2),
    ("OD", 3, 1),
];

const STREETS: [&str; 12] = [
    "Willamette St",
    "Pearl St",
    "High St",
    "Oak St",
    "Olive St",
    "Lincoln St",
    "W 11th Ave",
    "W 13th Ave",
    "E 18th Ave",
    "River Rd",
    "Coburg Rd",
    "Franklin Blvd",
];

/// A point uniformly distributed in the disk of `radius` meters around `center`.
fn point_in_disk(rng: &mut ChaCha8Rng, center: GeoPoint, radius: f64) -> GeoPoint {
    let distance = radius * rng.random::<f64>().sqrt();
    let bearing = rng.random::<f64>() * std::f64::consts::TAU;
    let meters_per_degree = 111_320.0;
    let latitude = center.latitude + distance * bearing.cos() / meters_per_degree;
    let longitude = center.longitude
        + distance * bearing.sin() / (meters_per_degree * center.latitude.to_radians().cos());
    GeoPoint {
        latitude: (latitude * 1e6).round() / 1e6,
        longitude: (longitude * 1e6).round() / 1e6,
    }
}

/// A log-normal draw with the given median and shape, by Box-Muller.
fn log_normal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    median * (sigma * normal).exp()
}

fn chance(rng: &mut ChaCha8Rng, percent: f64) -> bool {
    rng.random::<f64>() * 100.0 < percent
}

/// Generates the scenario of `config`.
#[must_use]
pub fn generate(config: &ScenarioConfig) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let teams = (0..config.teams)
        .map(|index| {
            let mut capabilities = vec![String::from("clinician")];
            capabilities.push(
                if chance(&mut rng, 40.0) {
                    "paramedic"
                } else {
                    "emt"
                }
                .to_owned(),
            );
            if chance(&mut rng, 25.0) {
                capabilities.push(String::from("peer"));
            }
            if chance(&mut rng, 30.0) {
                capabilities.push(String::from("lang:es"));
            }
            capabilities.sort();
            // A quarter of the teams go off shift part-way through.
            let shift_ends_after_seconds = chance(&mut rng, 25.0).then(|| {
                config.duration_seconds / 2 + rng.random_range(0..=config.duration_seconds / 2)
            });
            TeamPlan {
                team_id: format!("team-{:02}", index + 1),
                display_name: format!("Unit {}", index + 1),
                capabilities,
                base: point_in_disk(&mut rng, config.center, config.radius_meters * 0.6),
                shift_ends_after_seconds,
            }
        })
        .collect();

    let total_weight: u32 = CALL_MIX.iter().map(|(_, w, _)| w).sum();
    let mut calls = Vec::new();
    let mut clock = 0.0_f64;
    let mean_gap = 3600.0 / config.calls_per_hour.max(0.001);
    loop {
        // Poisson arrivals: exponential gaps.
        clock += -mean_gap * (1.0 - rng.random::<f64>()).ln();
        #[allow(clippy::cast_precision_loss)]
        if clock >= config.duration_seconds as f64 {
            break;
        }
        let mut pick = rng.random_range(0..total_weight);
        let (incident_type, _, mut priority) = *CALL_MIX
            .iter()
            .find(|(_, weight, _)| {
                let hit = pick < *weight;
                pick = pick.saturating_sub(*weight);
                hit
            })
            .unwrap_or(&CALL_MIX[0]);
        let mut risk_flags = Vec::new();
        if chance(&mut rng, 3.0) {
            risk_flags.push(RiskFlag::Weapons);
        }
        if chance(&mut rng, 4.0) {
            risk_flags.push(RiskFlag::Violence);
        }
        let medical = if matches!(incident_type, "OD" | "PERUNCON") {
            40.0
        } else {
            5.0
        };
        if chance(&mut rng, medical) {
            risk_flags.push(RiskFlag::MedicalEmergency);
            priority = priority.min(2);
        }
        if incident_type == "SUICTHRT" && chance(&mut rng, 15.0) {
            risk_flags.push(RiskFlag::SuicideRiskWithMeans);
        }
        let spanish = chance(&mut rng, 20.0);
        let number = calls.len() + 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let on_scene_seconds = (log_normal(&mut rng, 35.0, 0.5).clamp(10.0, 120.0) * 60.0) as u64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let arrives_after_seconds = clock as u64;
        calls.push(CallPlan {
            arrives_after_seconds,
            cad_incident_id: format!("sim-{}-{number:06}", config.seed),
            incident_type,
            priority,
            location: point_in_disk(&mut rng, config.center, config.radius_meters),
            address: format!(
                "{} {}",
                rng.random_range(100..3000),
                STREETS[rng.random_range(0..STREETS.len())]
            ),
            risk_flags,
            on_scene_seconds,
            ends_with_referral: chance(&mut rng, 45.0),
            preferred_capabilities: if spanish {
                vec![String::from("lang:es")]
            } else {
                Vec::new()
            },
        });
    }
    Scenario {
        config: config.clone(),
        teams,
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let config = ScenarioConfig::default();
        assert_eq!(generate(&config), generate(&config));
        let other = generate(&ScenarioConfig {
            seed: 2,
            ..config.clone()
        });
        assert_ne!(generate(&config).calls, other.calls);
    }

    #[test]
    fn arrivals_follow_the_configured_rate() {
        let config = ScenarioConfig {
            calls_per_hour: 30.0,
            duration_seconds: 200 * 3600,
            ..ScenarioConfig::default()
        };
        let scenario = generate(&config);
        #[allow(clippy::cast_precision_loss)]
        let rate = scenario.calls.len() as f64 / 200.0;
        assert!((rate - 30.0).abs() < 2.0, "{rate} calls per hour");
        assert!(
            scenario
                .calls
                .windows(2)
                .all(|w| w[0].arrives_after_seconds <= w[1].arrives_after_seconds)
        );
    }

    #[test]
    fn the_mix_and_the_world_stay_in_bounds() {
        let config = ScenarioConfig {
            calls_per_hour: 60.0,
            duration_seconds: 100 * 3600,
            ..ScenarioConfig::default()
        };
        let scenario = generate(&config);
        let welfare = scenario
            .calls
            .iter()
            .filter(|c| c.incident_type == "WELFARE")
            .count();
        #[allow(clippy::cast_precision_loss)]
        let share = welfare as f64 / scenario.calls.len() as f64;
        assert!((share - 0.30).abs() < 0.03, "welfare share {share}");
        for call in &scenario.calls {
            let d = ((call.location.latitude - config.center.latitude) * 111_320.0).hypot(
                (call.location.longitude - config.center.longitude)
                    * 111_320.0
                    * config.center.latitude.to_radians().cos(),
            );
            assert!(d <= config.radius_meters * 1.001, "{d} m from the center");
            assert!((1..=5).contains(&call.priority));
            assert!((600..=7_200).contains(&call.on_scene_seconds));
        }
        for team in &scenario.teams {
            assert!(team.capabilities.contains(&String::from("clinician")));
            assert!(
                team.capabilities
                    .iter()
                    .any(|c| c == "emt" || c == "paramedic"),
                "{team:?}"
            );
        }
        let flagged = scenario
            .calls
            .iter()
            .filter(|c| !c.risk_flags.is_empty())
            .count();
        assert!(
            flagged > 0 && flagged < scenario.calls.len() / 4,
            "{flagged} flagged"
        );
    }
}
