//! Where the vans are, and geofences.
//!
//! Vans report their GPS position over their sync session (about once a second while
//! connected). This service keeps each van's newest position (`GET /api/v1/fleet/positions`,
//! the doctor app's map) and runs the organisation's zones over it (`policy.rs`): entering
//! and leaving a zone is decided with hysteresis against GPS noise, and a van with an
//! active case entering a hospital's approach zone alerts that hospital's receiving team,
//! once per case and zone, across hub processes and restarts (the alert is a sealed row
//! created only if absent). Every decision is written to the hub's audit log
//! (`geofence.enter`, `geofence.leave`, `geofence.alert`, `geofence.route`).
//!
//! Zones are defined through `/api/v1/geofences` (the `zone_admin` permission) and kept
//! sealed beside the accounts. Positions are kept in memory only: a restarted hub knows
//! where a van is within a second of its next report.

pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use case_model::{CaseId, OrgId, UserId};
use geofence::{Fix, LatLon, PresenceConfig};
use serde::{Deserialize, Serialize};
use sync_proto::DocId;
use tokio::sync::broadcast;

pub use policy::{Decision, Tracker, Zone, ZoneKind};

use crate::cases::{CaseHub, VanPosition};
use crate::front_door::{Caller, now_s, require};
use crate::identity::records::Vault;
use crate::identity::roles::Permission;
use crate::identity::{Identity, Principal};
use crate::storage::StorageError;
use crate::{ApiError, HubState, api_blocking as blocking};

/// Record kinds (sealed rows beside the accounts).
const ZONE: &str = "geofence";
const ALERT: &str = "geofence_alert";
/// Zones are read again from storage this often (another process may have changed them).
const ZONES_TTL: Duration = Duration::from_secs(5);
/// The acting user of the service's own reads and audit entries.
const SYSTEM: &str = "system:geofence";
/// Positions whose GPS time is further than this from the hub's clock are ignored.
const MAX_CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;
/// A position older than this does not decide where a consult goes.
const ROUTE_POSITION_MAX_AGE_S: i64 = 120;
/// Alerts older than this are not listed.
const ALERTS_SHOWN_FOR_MS: i64 = 12 * 3600 * 1000;

/// A van's newest position, as the map shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VanOnMap {
    /// The van.
    pub van: String,
    /// GPS time of the fix (ms since the epoch).
    pub at_ms: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// 1-sigma accuracy, metres.
    pub accuracy_m: f64,
    /// Speed, m/s.
    pub speed_mps: Option<f64>,
    /// Course, degrees.
    pub course_deg: Option<f64>,
    /// The case the crew is working.
    pub active_case: Option<String>,
    /// When the hub heard it (seconds since the epoch).
    pub received_s: i64,
    /// The zones it is in.
    pub zones: Vec<String>,
}

/// A pre-arrival alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    /// The zone entered.
    pub zone_id: String,
    /// Its name.
    pub zone_name: String,
    /// The case.
    pub case_id: String,
    /// The van.
    pub van: String,
    /// When the van entered (GPS time, RFC 3339).
    pub entered_at: String,
    /// When the hub raised the alert (RFC 3339).
    pub raised_at: String,
    /// Who is alerted (the zone's receiving team).
    pub team: Vec<String>,
    /// The case in brief: patient, complaint, time of onset, status.
    pub summary: serde_json::Value,
}

/// The service areas a van is in, and their doctors.
#[derive(Debug, Clone, Default)]
pub struct ConsultArea {
    /// The areas' names.
    pub areas: Vec<String>,
    /// Their doctors (user names).
    pub doctors: Vec<String>,
}

struct OrgState {
    tracker: Tracker,
    /// Shared with the decisions made on them (a position is about once a second a van).
    zones: Arc<Vec<Zone>>,
    zones_read: Option<Instant>,
}

/// Whether a van may name a case as its active one, as last read, and when.
type Entitlements = HashMap<(String, String, DocId), (bool, Instant)>;

/// How long a van's entitlement to its active case is taken without reading it again.
const ENTITLED_TTL: Duration = Duration::from_secs(30);

/// The service.
pub struct Geo {
    identity: Arc<Identity>,
    cases: Arc<CaseHub>,
    orgs: Mutex<HashMap<String, OrgState>>,
    latest: Mutex<HashMap<(String, String), VanOnMap>>,
    alerts: broadcast::Sender<(String, Alert)>,
    entitled: Mutex<Entitlements>,
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geo").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(ms: i64) -> String {
    case_model::Timestamp::from_unix_millis(ms).to_string()
}

