//! Validating and writing one edit into an open Automerge transaction.
//!
//! Validation happens before anything is written, so a refused edit leaves no trace; the
//! caller rolls the whole batch back if any edit of it is refused.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue};

use crate::codes::{AllergyStatus, CaseStatus};
use crate::conflict;
use crate::edit::{
    AllergyInput, AttachmentInput, CurrentMedicationInput, Edit, EditContext, ExposureInput, ExposureOutcome, Glucose,
    HistoryInput, MedicationInput, PrescriptionInput, ProcedureInput, TextSplice, TrackPoint, VitalsInput,
};
use crate::error::EditError;
use crate::fields::{FUTURE_TOLERANCE_MS, FieldName, FieldValue, is_icd10};
use crate::layout::{self, put_field};
use crate::time::Timestamp;

type Res<T = ()> = Result<T, EditError>;

/// Applies one edit. `closed` is the time the case was closed, if it is.
pub(crate) fn apply(tx: &mut Transaction<'_>, ctx: &EditContext, edit: &Edit, closed: Option<Timestamp>) -> Res {
    // After closing, the record takes addenda, and resolutions of conflicts that merged in
    // from edits made elsewhere before the close was known.
    if let Some(closed_at) = closed
        && !matches!(edit, Edit::AddAddendum { .. } | Edit::ResolveConflict { .. })
    {
        return Err(EditError::CaseClosed { closed_at });
    }
    match edit {
        Edit::SetStatus { status, at, source } => {
            let at = check_time(tx, "timeline.at", status.nemsis_code(), at.unwrap_or(ctx.now), ctx)?;
            if *status == CaseStatus::Closed {
                let open = conflict::find(tx).len();
                if open > 0 {
                    return Err(EditError::UnresolvedConflicts(open));
                }
            }
            let item = new_item(tx, &["timeline"], ctx)?;
            put(tx, &item, "status", status.as_str())?;
            put(tx, &item, "time", at.unix_millis())?;
            put(tx, &item, "source", source.as_str())?;
        }
        Edit::SetField { field, value } => {
            let stored = field.validate(value, ctx.now)?;
            set_field(tx, *field, &stored, ctx)?;
            if *field == FieldName::AllergyStatus
                && stored == FieldValue::Text(AllergyStatus::NoKnownAllergies.as_str().into())
            {
                check_no_active_allergies(tx)?;
            }
        }
        Edit::RecordNoKnownAllergies => {
            check_no_active_allergies(tx)?;
            set_field(
                tx,
                FieldName::AllergyStatus,
                &FieldValue::Text(AllergyStatus::NoKnownAllergies.as_str().into()),
                ctx,
            )?;
        }
        Edit::AddAllergy(a) => add_allergy(tx, ctx, a)?,
        Edit::RetractAllergy { id, reason } => {
            let reason = text("allergy.retracted", "eHistory.06", reason, 1, 500)?;
            let item = find_item(tx, &["patient", "allergies"], "allergy", id)?;
            put_field(tx, &item, "retracted", &FieldValue::Text(reason), &ctx.user, ctx.now).map_err(internal)?;
        }
        Edit::AddCurrentMedication(m) => add_current_medication(tx, ctx, m)?,
        Edit::AddHistory(h) => add_history(tx, ctx, h)?,
        Edit::AddVitals(v) => add_vitals(tx, ctx, v)?,
        Edit::AddProcedure(p) => add_procedure(tx, ctx, p)?,
        Edit::AddMedication(m) => add_medication(tx, ctx, m)?,
        Edit::EditNarrative(s) => splice(tx, layout::NARRATIVE, "narrative", s)?,
        Edit::EditAssessment(s) => splice(tx, layout::ASSESSMENT, "assessment", s)?,
        Edit::AddAttachment(a) => add_attachment(tx, ctx, a)?,
        Edit::RecordExposure(e) => record_exposure(tx, ctx, e)?,
        Edit::AddTrackPoints { points } => add_track_points(tx, ctx, points)?,
        Edit::RequestConsult { reason, urgency } => {
            let reason = text("consult.reason", "", reason, 1, 2000)?;
            let item = new_item(tx, &["consults"], ctx)?;
            put(tx, &item, "reason", reason.as_str())?;
            put(tx, &item, "urgency", urgency.as_str())?;
        }
        Edit::AddNote { text: t, consult_id } => {
            let t = text("note.text", "", t, 1, 20_000)?;
            if let Some(c) = consult_id {
                find_item(tx, &["consults"], "consult", c)?;
            }
            let item = new_item(tx, &["notes"], ctx)?;
            put(tx, &item, "text", t.as_str())?;
            if let Some(c) = consult_id {
                put(tx, &item, "consult_id", c.as_str())?;
            }
        }
        Edit::AddPrescription(p) => add_prescription(tx, ctx, p)?,
        Edit::AddChat { text: t } => {
            let t = text("chat.text", "", t, 1, 4000)?;
            let item = new_item(tx, &["chat"], ctx)?;
            put(tx, &item, "text", t.as_str())?;
        }
        Edit::AddAddendum { text: t } => {
            let t = text("addendum.text", "", t, 1, 20_000)?;
            let item = new_item(tx, &["addenda"], ctx)?;
            put(tx, &item, "text", t.as_str())?;
        }
        Edit::ResolveConflict { path, value } => conflict::resolve(tx, ctx, path, value)?,
    }
    Ok(())
}

