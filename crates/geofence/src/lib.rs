//! Positions on the Earth, sans-IO.
//!
//! - [`distance_m`]: great-circle distance.
//! - [`Shape`]: a zone's outline, a circle or a polygon, and how deep a point is inside it
//!   ([`Shape::depth_m`], negative outside), on a local flat projection (zones are a few
//!   kilometres across; the error is centimetres).
//! - [`Presence`]: whether a van is in a zone, decided with hysteresis: a GPS fix wanders
//!   by 15 m or more, so a van driving along a boundary would otherwise enter and leave it
//!   many times. A van enters once it is deeper inside than the margin (at least the fix's
//!   own accuracy) for several fixes running, and leaves the same way.
//! - [`Thinner`]: which points of a track to keep in the case record.
//!
//! No I/O, no clock: times come with the fixes.

mod presence;
mod shape;
mod thin;

pub use presence::{Presence, PresenceConfig, Transition};
pub use shape::{Shape, ShapeError};
pub use thin::{Thinner, ThinnerConfig};

/// The mean Earth radius, metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A point: degrees north and east.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatLon {
    /// Latitude, degrees, -90 to 90.
    pub lat: f64,
    /// Longitude, degrees, -180 to 180.
    pub lon: f64,
}

impl LatLon {
    /// Whether both coordinates are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite() && self.lon.is_finite() && self.lat.abs() <= 90.0 && self.lon.abs() <= 180.0
    }
}

/// One position report: where, when, and how sure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Where.
    pub at: LatLon,
    /// When, ms since the epoch.
    pub t_ms: i64,
    /// 1-sigma horizontal accuracy, metres.
    pub accuracy_m: f64,
}

/// Great-circle distance (haversine), metres.
pub fn distance_m(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dla = la2 - la1;
    let dlo = (b.lon - a.lon).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial bearing from `a` to `b`, degrees true (0 to 360).
pub fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlo = (b.lon - a.lon).to_radians();
    let y = dlo.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlo.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The point `distance_m` from `from` along `bearing_deg` (for simulators and tests).
pub fn offset(from: LatLon, bearing_deg: f64, distance_m: f64) -> LatLon {
    let d = distance_m / EARTH_RADIUS_M;
    let b = bearing_deg.to_radians();
    let la1 = from.lat.to_radians();
    let lo1 = from.lon.to_radians();
    let la2 = (la1.sin() * d.cos() + la1.cos() * d.sin() * b.cos()).asin();
    let lo2 = lo1 + (b.sin() * d.sin() * la1.cos()).atan2(d.cos() - la1.sin() * la2.sin());
    LatLon { lat: la2.to_degrees(), lon: (lo2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_known_values() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(LatLon { lat: 0.0, lon: 0.0 }, LatLon { lat: 1.0, lon: 0.0 });
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        let a = LatLon { lat: 51.5, lon: -0.12 };
        let b = offset(a, 63.0, 2500.0);
        assert!((distance_m(a, b) - 2500.0).abs() < 0.01);
        assert!((bearing_deg(a, b) - 63.0).abs() < 0.01);
    }
}
