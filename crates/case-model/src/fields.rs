//! The case's single-valued clinical fields, their NEMSIS elements and their validation.
//!
//! Every such field is stored as a small map `{v, by, at}` so that when two people set it
//! concurrently, each of the conflicting values Automerge keeps still says who wrote it and
//! when (an Automerge actor is a device, not a person).

use serde::{Deserialize, Serialize};

use crate::codes::{Acuity, AgeUnits, AllergyStatus, PossibleInjury, Sex};
use crate::error::EditError;
use crate::time::Timestamp;

/// A value of a single-valued field, as validated on the way in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// Cleared.
    Null,
    /// A flag.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A decimal number.
    Float(f64),
    /// Text, a code, a date or a date-time.
    Text(String),
}

impl FieldValue {
    /// The value as JSON, for views and conflict listings.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Null => serde_json::Value::Null,
            FieldValue::Bool(b) => (*b).into(),
            FieldValue::Int(i) => (*i).into(),
            FieldValue::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            FieldValue::Text(s) => s.clone().into(),
        }
    }
}

/// What a field accepts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text { min: usize, max: usize },
    Int { min: i64, max: i64 },
    Date,
    DateTime,
    Code(fn(&str) -> Option<&'static str>, fn() -> String),
    Icd10,
    Bool,
}

macro_rules! fields {
    ($( $variant:ident = ($path:literal, $element:literal, $kind:expr) ),+ $(,)?) => {
        /// A single-valued field of the case, named by its path in the document.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum FieldName {
            $(
                #[doc = $element]
                #[serde(rename = $path)]
                $variant,
            )+
        }

        impl FieldName {
            /// Every field.
            pub const ALL: &'static [FieldName] = &[$(FieldName::$variant),+];

            /// Dotted path in the document (`patient.date_of_birth`).
            pub fn path(self) -> &'static str {
                match self { $(FieldName::$variant => $path),+ }
            }

            /// The NEMSIS element this field fills.
            pub fn nemsis_element(self) -> &'static str {
                match self { $(FieldName::$variant => $element),+ }
            }

            /// Looks a field up by its path.
            pub fn parse(path: &str) -> Option<FieldName> {
                match path { $($path => Some(FieldName::$variant),)+ _ => None }
            }

            fn kind(self) -> Kind {
                match self { $(FieldName::$variant => $kind),+ }
            }
        }
    };
}

fields! {
    IncidentNumber = ("response.incident_number", "eResponse.03", Kind::Text { min: 3, max: 50 }),
    LastName = ("patient.last_name", "ePatient.02", Kind::Text { min: 1, max: 60 }),
    FirstName = ("patient.first_name", "ePatient.03", Kind::Text { min: 1, max: 50 }),
    MiddleName = ("patient.middle_name", "ePatient.04", Kind::Text { min: 1, max: 50 }),
    DateOfBirth = ("patient.date_of_birth", "ePatient.17", Kind::Date),
    Age = ("patient.age", "ePatient.15", Kind::Int { min: 1, max: 120 }),
    AgeEstimated = ("patient.age_estimated", "ePatient.15", Kind::Bool),
    AgeUnits = ("patient.age_units", "ePatient.16", Kind::Code(|s| AgeUnits::parse(s).map(AgeUnits::as_str), AgeUnits::expected)),
    Sex = ("patient.sex", "ePatient.25", Kind::Code(|s| Sex::parse(s).map(Sex::as_str), Sex::expected)),
    AllergyStatus = ("patient.allergy_status", "eHistory.06", Kind::Code(|s| AllergyStatus::parse(s).map(AllergyStatus::as_str), AllergyStatus::expected)),
    InsurancePayer = ("patient.insurance.payer", "ePayment.10", Kind::Text { min: 2, max: 60 }),
    InsuranceGroup = ("patient.insurance.group_id", "ePayment.17", Kind::Text { min: 2, max: 30 }),
    InsurancePolicy = ("patient.insurance.policy_id", "ePayment.18", Kind::Text { min: 2, max: 30 }),
    ChiefComplaint = ("situation.chief_complaint", "eSituation.04", Kind::Text { min: 1, max: 255 }),
    SymptomOnset = ("situation.symptom_onset", "eSituation.01", Kind::DateTime),
    PossibleInjury = ("situation.possible_injury", "eSituation.02", Kind::Code(|s| PossibleInjury::parse(s).map(PossibleInjury::as_str), PossibleInjury::expected)),
    PrimaryImpression = ("situation.primary_impression", "eSituation.11", Kind::Icd10),
    Acuity = ("situation.acuity", "eSituation.13", Kind::Code(|s| Acuity::parse(s).map(Acuity::as_str), Acuity::expected)),
}

