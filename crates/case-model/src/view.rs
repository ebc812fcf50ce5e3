//! Reading a case document into plain, serialisable structs (the HTTP API's shape).

use automerge::{ObjId, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::codes::CaseStatus;
use crate::conflict::Conflict;
use crate::edit::TrackPoint;
use crate::fields::{FieldName, FieldValue};
use crate::ids::{CaseId, OrgId, VanId};
use crate::layout;
use crate::time::Timestamp;

/// A whole case, as people see it: winning values, with conflicts listed beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseView {
    /// Case id.
    pub id: CaseId,
    /// Owning organisation.
    pub org: OrgId,
    /// Van that opened it (eResponse.13).
    pub van: VanId,
    /// Schema version of the document.
    pub schema: u64,
    /// When it was opened.
    pub created_at: Timestamp,
    /// Who opened it.
    pub created_by: String,
    /// The latest status reached.
    pub status: Option<CaseStatus>,
    /// When it was closed; a closed case takes addenda only.
    pub closed_at: Option<Timestamp>,
    /// Every status reached, in time order.
    pub timeline: Vec<Item>,
    /// The temporary patient identity used until the patient is identified.
    pub temp_patient_id: Option<String>,
    /// Single-valued fields by path (`patient.date_of_birth`...): value, who, when.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Allergies (eHistory.06/07), retracted ones included and marked.
    pub allergies: Vec<Item>,
    /// Current medications (eHistory.12).
    pub current_medications: Vec<Item>,
    /// Medical and surgical history (eHistory.08).
    pub history: Vec<Item>,
    /// Vital signs, oldest first (eVitals).
    pub vitals: Vec<Item>,
    /// Procedures (eProcedures).
    pub procedures: Vec<Item>,
    /// Medications given (eMedications).
    pub medications_given: Vec<Item>,
    /// Assessment text.
    pub assessment: String,
    /// Narrative (eNarrative.01).
    pub narrative: String,
    /// Attachments (blobs).
    pub attachments: Vec<Item>,
    /// Consult requests.
    pub consults: Vec<Item>,
    /// Doctors' notes.
    pub notes: Vec<Item>,
    /// Prescriptions.
    pub prescriptions: Vec<Item>,
    /// Chat messages.
    pub chat: Vec<Item>,
    /// Addenda made after closing.
    pub addenda: Vec<Item>,
    /// How past conflicts were resolved.
    pub resolutions: Vec<Item>,
    /// Unresolved conflicts.
    pub conflicts: Vec<Conflict>,
    /// The van's route, thinned, oldest first.
    #[serde(default)]
    pub track: Vec<TrackPoint>,
}

/// A list item: its id and its properties as JSON (`by` and `at` always present).
pub type Item = serde_json::Map<String, serde_json::Value>;

/// What the store's index keeps for each case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    /// Case id.
    pub id: CaseId,
    /// Owning organisation.
    pub org: OrgId,
    /// Van.
    pub van: VanId,
    /// Latest status.
    pub status: Option<CaseStatus>,
    /// When it was opened.
    pub created_at: Timestamp,
    /// Patient's name as recorded ("Last, First"), if any.
    pub patient_name: Option<String>,
    /// Temporary patient identity.
    pub temp_patient_id: Option<String>,
    /// Chief complaint.
    pub chief_complaint: Option<String>,
    /// Whether any conflict is waiting for a person.
    pub has_conflicts: bool,
}

pub(crate) fn view(doc: &impl ReadDoc, id: CaseId, org: &OrgId, van: &VanId, conflicts: Vec<Conflict>) -> CaseView {
    let case = layout::walk_maps(doc, &[layout::CASE]);
    let list = |path: &[&str]| layout::object(doc, path).map(|l| items(doc, &l)).unwrap_or_default();
    let text = |key: &str| layout::object(doc, &[key]).and_then(|t| doc.text(&t).ok()).unwrap_or_default();
    let mut timeline = list(&["timeline"]);
    timeline.sort_by_key(|i| (i.get("time").and_then(|t| t.as_str()).map(str::to_owned), status_rank(i)));
    let mut fields = serde_json::Map::new();
    for f in FieldName::ALL {
        if let Some(v) = field_json(doc, *f) {
            fields.insert(f.path().to_owned(), v);
        }
    }
    CaseView {
        id,
        org: org.clone(),
        van: van.clone(),
        schema: layout::get_i64(doc, &automerge::ROOT, layout::SCHEMA).unwrap_or(0) as u64,
        created_at: Timestamp::from_unix_millis(
            case.as_ref().and_then(|c| layout::get_i64(doc, c, "created_at")).unwrap_or(0),
        ),
        created_by: case.as_ref().and_then(|c| layout::get_str(doc, c, "created_by")).unwrap_or_default(),
        status: current_status(doc),
        closed_at: crate::apply::closed_at(doc),
        timeline,
        temp_patient_id: layout::walk_maps(doc, &["patient"]).and_then(|p| layout::get_str(doc, &p, "temp_id")),
        fields,
        allergies: list(&["patient", "allergies"]),
        current_medications: list(&["patient", "medications"]),
        history: list(&["patient", "history"]),
        vitals: list(&["vitals"]),
        procedures: list(&["procedures"]),
        medications_given: list(&["medications_given"]),
        assessment: text(layout::ASSESSMENT),
        narrative: text(layout::NARRATIVE),
        attachments: list(&["attachments"]),
        consults: list(&["consults"]),
        notes: list(&["notes"]),
        prescriptions: list(&["prescriptions"]),
        chat: list(&["chat"]),
        addenda: list(&["addenda"]),
        resolutions: list(&["resolutions"]),
        conflicts,
        track: track(doc),
    }
}

