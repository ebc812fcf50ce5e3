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
    for path in doc["paths"].as_object().unwrap().keys() {
        let (status, _) = get(&router, path).await;
        assert_ne!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
