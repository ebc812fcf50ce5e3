//! The flat-panel detector's USB protocol (`PROTOCOL.md`, "Detector: USB"): the commands the
//! host sends, and the frame stream it reads back, checked as it arrives.
//!
//! [`FrameReader`] takes the bulk transfers in whatever sizes they come and yields a frame
//! only once its trailer's CRC-32 matches, so a torn or corrupted frame never reaches the
//! image pipeline. [`encode_frame`] is the detector's side, for the simulator and tests.

/// The magic of a command.
pub const COMMAND_MAGIC: &[u8; 4] = b"MVDC";
/// The magic of a frame header.
pub const FRAME_MAGIC: &[u8; 4] = b"MVDF";
/// The magic of a frame trailer.
pub const TRAILER_MAGIC: &[u8; 4] = b"MVDE";
/// Length of a frame header.
pub const HEADER_LEN: usize = 32;
/// Length of a frame trailer.
pub const TRAILER_LEN: usize = 8;
/// Length of a command.
pub const COMMAND_LEN: usize = 9;
/// The largest bulk transfer the detector sends.
pub const MAX_TRANSFER: usize = 16_384;
/// The frame format this crate reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// USB vendor id of our detector.
pub const VENDOR_ID: u16 = 0x4d56;
/// USB product id of our detector.
pub const PRODUCT_ID: u16 = 0x0d01;
/// The bulk OUT endpoint (commands).
pub const EP_OUT: u8 = 0x01;
/// The bulk IN endpoint (frames).
pub const EP_IN: u8 = 0x82;

/// A command to the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Get ready to integrate the next exposure as frame `id`.
    Arm(u32),
    /// Send frame `id`.
    Read(u32),
    /// Stop waiting for an exposure.
    Disarm,
}

impl Command {
    /// The command's bytes (one bulk OUT transfer).
    pub fn encode(self) -> [u8; COMMAND_LEN] {
        let (code, arg) = match self {
            Command::Arm(id) => (1u8, id),
            Command::Read(id) => (2, id),
            Command::Disarm => (3, 0),
        };
        let mut out = [0u8; COMMAND_LEN];
        out[..4].copy_from_slice(COMMAND_MAGIC);
        out[4] = code;
        out[5..].copy_from_slice(&arg.to_le_bytes());
        out
    }

    /// Reads a command (the detector's side).
    pub fn decode(bytes: &[u8]) -> Result<Command, DetectorError> {
        if bytes.len() != COMMAND_LEN || &bytes[..4] != COMMAND_MAGIC {
            return Err(DetectorError::BadCommand);
        }
        let arg = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        match bytes[4] {
            1 => Ok(Command::Arm(arg)),
            2 => Ok(Command::Read(arg)),
            3 => Ok(Command::Disarm),
            _ => Err(DetectorError::BadCommand),
        }
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bits used of each pixel value (12 to 16).
    pub bits_stored: u8,
    /// Columns.
    pub columns: u16,
    /// Rows.
    pub rows: u16,
    /// Pixel pitch in micrometres.
    pub pixel_pitch_um: u16,
    /// The frame's id (the one armed and read).
    pub frame_id: u32,
    /// The detector's serial number.
    pub serial: u32,
    /// Detector temperature in 0.1 degC.
    pub temperature_x10: i16,
}

impl FrameHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(FRAME_MAGIC);
        h[4] = FORMAT_VERSION;
        h[5] = self.bits_stored;
        h[6..8].copy_from_slice(&self.columns.to_le_bytes());
        h[8..10].copy_from_slice(&self.rows.to_le_bytes());
        h[10..12].copy_from_slice(&self.pixel_pitch_um.to_le_bytes());
        h[12..16].copy_from_slice(&self.frame_id.to_le_bytes());
        h[16..20].copy_from_slice(&self.serial.to_le_bytes());
        h[20..22].copy_from_slice(&self.temperature_x10.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN], max_pixels: usize) -> Result<FrameHeader, DetectorError> {
        if &h[..4] != FRAME_MAGIC {
            return Err(DetectorError::NotAFrame);
        }
        if h[4] != FORMAT_VERSION {
            return Err(DetectorError::Version(h[4]));
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let header = FrameHeader {
            bits_stored: h[5],
            columns: u16_at(6),
            rows: u16_at(8),
            pixel_pitch_um: u16_at(10),
            frame_id: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            serial: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
            temperature_x10: i16::from_le_bytes([h[20], h[21]]),
        };
        if !(12..=16).contains(&header.bits_stored) {
            return Err(DetectorError::BadHeader(format!("bits stored {} is not 12 to 16", header.bits_stored)));
        }
        let pixels = usize::from(header.columns) * usize::from(header.rows);
        if pixels == 0 || pixels > max_pixels {
            return Err(DetectorError::BadHeader(format!(
                "{} x {} pixels is not a frame this detector makes (at most {max_pixels} pixels)",
                header.columns, header.rows
            )));
        }
        Ok(header)
    }
}

