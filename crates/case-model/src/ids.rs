//! Identifiers: parsed once at the boundary, then carried as types.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Timestamp;

/// A case's id: a UUIDv7, so ids sort by creation time and index well.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CaseId(Uuid);

impl CaseId {
    /// Builds a time-ordered id from the creation time and 10 random bytes.
    ///
    /// The caller supplies both so this crate reads no clock and no entropy source.
    pub fn new_v7(created: Timestamp, random: [u8; 10]) -> CaseId {
        let ms = created.unix_millis().max(0) as u64;
        let mut b = [0u8; 16];
        b[0..6].copy_from_slice(&ms.to_be_bytes()[2..8]);
        b[6..16].copy_from_slice(&random);
        // Version 7 in the high nibble of byte 6, RFC 4122 variant in byte 8.
        b[6] = (b[6] & 0x0f) | 0x70;
        b[8] = (b[8] & 0x3f) | 0x80;
        CaseId(Uuid::from_bytes(b))
    }

    /// Parses the canonical hyphenated form.
    pub fn parse(s: &str) -> Result<CaseId, IdError> {
        let uuid = Uuid::try_parse(s).map_err(|_| IdError::BadCaseId(s.chars().take(64).collect()))?;
        Ok(CaseId(uuid))
    }

    /// From the raw 16 bytes (as the sync protocol carries them).
    pub fn from_bytes(bytes: [u8; 16]) -> CaseId {
        CaseId(Uuid::from_bytes(bytes))
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaseId({self})")
    }
}

impl TryFrom<String> for CaseId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        CaseId::parse(&s)
    }
}

impl From<CaseId> for String {
    fn from(id: CaseId) -> String {
        id.to_string()
    }
}

/// Errors from parsing identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A case id was not a UUID.
    #[error("case id {0:?} is not a UUID (expected the form 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b)")]
    BadCaseId(String),
    /// A name (user, organisation, van) was empty, too long or had characters outside the allowed set.
    #[error("{kind} {value:?} is not valid: use 1 to 64 characters from a-z, A-Z, 0-9, '.', '_', '-', ':' and '@'")]
    BadName {
        /// Which kind of name.
        kind: &'static str,
        /// The value that was refused (truncated).
        value: String,
    },
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a name: 1 to 64 characters of `[A-Za-z0-9._:@-]`.
            pub fn parse(s: &str) -> Result<$name, IdError> {
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b));
                if ok {
                    Ok($name(s.to_owned()))
                } else {
                    Err(IdError::BadName { kind: $kind, value: s.chars().take(64).collect() })
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

name_type!(
    /// A person who acts on a case: a paramedic, a doctor, or a system process (`system:...`).
    UserId,
    "user id"
);
name_type!(
    /// An organisation (tenant). A user of one organisation never sees another's cases.
    OrgId,
    "organisation id"
);
name_type!(
    /// A van (vehicle). NEMSIS eResponse.13 EMS Vehicle (Unit) Number.
    VanId,
    "van id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_ids_sort_by_time_and_round_trip() {
        let a = CaseId::new_v7(Timestamp::from_unix_millis(1_700_000_000_000), [0xff; 10]);
        let b = CaseId::new_v7(Timestamp::from_unix_millis(1_700_000_000_001), [0x00; 10]);
        assert!(a < b);
        assert_eq!(CaseId::parse(&a.to_string()).unwrap(), a);
        assert_eq!(a.to_string().as_bytes()[14], b'7');
    }

    #[test]
    fn names_are_checked() {
        assert!(UserId::parse("ana.silva@org1").is_ok());
        let err = UserId::parse("ana silva").unwrap_err();
        assert!(err.to_string().contains("user id \"ana silva\""), "{err}");
        assert!(OrgId::parse("").is_err());
        assert!(VanId::parse(&"x".repeat(65)).is_err());
    }
}
