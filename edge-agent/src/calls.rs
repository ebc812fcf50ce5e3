//! Video consults from the van. The crew starts the case's live call on the touchscreen;
//! the agent asks the hub for a call ticket over the sync session (the van's certificate is
//! the credential, no person logs in to the hub), publishes the van's camera and microphone
//! over WHIP with `media`, and records the consult in full quality beside it: each finished
//! segment is sealed into the case (`recordings`) as soon as it closes. The touchscreen
//! plays the other parties: the agent relays its WHEP offer to the hub with a ticket, and
//! the browser's media then flows with the hub's media server directly.
//!
//! One call at a time (the van has one camera). Each call runs on a thread of its own: the
//! GStreamer pipeline and its small runtime live and die there, never on the API's runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use case_model::{CaseId, EditContext, UserId};
use case_store::Store;
use serde::{Deserialize, Serialize};

use crate::sync::{SyncHandle, TicketError};

/// The `[calls]` config table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// The hub's HTTP API as the van reaches it, like `http://hub.example.org:8080` (WHIP
    /// and WHEP go there; put TLS in front with a local proxy where the link is not private).
    pub hub_url: String,
    /// `devices` (the camera and microphone below) or `test` (a stamped pattern and a tone,
    /// for demonstrations and tests).
    #[serde(default)]
    pub source: SourceKind,
    /// The camera (V4L2).
    #[serde(default = "default_camera")]
    pub camera: String,
    /// The microphone (ALSA).
    #[serde(default = "default_microphone")]
    pub microphone: String,
    /// Picture size sent, width by height.
    #[serde(default = "default_size")]
    pub size: [u32; 2],
    /// Frames per second.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Starting video bitrate, kbit/s (it then follows the link).
    #[serde(default = "default_bitrate")]
    pub bitrate_kbps: u32,
    /// Record consults in full quality, sealed into the case.
    #[serde(default = "default_true")]
    pub record: bool,
    /// Where recording segments are written before they are sealed: keep it in memory (a
    /// tmpfs such as `/run`), so no plain recording ever reaches the disk.
    #[serde(default = "default_recordings_dir")]
    pub recordings_dir: PathBuf,
    /// Length of a recording segment, seconds.
    #[serde(default = "default_segment_s")]
    pub segment_s: u32,
}

/// What the call sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The van's camera and microphone.
    #[default]
    Devices,
    /// Test sources.
    Test,
}

fn default_camera() -> String {
    "/dev/video0".into()
}
fn default_microphone() -> String {
    "default".into()
}
fn default_size() -> [u32; 2] {
    [640, 360]
}
fn default_fps() -> u32 {
    25
}
fn default_bitrate() -> u32 {
    1500
}
fn default_true() -> bool {
    true
}
fn default_recordings_dir() -> PathBuf {
    "/run/medvan/recordings".into()
}
fn default_segment_s() -> u32 {
    10
}

/// What `/api/v1/call` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallView {
    /// `not_configured`, `idle`, `starting`, `live`, `stopping`, `ended` or `failed`.
    pub state: &'static str,
    /// The case of the call (the last one, once it ended).
    pub case_id: Option<String>,
    /// Who started it.
    pub started_by: Option<String>,
    /// When it went live (device clock, ms since the epoch).
    pub live_since: Option<i64>,
    /// The video bitrate set now, kbit/s (it follows the link).
    pub target_kbps: u32,
    /// What went out over the last second, kbit/s.
    pub sent_kbps: u32,
    /// Fraction of packets the hub last reported lost.
    pub fraction_lost: f64,
    /// Round trip to the hub, ms.
    pub rtt_ms: Option<u32>,
    /// Frames recorded so far.
    pub recorded_frames: u64,
    /// Recording segments sealed into the case.
    pub segments_sealed: u32,
    /// Why the call failed, or a segment could not be sealed.
    pub error: Option<String>,
}

/// Why a call action failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No `[calls]` table.
    #[error("this van is not set up for video consults (no [calls] in its config)")]
    NotConfigured,
    /// Another case's call runs.
    #[error("a video consult is already running for case {0}; end it first")]
    Busy(String),
    /// No call of this case runs.
    #[error("no video consult is running for this case")]
    NotRunning,
    /// The touchscreen asked to stop playing a session this agent does not know (ended
    /// already, or the agent restarted).
    #[error("this screen is not playing that call session (it ended already); nothing to stop")]
    NotWatching,
    /// No ticket from the hub.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The media pipeline or the hub's media server failed.
    #[error("the call could not start: {0}")]
    Media(String),
}

