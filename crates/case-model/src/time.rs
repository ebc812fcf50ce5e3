//! Points in time as carried in the case record.
//!
//! Van clocks drift, so every clinically meaningful time says where it came from
//! ([`TimeSource`]). This crate never reads a clock: callers pass `now` in.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch, UTC.
///
/// Serialised as RFC 3339 with an explicit `+00:00` offset, the form NEMSIS `DateTimeType`
/// requires (it does not accept `Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(i64);

impl Timestamp {
    /// From milliseconds since the epoch.
    pub const fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (`2026-11-27T09:15:00+00:00`, `Z` accepted on input).
    pub fn parse(s: &str) -> Result<Timestamp, TimeError> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimeError(s.chars().take(64).collect()))?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        Ok(Timestamp(ms as i64))
    }

    /// The UTC calendar date, `YYYY-MM-DD`.
    pub fn date(self) -> String {
        let t = self.to_offset_date_time();
        format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
    }

    fn to_offset_date_time(self) -> OffsetDateTime {
        // The range check keeps this infallible: i64 milliseconds always fit in i128 nanoseconds
        // and clamp into the years time supports.
        let nanos = (self.0 as i128).clamp(-377_705_116_800_000, 253_402_300_799_999) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_offset_date_time();
        let ms = t.millisecond();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+00:00",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl TryFrom<String> for Timestamp {
    type Error = TimeError;
    fn try_from(s: String) -> Result<Self, TimeError> {
        Timestamp::parse(&s)
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.to_string()
    }
}

/// A time that was not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 date-time (expected e.g. 2026-11-27T09:15:00+00:00)")]
pub struct TimeError(String);

/// Where a recorded time came from. Van clocks drift; GPS time does not; the hub may correct
/// a van's times after comparing clocks during sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeSource {
    /// The device's own clock (the default).
    #[default]
    Device,
    /// A GPS fix's time.
    Gps,
    /// Corrected by the hub after measuring the van's clock offset.
    HubCorrected,
    /// Entered by a person (for example a time remembered after the fact).
    Manual,
}

impl TimeSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeSource::Device => "device",
            TimeSource::Gps => "gps",
            TimeSource::HubCorrected => "hub_corrected",
            TimeSource::Manual => "manual",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<TimeSource> {
        Some(match s {
            "device" => TimeSource::Device,
            "gps" => TimeSource::Gps,
            "hub_corrected" => TimeSource::HubCorrected,
            "manual" => TimeSource::Manual,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_explicit_offset_and_round_trips() {
        let t = Timestamp::from_unix_millis(1_795_000_000_123);
        let s = t.to_string();
        assert!(s.ends_with("+00:00"), "{s}");
        assert_eq!(Timestamp::parse(&s).unwrap(), t);
        assert_eq!(Timestamp::parse("2026-11-27T10:00:00+01:00").unwrap().to_string(), "2026-11-27T09:00:00.000+00:00");
        assert!(Timestamp::parse("yesterday").unwrap_err().to_string().contains("RFC 3339"));
    }
}
