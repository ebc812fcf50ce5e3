//! DICOMweb (DICOM PS3.18) on the hub, so standard viewers and PACS can use the vans'
//! images: STOW-RS stores, QIDO-RS searches, WADO-RS retrieves instances, metadata and bulk
//! data. Every request names its caller by bearer token and sees that caller's organisation
//! only; every search, retrieval and store is audited. The rules are in [`crate::dicom`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imaging::read::EXPLICIT_VR_LITTLE_ENDIAN;
use serde_json::{Map, Value as Json, json};

use crate::dicom::{InstanceView, MAX_OBJECT, Refusal, status};
use crate::front_door::{Caller, require};
use crate::identity::Principal;
use crate::identity::roles::Permission;
use crate::{ApiError, HubState, case_hub};

/// Media type of DICOM JSON.
const DICOM_JSON: &str = "application/dicom+json";
/// The largest STOW-RS request.
const MAX_REQUEST: usize = 256 * 1024 * 1024;

pub(crate) fn routes() -> crate::Routes {
    crate::Routes::default()
        .route("/dicomweb/studies", get(search_studies).post(stow))
        .route("/dicomweb/series", get(search_series))
        .route("/dicomweb/instances", get(search_instances))
        .route("/dicomweb/studies/{study}", get(retrieve_study).post(stow_to_study))
        .route("/dicomweb/studies/{study}/metadata", get(study_metadata))
        .route("/dicomweb/studies/{study}/series", get(search_series_of_study))
        .route("/dicomweb/studies/{study}/instances", get(search_instances_of_study))
        .route("/dicomweb/studies/{study}/series/{series}", get(retrieve_series))
        .route("/dicomweb/studies/{study}/series/{series}/metadata", get(series_metadata))
        .route("/dicomweb/studies/{study}/series/{series}/instances", get(search_instances_of_series))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}", get(retrieve_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata", get(instance_metadata))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010", get(pixel_bulkdata))
        .map(|r| r.layer(DefaultBodyLimit::max(MAX_REQUEST)))
}

/// Which resources a request is about.
#[derive(Debug, Clone, Default)]
struct Scope {
    study: Option<String>,
    series: Option<String>,
    sop: Option<String>,
}

impl Scope {
    fn holds(&self, i: &InstanceView) -> bool {
        self.study.as_ref().is_none_or(|s| *s == i.row.study)
            && self.series.as_ref().is_none_or(|s| *s == i.row.series)
            && self.sop.as_ref().is_none_or(|s| *s == i.row.sop)
    }
}

async fn instances(state: &HubState, c: &Principal, scope: &Scope) -> Result<Vec<InstanceView>, ApiError> {
    let hub = case_hub(state)?;
    let (org, study) = (c.org.clone(), scope.study.clone());
    let all = crate::blocking(move || hub.dicom_instances(&org, study.as_deref())).await?;
    Ok(all.into_iter().filter(|i| scope.holds(i)).collect())
}

