//! The X-ray service: the touchscreen's hands on the unit, and the record of every attempt.
//!
//! It never decides to fire. It passes the operator's actions to the safety controller in
//! `xray-proto` (through `xray-serial`'s link) and turns what the controller reports into
//! the case record: each exposure, refusal and abort becomes a procedure with its technique
//! and dose-area product (`Edit::RecordExposure`), audited like any edit; a completed
//! exposure's frame becomes a preview and a DICOM object, stored as encrypted blobs and
//! attached in the same change, so the case never shows half an image.
//!
//! What it meant to do is journalled (`journal.rs`) before the confirm reaches the
//! controller, so an agent killed mid-exposure records the abort when it starts again.

pub mod detector;
pub mod images;
mod journal;
pub mod presets;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use case_model::edit::{AttachmentInput, ExposureInput, ExposureOutcome};
use case_model::{CaseId, CaseView, Edit, EditContext, Timestamp, UserId};
use case_store::Store;
use imaging::{BodyPart, Laterality, Projection};
use serde::Serialize;
use xray_proto::controller::{Action, Cause, Config as ControllerConfig, Event, Operator, Refusal};
use xray_proto::message::{Delivered, GenState, Status};
use xray_proto::technique::{Limits, Technique};
use xray_serial::{GeneratorLink, OperatorHandle};

use self::detector::Detector;
use self::journal::Journal;

/// What the touchscreen sees of the unit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XrayStatus {
    /// Whether this van has an X-ray unit configured.
    pub configured: bool,
    /// The generator's last reported state: `standby`, `preparing`, `ready`, `exposing`,
    /// `fault`, or `unknown` before it has answered.
    pub generator: &'static str,
    /// Armed: a held confirm exposes.
    pub armed: bool,
    /// The beam is on.
    pub exposing: bool,
    /// Interlocks, `true` when closed (safe).
    pub interlocks: Option<InterlockView>,
    /// Tube temperature, °C.
    pub tube_temperature_c: Option<f64>,
    /// What the next exposure is for and with.
    pub session: Option<SessionView>,
    /// Whether the generator has taken the session's technique.
    pub technique_set: bool,
    /// The latest refusal, abort or fault, in words, until the next action.
    pub message: Option<String>,
    /// The latest attempt as recorded in its case.
    pub last_exposure: Option<LastExposure>,
    /// Counts every change, so a client can wait for the next.
    pub generation: u64,
}

/// Interlocks.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InterlockView {
    /// The door is closed.
    pub door: bool,
    /// The collimator is in place.
    pub collimator: bool,
    /// The detector is ready.
    pub detector: bool,
    /// The tube is cool enough.
    pub temperature: bool,
}

/// The session: the case, the view and the technique.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// The case the images go to.
    pub case_id: CaseId,
    /// Body Part Examined term.
    pub body_part: &'static str,
    /// `AP`, `PA`, `LAT`, `OBL`.
    pub view: &'static str,
    /// `L`, `R`, `U`.
    pub laterality: &'static str,
    /// kV.
    pub kv: f64,
    /// mAs.
    pub mas: f64,
    /// ms.
    pub ms: u16,
}

/// The latest attempt.
#[derive(Debug, Clone, Serialize)]
pub struct LastExposure {
    /// Its id in the case's procedures.
    pub exposure_id: String,
    /// Its case.
    pub case_id: String,
    /// `exposed`, `aborted` or `refused`.
    pub outcome: &'static str,
    /// Dose-area product, mGy·cm², when known.
    pub dap_mgy_cm2: Option<f64>,
    /// Why it was refused or stopped.
    pub reason: Option<String>,
    /// The preview's blob.
    pub preview_sha256: Option<String>,
    /// The DICOM object's blob.
    pub dicom_sha256: Option<String>,
}

/// What the operator asks to set up.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The case.
    pub case_id: CaseId,
    /// `HAND`, `CHEST`...
    pub body_part: String,
    /// `PA`, `AP`, `LAT`, `OBL`.
    pub view: String,
    /// `L`, `R`, `U`; defaults to `U` for unpaired parts.
    pub laterality: Option<String>,
    /// kV.
    pub kv: f64,
    /// mAs.
    pub mas: f64,
    /// ms.
    pub ms: f64,
}