impl Geo {
    /// The service over a hub's identity store (zones, alerts) and cases (summaries).
    pub fn new(identity: Arc<Identity>, cases: Arc<CaseHub>) -> Arc<Geo> {
        Arc::new(Geo {
            identity,
            cases,
            orgs: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            alerts: broadcast::channel(256).0,
            entitled: Mutex::new(HashMap::new()),
        })
    }

    /// Alerts as they are raised, with their organisation.
    pub fn alerts(&self) -> broadcast::Receiver<(String, Alert)> {
        self.alerts.subscribe()
    }

    /// Takes positions from the vans' sessions until the hub stops.
    pub async fn run(self: Arc<Self>, mut rx: broadcast::Receiver<VanPosition>) {
        loop {
            match rx.recv().await {
                Ok(pos) => {
                    let me = self.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || me.position(&pos)).await {
                        tracing::error!(error = %e, "the geofence service failed on a position");
                    }
                }
                // Behind: positions are replaced by newer ones anyway.
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(skipped = n, "positions skipped"),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// One position (blocking: it may read storage and write the audit log).
    pub fn position(&self, pos: &VanPosition) {
        let r = &pos.report;
        let at = LatLon { lat: f64::from(r.lat_e7) / 1e7, lon: f64::from(r.lon_e7) / 1e7 };
        if !at.is_valid() {
            return;
        }
        // GPS time far from the hub's clock is a receiver fault (or a replay): ignored, so one
        // bad fix cannot freeze a van's presence in its zones.
        if (r.at_ms - now_s() * 1000).abs() > MAX_CLOCK_SKEW_MS {
            tracing::warn!(van = %pos.van, at_ms = r.at_ms, "a position far from the hub's clock was ignored");
            return;
        }
        // The case must be one the van may sync (its organisation's, created by or assigned to
        // it): a van cannot alert about, or route by, anyone else's case.
        let case = r.active_case.filter(|doc| self.entitled(pos, *doc));
        let fix = Fix { at, t_ms: r.at_ms, accuracy_m: f64::from(r.accuracy_dm) / 10.0 };
        let (decisions, inside) = {
            let mut orgs = lock(&self.orgs);
            let state = orgs.entry(pos.org.clone()).or_insert_with(|| OrgState {
                tracker: Tracker::new(PresenceConfig::default()),
                zones: Arc::new(Vec::new()),
                zones_read: None,
            });
            if state.zones_read.is_none_or(|t| t.elapsed() >= ZONES_TTL) {
                match self.load_zones(&pos.org) {
                    Ok(z) => {
                        state.zones = Arc::new(z);
                        state.zones_read = Some(Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the geofences; using the last known"),
                }
            }
            let decisions = state.tracker.position(&pos.van, &fix, case.map(|d| d.0), &state.zones);
            let zones = state.zones.clone();
            let inside = state.tracker.inside(&pos.van);
            (decisions.into_iter().map(|d| (d, zones.clone())).collect::<Vec<_>>(), inside)
        };
        lock(&self.latest).insert(
            (pos.org.clone(), pos.van.clone()),
            VanOnMap {
                van: pos.van.clone(),
                at_ms: r.at_ms,
                lat: at.lat,
                lon: at.lon,
                accuracy_m: fix.accuracy_m,
                speed_mps: r.speed_cms.map(|v| f64::from(v) / 100.0),
                course_deg: r.course_cdeg.map(|v| f64::from(v) / 100.0),
                active_case: case.map(|d| CaseId::from_bytes(d.0).to_string()),
                received_s: now_s(),
                zones: inside,
            },
        );
        for (d, zones) in decisions {
            if let Err(e) = self.decided(pos, &d, &zones) {
                tracing::error!(error = %e, van = %pos.van, "could not record a geofence decision");
            }
        }
    }

    fn audit(&self, action: &str, case: Option<String>, detail: String) -> Result<(), StorageError> {
        self.identity.storage().audit(&audit::Record {
            at: now_s() * 1000,
            actor: SYSTEM.into(),
            action: action.into(),
            case_id: case,
            outcome: audit::Outcome::Allowed,
            detail,
        })
    }

    /// Whether the van may name `doc` as its active case (its organisation's, created by or
    /// assigned to it), read from storage at most every [`ENTITLED_TTL`] per van and case.
    fn entitled(&self, pos: &VanPosition, doc: DocId) -> bool {
        let key = (pos.org.clone(), pos.van.clone(), doc);
        if let Some((ok, at)) = lock(&self.entitled).get(&key)
            && at.elapsed() < ENTITLED_TTL
        {
            return *ok;
        }
        let ok = match self.cases.storage().case_meta(doc) {
            Ok(meta) => meta.is_some_and(|m| m.entitles(&pos.org, &pos.van)),
            // Not known now: not trusted, and asked again next time.
            Err(_) => return false,
        };
        let mut cache = lock(&self.entitled);
        if cache.len() >= 10_000 {
            cache.retain(|_, (_, at)| at.elapsed() < ENTITLED_TTL);
        }
        cache.insert(key, (ok, Instant::now()));
        ok
    }

    fn decided(&self, pos: &VanPosition, d: &Decision, zones: &[Zone]) -> Result<(), StorageError> {
        let name = |id: &str| zones.iter().find(|z| z.id == id).map(|z| z.name.clone()).unwrap_or_default();
        match d {
            Decision::Entered { zone, at_ms } => self.audit(
                "geofence.enter",
                None,
                format!("org={} van={} zone={zone} ({}) at={}", pos.org, pos.van, name(zone), rfc3339(*at_ms)),
            ),
            Decision::Left { zone, at_ms } => self.audit(
                "geofence.leave",
                None,
                format!("org={} van={} zone={zone} ({}) at={}", pos.org, pos.van, name(zone), rfc3339(*at_ms)),
            ),
            Decision::Alert { zone, case, at_ms } => {
                let Some(z) = zones.iter().find(|z| &z.id == zone) else { return Ok(()) };
                self.alert(pos, z, CaseId::from_bytes(*case), *at_ms)
            }
        }
    }

    fn alert(&self, pos: &VanPosition, zone: &Zone, case: CaseId, at_ms: i64) -> Result<(), StorageError> {
        let storage = self.identity.storage();
        let vault = Vault { storage: &*storage, sealer: self.identity.sealer() };
        let id = format!("{case}/{}", zone.id);
        if vault.load::<Alert>(ALERT, &id)?.is_some() {
            return self.audit(
                "geofence.alert",
                Some(case.to_string()),
                format!("zone={} van={}: not raised again (this case already alerted this zone)", zone.id, pos.van),
            );
        }
        let summary = self.summary(&pos.org, case);
        let alert = Alert {
            zone_id: zone.id.clone(),
            zone_name: zone.name.clone(),
            case_id: case.to_string(),
            van: pos.van.clone(),
            entered_at: rfc3339(at_ms),
            raised_at: rfc3339(now_s() * 1000),
            team: zone.team.clone(),
            summary,
        };
        let rec = audit::Record {
            at: now_s() * 1000,
            actor: SYSTEM.into(),
            action: "geofence.alert".into(),
            case_id: Some(case.to_string()),
            outcome: audit::Outcome::Allowed,
            detail: format!("zone={} ({}) van={} team={}", zone.id, zone.name, pos.van, zone.team.join(",")),
        };
        // Created only if absent: two hub processes, or a restart, raise it once.
        match vault.store(ALERT, &id, &pos.org, 0, &alert, Some(&rec)) {
            Ok(_) => {
                tracing::info!(case = %case, zone = %zone.name, van = %pos.van, "pre-arrival alert raised");
                let _ = self.alerts.send((pos.org.clone(), alert));
                Ok(())
            }
            Err(StorageError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What the receiving team needs before the van arrives.
    fn summary(&self, org: &str, case: CaseId) -> serde_json::Value {
        let (Ok(user), Ok(org)) = (UserId::parse(SYSTEM), OrgId::parse(org)) else { return serde_json::Value::Null };
        let Ok(v) = self.cases.read_case(&user, &org, case) else { return serde_json::Value::Null };
        let f = |p: &str| v.fields.get(p).and_then(|x| x.get("value")).cloned().unwrap_or(serde_json::Value::Null);
        let last_vitals = v.vitals.last().cloned();
        serde_json::json!({
            "patient": {
                "age": f("patient.age"),
                "age_units": f("patient.age_units"),
                "sex": f("patient.sex"),
                "temp_id": v.temp_patient_id,
            },
            "chief_complaint": f("situation.chief_complaint"),
            "symptom_onset": f("situation.symptom_onset"),
            "primary_impression": f("situation.primary_impression"),
            "acuity": f("situation.acuity"),
            "status": v.status,
            "last_vitals": last_vitals,
        })
    }

    fn load_zones(&self, org: &str) -> Result<Vec<Zone>, StorageError> {
        let rows = self.identity.storage().identities(ZONE, org)?;
        let mut zones = Vec::with_capacity(rows.len());
        for row in rows {
            zones.push(crate::identity::records::open::<Zone>(self.identity.sealer(), &row)?);
        }
        zones.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(zones)
    }

    /// Forgets the cached zones of `org` (after a change through the API).
    fn zones_changed(&self, org: &str) {
        if let Some(s) = lock(&self.orgs).get_mut(org) {
            s.zones_read = None;
        }
    }

    /// Where a consult from `van` goes: the service areas the van is in and their
    /// doctors, or `None` for the regional pool (outside every service area, or no
    /// position known).
    pub fn consult_area(&self, org: &str, van: &str) -> Result<Option<ConsultArea>, StorageError> {
        let Some(pos) = lock(&self.latest).get(&(org.to_owned(), van.to_owned())).cloned() else { return Ok(None) };
        if now_s() - pos.received_s > ROUTE_POSITION_MAX_AGE_S {
            return Ok(None);
        }
        let zones = self.load_zones(org)?;
        let areas = policy::service_areas_at(&zones, LatLon { lat: pos.lat, lon: pos.lon });
        if areas.is_empty() {
            return Ok(None);
        }
        let names = areas.iter().map(|z| z.name.clone()).collect();
        let mut doctors: Vec<String> = areas.iter().flat_map(|z| z.doctors.iter().cloned()).collect();
        doctors.sort();
        doctors.dedup();
        Ok(Some(ConsultArea { areas: names, doctors }))
    }
}

/// The routes of this module.
pub(crate) fn routes() -> crate::Routes {
    crate::Routes::default()
        .route("/api/v1/geofences", get(list_zones).post(create_zone))
        .route("/api/v1/geofences/{id}", get(read_zone).put(update_zone).delete(delete_zone))
        .route("/api/v1/fleet/positions", get(positions))
        .route("/api/v1/alerts", get(alerts))
}

fn service(state: &HubState) -> Result<Arc<Geo>, ApiError> {
    state.geo.clone().ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "this hub is not serving vans".into()))
}

fn storage_error(e: StorageError) -> ApiError {
    tracing::error!(error = %e, "geofence storage failed");
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "the hub could not reach its storage; try again".into())
}

async fn list_zones(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::ZoneRead)?;
    let geo = service(&state)?;
    let zones = blocking(move || geo.load_zones(p.org.as_str()).map_err(storage_error)).await?;
    Ok(axum::Json(zones).into_response())
}

async fn read_zone(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, Permission::ZoneRead)?;
    let geo = service(&state)?;
    let zones = blocking(move || geo.load_zones(p.org.as_str()).map_err(storage_error)).await?;
    let zone = zones.into_iter().find(|z| z.id == id).ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(zone).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("there is no geofence {}", id.chars().take(64).collect::<String>()))
}

fn parse_zone(body: &[u8]) -> Result<Zone, ApiError> {
    let zone: Zone = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be a zone: {{\"name\", \"kind\": \"service_area\" or \"hospital_approach\", \"shape\": {{\"type\": \"circle\", \"center\": {{\"lat\", \"lon\"}}, \"radius_m\"}} or {{\"type\": \"polygon\", \"points\": [...]}}, \"team\" or \"doctors\"}}: {e}"
            ),
        )
    })?;
    policy::check(&zone)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("the zone is not usable: {e}")))?;
    Ok(zone)
}