/// Audits an access to the cases the instances belong to (one entry per case, as the case
/// API does) and one entry for the request.
async fn audit(
    state: &HubState,
    c: &Principal,
    action: &str,
    found: &[InstanceView],
    detail: String,
) -> Result<(), ApiError> {
    let hub = case_hub(state)?;
    let cases: BTreeSet<Option<String>> = found.iter().map(|i| i.row.case_id.clone()).collect();
    let (user, action) = (c.user.as_str().to_owned(), action.to_owned());
    crate::blocking(move || {
        for case in cases.iter().flatten() {
            hub.audit_dicom(&user, Some(case), audit::Outcome::Allowed, format!("{action} {detail}"))?;
        }
        hub.audit_dicom(&user, None, audit::Outcome::Allowed, format!("{action} {detail}"))?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------- QIDO-RS

/// Keywords QIDO-RS callers use, with their tags.
const KEYWORDS: &[(&str, &str)] = &[
    ("StudyDate", "00080020"),
    ("StudyTime", "00080030"),
    ("AccessionNumber", "00080050"),
    ("ModalitiesInStudy", "00080061"),
    ("ReferringPhysicianName", "00080090"),
    ("StudyDescription", "00081030"),
    ("PatientName", "00100010"),
    ("PatientID", "00100020"),
    ("PatientBirthDate", "00100030"),
    ("PatientSex", "00100040"),
    ("StudyInstanceUID", "0020000D"),
    ("StudyID", "00200010"),
    ("Modality", "00080060"),
    ("SeriesDescription", "0008103E"),
    ("BodyPartExamined", "00180015"),
    ("SeriesInstanceUID", "0020000E"),
    ("SeriesNumber", "00200011"),
    ("SOPClassUID", "00080016"),
    ("SOPInstanceUID", "00080018"),
    ("InstanceNumber", "00200013"),
    ("Rows", "00280010"),
    ("Columns", "00280011"),
    ("ImageLaterality", "00200062"),
    ("ViewPosition", "00185101"),
];

const STUDY_ATTRS: &[&str] = &[
    "00080005", "00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020", "00100030",
    "00100040", "0020000D", "00200010",
];
const SERIES_ATTRS: &[&str] = &["00080005", "00080060", "0008103E", "00180015", "0020000D", "0020000E", "00200011"];
const INSTANCE_ATTRS: &[&str] = &[
    "00080005", "00080016", "00080018", "0020000D", "0020000E", "00200013", "00200062", "00185101", "00280010",
    "00280011", "00280100",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Study,
    Series,
    Instance,
}

#[derive(Debug, Default)]
struct Search {
    filters: Vec<(String, String)>,
    include: BTreeSet<String>,
    include_all: bool,
    limit: Option<usize>,
    offset: usize,
}

fn tag_of(key: &str) -> Option<String> {
    if key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(key.to_ascii_uppercase());
    }
    KEYWORDS.iter().find(|(k, _)| *k == key).map(|(_, t)| (*t).to_owned())
}

fn parse_search(params: Vec<(String, String)>) -> Result<Search, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let mut s = Search::default();
    for (key, value) in params {
        match key.as_str() {
            "limit" => s.limit = Some(value.parse().map_err(|_| bad(format!("limit={value} is not a number")))?),
            "offset" => s.offset = value.parse().map_err(|_| bad(format!("offset={value} is not a number")))?,
            "fuzzymatching" => {}
            "includefield" => {
                for f in value.split(',') {
                    if f == "all" {
                        s.include_all = true;
                    } else if let Some(tag) = tag_of(f) {
                        s.include.insert(tag);
                    }
                    // An attribute this service does not know is left out, as PS3.18 allows.
                }
            }
            _ => {
                let tag = tag_of(&key).ok_or_else(|| {
                    bad(format!(
                        "{key} is not a query key this service knows; use a tag (00100020) or one of: {}",
                        KEYWORDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                s.filters.push((tag, value));
            }
        }
    }
    Ok(s)
}

/// The attribute's values as strings (a person name by its alphabetic form).
fn values(attrs: &Map<String, Json>, tag: &str) -> Vec<String> {
    let Some(v) = attrs.get(tag).and_then(|e| e.get("Value")).and_then(Json::as_array) else { return Vec::new() };
    v.iter()
        .map(|x| match x {
            Json::String(s) => s.clone(),
            Json::Object(o) => o.get("Alphabetic").and_then(Json::as_str).unwrap_or("").to_owned(),
            other => other.to_string(),
        })
        .collect()
}

fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// PS3.4 C.2.2.2 matching: universal (empty), UID lists, date and time ranges, wildcards
/// (person names case-insensitively), single values.
fn matches(attrs: &Map<String, Json>, tag: &str, query: &str) -> bool {
    if query.is_empty() {
        return true;
    }
    let have = values(attrs, tag);
    let vr = attrs.get(tag).and_then(|e| e.get("vr")).and_then(Json::as_str).unwrap_or("");
    let any = |f: &dyn Fn(&str) -> bool| have.iter().any(|h| f(h));
    match vr {
        "UI" => query.split(['\\', ',']).any(|q| any(&|h| h == q)),
        "DA" | "TM" | "DT" if query.contains('-') => {
            let (from, to) = query.split_once('-').unwrap_or((query, query));
            any(&|h| (from.is_empty() || h >= from) && (to.is_empty() || h <= to))
        }
        "PN" => {
            let q = query.to_lowercase();
            any(&|h| wildcard(&q, &h.to_lowercase()))
        }
        _ if query.contains(['*', '?']) => any(&|h| wildcard(query, h)),
        _ => query.split('\\').any(|q| any(&|h| h == q)),
    }
}

fn retrieve_url(base: &str, level: Level, i: &InstanceView) -> String {
    match level {
        Level::Study => format!("{base}/studies/{}", i.row.study),
        Level::Series => format!("{base}/studies/{}/series/{}", i.row.study, i.row.series),
        Level::Instance => {
            format!("{base}/studies/{}/series/{}/instances/{}", i.row.study, i.row.series, i.row.sop)
        }
    }
}

/// The service's root URL: the configured public URL, or as the caller reached it.
fn base_url(state: &HubState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.public_url {
        return format!("{u}/dicomweb");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{proto}://{host}/dicomweb")
}

fn number(tag: &str, vr: &str, n: usize) -> (String, Json) {
    (tag.to_owned(), json!({ "vr": vr, "Value": [n] }))
}

/// One result per study, series or instance that matches every filter.
fn search(found: &[InstanceView], level: Level, q: &Search, base: &str) -> Vec<Json> {
    let key = |i: &InstanceView| match level {
        Level::Study => i.row.study.clone(),
        Level::Series => format!("{}\0{}", i.row.study, i.row.series),
        Level::Instance => i.row.sop.clone(),
    };
    let mut groups: BTreeMap<String, Vec<&InstanceView>> = BTreeMap::new();
    let mut order = Vec::new();
    for i in found {
        let k = key(i);
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(i);
    }
    let attrs = match level {
        Level::Study => STUDY_ATTRS,
        Level::Series => SERIES_ATTRS,
        Level::Instance => INSTANCE_ATTRS,
    };
    let mut out = Vec::new();
    for k in order {
        let members = &groups[&k];
        let first = members[0];
        let mut result = Map::new();
        for tag in attrs.iter().copied().chain(q.include.iter().map(String::as_str)) {
            if let Some(v) = first.meta.get(tag) {
                result.insert(tag.to_owned(), v.clone());
            }
        }
        if q.include_all {
            for (tag, v) in &first.meta {
                result.entry(tag.clone()).or_insert_with(|| v.clone());
            }
        }
        let modalities: BTreeSet<String> = members.iter().flat_map(|m| values(&m.meta, "00080060")).collect();
        match level {
            Level::Study => {
                let series: BTreeSet<&str> = members.iter().map(|m| m.row.series.as_str()).collect();
                result.insert("00080061".into(), json!({ "vr": "CS", "Value": modalities }));
                let (t, v) = number("00201206", "IS", series.len());
                result.insert(t, v);
                let (t, v) = number("00201208", "IS", members.len());
                result.insert(t, v);
            }
            Level::Series => {
                let (t, v) = number("00201209", "IS", members.len());
                result.insert(t, v);
            }
            Level::Instance => {}
        }
        result.insert("00081190".into(), json!({ "vr": "UR", "Value": [retrieve_url(base, level, first)] }));
        // Every filter must match the result (study attributes on the study, and so on);
        // a computed attribute (modalities in study) matches any of its values.
        let ok = q.filters.iter().all(|(tag, query)| {
            if tag == "00080061" {
                return query.split(['\\', ',']).any(|m| modalities.contains(m));
            }
            members.iter().any(|m| matches(&m.meta, tag, query))
        });
        if ok {
            // The filtered attributes come back too.
            for (tag, _) in &q.filters {
                if let Some(v) = first.meta.get(tag) {
                    result.entry(tag.clone()).or_insert_with(|| v.clone());
                }
            }
            out.push(Json::Object(result));
        }
    }
    out.into_iter().skip(q.offset).take(q.limit.unwrap_or(usize::MAX)).collect()
}

fn dicom_json(body: Json) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON))], body.to_string()).into_response()
}

async fn qido(
    state: Arc<HubState>,
    c: Principal,
    headers: HeaderMap,
    scope: Scope,
    level: Level,
    params: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    require(&c, Permission::ImageRead)?;
    let q = parse_search(params)?;
    let found = instances(&state, &c, &scope).await?;
    // Searching inside a study or series the caller's organisation does not hold: that
    // resource does not exist for them (whether another organisation has it is not said).
    if scope.study.is_some() && found.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such study or series in your organisation".into()));
    }
    let results = search(&found, level, &q, &base_url(&state, &headers));
    // Audited per case shown; the filters are named, never their values (patient data).
    let keys: Vec<&str> = q.filters.iter().map(|(t, _)| t.as_str()).collect();
    let (uid_tag, uid_of): (&str, fn(&InstanceView) -> &str) = match level {
        Level::Study => ("0020000D", |i| &i.row.study),
        Level::Series => ("0020000E", |i| &i.row.series),
        Level::Instance => ("00080018", |i| &i.row.sop),
    };
    let shown_uids: BTreeSet<&str> = results
        .iter()
        .filter_map(|r| r.get(uid_tag).and_then(|e| e.get("Value")).and_then(|v| v[0].as_str()))
        .collect();
    let shown: Vec<InstanceView> = found.iter().filter(|i| shown_uids.contains(uid_of(i))).cloned().collect();
    audit(&state, &c, "dicom.search", &shown, format!("{} results, keys [{}]", results.len(), keys.join(","))).await?;
    Ok(dicom_json(Json::Array(results)))
}

