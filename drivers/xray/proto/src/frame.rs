//! Serial framing: `0x02 LEN SEQ TYPE PAYLOAD CRC16` (see `PROTOCOL.md`).

/// Starts every frame.
pub const STX: u8 = 0x02;
/// The largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 64;

/// One frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sender's sequence number.
    pub seq: u8,
    /// The message type.
    pub kind: u8,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Encodes a frame. Panics if the payload is over [`MAX_PAYLOAD`]: every message this crate
/// defines is far smaller, so a longer one is a bug here, not input.
pub fn encode(seq: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_PAYLOAD, "message payloads are fixed and small");
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.push(STX);
    out.push(payload.len() as u8);
    out.push(seq);
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc16(&out[1..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// What the decoder found besides frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A frame's CRC did not match.
    BadCrc,
    /// A frame announced a payload over [`MAX_PAYLOAD`].
    BadLength,
}

/// Reassembles frames from a byte stream, resynchronising after damage.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// One thing the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame with a good CRC.
    Frame(Frame),
    /// A damaged frame, dropped.
    Damaged(Damage),
}

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame or damage report, or `None` until more bytes arrive.
    pub fn next_decoded(&mut self) -> Option<Decoded> {
        // Skip to the next start byte; what came before it is line noise.
        match self.buf.iter().position(|&b| b == STX) {
            Some(0) => {}
            Some(i) => {
                self.buf.drain(..i);
            }
            None => {
                self.buf.clear();
                return None;
            }
        }
        if self.buf.len() < 2 {
            return None;
        }
        let len = usize::from(self.buf[1]);
        if len > MAX_PAYLOAD {
            self.buf.drain(..1);
            return Some(Decoded::Damaged(Damage::BadLength));
        }
        let total = len + 6;
        if self.buf.len() < total {
            return None;
        }
        let crc = u16::from_be_bytes([self.buf[total - 2], self.buf[total - 1]]);
        if crc16(&self.buf[1..total - 2]) != crc {
            // Drop only the start byte: the real next frame may begin inside this one.
            self.buf.drain(..1);
            return Some(Decoded::Damaged(Damage::BadCrc));
        }
        let frame = Frame { seq: self.buf[2], kind: self.buf[3], payload: self.buf[4..total - 2].to_vec() };
        self.buf.drain(..total);
        Some(Decoded::Frame(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_crc_is_ccitt_false() {
        // The standard check value for "123456789".
        assert_eq!(crc16(b"123456789"), 0x29b1);
    }

    #[test]
    fn a_corrupted_frame_costs_that_frame_only() {
        let a = encode(1, 0x83, &[2, 0x0f, 0x10, 0x01, 40]);
        let mut b = encode(2, 0x81, &[7]);
        let c = encode(3, 0x81, &[8]);
        b[4] ^= 0x40;
        let mut d = Decoder::default();
        d.push(&[0xff, 0x00]);
        d.push(&a);
        d.push(&b);
        d.push(&c);
        let mut frames = Vec::new();
        let mut damage = 0;
        while let Some(x) = d.next_decoded() {
            match x {
                Decoded::Frame(f) => frames.push(f.seq),
                Decoded::Damaged(_) => damage += 1,
            }
        }
        assert_eq!(frames, vec![1, 3]);
        assert!(damage >= 1);
    }

    proptest! {
        #[test]
        fn frames_survive_any_split_and_garbage_between(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD), 1..8),
            garbage in proptest::collection::vec(any::<u8>().prop_filter("no start byte", |b| *b != STX), 0..20),
            split in 1usize..17,
        ) {
            let mut wire = garbage.clone();
            for (i, p) in payloads.iter().enumerate() {
                wire.extend(encode(i as u8, 0x83, p));
            }
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                d.push(chunk);
                while let Some(x) = d.next_decoded() {
                    if let Decoded::Frame(f) = x { got.push(f.payload); }
                }
            }
            prop_assert_eq!(got, payloads);
        }

        #[test]
        fn no_input_panics_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::default();
            d.push(&bytes);
            while d.next_decoded().is_some() {}
        }
    }
}
