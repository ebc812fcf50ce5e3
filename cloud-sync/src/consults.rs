//! Consult routing. A crew's request for a doctor (a `request_consult` edit from the van)
//! goes to the on-call doctors of the van's organisation; one of them claims it (the first
//! claim wins, across hub processes: claims are written with optimistic versions); a
//! request nobody claimed within `escalate_after_s` escalates to every doctor of the
//! organisation, and so does one made while nobody is on call. The doctor answers with a
//! note on the case that names the consult (`add_note` with `consult_id`), which marks it
//! answered and reaches the van with the sync.
//!
//! `GET /api/v1/events` streams (Server-Sent Events) the ids of the caller's organisation's
//! cases as they change, and a tick every 15 s, so the doctor's queue updates by itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use case_model::{CaseId, CaseView};
use serde::{Deserialize, Serialize};

use crate::front_door::{Caller, now_s, require};
use crate::identity::records::Vault;
use crate::identity::roles::Permission;
use crate::storage::StorageError;
use crate::{ApiError, HubState, api_blocking as blocking};

/// Record kinds (sealed rows beside the accounts).
const CLAIM: &str = "consult_claim";
const ON_CALL: &str = "on_call";
const ROUTE: &str = "consult_route";

/// The `[consults]` config table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsultConfig {
    /// A request nobody claimed for this long goes to every doctor, seconds.
    pub escalate_after_s: i64,
    /// Going on call lasts this long (a shift), hours: a doctor who went home without going
    /// off call stops getting requests then, and the others get them instead.
    pub on_call_hours: i64,
}

impl Default for ConsultConfig {
    fn default() -> Self {
        ConsultConfig { escalate_after_s: 120, on_call_hours: 12 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    by: String,
    at: i64,
}

/// Where a request was sent, decided once, when the hub first routes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Route {
    /// The service areas the van was in; empty: the regional pool.
    areas: Vec<String>,
    /// Their doctors.
    doctors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OnCall {
    on_call: bool,
    since: i64,
}

/// One request in a doctor's queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    /// The case.
    pub case_id: String,
    /// The request (its item id in the case).
    pub consult_id: String,
    /// The van that asked.
    pub van: String,
    /// What the crew asked.
    pub reason: String,
    /// `routine`, `urgent` or `emergent`.
    pub urgency: String,
    /// Who asked, and when (RFC 3339).
    pub requested_by: String,
    /// When it was asked.
    pub requested_at: String,
    /// `waiting`, `claimed` or `answered`.
    pub state: &'static str,
    /// The doctor who claimed it.
    pub claimed_by: Option<String>,
    /// Whether it went to every doctor (nobody claimed it in time, or nobody is on call).
    pub escalated: bool,
    /// The patient as the case names them, and the complaint.
    pub patient: String,
    /// The chief complaint.
    pub chief_complaint: Option<String>,
    /// How many images the case has.
    pub images: usize,
    /// Where it was routed: the service areas the van was in, or `regional` (the van was
    /// outside every service area, or its position was not known).
    pub pool: String,
}

/// The routes of this module.
pub(crate) fn routes() -> crate::Routes {
    crate::Routes::default()
        .route("/api/v1/consults", get(queue))
        .route("/api/v1/consults/on-call", put(set_on_call).get(on_call))
        .route("/api/v1/consults/{case}/{consult}/claim", post(claim))
        .route("/api/v1/events", get(events))
}

fn parts(state: &HubState) -> Result<(Arc<crate::cases::CaseHub>, Arc<crate::identity::Identity>), ApiError> {
    match (&state.cases, &state.identity) {
        (Some(c), Some(i)) => Ok((c.clone(), i.clone())),
        _ => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "this hub is not serving cases".into())),
    }
}

fn storage_error(e: StorageError) -> ApiError {
    tracing::error!(error = %e, "consult storage failed");
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "the hub could not reach its storage; try again".into())
}

fn text(item: &case_model::Item, key: &str) -> String {
    item.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned()
}

/// The organisation's doctors on call at `now`, each with when that lapses: going on call
/// lasts `lasts_s`.
fn on_call_doctors(
    identity: &crate::identity::Identity,
    org: &str,
    lasts_s: i64,
    now: i64,
) -> Result<Vec<(String, i64)>, StorageError> {
    let mut out = Vec::new();
    for row in identity.storage().identities(ON_CALL, org)? {
        let oc: OnCall = crate::identity::records::open(identity.sealer(), &row)?;
        let until = oc.since.saturating_add(lasts_s);
        if oc.on_call && now < until {
            out.push((row.id.rsplit('/').next().unwrap_or("").to_owned(), until));
        }
    }
    out.sort();
    Ok(out)
}

