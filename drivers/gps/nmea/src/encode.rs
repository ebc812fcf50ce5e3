//! Writing sentences: the simulator's receiver and the van's stored track use the same
//! format every GPS tool reads.

use crate::Fix;

/// The fix as an RMC sentence, with checksum and CR LF.
pub fn rmc_line(fix: &Fix) -> String {
    let (time, date) = time_date(fix.at_ms);
    let speed = fix.speed_mps.map(|v| format!("{:.1}", v * 3600.0 / 1852.0)).unwrap_or_default();
    let course = fix.course_deg.map(|c| format!("{c:.1}")).unwrap_or_default();
    let (lat, lon) = (coord(fix.lat, 2, 'N', 'S'), coord(fix.lon, 3, 'E', 'W'));
    line(&format!("GPRMC,{time},A,{lat},{lon},{speed},{course},{date},,,A"))
}

/// The fix as a GGA sentence (quality 1, GPS), with checksum and CR LF.
pub fn gga_line(fix: &Fix, altitude_m: f64) -> String {
    let (time, _) = time_date(fix.at_ms);
    let (lat, lon) = (coord(fix.lat, 2, 'N', 'S'), coord(fix.lon, 3, 'E', 'W'));
    let sats = fix.satellites.unwrap_or(8);
    let hdop = fix.hdop.map(|h| format!("{h:.1}")).unwrap_or_default();
    line(&format!("GPGGA,{time},{lat},{lon},1,{sats:02},{hdop},{altitude_m:.1},M,47.0,M,,"))
}

fn line(body: &str) -> String {
    format!("${body}*{:02X}\r\n", crate::checksum(body))
}

fn time_date(at_ms: i64) -> (String, String) {
    let ms = at_ms.rem_euclid(86_400_000);
    let (y, m, d) = civil(at_ms.div_euclid(86_400_000));
    (
        format!("{:02}{:02}{:02}.{:02}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000 / 10),
        format!("{d:02}{m:02}{:02}", y.rem_euclid(100)),
    )
}

fn coord(v: f64, degree_digits: usize, pos: char, neg: char) -> String {
    let a = v.abs();
    let mut deg = a.trunc();
    let mut min = ((a - deg) * 60.0 * 10_000.0).round() / 10_000.0;
    if min >= 60.0 {
        deg += 1.0;
        min = 0.0;
    }
    format!("{:0w$}{:07.4},{}", deg as u32, min, if v < 0.0 { neg } else { pos }, w = degree_digits)
}

/// The civil date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FixBuilder, parse};

    #[test]
    fn written_sentences_read_back_as_the_fix() {
        for (lat, lon, at_ms) in [(-33.868_82, 151.209_29, 1_795_869_296_780), (51.5, -0.1246, 951_868_800_000)] {
            let fix = Fix {
                at_ms,
                lat,
                lon,
                speed_mps: Some(12.5),
                course_deg: Some(271.3),
                hdop: Some(1.2),
                satellites: Some(9),
            };
            let mut b = FixBuilder::new();
            assert!(b.push(parse(gga_line(&fix, 35.0).trim_end()).unwrap()).is_none());
            let back = b.push(parse(rmc_line(&fix).trim_end()).unwrap()).unwrap();
            assert_eq!(back.at_ms, fix.at_ms);
            assert_eq!(back.hdop, Some(1.2));
            assert!((back.lat - lat).abs() < 1e-6 && (back.lon - lon).abs() < 1e-6, "{back:?}");
            assert!((back.speed_mps.unwrap() - 12.5).abs() < 0.05);
        }
    }
}