/// Most points one edit may add: an hour of driving at the thinning's rate.
const MAX_TRACK_POINTS: usize = 1000;

fn add_track_points(tx: &mut Transaction<'_>, ctx: &EditContext, points: &[TrackPoint]) -> Res {
    let bad = |reason: String| EditError::Invalid { field: "track".into(), element: "eScene.11", reason };
    if points.is_empty() || points.len() > MAX_TRACK_POINTS {
        return Err(bad(format!("send 1 to {MAX_TRACK_POINTS} points, not {}", points.len())));
    }
    for (i, p) in points.iter().enumerate() {
        if !(p.lat.is_finite() && p.lon.is_finite() && p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0) {
            return Err(bad(format!("point {i} is not a latitude in -90..90 and a longitude in -180..180")));
        }
        if p.speed_mps.is_some_and(|v| !(0.0..=150.0).contains(&v)) {
            return Err(bad(format!("point {i}'s speed is not between 0 and 150 m/s")));
        }
        check_time(tx, "track.at", "eScene.11", p.at, ctx)?;
    }
    // The list exists in cases made since the track came in; one made before gets it from
    // the van, the track's only writer, so no two replicas create it at once.
    let list = match layout::object(tx, &["track"]) {
        Some(l) => l,
        None => tx.put_object(automerge::ROOT, "track", ObjType::List).map_err(internal)?,
    };
    for p in points {
        let n = tx.length(&list);
        let item = tx.insert_object(&list, n, ObjType::Map).map_err(internal)?;
        put(tx, &item, "t", p.at.unix_millis())?;
        put(tx, &item, "lat", (p.lat * 1e7).round() as i64)?;
        put(tx, &item, "lon", (p.lon * 1e7).round() as i64)?;
        if let Some(v) = p.speed_mps {
            put(tx, &item, "speed_cms", (v * 100.0).round() as i64)?;
        }
    }
    Ok(())
}

/// Writes a validated value into a field.
pub(crate) fn set_field(tx: &mut Transaction<'_>, field: FieldName, value: &FieldValue, ctx: &EditContext) -> Res {
    let path: Vec<&str> = field.path().split('.').collect();
    let (key, parents) = path.split_last().ok_or_else(|| internal_msg("empty field path"))?;
    let obj = layout::walk_maps(tx, parents).ok_or_else(|| internal_msg("field container missing"))?;
    put_field(tx, &obj, key, value, &ctx.user, ctx.now).map_err(internal)
}

/// Appends an item to a list, stamped with who and when.
pub(crate) fn new_item(tx: &mut Transaction<'_>, list_path: &[&str], ctx: &EditContext) -> Res<ObjId> {
    let list = layout::object(tx, list_path).ok_or_else(|| internal_msg("list missing"))?;
    let n = tx.length(&list);
    let item = tx.insert_object(&list, n, ObjType::Map).map_err(internal)?;
    put(tx, &item, "by", ctx.user.as_str())?;
    put(tx, &item, "at", ctx.now.unix_millis())?;
    Ok(item)
}

