//! The case model's behaviour seen from outside: validation, locking, authorship, conflicts,
//! and convergence of replicas as a property test against a reference model.

use std::collections::{BTreeMap, BTreeSet};

use case_model::edit::{AllergyInput, ExposureInput, ExposureOutcome, TextSplice, VitalsInput};
use case_model::{
    ActorId, CaseDoc, CaseId, ConflictKind, Edit, EditContext, FieldName, FieldValue, NewCase, OrgId, Timestamp,
    UserId, VanId, session_actor,
};
use proptest::prelude::*;

const T0: i64 = 1_795_000_000_000;

fn ctx(user: &str, t: i64) -> EditContext {
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(T0 + t) }
}

fn actor(n: u8) -> ActorId {
    session_actor(&[n; 8], [n; 8])
}

fn new_case() -> CaseDoc {
    let new = NewCase {
        id: CaseId::new_v7(Timestamp::from_unix_millis(T0), [7; 10]),
        org: OrgId::parse("org-north").unwrap(),
        van: VanId::parse("van-12").unwrap(),
        temp_patient_id: "T-7F3K2Q".into(),
    };
    CaseDoc::create(actor(0), &ctx("ana", 0), new).0
}

/// A replica of `doc` on another device.
fn replica(doc: &CaseDoc, n: u8) -> CaseDoc {
    let mut bytes = Vec::new();
    bytes.extend(doc.save());
    CaseDoc::load(actor(n), Some(&bytes), []).unwrap()
}

fn set(field: FieldName, v: impl Into<String>) -> Edit {
    Edit::SetField { field, value: FieldValue::Text(v.into()) }
}

#[test]
fn out_of_range_vitals_are_refused_naming_field_and_range_and_nothing_is_applied() {
    let mut doc = new_case();
    let heads = doc.heads();
    let err = doc
        .apply(
            &ctx("ana", 1),
            &[
                Edit::AddVitals(VitalsInput { spo2: Some(97), ..Default::default() }),
                Edit::AddVitals(VitalsInput { heart_rate: Some(900), ..Default::default() }),
            ],
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "edit 1: vitals.heart_rate (eVitals.10) must be between 0 and 500; got 900");
    assert_eq!(doc.heads(), heads, "a refused batch leaves no change");
    assert!(doc.view().vitals.is_empty());

    let err = doc
        .apply(
            &ctx("ana", 1),
            &[Edit::AddVitals(VitalsInput { systolic: Some(80), diastolic: Some(120), ..Default::default() })],
        )
        .unwrap_err();
    assert!(err.to_string().contains("diastolic 120 must be lower than systolic 80"), "{err}");
    let err = doc.apply(&ctx("ana", 1), &[set(FieldName::Sex, "woman")]).unwrap_err();
    assert!(err.to_string().contains("patient.sex (ePatient.25)"), "{err}");
}

fn exposure(id: &str, outcome: ExposureOutcome) -> Edit {
    Edit::RecordExposure(ExposureInput {
        exposure_id: id.into(),
        at: None,
        outcome,
        body_part: "HAND".into(),
        view: "PA".into(),
        laterality: "L".into(),
        kv: 55.0,
        mas: 2.5,
        ms: 25,
        delivered_kv: Some(55.0),
        delivered_mas: Some(1.2),
        delivered_ms: Some(12),
        dap_mgy_cm2: Some(0.31),
        reason: Some("the confirm was released during the exposure".into()),
        dicom_sha256: None,
        preview_sha256: None,
        sop_instance_uid: None,
    })
}

#[test]
fn an_exposure_is_a_procedure_with_technique_and_dose_recorded_once() {
    let mut doc = new_case();
    doc.apply(&ctx("ana", 1), &[exposure("x-1", ExposureOutcome::Aborted)]).unwrap();
    let view = doc.view();
    let p = &view.procedures[0];
    assert_eq!(p["snomed"], 168_537_006);
    assert_eq!(p["successful"], false);
    assert_eq!(p["outcome"], "aborted");
    assert_eq!(p["kv"], 55.0);
    assert_eq!(p["dap_mgy_cm2"], 0.31);
    assert_eq!(p["delivered_ms"], 12);
    assert_eq!(p["performer"], "ana");
    // The same attempt twice (a replayed journal) is refused, and nothing is added.
    let err = doc.apply(&ctx("ana", 2), &[exposure("x-1", ExposureOutcome::Aborted)]).unwrap_err();
    assert!(err.to_string().contains("already recorded"), "{err}");
    assert_eq!(doc.view().procedures.len(), 1);
    // A refused technique is recorded as asked; a nonsense number is not.
    let Edit::RecordExposure(mut bad) = exposure("x-2", ExposureOutcome::Refused) else { unreachable!() };
    bad.kv = f64::NAN;
    let err = doc.apply(&ctx("ana", 3), &[Edit::RecordExposure(bad)]).unwrap_err();
    assert!(err.to_string().contains("exposure.kv"), "{err}");
    assert!(
        exposure("x-3", ExposureOutcome::Exposed)
            .audit_detail()
            .contains("x-3 exposed 55.0 kV 2.50 mAs 25 ms DAP 0.31")
    );
}

