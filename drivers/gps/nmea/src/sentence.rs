//! One sentence: its frame (`$`, talker and type, fields, `*` and checksum) and the fields
//! of the two sentences a position needs.

/// Why a line was refused. Each names what was wrong, for the receiver's log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NmeaError {
    /// Longer than NMEA 0183 allows (80 characters before CR LF).
    #[error("the line is longer than NMEA 0183 allows: is the port's baud rate right?")]
    TooLong,
    /// A byte outside printable ASCII.
    #[error("the line holds bytes that are not printable ASCII: is the port's baud rate right?")]
    NotAscii,
    /// Does not start with `$`.
    #[error("the line does not start with '$' (a fragment, or not NMEA)")]
    NoStart,
    /// A new sentence began before this one ended.
    #[error("the sentence was cut off by the next one")]
    Truncated,
    /// No `*hh` checksum at the end.
    #[error("the sentence has no checksum (*hh); refusing an unchecked position")]
    NoChecksum,
    /// The checksum does not match.
    #[error("checksum mismatch: the sentence says {stated:02X}, its content gives {computed:02X}")]
    BadChecksum {
        /// What the sentence carries.
        stated: u8,
        /// What its content gives.
        computed: u8,
    },
    /// The address field is not a talker and a sentence type.
    #[error("'{0}' is not an NMEA address (two-letter talker and three-letter type)")]
    BadAddress(String),
    /// Fewer fields than the sentence type has.
    #[error("{sentence} has {got} fields, it needs at least {need}")]
    TooFewFields {
        /// The sentence type.
        sentence: &'static str,
        /// Fields present.
        got: usize,
        /// Fields needed.
        need: usize,
    },
    /// A field does not hold what the sentence type says it holds.
    #[error("{sentence} field {field} is '{value}', which is not {expected}")]
    BadField {
        /// The sentence type.
        sentence: &'static str,
        /// The field's name.
        field: &'static str,
        /// What it held (ASCII, at most 80 characters).
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
}

/// A UTC time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    /// Hours, 0 to 23.
    pub hour: u8,
    /// Minutes, 0 to 59.
    pub minute: u8,
    /// Milliseconds into the minute, 0 to 60,999 (a leap second).
    pub millis: u32,
}

impl Time {
    /// Milliseconds since midnight.
    pub fn ms_of_day(&self) -> i64 {
        (i64::from(self.hour) * 60 + i64::from(self.minute)) * 60_000 + i64::from(self.millis)
    }
}

/// A calendar date (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// The year, four digits (RMC's two-digit year is read as 2000 to 2099).
    pub year: i32,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
}

/// Recommended minimum data: time, date, position, speed and course.
#[derive(Debug, Clone, PartialEq)]
pub struct Rmc {
    /// The time of the fix.
    pub time: Time,
    /// Whether the receiver says the fix is valid (`A`); `V` is a warning: no fix.
    pub valid: bool,
    /// Latitude and longitude in degrees, north and east positive; `None` with no fix.
    pub position: Option<(f64, f64)>,
    /// Speed over ground, knots.
    pub speed_knots: Option<f64>,
    /// Course over ground, degrees true.
    pub course_deg: Option<f64>,
    /// The date of the fix.
    pub date: Option<Date>,
}

/// Fix data: time, position, quality, satellites, dilution and altitude.
#[derive(Debug, Clone, PartialEq)]
pub struct Gga {
    /// The time of the fix.
    pub time: Time,
    /// Latitude and longitude in degrees; `None` with no fix.
    pub position: Option<(f64, f64)>,
    /// 0 no fix, 1 GPS, 2 differential, 4 and 5 RTK, 6 dead reckoning.
    pub quality: u8,
    /// Satellites used.
    pub satellites: Option<u8>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Altitude above mean sea level, metres.
    pub altitude_m: Option<f64>,
}

/// A sentence that passed its checksum.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Sentence {
    /// RMC.
    Rmc(Rmc),
    /// GGA.
    Gga(Gga),
    /// Another type (GSV, GSA, VTG, ...): recognised, not read.
    Other {
        /// The sentence type, like `GSV`.
        kind: String,
    },
}

/// The checksum of a sentence's content (between `$` and `*`): XOR of its bytes.
pub fn checksum(content: &str) -> u8 {
    content.bytes().fold(0, |a, b| a ^ b)
}

