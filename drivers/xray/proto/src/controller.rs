//! The host's side of the generator link: the safety controller. Exposure is a dead-man
//! control; see "The host's rules" in `PROTOCOL.md` for what must hold before `EXPOSE` is
//! sent and what sends `ABORT`.
//!
//! Contract (as str0m's): feed one input with [`Controller::handle_input`], then drain
//! [`Controller::poll_output`] until it returns [`Output::Timeout`]; call `handle_input`
//! with [`Input::Tick`] at that time (or earlier, with new input). The controller reads no
//! clock: `now` comes with every input.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{Decoded, Decoder, encode};
use crate::message::{AbortReason, Command, Delivered, GenError, GenState, NakReason, Reply, Status};
use crate::technique::{Limits, Technique, TechniqueError};

/// Timings and limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// The unit's limits.
    pub limits: Limits,
    /// How often a heartbeat goes out.
    pub heartbeat_every: Duration,
    /// No `STATUS` for this long: the heartbeat is lost.
    pub link_timeout: Duration,
    /// How long an acknowledgement may take.
    pub ack_timeout: Duration,
    /// How old a confirm may be when it fires.
    pub confirm_max_age: Duration,
    /// How old a confirm's hold signal may be.
    pub hold_timeout: Duration,
    /// This many corrupted frames ...
    pub crc_storm_count: usize,
    /// ... within this long are a storm.
    pub crc_storm_window: Duration,
    /// From `PREPARE` to `READY` at most.
    pub prepare_timeout: Duration,
    /// How long after its exposure time an exposure must have ended.
    pub exposure_grace: Duration,
    /// How often an unanswered `ABORT` is repeated.
    pub abort_repeat: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            heartbeat_every: Duration::from_millis(200),
            link_timeout: Duration::from_secs(1),
            ack_timeout: Duration::from_millis(500),
            confirm_max_age: Duration::from_secs(2),
            hold_timeout: Duration::from_millis(500),
            crc_storm_count: 3,
            crc_storm_window: Duration::from_secs(1),
            prepare_timeout: Duration::from_secs(3),
            exposure_grace: Duration::from_secs(1),
            abort_repeat: Duration::from_millis(100),
        }
    }
}

/// Something for the controller.
#[derive(Debug)]
pub enum Input<'a> {
    /// Bytes from the generator.
    Received(&'a [u8]),
    /// The operator did something.
    Operator(Operator),
    /// The serial port opened (again). Heartbeats start; nothing is armed.
    Connected,
    /// The serial port is gone.
    Disconnected,
    /// Time passed.
    Tick,
}

/// What the operator does on the touchscreen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Chooses kV, mAs and time.
    SetTechnique {
        /// kV in tenths.
        kv_x10: u16,
        /// mAs in hundredths.
        mas_x100: u32,
        /// Time in ms.
        ms: u16,
    },
    /// Arms the unit: the tube prepares.
    Arm,
    /// Disarms it.
    Disarm,
    /// Presses the confirm. Each press has a token never used before.
    ConfirmPress {
        /// The press's token.
        token: u64,
    },
    /// The confirm is still held (sent every 200 ms while it is).
    ConfirmHold {
        /// The press's token.
        token: u64,
    },
    /// The confirm was released.
    ConfirmRelease {
        /// The press's token.
        token: u64,
    },
}

/// What the controller wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes for the generator.
    Transmit(Vec<u8>),
    /// Something to show and record.
    Event(Event),
    /// Nothing more until this time (or new input).
    Timeout(Instant),
}