pub(crate) fn find_item(tx: &Transaction<'_>, list_path: &[&str], kind: &'static str, id: &str) -> Res<ObjId> {
    let list = layout::object(tx, list_path).ok_or_else(|| internal_msg("list missing"))?;
    layout::items(tx, &list)
        .into_iter()
        .find(|(item_id, _)| item_id == id)
        .map(|(_, obj)| obj)
        .ok_or_else(|| EditError::UnknownItem { kind, id: id.chars().take(100).collect() })
}

pub(crate) fn put(tx: &mut Transaction<'_>, obj: &ObjId, key: &str, v: impl Into<ScalarValue>) -> Res {
    tx.put(obj, key, v).map_err(internal)
}

/// The ids of allergies that have not been retracted.
pub(crate) fn active_allergies(doc: &impl ReadDoc) -> Vec<(String, ObjId)> {
    let Some(list) = layout::object(doc, &["patient", "allergies"]) else {
        return Vec::new();
    };
    layout::items(doc, &list).into_iter().filter(|(_, obj)| layout::field_at(doc, obj, "retracted").is_none()).collect()
}

fn check_no_active_allergies(tx: &Transaction<'_>) -> Res {
    let active = active_allergies(tx);
    if active.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = active.iter().filter_map(|(_, o)| layout::get_str(tx, o, "substance")).collect();
    Err(EditError::Invalid {
        field: FieldName::AllergyStatus.path().into(),
        element: "eHistory.06",
        reason: format!(
            "allergies are recorded ({}); retract them first if they were entered in error",
            names.join(", ")
        ),
    })
}

fn add_allergy(tx: &mut Transaction<'_>, ctx: &EditContext, a: &AllergyInput) -> Res {
    use crate::codes::CodeSystem;
    use crate::edit::AllergyCategory;
    let element = match a.category {
        AllergyCategory::Medication => "eHistory.06",
        AllergyCategory::Environmental => "eHistory.07",
    };
    let substance = text("allergy.substance", element, &a.substance, 1, 100)?;
    if let Some(code) = &a.code {
        let ok = match (a.category, a.code_system) {
            (_, None) => false,
            (AllergyCategory::Medication, Some(CodeSystem::Icd10)) => code.starts_with("Z88.") && code.len() == 5,
            (AllergyCategory::Medication, Some(CodeSystem::RxNorm)) => {
                (2..=7).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
            }
            (AllergyCategory::Environmental, Some(CodeSystem::Snomed)) => {
                code.len() >= 6 && code.len() <= 18 && code.bytes().all(|b| b.is_ascii_digit())
            }
            _ => false,
        };
        if !ok {
            return Err(EditError::Invalid {
                field: "allergy.code".into(),
                element,
                reason: format!(
                    "{code:?} is not valid here: medication allergies take an RxNorm code (code_system rxnorm) or ICD-10 Z88.x (icd10); environmental and food allergies take a SNOMED CT code (snomed)"
                ),
            });
        }
    }
    let item = new_item(tx, &["patient", "allergies"], ctx)?;
    put(tx, &item, "substance", substance.as_str())?;
    put(
        tx,
        &item,
        "category",
        match a.category {
            AllergyCategory::Medication => "medication",
            AllergyCategory::Environmental => "environmental",
        },
    )?;
    if let (Some(code), Some(sys)) = (&a.code, a.code_system) {
        put(tx, &item, "code", code.as_str())?;
        put(tx, &item, "code_system", sys.as_str())?;
    }
    // Recording an allergy states that allergies are known. Written as a field so that a
    // concurrent "no known allergies" elsewhere shows up as a conflict on the status.
    set_field(tx, FieldName::AllergyStatus, &FieldValue::Text(AllergyStatus::Known.as_str().into()), ctx)
}