/// Parses one line (without CR LF).
pub fn parse(line: &str) -> Result<Sentence, NmeaError> {
    if line.len() > crate::MAX_SENTENCE {
        return Err(NmeaError::TooLong);
    }
    if !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(NmeaError::NotAscii);
    }
    let body = line.strip_prefix('$').ok_or(NmeaError::NoStart)?;
    let (content, sum) = body.rsplit_once('*').ok_or(NmeaError::NoChecksum)?;
    let stated = match sum.as_bytes() {
        [a, b] => hex(*a).zip(hex(*b)).map(|(a, b)| a << 4 | b).ok_or(NmeaError::NoChecksum)?,
        _ => return Err(NmeaError::NoChecksum),
    };
    let computed = checksum(content);
    if stated != computed {
        return Err(NmeaError::BadChecksum { stated, computed });
    }
    let fields: Vec<&str> = content.split(',').collect();
    let address = fields[0];
    // Proprietary sentences ($P + maker + type) are the maker's business: skip them.
    if address.starts_with('P') && address.len() > 1 {
        return Ok(Sentence::Other { kind: address.to_owned() });
    }
    if address.len() != 5 || !address.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(NmeaError::BadAddress(address.to_owned()));
    }
    match &address[2..] {
        "RMC" => rmc(&fields[1..]).map(Sentence::Rmc),
        "GGA" => gga(&fields[1..]).map(Sentence::Gga),
        other => Ok(Sentence::Other { kind: other.to_owned() }),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

struct Fields<'a> {
    sentence: &'static str,
    f: &'a [&'a str],
}

impl<'a> Fields<'a> {
    fn bad(&self, field: &'static str, value: &str, expected: &'static str) -> NmeaError {
        NmeaError::BadField { sentence: self.sentence, field, value: value.to_owned(), expected }
    }

    fn time(&self, i: usize) -> Result<Time, NmeaError> {
        let v = self.f[i];
        let bad = || self.bad("time", v, "hhmmss.ss");
        if v.len() < 6 || !v.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let hour: u8 = v[0..2].parse().map_err(|_| bad())?;
        let minute: u8 = v[2..4].parse().map_err(|_| bad())?;
        let secs: f64 = v[4..].parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 || !(0.0..61.0).contains(&secs) || (v.len() > 6 && v.as_bytes()[6] != b'.') {
            return Err(bad());
        }
        Ok(Time { hour, minute, millis: (secs * 1000.0).round() as u32 })
    }

    /// `ddmm.mmmm` or `dddmm.mmmm` with its hemisphere; `None` if both are empty.
    fn coordinate(&self, i: usize, degree_digits: usize, name: &'static str) -> Result<Option<f64>, NmeaError> {
        let (v, hemi) = (self.f[i], self.f[i + 1]);
        if v.is_empty() && hemi.is_empty() {
            return Ok(None);
        }
        let expected = if degree_digits == 2 { "ddmm.mmmm with N or S" } else { "dddmm.mmmm with E or W" };
        let bad = || self.bad(name, v, expected);
        let dot = v.find('.').unwrap_or(v.len());
        if dot != degree_digits + 2 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let deg: f64 = v[..degree_digits].parse().map_err(|_| bad())?;
        let min: f64 = v[degree_digits..].parse().map_err(|_| bad())?;
        let limit = if degree_digits == 2 { 90.0 } else { 180.0 };
        let value = deg + min / 60.0;
        if min >= 60.0 || value > limit {
            return Err(bad());
        }
        let sign = match (degree_digits, hemi) {
            (2, "N") | (3, "E") => 1.0,
            (2, "S") | (3, "W") => -1.0,
            _ => return Err(self.bad(name, hemi, expected)),
        };
        Ok(Some(sign * value))
    }

    fn position(&self, lat: usize, lon: usize) -> Result<Option<(f64, f64)>, NmeaError> {
        match (self.coordinate(lat, 2, "latitude")?, self.coordinate(lon, 3, "longitude")?) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            _ => Err(self.bad("position", "", "both latitude and longitude")),
        }
    }

    fn number(
        &self,
        i: usize,
        name: &'static str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, NmeaError> {
        let v = self.f[i];
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && range.contains(&x) && !v.starts_with('+') => Ok(Some(x)),
            _ => Err(self.bad(name, v, "a number in range")),
        }
    }
}

fn need(sentence: &'static str, f: &[&str], n: usize) -> Result<(), NmeaError> {
    if f.len() < n {
        return Err(NmeaError::TooFewFields { sentence, got: f.len(), need: n });
    }
    Ok(())
}

fn rmc(f: &[&str]) -> Result<Rmc, NmeaError> {
    need("RMC", f, 9)?;
    let x = Fields { sentence: "RMC", f };
    let valid = match f[1] {
        "A" => true,
        "V" => false,
        other => return Err(x.bad("status", other, "A or V")),
    };
    let date = match f[8] {
        "" => None,
        v => {
            let bad = || x.bad("date", v, "ddmmyy");
            if v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let day: u8 = v[0..2].parse().map_err(|_| bad())?;
            let month: u8 = v[2..4].parse().map_err(|_| bad())?;
            let yy: i32 = v[4..6].parse().map_err(|_| bad())?;
            if !(1..=12).contains(&month) || day == 0 || day > days_in_month(2000 + yy, month) {
                return Err(bad());
            }
            Some(Date { year: 2000 + yy, month, day })
        }
    };
    Ok(Rmc {
        time: x.time(0)?,
        valid,
        position: x.position(2, 4)?,
        speed_knots: x.number(6, "speed", 0.0..=2000.0)?,
        course_deg: x.number(7, "course", 0.0..=360.0)?,
        date,
    })
}

