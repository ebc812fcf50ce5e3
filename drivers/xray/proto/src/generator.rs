//! The generator's side of the serial protocol, sans-IO: what the simulator runs, and what
//! the controller's tests talk to. It keeps its own watchdog (no frame from the host for
//! a second stops the beam), as the real unit does.
//!
//! Contract: call [`Generator::handle_input`] with bytes or a tick, then drain
//! [`Generator::poll_transmit`]; call again with [`GenInput::Tick`] at
//! [`Generator::poll_timeout`].

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{Decoded, Decoder, encode};
use crate::message::{AbortReason, Command, Delivered, GenError, GenState, Interlocks, NakReason, Reply, Status};
use crate::technique::{Limits, Technique};

/// How the simulated unit behaves.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// From `PREPARE` to `READY`.
    pub prepare: Duration,
    /// From `EXPOSE` to the beam.
    pub start_delay: Duration,
    /// No frame from the host for this long stops everything.
    pub watchdog: Duration,
    /// The unit's limits.
    pub limits: Limits,
    /// Whether the unit checks techniques against its limits itself. A real unit does; the
    /// controller's tests turn it off to show the host's own check is what protects.
    pub check_range: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            prepare: Duration::from_millis(600),
            start_delay: Duration::from_millis(20),
            watchdog: Duration::from_secs(1),
            limits: Limits::default(),
            check_range: true,
        }
    }
}

/// Faults a test or the simulator's operator switches on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The generator hears but never answers.
    pub mute: bool,
    /// The tube is too hot: the temperature interlock opens and an exposure stops.
    pub over_temperature: bool,
    /// The door is open: its interlock opens and an exposure stops.
    pub door_open: bool,
}

/// Something for the generator.
#[derive(Debug)]
pub enum GenInput<'a> {
    /// Bytes from the host.
    Received(&'a [u8]),
    /// Time passed.
    Tick,
}

#[derive(Debug, Clone, Copy)]
struct Exposure {
    token: u64,
    technique: Technique,
    starts: Instant,
    started: bool,
}

/// The simulated generator.
#[derive(Debug)]
pub struct Generator {
    config: GenConfig,
    faults: Faults,
    decoder: Decoder,
    state: GenState,
    technique: Option<Technique>,
    ready_at: Option<Instant>,
    exposure: Option<Exposure>,
    used: HashSet<u64>,
    last_host: Option<Instant>,
    seq: u8,
    temp_x10: i16,
    out: VecDeque<Vec<u8>>,
}

/// Dose-area product in hundredths of a mGy.cm2 for a technique (a plausible model for a
/// portable unit at a fixed field size: 0.0032 mGy.cm2 per kV squared per mAs).
pub fn dap_x100(kv_x10: u16, mas_x100: u32) -> u32 {
    let kv = f64::from(kv_x10) / 10.0;
    let mas = f64::from(mas_x100) / 100.0;
    (0.0032 * kv * kv * mas * 100.0).round() as u32
}

impl Generator {
    /// A generator in standby with every interlock closed.
    pub fn new(config: GenConfig) -> Generator {
        Generator {
            config,
            faults: Faults::default(),
            decoder: Decoder::default(),
            state: GenState::Standby,
            technique: None,
            ready_at: None,
            exposure: None,
            used: HashSet::new(),
            last_host: None,
            seq: 0,
            temp_x10: 350,
            out: VecDeque::new(),
        }
    }

    /// Switches faults on or off; they take effect at once.
    pub fn set_faults(&mut self, now: Instant, faults: Faults) {
        self.faults = faults;
        if faults.over_temperature {
            self.stop(now, AbortReason::OverTemperature, GenError::OverTemperature);
        } else if faults.door_open {
            self.stop(now, AbortReason::Interlock, GenError::DoorOpen);
        }
    }

    /// The state, for tests and the simulator's display.
    pub fn state(&self) -> GenState {
        self.state
    }

    /// Handles bytes or a tick.
    pub fn handle_input(&mut self, now: Instant, input: GenInput<'_>) {
        if let GenInput::Received(bytes) = input {
            self.decoder.push(bytes);
            while let Some(d) = self.decoder.next_decoded() {
                if let Decoded::Frame(f) = d {
                    self.last_host = Some(now);
                    match Command::decode(f.kind, &f.payload) {
                        Ok(c) => self.command(now, f.seq, c),
                        Err(_) => self.reply(Reply::Nak(f.seq, NakReason::Malformed)),
                    }
                }
            }
        }
        self.advance(now);
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When to tick next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let watchdog = self.last_host.map(|t| t + self.config.watchdog).filter(|_| self.active());
        let exposure = self
            .exposure
            .map(|e| if e.started { e.starts + Duration::from_millis(u64::from(e.technique.ms)) } else { e.starts });
        [watchdog, self.ready_at, exposure].into_iter().flatten().min()
    }

    fn active(&self) -> bool {
        matches!(self.state, GenState::Preparing | GenState::Ready | GenState::Exposing)
    }

    fn interlocks(&self) -> Interlocks {
        let mut bits = Interlocks::ALL.0;
        if self.faults.door_open {
            bits &= !Interlocks::DOOR;
        }
        if self.faults.over_temperature {
            bits &= !Interlocks::TEMPERATURE;
        }
        Interlocks(bits)
    }