/// A whole frame, its CRC checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorFrame {
    /// The header.
    pub header: FrameHeader,
    /// Row by row, top left first.
    pub pixels: Vec<u16>,
}

/// What went wrong with the detector's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DetectorError {
    /// A command that is not one of ours.
    #[error("not a detector command")]
    BadCommand,
    /// The stream does not start with a frame header.
    #[error("the detector sent something that is not a frame; read the frame again")]
    NotAFrame,
    /// A frame format this host does not read.
    #[error("the detector sent frame format {0}, this software reads format 1: update the software or the detector")]
    Version(u8),
    /// An impossible header.
    #[error("the detector's frame header is impossible: {0}; read the frame again")]
    BadHeader(String),
    /// The frame is not the one asked for.
    #[error("the detector sent frame {got}, not frame {wanted}; read frame {wanted} again")]
    WrongFrame {
        /// The id asked for.
        wanted: u32,
        /// The id sent.
        got: u32,
    },
    /// The trailer is missing or its CRC does not match the pixels.
    #[error("the frame arrived damaged (CRC mismatch or no trailer); read it again")]
    Corrupt,
    /// More bytes than a frame holds.
    #[error("the detector sent more bytes than the frame holds; read the frame again")]
    Overrun,
    /// The stream ended before the frame did.
    #[error("the frame stopped after {got} of {expected} bytes; read it again")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes a whole frame has.
        expected: usize,
    },
}

/// Reads one frame from bulk transfers, checking it as it comes.
#[derive(Debug)]
pub struct FrameReader {
    wanted: u32,
    max_pixels: usize,
    header_buf: Vec<u8>,
    header: Option<FrameHeader>,
    pixel_bytes: Vec<u8>,
    trailer: Vec<u8>,
    crc: crc32fast::Hasher,
    received: usize,
}

/// Where a [`FrameReader`] is.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Give it the next transfer.
    NeedMore,
    /// The frame, whole and checked.
    Done(DetectorFrame),
}

impl FrameReader {
    /// Reads frame `wanted`, refusing a header that claims more than `max_pixels`.
    pub fn new(wanted: u32, max_pixels: usize) -> FrameReader {
        FrameReader {
            wanted,
            max_pixels,
            header_buf: Vec::with_capacity(HEADER_LEN),
            header: None,
            pixel_bytes: Vec::new(),
            trailer: Vec::with_capacity(TRAILER_LEN),
            crc: crc32fast::Hasher::new(),
            received: 0,
        }
    }

    /// The bytes a whole frame has, once its header is known.
    pub fn expected_len(&self) -> Option<usize> {
        self.header.map(|h| HEADER_LEN + pixel_len(&h) + TRAILER_LEN)
    }

    /// Bytes taken so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Takes one transfer.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Progress, DetectorError> {
        self.received += bytes.len();
        if self.header.is_none() {
            let take = (HEADER_LEN - self.header_buf.len()).min(bytes.len());
            self.header_buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header_buf.len() < HEADER_LEN {
                return Ok(Progress::NeedMore);
            }
            let raw: &[u8; HEADER_LEN] = self.header_buf.as_slice().try_into().map_err(|_| DetectorError::NotAFrame)?;
            let header = FrameHeader::decode(raw, self.max_pixels)?;
            if header.frame_id != self.wanted {
                return Err(DetectorError::WrongFrame { wanted: self.wanted, got: header.frame_id });
            }
            self.pixel_bytes.reserve_exact(pixel_len(&header));
            self.header = Some(header);
        }
        let Some(header) = self.header else { return Ok(Progress::NeedMore) };
        let want = pixel_len(&header) - self.pixel_bytes.len();
        let take = want.min(bytes.len());
        self.crc.update(&bytes[..take]);
        self.pixel_bytes.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        let take = (TRAILER_LEN - self.trailer.len()).min(bytes.len());
        self.trailer.extend_from_slice(&bytes[..take]);
        if bytes.len() > take {
            return Err(DetectorError::Overrun);
        }
        if self.trailer.len() < TRAILER_LEN {
            return Ok(Progress::NeedMore);
        }
        let crc = u32::from_le_bytes([self.trailer[4], self.trailer[5], self.trailer[6], self.trailer[7]]);
        if &self.trailer[..4] != TRAILER_MAGIC || crc != self.crc.clone().finalize() {
            return Err(DetectorError::Corrupt);
        }
        let pixels = self.pixel_bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        Ok(Progress::Done(DetectorFrame { header, pixels }))
    }

    /// The stream ended (a short transfer, a timeout): what that means for this frame.
    pub fn end(&self) -> DetectorError {
        match self.expected_len() {
            Some(expected) => DetectorError::Truncated { got: self.received, expected },
            None => DetectorError::Truncated { got: self.received, expected: HEADER_LEN },
        }
    }
}