async fn search_studies(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope::default(), Level::Study, p).await
}

async fn search_series(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope::default(), Level::Series, p).await
}

async fn search_instances(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope::default(), Level::Instance, p).await
}

async fn search_series_of_study(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope { study: Some(study), ..Scope::default() }, Level::Series, p).await
}

async fn search_instances_of_study(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope { study: Some(study), ..Scope::default() }, Level::Instance, p).await
}

async fn search_instances_of_series(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    Query(p): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    qido(s, c, headers, Scope { study: Some(study), series: Some(series), sop: None }, Level::Instance, p).await
}

// ---------------------------------------------------------------- WADO-RS

/// The transfer syntax the caller accepts for `multipart/related; type="application/dicom"`
/// (PS3.18 8.7.3): none named means Explicit VR Little Endian; `*` means as stored.
fn accepted_transfer_syntax(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Ok(Some(EXPLICIT_VR_LITTLE_ENDIAN.into()));
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let param = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        match media.as_str() {
            "*/*" | "multipart/*" => return Ok(Some(EXPLICIT_VR_LITTLE_ENDIAN.into())),
            "multipart/related" if param("type").is_none_or(|t| t == "application/dicom") => {
                return Ok(match param("transfer-syntax") {
                    None => Some(EXPLICIT_VR_LITTLE_ENDIAN.into()),
                    Some("*") => None,
                    Some(ts) => Some(ts.to_owned()),
                });
            }
            _ => {}
        }
    }
    Err(ApiError(
        StatusCode::NOT_ACCEPTABLE,
        "this resource is served as multipart/related; type=\"application/dicom\" (optionally with transfer-syntax=*, or a transfer syntax UID)".into(),
    ))
}