/// What happened, for the operator and the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The generator took the technique.
    TechniqueSet(Technique),
    /// An operator action was refused; nothing was sent for it.
    Refused {
        /// The action refused.
        action: Action,
        /// Why.
        refusal: Refusal,
    },
    /// The tube is preparing.
    Preparing,
    /// Prepared with every interlock closed: a held confirm exposes.
    Armed,
    /// Back to standby (asked, or after a fault or an exposure).
    Disarmed,
    /// The beam is on.
    ExposureStarted {
        /// The confirm's token.
        token: u64,
        /// The technique.
        technique: Technique,
    },
    /// An exposure ended as planned.
    ExposureDone {
        /// The token of the press that started it.
        token: u64,
        /// What was asked.
        technique: Technique,
        /// What the generator delivered.
        delivered: Delivered,
    },
    /// An exposure was stopped early.
    Aborted {
        /// The token of the press that started it.
        token: u64,
        /// What was asked.
        technique: Technique,
        /// What the generator reported delivering, if it could say.
        delivered: Option<Delivered>,
        /// Why.
        cause: Cause,
    },
    /// Something went wrong outside an exposure (or besides stopping it).
    Fault(Cause),
    /// The generator's latest status.
    Status(Status),
}

/// The operator action a refusal answers, so a caller can tell which of its requests it
/// concerns (a refusal of a technique or an arm is never taken for a refused exposure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Setting this technique.
    SetTechnique(Technique),
    /// Arming.
    Arm,
    /// The press with this token.
    Confirm {
        /// The press's token.
        token: u64,
    },
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The technique is outside the unit's limits.
    #[error("{0}")]
    Technique(#[from] TechniqueError),
    /// No technique has been set and acknowledged.
    #[error("set the technique (kV, mAs, time) before arming")]
    NoTechnique,
    /// Not while this is going on.
    #[error("not now: the unit is {0}")]
    Busy(&'static str),
    /// The unit is not armed.
    #[error("the unit is not armed: arm it, wait for \"ready\", then hold the confirm")]
    NotArmed,
    /// The confirm was pressed too long ago.
    #[error("the confirm was pressed more than 2 seconds ago: release it and press again")]
    ConfirmStale,
    /// The confirm is not held.
    #[error("the confirm was released: hold it for the whole exposure")]
    ConfirmReleased,
    /// This confirm already started an exposure (or was refused).
    #[error("this press of the confirm was used already: release it and press again")]
    ConfirmUsed,
    /// The generator does not answer.
    #[error("the generator does not answer: check its cable and power")]
    NoHeartbeat,
    /// An interlock is open.
    #[error("an interlock is open: {0}")]
    Interlock(String),
    /// The generator refused the command.
    #[error("the generator refused: {0}")]
    Generator(String),
}

/// Why something was stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The operator released the confirm.
    #[error("the confirm was released during the exposure")]
    Released,
    /// The confirm's hold signal stopped coming.
    #[error("the confirm's hold signal stopped (the touchscreen or its link failed)")]
    HoldLost,
    /// The operator disarmed.
    #[error("the operator disarmed the unit")]
    Disarmed,
    /// No `STATUS` for too long.
    #[error("the generator stopped answering (heartbeat lost)")]
    HeartbeatLost,
    /// Corrupted frames in a burst.
    #[error("the serial link is corrupting frames")]
    CrcStorm,
    /// An acknowledgement did not come.
    #[error("the generator did not acknowledge a command in time")]
    NoAck,
    /// The generator refused a command the controller relied on.
    #[error("the generator refused a command: {0}")]
    Nak(String),
    /// An exposure did not end in time.
    #[error("the exposure did not end in time")]
    ExposureTimeout,
    /// Preparing took too long.
    #[error("the tube did not get ready in time")]
    PrepareTimeout,
    /// An interlock opened.
    #[error("an interlock opened: {0}")]
    Interlock(String),
    /// The generator reported an error.
    #[error("the generator reported {0}")]
    Generator(GenError),
    /// The generator stopped the exposure itself.
    #[error("the generator stopped the exposure: {0}")]
    GeneratorAborted(AbortReason),
    /// The generator did something the host had not asked for.
    #[error("{0}")]
    Unexpected(String),
    /// Aborts went unconfirmed; the host fell silent so the generator's watchdog stops it.
    #[error("the generator did not confirm the abort; the host went silent so its watchdog stops the beam")]
    AbortUnconfirmed,
    /// The serial link went away.
    #[error("the serial link to the generator was lost; the generator's watchdog stops the beam within a second")]
    Disconnected,
}

