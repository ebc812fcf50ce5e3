//! DICOMweb on the hub, seen by an independent client: PyPI `dicomweb-client` (installed
//! by `scripts/setup-pytools.sh`) stores the van's DX object and a CR, searches for them by
//! study and by patient, retrieves them and their metadata and bulk data, and compares the
//! pixels; another organisation's token sees nothing. Hostile STOW-RS bodies are refused
//! with a reason, quickly, and the hub keeps answering.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use case_model::{CaseId, OrgId, UserId};
use cloud_sync::config::Config;
use cloud_sync::{HubState, app};
use http_body_util::BodyExt;
use sha2::Digest;
use tower::ServiceExt;

struct World {
    _dir: tempfile::TempDir,
    _vdir: tempfile::TempDir,
    config: Config,
    hub: cloud_sync::fleet::Hub,
    doctors: common::Doctors,
    case: CaseId,
    temp_id: String,
}

/// A hub with two organisations, each with a doctor's token, and a case a van of
/// org-north has synced.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    store.close();
    World { _dir: dir, _vdir: vdir, config, hub, doctors, case: view.id, temp_id: view.temp_patient_id.unwrap() }
}

/// The DX object a van makes for `case`, JPEG-LS and native.
fn dx(case: CaseId, patient_id: &str) -> (Vec<u8>, Vec<u8>) {
    common::dx_object(case, patient_id, 256, 320)
}

fn python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pytools/bin/python");
    assert!(venv.exists(), "{} is missing: run scripts/setup-pytools.sh (scripts/test.sh does)", venv.display());
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_dicomweb_client_stores_finds_retrieves_and_compares_pixels() {
    let w = world();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The links the hub hands out name where it is reached (dicomweb-client sends a Host
    // header without the port).
    let mut config = w.config.clone();
    config.hub.public_url = Some(format!("http://{addr}"));
    let state = HubState::open(&config).unwrap().with_hub(&w.hub);
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let files = tempfile::tempdir().unwrap();
    let (jls, native) = dx(w.case, &w.temp_id);
    std::fs::write(files.path().join("dx.dcm"), &jls).unwrap();
    std::fs::write(files.path().join("native.dcm"), &native).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dicomweb_check.py");
    let (py, dir, doctors) = (python(), files.path().to_owned(), w.doctors.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(script)
            .arg(format!("http://{addr}/dicomweb"))
            .args([&doctors.north, &doctors.south])
            .arg(dir.join("dx.dcm"))
            .arg(dir.join("native.dcm"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("dicomweb-client: {r}");
    assert_eq!(r["stored"], 2, "{r}");
    assert_eq!(r["failed"], 0);
    assert_eq!(r["by_study"], 1);
    assert_eq!(r["by_patient"], 1);
    assert_eq!(r["by_name"], serde_json::json!(["MRN-PRIOR-1"]));
    assert_eq!(r["all_studies"], 2);
    assert_eq!(r["series_modality"], serde_json::json!(["DX"]));
    assert_eq!(r["instances"], 1);
    assert_eq!(r["retrieved"], 1);
    assert_eq!(r["retrieved_transfer_syntax"], "1.2.840.10008.1.2.1", "the default transfer syntax");
    assert_eq!(r["dx_pixels_equal"], true, "the lossless DX decodes to the van's pixels");
    assert_eq!(r["dx_shape"], serde_json::json!([320, 256]));
    assert_eq!(r["dx_patient"], "Okafor^Ada");
    assert_eq!(r["cr_pixels_equal"], true);
    assert_eq!(r["as_stored_transfer_syntax"], "1.2.840.10008.1.2.4.80", "transfer-syntax=* gets JPEG-LS as stored");
    assert_eq!(r["metadata_patient_id"], w.temp_id.as_str());
    assert_eq!(r["metadata_kvp"], 55.0);
    assert_eq!(r["bulk_equal"], true);
    assert_eq!(r["other_org_studies"], 0, "another organisation sees nothing");
    assert_eq!(r["other_org_retrieve"], 404);
    // The van's study was linked to its case and attached; the accesses are audited there.
    let view =
        w.hub.cases.read_case(&UserId::parse("dr.ana").unwrap(), &OrgId::parse("org-north").unwrap(), w.case).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&jls));
    assert!(
        view.attachments.iter().any(|a| a["sha256"] == sha.as_str() && a["kind"] == "xray_study"),
        "{:?}",
        view.attachments
    );
    let audit = w.hub.cases.storage().audit_of_case(&w.case.to_string()).unwrap();
    for action in ["dicom.store", "dicom.search", "dicom.retrieve", "dicom.metadata"] {
        assert!(audit.iter().any(|e| e.action == action && e.actor == "dr.ana"), "no {action} in {audit:#?}");
    }
    // The doctor's app reads the case's images through the case API; no one else does,
    // and no cache keeps them.
    let router = app(HubState::open(&w.config).unwrap().with_hub(&w.hub));
    let get = |token: &str| {
        let req = Request::builder()
            .uri(format!("/api/v1/cases/{}/attachments/{sha}", w.case))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(req)
    };
    let resp = get(&w.doctors.north).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/dicom");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().as_ref(), jls.as_slice());
    assert_eq!(get(&w.doctors.south).await.unwrap().status(), StatusCode::NOT_FOUND);
    server.abort();
}

/// One STOW-RS request through the router: its status, body and how long it took.
async fn stow(
    router: &axum::Router,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value, Duration) {
    let req = Request::builder()
        .method("POST")
        .uri("/dicomweb/studies")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    let start = Instant::now();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default(), start.elapsed())
}

fn multipart(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(b"--XB\r\nContent-Type: application/dicom\r\n\r\n");
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"--XB--\r\n");
    b
}

const MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=XB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_objects_are_refused_with_a_reason_and_the_hub_keeps_going() {
    let w = world();
    let router = app(HubState::open(&w.config).unwrap().with_hub(&w.hub));
    let (good, _) = dx(w.case, &w.temp_id);
    let reason = |v: &serde_json::Value| v["00081198"]["Value"][0]["00081197"]["Value"][0].as_u64();
    let words =
        |v: &serde_json::Value| v["00081198"]["Value"][0]["00091001"]["Value"][0].as_str().unwrap_or("").to_owned();

    // Not multipart at all, or multipart of something else: 415 with what to send.
    let (s, b, _) = stow(&router, &w.doctors.north, "application/dicom", good.clone()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    assert!(b["error"].as_str().unwrap().contains("multipart/related"));
    let (s, _, _) = stow(
        &router,
        &w.doctors.north,
        "multipart/related; type=\"application/dicom+json\"; boundary=XB",
        multipart(&[b"{}"]),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Broken framing: 400 naming the problem.
    let (s, b, _) =
        stow(&router, &w.doctors.north, "multipart/related; type=\"application/dicom\"", multipart(&[&good])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"].as_str().unwrap().contains("boundary"), "{b}");
    let mut open_ended = multipart(&[&good]);
    open_ended.truncate(open_ended.len() - 8);
    let (s, _, _) = stow(&router, &w.doctors.north, MULTIPART, open_ended).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Objects that are not whole, consistent images: 409 (nothing stored) with a DICOM
    // failure reason and the reason in words.
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 3);
    let mut no_prefix = good.clone();
    no_prefix[128..132].copy_from_slice(b"XXXX");
    // A data element claiming nearly 4 GiB in a small file.
    let mut huge = good[..good.len().min(400)].to_vec();
    huge.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF]);
    huge.extend_from_slice(&[0u8; 64]);
    let junk: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut junk_dicm = vec![0u8; 128];
    junk_dicm.extend_from_slice(b"DICM");
    junk_dicm.extend_from_slice(&junk);
    for (name, body) in [
        ("truncated", truncated),
        ("no DICM prefix", no_prefix),
        ("huge length", huge),
        ("random bytes", junk),
        ("random after DICM", junk_dicm),
        ("empty", Vec::new()),
    ] {
        let (s, b, took) = stow(&router, &w.doctors.north, MULTIPART, multipart(&[&body])).await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}: {b}");
        assert!(reason(&b).is_some(), "{name}: no failure reason in {b}");
        assert!(!words(&b).is_empty(), "{name}: {b}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        println!("{name}: {:#06x} {}", reason(&b).unwrap(), words(&b));
    }
    // A good object next to a bad one: 202, the good one stored.
    let (s, b, _) = stow(&router, &w.doctors.north, MULTIPART, multipart(&[&good, b"not dicom"])).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["00081199"]["Value"].as_array().unwrap().len(), 1);
    // The same object again is fine; a different object under its SOP Instance UID is not.
    let (s, _, _) = stow(&router, &w.doctors.north, MULTIPART, multipart(&[&good])).await;
    assert_eq!(s, StatusCode::OK);
    let (mut other, _) = dx(w.case, "SOMEONE-ELSE");
    other.truncate(other.len());
    let (s, b, _) = stow(&router, &w.doctors.north, MULTIPART, multipart(&[&other])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(reason(&b), Some(0x0111));
    // Without a token, nothing.
    let req = Request::builder().uri("/dicomweb/studies").body(Body::empty()).unwrap();
    assert_eq!(router.clone().oneshot(req).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Still serving.
    let req = Request::builder().uri("/health").body(Body::empty()).unwrap();
    assert_eq!(router.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_wado_rs_serves_passes_dciodvfy_in_both_transfer_syntaxes() {
    let w = world();
    let router = app(HubState::open(&w.config).unwrap().with_hub(&w.hub));
    let (good, _) = dx(w.case, &w.temp_id);
    let (s, b, _) = stow(&router, &w.doctors.north, MULTIPART, multipart(&[&good])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let url = b["00081199"]["Value"][0]["00081190"]["Value"][0].as_str().unwrap().to_owned();
    let path = &url[url.find("/dicomweb").unwrap()..];
    let dir = tempfile::tempdir().unwrap();
    for (accept, ts) in [
        ("multipart/related; type=\"application/dicom\"", "1.2.840.10008.1.2.1"),
        ("multipart/related; type=\"application/dicom\"; transfer-syntax=*", "1.2.840.10008.1.2.4.80"),
    ] {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {}", w.doctors.north))
            .header("accept", accept)
            .body(Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let boundary = ct.split("boundary=").nth(1).unwrap().to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        // One part: its headers, a blank line, the object, CRLF, the closing delimiter.
        let head_end = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&body[..head_end]).to_string();
        assert!(head.contains(&format!("transfer-syntax={ts}")), "{head}");
        let tail = format!("\r\n--{boundary}--\r\n");
        let object = &body[head_end..body.len() - tail.len()];
        let file = dir.path().join(format!("{ts}.dcm"));
        std::fs::write(&file, object).unwrap();
        let out =
            std::process::Command::new("dciodvfy").arg(&file).output().expect("dciodvfy (dicom3tools) is installed");
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("Error"), "{ts}: {text}");
        let out = std::process::Command::new("dcmdump").arg(&file).output().expect("dcmdump (dcmtk) is installed");
        assert!(out.status.success(), "{ts}: dcmdump failed");
    }
}
