//! The van's media: the only crate that knows GStreamer.
//!
//! - [`source`]: what the call sends: the van's camera and microphone (v4l2, ALSA), or test
//!   sources for tests and developers, whose frames carry the wall-clock time as a bar code
//!   (so a receiver measures glass-to-glass latency).
//! - [`publish`]: a live call published over WHIP (RFC 9725): GStreamer 1.22's `webrtcbin`
//!   makes the offer, [`whip`] carries it to the hub in one HTTP request, and the answer
//!   goes back into `webrtcbin`. H.264 from the board's hardware encoder when there is one
//!   (`v4l2h264enc`), x264 otherwise; Opus for audio. The call can be recorded at the same
//!   time in full quality (its own encoder, Matroska segments), whatever the live link does.
//! - [`adapt`]: the video bitrate following the link, from the receiver's reports.
//! - [`inspect`]: reading recordings back.
//!
//! Debian's GStreamer 1.22 has no WHIP element, hence the exchange done here.

pub mod adapt;
pub mod inspect;
pub mod publish;
pub mod source;
pub mod whip;

/// Frames' time bar code: 32 bits of the wall clock (ms, modulo 2^32) in cells across the
/// top of the picture, most significant first, white for 1.
pub mod stamp {
    /// Bits in the code.
    pub const BITS: u32 = 32;
    /// Cells are this many pixels square for a picture `width` wide.
    pub fn cell(width: u32) -> u32 {
        (width / (BITS + 2)).max(4)
    }
}