impl FieldName {
    /// Checks a value for this field and returns it in its stored form (codes are stored
    /// by wire name whichever form came in; date-times as milliseconds).
    pub fn validate(self, value: &FieldValue, now: Timestamp) -> Result<FieldValue, EditError> {
        let field = self.path();
        let element = self.nemsis_element();
        if *value == FieldValue::Null {
            return Ok(FieldValue::Null);
        }
        let invalid = |reason: String| EditError::Invalid { field: field.into(), element, reason };
        match (self.kind(), value) {
            (Kind::Text { min, max }, FieldValue::Text(s)) => {
                let s = s.trim();
                let n = s.chars().count();
                if n < min || n > max {
                    return Err(invalid(format!("must be {min} to {max} characters long; got {n}")));
                }
                if s.chars().any(char::is_control) {
                    return Err(invalid("must not contain control characters".into()));
                }
                Ok(FieldValue::Text(s.to_owned()))
            }
            (Kind::Int { min, max }, FieldValue::Int(i)) => {
                if *i < min || *i > max {
                    return Err(EditError::OutOfRange {
                        field: field.into(),
                        element,
                        min: min as f64,
                        max: max as f64,
                        value: *i as f64,
                    });
                }
                Ok(FieldValue::Int(*i))
            }
            (Kind::Date, FieldValue::Text(s)) => {
                let date =
                    parse_date(s).ok_or_else(|| invalid(format!("{s:?} is not a date of the form YYYY-MM-DD")))?;
                if date.as_str() < "1890-01-01" || date > now.date() {
                    return Err(invalid(format!("{date} must lie between 1890-01-01 and today ({})", now.date())));
                }
                Ok(FieldValue::Text(date))
            }
            (Kind::DateTime, FieldValue::Text(s)) => {
                let t = Timestamp::parse(s).map_err(|e| invalid(e.to_string()))?;
                if t.unix_millis() > now.unix_millis() + FUTURE_TOLERANCE_MS {
                    return Err(invalid(format!("{t} is in the future (now is {now})")));
                }
                Ok(FieldValue::Int(t.unix_millis()))
            }
            (Kind::Code(canonical, expected), FieldValue::Text(s)) => match canonical(s) {
                Some(code) => Ok(FieldValue::Text(code.to_owned())),
                None => Err(invalid(format!("{s:?} is not one of: {}", expected()))),
            },
            (Kind::Bool, FieldValue::Bool(b)) => Ok(FieldValue::Bool(*b)),
            (Kind::Icd10, FieldValue::Text(s)) => {
                if !is_icd10(s) {
                    return Err(invalid(format!("{s:?} is not an ICD-10-CM code (for example S52.5 or R07.9)")));
                }
                Ok(FieldValue::Text(s.to_ascii_uppercase()))
            }
            (kind, other) => Err(invalid(format!("expected {}, got {}", kind_name(kind), other.to_json()))),
        }
    }

    /// Whether a stored value of this field holds a date-time in milliseconds.
    pub(crate) fn is_date_time(self) -> bool {
        matches!(self.kind(), Kind::DateTime)
    }
}

/// Clocks in vans drift; a time up to five minutes ahead of the van's own clock is accepted.
pub(crate) const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text { .. } => "text",
        Kind::Int { .. } => "a whole number",
        Kind::Date => "a date (YYYY-MM-DD)",
        Kind::DateTime => "an RFC 3339 date-time",
        Kind::Code(..) => "a code",
        Kind::Icd10 => "an ICD-10-CM code",
        Kind::Bool => "true or false",
    }
}

/// Parses `YYYY-MM-DD` and checks the day exists.
fn parse_date(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i32 = s[0..4].parse().ok()?;
    let m: u8 = s[5..7].parse().ok()?;
    let d: u8 = s[8..10].parse().ok()?;
    let month = time::Month::try_from(m).ok()?;
    time::Date::from_calendar_date(y, month, d).ok()?;
    Some(s.to_owned())
}

/// ICD-10-CM code shape, as the NEMSIS `ProvidersImpression` pattern allows.
pub(crate) fn is_icd10(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 3
        || b.len() > 8
        || !b[0].is_ascii_alphabetic()
        || !b[1].is_ascii_digit()
        || !b[2].is_ascii_alphanumeric()
    {
        return false;
    }
    match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => !rest.is_empty() && rest.len() <= 4 && rest.iter().all(u8::is_ascii_alphanumeric),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_unix_millis(1_795_000_000_000);

    fn check(field: FieldName, value: FieldValue) -> Result<FieldValue, String> {
        field.validate(&value, NOW).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_validated_with_messages_naming_the_field() {
        assert_eq!(check(FieldName::Age, FieldValue::Int(42)), Ok(FieldValue::Int(42)));
        assert_eq!(
            check(FieldName::Age, FieldValue::Int(900)).unwrap_err(),
            "patient.age (ePatient.15) must be between 1 and 120; got 900"
        );
        assert!(
            check(FieldName::DateOfBirth, FieldValue::Text("1970-02-30".into())).unwrap_err().contains("YYYY-MM-DD")
        );
        assert!(check(FieldName::DateOfBirth, FieldValue::Text("2099-01-01".into())).unwrap_err().contains("today"));
        assert!(check(FieldName::Sex, FieldValue::Text("f".into())).unwrap_err().contains("female, male, unknown"));
        assert_eq!(check(FieldName::Sex, FieldValue::Text("9919001".into())), Ok(FieldValue::Text("female".into())));
        assert_eq!(
            check(FieldName::PrimaryImpression, FieldValue::Text("s52.5".into())),
            Ok(FieldValue::Text("S52.5".into()))
        );
        assert!(check(FieldName::PrimaryImpression, FieldValue::Text("broken arm".into())).is_err());
        assert!(check(FieldName::ChiefComplaint, FieldValue::Int(3)).unwrap_err().contains("expected text"));
        assert_eq!(check(FieldName::LastName, FieldValue::Null), Ok(FieldValue::Null));
        assert_eq!(check(FieldName::AgeEstimated, FieldValue::Bool(true)), Ok(FieldValue::Bool(true)));
        assert!(check(FieldName::AgeEstimated, FieldValue::Text("yes".into())).unwrap_err().contains("true or false"));
    }

    #[test]
    fn every_field_path_parses_back() {
        for f in FieldName::ALL {
            assert_eq!(FieldName::parse(f.path()), Some(*f));
            assert!(f.nemsis_element().starts_with('e'));
        }
    }
}
