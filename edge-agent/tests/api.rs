//! The agent's HTTP API, driven through the real router (no sockets) and, for shutdown,
//! through a real listener.

use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use case_model::{ActorId, CaseDoc, CaseId, Edit, EditContext, FieldName, FieldValue, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use edge_agent::api::{AppState, OPENAPI, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Agent {
    dir: tempfile::TempDir,
    store: Store,
    router: axum::Router,
    /// Crew session tokens by user name.
    tokens: std::collections::HashMap<String, String>,
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"), &key, VanId::parse("van-12").unwrap());
    config.create_if_missing = true;
    let store = Store::open(config).unwrap();
    let (crew, tokens) = edge_agent::crew::with_members(&store, &[("ana", "604182"), ("dr-osei", "771903")]);
    let router = app(AppState::new(store.clone(), OrgId::parse("org-north").unwrap(), 1 << 20).with_crew(crew));
    Agent { dir, store, router, tokens }
}

impl Agent {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        user: Option<&str>,
        body: Body,
        content_type: &str,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri).header("content-type", content_type);
        if let Some(u) = user {
            req = req.header("authorization", format!("Bearer {}", self.tokens[u]));
        }
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, bytes)
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
        let (status, bytes) = self.call(method, uri, Some("ana"), body, "application/json").await;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn new_case(&self) -> String {
        let (status, v) = self.json(Method::POST, "/api/v1/cases", None).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn a_case_is_created_edited_read_and_listed() {
    let a = agent();
    let id = a.new_case().await;
    let edits = json!({ "edits": [
        { "op": "set_status", "status": "on_scene" },
        { "op": "set_field", "field": "situation.chief_complaint", "value": "fall from ladder, forearm pain" },
        { "op": "add_vitals", "heart_rate": 96, "systolic": 132, "diastolic": 84, "spo2": 97 },
        { "op": "edit_narrative", "insert": "Found on the ground beside a ladder." }
    ]});
    let (status, v) = a.json(Method::POST, &format!("/api/v1/cases/{id}/edits"), Some(edits)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "on_scene");
    assert_eq!(v["vitals"][0]["heart_rate"], 96);
    assert_eq!(v["vitals"][0]["by"], "ana");
    let (status, read) = a.json(Method::GET, &format!("/api/v1/cases/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["narrative"], "Found on the ground beside a ladder.");
    assert_eq!(read["fields"]["situation.chief_complaint"]["nemsis"], "eSituation.04");
    let (_, list) = a.json(Method::GET, "/api/v1/cases?status=on_scene", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["chief_complaint"], "fall from ladder, forearm pain");
    let (_, history) = a.json(Method::GET, &format!("/api/v1/cases/{id}/history"), None).await;
    assert_eq!(history[1]["ops"], json!(["set_status", "set_field", "add_vitals", "edit_narrative"]));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let a = agent();
    let id = a.new_case().await;
    let uri = format!("/api/v1/cases/{id}/edits");
    let (status, v) =
        a.json(Method::POST, &uri, Some(json!({ "edits": [{ "op": "add_vitals", "heart_rate": 900 }] }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["message"], "edit 0: vitals.heart_rate (eVitals.10) must be between 0 and 500; got 900");

    let (status, bytes) =
        a.call(Method::POST, &uri, Some("ana"), Body::from("{\"edits\": [ {\"op\": "), "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&bytes).contains("not acceptable"), "{}", String::from_utf8_lossy(&bytes));

    let (status, v) = a.json(Method::POST, &uri, Some(json!({ "edits": [{ "op": "teleport" }] }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("unknown variant `teleport`"), "{v}");

    let (status, v) = a.json(Method::GET, "/api/v1/cases/not-a-uuid", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("is not a UUID"), "{v}");

    let unknown = CaseId::new_v7(Timestamp::from_unix_millis(1), [1; 10]);
    let (status, _) = a.json(Method::GET, &format!("/api/v1/cases/{unknown}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, bytes) =
        a.call(Method::GET, &format!("/api/v1/cases/{id}"), None, Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&bytes).contains("log in"), "{}", String::from_utf8_lossy(&bytes));

    let (status, _) = a.json(Method::GET, "/api/v1/cases?status=flying", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, read) = a.json(Method::GET, &format!("/api/v1/cases/{id}"), None).await;
    assert_eq!(read["vitals"], json!([]), "nothing of the refused requests was stored");
}

#[tokio::test]
async fn a_closed_case_answers_409_and_takes_addenda() {
    let a = agent();
    let id = a.new_case().await;
    a.json(
        Method::POST,
        &format!("/api/v1/cases/{id}/edits"),
        Some(json!({ "edits": [{ "op": "set_status", "status": "closed" }] })),
    )
    .await;
    let (status, v) = a
        .json(
            Method::POST,
            &format!("/api/v1/cases/{id}/edits"),
            Some(json!({ "edits": [{ "op": "add_chat", "text": "late" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"], "case_closed");
    let (status, v) = a
        .json(
            Method::POST,
            &format!("/api/v1/cases/{id}/addenda"),
            Some(json!({ "text": "Pain score 3 at handover, omitted." })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["addenda"][0]["text"], "Pain score 3 at handover, omitted.");
}

#[tokio::test]
async fn conflicts_are_listed_and_resolved_through_the_api() {
    let a = agent();
    let id = a.new_case().await;
    let case = CaseId::parse(&id).unwrap();
    // The hub's replica, edited by a doctor while the van was offline.
    let mut hub =
        CaseDoc::load(ActorId::from([9u8; 16]), Some(&a.store.load_from_disk(case).unwrap().save()), []).unwrap();
    let before = hub.heads();
    let doctor =
        EditContext { user: UserId::parse("dr-osei").unwrap(), now: Timestamp::from_unix_millis(1_795_000_000_000) };
    hub.apply(
        &doctor,
        &[Edit::SetField { field: FieldName::DateOfBirth, value: FieldValue::Text("1985-03-14".into()) }],
    )
    .unwrap();
    a.json(
        Method::POST,
        &format!("/api/v1/cases/{id}/edits"),
        Some(json!({ "edits": [{ "op": "set_field", "field": "patient.date_of_birth", "value": "1958-03-14" }] })),
    )
    .await;
    let changes: Vec<Vec<u8>> =
        hub.automerge().get_changes(&before).into_iter().map(|mut c| c.bytes().into_owned()).collect();
    a.store.apply_remote_changes(&doctor, case, &changes).unwrap();

    let (status, conflicts) = a.json(Method::GET, &format!("/api/v1/cases/{id}/conflicts"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(conflicts[0]["path"], "patient.date_of_birth");
    let by: Vec<&str> = conflicts[0]["values"].as_array().unwrap().iter().map(|v| v["by"].as_str().unwrap()).collect();
    assert!(by.contains(&"ana") && by.contains(&"dr-osei"), "{conflicts}");

    let (status, v) = a
        .json(
            Method::POST,
            &format!("/api/v1/cases/{id}/conflicts/resolve"),
            Some(json!({ "path": "patient.date_of_birth", "value": "1958-03-14" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["conflicts"], json!([]));
    assert_eq!(v["fields"]["patient.date_of_birth"]["value"], "1958-03-14");
    let (status, v) = a
        .json(
            Method::POST,
            &format!("/api/v1/cases/{id}/conflicts/resolve"),
            Some(json!({ "path": "patient.date_of_birth", "value": "1958-03-14" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
}

fn all_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

#[tokio::test]
async fn attachments_round_trip_and_no_file_reveals_the_patient() {
    let a = agent();
    let id = a.new_case().await;
    a.json(
        Method::POST,
        &format!("/api/v1/cases/{id}/edits"),
        Some(json!({ "edits": [
            { "op": "set_field", "field": "patient.first_name", "value": "Zebedee" },
            { "op": "set_field", "field": "patient.last_name", "value": "Quixote" }
        ]})),
    )
    .await;
    let payload = b"\x00\x01DICM ... (0010,0010) PN Quixote^Zebedee ... Zebedee Quixote ...".to_vec();
    let (status, bytes) = a
        .call(
            Method::POST,
            &format!("/api/v1/cases/{id}/attachments?kind=xray_study&label=forearm%20AP"),
            Some("ana"),
            Body::from(payload.clone()),
            "application/dicom",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&bytes));
    let view: Value = serde_json::from_slice(&bytes).unwrap();
    let sha = view["attachments"][0]["sha256"].as_str().unwrap().to_owned();
    let (status, got) =
        a.call(Method::GET, &format!("/api/v1/cases/{id}/attachments/{sha}"), Some("dr-osei"), Body::empty(), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, payload);
    let (status, _) = a
        .call(
            Method::GET,
            &format!("/api/v1/cases/{id}/attachments/{}", "0".repeat(64)),
            Some("ana"),
            Body::empty(),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = a
        .call(
            Method::POST,
            &format!("/api/v1/cases/{id}/attachments?kind=xray_study"),
            Some("ana"),
            Body::from(vec![1u8; (1 << 20) + 1]),
            "application/dicom",
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let mut files = Vec::new();
    all_files(&a.dir.path().join("data"), &mut files);
    for (path, bytes) in &files {
        assert!(!bytes.windows(7).any(|w| w == b"Zebedee" || w == b"Quixote"), "{path} reveals the patient's name");
    }
}

#[tokio::test]
async fn every_call_on_a_case_leaves_an_audit_entry() {
    let a = agent();
    let id = a.new_case().await;
    a.json(
        Method::POST,
        &format!("/api/v1/cases/{id}/edits"),
        Some(json!({ "edits": [{ "op": "add_vitals", "spo2": 95 }] })),
    )
    .await;
    a.json(
        Method::POST,
        &format!("/api/v1/cases/{id}/edits"),
        Some(json!({ "edits": [{ "op": "add_vitals", "spo2": 195 }] })),
    )
    .await;
    a.json(Method::GET, &format!("/api/v1/cases/{id}"), None).await;
    a.json(Method::GET, &format!("/api/v1/cases/{id}/conflicts"), None).await;
    a.json(Method::GET, &format!("/api/v1/cases/{id}/history"), None).await;
    let (_, audit) = a.json(Method::GET, &format!("/api/v1/cases/{id}/audit"), None).await;
    let got: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "ana case.create allowed",
            "ana case.edit allowed",
            "ana case.edit refused",
            "ana case.read allowed",
            "ana case.read allowed",
            "ana case.read allowed",
            "ana audit.read allowed"
        ]
    );
    let (status, v) = a.json(Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["intact"], true);
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_is_served() {
    let a = agent();
    let id = a.new_case().await;
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let (status, served) = a.json(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, doc);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let uri = path.replace("{id}", &id).replace("{sha256}", &"a".repeat(64));
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, bytes) = a.call(m, &uri, Some("ana"), Body::from("{}"), "application/json").await;
            let routed =
                status != StatusCode::METHOD_NOT_ALLOWED && !(status == StatusCode::NOT_FOUND && bytes.is_empty());
            assert!(routed, "{method} {path} is documented but not served ({status})");
            operations += 1;
        }
    }
    assert_eq!(operations, 34);
}

#[tokio::test]
async fn sigterm_style_shutdown_finishes_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let text = format!(
        "[agent]\nvan_id = \"van-3\"\norg_id = \"org-north\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data").display(),
        key.display()
    );
    let config = edge_agent::config::Config::parse(&text).unwrap();
    let err = edge_agent::open_store(&config).unwrap_err();
    assert!(
        format!("{err:#}").contains("edge-agent init-store"),
        "a missing store is an error, not a fresh start: {err:#}"
    );
    edge_agent::init_store(&config).unwrap();
    assert!(edge_agent::init_store(&config).is_err(), "init-store never touches an existing store");
    let store = edge_agent::open_store(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(edge_agent::serve(config.clone(), store, listener, async {
        let _ = stopped.await;
    }));
    // A real request over a real socket.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"status\":\"ok\""));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // The store was closed cleanly: the WAL was folded back into the database.
    let wal = dir.path().join("data/cases.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "WAL left behind after a clean shutdown");
    edge_agent::open_store(&config).unwrap().close();
}

#[tokio::test]
async fn health_reports_whether_the_store_can_take_edits() {
    let a = agent();
    let (status, v) = a.json(Method::GET, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["checks"]["store_writable"], true);
    a.store.close();
    let (status, v) = a.json(Method::GET, "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "degraded");
    let (status, v) = a.json(Method::POST, "/api/v1/cases", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

#[tokio::test]
async fn a_video_consult_says_why_it_cannot_start_and_changes_nothing() {
    let a = agent();
    let id = a.new_case().await;
    // No [calls] in the config.
    let (status, v) = a.json(Method::POST, &format!("/api/v1/cases/{id}/call"), None).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("calls_not_configured")), "{v}");
    let (_, v) = a.json(Method::GET, "/api/v1/call", None).await;
    assert_eq!(v["state"], "not_configured");
    // Calls set up, but the van does not sync (not enrolled): a call goes through the hub.
    let calls = edge_agent::calls::CallHandle::new(
        toml::from_str("hub_url = \"http://127.0.0.1:9\"\nsource = \"test\"").unwrap(),
        a.store.clone(),
        edge_agent::sync::SyncHandle::not_configured(),
    )
    .unwrap();
    let (crew, tokens) = edge_agent::crew::with_members(&a.store, &[("ana", "604182")]);
    let router = app(AppState::new(a.store.clone(), OrgId::parse("org-north").unwrap(), 1 << 20)
        .with_crew(crew)
        .with_calls(calls));
    let a = Agent { router, tokens, ..a };
    let (status, v) = a.json(Method::POST, &format!("/api/v1/cases/{id}/call"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["message"].as_str().unwrap().contains("does not sync with a hub"), "{v}");
    let (_, v) = a.json(Method::GET, "/api/v1/call", None).await;
    assert_eq!(v["state"], "failed", "{v}");
    // Nothing runs, so nothing ends; a case that does not exist is not called about.
    let (status, v) = a.json(Method::DELETE, &format!("/api/v1/cases/{id}/call"), None).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::CONFLICT, Some("no_call")), "{v}");
    let missing = "01a3185c-5000-7d9d-ab57-5afec289f84f";
    let (status, _) = a.json(Method::POST, &format!("/api/v1/cases/{missing}/call"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A WHEP offer must be SDP.
    let (status, _) = a
        .call(
            Method::POST,
            &format!("/api/v1/cases/{id}/call/watch"),
            Some("ana"),
            Body::from("{}"),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The refused start is in the van's log.
    let actions: Vec<(String, String)> =
        a.store.audit_after(0, 1000).unwrap().into_iter().map(|e| (e.action, format!("{:?}", e.outcome))).collect();
    assert!(actions.iter().any(|(a, o)| a == "call.start" && o == "Refused"), "{actions:?}");
    // An https:// hub address (WHIP here is plain HTTP, TLS comes from a proxy) is refused
    // with what to do.
    let e = edge_agent::calls::CallHandle::new(
        toml::from_str("hub_url = \"https://hub.example.org\"").unwrap(),
        a.store.clone(),
        edge_agent::sync::SyncHandle::not_configured(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("http://"), "{e}");
}