/// The call service.
#[derive(Debug, Clone)]
pub struct CallHandle {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    config: CallConfig,
    store: Store,
    sync: SyncHandle,
    /// The call now (or the last one), and how to stop it.
    current: Mutex<Current>,
    /// WHEP sessions relayed for the touchscreen: our id to the hub's session resource.
    watching: Mutex<BTreeMap<u64, (CaseId, String)>>,
    next_watch: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Current {
    view: Arc<Mutex<CallView>>,
    case: Option<CaseId>,
    stop: Option<std::sync::mpsc::Sender<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CallHandle {
    /// A van without video consults.
    pub fn not_configured() -> CallHandle {
        CallHandle { inner: None }
    }

    /// The service over `store`, getting tickets through `sync`.
    pub fn new(config: CallConfig, store: Store, sync: SyncHandle) -> anyhow::Result<CallHandle> {
        if !config.hub_url.starts_with("http://") {
            anyhow::bail!(
                "[calls] hub_url must be the hub's http:// address with its port, like http://hub.example.org:8080 \
                 (not {:?}); put TLS in front with a proxy on the van",
                config.hub_url
            );
        }
        let current = Current {
            view: Arc::new(Mutex::new(CallView { state: "idle", ..Default::default() })),
            ..Default::default()
        };
        Ok(CallHandle {
            inner: Some(Arc::new(Inner {
                config,
                store,
                sync,
                current: Mutex::new(current),
                watching: Mutex::new(BTreeMap::new()),
                next_watch: 1.into(),
            })),
        })
    }

    fn inner(&self) -> Result<&Arc<Inner>, CallError> {
        self.inner.as_ref().ok_or(CallError::NotConfigured)
    }

    /// The call now, or the last one.
    pub fn status(&self) -> CallView {
        match &self.inner {
            None => CallView { state: "not_configured", ..Default::default() },
            Some(i) => lock(&lock(&i.current).view).clone(),
        }
    }

    fn url(&self, case: CaseId, what: &str) -> Result<String, CallError> {
        Ok(format!("{}/api/v1/calls/{case}/{what}", self.inner()?.config.hub_url.trim_end_matches('/')))
    }

    /// Starts `case`'s call as `ctx.user`: a ticket from the hub, then the pipeline. Returns
    /// once the hub took the offer and media flows (or why not).
    pub async fn start(&self, ctx: &EditContext, case: CaseId) -> Result<CallView, CallError> {
        let inner = self.inner()?.clone();
        let (view, stop_rx) = {
            let mut cur = lock(&inner.current);
            let running = cur.stop.is_some() || cur.thread.as_ref().is_some_and(|t| !t.is_finished());
            if running && let Some(c) = cur.case {
                return Err(CallError::Busy(c.to_string()));
            }
            cur.view = Arc::new(Mutex::new(CallView {
                state: "starting",
                case_id: Some(case.to_string()),
                started_by: Some(ctx.user.to_string()),
                ..Default::default()
            }));
            cur.case = Some(case);
            // Reserved: a second start now sees this call running.
            let (tx, rx) = std::sync::mpsc::channel();
            cur.stop = Some(tx);
            (cur.view.clone(), rx)
        };
        let fail = |e: CallError| {
            let mut cur = lock(&inner.current);
            cur.stop = None;
            let mut v = lock(&view);
            v.state = "failed";
            v.error = Some(e.to_string());
            e
        };
        let ticket = match inner.sync.call_ticket(case).await {
            Ok(t) => t,
            Err(e) => return Err(fail(e.into())),
        };
        let c = &inner.config;
        let dir = c.recordings_dir.join(case.to_string());
        let settings = media::publish::Settings {
            url: self.url(case, "whip")?,
            token: ticket.token,
            source: match c.source {
                SourceKind::Devices => {
                    media::source::Source::Devices { camera: c.camera.clone(), microphone: c.microphone.clone() }
                }
                SourceKind::Test => media::source::Source::Test { busy: false },
            },
            format: media::source::Format { width: c.size[0], height: c.size[1], fps: c.fps },
            bitrate_kbps: c.bitrate_kbps,
            record: c.record.then(|| media::publish::Recording {
                dir: dir.clone(),
                segment_s: c.segment_s,
                bitrate_kbps: c.bitrate_kbps.max(2000),
            }),
        };
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let worker = Worker { inner: inner.clone(), view: view.clone(), case, user: ctx.user.clone(), dir };
        let thread = std::thread::Builder::new()
            .name("call".into())
            .spawn(move || worker.run(settings, stop_rx, started_tx))
            .map_err(|e| fail(CallError::Media(format!("no thread for the call: {e}"))))?;
        lock(&inner.current).thread = Some(thread);
        match started_rx.await {
            Ok(Ok(())) => Ok(lock(&view).clone()),
            Ok(Err(why)) => Err(fail(CallError::Media(why))),
            Err(_) => Err(fail(CallError::Media("the call's thread ended".into()))),
        }
    }

    /// Ends `case`'s call: the last recording segment is sealed into the case, and the hub
    /// is told (with a fresh ticket, when it can be reached; else its session times out).
    pub async fn stop(&self, case: CaseId) -> Result<CallView, CallError> {
        let inner = self.inner()?.clone();
        let (stop, view) = {
            let mut cur = lock(&inner.current);
            if cur.case != Some(case) || cur.stop.is_none() {
                return Err(CallError::NotRunning);
            }
            (cur.stop.take(), cur.view.clone())
        };
        lock(&view).state = "stopping";
        let token = inner.sync.call_ticket(case).await.ok().map(|g| g.token);
        if let Some(stop) = stop {
            let _ = stop.send(token);
        }
        let thread = lock(&inner.current).thread.take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(lock(&view).clone())
    }

    /// Ends any call (the agent is stopping): its recording is sealed first.
    pub fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        let (stop, thread) = {
            let mut cur = lock(&inner.current);
            (cur.stop.take(), cur.thread.take())
        };
        if let Some(stop) = stop {
            let _ = stop.send(None);
        }
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Relays the touchscreen's WHEP offer for `case`'s call to the hub with a ticket.
    /// Returns the answer and the id to end the session with ([`CallHandle::unwatch`]).
    pub async fn watch(&self, case: CaseId, offer: String) -> Result<(String, u64), CallError> {
        let inner = self.inner()?.clone();
        let ticket = inner.sync.call_ticket(case).await?;
        let url = self.url(case, "whep")?;
        let session =
            media::whip::offer(&url, &ticket.token, offer).await.map_err(|e| CallError::Media(e.to_string()))?;
        let id = inner.next_watch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut watching = lock(&inner.watching);
        // The touchscreen's player is restarted often (the page is reloaded); the hub drops
        // sessions whose peer went away, and this list forgets the oldest.
        while watching.len() >= 16 {
            watching.pop_first();
        }
        watching.insert(id, (case, session.location));
        Ok((session.answer, id))
    }

    /// Ends a WHEP session [`CallHandle::watch`] relayed.
    pub async fn unwatch(&self, case: CaseId, id: u64) -> Result<(), CallError> {
        let inner = self.inner()?.clone();
        let location = match lock(&inner.watching).remove(&id) {
            Some((c, location)) if c == case => location,
            _ => return Err(CallError::NotWatching),
        };
        let ticket = inner.sync.call_ticket(case).await?;
        media::whip::end(&self.url(case, "whep")?, &ticket.token, &location)
            .await
            .map_err(|e| CallError::Media(e.to_string()))
    }
}

/// One call, on its own thread.
struct Worker {
    inner: Arc<Inner>,
    view: Arc<Mutex<CallView>>,
    case: CaseId,
    user: UserId,
    dir: PathBuf,
}

impl Worker {
    fn run(
        self,
        settings: media::publish::Settings,
        stop: std::sync::mpsc::Receiver<Option<String>>,
        started: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) {
        if settings.record.is_some()
            && let Err(e) = make_private_dir(&self.dir)
        {
            let _ = started.send(Err(format!("cannot make the recording folder {}: {e}", self.dir.display())));
            return;
        }
        let mut publisher = match media::publish::Publisher::start(&settings) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir(&self.dir);
                let _ = started.send(Err(format!("{e:#}")));
                return;
            }
        };
        {
            let mut v = lock(&self.view);
            v.state = "live";
            v.live_since = Some(crate::api::now().unix_millis());
        }
        let _ = started.send(Ok(()));
        tracing::info!(case = %self.case, "video consult live");
        loop {
            match stop.recv_timeout(Duration::from_secs(1)) {
                Ok(token) => {
                    if let Some(t) = token {
                        publisher.set_token(t);
                    }
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    for segment in publisher.finished_segments() {
                        self.seal(&segment);
                    }
                    let link = publisher.link();
                    let mut v = lock(&self.view);
                    v.target_kbps = link.target_kbps;
                    v.sent_kbps = link.sent_kbps;
                    v.fraction_lost = link.fraction_lost;
                    v.rtt_ms = link.rtt_s.map(|s| (s * 1000.0) as u32);
                    v.recorded_frames = publisher.recorded_frames();
                }
                // The agent is going away without a word: end the call all the same.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        match publisher.stop() {
            Ok(stopped) => {
                for segment in &stopped.segments {
                    self.seal(segment);
                }
                lock(&self.view).recorded_frames = stopped.recorded_frames;
            }
            Err(e) => lock(&self.view).error = Some(format!("the call did not end cleanly: {e:#}")),
        }
        // Segments the pipeline finished but never announced (cut by a crash) are sealed too.
        if let Ok(rest) = std::fs::read_dir(&self.dir) {
            let mut rest: Vec<PathBuf> = rest.flatten().map(|e| e.path()).collect();
            rest.sort();
            for segment in rest {
                self.seal(&segment);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        lock(&self.view).state = "ended";
        tracing::info!(case = %self.case, "video consult ended");
    }

    fn seal(&self, segment: &std::path::Path) {
        let n = lock(&self.view).segments_sealed + 1;
        let ctx = EditContext { user: self.user.clone(), now: crate::api::now() };
        let label = format!("video consult recording, part {n}");
        match crate::recordings::ingest(&self.inner.store, &ctx, self.case, segment, &label) {
            Ok(_) => lock(&self.view).segments_sealed = n,
            Err(e) => {
                // The plain segment stays (in memory) for the next try at the end of the call.
                tracing::error!(error = %format!("{e:#}"), "could not seal a recording segment into the case");
                lock(&self.view).error = Some(format!("a recording segment could not be stored: {e:#}"));
            }
        }
    }
}

/// A folder only the agent can read.
fn make_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
