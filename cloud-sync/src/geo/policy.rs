//! Geofence decisions, sans-IO: which zone a van entered or left, and what follows from
//! it. The service around it (`mod.rs`) stores and audits each decision and tells people.

use std::collections::HashMap;

use geofence::{Fix, LatLon, Presence, PresenceConfig, Shape, Transition};
use serde::{Deserialize, Serialize};

/// What a zone is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// An area the organisation serves: consults requested inside go to its doctors; a
    /// consult requested outside every service area goes to the regional pool.
    ServiceArea,
    /// The approach to a hospital: a van with an active case entering it raises a
    /// pre-arrival alert to the hospital's receiving team.
    HospitalApproach,
}

/// A zone as an administrator defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Its id (assigned by the hub).
    #[serde(default)]
    pub id: String,
    /// A name for people, like "St Mary's approach".
    pub name: String,
    /// What it is for.
    pub kind: ZoneKind,
    /// Its outline.
    pub shape: Shape,
    /// Hospital approach: the receiving team (user names) alerted, who may join the call.
    #[serde(default)]
    pub team: Vec<String>,
    /// Service area: the doctors (user names) its consults go to while on call.
    #[serde(default)]
    pub doctors: Vec<String>,
    /// Meant to have consult recordings made in this zone deleted from the van once the hub
    /// has verified its copy. Stored; not enforced yet (the van does not know the zones).
    #[serde(default)]
    pub delete_recordings_after_upload: bool,
}

/// Why a zone definition was refused.
pub fn check(zone: &Zone) -> Result<(), String> {
    let name = zone.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err("name must be 1 to 100 characters".into());
    }
    zone.shape.validate().map_err(|e| format!("shape: {e}"))?;
    // Presence needs a fix 30 m or more inside (GPS noise): a smaller zone could never be
    // entered.
    let deepest = match &zone.shape {
        Shape::Circle { radius_m, .. } => *radius_m,
        Shape::Polygon { points } => {
            let n = points.len() as f64;
            let centre = LatLon {
                lat: points.iter().map(|p| p.lat).sum::<f64>() / n,
                lon: points.iter().map(|p| p.lon).sum::<f64>() / n,
            };
            zone.shape.depth_m(centre)
        }
    };
    if deepest < 60.0 {
        return Err(
            "the zone must reach at least 60 m inside (GPS fixes wander by 15 m or more); draw it larger".into()
        );
    }
    let names = zone.team.iter().chain(&zone.doctors);
    if let Some(bad) = names.clone().find(|u| u.is_empty() || u.len() > 64) {
        return Err(format!("'{bad}' is not a user name"));
    }
    if zone.team.len() + zone.doctors.len() > 200 {
        return Err("at most 200 people per zone".into());
    }
    match zone.kind {
        ZoneKind::HospitalApproach if !zone.doctors.is_empty() => {
            Err("a hospital approach zone has a team, not doctors".into())
        }
        ZoneKind::ServiceArea if !zone.team.is_empty() => Err("a service area has doctors, not a team".into()),
        _ => Ok(()),
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The van entered the zone (its presence confirmed over several fixes).
    Entered {
        /// The zone.
        zone: String,
        /// When (GPS time of the first fix of the run that decided it).
        at_ms: i64,
    },
    /// The van left the zone.
    Left {
        /// The zone.
        zone: String,
        /// When.
        at_ms: i64,
    },
    /// Alert the zone's team: the van entered a hospital approach with this active case.
    Alert {
        /// The zone.
        zone: String,
        /// The case (its id as the van reported it).
        case: [u8; 16],
        /// When.
        at_ms: i64,
    },
}

/// Every van's presence in every zone of one organisation.
#[derive(Debug, Default)]
pub struct Tracker {
    cfg: PresenceConfig,
    presence: HashMap<(String, String), Presence>,
    /// The last case each van was decided to bring into each approach zone.
    alerted: HashMap<(String, String), [u8; 16]>,
}

impl Tracker {
    /// A tracker with the default hysteresis.
    pub fn new(cfg: PresenceConfig) -> Tracker {
        Tracker { cfg, presence: HashMap::new(), alerted: HashMap::new() }
    }

