//! The audit trail as an auditor uses it: "who saw this patient" through the API, and the
//! log exported as Elastic Common Schema lines and FHIR AuditEvents that an independent
//! FHIR model (PyPI `fhir.resources`) accepts.

mod common;

use std::io::Write as _;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::identity::roles::Role;
use cloud_sync::{HubState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pytools/bin/python");
    assert!(venv.exists(), "{} is missing: run scripts/setup-pytools.sh (scripts/test.sh does)", venv.display());
    venv
}

/// Runs the FHIR check over NDJSON; returns how many resources it accepted.
fn fhir_check(ndjson: &str) -> u64 {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir_check.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(ndjson.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    r["checked"].as_u64().unwrap()
}

async fn get(router: &axum::Router, uri: &str, token: &str) -> (StatusCode, String, String) {
    let req =
        Request::builder().uri(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_who_saw_a_patient_and_the_log_exports_as_ecs_and_valid_fhir() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let vdir = tempfile::tempdir().unwrap();
    let (_store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    // The doctor looks; the other organisation's doctor tries to.
    assert_eq!(get(&router, &format!("/api/v1/cases/{case}"), &doctors.north).await.0, StatusCode::OK);
    assert_eq!(get(&router, &format!("/api/v1/cases/{case}"), &doctors.south).await.0, StatusCode::NOT_FOUND);

    let (admin, _) = common::create_and_login(&hub.identity, "org-north", "adm.kim", &[Role::Admin]);
    let (south_admin, _) = common::create_and_login(&hub.identity, "org-south", "adm.lou", &[Role::Admin]);
    let uri = format!("/api/v1/cases/{case}/access-log");
    let (status, _, body) = get(&router, &uri, &admin.access_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(
        log.iter().any(|e| e["user"] == "dr.ana" && e["action"] == "case.read" && e["outcome"] == "allowed"),
        "{log:#?}"
    );
    // The refused look by the other organisation is in it too, under that doctor's name.
    assert!(log.iter().any(|e| e["user"] == "dr.sam" && e["outcome"] == "refused"), "{log:#?}");
    // The van's creation of the case came with the sync.
    assert!(log.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    // Doctors may not read the log; another organisation's admin cannot tell the case exists.
    assert_eq!(get(&router, &uri, &doctors.north).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(&router, &uri, &south_admin.access_token).await.0, StatusCode::NOT_FOUND);
    // Reading the log is an access too: the admin's read shows up the next time.
    let (_, _, again) = get(&router, &uri, &admin.access_token).await;
    assert!(again.contains("\"action\":\"audit.read\""), "{again}");

    // The same as a FHIR Bundle, which the FHIR models accept.
    let (status, ct, bundle) = get(&router, &format!("{uri}?format=fhir"), &admin.access_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/fhir+json");
    let accepted = tokio::task::spawn_blocking(move || fhir_check(&bundle)).await.unwrap();
    assert!(accepted as usize >= log.len(), "{accepted} of {}", log.len());

    // The whole log, exported: every entry as an ECS document and as a FHIR AuditEvent, in
    // order, each carrying its chain link, so the export can be checked against the log.
    let entries = hub.storage.audit_entries(0, 100_000).unwrap();
    assert!(entries.len() > 10);
    let head = hub.storage.verify_audit().unwrap().unwrap();
    assert_eq!(entries.len() as u64, head.size);
    let mut prev = "00".repeat(32);
    let mut fhir = String::new();
    for e in &entries {
        let doc = audit::export::ecs(e, "medvan-hub");
        assert_eq!(doc["ecs"]["version"], audit::export::ECS_VERSION);
        assert_eq!(doc["event"]["action"], e.action.as_str());
        assert_eq!(doc["medvan"]["audit"]["prev"], prev.as_str(), "entry {} links to the one before", e.seq);
        assert!(doc["@timestamp"].as_str().unwrap().ends_with('Z'));
        prev = e.hash.clone();
        fhir.push_str(&audit::export::fhir_audit_event(e, "medvan-hub").to_string());
        fhir.push('\n');
    }
    assert_eq!(prev, head.head);
    let n = entries.len() as u64;
    let accepted = tokio::task::spawn_blocking(move || fhir_check(&fhir)).await.unwrap();
    assert_eq!(accepted, n);
    println!("audit export: {n} entries as ECS and FHIR AuditEvent, all accepted");
}
