//! The hub's front door as it stands today.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::{HubState, OPENAPI, app, config::Config};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let resp = router.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn health_reports_whether_the_hub_can_store_data() {
    let dir = std::env::temp_dir().join(format!("medvan-hub-test-{}", std::process::id()));
    let config = Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n", dir.display())).unwrap();
    let router = app(HubState::open(&config).unwrap());
    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["checks"]["data_dir_writable"], true);
    std::fs::remove_dir_all(&dir).unwrap();
    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a hub that cannot store is not healthy");
    assert_eq!(body["status"], "degraded");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_route() {
    let dir = std::env::temp_dir().join(format!("medvan-hub-doc-{}", std::process::id()));
    let config = Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n", dir.display())).unwrap();
    let router = app(HubState::open(&config).unwrap());
    let (status, doc) = get(&router, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, serde_json::from_str::<serde_json::Value>(OPENAPI).unwrap());
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let req = Request::builder().method(method.to_uppercase().as_str()).uri(path).body(Body::empty()).unwrap();
            let status = router.clone().oneshot(req).await.unwrap().status();
            assert_ne!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn doctors_read_and_edit_their_organisations_cases_by_token_and_see_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    // A van uploads a case.
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    let device = sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap();

    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let call = |method: &str, uri: String, token: Option<&str>, body: Option<serde_json::Value>| {
        let router = router.clone();
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
        }
    };
    let (status, body) = call("GET", format!("/api/v1/cases/{case}"), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, _) = call("GET", format!("/api/v1/cases/{case}"), Some("tok-wrong"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call("GET", format!("/api/v1/cases/{case}"), Some(doctors.north.as_str()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], case.to_string());
    // The other organisation's doctor cannot tell the case exists.
    let (status, _) = call("GET", format!("/api/v1/cases/{case}"), Some(doctors.south.as_str()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call("GET", "/api/v1/cases".into(), Some(doctors.south.as_str()), None).await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    let note = serde_json::json!({"edits": [{"op": "add_note", "text": "splint, x-ray on arrival"}]});
    let (status, _) =
        call("POST", format!("/api/v1/cases/{case}/edits"), Some(doctors.south.as_str()), Some(note.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A bad edit is refused with a reason, and nothing is written.
    let (status, body) = call(
        "POST",
        format!("/api/v1/cases/{case}/edits"),
        Some(doctors.north.as_str()),
        Some(serde_json::json!({"edits": [{"op": "add_note"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        call("POST", format!("/api/v1/cases/{case}/edits"), Some(doctors.north.as_str()), Some(note)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["notes"][0]["text"], "splint, x-ray on arrival");
    assert_eq!(body["notes"][0]["by"], "dr.ana");
    // The note reaches the van at its next sync.
    common::pump(
        &mut edge_agent::sync::StoreReplica::new(store.clone(), "hub").unwrap(),
        &mut hub.cases.replica_for(&device),
    );
    let ctx = case_model::EditContext {
        user: case_model::UserId::parse("ana").unwrap(),
        now: case_model::Timestamp::from_unix_millis(1_800_000_000_000),
    };
    assert_eq!(store.read_case(&ctx, case).unwrap().notes.len(), 1);
    let trail = hub.storage.audit_of_case(&case.to_string()).unwrap();
    assert!(trail.iter().any(|e| e.actor == "dr.sam" && e.outcome == audit::Outcome::Refused), "{trail:?}");
    assert!(trail.iter().any(|e| e.actor == "dr.ana" && e.action == "case.edit"), "{trail:?}");
}
