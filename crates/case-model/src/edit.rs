//! Edits: what a person can do to a case, as the API and the touchscreen send it.
//!
//! One user action is one batch of edits and becomes one Automerge change, so that the
//! action is durable (or refused) as a whole and costs one commit.

use serde::{Deserialize, Serialize};

use crate::codes::{
    AttachmentKind, BpMethod, CaregiverLevel, CaseStatus, CodeSystem, DoseUnit, MedicationResponse, PainScale, Route,
};
use crate::fields::{FieldName, FieldValue};
use crate::ids::UserId;
use crate::time::{TimeSource, Timestamp};

/// Who acts, and when. Passed in so that this crate reads no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditContext {
    /// The person (or `system:...` process) making the edit.
    pub user: UserId,
    /// The device's current time.
    pub now: Timestamp,
}

/// One edit. Serialised with an `op` tag, e.g. `{"op": "add_vitals", "heart_rate": 88}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Edit {
    /// Record that the case reached a status (eTimes). `closed` locks the case.
    SetStatus {
        /// The status reached.
        status: CaseStatus,
        /// When; defaults to now.
        #[serde(default)]
        at: Option<Timestamp>,
        /// Where the time came from; defaults to the device clock.
        #[serde(default)]
        source: TimeSource,
    },
    /// Set (or clear with `null`) a single-valued field such as `patient.date_of_birth`.
    SetField {
        /// Which field.
        field: FieldName,
        /// The new value.
        value: FieldValue,
    },
    /// Record "no known allergies" (PN 8801013 on eHistory.06).
    RecordNoKnownAllergies,
    /// Record an allergy; sets the allergy status to `known`.
    AddAllergy(AllergyInput),
    /// Mark an allergy as entered in error. It stays in the record, struck through.
    RetractAllergy {
        /// The allergy's id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A medication the patient takes (eHistory.12).
    AddCurrentMedication(CurrentMedicationInput),
    /// A past medical or surgical condition (eHistory.08).
    AddHistory(HistoryInput),
    /// A set of vital signs taken together (eVitals.VitalGroup).
    AddVitals(VitalsInput),
    /// A procedure or intervention performed (eProcedures.ProcedureGroup).
    AddProcedure(ProcedureInput),
    /// A medication given (eMedications.MedicationGroup).
    AddMedication(MedicationInput),
    /// Insert and/or delete text in the narrative (eNarrative.01). Positions count Unicode code points.
    EditNarrative(TextSplice),
    /// Insert and/or delete text in the assessment.
    EditAssessment(TextSplice),
    /// Attach a stored blob (X-ray, video segment, photo).
    AddAttachment(AttachmentInput),
    /// An X-ray exposure, or one refused or stopped: a procedure (eProcedures, SNOMED CT
    /// 168537006 Plain radiography) with its technique and dose. Written by the agent's X-ray
    /// service, never by hand.
    RecordExposure(ExposureInput),
    /// Points of the van's route from its GPS receiver, thinned (a point every hundred metres
    /// or so, and at turns). Written by the agent's GPS service, never by hand.
    AddTrackPoints {
        /// The points, oldest first.
        points: Vec<TrackPoint>,
    },
    /// Ask a doctor for a consult.
    RequestConsult {
        /// What the crew wants to know.
        reason: String,
        /// How soon.
        #[serde(default)]
        urgency: Urgency,
    },
    /// A doctor's note on the case.
    AddNote {
        /// The note.
        text: String,
        /// The consult it answers, if any.
        #[serde(default)]
        consult_id: Option<String>,
    },
    /// A prescription draft.
    AddPrescription(PrescriptionInput),
    /// A chat message beside a consult.
    AddChat {
        /// The message.
        text: String,
    },
    /// A correction or addition made after the case closed.
    AddAddendum {
        /// The addendum.
        text: String,
    },
    /// Resolve a conflict by choosing (or entering) the value that stands.
    ResolveConflict {
        /// The conflicting field's path, as the conflict listing gives it.
        path: String,
        /// The value chosen.
        value: FieldValue,
    },
}

impl Edit {
    /// What the audit log says of the edit: its name, and for an exposure the technique,
    /// outcome and dose (device values, not patient data).
    pub fn audit_detail(&self) -> String {
        match self {
            Edit::RecordExposure(e) => {
                let dap = e.dap_mgy_cm2.map_or_else(|| "unknown".to_owned(), |d| format!("{d:.2} mGy·cm²"));
                format!(
                    "record_exposure {} {} {:.1} kV {:.2} mAs {} ms DAP {dap}",
                    e.exposure_id,
                    e.outcome.as_str(),
                    e.kv,
                    e.mas,
                    e.ms
                )
            }
            other => other.name().to_owned(),
        }
    }

