//! Which points of a track to keep in the case record: enough to draw the route and
//! measure its length to within a few percent, a point every hundred metres or so on a
//! straight road rather than one a second.

use crate::{Fix, bearing_deg, distance_m};

/// When to keep a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThinnerConfig {
    /// Keep a point this far from the last kept, metres.
    pub distance_m: f64,
    /// Keep a point where the heading turned this much since the last kept, degrees, if
    /// it is at least `min_turn_distance_m` away.
    pub turn_deg: f64,
    /// See `turn_deg`.
    pub min_turn_distance_m: f64,
    /// Keep a point this long after the last kept, ms, if it moved at all (over noise).
    pub interval_ms: i64,
}

impl Default for ThinnerConfig {
    fn default() -> Self {
        ThinnerConfig { distance_m: 150.0, turn_deg: 30.0, min_turn_distance_m: 40.0, interval_ms: 120_000 }
    }
}

/// Decides point by point.
#[derive(Debug, Clone, Default)]
pub struct Thinner {
    cfg: ThinnerConfig,
    last: Option<Fix>,
    heading: Option<f64>,
}

impl Thinner {
    /// A thinner that keeps the first point it sees.
    pub fn new(cfg: ThinnerConfig) -> Thinner {
        Thinner { cfg, last: None, heading: None }
    }

    /// Whether to keep `fix`.
    pub fn keep(&mut self, fix: &Fix) -> bool {
        let Some(last) = self.last else {
            self.last = Some(*fix);
            return true;
        };
        if fix.t_ms <= last.t_ms {
            return false;
        }
        let d = distance_m(last.at, fix.at);
        let heading = bearing_deg(last.at, fix.at);
        let turned = self.heading.map_or(0.0, |h| {
            let x = (heading - h).rem_euclid(360.0);
            x.min(360.0 - x)
        });
        let keep = d >= self.cfg.distance_m
            || (turned >= self.cfg.turn_deg && d >= self.cfg.min_turn_distance_m)
            || (fix.t_ms - last.t_ms >= self.cfg.interval_ms && d >= 2.0 * fix.accuracy_m);
        if keep {
            self.heading = Some(heading);
            self.last = Some(*fix);
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LatLon, offset};

    #[test]
    fn a_straight_road_keeps_few_points_and_its_length() {
        let mut th = Thinner::new(ThinnerConfig::default());
        let mut p = LatLon { lat: 50.0, lon: 8.0 };
        let mut kept = vec![];
        // 10 km east at 20 m/s, then 5 km north.
        for t in 0..750i64 {
            let fix = Fix { at: p, t_ms: t * 1000, accuracy_m: 5.0 };
            if th.keep(&fix) {
                kept.push(p);
            }
            p = offset(p, if t < 500 { 90.0 } else { 0.0 }, 20.0);
        }
        assert!(kept.len() < 120, "{} points kept of 750", kept.len());
        let length: f64 = kept.windows(2).map(|w| distance_m(w[0], w[1])).sum();
        assert!((length - 14_980.0).abs() < 300.0, "{length}");
    }

    #[test]
    fn a_parked_van_adds_nothing() {
        let mut th = Thinner::new(ThinnerConfig::default());
        let p = LatLon { lat: 50.0, lon: 8.0 };
        let kept = (0..3600i64)
            .filter(|t| th.keep(&Fix { at: offset(p, (*t * 37 % 360) as f64, 8.0), t_ms: t * 1000, accuracy_m: 15.0 }))
            .count();
        assert_eq!(kept, 1);
    }
}