fn boundary() -> String {
    format!("medvan-{:032x}", rand::random::<u128>())
}

async fn wado(state: Arc<HubState>, c: Principal, headers: HeaderMap, scope: Scope) -> Result<Response, ApiError> {
    require(&c, Permission::ImageRead)?;
    let ts = accepted_transfer_syntax(&headers)?;
    let found = instances(&state, &c, &scope).await?;
    if found.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such study, series or instance in your organisation".into()));
    }
    audit(&state, &c, "dicom.retrieve", &found, format!("{} instances of study {}", found.len(), found[0].row.study))
        .await?;
    let hub = case_hub(&state)?;
    let b = boundary();
    let b2 = b.clone();
    let body = crate::blocking(move || {
        let mut body = Vec::new();
        for i in &found {
            let bytes = hub.dicom_bytes(&i.row)?;
            let (bytes, sent_ts) = match &ts {
                None => {
                    let stored = imaging::read::inspect(&bytes).map(|x| x.transfer_syntax).unwrap_or_default();
                    (bytes, stored)
                }
                Some(ts) => match imaging::read::transcode(&bytes, ts) {
                    Ok(out) => (out, ts.clone()),
                    Err(e) => return Ok(Err(e.to_string())),
                },
            };
            body.extend_from_slice(
                format!("--{b2}\r\nContent-Type: application/dicom; transfer-syntax={sent_ts}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(&bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{b2}--\r\n").as_bytes());
        Ok(Ok(body))
    })
    .await?
    .map_err(|e| {
        ApiError(StatusCode::NOT_ACCEPTABLE, format!("{e}; ask with transfer-syntax=* for the stored form"))
    })?;
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={b}");
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("multipart/related")))],
        body,
    )
        .into_response())
}