/// Which guards are checked: all of them, always, except in this crate's tests, which
/// switch each off in turn to show that the property test notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Guards {
    pub(crate) armed: bool,
    pub(crate) limits: bool,
    pub(crate) heartbeat: bool,
    pub(crate) fresh: bool,
    pub(crate) held: bool,
    pub(crate) unused: bool,
}

impl Guards {
    pub(crate) const ALL: Guards =
        Guards { armed: true, limits: true, heartbeat: true, fresh: true, held: true, unused: true };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing armed.
    Standby,
    /// `PREPARE` sent at this time with this sequence number; waiting for `READY` (which
    /// counts only once the `PREPARE` is acknowledged: a `READY` sent before it is stale).
    Preparing { since: Instant, seq: u8 },
    /// `READY` with every interlock closed.
    Armed,
    /// `EXPOSE` sent at this time.
    Exposing { token: u64, technique: Technique, sent: Instant },
    /// `ABORT` sent; waiting for the generator to say the exposure ended (or, once an
    /// `ABORT` is acknowledged, for a status that is not exposing).
    Aborting { token: u64, technique: Technique, since: Instant, last_sent: Instant, acked: bool },
}

#[derive(Debug, Clone, Copy)]
struct Confirm {
    token: u64,
    pressed: Instant,
    last_hold: Instant,
    released: bool,
}

/// The safety controller. See the module docs for the call contract.
#[derive(Debug)]
pub struct Controller {
    config: Config,
    guards: Guards,
    state: State,
    connected: bool,
    decoder: Decoder,
    seq: u8,
    /// Commands waiting for an acknowledgement, by sequence number.
    unacked: BTreeMap<u8, (Command, Instant)>,
    /// The technique asked for, and whether the generator acknowledged it.
    technique: Option<(Technique, bool)>,
    last_status: Option<(Instant, Status)>,
    next_heartbeat: Option<Instant>,
    confirm: Option<Confirm>,
    used: HashSet<u64>,
    used_order: VecDeque<u64>,
    damage: VecDeque<Instant>,
    /// Why the current abort happened, kept for its record.
    abort_cause: Option<Cause>,
    out: VecDeque<Output>,
    /// The latest time an input came with.
    now: Instant,
    /// Until then nothing is sent, not even heartbeats, so the generator's watchdog trips:
    /// after the generator stopped answering, or ignored aborts.
    silent_until: Option<Instant>,
    /// The sequence number of the `SET_TECHNIQUE` waiting for its acknowledgement.
    technique_seq: Option<u8>,
}

/// How many used confirm tokens are remembered (tokens are never reused by the shells; this
/// bounds memory on a unit that runs for years).
const USED_TOKENS: usize = 4096;

