//! Framing: each message is a 4-byte big-endian length followed by its postcard encoding.
//!
//! [`Decoder`] takes bytes as they arrive, in any split, and yields whole messages. It
//! refuses a frame over its size limit from the length alone, before buffering it, so a
//! hostile peer cannot make it allocate.

use crate::message::Message;

/// Frames larger than this are refused unless a decoder is built with another limit.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why bytes could not be read as messages. Either ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced more bytes than allowed.
    #[error("the peer sent a {len}-byte message; the limit is {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame did not decode as a message.
    #[error("the peer sent a message that does not decode ({0}); is it speaking the Medvan sync protocol?")]
    Malformed(String),
}

/// Encodes one message as a frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    // Serialising our own message types into a Vec cannot fail.
    let body = postcard::to_allocvec(msg).expect("messages always serialise");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Turns a byte stream back into messages.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder { buf: Vec::new(), max }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&self.buf[4..4 + len]).map_err(|e| FrameError::Malformed(e.to_string()));
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DocId, Priority};

    #[test]
    fn frames_round_trip_in_any_split() {
        let msgs = vec![
            Message::Hello { min_version: 1, max_version: 3, scope_digest: [7; 32] },
            Message::Doc { doc: DocId([1; 16]), priority: Priority::Case, sync: vec![9; 1000] },
            Message::Inventory { docs: vec![(DocId([2; 16]), [3; 32])] },
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for split in [1, 3, 7, 64, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "split {split}");
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused_by_name() {
        let mut d = Decoder::new(1024);
        d.push(&(1_000_000u32).to_be_bytes());
        assert_eq!(d.next_message(), Err(FrameError::TooLarge { len: 1_000_000, max: 1024 }));
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        let err = d.next_message().unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }
}