    /// Short name of the edit, recorded with each change.
    pub fn name(&self) -> &'static str {
        match self {
            Edit::SetStatus { .. } => "set_status",
            Edit::SetField { .. } => "set_field",
            Edit::RecordNoKnownAllergies => "record_no_known_allergies",
            Edit::AddAllergy(_) => "add_allergy",
            Edit::RetractAllergy { .. } => "retract_allergy",
            Edit::AddCurrentMedication(_) => "add_current_medication",
            Edit::AddHistory(_) => "add_history",
            Edit::AddVitals(_) => "add_vitals",
            Edit::AddProcedure(_) => "add_procedure",
            Edit::AddMedication(_) => "add_medication",
            Edit::EditNarrative(_) => "edit_narrative",
            Edit::EditAssessment(_) => "edit_assessment",
            Edit::AddAttachment(_) => "add_attachment",
            Edit::RecordExposure(_) => "record_exposure",
            Edit::AddTrackPoints { .. } => "add_track_points",
            Edit::RequestConsult { .. } => "request_consult",
            Edit::AddNote { .. } => "add_note",
            Edit::AddPrescription(_) => "add_prescription",
            Edit::AddChat { .. } => "add_chat",
            Edit::AddAddendum { .. } => "add_addendum",
            Edit::ResolveConflict { .. } => "resolve_conflict",
        }
    }
}

/// An allergy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllergyInput {
    /// What the patient reacts to, in words ("penicillin").
    pub substance: String,
    /// Code of the substance (RxNorm or ICD-10 Z88.x for medications, SNOMED for others).
    #[serde(default)]
    pub code: Option<String>,
    /// The code's system.
    #[serde(default)]
    pub code_system: Option<CodeSystem>,
    /// Medication (eHistory.06) or environmental/food (eHistory.07).
    #[serde(default)]
    pub category: AllergyCategory,
}

/// Kind of allergy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AllergyCategory {
    /// eHistory.06 Medication Allergies.
    #[default]
    Medication,
    /// eHistory.07 Environmental/Food Allergies.
    Environmental,
}

/// A current medication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentMedicationInput {
    /// The medication, in words.
    pub name: String,
    /// RxNorm RXCUI, if known.
    #[serde(default)]
    pub rxnorm: Option<String>,
    /// Dose and frequency as the patient tells them.
    #[serde(default)]
    pub dose: Option<String>,
}

/// A history item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryInput {
    /// The condition, in words.
    pub condition: String,
    /// ICD-10-CM code, if known.
    #[serde(default)]
    pub icd10: Option<String>,
}

/// Blood glucose: a number in mg/dL, or the meter's "High" or "Low".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Glucose {
    /// mg/dL, 0 to 2000.
    Value(i64),
    /// "High" or "Low".
    Reading(String),
}

/// One set of vital signs (eVitals.VitalGroup). At least one measurement is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VitalsInput {
    /// When they were taken (eVitals.01); defaults to now.
    #[serde(default)]
    pub taken_at: Option<Timestamp>,
    /// eVitals.10, beats per minute.
    #[serde(default)]
    pub heart_rate: Option<i64>,
    /// eVitals.06, mmHg.
    #[serde(default)]
    pub systolic: Option<i64>,
    /// eVitals.07, mmHg.
    #[serde(default)]
    pub diastolic: Option<i64>,
    /// eVitals.08.
    #[serde(default)]
    pub bp_method: Option<BpMethod>,
    /// eVitals.12, percent.
    #[serde(default)]
    pub spo2: Option<i64>,
    /// eVitals.14, breaths per minute.
    #[serde(default)]
    pub respiratory_rate: Option<i64>,
    /// eVitals.24, degrees Celsius, one decimal.
    #[serde(default)]
    pub temperature_c: Option<f64>,
    /// eVitals.19.
    #[serde(default)]
    pub gcs_eye: Option<i64>,
    /// eVitals.20.
    #[serde(default)]
    pub gcs_verbal: Option<i64>,
    /// eVitals.21.
    #[serde(default)]
    pub gcs_motor: Option<i64>,
    /// eVitals.23; computed from the components when they are all given.
    #[serde(default)]
    pub gcs_total: Option<i64>,
    /// eVitals.18.
    #[serde(default)]
    pub glucose: Option<Glucose>,
    /// eVitals.27, 0 to 10.
    #[serde(default)]
    pub pain: Option<i64>,
    /// eVitals.28.
    #[serde(default)]
    pub pain_scale: Option<PainScale>,
}

/// A procedure performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcedureInput {
    /// eProcedures.01; defaults to now.
    #[serde(default)]
    pub performed_at: Option<Timestamp>,
    /// The procedure, in words ("splint applied").
    pub procedure: String,
    /// eProcedures.03 SNOMED CT code, if known.
    #[serde(default)]
    pub snomed: Option<i64>,
    /// eProcedures.05, 1 to 10; defaults to 1.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// eProcedures.06; defaults to true.
    #[serde(default)]
    pub successful: Option<bool>,
    /// Who performed it; defaults to the acting user (eProcedures.09).
    #[serde(default)]
    pub performer: Option<UserId>,
    /// eProcedures.10.
    #[serde(default)]
    pub performer_level: Option<CaregiverLevel>,
}