/// Writes a zone: a new one if `body` is `Err` (already parsed), else the existing `id`,
/// which must exist before its new body is even looked at.
fn write_zone(geo: &Geo, p: &Principal, id: String, body: Result<Zone, Vec<u8>>) -> Result<Zone, ApiError> {
    let storage = geo.identity.storage();
    let vault = Vault { storage: &*storage, sealer: geo.identity.sealer() };
    let key = format!("{}/{id}", p.org);
    let existing = vault.load::<Zone>(ZONE, &key).map_err(storage_error)?;
    let (mut zone, version, action) = match (body, existing) {
        (Ok(zone), None) => (zone, 0, "geofence.create"),
        (Ok(_), Some(_)) => return Err(ApiError(StatusCode::CONFLICT, "that id is taken; try again".into())),
        (Err(_), None) => return Err(not_found(&id)),
        (Err(bytes), Some((_, v))) => (parse_zone(&bytes)?, v, "geofence.update"),
    };
    zone.id = id;
    let rec = audit::Record {
        at: now_s() * 1000,
        actor: p.user.to_string(),
        action: action.into(),
        case_id: None,
        outcome: audit::Outcome::Allowed,
        detail: format!("zone={} ({}) kind={:?}", zone.id, zone.name, zone.kind),
    };
    match vault.store(ZONE, &key, p.org.as_str(), version, &zone, Some(&rec)) {
        Ok(_) => {
            geo.zones_changed(p.org.as_str());
            Ok(zone)
        }
        Err(StorageError::Conflict) => {
            Err(ApiError(StatusCode::CONFLICT, "the zone changed meanwhile; reload it and try again".into()))
        }
        Err(e) => Err(storage_error(e)),
    }
}