    /// Takes a van's position; returns what it decided.
    pub fn position(&mut self, van: &str, fix: &Fix, case: Option<[u8; 16]>, zones: &[Zone]) -> Vec<Decision> {
        let mut out = Vec::new();
        for z in zones {
            let key = (van.to_owned(), z.id.clone());
            let p = self.presence.entry(key.clone()).or_default();
            let mut entered_at = None;
            match p.update(&z.shape, fix, &self.cfg) {
                Some(Transition::Entered { at_ms }) => {
                    entered_at = Some(at_ms);
                    out.push(Decision::Entered { zone: z.id.clone(), at_ms });
                }
                Some(Transition::Left { at_ms }) => {
                    out.push(Decision::Left { zone: z.id.clone(), at_ms });
                    self.alerted.remove(&key);
                }
                None => {}
            }
            // A van with a case in a hospital's approach: on entering, or when the crew opens
            // the case inside the zone (a scene near the hospital).
            if let (ZoneKind::HospitalApproach, Some(case), true) = (z.kind, case, p.is_inside())
                && self.alerted.get(&key) != Some(&case)
            {
                self.alerted.insert(key, case);
                out.push(Decision::Alert { zone: z.id.clone(), case, at_ms: entered_at.unwrap_or(fix.t_ms) });
            }
        }
        // A zone deleted meanwhile is forgotten.
        self.presence.retain(|(v, z), _| v != van || zones.iter().any(|x| &x.id == z));
        self.alerted.retain(|(v, z), _| v != van || zones.iter().any(|x| &x.id == z));
        out
    }

    /// The zones the van is in, as decided.
    pub fn inside(&self, van: &str) -> Vec<String> {
        self.presence.iter().filter(|((v, _), p)| v == van && p.is_inside()).map(|((_, z), _)| z.clone()).collect()
    }
}

/// The service areas a point lies in (no hysteresis: for a one-off decision such as where
/// a consult goes).
pub fn service_areas_at(zones: &[Zone], at: LatLon) -> Vec<&Zone> {
    zones.iter().filter(|z| z.kind == ZoneKind::ServiceArea && z.shape.depth_m(at) >= 0.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use geofence::offset;

    fn approach(center: LatLon) -> Zone {
        Zone {
            id: "z1".into(),
            name: "St Mary's approach".into(),
            kind: ZoneKind::HospitalApproach,
            shape: Shape::Circle { center, radius_m: 1500.0 },
            team: vec!["dr.ed".into()],
            doctors: vec![],
            delete_recordings_after_upload: false,
        }
    }

    #[test]
    fn entering_with_a_case_alerts_once_and_without_a_case_not_at_all() {
        let c = LatLon { lat: 51.5, lon: -0.1 };
        let zones = [approach(c)];
        let mut t = Tracker::new(PresenceConfig::default());
        let mut decisions = vec![];
        for (i, d) in (0..40).map(|i| (i, 2000.0 - 100.0 * i as f64)) {
            let fix = Fix { at: offset(c, 0.0, d.max(0.0)), t_ms: i * 1000, accuracy_m: 10.0 };
            decisions.extend(t.position("van-3", &fix, Some([1; 16]), &zones));
        }
        let alerts: Vec<_> = decisions.iter().filter(|d| matches!(d, Decision::Alert { .. })).collect();
        assert_eq!(alerts.len(), 1, "{decisions:?}");
        assert_eq!(t.inside("van-3"), vec!["z1".to_owned()]);
        let mut t = Tracker::new(PresenceConfig::default());
        let mut decisions = vec![];
        for i in 0..10 {
            let fix = Fix { at: c, t_ms: i * 1000, accuracy_m: 10.0 };
            decisions.extend(t.position("van-4", &fix, None, &zones));
        }
        assert!(matches!(decisions.as_slice(), [Decision::Entered { .. }]), "{decisions:?}");
    }

    #[test]
    fn a_case_opened_inside_the_zone_alerts_once() {
        let c = LatLon { lat: 51.5, lon: -0.1 };
        let zones = [approach(c)];
        let mut t = Tracker::new(PresenceConfig::default());
        let mut decisions = vec![];
        for i in 0..20 {
            let fix = Fix { at: c, t_ms: i * 1000, accuracy_m: 10.0 };
            let case = if i < 10 { None } else { Some([2; 16]) };
            decisions.extend(t.position("van-3", &fix, case, &zones));
        }
        let alerts: Vec<_> = decisions.iter().filter(|d| matches!(d, Decision::Alert { .. })).collect();
        assert_eq!(alerts.len(), 1, "{decisions:?}");
        assert!(matches!(alerts[0], Decision::Alert { at_ms: 10_000, .. }), "{decisions:?}");
    }

    #[test]
    fn zone_definitions_are_checked() {
        let mut z = approach(LatLon { lat: 0.0, lon: 0.0 });
        assert!(check(&z).is_ok());
        z.doctors = vec!["dr.x".into()];
        assert!(check(&z).unwrap_err().contains("team, not doctors"));
        z.doctors.clear();
        z.shape = Shape::Circle { center: LatLon { lat: 0.0, lon: 0.0 }, radius_m: 0.0 };
        assert!(check(&z).unwrap_err().contains("radius"));
        z.name = " ".into();
        assert!(check(&z).is_err());
    }
}
