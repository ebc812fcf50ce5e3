//! The generator's messages (see `PROTOCOL.md`), typed.

use crate::technique::Technique;

/// Host to generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Asks for a `STATUS`.
    Status,
    /// Sets kV, mAs and time.
    SetTechnique(Technique),
    /// Takes the tube to `READY`.
    Prepare,
    /// Starts the beam; the token names the operator's confirm.
    Expose {
        /// The confirm's token.
        token: u64,
    },
    /// Stops the beam, or leaves `READY`.
    Abort,
    /// Leaves `READY` for standby.
    Standby,
    /// Keeps the generator's watchdog fed; answered with `STATUS`.
    Heartbeat,
}

/// The generator's state, as `STATUS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenState {
    /// Idle.
    Standby,
    /// Heating the filament and spinning up the rotor.
    Preparing,
    /// Prepared: an `EXPOSE` starts the beam.
    Ready,
    /// The beam is on.
    Exposing,
    /// Stopped by a fault.
    Fault,
}

/// Interlocks, each closed (safe) when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interlocks(pub u8);

impl Interlocks {
    /// The door is closed.
    pub const DOOR: u8 = 1;
    /// The collimator is in place.
    pub const COLLIMATOR: u8 = 2;
    /// The detector is ready.
    pub const DETECTOR: u8 = 4;
    /// The tube is cool enough.
    pub const TEMPERATURE: u8 = 8;
    /// All closed.
    pub const ALL: Interlocks = Interlocks(0x0f);

    /// Whether every interlock is closed.
    pub fn all_closed(self) -> bool {
        self.0 & 0x0f == 0x0f
    }

    /// Names the open ones, for a message to the operator.
    pub fn open(self) -> Vec<&'static str> {
        [
            (Self::DOOR, "door"),
            (Self::COLLIMATOR, "collimator"),
            (Self::DETECTOR, "detector"),
            (Self::TEMPERATURE, "tube temperature"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.0 & bit == 0)
        .map(|(_, name)| name)
        .collect()
    }
}

/// A `STATUS` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The state.
    pub state: GenState,
    /// The interlocks.
    pub interlocks: Interlocks,
    /// Tube temperature in tenths of a degree Celsius.
    pub temp_x10: i16,
    /// Heat load, percent.
    pub heat_pct: u8,
}

/// What an exposure delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivered {
    /// kV, in tenths.
    pub kv_x10: u16,
    /// mAs, in hundredths.
    pub mas_x100: u32,
    /// Time, ms.
    pub ms: u16,
    /// Dose-area product, in hundredths of a mGy.cm2.
    pub dap_x100: u32,
}

/// Why the generator refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakReason {
    /// Unknown or malformed.
    Malformed,
    /// Not allowed in this state.
    State,
    /// Technique out of the unit's range.
    Range,
    /// An interlock is open.
    Interlock,
    /// The confirm token was used before.
    TokenUsed,
    /// A code this host does not know.
    Other(u8),
}

/// Why an exposure ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The host asked.
    Host,
    /// The generator's watchdog: no heartbeat.
    Heartbeat,
    /// An interlock opened.
    Interlock,
    /// The tube overheated.
    OverTemperature,
    /// An internal fault.
    Internal,
    /// A code this host does not know.
    Other(u8),
}

/// A generator error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenError {
    /// Over-temperature.
    OverTemperature,
    /// The door opened.
    DoorOpen,
    /// The tube arced.
    TubeArc,
    /// The watchdog fired: no heartbeat from the host.
    HeartbeatLost,
    /// An internal fault.
    Internal,
    /// A code this host does not know.
    Other(u8),
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::Host => f.write_str("the host asked"),
            AbortReason::Heartbeat => f.write_str("its watchdog fired: the host fell silent"),
            AbortReason::Interlock => f.write_str("an interlock opened (door, collimator or detector)"),
            AbortReason::OverTemperature => f.write_str("the tube overheated; let it cool before the next exposure"),
            AbortReason::Internal => f.write_str("an internal fault; have the unit serviced"),
            AbortReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

