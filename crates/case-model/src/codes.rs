//! Code lists, taken from the NEMSIS 3.5.1 XSDs.
//!
//! Each enum carries the NEMSIS element it fills, its wire name in our API and documents, the
//! NEMSIS code that an EMSDataSet export writes, and the label NEMSIS gives it. Exporting a case
//! is therefore a lookup, not a translation table kept somewhere else.

use serde::{Deserialize, Serialize};

macro_rules! code_list {
    (
        $(#[$doc:meta])*
        $name:ident, element = $element:literal,
        { $( $variant:ident = ($wire:literal, $code:literal, $label:literal) ),+ $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum $name {
            $(
                #[doc = $label]
                #[serde(rename = $wire)]
                $variant,
            )+
        }

        impl $name {
            /// The NEMSIS element this code list fills.
            pub const ELEMENT: &'static str = $element;
            /// Every value, in NEMSIS order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in our API and in the case document.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// The NEMSIS code written on export.
            pub fn nemsis_code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            /// The NEMSIS label.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// Parses our wire name or the NEMSIS code.
            pub fn parse(s: &str) -> Option<$name> {
                if s.is_empty() {
                    return None;
                }
                $name::ALL.iter().copied().find(|v| v.as_str() == s || v.nemsis_code() == s)
            }

            /// The accepted wire names, for error messages.
            pub fn expected() -> String {
                [$($wire),+].join(", ")
            }
        }
    };
}

code_list!(
    /// The status timeline of a case. Each status maps to the eTimes element that records
    /// when the case reached it.
    CaseStatus, element = "eTimes",
    {
        CallReceived = ("call_received", "eTimes.01", "PSAP Call Date/Time"),
        Dispatched = ("dispatched", "eTimes.03", "Unit Notified by Dispatch Date/Time"),
        EnRoute = ("en_route", "eTimes.05", "Unit En Route Date/Time"),
        OnScene = ("on_scene", "eTimes.06", "Unit Arrived on Scene Date/Time"),
        PatientContact = ("patient_contact", "eTimes.07", "Arrived at Patient Date/Time"),
        Transporting = ("transporting", "eTimes.09", "Unit Left Scene Date/Time"),
        AtDestination = ("at_destination", "eTimes.11", "Patient Arrived at Destination Date/Time"),
        Closed = ("closed", "eTimes.16", "EMS Call Completed Date/Time"),
    }
);

impl CaseStatus {
    /// Position in the normal progression of a call, used to order statuses recorded at the
    /// same instant.
    pub fn rank(self) -> usize {
        CaseStatus::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

code_list!(
    /// ePatient.25 Sex (ePatient.13 Gender is deprecated in 3.5.1).
    Sex, element = "ePatient.25",
    {
        Female = ("female", "9919001", "Female"),
        Male = ("male", "9919003", "Male"),
        Unknown = ("unknown", "9919005", "Unknown"),
    }
);

code_list!(
    /// ePatient.16 Age Units.
    AgeUnits, element = "ePatient.16",
    {
        Days = ("days", "2516001", "Days"),
        Hours = ("hours", "2516003", "Hours"),
        Minutes = ("minutes", "2516005", "Minutes"),
        Months = ("months", "2516007", "Months"),
        Years = ("years", "2516009", "Years"),
    }
);

code_list!(
    /// Allergy status of the patient. `NoKnownAllergies` is the NEMSIS pertinent negative
    /// 8801013 on eHistory.06; `Unknown` is the Not Value 7701003 (Not Recorded).
    AllergyStatus, element = "eHistory.06",
    {
        Known = ("known", "", "Allergies recorded"),
        NoKnownAllergies = ("no_known_allergies", "8801013", "No Known Drug Allergy"),
        Unknown = ("unknown", "7701003", "Not Recorded"),
    }
);

code_list!(
    /// The coding system of a code (NEMSIS `CodeType` attribute).
    CodeSystem, element = "CodeType",
    {
        Icd10 = ("icd10", "9924001", "ICD-10"),
        RxNorm = ("rxnorm", "9924003", "RxNorm"),
        Snomed = ("snomed", "9924005", "SNOMED-CT"),
    }
);

code_list!(
    /// eSituation.13 Initial Patient Acuity.
    Acuity, element = "eSituation.13",
    {
        Critical = ("critical", "2813001", "Critical (Red)"),
        Emergent = ("emergent", "2813003", "Emergent (Yellow)"),
        LowerAcuity = ("lower_acuity", "2813005", "Lower Acuity (Green)"),
        DeadWithoutResuscitation = ("dead_without_resuscitation", "2813007", "Dead without Resuscitation Efforts (Black)"),
        NonAcute = ("non_acute", "2813009", "Non-Acute/Routine"),
    }
);

code_list!(
    /// eSituation.02 Possible Injury.
    PossibleInjury, element = "eSituation.02",
    {
        No = ("no", "9922001", "No"),
        Unknown = ("unknown", "9922003", "Unknown"),
        Yes = ("yes", "9922005", "Yes"),
    }
);

code_list!(
    /// eVitals.08 Method of Blood Pressure Measurement.
    BpMethod, element = "eVitals.08",
    {
        ArterialLine = ("arterial_line", "3308001", "Arterial Line"),
        Doppler = ("doppler", "3308003", "Doppler"),
        CuffAutomated = ("cuff_automated", "3308005", "Cuff-Automated"),
        CuffManualAuscultated = ("cuff_manual_auscultated", "3308007", "Cuff-Manual Auscultated"),
        CuffManualPalpated = ("cuff_manual_palpated", "3308009", "Cuff-Manual Palpated Only"),
        VenousLine = ("venous_line", "3308011", "Venous Line"),
    }
);

code_list!(
    /// eVitals.28 Pain Scale Type.
    PainScale, element = "eVitals.28",
    {
        Flacc = ("flacc", "3328001", "FLACC (Face, Legs, Activity, Cry, Consolability)"),
        Numeric = ("numeric", "3328003", "Numeric (0-10)"),
        Other = ("other", "3328005", "Other"),
        WongBaker = ("wong_baker", "3328007", "Wong-Baker (FACES)"),
    }
);

code_list!(
    /// eMedications.04 Medication Administered Route.
    Route, element = "eMedications.04",
    {
        BlowBy = ("blow_by", "9927001", "Blow-By"),
        Buccal = ("buccal", "9927003", "Buccal"),
        EndotrachealTube = ("endotracheal_tube", "9927005", "Endotracheal Tube (ET)"),
        GastrostomyTube = ("gastrostomy_tube", "9927007", "Gastrostomy Tube"),
        Inhalation = ("inhalation", "9927009", "Inhalation"),
        Intraarterial = ("intraarterial", "9927011", "Intraarterial"),
        Intradermal = ("intradermal", "9927013", "Intradermal"),
        Intramuscular = ("intramuscular", "9927015", "Intramuscular (IM)"),
        Intranasal = ("intranasal", "9927017", "Intranasal"),
        Intraocular = ("intraocular", "9927019", "Intraocular"),
        Intraosseous = ("intraosseous", "9927021", "Intraosseous (IO)"),
        Intravenous = ("intravenous", "9927023", "Intravenous (IV)"),
        NasalCannula = ("nasal_cannula", "9927025", "Nasal Cannula"),
        Nasogastric = ("nasogastric", "9927027", "Nasogastric"),
        NasotrachealTube = ("nasotracheal_tube", "9927029", "Nasotracheal Tube"),
        NonRebreatherMask = ("non_rebreather_mask", "9927031", "Non-Rebreather Mask"),
        Ophthalmic = ("ophthalmic", "9927033", "Ophthalmic"),
        Oral = ("oral", "9927035", "Oral"),
        Other = ("other", "9927037", "Other/miscellaneous"),
        Otic = ("otic", "9927039", "Otic"),
        RebreatherMask = ("rebreather_mask", "9927041", "Re-breather mask"),
        Rectal = ("rectal", "9927043", "Rectal"),
        Subcutaneous = ("subcutaneous", "9927045", "Subcutaneous"),
        Sublingual = ("sublingual", "9927047", "Sublingual"),
        Topical = ("topical", "9927049", "Topical"),
        Tracheostomy = ("tracheostomy", "9927051", "Tracheostomy"),
        Transdermal = ("transdermal", "9927053", "Transdermal"),
        Urethral = ("urethral", "9927055", "Urethral"),
        Ventimask = ("ventimask", "9927057", "Ventimask"),
        Wound = ("wound", "9927059", "Wound"),
        Portacath = ("portacath", "9927061", "Portacath"),
        AutoInjector = ("auto_injector", "9927063", "Auto Injector"),
        Bvm = ("bvm", "9927065", "BVM"),
        Cpap = ("cpap", "9927067", "CPAP"),
        IvPump = ("iv_pump", "9927069", "IV Pump"),
        Nebulizer = ("nebulizer", "9927071", "Nebulizer"),
        UmbilicalArteryCatheter = ("umbilical_artery_catheter", "9927073", "Umbilical Artery Catheter"),
        UmbilicalVenousCatheter = ("umbilical_venous_catheter", "9927075", "Umbilical Venous Catheter"),
    }
);

code_list!(
    /// eMedications.06 Medication Dosage Units.
    DoseUnit, element = "eMedications.06",
    {
        Grams = ("g", "3706001", "Grams (gms)"),
        Inches = ("in", "3706003", "Inches (in)"),
        InternationalUnits = ("iu", "3706005", "International Units (IU)"),
        KeepVeinOpen = ("kvo", "3706007", "Keep Vein Open (kvo)"),
        Liters = ("l", "3706009", "Liters (l)"),
        MeteredDose = ("mdi", "3706013", "Metered Dose (MDI)"),
        Micrograms = ("mcg", "3706015", "Micrograms (mcg)"),
        McgPerKgPerMin = ("mcg/kg/min", "3706017", "Micrograms per Kilogram per Minute (mcg/kg/min)"),
        Milliequivalents = ("meq", "3706019", "Milliequivalents (mEq)"),
        Milligrams = ("mg", "3706021", "Milligrams (mg)"),
        MgPerKgPerMin = ("mg/kg/min", "3706023", "Milligrams per Kilogram Per Minute (mg/kg/min)"),
        Milliliters = ("ml", "3706025", "Milliliters (ml)"),
        MlPerHour = ("ml/hr", "3706027", "Milliliters per Hour (ml/hr)"),
        Other = ("other", "3706029", "Other"),
        Centimeters = ("cm", "3706031", "Centimeters (cm)"),
        Drops = ("gtts", "3706033", "Drops (gtts)"),
        LitersPerMinute = ("lpm", "3706035", "Liters Per Minute (LPM [gas])"),
        McgPerMin = ("mcg/min", "3706037", "Micrograms per Minute (mcg/min)"),
        MgPerKg = ("mg/kg", "3706039", "Milligrams per Kilogram (mg/kg)"),
        MgPerMin = ("mg/min", "3706041", "Milligrams per Minute (mg/min)"),
        Puffs = ("puffs", "3706043", "Puffs"),
        UnitsPerHour = ("units/hr", "3706045", "Units per Hour (units/hr)"),
        McgPerKg = ("mcg/kg", "3706047", "Micrograms per Kilogram (mcg/kg)"),
        Units = ("units", "3706049", "Units"),
        UnitsPerKgPerHour = ("units/kg/hr", "3706051", "Units per Kilogram per Hour (units/kg/hr)"),
        UnitsPerKg = ("units/kg", "3706053", "Units per Kilogram (units/kg)"),
        MgPerHour = ("mg/hr", "3706055", "Milligrams per Hour (mg/hr)"),
    }
);

code_list!(
    /// eMedications.07 Response to Medication.
    MedicationResponse, element = "eMedications.07",
    {
        Improved = ("improved", "9916001", "Improved"),
        Unchanged = ("unchanged", "9916003", "Unchanged"),
        Worse = ("worse", "9916005", "Worse"),
    }
);

code_list!(
    /// eMedications.10 / eProcedures.10 Role/Type of Person Administering (EMSCaregiverLevel).
    CaregiverLevel, element = "eMedications.10",
    {
        Aemt = ("aemt", "9905001", "Advanced Emergency Medical Technician (AEMT)"),
        EmtIntermediate = ("emt_intermediate", "9905002", "Emergency Medical Technician - Intermediate"),
        Emr = ("emr", "9905003", "Emergency Medical Responder (EMR)"),
        Emt = ("emt", "9905005", "Emergency Medical Technician (EMT)"),
        Paramedic = ("paramedic", "9905007", "Paramedic"),
        OtherHealthcare = ("other_healthcare", "9905019", "Other Healthcare Professional"),
        OtherNonHealthcare = ("other_non_healthcare", "9905021", "Other Non-Healthcare Professional"),
        Physician = ("physician", "9905025", "Physician"),
        RespiratoryTherapist = ("respiratory_therapist", "9905027", "Respiratory Therapist"),
        Student = ("student", "9905029", "Student"),
        CriticalCareParamedic = ("critical_care_paramedic", "9905031", "Critical Care Paramedic"),
        CommunityParamedicine = ("community_paramedicine", "9905033", "Community Paramedicine"),
        NursePractitioner = ("nurse_practitioner", "9905035", "Nurse Practitioner"),
        PhysicianAssistant = ("physician_assistant", "9905037", "Physician Assistant"),
        Lpn = ("lpn", "9905039", "Licensed Practical Nurse (LPN)"),
        RegisteredNurse = ("registered_nurse", "9905041", "Registered Nurse"),
        Patient = ("patient", "9905043", "Patient"),
        LayPerson = ("lay_person", "9905045", "Lay Person"),
        LawEnforcement = ("law_enforcement", "9905047", "Law Enforcement"),
        FamilyMember = ("family_member", "9905049", "Family Member"),
        FirePersonnel = ("fire_personnel", "9905051", "Fire Personnel (non EMS)"),
    }
);

code_list!(
    /// What an attachment holds. Not a NEMSIS element: attachments are blobs that sync
    /// separately and are exported as DICOM or media, not inside the EMSDataSet.
    AttachmentKind, element = "",
    {
        XrayStudy = ("xray_study", "", "X-ray study (DICOM)"),
        XrayPreview = ("xray_preview", "", "X-ray preview image"),
        VideoSegment = ("video_segment", "", "Video segment"),
        Photo = ("photo", "", "Photograph"),
        Audio = ("audio", "", "Audio recording"),
        Document = ("document", "", "Document"),
        GpsTrack = ("gps_track", "", "GPS track (NMEA 0183, one RMC sentence per fix)"),
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_by_wire_name_and_by_nemsis_code() {
        assert_eq!(Sex::parse("female"), Some(Sex::Female));
        assert_eq!(Sex::parse("9919003"), Some(Sex::Male));
        assert_eq!(Sex::parse("9906001"), None, "deprecated ePatient.13 codes are not accepted");
        assert_eq!(Route::parse("intravenous").unwrap().nemsis_code(), "9927023");
        assert_eq!(DoseUnit::parse("mcg").unwrap().label(), "Micrograms (mcg)");
        assert_eq!(CaseStatus::Closed.rank(), CaseStatus::ALL.len() - 1);
    }

    #[test]
    fn wire_names_are_unique_within_each_list() {
        fn check(names: Vec<&str>) {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), names.len(), "{names:?}");
        }
        check(Route::ALL.iter().map(|r| r.as_str()).collect());
        check(DoseUnit::ALL.iter().map(|r| r.as_str()).collect());
        check(CaregiverLevel::ALL.iter().map(|r| r.as_str()).collect());
    }
}