/// Where a request goes: decided the first time the hub routes it, from where the van
/// was then (its service areas' doctors, or the regional pool), stored, and audited.
fn route(
    vault: &Vault<'_>,
    geo: Option<&crate::geo::Geo>,
    org: &str,
    v: &CaseView,
    consult_id: &str,
) -> Result<Route, StorageError> {
    let id = format!("{}/{consult_id}", v.id);
    if let Some((r, _)) = vault.load::<Route>(ROUTE, &id)? {
        return Ok(r);
    }
    let found = match geo {
        Some(g) => g.consult_area(org, v.van.as_str())?,
        None => None,
    };
    // No recent position known here (the van is offline, or connected to another hub
    // process): the regional pool for now, decided again on the next read rather than stored.
    let Some(found) = found else { return Ok(Route { areas: Vec::new(), doctors: Vec::new() }) };
    let r = Route { areas: found.areas, doctors: found.doctors };
    let rec = audit::Record {
        at: now_s() * 1000,
        actor: "system:geofence".into(),
        action: "geofence.route".into(),
        case_id: Some(v.id.to_string()),
        outcome: audit::Outcome::Allowed,
        detail: if r.areas.is_empty() {
            format!(
                "consult={consult_id} van={}: outside every service area (or position unknown): regional pool",
                v.van
            )
        } else {
            format!("consult={consult_id} van={}: service area {} ({})", v.van, r.areas.join(", "), r.doctors.join(","))
        },
    };
    match vault.store(ROUTE, &id, org, 0, &r, Some(&rec)) {
        Ok(_) => Ok(r),
        // Routed by another process at the same moment: theirs stands.
        Err(StorageError::Conflict) => Ok(vault.load::<Route>(ROUTE, &id)?.map(|(r, _)| r).unwrap_or(r)),
        Err(e) => Err(e),
    }
}