impl Controller {
    /// A controller, at `now`, for a link that is not yet connected.
    pub fn new(config: Config, now: Instant) -> Controller {
        Controller {
            config,
            guards: Guards::ALL,
            state: State::Standby,
            connected: false,
            decoder: Decoder::default(),
            seq: 0,
            unacked: BTreeMap::new(),
            technique: None,
            last_status: None,
            next_heartbeat: None,
            confirm: None,
            used: HashSet::new(),
            used_order: VecDeque::new(),
            damage: VecDeque::new(),
            abort_cause: None,
            out: VecDeque::new(),
            now,
            silent_until: None,
            technique_seq: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_guards(mut self, guards: Guards) -> Controller {
        self.guards = guards;
        self
    }

    /// Whether the unit is armed (prepared, interlocks closed).
    pub fn is_armed(&self) -> bool {
        self.state == State::Armed
    }

    /// Whether the beam may be on (an exposure was sent and has not been seen to end).
    pub fn is_exposing(&self) -> bool {
        matches!(self.state, State::Exposing { .. } | State::Aborting { .. })
    }

    /// Handles one input at `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        self.now = self.now.max(now);
        match input {
            Input::Received(bytes) => {
                self.decoder.push(bytes);
                while let Some(d) = self.decoder.next_decoded() {
                    match d {
                        Decoded::Frame(f) => match Reply::decode(f.kind, &f.payload) {
                            Ok(r) => self.reply(now, r),
                            Err(_) => self.damaged(now),
                        },
                        Decoded::Damaged(_) => self.damaged(now),
                    }
                }
            }
            Input::Operator(op) => self.operator(now, op),
            Input::Connected => {
                self.connected = true;
                self.decoder = Decoder::default();
                self.next_heartbeat = Some(now);
                // Whatever an earlier session of this host left running stops now.
                self.send(now, Command::Abort);
                self.send(now, Command::Standby);
            }
            Input::Disconnected => {
                self.connected = false;
                self.next_heartbeat = None;
                self.unacked.clear();
                self.last_status = None;
                self.fail(now, Cause::Disconnected);
            }
            Input::Tick => {}
        }
        self.timers(now);
    }

    /// The next output; [`Output::Timeout`] when there is nothing else to do.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        Output::Timeout(self.next_timeout())
    }

    fn next_timeout(&self) -> Instant {
        let mut t: Vec<Instant> = Vec::new();
        t.extend(self.next_heartbeat);
        t.extend(self.silent_until);
        if let Some((at, _)) = self.last_status
            && self.active()
        {
            t.push(at + self.config.link_timeout);
        }
        t.extend(self.unacked.values().map(|(_, sent)| *sent + self.config.ack_timeout));
        match self.state {
            State::Preparing { since, .. } => t.push(since + self.config.prepare_timeout),
            State::Exposing { technique, sent, .. } => {
                t.push(sent + Duration::from_millis(u64::from(technique.ms)) + self.config.exposure_grace)
            }
            State::Aborting { last_sent, .. } => t.push(last_sent + self.config.abort_repeat),
            _ => {}
        }
        if let Some(c) = self.confirm
            && !c.released
        {
            t.push(c.last_hold + self.config.hold_timeout);
            t.push(c.pressed + self.config.confirm_max_age);
        }
        // Whatever was due by the last input has been handled (`timers` runs after each).
        // Nothing pending (not connected, say): wake in a while anyway, a harmless tick.
        t.into_iter().filter(|t| *t > self.now).min().unwrap_or(self.now + self.config.link_timeout)
    }

    fn active(&self) -> bool {
        !matches!(self.state, State::Standby)
    }

    fn send(&mut self, now: Instant, c: Command) {
        if !self.connected || self.silent_until.is_some_and(|t| now < t) {
            return;
        }
        let (kind, payload) = c.encode();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        if !matches!(c, Command::Heartbeat | Command::Status) {
            self.unacked.insert(seq, (c, now));
        }
        self.out.push_back(Output::Transmit(encode(seq, kind, &payload)));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn refuse(&mut self, action: Action, refusal: Refusal) {
        self.event(Event::Refused { action, refusal });
    }

    fn heartbeat_live(&self, now: Instant) -> bool {
        self.last_status.is_some_and(|(at, _)| now.saturating_duration_since(at) < self.config.link_timeout)
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Standby => "in standby",
            State::Preparing { .. } => "preparing",
            State::Armed => "armed",
            State::Exposing { .. } => "exposing",
            State::Aborting { .. } => "stopping an exposure",
        }
    }