/// What went wrong with an operator's request.
#[derive(Debug, thiserror::Error)]
pub enum XrayError {
    /// No X-ray unit is configured.
    #[error("this van has no X-ray unit configured ([xray] in the agent's config)")]
    NotConfigured,
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The unit or the controller refused; nothing was sent for it.
    #[error("{0}")]
    Refused(String),
    /// The case could not be read or written.
    #[error(transparent)]
    Store(#[from] case_store::StoreError),
}

#[derive(Debug, Clone, PartialEq)]
struct Session {
    case_id: CaseId,
    user: UserId,
    body_part: BodyPart,
    projection: Projection,
    laterality: Laterality,
    kv_x10: u16,
    mas_x100: u32,
    ms: u16,
}

impl Session {
    /// A new attempt with this session, by `user` at `at`, fired by the press `token` into
    /// detector frame `frame_id`.
    fn attempt(&self, user: &UserId, at: Timestamp, token: u64, frame_id: u32) -> journal::Entry {
        journal::Entry {
            exposure_id: random_uuid().to_string(),
            case_id: self.case_id.to_string(),
            user: user.as_str().to_owned(),
            body_part: self.body_part.codes().0.to_owned(),
            view: self.projection.as_str().to_owned(),
            laterality: self.laterality.as_str().to_owned(),
            kv_x10: self.kv_x10,
            mas_x100: self.mas_x100,
            ms: self.ms,
            pressed_at: at.unix_millis(),
            token,
            frame_id,
            delivered: None,
        }
    }

    fn technique(&self) -> Technique {
        Technique { kv_x10: self.kv_x10, mas_x100: self.mas_x100, ms: self.ms }
    }

    fn view(&self) -> SessionView {
        SessionView {
            case_id: self.case_id,
            body_part: self.body_part.codes().0,
            view: self.projection.as_str(),
            laterality: self.laterality.as_str(),
            kv: f64::from(self.kv_x10) / 10.0,
            mas: f64::from(self.mas_x100) / 100.0,
            ms: self.ms,
        }
    }
}

/// The operator action waiting for the controller's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Technique,
    Arm,
    Press,
}

/// An attempt in flight: in the journal, not yet in its case.
#[derive(Debug, Clone)]
struct Pending {
    entry: journal::Entry,
    started: bool,
    since: Instant,
}

struct Inner {
    ops: OperatorHandle,
    limits: Limits,
    store: Store,
    journal: Journal,
    detector: Mutex<Box<dyn Detector>>,
    state: Mutex<State>,
    status: tokio::sync::watch::Sender<XrayStatus>,
    stop: AtomicBool,
    crash: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// The session whose technique the generator took: a press exposes with it.
    session: Option<Session>,
    /// A session asked for, until the generator takes (or refuses) its technique.
    proposed: Option<Session>,
    awaiting: Option<Awaiting>,
    /// The controller's answer to `awaiting`: taken, or refused with a message.
    answer: Option<Result<(), String>>,
    /// The attempt in flight. It stays until its outcome is in the case: no new press, arm
    /// or session meanwhile.
    pending: Option<Pending>,
    /// The detector frame armed last.
    frame_id: u32,
}

/// The service. Cheap to clone; the unit is driven while any clone lives.
#[derive(Clone)]
pub struct XrayHandle {
    inner: Option<Arc<Inner>>,
    thread: Option<Arc<Mutex<Option<JoinHandle<()>>>>>,
}

impl std::fmt::Debug for XrayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrayHandle").field("configured", &self.inner.is_some()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ts() -> Timestamp {
    crate::api::now()
}

/// How long setting a technique or arming waits for the controller's first answer.
const ANSWER_WAIT: Duration = Duration::from_millis(1500);
/// How long a press waits before its token goes back: refusals come at once, and the
/// first hold must follow within the controller's hold timeout (500 ms).
const PRESS_WAIT: Duration = Duration::from_millis(150);
/// An attempt with no outcome after this long is recorded as stopped with its dose unknown
/// (the controller always reports one; this is the belt to its braces).
const OUTCOME_DEADLINE: Duration = Duration::from_secs(10);

impl XrayHandle {
    /// No unit.
    pub fn not_configured() -> XrayHandle {
        XrayHandle { inner: None, thread: None }
    }

    /// Starts driving the generator on `serial_port` with `detector`, recording into
    /// `store`. An attempt left in the journal by an agent that was stopped is recorded
    /// first.
    pub fn start(store: Store, serial_port: &str, detector: Box<dyn Detector>) -> anyhow::Result<XrayHandle> {
        let config = ControllerConfig::default();
        let limits = config.limits;
        let link = GeneratorLink::open(serial_port, config)?;
        let (status, _) =
            tokio::sync::watch::channel(XrayStatus { configured: true, generator: "unknown", ..XrayStatus::default() });
        let inner = Arc::new(Inner {
            ops: link.operator_handle(),
            limits,
            journal: Journal::new(store.data_dir()),
            store,
            detector: Mutex::new(detector),
            state: Mutex::new(State::default()),
            status,
            stop: AtomicBool::new(false),
            crash: AtomicBool::new(false),
        });
        inner.recover();
        let thread = {
            let inner = inner.clone();
            std::thread::Builder::new().name("xray-service".into()).spawn(move || inner.run(link))?
        };
        Ok(XrayHandle { inner: Some(inner), thread: Some(Arc::new(Mutex::new(Some(thread)))) })
    }