pub(crate) fn summary(doc: &impl ReadDoc, id: CaseId, org: &OrgId, van: &VanId, has_conflicts: bool) -> CaseSummary {
    let case = layout::walk_maps(doc, &[layout::CASE]);
    let patient = layout::walk_maps(doc, &["patient"]);
    let text_field = |f: FieldName| match field_value(doc, f) {
        Some(FieldValue::Text(s)) => Some(s),
        _ => None,
    };
    let patient_name = match (text_field(FieldName::LastName), text_field(FieldName::FirstName)) {
        (Some(l), Some(f)) => Some(format!("{l}, {f}")),
        (Some(l), None) => Some(l),
        (None, Some(f)) => Some(f),
        (None, None) => None,
    };
    CaseSummary {
        id,
        org: org.clone(),
        van: van.clone(),
        status: current_status(doc),
        created_at: Timestamp::from_unix_millis(
            case.as_ref().and_then(|c| layout::get_i64(doc, c, "created_at")).unwrap_or(0),
        ),
        patient_name,
        temp_patient_id: patient.and_then(|p| layout::get_str(doc, &p, "temp_id")),
        chief_complaint: text_field(FieldName::ChiefComplaint),
        has_conflicts,
    }
}

/// The latest status: the entry with the latest time, ties broken by the normal order of a call.
fn current_status(doc: &impl ReadDoc) -> Option<CaseStatus> {
    let list = layout::object(doc, &["timeline"])?;
    layout::items(doc, &list)
        .into_iter()
        .filter_map(|(_, o)| {
            let status = CaseStatus::parse(&layout::get_str(doc, &o, "status")?)?;
            Some((layout::get_i64(doc, &o, "time").unwrap_or(0), status.rank(), status))
        })
        .max_by_key(|(t, r, _)| (*t, *r))
        .map(|(_, _, s)| s)
}

fn status_rank(item: &Item) -> usize {
    item.get("status").and_then(|s| s.as_str()).and_then(CaseStatus::parse).map_or(0, CaseStatus::rank)
}

fn field_value(doc: &impl ReadDoc, f: FieldName) -> Option<FieldValue> {
    let path: Vec<&str> = f.path().split('.').collect();
    let (key, parents) = path.split_last()?;
    let obj = layout::walk_maps(doc, parents)?;
    layout::field_at(doc, &obj, key).map(|r| r.value).filter(|v| *v != FieldValue::Null)
}

fn field_json(doc: &impl ReadDoc, f: FieldName) -> Option<serde_json::Value> {
    let path: Vec<&str> = f.path().split('.').collect();
    let (key, parents) = path.split_last()?;
    let obj = layout::walk_maps(doc, parents)?;
    let rec = layout::field_at(doc, &obj, key)?;
    let value = match (&rec.value, f.is_date_time()) {
        (FieldValue::Int(ms), true) => Timestamp::from_unix_millis(*ms).to_string().into(),
        (v, _) => v.to_json(),
    };
    Some(serde_json::json!({ "value": value, "by": rec.by, "at": rec.at, "nemsis": f.nemsis_element() }))
}

/// Keys holding milliseconds since the epoch, shown as RFC 3339.
const TIME_KEYS: &[&str] = &["at", "time", "taken_at", "performed_at", "given_at"];

pub(crate) fn attachments(doc: &impl ReadDoc) -> Vec<Item> {
    layout::object(doc, &["attachments"]).map(|l| items(doc, &l)).unwrap_or_default()
}

/// The track, its integers (1e-7 degrees, cm/s) back in degrees and m/s.
fn track(doc: &impl ReadDoc) -> Vec<TrackPoint> {
    let Some(list) = layout::object(doc, &["track"]) else {
        return Vec::new();
    };
    layout::items(doc, &list)
        .into_iter()
        .filter_map(|(_, obj)| {
            Some(TrackPoint {
                at: Timestamp::from_unix_millis(layout::get_i64(doc, &obj, "t")?),
                lat: layout::get_i64(doc, &obj, "lat")? as f64 / 1e7,
                lon: layout::get_i64(doc, &obj, "lon")? as f64 / 1e7,
                speed_mps: layout::get_i64(doc, &obj, "speed_cms").map(|v| v as f64 / 100.0),
            })
        })
        .collect()
}

fn items(doc: &impl ReadDoc, list: &ObjId) -> Vec<Item> {
    layout::items(doc, list).into_iter().map(|(id, obj)| item(doc, id, &obj)).collect()
}

fn item(doc: &impl ReadDoc, id: String, obj: &ObjId) -> Item {
    let mut out = Item::new();
    out.insert("id".into(), id.into());
    for entry in doc.map_range(obj, ..) {
        let key = entry.key.as_ref();
        let value = match entry.value {
            automerge::ValueRef::Scalar(_) => {
                let automerge::Value::Scalar(s) = entry.value.clone().into_value() else {
                    continue;
                };
                let v = layout::from_scalar(&s);
                match (&v, TIME_KEYS.contains(&key)) {
                    (FieldValue::Int(ms), true) => Timestamp::from_unix_millis(*ms).to_string().into(),
                    _ => v.to_json(),
                }
            }
            automerge::ValueRef::Object(automerge::ObjType::Map) => match layout::read_field(doc, &entry.id()) {
                Some(r) => serde_json::json!({ "value": r.value.to_json(), "by": r.by, "at": r.at }),
                None => continue,
            },
            _ => continue,
        };
        out.insert(key.to_owned(), value);
    }
    out
}