    fn operator(&mut self, now: Instant, op: Operator) {
        match op {
            Operator::SetTechnique { kv_x10, mas_x100, ms } => {
                let t = Technique { kv_x10, mas_x100, ms };
                let action = Action::SetTechnique(t);
                if self.state != State::Standby {
                    let busy = self.state_name();
                    return self.refuse(action, Refusal::Busy(busy));
                }
                if self.guards.limits
                    && let Err(e) = t.check(&self.config.limits)
                {
                    return self.refuse(action, Refusal::Technique(e));
                }
                if !self.heartbeat_live(now) {
                    return self.refuse(action, Refusal::NoHeartbeat);
                }
                self.technique = Some((t, false));
                self.technique_seq = Some(self.seq);
                self.send(now, Command::SetTechnique(t));
            }
            Operator::Arm => {
                if self.state != State::Standby {
                    let busy = self.state_name();
                    return self.refuse(Action::Arm, Refusal::Busy(busy));
                }
                if !matches!(self.technique, Some((_, true))) {
                    return self.refuse(Action::Arm, Refusal::NoTechnique);
                }
                if !self.heartbeat_live(now) {
                    return self.refuse(Action::Arm, Refusal::NoHeartbeat);
                }
                if let Some((_, s)) = self.last_status
                    && !s.interlocks.all_closed()
                {
                    return self.refuse(Action::Arm, Refusal::Interlock(s.interlocks.open().join(", ")));
                }
                let seq = self.seq;
                self.send(now, Command::Prepare);
                self.state = State::Preparing { since: now, seq };
                self.event(Event::Preparing);
            }
            Operator::Disarm => match self.state {
                State::Exposing { .. } => self.abort(now, Cause::Disarmed),
                State::Preparing { .. } | State::Armed => {
                    self.send(now, Command::Standby);
                    self.enter_standby();
                }
                _ => {}
            },
            Operator::ConfirmPress { token } => {
                if self.is_exposing() {
                    // The exposure stays tied to the press that started it (its release
                    // stops it); another press is spent and refused.
                    self.mark_used(token);
                    let busy = self.state_name();
                    return self.refuse(Action::Confirm { token }, Refusal::Busy(busy));
                }
                // A new press replaces any earlier one.
                self.confirm = Some(Confirm { token, pressed: now, last_hold: now, released: false });
                match self.state {
                    // Holding through preparation is how a two-stage hand switch works: it
                    // fires when the tube is ready, if the press is still fresh and held.
                    State::Preparing { .. } if self.guards.armed => {}
                    _ => self.try_fire(now, true),
                }
            }
            Operator::ConfirmHold { token } => {
                if let Some(c) = self.confirm.as_mut()
                    && c.token == token
                    && !c.released
                {
                    c.last_hold = now;
                }
            }
            Operator::ConfirmRelease { token } => {
                if let Some(c) = self.confirm.as_mut()
                    && c.token == token
                {
                    c.released = true;
                    if self.guards.held
                        && let State::Exposing { token: exposing, .. } = self.state
                        && exposing == token
                    {
                        self.abort(now, Cause::Released);
                    }
                }
            }
        }
    }

    /// Sends `EXPOSE` if every guard holds; otherwise, when `report`, says why not (and the
    /// press is spent: it can never fire later).
    fn try_fire(&mut self, now: Instant, report: bool) {
        let Some(c) = self.confirm else { return };
        let refusal = self.guard_refusal(now, &c);
        match refusal {
            None => {
                let Some((technique, _)) = self.technique else { return };
                self.mark_used(c.token);
                self.state = State::Exposing { token: c.token, technique, sent: now };
                self.send(now, Command::Expose { token: c.token });
            }
            Some(r) => {
                if report {
                    self.mark_used(c.token);
                    self.confirm = None;
                    self.refuse(Action::Confirm { token: c.token }, r);
                }
            }
        }
    }

