//! The Medvan X-ray unit's protocol (`PROTOCOL.md` beside this crate) as sans-IO state
//! machines: no I/O, no clock, no threads. The shells in `xray-serial` carry their bytes
//! over a serial port and USB; `xray-sim` runs the device side over a pseudo-terminal; the
//! tests drive both sides on virtual time.
//!
//! - [`frame`]: the serial framing (start byte, length, sequence number, CRC-16).
//! - [`message`]: the generator's commands and replies.
//! - [`technique`]: kV, mAs and time, checked against the unit's limits.
//! - [`controller`]: the host's safety controller (exposure is a dead-man control).
//! - [`generator`]: the generator's side, for the simulator and tests.
//! - [`detector`]: the detector's USB commands and frame stream (header, pixels, CRC-32 trailer).

pub mod controller;
pub mod detector;
pub mod frame;
pub mod generator;
pub mod message;
pub mod technique;

#[cfg(test)]
mod safety_tests;
