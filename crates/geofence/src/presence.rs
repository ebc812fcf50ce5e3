//! Whether a van is in a zone, with hysteresis against GPS noise.

use crate::{Fix, Shape};

/// How sure the decision must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresenceConfig {
    /// A fix counts as inside (outside) only this deep inside (outside) the outline, metres,
    /// or the fix's own accuracy if larger.
    pub margin_m: f64,
    /// Fixes running that must agree before the state changes.
    pub confirm: u32,
    /// A gap between fixes longer than this starts the count again, ms.
    pub max_gap_ms: i64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        // 15 m is a phone-grade receiver's 1-sigma in a street; 30 m is twice that, and three
        // fixes at 1 Hz all beyond it by chance is about (2.3%)^3.
        PresenceConfig { margin_m: 30.0, confirm: 3, max_gap_ms: 30_000 }
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The van entered the zone; `at_ms` is the first fix of the run that decided it.
    Entered {
        /// When.
        at_ms: i64,
    },
    /// The van left the zone.
    Left {
        /// When.
        at_ms: i64,
    },
}

/// One van's presence in one zone. Starts outside.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    inside: bool,
    run: u32,
    run_start: i64,
    last_ms: Option<i64>,
}

impl Presence {
    /// A van not (yet) in the zone.
    pub fn new() -> Presence {
        Presence::default()
    }

    /// Whether the van is in the zone, as decided so far.
    pub fn is_inside(&self) -> bool {
        self.inside
    }

    /// Takes the next fix (in time order; an older one is ignored).
    pub fn update(&mut self, zone: &Shape, fix: &Fix, cfg: &PresenceConfig) -> Option<Transition> {
        if self.last_ms.is_some_and(|t| fix.t_ms <= t) || !fix.at.is_valid() {
            return None;
        }
        if self.last_ms.is_some_and(|t| fix.t_ms - t > cfg.max_gap_ms) {
            self.run = 0;
        }
        self.last_ms = Some(fix.t_ms);
        let margin = cfg.margin_m.max(fix.accuracy_m);
        let depth = zone.depth_m(fix.at);
        let against = if self.inside { depth < -margin } else { depth > margin };
        if !against {
            self.run = 0;
            return None;
        }
        if self.run == 0 {
            self.run_start = fix.t_ms;
        }
        self.run += 1;
        if self.run < cfg.confirm.max(1) {
            return None;
        }
        self.run = 0;
        self.inside = !self.inside;
        Some(if self.inside {
            Transition::Entered { at_ms: self.run_start }
        } else {
            Transition::Left { at_ms: self.run_start }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LatLon, offset};
    use rand::{RngExt, SeedableRng};

    fn gauss(rng: &mut impl RngExt) -> f64 {
        // Box-Muller.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let v: f64 = rng.random_range(0.0..1.0);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A van drives east at 15 m/s along a line that runs 10 m outside the zone's edge for a
    /// kilometre, then turns in. With 15 m noise, the naive test (inside or not) flips many
    /// times; presence enters once, after the turn.
    #[test]
    fn noise_along_an_edge_gives_one_entry_after_the_real_one() {
        let center = LatLon { lat: 48.0, lon: 11.0 };
        let zone = Shape::Circle { center, radius_m: 2000.0 };
        let cfg = PresenceConfig::default();
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut p = Presence::new();
            let mut naive_flips = 0;
            let mut naive_inside = false;
            let mut entries = Vec::new();
            // Along the edge: a point 2010 m from the centre, moving round it.
            for t in 0..120i64 {
                let angle = t as f64 * 15.0 / 2010.0 * 57.3;
                let (truth, truly_in) = if t < 70 {
                    (offset(center, angle, 2010.0), false)
                } else {
                    (offset(center, angle, 2010.0 - (t - 70) as f64 * 15.0), 2010.0 - (t - 70) as f64 * 15.0 < 2000.0)
                };
                let noisy = offset(offset(truth, 0.0, 15.0 * gauss(&mut rng)), 90.0, 15.0 * gauss(&mut rng));
                let fix = Fix { at: noisy, t_ms: t * 1000, accuracy_m: 15.0 };
                if (zone.depth_m(noisy) > 0.0) != naive_inside {
                    naive_inside = !naive_inside;
                    naive_flips += 1;
                }
                if let Some(tr) = p.update(&zone, &fix, &cfg) {
                    entries.push((tr, truly_in, t));
                }
            }
            assert!(naive_flips > 4, "seed {seed}: the noise should fool a naive test ({naive_flips})");
            assert_eq!(entries.len(), 1, "seed {seed}: {entries:?}");
            let (tr, truly_in, t) = entries[0];
            assert!(matches!(tr, Transition::Entered { .. }) && truly_in, "seed {seed}: {entries:?}");
            // The real crossing is at t = 71; 30 m margin at 15 m/s plus three fixes.
            assert!((71..=80).contains(&t), "seed {seed}: entered at {t}");
        }
    }

    #[test]
    fn leaving_needs_the_same_confirmation_and_old_fixes_are_ignored() {
        let center = LatLon { lat: 0.0, lon: 0.0 };
        let zone = Shape::Circle { center, radius_m: 100.0 };
        let cfg = PresenceConfig { margin_m: 10.0, confirm: 2, max_gap_ms: 30_000 };
        let mut p = Presence::new();
        let at = |m: f64, t: i64| Fix { at: offset(center, 0.0, m), t_ms: t, accuracy_m: 5.0 };
        assert_eq!(p.update(&zone, &at(0.0, 1), &cfg), None);
        assert_eq!(p.update(&zone, &at(0.0, 2), &cfg), Some(Transition::Entered { at_ms: 1 }));
        assert_eq!(p.update(&zone, &at(200.0, 1), &cfg), None, "older than the last fix");
        assert_eq!(p.update(&zone, &at(200.0, 3), &cfg), None);
        assert_eq!(p.update(&zone, &at(95.0, 4), &cfg), None, "within the margin: no vote");
        assert_eq!(p.update(&zone, &at(200.0, 5), &cfg), None);
        assert_eq!(p.update(&zone, &at(200.0, 60_000), &cfg), None, "after a gap the count starts again");
        assert_eq!(p.update(&zone, &at(200.0, 61_000), &cfg), Some(Transition::Left { at_ms: 60_000 }));
        assert!(!p.is_inside());
    }
}