    fn guard_refusal(&self, now: Instant, c: &Confirm) -> Option<Refusal> {
        let g = self.guards;
        if g.armed && self.state != State::Armed {
            return Some(Refusal::NotArmed);
        }
        match self.technique {
            None => return Some(Refusal::NoTechnique),
            Some((t, _)) => {
                if g.limits
                    && let Err(e) = t.check(&self.config.limits)
                {
                    return Some(Refusal::Technique(e));
                }
            }
        }
        if g.heartbeat && !self.heartbeat_live(now) {
            return Some(Refusal::NoHeartbeat);
        }
        if g.fresh && now.saturating_duration_since(c.pressed) > self.config.confirm_max_age {
            return Some(Refusal::ConfirmStale);
        }
        if g.held && (c.released || now.saturating_duration_since(c.last_hold) >= self.config.hold_timeout) {
            return Some(Refusal::ConfirmReleased);
        }
        if g.unused && self.used.contains(&c.token) {
            return Some(Refusal::ConfirmUsed);
        }
        None
    }

    fn mark_used(&mut self, token: u64) {
        if self.used.insert(token) {
            self.used_order.push_back(token);
            if self.used_order.len() > USED_TOKENS
                && let Some(old) = self.used_order.pop_front()
            {
                self.used.remove(&old);
            }
        }
    }

    fn reply(&mut self, now: Instant, r: Reply) {
        match r {
            Reply::Ack(seq) => {
                let acked = self.unacked.remove(&seq).map(|(c, _)| c);
                if self.technique_seq == Some(seq)
                    && let Some((t, done)) = self.technique.as_mut()
                {
                    *done = true;
                    let t = *t;
                    self.technique_seq = None;
                    self.event(Event::TechniqueSet(t));
                }
                if acked == Some(Command::Abort)
                    && let State::Aborting { token, technique, since, last_sent, .. } = self.state
                {
                    self.state = State::Aborting { token, technique, since, last_sent, acked: true };
                }
            }
            Reply::Nak(seq, reason) => {
                let Some((cmd, _)) = self.unacked.remove(&seq) else { return };
                let why = nak_text(reason);
                match cmd {
                    Command::SetTechnique(t) => {
                        self.technique = None;
                        self.technique_seq = None;
                        self.refuse(Action::SetTechnique(t), Refusal::Generator(why));
                    }
                    Command::Expose { .. } => {
                        if let State::Exposing { token, technique, .. } = self.state {
                            // Refused: no beam. Recorded with its technique and no dose.
                            let none = Delivered { kv_x10: technique.kv_x10, ..Delivered::default() };
                            self.event(Event::Aborted {
                                token,
                                technique,
                                delivered: Some(none),
                                cause: Cause::Nak(why),
                            });
                            self.send(now, Command::Standby);
                            self.enter_standby();
                        }
                    }
                    Command::Prepare => self.fail(now, Cause::Nak(why)),
                    _ => {}
                }
            }
            Reply::Status(s) => {
                self.last_status = Some((now, s));
                self.event(Event::Status(s));
                let closed = s.interlocks.all_closed();
                match self.state {
                    State::Preparing { seq, .. }
                        if s.state == GenState::Ready && closed && !self.unacked.contains_key(&seq) =>
                    {
                        self.state = State::Armed;
                        self.event(Event::Armed);
                        // A confirm held through preparation fires now, if it still may.
                        self.try_fire(now, true);
                    }
                    State::Preparing { .. } | State::Armed | State::Exposing { .. } if !closed => {
                        self.fail(now, Cause::Interlock(s.interlocks.open().join(", ")));
                    }
                    State::Armed if s.state != GenState::Ready => {
                        self.fail(now, Cause::Nak("the generator left ready by itself".into()));
                    }
                    State::Aborting { acked: true, .. } if s.state != GenState::Exposing => {
                        // The abort was taken and the beam is off, but the generator's report
                        // of the dose was lost: recorded as unknown.
                        self.finish_abort_unanswered(Cause::NoAck);
                    }
                    State::Standby if s.state == GenState::Exposing => {
                        self.send(now, Command::Abort);
                        self.event(Event::Fault(Cause::Unexpected("the generator was exposing unasked".into())));
                    }
                    State::Standby if matches!(s.state, GenState::Ready | GenState::Preparing) => {
                        self.send(now, Command::Standby);
                    }
                    _ => {}
                }
            }
            Reply::ExposureStarted(token) => {
                if let State::Exposing { token: t, technique, .. } = self.state
                    && t == token
                {
                    self.event(Event::ExposureStarted { token, technique });
                }
            }
            Reply::ExposureDone(delivered) => match self.state {
                State::Exposing { token, technique, .. } => {
                    self.event(Event::ExposureDone { token, technique, delivered });
                    self.enter_standby();
                }
                State::Aborting { token, technique, .. } => {
                    // It ended before the abort reached it: still recorded as stopped.
                    let cause = self.abort_cause.take().unwrap_or(Cause::Disarmed);
                    self.event(Event::Aborted { token, technique, delivered: Some(delivered), cause });
                    self.enter_standby();
                }
                _ => {}
            },
            Reply::ExposureAborted(delivered, reason) => match self.state {
                State::Exposing { token, technique, .. } => {
                    self.event(Event::Aborted {
                        token,
                        technique,
                        delivered: Some(delivered),
                        cause: Cause::GeneratorAborted(reason),
                    });
                    self.enter_standby();
                }
                State::Aborting { token, technique, .. } => {
                    let cause = self.abort_cause.take().unwrap_or(Cause::GeneratorAborted(reason));
                    self.event(Event::Aborted { token, technique, delivered: Some(delivered), cause });
                    self.enter_standby();
                }
                _ => {}
            },
            Reply::Error(e) => {
                if self.active() {
                    self.fail(now, Cause::Generator(e));
                } else {
                    self.event(Event::Fault(Cause::Generator(e)));
                }
            }
        }
    }