fn add_current_medication(tx: &mut Transaction<'_>, ctx: &EditContext, m: &CurrentMedicationInput) -> Res {
    let name = text("current_medication.name", "eHistory.12", &m.name, 1, 100)?;
    let rx = m.rxnorm.as_deref().map(|r| rxnorm("current_medication.rxnorm", "eHistory.12", r)).transpose()?;
    let dose = m.dose.as_deref().map(|d| text("current_medication.dose", "eHistory.13", d, 1, 100)).transpose()?;
    let item = new_item(tx, &["patient", "medications"], ctx)?;
    put(tx, &item, "name", name.as_str())?;
    if let Some(rx) = rx {
        put(tx, &item, "rxnorm", rx.as_str())?;
    }
    if let Some(d) = dose {
        put(tx, &item, "dose", d.as_str())?;
    }
    Ok(())
}

fn add_history(tx: &mut Transaction<'_>, ctx: &EditContext, h: &HistoryInput) -> Res {
    let condition = text("history.condition", "eHistory.08", &h.condition, 1, 200)?;
    if let Some(code) = &h.icd10
        && !is_icd10(code)
    {
        return Err(EditError::Invalid {
            field: "history.icd10".into(),
            element: "eHistory.08",
            reason: format!("{code:?} is not an ICD-10-CM code (for example I10)"),
        });
    }
    let item = new_item(tx, &["patient", "history"], ctx)?;
    put(tx, &item, "condition", condition.as_str())?;
    if let Some(code) = &h.icd10 {
        put(tx, &item, "icd10", code.to_ascii_uppercase())?;
    }
    Ok(())
}

fn add_vitals(tx: &mut Transaction<'_>, ctx: &EditContext, v: &VitalsInput) -> Res {
    let taken_at = check_time(tx, "vitals.taken_at", "eVitals.01", v.taken_at.unwrap_or(ctx.now), ctx)?;
    let int =
        |name: &str, element: &'static str, value: Option<i64>, min: i64, max: i64| -> Res<Option<(String, i64)>> {
            match value {
                None => Ok(None),
                Some(x) if x < min || x > max => Err(EditError::OutOfRange {
                    field: format!("vitals.{name}"),
                    element,
                    min: min as f64,
                    max: max as f64,
                    value: x as f64,
                }),
                Some(x) => Ok(Some((name.to_owned(), x))),
            }
        };
    let mut ints: Vec<(String, i64)> = [
        int("heart_rate", "eVitals.10", v.heart_rate, 0, 500)?,
        int("systolic", "eVitals.06", v.systolic, 0, 500)?,
        int("diastolic", "eVitals.07", v.diastolic, 0, 500)?,
        int("spo2", "eVitals.12", v.spo2, 0, 100)?,
        int("respiratory_rate", "eVitals.14", v.respiratory_rate, 0, 300)?,
        int("gcs_eye", "eVitals.19", v.gcs_eye, 1, 4)?,
        int("gcs_verbal", "eVitals.20", v.gcs_verbal, 1, 5)?,
        int("gcs_motor", "eVitals.21", v.gcs_motor, 1, 6)?,
        int("gcs_total", "eVitals.23", v.gcs_total, 3, 15)?,
        int("pain", "eVitals.27", v.pain, 0, 10)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    // 0/0 is a real reading (cardiac arrest); otherwise diastolic lies below systolic.
    if let (Some(s), Some(d)) = (v.systolic, v.diastolic)
        && (d > s || (d == s && s != 0))
    {
        return Err(EditError::Invalid {
            field: "vitals.diastolic".into(),
            element: "eVitals.07",
            reason: format!("diastolic {d} must be lower than systolic {s}; check the order of the two numbers"),
        });
    }
    if let (Some(e), Some(ve), Some(m)) = (v.gcs_eye, v.gcs_verbal, v.gcs_motor) {
        let sum = e + ve + m;
        match v.gcs_total {
            Some(t) if t != sum => {
                return Err(EditError::Invalid {
                    field: "vitals.gcs_total".into(),
                    element: "eVitals.23",
                    reason: format!("total {t} does not equal eye {e} + verbal {ve} + motor {m} = {sum}"),
                });
            }
            Some(_) => {}
            None => ints.push(("gcs_total".into(), sum)),
        }
    }
    let temp = match v.temperature_c {
        None => None,
        Some(t) if !(0.0..=50.0).contains(&t) || t.is_nan() => {
            return Err(EditError::OutOfRange {
                field: "vitals.temperature_c".into(),
                element: "eVitals.24",
                min: 0.0,
                max: 50.0,
                value: t,
            });
        }
        Some(t) => Some((t * 10.0).round() / 10.0),
    };
    let glucose = match &v.glucose {
        None => None,
        Some(Glucose::Value(g)) if !(0..=2000).contains(g) => {
            return Err(EditError::OutOfRange {
                field: "vitals.glucose".into(),
                element: "eVitals.18",
                min: 0.0,
                max: 2000.0,
                value: *g as f64,
            });
        }
        Some(Glucose::Value(g)) => Some(ScalarValue::Int(*g)),
        Some(Glucose::Reading(r)) => match r.to_ascii_lowercase().as_str() {
            "high" => Some(ScalarValue::Str("High".into())),
            "low" => Some(ScalarValue::Str("Low".into())),
            _ => {
                return Err(EditError::Invalid {
                    field: "vitals.glucose".into(),
                    element: "eVitals.18",
                    reason: format!("{r:?} is neither a number (mg/dL) nor the meter reading \"High\" or \"Low\""),
                });
            }
        },
    };
    if ints.is_empty() && temp.is_none() && glucose.is_none() {
        return Err(EditError::Invalid {
            field: "vitals".into(),
            element: "eVitals.VitalGroup",
            reason: "record at least one measurement".into(),
        });
    }
    let item = new_item(tx, &["vitals"], ctx)?;
    put(tx, &item, "taken_at", taken_at.unix_millis())?;
    for (k, x) in ints {
        put(tx, &item, &k, x)?;
    }
    if let Some(t) = temp {
        put(tx, &item, "temperature_c", t)?;
    }
    if let Some(g) = glucose {
        put(tx, &item, "glucose", g)?;
    }
    if let Some(m) = v.bp_method {
        put(tx, &item, "bp_method", m.as_str())?;
    }
    if let Some(p) = v.pain_scale {
        put(tx, &item, "pain_scale", p.as_str())?;
    }
    Ok(())
}