impl std::fmt::Display for GenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenError::OverTemperature => f.write_str("over-temperature: let the tube cool"),
            GenError::DoorOpen => f.write_str("the door is open: close it"),
            GenError::TubeArc => f.write_str("a tube arc: have the unit serviced"),
            GenError::HeartbeatLost => f.write_str("its watchdog fired: the host fell silent"),
            GenError::Internal => f.write_str("an internal fault: have the unit serviced"),
            GenError::Other(c) => write!(f, "error code {c}"),
        }
    }
}

/// Generator to host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The frame with this sequence number was accepted.
    Ack(u8),
    /// The frame with this sequence number was refused.
    Nak(u8, NakReason),
    /// State and interlocks.
    Status(Status),
    /// The beam started for this token.
    ExposureStarted(u64),
    /// The exposure ended as planned.
    ExposureDone(Delivered),
    /// The exposure ended early.
    ExposureAborted(Delivered, AbortReason),
    /// A fault.
    Error(GenError),
}

/// A frame that is not a message this side understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown or malformed message of type {kind:#04x} with {len} payload bytes")]
pub struct Malformed {
    /// Its type.
    pub kind: u8,
    /// Its payload length.
    pub len: usize,
}

impl Command {
    /// Type and payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match *self {
            Command::Status => (0x01, vec![]),
            Command::SetTechnique(t) => {
                let mut p = t.kv_x10.to_le_bytes().to_vec();
                p.extend(t.mas_x100.to_le_bytes());
                p.extend(t.ms.to_le_bytes());
                (0x02, p)
            }
            Command::Prepare => (0x03, vec![]),
            Command::Expose { token } => (0x04, token.to_le_bytes().to_vec()),
            Command::Abort => (0x05, vec![]),
            Command::Standby => (0x06, vec![]),
            Command::Heartbeat => (0x07, vec![]),
        }
    }

    /// Reads a command.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Command, Malformed> {
        let bad = || Malformed { kind, len: p.len() };
        Ok(match (kind, p.len()) {
            (0x01, 0) => Command::Status,
            (0x02, 8) => Command::SetTechnique(Technique {
                kv_x10: u16::from_le_bytes([p[0], p[1]]),
                mas_x100: u32::from_le_bytes([p[2], p[3], p[4], p[5]]),
                ms: u16::from_le_bytes([p[6], p[7]]),
            }),
            (0x03, 0) => Command::Prepare,
            (0x04, 8) => Command::Expose { token: u64::from_le_bytes(p.try_into().map_err(|_| bad())?) },
            (0x05, 0) => Command::Abort,
            (0x06, 0) => Command::Standby,
            (0x07, 0) => Command::Heartbeat,
            _ => return Err(bad()),
        })
    }
}

fn delivered_bytes(d: &Delivered) -> Vec<u8> {
    let mut p = d.kv_x10.to_le_bytes().to_vec();
    p.extend(d.mas_x100.to_le_bytes());
    p.extend(d.ms.to_le_bytes());
    p.extend(d.dap_x100.to_le_bytes());
    p
}

fn delivered_from(p: &[u8]) -> Delivered {
    Delivered {
        kv_x10: u16::from_le_bytes([p[0], p[1]]),
        mas_x100: u32::from_le_bytes([p[2], p[3], p[4], p[5]]),
        ms: u16::from_le_bytes([p[6], p[7]]),
        dap_x100: u32::from_le_bytes([p[8], p[9], p[10], p[11]]),
    }
}