async fn retrieve_study(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path(study): Path<String>,
) -> Result<Response, ApiError> {
    wado(s, c, headers, Scope { study: Some(study), ..Scope::default() }).await
}

async fn retrieve_series(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    wado(s, c, headers, Scope { study: Some(study), series: Some(series), sop: None }).await
}

async fn retrieve_instance(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    wado(s, c, headers, Scope { study: Some(study), series: Some(series), sop: Some(sop) }).await
}

async fn metadata(state: Arc<HubState>, c: Principal, headers: HeaderMap, scope: Scope) -> Result<Response, ApiError> {
    require(&c, Permission::ImageRead)?;
    let found = instances(&state, &c, &scope).await?;
    if found.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such study, series or instance in your organisation".into()));
    }
    audit(&state, &c, "dicom.metadata", &found, format!("{} instances of study {}", found.len(), found[0].row.study))
        .await?;
    let base = base_url(&state, &headers);
    let out: Vec<Json> = found
        .iter()
        .map(|i| {
            let mut m = i.meta.clone();
            // Pixel data is bulk data: fetched by reference.
            let eight_bit = i.meta.get("00280100").and_then(|e| e.get("Value")).and_then(|v| v[0].as_u64()) == Some(8);
            m.insert(
                "7FE00010".into(),
                json!({
                    "vr": if eight_bit { "OB" } else { "OW" },
                    "BulkDataURI": format!("{}/bulkdata/7FE00010", retrieve_url(&base, Level::Instance, i)),
                }),
            );
            Json::Object(m)
        })
        .collect();
    Ok(dicom_json(Json::Array(out)))
}

async fn study_metadata(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path(study): Path<String>,
) -> Result<Response, ApiError> {
    metadata(s, c, headers, Scope { study: Some(study), ..Scope::default() }).await
}

async fn series_metadata(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata(s, c, headers, Scope { study: Some(study), series: Some(series), sop: None }).await
}

async fn instance_metadata(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    metadata(s, c, headers, Scope { study: Some(study), series: Some(series), sop: Some(sop) }).await
}

/// The pixel data, uncompressed (Explicit VR Little Endian), as one octet-stream part.
async fn pixel_bulkdata(
    State(state): State<Arc<HubState>>,
    Caller(c): Caller,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    require(&c, Permission::ImageRead)?;
    let scope = Scope { study: Some(study), series: Some(series), sop: Some(sop) };
    let found = instances(&state, &c, &scope).await?;
    let Some(i) = found.first().cloned() else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such instance in your organisation".into()));
    };
    audit(&state, &c, "dicom.retrieve", &found, format!("pixel data of instance {}", i.row.sop)).await?;
    let hub = case_hub(&state)?;
    let pixels = crate::blocking(move || {
        let bytes = hub.dicom_bytes(&i.row)?;
        Ok(imaging::read::pixel_data(&bytes))
    })
    .await?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let b = boundary();
    let mut body = format!("--{b}\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    body.extend_from_slice(&pixels);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let ct = format!("multipart/related; type=\"application/octet-stream\"; boundary={b}");
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("multipart/related")))],
        body,
    )
        .into_response())
}

