//! The van's GPS receiver: NMEA 0183 on a serial port.
//!
//! A thread reads the port (reopening it if the receiver is unplugged), cuts the bytes into
//! sentences and fixes with `gps-nmea`, and:
//! - publishes the newest fix, which the sync service reports to the hub while connected
//!   (the hub's geofences and fleet map run on it);
//! - adds a thinned track to the case the crew is working (the newest open case of this
//!   van, opened in the last 24 hours), in batches, as `system:gps`;
//! - keeps every fix for that case and stores them as an encrypted attachment
//!   (`gps_track`, each fix written out again as an RMC sentence) every five minutes and
//!   when the case changes: the full track in five-minute pieces, synced after the case and
//!   the images.
//!
//! Damaged sentences are counted and skipped, never trusted; the reason for the last one is
//! shown at `/api/v1/gps`.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use case_model::edit::TrackPoint;
use case_model::{CaseId, Edit, EditContext, Timestamp, UserId};
use case_store::Store;
use geofence::{LatLon, Thinner, ThinnerConfig};
use gps_nmea::{Fix, FixBuilder, LineReader};
use serde::{Deserialize, Serialize};
use sync_proto::{DocId, PositionReport};
use tokio::sync::watch;

/// The `[gps]` config table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpsConfig {
    /// The receiver's serial port, like `/dev/ttyACM0`.
    pub device: String,
    /// Its baud rate (NMEA 0183's standard is 4800; most receivers ship at 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    9600
}

/// Track points are written in batches: at most this many waiting...
const TRACK_BATCH: usize = 10;
/// ...or this long after the first of them.
const TRACK_FLUSH: Duration = Duration::from_secs(30);
/// The full track is stored as an attachment this often.
const RAW_FLUSH: Duration = Duration::from_secs(300);
/// How often the active case is looked up again.
const CASE_CHECK: Duration = Duration::from_secs(5);
/// A case opened longer ago than this is not taken as the active one.
const ACTIVE_WITHIN_MS: i64 = 24 * 3600 * 1000;

/// What `/api/v1/gps` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GpsStatus {
    /// `not_configured`, `no_receiver` (the port cannot be opened), `no_fix` or `fix`.
    pub state: &'static str,
    /// The newest fix.
    pub fix: Option<FixView>,
    /// Sentences accepted.
    pub sentences: u64,
    /// Lines refused (bad checksum, fragments, noise).
    pub refused: u64,
    /// Why the last refused line was refused.
    pub last_refusal: Option<String>,
    /// The case the track goes to.
    pub active_case: Option<String>,
    /// Track points written to cases.
    pub track_points: u64,
    /// Why the route could not be written to the case last time, if it could not.
    pub last_error: Option<String>,
}

/// A fix, for people.
#[derive(Debug, Clone, Serialize)]
pub struct FixView {
    /// GPS time.
    pub at: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Estimated 1-sigma accuracy, metres.
    pub accuracy_m: f64,
    /// Speed, m/s.
    pub speed_mps: Option<f64>,
}