async fn create_zone(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&p, Permission::ZoneAdmin)?;
    let geo = service(&state)?;
    let zone = parse_zone(&body)?;
    let id = format!("z-{}", hex::encode(rand::random::<[u8; 8]>()));
    let zone = blocking(move || write_zone(&geo, &p, id, Ok(zone))).await?;
    Ok((StatusCode::CREATED, axum::Json(zone)).into_response())
}

async fn update_zone(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&p, Permission::ZoneAdmin)?;
    let geo = service(&state)?;
    let zone = blocking(move || write_zone(&geo, &p, id, Err(body.to_vec()))).await?;
    Ok(axum::Json(zone).into_response())
}

async fn delete_zone(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, Permission::ZoneAdmin)?;
    let geo = service(&state)?;
    blocking(move || {
        let rec = audit::Record {
            at: now_s() * 1000,
            actor: p.user.to_string(),
            action: "geofence.delete".into(),
            case_id: None,
            outcome: audit::Outcome::Allowed,
            detail: format!("zone={id}"),
        };
        let gone = geo.identity.storage().delete_identity(ZONE, &format!("{}/{id}", p.org), Some(&rec));
        match gone {
            Ok(true) => {
                geo.zones_changed(p.org.as_str());
                Ok(())
            }
            Ok(false) => Err(not_found(&id)),
            Err(e) => Err(storage_error(e)),
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The organisation's vans where they last reported (for the map). A van's active case
/// id is shown; reading it needs the case permission as always.
async fn positions(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::CaseRead)?;
    let geo = service(&state)?;
    let mut vans: Vec<VanOnMap> =
        lock(&geo.latest).iter().filter(|((org, _), _)| org == p.org.as_str()).map(|(_, v)| v.clone()).collect();
    vans.sort_by(|a, b| a.van.cmp(&b.van));
    Ok(axum::Json(vans).into_response())
}

/// Pre-arrival alerts of the last 12 hours for the caller: those of zones whose receiving
/// team they are in.
/// Each case shown is written to the audit log as seen by the caller.
async fn alerts(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::CaseRead)?;
    let geo = service(&state)?;
    let list = blocking(move || {
        let storage = geo.identity.storage();
        let mut out = Vec::new();
        let since = rfc3339(now_s() * 1000 - ALERTS_SHOWN_FOR_MS);
        for row in storage.identities(ALERT, p.org.as_str()).map_err(storage_error)? {
            let a: Alert = crate::identity::records::open(geo.identity.sealer(), &row).map_err(storage_error)?;
            if a.team.iter().any(|u| u == p.user.as_str()) && a.raised_at >= since {
                out.push(a);
            }
        }
        out.sort_by(|a, b| b.raised_at.cmp(&a.raised_at));
        for a in &out {
            let rec = audit::Record {
                at: now_s() * 1000,
                actor: p.user.to_string(),
                action: "geofence.alert.read".into(),
                case_id: Some(a.case_id.clone()),
                outcome: audit::Outcome::Allowed,
                detail: format!("zone={}", a.zone_id),
            };
            storage.audit(&rec).map_err(storage_error)?;
        }
        Ok(out)
    })
    .await?;
    Ok(axum::Json(list).into_response())
}