// ---------------------------------------------------------------- STOW-RS

/// The parts of a `multipart/related` body.
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<(String, &'a [u8])>, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or("the Content-Type has no boundary parameter")?;
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut positions = Vec::new();
    let mut at = 0;
    while let Some(p) = find(&body[at..], d) {
        positions.push(at + p);
        at += p + d.len();
    }
    if positions.len() < 2 {
        return Err(format!("the body has no parts delimited by --{boundary}"));
    }
    let mut parts = Vec::new();
    for w in positions.windows(2) {
        let mut part = &body[w[0] + d.len()..w[1]];
        // A delimiter line ends in CRLF; the CRLF before the next delimiter is not content.
        part = part.strip_prefix(b"\r\n").ok_or("a part delimiter is not followed by a line break")?;
        part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let split = find(part, b"\r\n\r\n").ok_or("a part has no blank line after its headers")?;
        let head = std::str::from_utf8(&part[..split]).map_err(|_| "a part's headers are not text")?;
        let ct = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        parts.push((ct, &part[split + 4..]));
    }
    if !body[positions[positions.len() - 1] + d.len()..].starts_with(b"--") {
        return Err("the body does not end with the closing delimiter".into());
    }
    Ok(parts)
}

/// Linear-time search (a crafted body of near-boundaries must not cost body x boundary).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

async fn stow(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    store(s, c, headers, None, body).await
}

async fn stow_to_study(
    State(s): State<Arc<HubState>>,
    Caller(c): Caller,
    headers: HeaderMap,
    Path(study): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    store(s, c, headers, Some(study), body).await
}