fn pixel_len(h: &FrameHeader) -> usize {
    usize::from(h.columns) * usize::from(h.rows) * 2
}

/// The detector's side: a frame as the bytes it streams.
pub fn encode_frame(header: &FrameHeader, pixels: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + pixels.len() * 2 + TRAILER_LEN);
    out.extend_from_slice(&header.encode());
    for p in pixels {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let crc = crc32(&out[HEADER_LEN..]);
    out.extend_from_slice(TRAILER_MAGIC);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3), as the trailer carries it.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u32) -> FrameHeader {
        FrameHeader {
            bits_stored: 14,
            columns: 30,
            rows: 20,
            pixel_pitch_um: 140,
            frame_id: id,
            serial: 77,
            temperature_x10: 312,
        }
    }

    fn pixels() -> Vec<u16> {
        (0..600u32).map(|i| (i * 37 % 16_384) as u16).collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_frame_reads_back_whatever_the_transfer_sizes() {
        let bytes = encode_frame(&header(5), &pixels());
        for chunk in [1, 7, 31, 32, 33, 512, MAX_TRANSFER] {
            let mut r = FrameReader::new(5, 10_000);
            let mut done = None;
            for (i, c) in bytes.chunks(chunk).enumerate() {
                match r.push(c).unwrap() {
                    Progress::NeedMore => assert!(i + 1 < bytes.len().div_ceil(chunk), "chunk {chunk}"),
                    Progress::Done(f) => done = Some(f),
                }
            }
            let f = done.unwrap_or_else(|| panic!("no frame with {chunk}-byte transfers"));
            assert_eq!(f.header, header(5));
            assert_eq!(f.pixels, pixels());
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_pixels_or_trailer_refuses_the_frame() {
        let good = encode_frame(&header(5), &pixels());
        for at in [HEADER_LEN, HEADER_LEN + 599, good.len() - 5, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert_eq!(FrameReader::new(5, 10_000).push(&bad), Err(DetectorError::Corrupt), "byte {at}");
        }
    }

    #[test]
    fn wrong_frame_impossible_header_overrun_and_truncation_are_named() {
        let good = encode_frame(&header(5), &pixels());
        assert_eq!(FrameReader::new(6, 10_000).push(&good), Err(DetectorError::WrongFrame { wanted: 6, got: 5 }));
        assert!(matches!(FrameReader::new(5, 100).push(&good), Err(DetectorError::BadHeader(_))));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(FrameReader::new(5, 10_000).push(&long), Err(DetectorError::Overrun));
        let mut r = FrameReader::new(5, 10_000);
        assert_eq!(r.push(&good[..100]), Ok(Progress::NeedMore));
        assert_eq!(r.end(), DetectorError::Truncated { got: 100, expected: good.len() });
        assert_eq!(
            FrameReader::new(5, 10_000).push(b"garbage that is long enough to be a header!"),
            Err(DetectorError::NotAFrame)
        );
    }

    #[test]
    fn commands_round_trip_and_junk_is_refused() {
        for c in [Command::Arm(9), Command::Read(u32::MAX), Command::Disarm] {
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        assert_eq!(Command::decode(b"MVDC\x09\0\0\0\0"), Err(DetectorError::BadCommand));
        assert_eq!(Command::decode(b"MVD"), Err(DetectorError::BadCommand));
    }
}
