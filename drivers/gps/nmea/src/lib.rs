//! NMEA 0183 from a GPS receiver, sans-IO.
//!
//! A receiver on a serial line sends sentences like
//! `$GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,,,A*6A\r\n`. The van reads
//! whatever bytes the port gives and pushes them into a [`LineReader`], which cuts them into
//! lines and hands each to [`parse`]; [`FixBuilder`] turns the sentences into [`Fix`]es.
//!
//! Serial lines are noisy (a receiver plugged in mid-sentence, a baud mismatch, electrical
//! noise), so nothing here trusts its input: a line longer than the standard's 82
//! characters, with a byte outside printable ASCII, without a checksum, or whose checksum is
//! wrong, is refused with an error that says which, and the reader goes on with the next
//! line. Only RMC and GGA are read; other sentences are recognised and skipped.
//! No I/O, no clock.

mod encode;
mod fix;
mod sentence;

pub use encode::{gga_line, rmc_line};
pub use fix::{Fix, FixBuilder, unix_ms};
pub use sentence::{Date, Gga, NmeaError, Rmc, Sentence, Time, checksum, parse};

/// The longest sentence NMEA 0183 allows, from `$` to the checksum, without CR LF.
pub const MAX_SENTENCE: usize = 80;

/// Cuts a byte stream into lines. A line that grows past [`MAX_SENTENCE`] is dropped whole
/// (reported once, when its end arrives), so a stream of garbage without line ends costs
/// bounded memory.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    overlong: bool,
}

impl LineReader {
    /// A reader with nothing buffered.
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// Takes bytes from the port; returns each complete line, parsed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Sentence, NmeaError>> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' | b'\r' => {
                    if self.overlong {
                        out.push(Err(NmeaError::TooLong));
                    } else if !self.buf.is_empty() {
                        out.push(std::str::from_utf8(&self.buf).map_err(|_| NmeaError::NotAscii).and_then(parse));
                    }
                    self.buf.clear();
                    self.overlong = false;
                }
                // A new sentence starts: whatever came before without a line end is a
                // fragment (a receiver plugged in mid-sentence).
                b'$' if !self.buf.is_empty() || self.overlong => {
                    out.push(Err(if self.overlong {
                        NmeaError::TooLong
                    } else if self.buf[0] != b'$' {
                        NmeaError::NoStart
                    } else {
                        NmeaError::Truncated
                    }));
                    self.buf.clear();
                    self.overlong = false;
                    self.buf.push(b);
                }
                _ if self.overlong => {}
                _ if self.buf.len() >= MAX_SENTENCE => {
                    self.buf.clear();
                    self.overlong = true;
                }
                _ => self.buf.push(b),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RMC: &str = "$GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A*";

    fn with_checksum(body: &str) -> String {
        let body = body.trim_end_matches('*');
        format!("{body}*{:02X}", checksum(&body[1..]))
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let line = with_checksum(RMC) + "\r\n";
        let (a, b) = line.as_bytes().split_at(17);
        let mut r = LineReader::new();
        assert!(r.push(a).is_empty());
        let got = r.push(b);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Ok(Sentence::Rmc(_))));
    }

    #[test]
    fn a_fragment_before_a_sentence_is_reported_and_the_sentence_read() {
        let mut r = LineReader::new();
        let bytes = format!("38,N,0113{}\r\n", with_checksum(RMC));
        let got = r.push(bytes.as_bytes());
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Err(NmeaError::NoStart)), "{got:?}");
        assert!(matches!(got[1], Ok(Sentence::Rmc(_))));
        let mut r = LineReader::new();
        let bytes = format!("$GPGGA,1235{}\r\n", with_checksum(RMC));
        let got = r.push(bytes.as_bytes());
        assert!(matches!(got[0], Err(NmeaError::Truncated)), "{got:?}");
        assert!(matches!(got[1], Ok(Sentence::Rmc(_))));
    }

    #[test]
    fn garbage_without_line_ends_is_bounded_and_reported_once() {
        let mut r = LineReader::new();
        let junk = vec![b'x'; 10_000];
        assert!(r.push(&junk).is_empty());
        assert!(r.buf.len() <= MAX_SENTENCE);
        let got = r.push(format!("\n{}\n", with_checksum(RMC)).as_bytes());
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Err(NmeaError::TooLong)));
        assert!(got[1].is_ok());
    }

    proptest! {
        /// Any bytes at all: no panic, bounded memory, and a good sentence after them is read.
        #[test]
        fn arbitrary_bytes_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut r = LineReader::new();
            let _ = r.push(&junk);
            prop_assert!(r.buf.len() <= MAX_SENTENCE);
            let got = r.push(format!("\r\n{}\r\n", with_checksum(RMC)).as_bytes());
            prop_assert!(matches!(got.last(), Some(Ok(Sentence::Rmc(_)))));
        }

        /// Any line of printable characters parses or is refused, never panics.
        #[test]
        fn arbitrary_lines_never_panic(line in "\\$[ -~]{0,90}") {
            let _ = parse(&line);
        }

        /// Changing any one character of a good sentence is caught.
        #[test]
        fn one_changed_character_is_refused(pos in 1usize..60, c in "[0-9A-Z,.]") {
            let good = with_checksum(RMC);
            let mut bad: Vec<char> = good.chars().collect();
            prop_assume!(pos < bad.len() - 3 && bad[pos].to_string() != c);
            bad[pos] = c.chars().next().unwrap();
            let bad: String = bad.into_iter().collect();
            prop_assert!(parse(&bad).is_err(), "{bad} was accepted");
        }
    }
}