fn gga(f: &[&str]) -> Result<Gga, NmeaError> {
    need("GGA", f, 9)?;
    let x = Fields { sentence: "GGA", f };
    let quality = match f[5] {
        q @ ("0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8") => q.as_bytes()[0] - b'0',
        other => return Err(x.bad("quality", other, "a digit 0 to 8")),
    };
    Ok(Gga {
        time: x.time(0)?,
        position: x.position(1, 3)?,
        quality,
        satellites: x.number(6, "satellites", 0.0..=99.0)?.map(|s| s as u8),
        hdop: x.number(7, "hdop", 0.0..=99.99)?,
        altitude_m: x.number(8, "altitude", -1000.0..=20000.0)?,
    })
}

pub(crate) fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(body: &str) -> String {
        format!("${body}*{:02X}", checksum(body))
    }

    #[test]
    fn a_real_rmc_is_read() {
        // The classic example sentence, with its published checksum.
        let s = parse("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A").unwrap();
        let Sentence::Rmc(r) = s else { panic!("{s:?}") };
        assert_eq!(r.time, Time { hour: 12, minute: 35, millis: 19_000 });
        assert!(r.valid);
        let (lat, lon) = r.position.unwrap();
        assert!((lat - 48.1173).abs() < 1e-4 && (lon - 11.516_666).abs() < 1e-4);
        assert_eq!(r.speed_knots, Some(22.4));
        assert_eq!(r.date, Some(Date { year: 2094, month: 3, day: 23 }));
    }

    #[test]
    fn a_real_gga_is_read() {
        let s = parse("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47").unwrap();
        let Sentence::Gga(g) = s else { panic!("{s:?}") };
        assert_eq!(g.quality, 1);
        assert_eq!(g.satellites, Some(8));
        assert_eq!(g.hdop, Some(0.9));
        assert_eq!(g.altitude_m, Some(545.4));
        let (lat, _) = g.position.unwrap();
        assert!((lat - 48.1173).abs() < 1e-4);
    }

    #[test]
    fn south_and_west_are_negative() {
        let s = parse(&line("GNRMC,000000.00,A,3351.000,S,15112.000,W,0,0,010126,,")).unwrap();
        let Sentence::Rmc(r) = s else { panic!() };
        let (lat, lon) = r.position.unwrap();
        assert!(lat < -33.8 && lon < -151.1);
    }

    #[test]
    fn no_fix_has_no_position() {
        let s = parse(&line("GPRMC,120000.00,V,,,,,,,010126,,")).unwrap();
        let Sentence::Rmc(r) = s else { panic!() };
        assert!(!r.valid && r.position.is_none());
    }

    #[test]
    fn malformed_sentences_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6B", "checksum mismatch"),
            ("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", "no checksum"),
            ("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6Z", "no checksum"),
        ];
        for (l, want) in cases {
            let e = parse(l).unwrap_err().to_string();
            assert!(e.contains(want), "{l}: {e}");
        }
        let refused = [
            ("GPRMC,996519,A,4807.038,N,01131.000,E,0,0,230394,,", "time"),
            ("GPRMC,123519,A,9107.038,N,01131.000,E,0,0,230394,,", "latitude"),
            ("GPRMC,123519,A,4807.038,X,01131.000,E,0,0,230394,,", "latitude"),
            ("GPRMC,123519,A,4867.038,N,01131.000,E,0,0,230394,,", "latitude"),
            ("GPRMC,123519,A,4807.038,N,1131.000,E,0,0,230394,,", "longitude"),
            ("GPRMC,123519,A,4807.038,N,,,0,0,230394,,", "position"),
            ("GPRMC,123519,Q,4807.038,N,01131.000,E,0,0,230394,,", "status"),
            ("GPRMC,123519,A,4807.038,N,01131.000,E,fast,0,230394,,", "speed"),
            ("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,300294,,", "date"),
            ("GPRMC,123519,A", "fields"),
            ("GPGGA,123519,4807.038,N,01131.000,E,9,08,0.9,545.4,M,46.9,M,,", "quality"),
            ("GPGGA,123519,4807.038,N,01131.000,E,1,08,NaN,545.4,M,46.9,M,,", "hdop"),
            ("GP_RMC,123519", "address"),
        ];
        for (body, field) in refused {
            let e = parse(&line(body)).unwrap_err().to_string();
            assert!(e.contains(field), "{body}: {e}");
        }
        assert!(matches!(parse(&line("GPGSV,3,1,11,03,03,111,00")), Ok(Sentence::Other { .. })));
    }
}