fn add_procedure(tx: &mut Transaction<'_>, ctx: &EditContext, p: &ProcedureInput) -> Res {
    let at = check_time(tx, "procedure.performed_at", "eProcedures.01", p.performed_at.unwrap_or(ctx.now), ctx)?;
    let name = text("procedure.procedure", "eProcedures.03", &p.procedure, 1, 200)?;
    if let Some(code) = p.snomed
        && !(100_000..=999_999_999_999_999_999).contains(&code)
    {
        return Err(EditError::Invalid {
            field: "procedure.snomed".into(),
            element: "eProcedures.03",
            reason: format!("{code} is not a SNOMED CT code (6 to 18 digits)"),
        });
    }
    let attempts = p.attempts.unwrap_or(1);
    if !(1..=10).contains(&attempts) {
        return Err(EditError::OutOfRange {
            field: "procedure.attempts".into(),
            element: "eProcedures.05",
            min: 1.0,
            max: 10.0,
            value: attempts as f64,
        });
    }
    let item = new_item(tx, &["procedures"], ctx)?;
    put(tx, &item, "performed_at", at.unix_millis())?;
    put(tx, &item, "procedure", name.as_str())?;
    if let Some(code) = p.snomed {
        put(tx, &item, "snomed", code)?;
    }
    put(tx, &item, "attempts", attempts)?;
    put(tx, &item, "successful", p.successful.unwrap_or(true))?;
    put(tx, &item, "performer", p.performer.as_ref().unwrap_or(&ctx.user).as_str())?;
    if let Some(l) = p.performer_level {
        put(tx, &item, "performer_level", l.as_str())?;
    }
    Ok(())
}

/// SNOMED CT 168537006 Plain radiography (procedure), for eProcedures.03.
const PLAIN_RADIOGRAPHY: i64 = 168_537_006;

