//! From sentences to fixes: a receiver sends RMC and GGA for the same instant; RMC carries
//! the date and speed, GGA the quality, satellites and dilution.

use crate::sentence::{Date, Gga, Rmc, Sentence, Time};

/// One position fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// When, milliseconds since the Unix epoch (UTC, from the satellites).
    pub at_ms: i64,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Speed over ground, metres per second.
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees true.
    pub course_deg: Option<f64>,
    /// Horizontal dilution of precision, from the GGA of the same instant.
    pub hdop: Option<f64>,
    /// Satellites used, from the GGA of the same instant.
    pub satellites: Option<u8>,
}

impl Fix {
    /// A rough 1-sigma horizontal accuracy: HDOP times a typical receiver's 5 m user
    /// range error; 15 m without a GGA.
    pub fn accuracy_m(&self) -> f64 {
        self.hdop.map_or(15.0, |h| (h * 5.0).clamp(2.0, 500.0))
    }
}

/// Milliseconds since the Unix epoch of a UTC date and time.
pub fn unix_ms(date: Date, time: Time) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, d) = (i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + time.ms_of_day()
}

/// Joins the RMC and GGA of each instant into a [`Fix`]. A fix is given for each valid
/// RMC with a position and a date; the GGA of the same time, if it came first, adds its
/// dilution, and one with quality 0 (no fix) holds the RMC back.
#[derive(Debug, Default)]
pub struct FixBuilder {
    gga: Option<Gga>,
}

impl FixBuilder {
    /// A builder with nothing seen.
    pub fn new() -> FixBuilder {
        FixBuilder::default()
    }

    /// Takes a sentence; returns a fix when one is complete.
    pub fn push(&mut self, s: Sentence) -> Option<Fix> {
        match s {
            Sentence::Gga(g) => {
                self.gga = Some(g);
                None
            }
            Sentence::Rmc(r) => self.rmc(r),
            _ => None,
        }
    }

    fn rmc(&mut self, r: Rmc) -> Option<Fix> {
        let gga = self.gga.take().filter(|g| g.time == r.time);
        if !r.valid || gga.as_ref().is_some_and(|g| g.quality == 0) {
            return None;
        }
        let (lat, lon) = r.position?;
        let date = r.date?;
        Some(Fix {
            at_ms: unix_ms(date, r.time),
            lat,
            lon,
            speed_mps: r.speed_knots.map(|k| k * 1852.0 / 3600.0),
            course_deg: r.course_deg,
            hdop: gga.as_ref().and_then(|g| g.hdop),
            satellites: gga.as_ref().and_then(|g| g.satellites),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn epoch_arithmetic_matches_known_dates() {
        let t0 = Time { hour: 0, minute: 0, millis: 0 };
        assert_eq!(unix_ms(Date { year: 1970, month: 1, day: 1 }, t0), 0);
        assert_eq!(unix_ms(Date { year: 2000, month: 3, day: 1 }, t0), 951_868_800_000);
        let t = Time { hour: 12, minute: 34, millis: 56_789 };
        assert_eq!(unix_ms(Date { year: 2026, month: 11, day: 28 }, t), 1_795_869_296_789);
    }

    #[test]
    fn rmc_and_gga_of_one_instant_make_one_fix() {
        let mut b = FixBuilder::new();
        let gga = parse("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47").unwrap();
        assert!(b.push(gga).is_none());
        let rmc = parse("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A").unwrap();
        let fix = b.push(rmc).unwrap();
        assert_eq!(fix.hdop, Some(0.9));
        assert_eq!(fix.satellites, Some(8));
        assert!((fix.speed_mps.unwrap() - 11.52).abs() < 0.01);
        assert!((fix.accuracy_m() - 4.5).abs() < 1e-9);
    }

    #[test]
    fn a_warning_rmc_gives_no_fix() {
        let mut b = FixBuilder::new();
        let body = "GPRMC,123519,V,4807.038,N,01131.000,E,0,0,230394,,";
        let rmc = parse(&format!("${body}*{:02X}", crate::checksum(body))).unwrap();
        assert!(b.push(rmc).is_none());
    }
}
