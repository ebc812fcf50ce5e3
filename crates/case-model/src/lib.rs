//! The case record: one Automerge document per case, with a typed API over it.
//!
//! A paramedic's edits land in the van's replica at once and offline; a doctor's edits land
//! in the hub's replica; Automerge merges them. This crate is the only place that knows the
//! document's layout. It does no I/O and reads no clock: callers pass the time and the acting
//! user in an [`EditContext`], and persist the bytes of each [`Applied`] change themselves.
//!
//! # Rules the model enforces
//!
//! - Every edit is validated on the way in; a refused batch leaves no trace ([`BatchError`]
//!   names the edit, the field, its NEMSIS element and the accepted range).
//! - Every change records the user who made it, in the change message ([`ChangeMeta`]), and
//!   every single-valued field stores `{v, by, at}` so conflicts keep their authors.
//! - Conflicts are shown, never silently resolved ([`CaseDoc::conflicts`]); a person resolves
//!   them with [`Edit::ResolveConflict`]. "No known allergies" standing against a recorded
//!   allergy is a conflict too.
//! - A closed case takes addenda only ([`EditError::CaseClosed`]). Concurrent edits made
//!   elsewhere before the close still merge in: they happened before the close was known.
//! - The document carries a schema version; older documents are migrated by
//!   [`CaseDoc::migrate`], newer ones are refused for editing ([`EditError::NewerSchema`]).
//!
//! # Actors
//!
//! An Automerge actor must never reuse a sequence number. A van that loses power can lose
//! its last change from disk while a peer already saw it, so each agent session takes a
//! fresh actor id ([`session_actor`]): 8 bytes naming the device and 8 random bytes.
//!
//! # Mapping to NEMSIS 3.5.1
//!
//! Exporting a case as an EMSDataSet is a mapping from this table.
//!
//! | our field | NEMSIS element |
//! | --- | --- |
//! | `case.id` | `PatientCareReport/@UUID`, eRecord.01 |
//! | `case.van` | eResponse.13 EMS Vehicle (Unit) Number |
//! | `response.incident_number` | eResponse.03 Incident Number |
//! | timeline `call_received` | eTimes.01 PSAP Call Date/Time |
//! | timeline `dispatched` | eTimes.03 Unit Notified by Dispatch Date/Time |
//! | timeline `en_route` | eTimes.05 Unit En Route Date/Time |
//! | timeline `on_scene` | eTimes.06 Unit Arrived on Scene Date/Time |
//! | timeline `patient_contact` | eTimes.07 Arrived at Patient Date/Time |
//! | timeline `transporting` | eTimes.09 Unit Left Scene Date/Time |
//! | timeline `at_destination` | eTimes.11 Patient Arrived at Destination Date/Time |
//! | timeline `closed` | eTimes.16 EMS Call Completed Date/Time |
//! | `patient.temp_id` | ePatient.01 EMS Patient ID (until matched at the hub) |
//! | `patient.last_name`, `first_name`, `middle_name` | ePatient.02, ePatient.03, ePatient.04 |
//! | `patient.date_of_birth` | ePatient.17 Date of Birth |
//! | `patient.age`, `patient.age_units` | ePatient.15 Age, ePatient.16 Age Units |
//! | `patient.age_estimated` = true | ePatient.15 with PN 8801029 Approximate |
//! | `patient.sex` | ePatient.25 Sex (ePatient.13 Gender is deprecated) |
//! | `patient.allergy_status` = `no_known_allergies` | eHistory.06 nil with PN 8801013 No Known Drug Allergy |
//! | `patient.allergies` (medication) | eHistory.06 Medication Allergies (RxNorm, ICD-10 Z88.x) |
//! | `patient.allergies` (environmental) | eHistory.07 Environmental/Food Allergies (SNOMED CT) |
//! | `patient.medications` | eHistory.12 Current Medications |
//! | `patient.history` | eHistory.08 Medical/Surgical History |
//! | `patient.insurance.payer`, `group_id`, `policy_id` | ePayment.10, ePayment.17, ePayment.18 |
//! | `situation.chief_complaint` | eSituation.04 Complaint (eSituation.03 = 2803001 Chief) |
//! | `situation.symptom_onset` | eSituation.01 Date/Time of Symptom Onset |
//! | `situation.possible_injury` | eSituation.02 Possible Injury |
//! | `situation.primary_impression` | eSituation.11 Provider's Primary Impression |
//! | `situation.acuity` | eSituation.13 Initial Patient Acuity |
//! | vitals `taken_at` | eVitals.01 |
//! | vitals `systolic`, `diastolic`, `bp_method` | eVitals.06, eVitals.07, eVitals.08 |
//! | vitals `heart_rate` | eVitals.10 |
//! | vitals `spo2` | eVitals.12 |
//! | vitals `respiratory_rate` | eVitals.14 |
//! | vitals `glucose` | eVitals.18 |
//! | vitals `gcs_eye`, `gcs_verbal`, `gcs_motor`, `gcs_total` | eVitals.19, eVitals.20, eVitals.21, eVitals.23 |
//! | vitals `temperature_c` | eVitals.24 |
//! | vitals `pain`, `pain_scale` | eVitals.27, eVitals.28 |
//! | procedure `performed_at`, `snomed`, `attempts`, `successful` | eProcedures.01, .03, .05, .06 |
//! | procedure `performer`, `performer_level` | eProcedures.09, .10 |
//! | medication `given_at`, `rxnorm`, `route`, `dose`, `unit`, `response` | eMedications.01, .03, .04, .05, .06, .07 |
//! | medication `performer`, `performer_level` | eMedications.09, .10 |
//! | `narrative` | eNarrative.01 Patient Care Report Narrative |
//!
//! Code lists live in [`codes`], each with its NEMSIS codes.

pub mod codes;
pub mod edit;
pub mod fields;
pub mod ids;
pub mod time;

mod apply;
mod conflict;
mod doc;
mod error;
mod layout;
mod schema;
mod view;

pub use automerge::{ActorId, ChangeHash};
pub use conflict::{Conflict, ConflictKind, ConflictValue};
pub use doc::{Applied, CaseDoc, ChangeInfo, ChangeMeta, NewCase, session_actor};
pub use edit::{Edit, EditContext};
pub use error::{BatchError, EditError, LoadError};
pub use fields::{FieldName, FieldValue};
pub use ids::{CaseId, IdError, OrgId, UserId, VanId};
pub use layout::SCHEMA_VERSION;
pub use time::{TimeSource, Timestamp};
pub use view::{CaseSummary, CaseView, Item};