fn record_exposure(tx: &mut Transaction<'_>, ctx: &EditContext, e: &ExposureInput) -> Res {
    let at = check_time(tx, "exposure.at", "eProcedures.01", e.at.unwrap_or(ctx.now), ctx)?;
    let id = text("exposure.exposure_id", "", &e.exposure_id, 1, 64)?;
    let procedures = layout::object(tx, &["procedures"]).ok_or_else(|| internal_msg("list missing"))?;
    if layout::items(tx, &procedures)
        .iter()
        .any(|(_, item)| layout::get_str(tx, item, "exposure_id").as_deref() == Some(id.as_str()))
    {
        return Err(EditError::Invalid {
            field: "exposure.exposure_id".into(),
            element: "",
            reason: format!("exposure {id} is already recorded"),
        });
    }
    let words = |field: &str, s: &str| text(field, "", s, 1, 16);
    let (body_part, view, laterality) = (
        words("exposure.body_part", &e.body_part)?,
        words("exposure.view", &e.view)?,
        words("exposure.laterality", &e.laterality)?,
    );
    // Generous bounds: a refused technique is recorded as asked, however wrong it was.
    let number = |field: &str, v: f64, max: f64| -> Res<f64> {
        if v.is_finite() && (0.0..=max).contains(&v) {
            Ok(v)
        } else {
            Err(EditError::OutOfRange { field: field.into(), element: "", min: 0.0, max, value: v })
        }
    };
    number("exposure.kv", e.kv, 1000.0)?;
    number("exposure.mas", e.mas, 100_000.0)?;
    number("exposure.ms", e.ms as f64, 100_000.0)?;
    for (field, v, max) in [
        ("exposure.delivered_kv", e.delivered_kv, 1000.0),
        ("exposure.delivered_mas", e.delivered_mas, 100_000.0),
        ("exposure.delivered_ms", e.delivered_ms.map(|m| m as f64), 100_000.0),
        ("exposure.dap_mgy_cm2", e.dap_mgy_cm2, 1_000_000.0),
    ] {
        if let Some(v) = v {
            number(field, v, max)?;
        }
    }
    let reason = e.reason.as_deref().map(|r| text("exposure.reason", "", r, 1, 500)).transpose()?;
    let mut hashes = Vec::new();
    for (field, sha) in [("exposure.dicom_sha256", &e.dicom_sha256), ("exposure.preview_sha256", &e.preview_sha256)] {
        if let Some(sha) = sha {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(EditError::Invalid {
                    field: field.into(),
                    element: "",
                    reason: "must be 64 lower-case hex digits (the SHA-256 of the stored blob)".into(),
                });
            }
            hashes.push((field.trim_start_matches("exposure."), sha.as_str()));
        }
    }
    let uid = e.sop_instance_uid.as_deref().map(|u| text("exposure.sop_instance_uid", "", u, 1, 64)).transpose()?;
    let item = new_item(tx, &["procedures"], ctx)?;
    put(tx, &item, "performed_at", at.unix_millis())?;
    put(tx, &item, "procedure", format!("X-ray {} {} {}", body_part, view, laterality).as_str())?;
    put(tx, &item, "snomed", PLAIN_RADIOGRAPHY)?;
    put(tx, &item, "attempts", 1i64)?;
    put(tx, &item, "successful", e.outcome == ExposureOutcome::Exposed)?;
    put(tx, &item, "performer", ctx.user.as_str())?;
    put(tx, &item, "exposure_id", id.as_str())?;
    put(tx, &item, "outcome", e.outcome.as_str())?;
    put(tx, &item, "body_part", body_part.as_str())?;
    put(tx, &item, "view", view.as_str())?;
    put(tx, &item, "laterality", laterality.as_str())?;
    put(tx, &item, "kv", e.kv)?;
    put(tx, &item, "mas", e.mas)?;
    put(tx, &item, "ms", e.ms)?;
    for (key, v) in
        [("delivered_kv", e.delivered_kv), ("delivered_mas", e.delivered_mas), ("dap_mgy_cm2", e.dap_mgy_cm2)]
    {
        if let Some(v) = v {
            put(tx, &item, key, v)?;
        }
    }
    if let Some(ms) = e.delivered_ms {
        put(tx, &item, "delivered_ms", ms)?;
    }
    if let Some(r) = reason {
        put(tx, &item, "reason", r.as_str())?;
    }
    for (key, sha) in hashes {
        put(tx, &item, key, sha)?;
    }
    if let Some(u) = uid {
        put(tx, &item, "sop_instance_uid", u.as_str())?;
    }
    Ok(())
}