/// The running GPS service.
#[derive(Debug, Clone)]
pub struct GpsHandle {
    status: Arc<Mutex<GpsStatus>>,
    positions: watch::Receiver<Option<PositionReport>>,
    stop: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GpsHandle {
    /// No receiver configured.
    pub fn not_configured() -> GpsHandle {
        GpsHandle {
            status: Arc::new(Mutex::new(GpsStatus { state: "not_configured", ..Default::default() })),
            positions: watch::channel(None).1,
            stop: Arc::new(AtomicBool::new(true)),
            thread: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts reading the receiver.
    pub fn start(store: Store, van: String, config: &GpsConfig) -> anyhow::Result<GpsHandle> {
        let (tx, rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(GpsStatus { state: "no_receiver", ..Default::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (status, stop, config) = (status.clone(), stop.clone(), config.clone());
            std::thread::Builder::new().name("gps".into()).spawn(move || {
                let mut recorder = Recorder::new(store, van, status.clone());
                run(&config, &mut recorder, &tx, &status, &stop);
                recorder.flush_all();
            })?
        };
        Ok(GpsHandle { status, positions: rx, stop, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// The newest position, as the sync service reports it.
    pub fn positions(&self) -> watch::Receiver<Option<PositionReport>> {
        self.positions.clone()
    }

    /// The status.
    pub fn status(&self) -> GpsStatus {
        lock(&self.status).clone()
    }

    /// Stops reading and stores what is waiting (track points and the raw track).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn run(
    config: &GpsConfig,
    recorder: &mut Recorder,
    tx: &watch::Sender<Option<PositionReport>>,
    status: &Mutex<GpsStatus>,
    stop: &AtomicBool,
) {
    let mut warned_open = false;
    while !stop.load(Ordering::Relaxed) {
        let port = serialport::new(&config.device, config.baud).timeout(Duration::from_millis(200)).open();
        let mut port = match port {
            Ok(p) => {
                tracing::info!(device = %config.device, "reading the GPS receiver");
                warned_open = false;
                p
            }
            Err(e) => {
                if !warned_open {
                    tracing::warn!(device = %config.device, error = %e, "cannot open the GPS receiver; trying again every 2 s");
                    warned_open = true;
                }
                lock(status).state = "no_receiver";
                recorder.tick();
                sleep_unless(stop, Duration::from_secs(2));
                continue;
            }
        };
        if lock(status).state == "no_receiver" {
            lock(status).state = "no_fix";
        }
        let mut reader = LineReader::new();
        let mut builder = FixBuilder::new();
        let mut buf = [0u8; 1024];
        let mut last_fix = Instant::now();
        let mut refusals_logged = Instant::now() - Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) {
            match port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    for parsed in reader.push(&buf[..n]) {
                        match parsed {
                            Ok(sentence) => {
                                lock(status).sentences += 1;
                                if let Some(fix) = builder.push(sentence) {
                                    last_fix = Instant::now();
                                    let report = report(&fix, recorder.active);
                                    tx.send_replace(Some(report));
                                    recorder.fix(&fix);
                                }
                            }
                            Err(e) => {
                                let mut s = lock(status);
                                s.refused += 1;
                                s.last_refusal = Some(e.to_string());
                                // A noisy line refuses a lot; the log says so once a minute.
                                if refusals_logged.elapsed() >= Duration::from_secs(60) {
                                    tracing::warn!(error = %e, refused = s.refused, "the GPS receiver sent a damaged sentence");
                                    refusals_logged = Instant::now();
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => {
                    tracing::warn!(device = %config.device, error = %e, "lost the GPS receiver; reopening");
                    break;
                }
            }
            if last_fix.elapsed() > Duration::from_secs(5) {
                lock(status).state = "no_fix";
            }
            recorder.tick();
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(fix: &Fix, active: Option<CaseId>) -> PositionReport {
    PositionReport {
        at_ms: fix.at_ms,
        lat_e7: (fix.lat * 1e7).round() as i32,
        lon_e7: (fix.lon * 1e7).round() as i32,
        accuracy_dm: (fix.accuracy_m() * 10.0).round() as u32,
        speed_cms: fix.speed_mps.map(|v| (v * 100.0).round() as u32),
        course_cdeg: fix.course_deg.map(|c| (c * 100.0).round() as u16),
        active_case: active.map(|c| DocId(*c.as_bytes())),
    }
}

/// Where fixes go in the case record.
struct Recorder {
    store: Store,
    van: String,
    status: Arc<Mutex<GpsStatus>>,
    active: Option<CaseId>,
    checked: Option<Instant>,
    thinner: Thinner,
    points: Vec<TrackPoint>,
    points_since: Option<Instant>,
    raw: String,
    raw_since: Option<Instant>,
}

impl Recorder {
    fn new(store: Store, van: String, status: Arc<Mutex<GpsStatus>>) -> Recorder {
        Recorder {
            store,
            van,
            status,
            active: None,
            checked: None,
            thinner: Thinner::new(ThinnerConfig::default()),
            points: Vec::new(),
            points_since: None,
            raw: String::new(),
            raw_since: None,
        }
    }

    fn ctx() -> EditContext {
        EditContext { user: UserId::parse("system:gps").expect("a valid user id"), now: crate::api::now() }
    }

    /// Looks up the active case now and then; a change stores what the last one gathered.
    fn tick(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < CASE_CHECK) {
            self.flush_due();
            return;
        }
        self.checked = Some(Instant::now());
        let now = crate::api::now().unix_millis();
        let active = match self.store.active_case(&self.van, now - ACTIVE_WITHIN_MS, now + 5 * 60_000) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up the active case for the GPS track");
                return;
            }
        };
        if active != self.active {
            self.flush_all();
            self.active = active;
            self.thinner = Thinner::new(ThinnerConfig::default());
            lock(&self.status).active_case = active.map(|c| c.to_string());
        }
        self.flush_due();
    }

    fn fix(&mut self, fix: &Fix) {
        let mut st = lock(&self.status);
        st.state = "fix";
        st.fix = Some(FixView {
            at: Timestamp::from_unix_millis(fix.at_ms).to_string(),
            lat: fix.lat,
            lon: fix.lon,
            accuracy_m: fix.accuracy_m(),
            speed_mps: fix.speed_mps,
        });
        drop(st);
        if self.active.is_none() {
            return;
        }
        // The full track: each accepted fix written out again as RMC (never the line's raw
        // bytes, which could hold anything).
        self.raw.push_str(&gps_nmea::rmc_line(fix));
        self.raw_since.get_or_insert_with(Instant::now);
        let g =
            geofence::Fix { at: LatLon { lat: fix.lat, lon: fix.lon }, t_ms: fix.at_ms, accuracy_m: fix.accuracy_m() };
        if self.thinner.keep(&g) {
            self.points.push(TrackPoint {
                at: Timestamp::from_unix_millis(fix.at_ms),
                lat: fix.lat,
                lon: fix.lon,
                speed_mps: fix.speed_mps,
            });
            self.points_since.get_or_insert_with(Instant::now);
        }
        self.flush_due();
    }

    fn flush_due(&mut self) {
        if self.points.len() >= TRACK_BATCH || self.points_since.is_some_and(|t| t.elapsed() >= TRACK_FLUSH) {
            self.flush_points();
        }
        if self.raw_since.is_some_and(|t| t.elapsed() >= RAW_FLUSH) {
            self.flush_raw();
        }
    }

    fn flush_all(&mut self) {
        self.flush_points();
        self.flush_raw();
    }

    fn flush_points(&mut self) {
        self.points_since = None;
        let (Some(case), false) = (self.active, self.points.is_empty()) else {
            self.points.clear();
            return;
        };
        // A fix dated in the future (a receiver fault) would make the case refuse the whole
        // batch: such points are left out, one by one.
        let latest = crate::api::now().unix_millis() + 4 * 60_000;
        let points: Vec<TrackPoint> =
            std::mem::take(&mut self.points).into_iter().filter(|p| p.at.unix_millis() <= latest).collect();
        if points.is_empty() {
            return;
        }
        let n = points.len() as u64;
        match self.store.edit_case(&Self::ctx(), case, &[Edit::AddTrackPoints { points }]) {
            Ok(_) => lock(&self.status).track_points += n,
            // A case closed meanwhile takes no more route; the next lookup moves on.
            Err(e) => {
                tracing::warn!(case = %case, error = %e, "could not add the route to the case");
                lock(&self.status).last_error = Some(format!("route not added to case {case}: {e}"));
            }
        }
    }

    fn flush_raw(&mut self) {
        self.raw_since = None;
        let (Some(case), false) = (self.active, self.raw.is_empty()) else {
            self.raw.clear();
            return;
        };
        let raw = std::mem::take(&mut self.raw);
        let label = Some("GPS track (NMEA 0183)".to_owned());
        if let Err(e) = self.store.attach(
            &Self::ctx(),
            case,
            &mut raw.as_bytes(),
            "text/x-nmea",
            case_model::codes::AttachmentKind::GpsTrack,
            label,
        ) {
            tracing::warn!(case = %case, error = %e, "could not store the GPS track");
            lock(&self.status).last_error = Some(format!("full track not stored in case {case}: {e}"));
        }
    }
}