impl Reply {
    /// Type and payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Reply::Ack(seq) => (0x81, vec![*seq]),
            Reply::Nak(seq, reason) => (
                0x82,
                vec![
                    *seq,
                    match reason {
                        NakReason::Malformed => 1,
                        NakReason::State => 2,
                        NakReason::Range => 3,
                        NakReason::Interlock => 4,
                        NakReason::TokenUsed => 5,
                        NakReason::Other(c) => *c,
                    },
                ],
            ),
            Reply::Status(s) => {
                let state = match s.state {
                    GenState::Standby => 0,
                    GenState::Preparing => 1,
                    GenState::Ready => 2,
                    GenState::Exposing => 3,
                    GenState::Fault => 4,
                };
                let mut p = vec![state, s.interlocks.0];
                p.extend(s.temp_x10.to_le_bytes());
                p.push(s.heat_pct);
                (0x83, p)
            }
            Reply::ExposureStarted(token) => (0x85, token.to_le_bytes().to_vec()),
            Reply::ExposureDone(d) => (0x86, delivered_bytes(d)),
            Reply::ExposureAborted(d, reason) => {
                let mut p = delivered_bytes(d);
                p.push(match reason {
                    AbortReason::Host => 1,
                    AbortReason::Heartbeat => 2,
                    AbortReason::Interlock => 3,
                    AbortReason::OverTemperature => 4,
                    AbortReason::Internal => 5,
                    AbortReason::Other(c) => *c,
                });
                (0x87, p)
            }
            Reply::Error(e) => (
                0x88,
                vec![match e {
                    GenError::OverTemperature => 1,
                    GenError::DoorOpen => 2,
                    GenError::TubeArc => 3,
                    GenError::HeartbeatLost => 4,
                    GenError::Internal => 5,
                    GenError::Other(c) => *c,
                }],
            ),
        }
    }

    /// Reads a reply.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Reply, Malformed> {
        let bad = || Malformed { kind, len: p.len() };
        Ok(match (kind, p.len()) {
            (0x81, 1) => Reply::Ack(p[0]),
            (0x82, 2) => Reply::Nak(
                p[0],
                match p[1] {
                    1 => NakReason::Malformed,
                    2 => NakReason::State,
                    3 => NakReason::Range,
                    4 => NakReason::Interlock,
                    5 => NakReason::TokenUsed,
                    c => NakReason::Other(c),
                },
            ),
            (0x83, 5) => Reply::Status(Status {
                state: match p[0] {
                    0 => GenState::Standby,
                    1 => GenState::Preparing,
                    2 => GenState::Ready,
                    3 => GenState::Exposing,
                    4 => GenState::Fault,
                    _ => return Err(bad()),
                },
                interlocks: Interlocks(p[1]),
                temp_x10: i16::from_le_bytes([p[2], p[3]]),
                heat_pct: p[4],
            }),
            (0x85, 8) => Reply::ExposureStarted(u64::from_le_bytes(p.try_into().map_err(|_| bad())?)),
            (0x86, 12) => Reply::ExposureDone(delivered_from(p)),
            (0x87, 13) => Reply::ExposureAborted(
                delivered_from(p),
                match p[12] {
                    1 => AbortReason::Host,
                    2 => AbortReason::Heartbeat,
                    3 => AbortReason::Interlock,
                    4 => AbortReason::OverTemperature,
                    5 => AbortReason::Internal,
                    c => AbortReason::Other(c),
                },
            ),
            (0x88, 1) => Reply::Error(match p[0] {
                1 => GenError::OverTemperature,
                2 => GenError::DoorOpen,
                3 => GenError::TubeArc,
                4 => GenError::HeartbeatLost,
                5 => GenError::Internal,
                c => GenError::Other(c),
            }),
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let t = Technique { kv_x10: 700, mas_x100: 250, ms: 20 };
        for c in [
            Command::Status,
            Command::SetTechnique(t),
            Command::Prepare,
            Command::Expose { token: 0x0102_0304_0506_0708 },
            Command::Abort,
            Command::Standby,
            Command::Heartbeat,
        ] {
            let (k, p) = c.encode();
            assert_eq!(Command::decode(k, &p), Ok(c));
        }
        let d = Delivered { kv_x10: 700, mas_x100: 249, ms: 20, dap_x100: 1234 };
        for r in [
            Reply::Ack(9),
            Reply::Nak(9, NakReason::TokenUsed),
            Reply::Status(Status { state: GenState::Ready, interlocks: Interlocks::ALL, temp_x10: -15, heat_pct: 12 }),
            Reply::ExposureStarted(42),
            Reply::ExposureDone(d),
            Reply::ExposureAborted(d, AbortReason::Heartbeat),
            Reply::Error(GenError::OverTemperature),
        ] {
            let (k, p) = r.encode();
            assert_eq!(Reply::decode(k, &p), Ok(r));
        }
        assert!(Reply::decode(0x83, &[9, 0, 0, 0, 0]).is_err(), "an unknown state is malformed");
        assert!(Command::decode(0x04, &[1, 2]).is_err(), "a short token is malformed");
    }
}