fn add_medication(tx: &mut Transaction<'_>, ctx: &EditContext, m: &MedicationInput) -> Res {
    let at = check_time(tx, "medication.given_at", "eMedications.01", m.given_at.unwrap_or(ctx.now), ctx)?;
    let name = text("medication.medication", "eMedications.03", &m.medication, 1, 200)?;
    let rx = m.rxnorm.as_deref().map(|r| rxnorm("medication.rxnorm", "eMedications.03", r)).transpose()?;
    check_dose("medication.dose", "eMedications.05", m.dose)?;
    let item = new_item(tx, &["medications_given"], ctx)?;
    put(tx, &item, "given_at", at.unix_millis())?;
    put(tx, &item, "medication", name.as_str())?;
    if let Some(rx) = rx {
        put(tx, &item, "rxnorm", rx.as_str())?;
    }
    put(tx, &item, "dose", m.dose)?;
    put(tx, &item, "unit", m.unit.as_str())?;
    put(tx, &item, "route", m.route.as_str())?;
    if let Some(r) = m.response {
        put(tx, &item, "response", r.as_str())?;
    }
    put(tx, &item, "performer", m.performer.as_ref().unwrap_or(&ctx.user).as_str())?;
    if let Some(l) = m.performer_level {
        put(tx, &item, "performer_level", l.as_str())?;
    }
    Ok(())
}

fn add_attachment(tx: &mut Transaction<'_>, ctx: &EditContext, a: &AttachmentInput) -> Res {
    if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(EditError::Invalid {
            field: "attachment.sha256".into(),
            element: "",
            reason: "must be 64 lower-case hex digits (the SHA-256 of the stored blob)".into(),
        });
    }
    let media = text("attachment.media_type", "", &a.media_type, 3, 100)?;
    if !media.contains('/') {
        return Err(EditError::Invalid {
            field: "attachment.media_type".into(),
            element: "",
            reason: format!("{media:?} is not a media type such as application/dicom"),
        });
    }
    let label = a.label.as_deref().map(|l| text("attachment.label", "", l, 1, 200)).transpose()?;
    let item = new_item(tx, &["attachments"], ctx)?;
    put(tx, &item, "sha256", a.sha256.as_str())?;
    put(tx, &item, "kind", a.kind.as_str())?;
    put(tx, &item, "media_type", media.as_str())?;
    put(tx, &item, "size", a.size as i64)?;
    if let Some(l) = label {
        put(tx, &item, "label", l.as_str())?;
    }
    Ok(())
}

fn add_prescription(tx: &mut Transaction<'_>, ctx: &EditContext, p: &PrescriptionInput) -> Res {
    let name = text("prescription.medication", "", &p.medication, 1, 200)?;
    let rx = p.rxnorm.as_deref().map(|r| rxnorm("prescription.rxnorm", "", r)).transpose()?;
    check_dose("prescription.dose", "", p.dose)?;
    let freq = text("prescription.frequency", "", &p.frequency, 1, 200)?;
    if let Some(d) = p.duration_days
        && !(1..=365).contains(&d)
    {
        return Err(EditError::OutOfRange {
            field: "prescription.duration_days".into(),
            element: "",
            min: 1.0,
            max: 365.0,
            value: d as f64,
        });
    }
    let item = new_item(tx, &["prescriptions"], ctx)?;
    put(tx, &item, "medication", name.as_str())?;
    if let Some(rx) = rx {
        put(tx, &item, "rxnorm", rx.as_str())?;
    }
    put(tx, &item, "dose", p.dose)?;
    put(tx, &item, "unit", p.unit.as_str())?;
    put(tx, &item, "route", p.route.as_str())?;
    put(tx, &item, "frequency", freq.as_str())?;
    if let Some(d) = p.duration_days {
        put(tx, &item, "duration_days", d)?;
    }
    put_field(tx, &item, "status", &FieldValue::Text("draft".into()), &ctx.user, ctx.now).map_err(internal)
}