    fn status(&self) -> Status {
        let temp_x10 = if self.faults.over_temperature { 950 } else { self.temp_x10 };
        Status {
            state: self.state,
            interlocks: self.interlocks(),
            temp_x10,
            heat_pct: (temp_x10 / 10).clamp(0, 100) as u8,
        }
    }

    fn reply(&mut self, r: Reply) {
        if self.faults.mute {
            return;
        }
        let (kind, payload) = r.encode();
        self.out.push_back(encode(self.seq, kind, &payload));
        self.seq = self.seq.wrapping_add(1);
    }

    fn command(&mut self, now: Instant, seq: u8, c: Command) {
        match c {
            Command::Status | Command::Heartbeat => self.reply(Reply::Status(self.status())),
            Command::SetTechnique(t) => {
                if self.state != GenState::Standby {
                    self.reply(Reply::Nak(seq, NakReason::State));
                } else if self.config.check_range && t.check(&self.config.limits).is_err() {
                    self.reply(Reply::Nak(seq, NakReason::Range));
                } else {
                    self.technique = Some(t);
                    self.reply(Reply::Ack(seq));
                }
            }
            Command::Prepare => {
                if self.technique.is_none() || !matches!(self.state, GenState::Standby | GenState::Ready) {
                    self.reply(Reply::Nak(seq, NakReason::State));
                } else if !self.interlocks().all_closed() {
                    self.reply(Reply::Nak(seq, NakReason::Interlock));
                } else {
                    self.state = GenState::Preparing;
                    self.ready_at = Some(now + self.config.prepare);
                    self.reply(Reply::Ack(seq));
                }
            }
            Command::Expose { token } => {
                if self.state != GenState::Ready {
                    self.reply(Reply::Nak(seq, NakReason::State));
                } else if !self.interlocks().all_closed() {
                    self.reply(Reply::Nak(seq, NakReason::Interlock));
                } else if !self.used.insert(token) {
                    self.reply(Reply::Nak(seq, NakReason::TokenUsed));
                } else if let Some(technique) = self.technique {
                    self.state = GenState::Exposing;
                    self.exposure =
                        Some(Exposure { token, technique, starts: now + self.config.start_delay, started: false });
                    self.reply(Reply::Ack(seq));
                }
            }
            Command::Abort => {
                self.reply(Reply::Ack(seq));
                self.stop(now, AbortReason::Host, GenError::Internal);
            }
            Command::Standby => {
                self.reply(Reply::Ack(seq));
                if self.state != GenState::Exposing {
                    self.state = GenState::Standby;
                    self.ready_at = None;
                }
            }
        }
    }

    /// Stops whatever is going on: an exposure ends early and says why; a prepared tube goes
    /// back to standby. `error` is reported only for faults (not for the host's own abort).
    fn stop(&mut self, now: Instant, reason: AbortReason, error: GenError) {
        if let Some(e) = self.exposure.take() {
            let elapsed = if e.started { now.saturating_duration_since(e.starts) } else { Duration::ZERO };
            let full = u128::from(e.technique.ms).max(1);
            let frac = (elapsed.as_millis().min(full) as f64) / full as f64;
            let mas = (f64::from(e.technique.mas_x100) * frac).round() as u32;
            let d = Delivered {
                kv_x10: e.technique.kv_x10,
                mas_x100: mas,
                ms: elapsed.as_millis().min(full) as u16,
                dap_x100: dap_x100(e.technique.kv_x10, mas),
            };
            self.reply(Reply::ExposureAborted(d, reason));
        }
        let was_active = self.active();
        self.ready_at = None;
        self.state = GenState::Standby;
        if was_active && reason != AbortReason::Host {
            self.reply(Reply::Error(error));
        }
    }

    fn advance(&mut self, now: Instant) {
        if self.active() && self.last_host.is_some_and(|t| now >= t + self.config.watchdog) {
            self.stop(now, AbortReason::Heartbeat, GenError::HeartbeatLost);
        }
        if let Some(at) = self.ready_at
            && now >= at
            && self.state == GenState::Preparing
        {
            self.ready_at = None;
            self.state = GenState::Ready;
            self.reply(Reply::Status(self.status()));
        }
        if let Some(mut e) = self.exposure {
            if !e.started && now >= e.starts {
                e.started = true;
                self.exposure = Some(e);
                self.reply(Reply::ExposureStarted(e.token));
            }
            let end = e.starts + Duration::from_millis(u64::from(e.technique.ms));
            if e.started && now >= end {
                self.exposure = None;
                self.state = GenState::Standby;
                let t = e.technique;
                self.temp_x10 = self.temp_x10.saturating_add((t.kv_x10 as u32 * t.mas_x100 / 20_000) as i16);
                self.reply(Reply::ExposureDone(Delivered {
                    kv_x10: t.kv_x10,
                    mas_x100: t.mas_x100,
                    ms: t.ms,
                    dap_x100: dap_x100(t.kv_x10, t.mas_x100),
                }));
            }
        }
    }
}