#[test]
fn a_closed_case_takes_addenda_only() {
    let mut doc = new_case();
    doc.apply(
        &ctx("ana", 1),
        &[Edit::SetStatus { status: case_model::codes::CaseStatus::Closed, at: None, source: Default::default() }],
    )
    .unwrap();
    let err = doc.apply(&ctx("ana", 2), &[set(FieldName::ChiefComplaint, "fall")]).unwrap_err();
    assert!(err.to_string().contains("closed at") && err.to_string().contains("addendum"), "{err}");
    doc.apply(&ctx("dr-osei", 3), &[Edit::AddAddendum { text: "Radiograph reviewed: distal radius fracture.".into() }])
        .unwrap();
    let view = doc.view();
    assert_eq!(view.addenda.len(), 1);
    assert_eq!(view.addenda[0]["by"], "dr-osei");
    assert!(view.closed_at.is_some());
}

#[test]
fn every_change_records_the_user_who_made_it() {
    let mut doc = new_case();
    doc.apply(
        &ctx("ana", 1),
        &[
            Edit::AddVitals(VitalsInput { heart_rate: Some(88), ..Default::default() }),
            set(FieldName::ChiefComplaint, "fall from ladder"),
        ],
    )
    .unwrap();
    let mut hub = replica(&doc, 1);
    hub.apply(&ctx("dr-osei", 2), &[Edit::AddNote { text: "splint, no reduction".into(), consult_id: None }]).unwrap();
    doc.merge(&mut hub).unwrap();
    let history = doc.history();
    let who: Vec<(&str, Vec<String>)> = history.iter().map(|c| (c.by.as_str(), c.ops.clone())).collect();
    assert_eq!(
        who,
        vec![
            ("ana", vec!["create_case".to_string()]),
            ("ana", vec!["add_vitals".into(), "set_field".into()]),
            ("dr-osei", vec!["add_note".into()]),
        ]
    );
    assert_ne!(history[1].actor, history[2].actor, "the van and the hub are different actors");
}

#[test]
fn story_4_allergy_conflict_is_shown_on_both_sides_and_resolved_by_a_person() {
    let van_doc = new_case();
    let mut van = replica(&van_doc, 1);
    let mut hub = replica(&van_doc, 2);
    van.apply(
        &ctx("ana", 10),
        &[Edit::AddAllergy(AllergyInput {
            substance: "penicillin".into(),
            code: Some("7980".into()),
            code_system: Some(case_model::codes::CodeSystem::RxNorm),
            category: Default::default(),
        })],
    )
    .unwrap();
    hub.apply(&ctx("dr-osei", 11), &[Edit::RecordNoKnownAllergies]).unwrap();
    van.merge(&mut hub).unwrap();
    hub.merge(&mut van).unwrap();
    for side in [&van, &hub] {
        let conflicts = side.conflicts();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        let c = &conflicts[0];
        assert_eq!(c.path, "patient.allergy_status");
        assert_eq!(c.nemsis_element.as_deref(), Some("eHistory.06"));
        let got: Vec<(String, String, Timestamp)> =
            c.values.iter().map(|v| (v.value.as_str().unwrap().to_owned(), v.by.clone(), v.at)).collect();
        assert_eq!(
            got,
            vec![
                ("known".into(), "ana".into(), Timestamp::from_unix_millis(T0 + 10)),
                ("no_known_allergies".into(), "dr-osei".into(), Timestamp::from_unix_millis(T0 + 11)),
            ]
        );
        assert_eq!(side.view().allergies.len(), 1, "the allergen itself is never dropped");
        assert!(side.summary().has_conflicts);
    }
    // Dr Osei checks with the patient: the allergy is real.
    hub.apply(
        &ctx("dr-osei", 20),
        &[Edit::ResolveConflict { path: "patient.allergy_status".into(), value: FieldValue::Text("known".into()) }],
    )
    .unwrap();
    van.merge(&mut hub).unwrap();
    assert!(van.conflicts().is_empty());
    let view = van.view();
    assert_eq!(view.fields["patient.allergy_status"]["value"], "known");
    assert_eq!(view.resolutions.len(), 1);
    assert_eq!(view.resolutions[0]["by"], "dr-osei");
    assert!(view.resolutions[0]["replaced"].as_str().unwrap().contains("no_known_allergies"));
}