async fn store(
    state: Arc<HubState>,
    c: Principal,
    headers: HeaderMap,
    study: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&c, Permission::ImageWrite)?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let lower = ct.to_ascii_lowercase();
    if !lower.starts_with("multipart/related") {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send DICOM objects as multipart/related; type=\"application/dicom\"; boundary=...".into(),
        ));
    }
    let part_type = lower
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim() == "type")
        .map(|(_, v)| v.trim().trim_matches('"').to_owned());
    if part_type.as_deref().is_some_and(|t| t != "application/dicom") {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this service stores application/dicom parts (not DICOM JSON or XML with bulk data)".into(),
        ));
    }
    let hub = case_hub(&state)?;
    let base = base_url(&state, &headers);
    let (user, org) = (c.user.clone(), c.org.clone());
    let outcome = crate::blocking(move || {
        let parts = match multipart_parts(&ct, &body) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let mut results = Vec::new();
        for (part_type, bytes) in parts {
            if !part_type.is_empty() && !part_type.to_ascii_lowercase().starts_with("application/dicom") {
                results.push(Err(Refusal {
                    sop_class: None,
                    sop_instance: None,
                    reason: status::CANNOT_UNDERSTAND,
                    message: format!("a part of type {part_type} is not application/dicom"),
                }));
                continue;
            }
            if bytes.len() > MAX_OBJECT {
                results.push(Err(Refusal {
                    sop_class: None,
                    sop_instance: None,
                    reason: status::OUT_OF_RESOURCES,
                    message: "the object is too large".into(),
                }));
                continue;
            }
            // A storage failure fails this object, not the ones filed before it.
            results.push(hub.store_dicom(user.as_str(), &org, bytes, study.as_deref()).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a DICOM object could not be filed");
                Err(Refusal {
                    sop_class: None,
                    sop_instance: None,
                    reason: status::PROCESSING_FAILURE,
                    message: "the hub could not store the object; send it again".into(),
                })
            }));
        }
        Ok(Ok(results))
    })
    .await?
    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the multipart body is malformed: {e}")))?;
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut study_url = None;
    for r in &outcome {
        match r {
            Ok(f) => {
                let url = format!("{base}/studies/{}/series/{}/instances/{}", f.study, f.series, f.sop_instance);
                study_url.get_or_insert_with(|| format!("{base}/studies/{}", f.study));
                referenced.push(json!({
                    "00081150": { "vr": "UI", "Value": [f.sop_class] },
                    "00081155": { "vr": "UI", "Value": [f.sop_instance] },
                    "00081190": { "vr": "UR", "Value": [url] },
                }));
            }
            Err(refusal) => {
                let mut item = Map::new();
                if let Some(c) = &refusal.sop_class {
                    item.insert("00081150".into(), json!({ "vr": "UI", "Value": [c] }));
                }
                if let Some(i) = &refusal.sop_instance {
                    item.insert("00081155".into(), json!({ "vr": "UI", "Value": [i] }));
                }
                item.insert("00081197".into(), json!({ "vr": "US", "Value": [refusal.reason] }));
                // Not a standard attribute: the reason in words, for people reading the answer.
                item.insert("00090010".into(), json!({ "vr": "LO", "Value": ["MEDVAN"] }));
                item.insert("00091001".into(), json!({ "vr": "LT", "Value": [refusal.message] }));
                failed.push(Json::Object(item));
            }
        }
    }
    let mut body = Map::new();
    if let Some(u) = study_url {
        body.insert("00081190".into(), json!({ "vr": "UR", "Value": [u] }));
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    if !referenced.is_empty() {
        body.insert("00081199".into(), json!({ "vr": "SQ", "Value": referenced }));
    }
    let status = if outcome.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "the request holds no DICOM objects".into()));
    } else if failed.is_empty() {
        StatusCode::OK
    } else if referenced.is_empty() {
        StatusCode::CONFLICT
    } else {
        StatusCode::ACCEPTED
    };
    let mut resp = dicom_json(Json::Object(body));
    *resp.status_mut() = status;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_ranges_and_lists_match_as_ps3_4_says() {
        assert!(wildcard("oka*", "okafor^ada"));
        assert!(wildcard("?kafor*", "okafor"));
        assert!(!wildcard("oka", "okafor"));
        let mut m = Map::new();
        m.insert("00080020".into(), json!({"vr": "DA", "Value": ["20261127"]}));
        m.insert("00100010".into(), json!({"vr": "PN", "Value": [{"Alphabetic": "Okafor^Ada"}]}));
        m.insert("0020000D".into(), json!({"vr": "UI", "Value": ["1.2.3"]}));
        assert!(matches(&m, "00080020", "20261101-20261130"));
        assert!(matches(&m, "00080020", "20261127-"));
        assert!(!matches(&m, "00080020", "-20261126"));
        assert!(matches(&m, "00100010", "okafor*"));
        assert!(matches(&m, "0020000D", "9.9\\1.2.3"));
        assert!(!matches(&m, "0020000D", "1.2"));
        assert!(matches(&m, "00100020", ""), "an empty value is a universal match");
    }

    #[test]
    fn multipart_bodies_are_split_and_malformed_ones_named() {
        let body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nTWO\r\n--b1--\r\n";
        let parts = multipart_parts("multipart/related; type=\"application/dicom\"; boundary=b1", body).unwrap();
        assert_eq!(parts.iter().map(|p| p.1).collect::<Vec<_>>(), vec![&b"ONE"[..], &b"TWO"[..]]);
        assert!(multipart_parts("multipart/related", body).unwrap_err().contains("boundary"));
        assert!(multipart_parts("multipart/related; boundary=b1", b"--b1\r\n\r\nX").is_err());
        assert!(multipart_parts("multipart/related; boundary=zz", body).is_err());
    }

    #[test]
    fn accept_headers_choose_the_transfer_syntax() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(accepted_transfer_syntax(&HeaderMap::new()).unwrap().as_deref(), Some(EXPLICIT_VR_LITTLE_ENDIAN));
        assert_eq!(
            accepted_transfer_syntax(&h("multipart/related; type=\"application/dicom\"; transfer-syntax=*")).unwrap(),
            None
        );
        assert_eq!(
            accepted_transfer_syntax(&h("multipart/related; type=\"application/dicom\"")).unwrap().as_deref(),
            Some(EXPLICIT_VR_LITTLE_ENDIAN)
        );
        assert_eq!(accepted_transfer_syntax(&h("image/png")).unwrap_err().0, StatusCode::NOT_ACCEPTABLE);
    }
}
