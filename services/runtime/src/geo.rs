//! The one geometry of Relay: positions, great-circle distances and search boxes.
//!
//! Availability's Redis index, routing's ranking bound and directory's near search all compare
//! distances with each other, so they must come from one formula and one Earth radius. The
//! radius is the one Redis' GEO commands use: the exact distance computed here and the distance
//! Redis' `GEOSEARCH` filters by then agree to within the index's quantization (well under a
//! meter), and a team Redis found within a radius is never dropped by the exact check.

/// Earth radius in meters for every great-circle distance in Relay. It is Redis' GEO radius
/// (`src/geohash_helper.c`), 0.03% above the IUGG mean radius of 6,371,008.8 m.
pub const EARTH_RADIUS_METERS: f64 = 6_372_797.560_856;

/// A WGS84 position in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Latitude, -90..90.
    pub latitude: f64,
    /// Longitude, -180..180.
    pub longitude: f64,
}

impl Point {
    /// A point from latitude and longitude in decimal degrees.
    #[must_use]
    pub const fn new(latitude: f64, longitude: f64) -> Self {
        Self {
            latitude,
            longitude,
        }
    }
}

/// Great-circle (haversine) distance in meters between two points.
#[must_use]
pub fn distance_meters(a: Point, b: Point) -> f64 {
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_METERS * h.sqrt().min(1.0).asin()
}

/// A latitude/longitude box, in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    /// Southern edge.
    pub min_latitude: f64,
    /// Northern edge.
    pub max_latitude: f64,
    /// Western edge.
    pub min_longitude: f64,
    /// Eastern edge.
    pub max_longitude: f64,
}

impl BoundingBox {
    /// Whether `point` lies in the box (edges included).
    #[must_use]
    pub fn contains(&self, point: Point) -> bool {
        (self.min_latitude..=self.max_latitude).contains(&point.latitude)
            && (self.min_longitude..=self.max_longitude).contains(&point.longitude)
    }
}

/// A box that contains every point within `radius_meters` of `center`, for an index scan
/// before the exact distance check. Near a pole or across the antimeridian it widens to every
/// longitude rather than wrap, which is correct and rare.
#[must_use]
pub fn bounding_box(center: Point, radius_meters: f64) -> BoundingBox {
    // 0.1% of slack so that rounding never excludes a point exactly on the circle.
    let dlat = (radius_meters / EARTH_RADIUS_METERS).to_degrees() * 1.001;
    let min_latitude = (center.latitude - dlat).max(-90.0);
    let max_latitude = (center.latitude + dlat).min(90.0);
    let all_longitudes = BoundingBox {
        min_latitude,
        max_latitude,
        min_longitude: -180.0,
        max_longitude: 180.0,
    };
    let widest = min_latitude.abs().max(max_latitude.abs());
    if widest >= 89.0 {
        return all_longitudes;
    }
    let dlon = dlat / widest.to_radians().cos();
    let (min_longitude, max_longitude) = (center.longitude - dlon, center.longitude + dlon);
    if min_longitude < -180.0 || max_longitude > 180.0 {
        all_longitudes
    } else {
        BoundingBox {
            min_latitude,
            max_latitude,
            min_longitude,
            max_longitude,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTLAND: Point = Point::new(45.5152, -122.6784);
    const EUGENE: Point = Point::new(44.0521, -123.0868);

    #[test]
    fn distance_matches_known_values() {
        let d = distance_meters(EUGENE, PORTLAND);
        assert!((d - 165_000.0).abs() < 2_000.0, "{d}");
        assert!(distance_meters(EUGENE, EUGENE).abs() < 1e-9);
        let antipode = distance_meters(Point::new(0.0, 0.0), Point::new(0.0, 180.0));
        assert!((antipode - std::f64::consts::PI * EARTH_RADIUS_METERS).abs() < 1.0);
    }

    #[test]
    fn a_box_holds_every_point_of_its_circle() {
        let d = distance_meters(PORTLAND, EUGENE);
        assert!(bounding_box(PORTLAND, d).contains(EUGENE));
        assert!(
            !bounding_box(PORTLAND, d * 0.9)
                .contains(Point::new(EUGENE.latitude, PORTLAND.longitude))
        );
        let polar = bounding_box(Point::new(89.5, 10.0), 100_000.0);
        assert_eq!((polar.min_longitude, polar.max_longitude), (-180.0, 180.0));
        let dateline = bounding_box(Point::new(0.0, 179.9), 50_000.0);
        assert_eq!(
            (dateline.min_longitude, dateline.max_longitude),
            (-180.0, 180.0)
        );
    }
}
