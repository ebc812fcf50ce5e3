//! Zone outlines.

use serde::{Deserialize, Serialize};

use crate::{EARTH_RADIUS_M, LatLon, distance_m};

/// Why an outline was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// A coordinate is not a number or out of range.
    #[error("point {0} is not a latitude in -90..90 and a longitude in -180..180")]
    BadPoint(usize),
    /// A circle's radius is not positive or too large.
    #[error("the radius must be between 1 m and 100 km, not {0} m")]
    BadRadius(f64),
    /// A polygon needs three corners and no more than a thousand.
    #[error("a polygon needs 3 to 1000 corners, this one has {0}")]
    Corners(usize),
    /// A polygon is more than 200 km across or has no area.
    #[error("the polygon {0}")]
    BadPolygon(&'static str),
}

/// A zone's outline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shape {
    /// Everything within `radius_m` of `center`.
    Circle {
        /// The centre.
        center: LatLon,
        /// The radius, metres.
        radius_m: f64,
    },
    /// A simple polygon, corners in order (either direction), not closed.
    Polygon {
        /// The corners.
        points: Vec<LatLon>,
    },
}

impl Shape {
    /// Checks the outline is usable.
    pub fn validate(&self) -> Result<(), ShapeError> {
        match self {
            Shape::Circle { center, radius_m } => {
                if !center.is_valid() {
                    return Err(ShapeError::BadPoint(0));
                }
                if !(1.0..=100_000.0).contains(radius_m) {
                    return Err(ShapeError::BadRadius(*radius_m));
                }
            }
            Shape::Polygon { points } => {
                if !(3..=1000).contains(&points.len()) {
                    return Err(ShapeError::Corners(points.len()));
                }
                if let Some(i) = points.iter().position(|p| !p.is_valid()) {
                    return Err(ShapeError::BadPoint(i));
                }
                let origin = points[0];
                if points.iter().any(|p| distance_m(origin, *p) > 200_000.0) {
                    return Err(ShapeError::BadPolygon("is more than 200 km across"));
                }
                let xy: Vec<(f64, f64)> = points.iter().map(|p| project(origin, *p)).collect();
                let area: f64 = (0..xy.len())
                    .map(|i| {
                        let (a, b) = (xy[i], xy[(i + 1) % xy.len()]);
                        a.0 * b.1 - b.0 * a.1
                    })
                    .sum::<f64>()
                    / 2.0;
                if area.abs() < 1.0 {
                    return Err(ShapeError::BadPolygon("has no area"));
                }
            }
        }
        Ok(())
    }

    /// How far inside the outline `p` is, metres: positive inside, negative outside, the
    /// distance to the nearest edge either way.
    pub fn depth_m(&self, p: LatLon) -> f64 {
        match self {
            Shape::Circle { center, radius_m } => radius_m - distance_m(*center, p),
            Shape::Polygon { points } => {
                let xy: Vec<(f64, f64)> = points.iter().map(|c| project(p, *c)).collect();
                let mut inside = false;
                let mut nearest = f64::INFINITY;
                for i in 0..xy.len() {
                    let (a, b) = (xy[i], xy[(i + 1) % xy.len()]);
                    // Ray casting from the origin (p) along +x.
                    if (a.1 > 0.0) != (b.1 > 0.0) && a.0 + (0.0 - a.1) * (b.0 - a.0) / (b.1 - a.1) > 0.0 {
                        inside = !inside;
                    }
                    nearest = nearest.min(segment_distance(a, b));
                }
                if inside { nearest } else { -nearest }
            }
        }
    }
}

/// `p` in metres east and north of `origin` (equirectangular: fine within a zone).
fn project(origin: LatLon, p: LatLon) -> (f64, f64) {
    let k = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
    let mut dlon = p.lon - origin.lon;
    if dlon > 180.0 {
        dlon -= 360.0;
    } else if dlon < -180.0 {
        dlon += 360.0;
    }
    (dlon * k * origin.lat.to_radians().cos(), (p.lat - origin.lat) * k)
}

/// Distance from the origin to the segment `a`-`b`.
fn segment_distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 { 0.0 } else { (-(a.0 * dx + a.1 * dy) / len2).clamp(0.0, 1.0) };
    let (x, y) = (a.0 + t * dx, a.1 + t * dy);
    (x * x + y * y).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offset;

    fn square(center: LatLon, half_m: f64) -> Shape {
        let n = offset(center, 0.0, half_m).lat;
        let s = offset(center, 180.0, half_m).lat;
        let e = offset(center, 90.0, half_m).lon;
        let w = offset(center, 270.0, half_m).lon;
        Shape::Polygon {
            points: vec![
                LatLon { lat: s, lon: w },
                LatLon { lat: s, lon: e },
                LatLon { lat: n, lon: e },
                LatLon { lat: n, lon: w },
            ],
        }
    }

    #[test]
    fn depth_is_signed_distance_to_the_edge() {
        let c = LatLon { lat: 52.0, lon: 13.0 };
        let sq = square(c, 500.0);
        sq.validate().unwrap();
        assert!((sq.depth_m(c) - 500.0).abs() < 1.0);
        assert!((sq.depth_m(offset(c, 90.0, 400.0)) - 100.0).abs() < 1.0);
        assert!((sq.depth_m(offset(c, 90.0, 600.0)) + 100.0).abs() < 1.0);
        let circle = Shape::Circle { center: c, radius_m: 300.0 };
        assert!((circle.depth_m(offset(c, 10.0, 350.0)) + 50.0).abs() < 0.01);
    }

    #[test]
    fn bad_outlines_are_refused() {
        let c = LatLon { lat: 52.0, lon: 13.0 };
        assert_eq!(Shape::Polygon { points: vec![c, c] }.validate(), Err(ShapeError::Corners(2)));
        assert!(Shape::Polygon { points: vec![c, c, c] }.validate().is_err());
        assert!(Shape::Circle { center: LatLon { lat: 95.0, lon: 0.0 }, radius_m: 5.0 }.validate().is_err());
        assert!(Shape::Circle { center: c, radius_m: f64::NAN }.validate().is_err());
    }

    #[test]
    fn zones_across_the_antimeridian_work() {
        let c = LatLon { lat: -17.0, lon: 179.999 };
        let sq = square(c, 1000.0);
        assert!(sq.depth_m(LatLon { lat: -17.0, lon: -179.999 }) > 700.0);
    }
}
