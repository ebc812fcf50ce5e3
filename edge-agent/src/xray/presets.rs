//! Technique presets: the starting technique for each body part and view a crew X-rays in
//! the field, which the touchscreen fills in when the operator picks the view and which
//! the operator may adjust before arming. Every preset is within the unit's limits (a
//! test checks it against the same rules the session is checked with).
//!
//! The values suit a portable unit with a flat-panel detector at 100 cm and an adult
//! patient; a deployment's radiographer reviews them against the unit's exposure chart.

/// One preset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Preset {
    /// DICOM Body Part Examined.
    pub body_part: &'static str,
    /// The projection.
    pub view: &'static str,
    /// Tube voltage, kV.
    pub kv: f64,
    /// Tube current-time product, mAs.
    pub mas: f64,
    /// Exposure time, ms.
    pub ms: u32,
}

const fn p(body_part: &'static str, view: &'static str, kv: f64, mas: f64, ms: u32) -> Preset {
    Preset { body_part, view, kv, mas, ms }
}

/// The presets, in the order the touchscreen shows them.
pub const PRESETS: &[Preset] = &[
    p("FOREARM", "AP", 55.0, 2.5, 25),
    p("FOREARM", "LAT", 57.0, 2.8, 28),
    p("WRIST", "PA", 52.0, 2.2, 22),
    p("WRIST", "LAT", 55.0, 2.8, 28),
    p("HAND", "PA", 50.0, 2.0, 20),
    p("HAND", "OBL", 52.0, 2.2, 22),
    p("ANKLE", "AP", 58.0, 3.2, 32),
    p("ANKLE", "LAT", 56.0, 2.8, 28),
    p("FOOT", "AP", 55.0, 2.5, 25),
    p("FOOT", "OBL", 57.0, 2.8, 28),
    p("KNEE", "AP", 65.0, 5.0, 50),
    p("KNEE", "LAT", 62.0, 4.5, 45),
    p("CHEST", "PA", 110.0, 2.0, 20),
    p("CHEST", "AP", 90.0, 2.5, 25),
    p("PELVIS", "AP", 80.0, 20.0, 100),
];

#[cfg(test)]
mod tests {
    use super::PRESETS;

    #[test]
    fn every_preset_names_a_known_view_and_is_within_the_units_limits() {
        let limits = xray_proto::technique::Limits::default();
        for p in PRESETS {
            assert!(imaging::BodyPart::parse(p.body_part).is_some(), "{p:?}");
            assert!(imaging::Projection::parse(p.view).is_some(), "{p:?}");
            let t = xray_proto::technique::Technique::parse(
                (p.kv * 10.0).round() as u16,
                (p.mas * 100.0).round() as u32,
                p.ms as u16,
                &limits,
            );
            assert!(t.is_ok(), "{p:?}: {t:?}");
        }
        // Each body part has at least one view, and no view is listed twice.
        let mut seen = std::collections::HashSet::new();
        assert!(PRESETS.iter().all(|p| seen.insert((p.body_part, p.view))));
    }
}