fn splice(tx: &mut Transaction<'_>, key: &str, field: &str, s: &TextSplice) -> Res {
    let obj = layout::object(tx, &[key]).ok_or_else(|| internal_msg("text missing"))?;
    let len = tx.length(&obj);
    let pos = s.pos.unwrap_or(len);
    if pos > len || s.delete > len - pos {
        return Err(EditError::Invalid {
            field: field.into(),
            element: "eNarrative.01",
            reason: format!(
                "splice at {pos} deleting {} runs past the end of the text ({len} characters); reload and retry",
                s.delete
            ),
        });
    }
    if s.insert.chars().count() > 100_000 {
        return Err(EditError::Invalid {
            field: field.into(),
            element: "eNarrative.01",
            reason: "insert at most 100,000 characters at once".into(),
        });
    }
    if s.delete == 0 && s.insert.is_empty() {
        return Err(EditError::Invalid {
            field: field.into(),
            element: "eNarrative.01",
            reason: "the splice neither deletes nor inserts anything".into(),
        });
    }
    tx.splice_text(&obj, pos, s.delete as isize, &s.insert).map_err(internal)
}

fn text(field: &str, element: &'static str, s: &str, min: usize, max: usize) -> Res<String> {
    let t = s.trim();
    let n = t.chars().count();
    if n < min || n > max {
        return Err(EditError::Invalid {
            field: field.into(),
            element,
            reason: format!("must be {min} to {max} characters long; got {n}"),
        });
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(EditError::Invalid {
            field: field.into(),
            element,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(t.to_owned())
}

fn rxnorm(field: &str, element: &'static str, s: &str) -> Res<String> {
    if (2..=9).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(EditError::Invalid {
            field: field.into(),
            element,
            reason: format!("{s:?} is not an RxNorm RXCUI (2 to 9 digits)"),
        })
    }
}

fn check_dose(field: &str, element: &'static str, dose: f64) -> Res {
    if dose.is_finite() && dose > 0.0 && dose < 1_000_000.0 {
        Ok(())
    } else {
        Err(EditError::OutOfRange { field: field.into(), element, min: 0.001, max: 999_999.999, value: dose })
    }
}

/// Events of a case happen around it: from a day before it was opened (a case opened late,
/// times entered afterwards) to a few minutes past the device clock (clocks drift).
const BEFORE_CASE_MS: i64 = 24 * 60 * 60 * 1000;

fn check_time(
    doc: &impl ReadDoc,
    field: &str,
    element: &'static str,
    t: Timestamp,
    ctx: &EditContext,
) -> Res<Timestamp> {
    if let Some(created) = layout::walk_maps(doc, &[layout::CASE]).and_then(|c| layout::get_i64(doc, &c, "created_at"))
        && t.unix_millis() < created - BEFORE_CASE_MS
    {
        return Err(EditError::Invalid {
            field: field.into(),
            element,
            reason: format!(
                "{t} is more than a day before the case was opened ({}); check the date",
                Timestamp::from_unix_millis(created)
            ),
        });
    }
    if t.unix_millis() > ctx.now.unix_millis() + FUTURE_TOLERANCE_MS {
        return Err(EditError::Invalid {
            field: field.into(),
            element,
            reason: format!("{t} is in the future (now is {})", ctx.now),
        });
    }
    // NEMSIS DateTimeType starts at 1950; anything earlier is a typo.
    if t.unix_millis() < -631_152_000_000 {
        return Err(EditError::Invalid { field: field.into(), element, reason: format!("{t} is before 1950") });
    }
    Ok(t)
}

/// Whether the case is closed, and when: the time of its `closed` status entry.
pub(crate) fn closed_at(doc: &impl ReadDoc) -> Option<Timestamp> {
    let list = layout::object(doc, &["timeline"])?;
    layout::items(doc, &list)
        .into_iter()
        .filter(|(_, obj)| layout::get_str(doc, obj, "status").as_deref() == Some(CaseStatus::Closed.as_str()))
        .filter_map(|(_, obj)| layout::get_i64(doc, &obj, "time"))
        .min()
        .map(Timestamp::from_unix_millis)
}

fn internal(e: automerge::AutomergeError) -> EditError {
    internal_msg(&e.to_string())
}

fn internal_msg(msg: &str) -> EditError {
    EditError::Internal(msg.to_owned())
}