/// A medication given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedicationInput {
    /// eMedications.01; defaults to now.
    #[serde(default)]
    pub given_at: Option<Timestamp>,
    /// The medication, in words.
    pub medication: String,
    /// eMedications.03 RxNorm RXCUI, if known.
    #[serde(default)]
    pub rxnorm: Option<String>,
    /// eMedications.05.
    pub dose: f64,
    /// eMedications.06.
    pub unit: DoseUnit,
    /// eMedications.04.
    pub route: Route,
    /// eMedications.07, when known.
    #[serde(default)]
    pub response: Option<MedicationResponse>,
    /// Who gave it; defaults to the acting user (eMedications.09).
    #[serde(default)]
    pub performer: Option<UserId>,
    /// eMedications.10.
    #[serde(default)]
    pub performer_level: Option<CaregiverLevel>,
}

/// A text splice. Positions count Unicode code points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSplice {
    /// Where to start; `null` means the end of the text.
    #[serde(default)]
    pub pos: Option<usize>,
    /// How many characters to delete from `pos`.
    #[serde(default)]
    pub delete: usize,
    /// Text to insert at `pos`.
    #[serde(default)]
    pub insert: String,
}

/// One point of the van's route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackPoint {
    /// When the fix was taken (GPS time).
    pub at: Timestamp,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Speed over ground, metres per second.
    #[serde(default)]
    pub speed_mps: Option<f64>,
}

/// A reference to a stored blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    /// SHA-256 of the blob's content, 64 hex digits.
    pub sha256: String,
    /// What it is.
    pub kind: AttachmentKind,
    /// Its media type (`application/dicom`, `image/png`, `video/mp4`...).
    pub media_type: String,
    /// Size in bytes.
    pub size: u64,
    /// A label for people.
    #[serde(default)]
    pub label: Option<String>,
}

/// How an exposure attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureOutcome {
    /// The exposure ran to its end.
    Exposed,
    /// It started (or may have started) and was stopped early.
    Aborted,
    /// It was refused before anything was sent to the generator.
    Refused,
}

impl ExposureOutcome {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExposureOutcome::Exposed => "exposed",
            ExposureOutcome::Aborted => "aborted",
            ExposureOutcome::Refused => "refused",
        }
    }
}

/// An exposure attempt as the X-ray service records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposureInput {
    /// The attempt's id (unique; recording the same id twice is refused).
    pub exposure_id: String,
    /// When; defaults to now (eProcedures.01).
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// How it ended.
    pub outcome: ExposureOutcome,
    /// Body part examined (DICOM Body Part Examined term, e.g. `HAND`).
    pub body_part: String,
    /// View (`PA`, `AP`, `LAT`...).
    pub view: String,
    /// `L`, `R` or `U` (unpaired).
    pub laterality: String,
    /// Technique asked: kV.
    pub kv: f64,
    /// Technique asked: mAs.
    pub mas: f64,
    /// Technique asked: exposure time, ms.
    pub ms: i64,
    /// Delivered kV, as the generator reported it.
    #[serde(default)]
    pub delivered_kv: Option<f64>,
    /// Delivered mAs.
    #[serde(default)]
    pub delivered_mas: Option<f64>,
    /// Delivered time, ms.
    #[serde(default)]
    pub delivered_ms: Option<i64>,
    /// Dose-area product delivered, mGy·cm² (0 for a refusal; absent when unknown).
    #[serde(default)]
    pub dap_mgy_cm2: Option<f64>,
    /// Why it was refused or stopped, or what else the operator must know.
    #[serde(default)]
    pub reason: Option<String>,
    /// The DICOM object's blob, when an image was stored.
    #[serde(default)]
    pub dicom_sha256: Option<String>,
    /// The preview's blob.
    #[serde(default)]
    pub preview_sha256: Option<String>,
    /// The image's SOP Instance UID.
    #[serde(default)]
    pub sop_instance_uid: Option<String>,
}

/// Consult urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    /// Answer when you can.
    #[default]
    Routine,
    /// Within minutes.
    Urgent,
    /// Now.
    Emergent,
}

impl Urgency {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Routine => "routine",
            Urgency::Urgent => "urgent",
            Urgency::Emergent => "emergent",
        }
    }
}

/// A prescription draft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrescriptionInput {
    /// The medication, in words.
    pub medication: String,
    /// RxNorm RXCUI, if known.
    #[serde(default)]
    pub rxnorm: Option<String>,
    /// Dose per administration.
    pub dose: f64,
    /// Unit of the dose.
    pub unit: DoseUnit,
    /// Route.
    pub route: Route,
    /// How often ("every 4 hours as needed").
    pub frequency: String,
    /// For how many days.
    #[serde(default)]
    pub duration_days: Option<i64>,
}