    fn inner(&self) -> Result<&Arc<Inner>, XrayError> {
        self.inner.as_ref().ok_or(XrayError::NotConfigured)
    }

    /// The unit's status now.
    pub fn status(&self) -> XrayStatus {
        match &self.inner {
            Some(i) => i.status.borrow().clone(),
            None => XrayStatus { generator: "unknown", ..XrayStatus::default() },
        }
    }

    /// Sets the case, view and technique for the next exposure. A technique outside the
    /// unit's limits is refused before anything is sent, and the refusal is recorded. The
    /// session takes effect when the generator takes its technique; until then, and after
    /// a refusal, no press exposes.
    pub fn set_session(&self, ctx: &EditContext, req: SessionRequest) -> Result<XrayStatus, XrayError> {
        let inner = self.inner()?;
        let body_part = BodyPart::parse(&req.body_part).ok_or_else(|| {
            XrayError::Invalid(format!(
                "body_part {:?} is not one of: {}",
                req.body_part,
                BodyPart::ALL.iter().map(|b| b.codes().0).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let projection = Projection::parse(&req.view)
            .ok_or_else(|| XrayError::Invalid(format!("view {:?} is not one of: AP, PA, LAT, OBL", req.view)))?;
        let which = || format!("say which {} (laterality L or R)", body_part.codes().2.to_lowercase());
        let laterality = match (&req.laterality, body_part.paired()) {
            (Some(l), _) => Laterality::parse(l)
                .ok_or_else(|| XrayError::Invalid(format!("laterality {l:?} is not one of: L, R, U")))?,
            (None, false) => Laterality::Unpaired,
            (None, true) => return Err(XrayError::Invalid(which())),
        };
        if body_part.paired() == (laterality == Laterality::Unpaired) {
            return Err(XrayError::Invalid(if body_part.paired() {
                which()
            } else {
                format!("the {} has no side: laterality must be U", body_part.codes().2.to_lowercase())
            }));
        }
        for (name, v) in [("kv", req.kv), ("mas", req.mas), ("ms", req.ms)] {
            if !v.is_finite() || v < 0.0 {
                return Err(XrayError::Invalid(format!("{name} must be a number of at least 0; got {v}")));
            }
        }
        // The case must exist and be open: its record is where the attempt goes.
        let case = inner.store.read_case(ctx, req.case_id)?;
        if let Some(closed) = case.closed_at {
            return Err(XrayError::Invalid(format!(
                "case {} was closed at {closed}; open a new case for new images",
                req.case_id
            )));
        }
        let session = Session {
            case_id: req.case_id,
            user: ctx.user.clone(),
            body_part,
            projection,
            laterality,
            kv_x10: (req.kv * 10.0).round().min(f64::from(u16::MAX)) as u16,
            mas_x100: (req.mas * 100.0).round().min(f64::from(u32::MAX)) as u32,
            ms: req.ms.round().min(f64::from(u16::MAX)) as u16,
        };
        {
            let mut st = lock(&inner.state);
            let status = inner.status.borrow().clone();
            if st.pending.is_some() || status.exposing {
                return Err(XrayError::Refused("not now: an exposure is in progress".into()));
            }
            if status.armed || status.generator == "preparing" || status.generator == "ready" {
                return Err(XrayError::Refused("disarm the unit before changing the case, view or technique".into()));
            }
            // The old session ends now: nothing exposes until the new one is taken.
            st.session = None;
            st.proposed = Some(session.clone());
        }
        inner.update(|s| {
            s.session = Some(session.view());
            s.technique_set = false;
            s.message = None;
        });
        // Checked here first so the refusal has a message at once and is recorded with
        // the technique asked; the controller checks again and is what decides.
        if let Err(e) = Technique::parse(session.kv_x10, session.mas_x100, session.ms, &inner.limits) {
            let message = e.to_string();
            lock(&inner.state).proposed = None;
            inner.record_refusal(&session, &message);
            inner.update(|s| s.message = Some(message.clone()));
            return Err(XrayError::Invalid(format!(
                "{message}; nothing was sent to the unit, and the refusal is in the case record"
            )));
        }
        inner.act(
            Awaiting::Technique,
            Operator::SetTechnique { kv_x10: session.kv_x10, mas_x100: session.mas_x100, ms: session.ms },
            ANSWER_WAIT,
        )
    }

    /// Arms the unit (the tube prepares; `armed` turns true when it is ready).
    pub fn arm(&self) -> Result<XrayStatus, XrayError> {
        let inner = self.inner()?;
        let id = {
            let mut st = lock(&inner.state);
            if st.pending.is_some() || inner.status.borrow().exposing {
                return Err(XrayError::Refused("not now: an exposure is in progress".into()));
            }
            if st.session.is_none() {
                return Err(XrayError::Refused(
                    "choose the case, view and technique (and let the unit take them) before arming".into(),
                ));
            }
            st.frame_id = st.frame_id.wrapping_add(1);
            st.frame_id
        };
        lock(&inner.detector).arm(id).map_err(|e| XrayError::Refused(format!("the detector cannot be armed: {e}")))?;
        inner.act(Awaiting::Arm, Operator::Arm, ANSWER_WAIT)
    }

    /// Disarms the unit.
    pub fn disarm(&self) -> Result<XrayStatus, XrayError> {
        let inner = self.inner()?;
        inner.ops.send(Operator::Disarm);
        Ok(inner.status.borrow().clone())
    }

    /// Presses the confirm. Returns the press's token (send it with each hold and the
    /// release) at once, with the attempt's id. The attempt is journalled before the press
    /// reaches the controller.
    pub fn press(&self, ctx: &EditContext) -> Result<(u64, String, XrayStatus), XrayError> {
        let inner = self.inner()?;
        // An attempt a previous run could not record goes into its case first; while it
        // cannot, nothing new is journalled over it.
        if lock(&inner.state).pending.is_none() && !matches!(inner.journal.read(), Ok(None)) {
            inner.recover();
            let left = inner.journal.read();
            if let Ok(Some(left)) = &left {
                return Err(XrayError::Refused(format!(
                    "the previous exposure ({}) is not yet in its case record, so nothing was sent; \
                     see the agent's log, and try again",
                    left.exposure_id
                )));
            }
            if let Err(e) = left {
                return Err(XrayError::Refused(format!(
                    "the X-ray journal cannot be read ({e}), so nothing was sent; see the agent's log"
                )));
            }
        }
        let token = loop {
            let t: u64 = rand::random();
            if t != 0 {
                break t;
            }
        };
        let entry = {
            let mut st = lock(&inner.state);
            if st.pending.is_some() {
                return Err(XrayError::Refused("not now: an exposure is in progress".into()));
            }
            let session = st.session.clone().ok_or_else(|| {
                XrayError::Refused(
                    "choose the case, view and technique (and let the unit take them) before exposing".into(),
                )
            })?;
            let entry = session.attempt(&ctx.user, ctx.now, token, st.frame_id);
            inner.journal.write(&entry).map_err(|e| {
                XrayError::Refused(format!("the exposure could not be journalled ({e}); nothing was sent"))
            })?;
            st.pending = Some(Pending { entry: entry.clone(), started: false, since: Instant::now() });
            entry
        };
        let status = inner.act(Awaiting::Press, Operator::ConfirmPress { token }, PRESS_WAIT)?;
        Ok((token, entry.exposure_id, status))
    }

    /// The confirm is still held.
    pub fn hold(&self, token: u64) -> Result<(), XrayError> {
        self.inner()?.ops.send(Operator::ConfirmHold { token });
        Ok(())
    }

    /// The confirm was released.
    pub fn release(&self, token: u64) -> Result<(), XrayError> {
        self.inner()?.ops.send(Operator::ConfirmRelease { token });
        Ok(())
    }

    /// Stops driving the unit: disarms it, records what is still coming, and waits for the
    /// service's thread.
    pub fn stop(&self) {
        if let (Some(inner), Some(thread)) = (&self.inner, &self.thread) {
            inner.stop.store(true, Ordering::Relaxed);
            if let Some(t) = lock(thread).take() {
                let _ = t.join();
            }
        }
    }

    /// Stops as a crashed agent would: nothing more is sent, not even a disarm, and the
    /// journal is left as it is. For tests.
    pub fn crash(&self) {
        if let Some(inner) = &self.inner {
            inner.crash.store(true, Ordering::Relaxed);
        }
        self.stop();
    }
}

impl Inner {
    /// Sends an operator action and waits up to `wait` for the controller's first answer.
    fn act(&self, what: Awaiting, op: Operator, wait: Duration) -> Result<XrayStatus, XrayError> {
        {
            let mut st = lock(&self.state);
            st.awaiting = Some(what);
            st.answer = None;
        }
        self.ops.send(op);
        let deadline = Instant::now() + wait;
        loop {
            if let Some(answer) = lock(&self.state).answer.take() {
                return match answer {
                    Ok(()) => Ok(self.status.borrow().clone()),
                    Err(message) => Err(XrayError::Refused(message)),
                };
            }
            if Instant::now() >= deadline {
                // No answer yet (the tube still preparing, a slow generator): the status
                // tells the rest.
                return Ok(self.status.borrow().clone());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The service's loop: the controller's events, in order, until stopped.
    fn run(self: Arc<Self>, link: GeneratorLink) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                if self.crash.load(Ordering::Relaxed) {
                    link.crash();
                } else {
                    self.drain(&link);
                    drop(link);
                }
                return;
            }
            match link.events().recv_timeout(Duration::from_millis(50)) {
                Ok(event) => self.on_event(event),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.check_deadline(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// A clean stop: disarm, and record the outcome of an attempt still in flight.
    fn drain(&self, link: &GeneratorLink) {
        link.operator(Operator::Disarm);
        let end = Instant::now() + Duration::from_secs(3);
        let mut quiet_since = Instant::now();
        while Instant::now() < end {
            match link.events().recv_timeout(Duration::from_millis(50)) {
                Ok(event) => {
                    self.on_event(event);
                    quiet_since = Instant::now();
                }
                Err(_) if lock(&self.state).pending.is_none() && quiet_since.elapsed() > Duration::from_millis(200) => {
                    return;
                }
                Err(_) => {}
            }
        }
    }

    fn on_event(&self, event: Event) {
        match event {
            Event::Status(s) => {
                self.status.send_if_modified(|st| apply_status(st, &s));
            }
            Event::TechniqueSet(t) => self.on_technique_set(t),
            Event::Refused { action, refusal } => self.on_refusal(action, &refusal),
            Event::Preparing => {
                self.answer(Awaiting::Arm, Ok(()));
                self.update(|s| {
                    s.generator = "preparing";
                    s.message = None;
                });
            }
            Event::Armed => self.update(|s| s.armed = true),
            Event::Disarmed => self.update(|s| s.armed = false),
            Event::ExposureStarted { token, .. } => {
                let ours = match lock(&self.state).pending.as_mut() {
                    Some(p) if p.entry.token == token => {
                        p.started = true;
                        true
                    }
                    _ => false,
                };
                if ours {
                    self.answer(Awaiting::Press, Ok(()));
                }
                lock(&self.detector).exposed();
                self.update(|s| {
                    s.exposing = true;
                    s.message = None;
                });
            }
            Event::ExposureDone { token, delivered, .. } => {
                self.update(|s| s.exposing = false);
                self.on_done(token, delivered);
            }
            Event::Aborted { token, delivered, cause, .. } => {
                let message = cause.to_string();
                self.update(|s| {
                    s.exposing = false;
                    s.message = Some(message.clone());
                });
                self.on_aborted(token, delivered, &cause);
                self.answer(Awaiting::Press, Err(message));
            }
            Event::Fault(cause) => {
                let message = cause.to_string();
                tracing::warn!(fault = %message, "X-ray unit fault");
                self.update(|s| s.message = Some(message));
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut XrayStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.generation += 1;
        });
    }

    /// Answers the request waiting for `what`, if one is.
    fn answer(&self, what: Awaiting, answer: Result<(), String>) {
        let mut st = lock(&self.state);
        if st.awaiting == Some(what) {
            st.awaiting = None;
            st.answer = Some(answer);
        }
    }

    /// The generator took a technique: the proposed session with that technique starts.
    fn on_technique_set(&self, t: Technique) {
        let taken = {
            let mut st = lock(&self.state);
            match st.proposed.take() {
                Some(p) if p.technique() == t => {
                    st.session = Some(p);
                    true
                }
                other => {
                    // Not the technique asked for: no session exposes with it.
                    st.proposed = other;
                    st.session = None;
                    false
                }
            }
        };
        self.update(|s| {
            s.technique_set = taken;
            if taken {
                s.message = None;
            }
        });
        self.answer(Awaiting::Technique, Ok(()));
    }

    fn on_refusal(&self, action: Action, refusal: &Refusal) {
        let message = refusal.to_string();
        self.update(|s| s.message = Some(message.clone()));
        match action {
            Action::SetTechnique(t) => {
                let proposed = {
                    let mut st = lock(&self.state);
                    // The controller may have dropped its technique: no session stands.
                    st.session = None;
                    st.proposed.take()
                };
                self.update(|s| s.technique_set = false);
                if let Some(p) = proposed.filter(|p| p.technique() == t) {
                    self.record_refusal(&p, &message);
                }
                self.answer(Awaiting::Technique, Err(message));
            }
            Action::Arm => self.answer(Awaiting::Arm, Err(message)),
            Action::Confirm { token } => {
                let pending = lock(&self.state).pending.clone().filter(|p| p.entry.token == token && !p.started);
                if let Some(p) = pending {
                    // Recorded before the operator's request is answered, so what they see
                    // next already includes it; the attempt stays pending until then.
                    self.record(
                        &p.entry,
                        ExposureOutcome::Refused,
                        Some(Delivered::default()),
                        Some(&message),
                        None,
                        true,
                    );
                    self.finish(&p.entry);
                    self.answer(Awaiting::Press, Err(message));
                }
            }
        }
    }

    /// A technique refused before anything was sent (not journalled: no beam was possible).
    fn record_refusal(&self, session: &Session, message: &str) {
        let entry = session.attempt(&session.user, now_ts(), 0, 0);
        self.record(&entry, ExposureOutcome::Refused, Some(Delivered::default()), Some(message), None, false);
    }

    /// The attempt in flight, if `token` is its press.
    fn pending_for(&self, token: u64) -> Option<Pending> {
        lock(&self.state).pending.clone().filter(|p| p.entry.token == token)
    }

    /// The attempt is in its case (or given up): the next one may start.
    fn finish(&self, entry: &journal::Entry) {
        let mut st = lock(&self.state);
        if st.pending.as_ref().is_some_and(|p| p.entry.exposure_id == entry.exposure_id) {
            st.pending = None;
        }
    }

    fn on_done(&self, token: u64, delivered: Delivered) {
        let Some(p) = self.pending_for(token) else {
            let dap = f64::from(delivered.dap_x100) / 100.0;
            tracing::error!(dap_mgy_cm2 = dap, "the generator reported an exposure this agent did not start");
            self.update(|s| {
                s.message = Some(format!(
                    "the unit reported an exposure this agent did not start ({dap:.2} mGy·cm²); have the unit checked"
                ))
            });
            return;
        };
        let mut entry = p.entry;
        entry.delivered = Some(journal::Delivered {
            kv_x10: delivered.kv_x10,
            mas_x100: delivered.mas_x100,
            ms: delivered.ms,
            dap_x100: delivered.dap_x100,
        });
        // The dose is on disk before the slow part: a crash while the image is made still
        // records it.
        if let Err(e) = self.journal.write(&entry) {
            tracing::error!(error = %e, "the delivered dose could not be journalled");
        }
        let (images, reason) = match self.make_images(&entry, delivered) {
            Ok(i) => (Some(i), None),
            Err(e) => {
                tracing::error!(error = %e, "the exposure's image could not be stored");
                (None, Some(format!("the image was not stored: {e}; retake if it is needed")))
            }
        };
        self.record(&entry, ExposureOutcome::Exposed, Some(delivered), reason.as_deref(), images, true);
        self.finish(&entry);
    }

    fn on_aborted(&self, token: u64, delivered: Option<Delivered>, cause: &Cause) {
        let Some(p) = self.pending_for(token) else {
            tracing::warn!(cause = %cause, "an exposure was stopped that this agent had not started");
            return;
        };
        self.record(&p.entry, ExposureOutcome::Aborted, delivered, Some(&cause.to_string()), None, true);
        self.finish(&p.entry);
    }

    /// An attempt the controller never reported on is recorded rather than left open.
    fn check_deadline(&self) {
        let stale = lock(&self.state).pending.clone().filter(|p| p.since.elapsed() > OUTCOME_DEADLINE);
        if let Some(p) = stale {
            let reason = if p.started {
                "the generator did not report how the exposure ended; the dose delivered is unknown"
            } else {
                "the exposure was asked for but never reported as started or refused; the dose delivered is unknown"
            };
            self.update(|s| s.message = Some(reason.into()));
            self.record(&p.entry, ExposureOutcome::Aborted, None, Some(reason), None, true);
            self.finish(&p.entry);
        }
    }

    /// What a previous run of the agent left in the journal goes into the case first.
    fn recover(&self) {
        let entry = match self.journal.read() {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                // Never written over: moved aside for a person, and the attempt it held is
                // unknown to the case record (the audit log still has the dose if it was
                // recorded).
                match self.journal.set_aside() {
                    Ok(to) => {
                        tracing::error!(error = %e, kept = %to.display(), "the X-ray journal is damaged; it was moved aside for a person to inspect")
                    }
                    Err(e2) => {
                        tracing::error!(error = %e, move_error = %e2, "the X-ray journal is damaged and could not be moved aside")
                    }
                }
                return;
            }
        };
        tracing::warn!(exposure = %entry.exposure_id, case = %entry.case_id, "recording an exposure the agent was stopped during");
        match entry.delivered {
            Some(d) => {
                let delivered =
                    Delivered { kv_x10: d.kv_x10, mas_x100: d.mas_x100, ms: d.ms, dap_x100: d.dap_x100 };
                self.record(
                    &entry,
                    ExposureOutcome::Exposed,
                    Some(delivered),
                    Some("the agent stopped before the image was stored; the dose was delivered; retake if the image is needed"),
                    None,
                    true,
                );
            }
            None => self.record(
                &entry,
                ExposureOutcome::Aborted,
                None,
                Some("the agent stopped during this exposure; the generator's watchdog ended it within a second; the dose delivered is unknown"),
                None,
                true,
            ),
        }
    }

    /// Writes the attempt into its case (one change: the exposure and its images); then,
    /// for a journalled attempt, removes its journal entry (and no other).
    fn record(
        &self,
        entry: &journal::Entry,
        outcome: ExposureOutcome,
        delivered: Option<Delivered>,
        reason: Option<&str>,
        images: Option<images::Stored>,
        journalled: bool,
    ) {
        let result = self.write_record(entry, outcome, delivered, reason, images.as_ref());
        let last = LastExposure {
            exposure_id: entry.exposure_id.clone(),
            case_id: entry.case_id.clone(),
            outcome: outcome.as_str(),
            dap_mgy_cm2: delivered.map(|d| f64::from(d.dap_x100) / 100.0),
            reason: reason.map(str::to_owned),
            preview_sha256: images.as_ref().map(|i| i.preview.0.clone()),
            dicom_sha256: images.as_ref().map(|i| i.dicom.0.clone()),
        };
        match result {
            Ok(()) => {
                if journalled {
                    match self.journal.read() {
                        Ok(Some(held)) if held.exposure_id == entry.exposure_id => {
                            if let Err(e) = self.journal.clear() {
                                tracing::error!(error = %e, "the X-ray journal could not be cleared");
                            }
                        }
                        _ => {}
                    }
                }
                self.update(|s| s.last_exposure = Some(last));
            }
            Err(e) => {
                // The journal stays: the next press, or the next start, tries again.
                tracing::error!(error = %e, exposure = %entry.exposure_id, "the exposure could not be recorded in its case");
                self.update(|s| s.message = Some(format!("the exposure could not be recorded in the case: {e}")));
            }
        }
    }

    fn write_record(
        &self,
        entry: &journal::Entry,
        outcome: ExposureOutcome,
        delivered: Option<Delivered>,
        reason: Option<&str>,
        images: Option<&images::Stored>,
    ) -> Result<(), XrayError> {
        let case_id = CaseId::parse(&entry.case_id).map_err(|e| XrayError::Invalid(e.to_string()))?;
        let user = UserId::parse(&entry.user).map_err(|e| XrayError::Invalid(e.to_string()))?;
        let ctx = EditContext { user, now: now_ts() };
        let exposure = ExposureInput {
            exposure_id: entry.exposure_id.clone(),
            at: Some(Timestamp::from_unix_millis(entry.pressed_at)),
            outcome,
            body_part: entry.body_part.clone(),
            view: entry.view.clone(),
            laterality: entry.laterality.clone(),
            kv: f64::from(entry.kv_x10) / 10.0,
            mas: f64::from(entry.mas_x100) / 100.0,
            ms: i64::from(entry.ms),
            delivered_kv: delivered.map(|d| f64::from(d.kv_x10) / 10.0),
            delivered_mas: delivered.map(|d| f64::from(d.mas_x100) / 100.0),
            delivered_ms: delivered.map(|d| i64::from(d.ms)),
            dap_mgy_cm2: delivered.map(|d| f64::from(d.dap_x100) / 100.0),
            reason: reason.map(|r| r.chars().take(500).collect()),
            dicom_sha256: images.map(|i| i.dicom.0.clone()),
            preview_sha256: images.map(|i| i.preview.0.clone()),
            sop_instance_uid: images.map(|i| i.sop_instance_uid.clone()),
        };
        // A journal replayed after a crash that happened just after recording.
        let view = self.store.read_case(&ctx, case_id)?;
        if view.procedures.iter().any(|p| p.get("exposure_id").and_then(|v| v.as_str()) == Some(&entry.exposure_id)) {
            return Ok(());
        }
        let mut edits = Vec::new();
        if let Some(i) = images {
            let label = format!("{} {} {}", entry.body_part, entry.view, entry.laterality);
            edits.push(Edit::AddAttachment(AttachmentInput {
                sha256: i.preview.0.clone(),
                kind: case_model::codes::AttachmentKind::XrayPreview,
                media_type: "image/png".into(),
                size: i.preview.1,
                label: Some(format!("{label} preview")),
            }));
            edits.push(Edit::AddAttachment(AttachmentInput {
                sha256: i.dicom.0.clone(),
                kind: case_model::codes::AttachmentKind::XrayStudy,
                media_type: "application/dicom".into(),
                size: i.dicom.1,
                label: Some(label),
            }));
        }
        edits.push(Edit::RecordExposure(exposure));
        self.store.edit_case(&ctx, case_id, &edits)?;
        Ok(())
    }

    /// Reads the frame and stores its preview, then its DICOM object, as blobs of the case.
    fn make_images(&self, entry: &journal::Entry, delivered: Delivered) -> Result<images::Stored, String> {
        let case_id = CaseId::parse(&entry.case_id).map_err(|e| e.to_string())?;
        let user = UserId::parse(&entry.user).map_err(|e| e.to_string())?;
        let ctx = EditContext { user, now: now_ts() };
        let (raw, detector_id) = {
            let mut d = lock(&self.detector);
            (d.read(entry.frame_id).map_err(|e| format!("the detector frame could not be read: {e}"))?, d.describe())
        };
        let frame = imaging::Frame {
            columns: raw.header.columns,
            rows: raw.header.rows,
            bits_stored: raw.header.bits_stored,
            pixel_pitch_um: raw.header.pixel_pitch_um,
            detector_id,
            pixels: raw.pixels,
        };
        let case = self.store.read_case(&ctx, case_id).map_err(|e| e.to_string())?;
        let (date, time) = time_parts(entry.pressed_at);
        let exposure = images::Exposure {
            case: &case,
            operator: &entry.user,
            view: imaging::View {
                body_part: BodyPart::parse(&entry.body_part).unwrap_or(BodyPart::Hand),
                projection: Projection::parse(&entry.view).unwrap_or(Projection::Pa),
                laterality: Laterality::parse(&entry.laterality).unwrap_or(Laterality::Unpaired),
            },
            acquisition: imaging::Acquisition {
                kv: f64::from(delivered.kv_x10) / 10.0,
                mas: f64::from(delivered.mas_x100) / 100.0,
                ms: u32::from(delivered.ms),
                dap_mgy_cm2: f64::from(delivered.dap_x100) / 100.0,
                date,
                time,
            },
            series_uuid: uuid::Uuid::parse_str(&entry.exposure_id).map_err(|e| e.to_string())?.as_u128(),
            instance_uuid: random_uuid().as_u128(),
        };
        let stored = images::store(&self.store, &ctx, &frame, &exposure)?;
        tracing::info!(
            preview_ms = stored.preview_after.as_millis() as u64,
            dicom_ms = stored.dicom_after.as_millis() as u64,
            "the exposure's preview and DICOM object are stored"
        );
        Ok(stored)
    }
}

/// A random (version 4) UUID.
fn random_uuid() -> uuid::Uuid {
    uuid::Uuid::from_u128(rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62))
}

/// One study per case: its UID is the case id under the UUID arc, so the hub can tell
/// which case a study belongs to from the UID alone.
pub fn study_uid(case: CaseId) -> String {
    imaging::uid_from_uuid(u128::from_be_bytes(*case.as_bytes()))
}

/// The case's identity as DICOM wants it.
pub(crate) fn subject(case: &CaseView, operator: &str) -> imaging::Subject {
    let field = |path: &str| {
        case.fields.get(path).and_then(|f| f.get("value")).and_then(|v| v.as_str()).unwrap_or("").to_owned()
    };
    let (last, first) = (field("patient.last_name"), field("patient.first_name"));
    let name = match (last.is_empty(), first.is_empty()) {
        (true, true) => String::new(),
        (false, true) => last,
        _ => format!("{last}^{first}"),
    };
    let sex = match field("patient.sex").as_str() {
        "female" => "F",
        "male" => "M",
        _ => "",
    };
    let hex: String = case.id.to_string().chars().filter(char::is_ascii_hexdigit).collect();
    imaging::Subject {
        patient_id: case.temp_patient_id.clone().unwrap_or_else(|| case.id.to_string()),
        patient_name: name,
        birth_date: field("patient.date_of_birth").replace('-', ""),
        sex: sex.into(),
        // Accession Number holds 16 characters: the case id's last 16 hex digits (its
        // random part). The study UID carries the whole id.
        accession: hex[hex.len().saturating_sub(16)..].to_owned(),
        institution: case.org.as_str().to_owned(),
        station: case.van.as_str().to_owned(),
        operator: operator.to_owned(),
    }
}

/// `YYYYMMDD` and `HHMMSS` (UTC) of a time in ms.
fn time_parts(ms: i64) -> (String, String) {
    let t = Timestamp::from_unix_millis(ms).to_string();
    // RFC 3339: 2026-11-27T18:29:13.000+00:00
    let date = t.get(0..10).unwrap_or("19700101").replace('-', "");
    let time = t.get(11..19).unwrap_or("000000").replace(':', "");
    (date, time)
}

fn apply_status(st: &mut XrayStatus, s: &Status) -> bool {
    let generator = match s.state {
        GenState::Standby => "standby",
        GenState::Preparing => "preparing",
        GenState::Ready => "ready",
        GenState::Exposing => "exposing",
        GenState::Fault => "fault",
    };
    let i = s.interlocks.0;
    let interlocks =
        InterlockView { door: i & 1 != 0, collimator: i & 2 != 0, detector: i & 4 != 0, temperature: i & 8 != 0 };
    let temp = f64::from(s.temp_x10) / 10.0;
    let changed = st.generator != generator
        || st.interlocks.map(|v| (v.door, v.collimator, v.detector, v.temperature))
            != Some((interlocks.door, interlocks.collimator, interlocks.detector, interlocks.temperature))
        || st.tube_temperature_c.map(|t| (t * 10.0) as i64) != Some(i64::from(s.temp_x10));
    if changed {
        st.generator = generator;
        st.interlocks = Some(interlocks);
        st.tube_temperature_c = Some(temp);
        st.generation += 1;
    }
    changed
}