    fn damaged(&mut self, now: Instant) {
        self.damage.push_back(now);
        while self.damage.front().is_some_and(|t| now.saturating_duration_since(*t) > self.config.crc_storm_window) {
            self.damage.pop_front();
        }
        if self.damage.len() >= self.config.crc_storm_count {
            self.damage.clear();
            if self.active() {
                self.fail(now, Cause::CrcStorm);
            } else {
                self.event(Event::Fault(Cause::CrcStorm));
            }
        }
    }

    /// Stops the beam if it may be on, and leaves the unit disarmed.
    fn fail(&mut self, now: Instant, cause: Cause) {
        match self.state {
            State::Exposing { .. } => self.abort(now, cause),
            State::Aborting { .. } => match cause {
                Cause::Disconnected => self.finish_abort_unanswered(cause),
                Cause::HeartbeatLost => {
                    self.go_silent(now);
                    self.finish_abort_unanswered(cause);
                }
                _ => {}
            },
            State::Preparing { .. } | State::Armed => {
                self.send(now, Command::Standby);
                self.event(Event::Fault(cause));
                self.enter_standby();
            }
            State::Standby => self.event(Event::Fault(cause)),
        }
    }

    fn abort(&mut self, now: Instant, cause: Cause) {
        let (token, technique) = match self.state {
            State::Exposing { token, technique, .. } | State::Aborting { token, technique, .. } => (token, technique),
            _ => return,
        };
        self.send(now, Command::Abort);
        if !self.connected {
            // Nothing can be sent: the generator's watchdog stops the beam within a second.
            self.finish_abort_unanswered(cause);
            return;
        }
        if cause == Cause::HeartbeatLost {
            // The generator cannot be heard, and may not hear us either: one abort went out;
            // then silence, so its watchdog stops the beam even if only our side works.
            self.go_silent(now);
            self.finish_abort_unanswered(cause);
            return;
        }
        self.abort_cause = Some(cause);
        self.state = State::Aborting { token, technique, since: now, last_sent: now, acked: false };
    }