#[test]
fn resolving_to_no_known_allergies_strikes_recorded_allergies_through() {
    let base = new_case();
    let mut a = replica(&base, 1);
    let mut b = replica(&base, 2);
    a.apply(
        &ctx("ana", 1),
        &[Edit::AddAllergy(AllergyInput {
            substance: "latex".into(),
            code: None,
            code_system: None,
            category: case_model::edit::AllergyCategory::Environmental,
        })],
    )
    .unwrap();
    b.apply(&ctx("ben", 2), &[Edit::RecordNoKnownAllergies]).unwrap();
    a.merge(&mut b).unwrap();
    a.apply(
        &ctx("ana", 3),
        &[Edit::ResolveConflict {
            path: "patient.allergy_status".into(),
            value: FieldValue::Text("no_known_allergies".into()),
        }],
    )
    .unwrap();
    assert!(a.conflicts().is_empty());
    let view = a.view();
    assert_eq!(view.allergies.len(), 1, "struck through, not deleted");
    assert_eq!(view.allergies[0]["retracted"]["by"], "ana");
    // Resolving something that is not in conflict says so.
    let err = a
        .apply(
            &ctx("ana", 4),
            &[Edit::ResolveConflict { path: "patient.allergy_status".into(), value: FieldValue::Text("known".into()) }],
        )
        .unwrap_err();
    assert!(err.to_string().contains("is not in conflict"), "{err}");
}

#[test]
fn recording_no_known_allergies_over_a_recorded_allergy_is_refused_locally() {
    let mut doc = new_case();
    doc.apply(
        &ctx("ana", 1),
        &[Edit::AddAllergy(AllergyInput {
            substance: "penicillin".into(),
            code: None,
            code_system: None,
            category: Default::default(),
        })],
    )
    .unwrap();
    let err = doc.apply(&ctx("ana", 2), &[Edit::RecordNoKnownAllergies]).unwrap_err();
    assert!(err.to_string().contains("allergies are recorded (penicillin)"), "{err}");
}

// ---- Convergence as a property test against a reference model ----

#[derive(Debug, Clone)]
enum Op {
    /// Replica `r` resolves a conflict on field `f` (if it sees one) with value `v`.
    Resolve {
        r: usize,
        f: usize,
        v: usize,
    },
    /// Replica `r` sets field `f` (index into FIELDS) to value `v`.
    Set {
        r: usize,
        f: usize,
        v: usize,
    },
    Vitals {
        r: usize,
        hr: i64,
    },
    Note {
        r: usize,
    },
    Narrative {
        r: usize,
        pos_frac: u8,
    },
    Allergy {
        r: usize,
    },
    NoKnownAllergies {
        r: usize,
    },
    /// Replica `to` receives everything `from` has.
    Sync {
        from: usize,
        to: usize,
    },
}

const FIELDS: &[(FieldName, &[&str])] = &[
    (FieldName::DateOfBirth, &["1958-03-14", "1985-03-14", "1958-04-13"]),
    (FieldName::ChiefComplaint, &["fall from ladder", "arm pain", "dizziness"]),
    (FieldName::LastName, &["Okafor", "Okafore"]),
];
const USERS: [&str; 3] = ["ana", "ben", "dr-osei"];