/// The queue for `user`: what routing gives them now.
fn build_queue(
    views: &[CaseView],
    identity: &crate::identity::Identity,
    geo: Option<&crate::geo::Geo>,
    org: &str,
    user: &str,
    config: &ConsultConfig,
    now: i64,
) -> Result<Vec<QueueItem>, StorageError> {
    let escalate_after_s = config.escalate_after_s;
    let storage = identity.storage();
    let vault = Vault { storage: &*storage, sealer: identity.sealer() };
    let on_call: Vec<String> =
        on_call_doctors(identity, org, config.on_call_hours * 3600, now)?.into_iter().map(|(d, _)| d).collect();
    let me_on_call = on_call.iter().any(|d| d == user);
    let mut out = Vec::new();
    for v in views {
        for c in &v.consults {
            let consult_id = text(c, "id");
            let answered = v.notes.iter().any(|n| n.get("consult_id").and_then(|x| x.as_str()) == Some(&consult_id));
            let claim = vault.load::<Claim>(CLAIM, &format!("{}/{consult_id}", v.id))?.map(|(c, _)| c);
            let requested_at = text(c, "at");
            let asked_s = time::OffsetDateTime::parse(&requested_at, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(now);
            let route = route(&vault, geo, org, v, &consult_id)?;
            // The on-call doctors of the van's service areas, or every on-call doctor for
            // the regional pool.
            let targets: Vec<&String> =
                on_call.iter().filter(|d| route.areas.is_empty() || route.doctors.contains(d)).collect();
            let escalated = claim.is_none() && !answered && (targets.is_empty() || now - asked_s >= escalate_after_s);
            let mine = claim.as_ref().is_some_and(|c| c.by == user);
            // Routing: the targeted on-call doctors see the request; the others see what
            // escalated and what they claimed.
            if !((me_on_call && targets.iter().any(|d| *d == user)) || escalated || mine) {
                continue;
            }
            let f = |path: &str| {
                v.fields.get(path).and_then(|x| x.get("value")).and_then(|x| x.as_str()).map(str::to_owned)
            };
            let patient =
                [f("patient.first_name"), f("patient.last_name")].into_iter().flatten().collect::<Vec<_>>().join(" ");
            out.push(QueueItem {
                case_id: v.id.to_string(),
                consult_id,
                van: v.van.to_string(),
                reason: text(c, "reason"),
                urgency: c.get("urgency").and_then(|x| x.as_str()).unwrap_or("routine").to_owned(),
                requested_by: text(c, "by"),
                requested_at,
                state: if answered {
                    "answered"
                } else if claim.is_some() {
                    "claimed"
                } else {
                    "waiting"
                },
                claimed_by: claim.map(|c| c.by),
                escalated,
                patient: if patient.is_empty() { v.temp_patient_id.clone().unwrap_or_default() } else { patient },
                chief_complaint: f("situation.chief_complaint"),
                images: v
                    .attachments
                    .iter()
                    .filter(|a| a.get("media_type").and_then(|m| m.as_str()) == Some("application/dicom"))
                    .count(),
                pool: if route.areas.is_empty() { "regional".into() } else { route.areas.join(", ") },
            });
        }
    }
    // Unanswered first, the most urgent and oldest first among them.
    let rank = |u: &str| match u {
        "emergent" => 0,
        "urgent" => 1,
        _ => 2,
    };
    out.sort_by(|a, b| {
        (a.state == "answered", rank(&a.urgency), &a.requested_at).cmp(&(
            b.state == "answered",
            rank(&b.urgency),
            &b.requested_at,
        ))
    });
    Ok(out)
}

async fn queue(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::ConsultAnswer)?;
    let (cases, identity) = parts(&state)?;
    let config = state.consults.clone();
    let geo = state.geo.clone();
    let list = blocking(move || {
        let views = cases.consulting_cases(&p.user, &p.org).map_err(ApiError::from)?;
        build_queue(&views, &identity, geo.as_deref(), p.org.as_str(), p.user.as_str(), &config, now_s())
            .map_err(storage_error)
    })
    .await?;
    Ok(axum::Json(list).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnCallRequest {
    on_call: bool,
}

/// A doctor goes on call (requests come to them) or off call.
async fn set_on_call(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&p, Permission::ConsultAnswer)?;
    let req: OnCallRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, format!("the body must be JSON like {{\"on_call\": true}}: {e}"))
    })?;
    let (_, identity) = parts(&state)?;
    blocking(move || {
        let storage = identity.storage();
        let vault = Vault { storage: &*storage, sealer: identity.sealer() };
        let id = format!("{}/{}", p.org, p.user);
        loop {
            let version = vault.load::<OnCall>(ON_CALL, &id).map_err(storage_error)?.map_or(0, |(_, v)| v);
            let rec = audit::Record {
                at: now_s() * 1000,
                actor: p.user.to_string(),
                action: "consult.on_call".into(),
                case_id: None,
                outcome: audit::Outcome::Allowed,
                detail: format!("on_call={}", req.on_call),
            };
            let body = OnCall { on_call: req.on_call, since: now_s() };
            match vault.store(ON_CALL, &id, p.org.as_str(), version, &body, Some(&rec)) {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(storage_error(e)),
            }
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether the caller is on call, and who is.
async fn on_call(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::ConsultAnswer)?;
    let (_, identity) = parts(&state)?;
    let (org, user) = (p.org.to_string(), p.user.to_string());
    let lasts_s = state.consults.on_call_hours * 3600;
    let doctors = blocking(move || on_call_doctors(&identity, &org, lasts_s, now_s()).map_err(storage_error)).await?;
    let mine = doctors.iter().find(|(d, _)| *d == user).map(|(_, until)| *until);
    let names: Vec<&str> = doctors.iter().map(|(d, _)| d.as_str()).collect();
    Ok(axum::Json(serde_json::json!({
        "on_call": mine.is_some(),
        "on_call_until": mine,
        "doctors_on_call": names,
    }))
    .into_response())
}

/// A doctor takes a request: the first claim wins; a second doctor gets 409 naming who has it.
async fn claim(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path((case, consult)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require(&p, Permission::ConsultAnswer)?;
    let (cases, identity) = parts(&state)?;
    let what = format!("there is no consult {consult} on case {case}");
    let not_found = move || ApiError(StatusCode::NOT_FOUND, what.clone());
    let case_id = CaseId::parse(&case).map_err(|_| not_found())?;
    let (user, org) = (p.user.clone(), p.org.clone());
    let claimed = blocking(move || {
        // The case must be the caller's organisation's and carry the request (a read, audited).
        let view = cases.read_case(&user, &org, case_id).map_err(ApiError::from)?;
        if !view.consults.iter().any(|c| c.get("id").and_then(|x| x.as_str()) == Some(consult.as_str())) {
            return Err(not_found());
        }
        let storage = identity.storage();
        let vault = Vault { storage: &*storage, sealer: identity.sealer() };
        let id = format!("{case_id}/{consult}");
        let rec = audit::Record {
            at: now_s() * 1000,
            actor: user.to_string(),
            action: "consult.claim".into(),
            case_id: Some(case_id.to_string()),
            outcome: audit::Outcome::Allowed,
            detail: format!("consult={consult}"),
        };
        let mine = Claim { by: user.to_string(), at: now_s() };
        match vault.store(CLAIM, &id, org.as_str(), 0, &mine, Some(&rec)) {
            Ok(_) => Ok(mine),
            Err(StorageError::Conflict) => {
                let theirs = vault.load::<Claim>(CLAIM, &id).map_err(storage_error)?.map(|(c, _)| c);
                match theirs {
                    Some(c) if c.by == user.as_str() => Ok(c),
                    Some(c) => Err(ApiError(StatusCode::CONFLICT, format!("{} claimed this consult already", c.by))),
                    None => Err(ApiError(
                        StatusCode::CONFLICT,
                        "someone claimed this consult at the same moment; reload".into(),
                    )),
                }
            }
            Err(e) => Err(storage_error(e)),
        }
    })
    .await?;
    Ok(axum::Json(serde_json::json!({ "claimed_by": claimed.by, "claimed_at": claimed.at })).into_response())
}

/// How often an event stream looks at its caller's login again.
const LOGIN_RECHECK: Duration = Duration::from_secs(10);

/// Changes to the caller's organisation's cases as they happen (Server-Sent Events): an
/// event `case` with the case id, and a `tick` every 15 s (escalations are due by time). The
/// stream ends within [`LOGIN_RECHECK`] of the caller's login ending.
async fn events(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::CaseRead)?;
    let (cases, _) = parts(&state)?;
    let mut rx = cases.changes().subscribe();
    let mut closing = state.closing.subscribe();
    if *closing.borrow() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is shutting down; try again in a moment".into(),
        ));
    }
    let org = p.org.clone();
    let user = p.user.to_string();
    let mut alerts = state.geo.as_ref().map(|g| g.alerts());
    let storage = state.identity.as_ref().map(|i| i.storage());
    let identity = state.identity.clone();
    let stream = async_stream(move |tx| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        // The login is looked at again as the stream goes: one that ended (logged out
        // elsewhere, disabled) ends the stream, and the page's reconnection is refused.
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + LOGIN_RECHECK, LOGIN_RECHECK);
        loop {
            let next_alert = async {
                match alerts.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                // The hub is shutting down: end the stream (the browser reconnects to the next).
                _ = closing.changed() => return,
                got = next_alert => match got {
                    // A pre-arrival alert for a team the caller is in: the alert itself
                    // (it names the patient), audited as a read.
                    Ok((alert_org, alert)) if alert_org == org.as_str() && alert.team.contains(&user) => {
                        let rec = audit::Record {
                            at: now_s() * 1000,
                            actor: user.clone(),
                            action: "geofence.alert.read".into(),
                            case_id: Some(alert.case_id.clone()),
                            outcome: audit::Outcome::Allowed,
                            detail: format!("zone={} (event stream)", alert.zone_id),
                        };
                        let Some(storage) = storage.clone() else { continue };
                        let audited = tokio::task::spawn_blocking(move || storage.audit(&rec)).await;
                        if !matches!(audited, Ok(Ok(()))) {
                            // Not recorded, not shown: the page finds it at /api/v1/alerts.
                            continue;
                        }
                        Event::default().event("alert").data(serde_json::to_string(&alert).unwrap_or_default())
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::default().event("tick").data("lagged"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        alerts = None;
                        continue;
                    }
                },
                _ = tick.tick() => Event::default().event("tick").data(now_s().to_string()),
                _ = recheck.tick() => {
                    let Some(identity) = identity.clone() else { continue };
                    let who = p.clone();
                    let stands = tokio::task::spawn_blocking(move || identity.still_stands(&who, now_s())).await;
                    // A storage failure is not a logout.
                    if matches!(stands, Ok(Ok(false))) {
                        return;
                    }
                    continue;
                }
                got = rx.recv() => match got {
                    Ok(doc) => {
                        let cases = cases.clone();
                        let owner = tokio::task::spawn_blocking(move || cases.org_of(doc)).await.ok().and_then(Result::ok).flatten();
                        if owner.as_deref() != Some(org.as_str()) {
                            continue;
                        }
                        Event::default().event("case").data(case_model::CaseId::from_bytes(doc.0).to_string())
                    }
                    // Fell behind: tell the page to reload everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::default().event("tick").data("lagged"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// A stream fed by a task: the task ends when the client goes.
fn async_stream<F, Fut>(f: F) -> impl futures_core::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Receiver(rx)
}

struct Receiver(tokio::sync::mpsc::Receiver<Result<Event, Infallible>>);

impl futures_core::Stream for Receiver {
    type Item = Result<Event, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
