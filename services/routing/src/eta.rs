//! Estimated time of arrival.
//!
//! Nearest means shortest ETA, not straight-line distance alone. The default estimator is the
//! great-circle distance times the region's road factor, over the region's average speed. The
//! estimator is a trait so that a road-network engine (OSRM, Valhalla) can replace it.

use relay_proto::common::GeoPoint;

pub use relay_runtime::geo::EARTH_RADIUS_METERS;
use relay_runtime::geo::{Point, distance_meters};

/// Great-circle distance between two points in meters (haversine), in the one geometry
/// availability's index and the directory use too.
#[must_use]
pub fn great_circle_meters(a: GeoPoint, b: GeoPoint) -> f64 {
    distance_meters(
        Point::new(a.latitude, a.longitude),
        Point::new(b.latitude, b.longitude),
    )
}

/// One estimate: how far and how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Great-circle distance, meters.
    pub distance_meters: f64,
    /// Estimated travel time, whole seconds (rounded up).
    pub eta_seconds: u32,
}

/// Estimates travel from a team's position to an incident.
pub trait EtaEstimator: Send + Sync + std::fmt::Debug {
    /// The estimate from `from` to `to`.
    fn estimate(&self, from: GeoPoint, to: GeoPoint) -> Estimate;

    /// A lower bound of the ETA of every team at least `distance_meters` away (great-circle),
    /// when the estimator can give one. Routing then ranks from the nearest teams only; an
    /// estimator that cannot (road networks, say) makes it rank the whole region.
    fn min_eta_beyond(&self, _distance_meters: f64) -> Option<u32> {
        None
    }
}

/// Great-circle distance times a road factor, over an average speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreatCircleEstimator {
    /// How much longer roads are than the straight line (1.0 or more; 1.3-1.5 in cities).
    pub road_factor: f64,
    /// Average driving speed in meters per second (more than 0).
    pub speed_meters_per_second: f64,
}

impl EtaEstimator for GreatCircleEstimator {
    fn estimate(&self, from: GeoPoint, to: GeoPoint) -> Estimate {
        let distance_meters = great_circle_meters(from, to);
        Estimate {
            distance_meters,
            eta_seconds: self.eta_seconds(distance_meters),
        }
    }

    /// The ETA grows with the distance, so the ETA at the distance itself is the bound.
    fn min_eta_beyond(&self, distance_meters: f64) -> Option<u32> {
        Some(self.eta_seconds(distance_meters))
    }
}

impl GreatCircleEstimator {
    fn eta_seconds(&self, distance_meters: f64) -> u32 {
        let seconds = (distance_meters * self.road_factor / self.speed_meters_per_second).ceil();
        // Clamped: the range check excludes anything this far long before it matters.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let eta = seconds.clamp(0.0, f64::from(u32::MAX)) as u32;
        eta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(latitude: f64, longitude: f64) -> GeoPoint {
        GeoPoint {
            latitude,
            longitude,
        }
    }

    #[test]
    fn distances_match_known_values() {
        // Eugene, OR to Portland, OR: about 170 km as the crow flies.
        let d = great_circle_meters(point(44.0521, -123.0868), point(45.5152, -122.6784));
        assert!((d - 166_400.0).abs() < 2_000.0, "{d}");
        // One degree of latitude is about 111.2 km (111,226 m on Redis' Earth radius).
        let d = great_circle_meters(point(0.0, 0.0), point(1.0, 0.0));
        assert!((d - 111_226.3).abs() < 10.0, "{d}");
        assert!(great_circle_meters(point(10.0, 20.0), point(10.0, 20.0)).abs() < 1e-9);
        // Antipodes do not overflow asin.
        let d = great_circle_meters(point(0.0, 0.0), point(0.0, 180.0));
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_METERS).abs() < 1.0);
    }

    #[test]
    fn eta_is_distance_times_road_factor_over_speed_rounded_up() {
        let estimator = GreatCircleEstimator {
            road_factor: 1.5,
            speed_meters_per_second: 10.0,
        };
        let e = estimator.estimate(point(0.0, 0.0), point(0.01, 0.0));
        // 1112.26 m * 1.5 / 10 = 166.8 s -> 167 s.
        assert_eq!(e.eta_seconds, 167);
        assert!((e.distance_meters - 1_112.26).abs() < 0.1);
    }
}