fn op() -> impl Strategy<Value = Op> {
    let r = 0..3usize;
    prop_oneof![
        4 => (r.clone(), 0..FIELDS.len(), 0..3usize).prop_map(|(r, f, v)| Op::Set { r, f, v }),
        3 => (r.clone(), 30..200i64).prop_map(|(r, hr)| Op::Vitals { r, hr }),
        2 => r.clone().prop_map(|r| Op::Note { r }),
        3 => (r.clone(), any::<u8>()).prop_map(|(r, pos_frac)| Op::Narrative { r, pos_frac }),
        1 => r.clone().prop_map(|r| Op::Allergy { r }),
        1 => r.clone().prop_map(|r| Op::NoKnownAllergies { r }),
        2 => (r.clone(), 0..FIELDS.len(), 0..3usize).prop_map(|(r, f, v)| Op::Resolve { r, f, v }),
        4 => (r.clone(), r).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

/// One write to a single-valued field, as the reference model sees it.
#[derive(Debug, Clone)]
struct Write {
    path: &'static str,
    value: String,
    by: &'static str,
    /// Writes to the same path this one had seen (and therefore supersedes).
    supersedes: BTreeSet<usize>,
}

#[derive(Default)]
struct Model {
    writes: Vec<Write>,
    known: [BTreeSet<usize>; 3],
    allergies_known: [BTreeSet<usize>; 3],
    vitals: usize,
    notes: usize,
    tokens: Vec<String>,
    allergy_count: usize,
}

impl Model {
    fn write(&mut self, r: usize, path: &'static str, value: String) {
        let supersedes = self.known[r].iter().copied().filter(|w| self.writes[*w].path == path).collect();
        self.writes.push(Write { path, value, by: USERS[r], supersedes });
        let id = self.writes.len() - 1;
        self.known[r].insert(id);
    }

    /// Values standing at `path` once everything has merged.
    fn standing(&self, path: &str) -> BTreeMap<String, BTreeSet<&'static str>> {
        let superseded: BTreeSet<usize> = self.writes.iter().flat_map(|w| w.supersedes.iter().copied()).collect();
        let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
        for (i, w) in self.writes.iter().enumerate() {
            if w.path == path && !superseded.contains(&i) {
                out.entry(w.value.clone()).or_default().insert(w.by);
            }
        }
        out
    }
}

fn run(ops: &[Op], merge_order: &[usize]) -> Result<(), TestCaseError> {
    let base = new_case();
    let mut docs: Vec<CaseDoc> = (0..3).map(|i| replica(&base, i as u8 + 1)).collect();
    let mut model = Model::default();
    for (t, op) in ops.iter().enumerate() {
        let t = t as i64 + 1;
        match *op {
            Op::Set { r, f, v } => {
                let (field, values) = FIELDS[f];
                let value = values[v % values.len()];
                docs[r].apply(&ctx(USERS[r], t), &[set(field, value)]).unwrap();
                model.write(r, field.path(), value.into());
            }
            Op::Vitals { r, hr } => {
                docs[r]
                    .apply(
                        &ctx(USERS[r], t),
                        &[Edit::AddVitals(VitalsInput { heart_rate: Some(hr), ..Default::default() })],
                    )
                    .unwrap();
                model.vitals += 1;
            }
            Op::Note { r } => {
                docs[r]
                    .apply(&ctx(USERS[r], t), &[Edit::AddNote { text: format!("note {t}"), consult_id: None }])
                    .unwrap();
                model.notes += 1;
            }
            Op::Narrative { r, pos_frac } => {
                let len = docs[r].view().narrative.chars().count();
                let pos = len * pos_frac as usize / 255;
                // One unique character per insert, so a later insert cannot split it.
                let token = char::from_u32(0x4E00 + t as u32).unwrap().to_string();
                docs[r]
                    .apply(
                        &ctx(USERS[r], t),
                        &[Edit::EditNarrative(TextSplice { pos: Some(pos), delete: 0, insert: token.clone() })],
                    )
                    .unwrap();
                model.tokens.push(token);
            }
            Op::Allergy { r } => {
                docs[r]
                    .apply(
                        &ctx(USERS[r], t),
                        &[Edit::AddAllergy(AllergyInput {
                            substance: format!("allergen {t}"),
                            code: None,
                            code_system: None,
                            category: Default::default(),
                        })],
                    )
                    .unwrap();
                model.allergy_count += 1;
                model.allergies_known[r].insert(model.allergy_count);
                model.write(r, "patient.allergy_status", "known".into());
            }
            Op::NoKnownAllergies { r } => {
                let result = docs[r].apply(&ctx(USERS[r], t), &[Edit::RecordNoKnownAllergies]);
                // The model predicts refusal: the replica already knows an allergy.
                prop_assert_eq!(result.is_err(), !model.allergies_known[r].is_empty(), "{:?}", result);
                if result.is_ok() {
                    model.write(r, "patient.allergy_status", "no_known_allergies".into());
                }
            }
            Op::Resolve { r, f, v } => {
                let (field, values) = FIELDS[f];
                if docs[r].conflicts().iter().any(|c| c.path == field.path()) {
                    let value = values[v % values.len()];
                    docs[r]
                        .apply(
                            &ctx(USERS[r], t),
                            &[Edit::ResolveConflict {
                                path: field.path().into(),
                                value: FieldValue::Text(value.into()),
                            }],
                        )
                        .unwrap();
                    model.write(r, field.path(), value.into());
                }
            }
            Op::Sync { from, to } => {
                if from != to {
                    let mut src = docs[from].clone();
                    docs[to].merge(&mut src).unwrap();
                    // Sometimes the replica checks for conflicts after the merge, turning on
                    // the fast path for its later local edits (debug builds assert that
                    // those edits never create a conflict).
                    if t % 2 == 0 {
                        docs[to].refresh_conflicts();
                    }
                    let k = model.known[from].clone();
                    model.known[to].extend(k);
                    let a = model.allergies_known[from].clone();
                    model.allergies_known[to].extend(a);
                }
            }
        }
    }
    // Merge everything, in the generated order, into one replica and back out to all.
    for &i in merge_order {
        let mut src = docs[i].clone();
        docs[0].merge(&mut src).unwrap();
    }
    let mut all = docs[0].clone();
    for d in docs.iter_mut().skip(1) {
        d.merge(&mut all).unwrap();
    }
    let views: Vec<String> = docs.iter().map(|d| serde_json::to_string(&d.view()).unwrap()).collect();
    prop_assert_eq!(&docs[0].heads(), &docs[1].heads());
    prop_assert_eq!(&docs[0].heads(), &docs[2].heads());
    prop_assert_eq!(&views[0], &views[1], "replicas converged to different documents");
    prop_assert_eq!(&views[0], &views[2]);

    let view = docs[0].view();
    prop_assert_eq!(view.vitals.len(), model.vitals, "a vital sign entry was lost");
    prop_assert_eq!(view.notes.len(), model.notes, "a note was lost");
    prop_assert_eq!(view.allergies.len(), model.allergy_count, "an allergy was lost");
    for token in &model.tokens {
        prop_assert!(view.narrative.contains(token.as_str()), "narrative lost {}: {}", token, view.narrative);
    }
    let conflicts = docs[0].conflicts();
    let mut paths: Vec<&'static str> = FIELDS.iter().map(|(f, _)| f.path()).collect();
    paths.push("patient.allergy_status");
    for path in paths {
        let standing = model.standing(path);
        let conflict = conflicts.iter().find(|c| c.path == path);
        let contradiction = path == "patient.allergy_status"
            && standing.len() == 1
            && standing.contains_key("no_known_allergies")
            && model.allergy_count > 0;
        if standing.len() > 1 {
            let c = conflict.ok_or_else(|| {
                TestCaseError::fail(format!("{path}: concurrent values {standing:?} but no conflict shown"))
            })?;
            prop_assert_eq!(c.kind, ConflictKind::Concurrent);
            let mut shown: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
            for v in &c.values {
                let by = USERS.iter().find(|u| **u == v.by).copied().unwrap_or("?");
                shown.entry(v.value.as_str().unwrap_or_default().to_owned()).or_default().insert(by);
            }
            prop_assert_eq!(shown, standing, "{} shows the wrong values or authors", path);
        } else if contradiction {
            prop_assert!(
                conflict.is_some_and(|c| c.kind == ConflictKind::Contradiction),
                "{} contradiction not shown",
                path
            );
        } else {
            prop_assert!(conflict.is_none(), "{}: unexpected conflict {:?}", path, conflict);
            if let Some((value, _)) = standing.into_iter().next() {
                prop_assert_eq!(view.fields[path]["value"].as_str(), Some(value.as_str()));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn three_replicas_converge_and_lose_nothing(ops in prop::collection::vec(op(), 1..40), order in Just(vec![0usize, 1, 2]).prop_shuffle()) {
        run(&ops, &order)?;
    }
}

#[test]
fn concurrent_edits_of_the_same_field_show_both_values_with_authors_and_times() {
    let base = new_case();
    let mut van = replica(&base, 1);
    let mut hub = replica(&base, 2);
    van.apply(&ctx("ana", 5), &[set(FieldName::DateOfBirth, "1958-03-14")]).unwrap();
    hub.apply(&ctx("dr-osei", 6), &[set(FieldName::DateOfBirth, "1985-03-14")]).unwrap();
    van.merge(&mut hub).unwrap();
    let c = van.conflicts();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].path, "patient.date_of_birth");
    assert_eq!(c[0].nemsis_element.as_deref(), Some("ePatient.17"));
    assert_eq!(c[0].values[0].value, "1958-03-14");
    assert_eq!(c[0].values[0].by, "ana");
    assert_eq!(c[0].values[0].at, Timestamp::from_unix_millis(T0 + 5));
    assert_eq!(c[0].values[1].value, "1985-03-14");
    assert_eq!(c[0].values[1].by, "dr-osei");
}

#[test]
fn a_case_with_conflicts_cannot_close_but_a_closed_case_can_resolve_late_conflicts() {
    use case_model::codes::CaseStatus;
    let close = || Edit::SetStatus { status: CaseStatus::Closed, at: None, source: Default::default() };
    let base = new_case();
    let mut van = replica(&base, 1);
    let mut hub = replica(&base, 2);
    van.apply(&ctx("ana", 1), &[set(FieldName::DateOfBirth, "1958-03-14")]).unwrap();
    hub.apply(&ctx("dr-osei", 2), &[set(FieldName::DateOfBirth, "1985-03-14")]).unwrap();
    let mut merged = van.clone();
    merged.merge(&mut hub.clone()).unwrap();
    let err = merged.apply(&ctx("ana", 3), &[close()]).unwrap_err();
    assert!(err.to_string().contains("1 unresolved conflict"), "{err}");

    // The van closes before it hears of the hub's edit; the conflict arrives afterwards.
    van.apply(&ctx("ana", 4), &[close()]).unwrap();
    van.merge(&mut hub).unwrap();
    assert_eq!(van.conflicts().len(), 1);
    let err = van.apply(&ctx("ana", 5), &[set(FieldName::DateOfBirth, "1958-03-14")]).unwrap_err();
    assert!(err.to_string().contains("addendum"), "{err}");
    van.apply(
        &ctx("ana", 6),
        &[Edit::ResolveConflict { path: "patient.date_of_birth".into(), value: FieldValue::Text("1958-03-14".into()) }],
    )
    .unwrap();
    assert!(van.conflicts().is_empty());
}

#[test]
fn clinical_times_are_bounded_around_the_case() {
    let mut doc = new_case();
    let long_ago = Timestamp::from_unix_millis(T0 - 3 * 24 * 3600 * 1000);
    let err = doc
        .apply(
            &ctx("ana", 1),
            &[Edit::AddVitals(VitalsInput { taken_at: Some(long_ago), heart_rate: Some(80), ..Default::default() })],
        )
        .unwrap_err();
    assert!(err.to_string().contains("more than a day before the case was opened"), "{err}");
    // 0/0 is a real reading in cardiac arrest.
    doc.apply(
        &ctx("ana", 2),
        &[Edit::AddVitals(VitalsInput { systolic: Some(0), diastolic: Some(0), ..Default::default() })],
    )
    .unwrap();
}

#[test]
fn track_points_are_kept_in_order_and_bad_ones_refused_whole() {
    use case_model::edit::TrackPoint;
    let mut doc = new_case();
    let p = |t: i64, lat: f64, lon: f64| TrackPoint {
        at: Timestamp::from_unix_millis(T0 + t),
        lat,
        lon,
        speed_mps: Some(13.9),
    };
    doc.apply(
        &ctx("system:gps", 5000),
        &[Edit::AddTrackPoints { points: vec![p(1000, 51.5, -0.12), p(4000, 51.501, -0.121)] }],
    )
    .unwrap();
    let bad = [vec![p(4500, 91.0, 0.0)], vec![p(4500, 51.0, f64::NAN)], vec![p(4500 + 3_600_000, 51.0, 0.0)], vec![]];
    for points in bad {
        let err = doc.apply(&ctx("system:gps", 5000), &[Edit::AddTrackPoints { points: points.clone() }]).unwrap_err();
        assert!(err.to_string().contains("track"), "{points:?}: {err}");
    }
    let view = replica(&doc, 3).view();
    assert_eq!(view.track.len(), 2);
    assert!((view.track[1].lat - 51.501).abs() < 1e-7 && (view.track[1].lon + 0.121).abs() < 1e-7);
    assert_eq!(view.track[0].speed_mps, Some(13.9));
}