    fn finish_abort_unanswered(&mut self, cause: Cause) {
        let (token, technique) = match self.state {
            State::Exposing { token, technique, .. } | State::Aborting { token, technique, .. } => (token, technique),
            _ => return,
        };
        let cause = self.abort_cause.take().unwrap_or(cause);
        self.event(Event::Aborted { token, technique, delivered: None, cause });
        self.enter_standby();
    }

    /// Stops sending anything for the generator's watchdog time and a margin.
    fn go_silent(&mut self, now: Instant) {
        self.silent_until = Some(now + self.config.link_timeout + self.config.link_timeout / 2);
        self.unacked.clear();
    }

    fn enter_standby(&mut self) {
        // Acknowledgements still owed for this attempt no longer mean anything.
        self.unacked.retain(|_, (c, _)| !matches!(c, Command::Prepare | Command::Expose { .. }));
        self.state = State::Standby;
        self.confirm = None;
        self.abort_cause = None;
        self.event(Event::Disarmed);
    }

    fn timers(&mut self, now: Instant) {
        if self.silent_until.is_some_and(|t| now >= t) {
            self.silent_until = None;
            if self.connected {
                self.next_heartbeat = Some(now);
            }
        }
        if let Some(at) = self.next_heartbeat
            && now >= at
        {
            self.send(now, Command::Heartbeat);
            self.next_heartbeat = Some(now + self.config.heartbeat_every);
        }
        if self.guards.heartbeat && self.active() && !self.heartbeat_live(now) {
            self.fail(now, Cause::HeartbeatLost);
        }
        let late: Vec<(u8, Command)> = self
            .unacked
            .iter()
            .filter(|(_, (_, sent))| now.saturating_duration_since(*sent) >= self.config.ack_timeout)
            .map(|(s, (c, _))| (*s, *c))
            .collect();
        for (seq, cmd) in late {
            self.unacked.remove(&seq);
            match cmd {
                Command::Prepare | Command::Expose { .. } => self.fail(now, Cause::NoAck),
                Command::SetTechnique(t) => {
                    self.technique = None;
                    self.refuse(Action::SetTechnique(t), Refusal::NoHeartbeat);
                }
                // An unanswered abort is repeated below; standby is best effort.
                _ => {}
            }
        }
        match self.state {
            State::Preparing { since, .. } if now.saturating_duration_since(since) >= self.config.prepare_timeout => {
                self.fail(now, Cause::PrepareTimeout);
            }
            State::Exposing { technique, sent, .. }
                if now.saturating_duration_since(sent)
                    >= Duration::from_millis(u64::from(technique.ms)) + self.config.exposure_grace =>
            {
                self.abort(now, Cause::ExposureTimeout);
            }
            State::Aborting { since, .. } if now.saturating_duration_since(since) >= self.config.link_timeout => {
                self.go_silent(now);
                self.finish_abort_unanswered(Cause::AbortUnconfirmed);
                self.event(Event::Fault(Cause::AbortUnconfirmed));
            }
            State::Aborting { token, technique, since, last_sent, acked }
                if now.saturating_duration_since(last_sent) >= self.config.abort_repeat =>
            {
                self.send(now, Command::Abort);
                self.state = State::Aborting { token, technique, since, last_sent: now, acked };
            }
            _ => {}
        }
        if let (Some(c), State::Exposing { token, .. }) = (self.confirm, self.state)
            && c.token == token
            && self.guards.held
            && !c.released
            && now.saturating_duration_since(c.last_hold) >= self.config.hold_timeout
        {
            self.abort(now, Cause::HoldLost);
        }
    }
}

fn nak_text(r: NakReason) -> String {
    match r {
        NakReason::Malformed => "it did not understand the command".into(),
        NakReason::State => "not allowed in its current state".into(),
        NakReason::Range => "the technique is outside its range".into(),
        NakReason::Interlock => "an interlock is open".into(),
        NakReason::TokenUsed => "that confirm was used already".into(),
        NakReason::Other(c) => format!("reason code {c}"),
    }
}
