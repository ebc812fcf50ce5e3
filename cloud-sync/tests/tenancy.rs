//! Tenancy and permissions, generated from the hub's OpenAPI document: every documented
//! operation outside the public allow-list is called as each role of another organisation
//! (with the first organisation's real ids in its path) and as each role of the same
//! organisation that lacks the operation's permission. Nothing of the first organisation
//! may come back or change. And every route the router serves must be in the document.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use case_model::{OrgId, UserId};
use cloud_sync::identity::roles::{Permission, Role};
use cloud_sync::{HubState, OPENAPI, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

const MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=XB";

fn multipart(part: &[u8]) -> Vec<u8> {
    let mut b = b"--XB\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    b.extend_from_slice(part);
    b.extend_from_slice(b"\r\n--XB--\r\n");
    b
}

async fn send(router: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

/// A request whose answer may not end (an event stream): the status, and what came within
/// `wait`.
async fn send_for(router: &axum::Router, req: Request<Body>, wait: std::time::Duration) -> (StatusCode, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
    })
    .await;
    (status, out)
}

fn permission_named(name: &str) -> Permission {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

#[test]
fn every_route_the_router_serves_is_documented_with_its_methods() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        cloud_sync::config::Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n", dir.path().display())).unwrap();
    // The routes alone (no front door), so an unserved method answers 405 whoever asks.
    let router = cloud_sync::bare_routes().with_state(Arc::new(HubState::open(&config).unwrap()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = cloud_sync::served_paths();
    assert!(served.len() >= 20, "{served:?}");
    for path in served {
        let documented = paths.get(path).unwrap_or_else(|| panic!("{path} is served but not in openapi.json"));
        let uri = path.replace(['{', '}'], "");
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let req = Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap();
            let status = rt.block_on(router.clone().oneshot(req)).unwrap().status();
            let key = method.as_str().to_ascii_lowercase();
            if status != StatusCode::METHOD_NOT_ALLOWED {
                assert!(documented.get(&key).is_some(), "{method} {path} is served but not documented");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_of_another_organisation_and_no_role_without_the_permission_reaches_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, doctors) = common::two_org_hub(dir.path());
    // Every call comes from one address and each user makes dozens: limits are another test's.
    config.front_door.per_address_per_s = 1e6;
    config.front_door.per_address_burst = 1_000_000;
    config.front_door.per_user_burst = 1_000_000;
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));

    // org-north's data: a case from a van, an X-ray filed and attached to it.
    let vdir = tempfile::tempdir().unwrap();
    let (_store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    let temp_id = view.temp_patient_id.clone().unwrap();
    let (dx, _) = common::dx_object(case, &temp_id, 64, 80);
    // What another organisation tries to file into org-north's study: its own object, with
    // org-north's study UID.
    let (probe_dx, _) = common::dx_object_with(case, "SOUTH-1", 64, 80, (70, 80));
    let stow = Request::builder()
        .method("POST")
        .uri("/dicomweb/studies")
        .header("authorization", format!("Bearer {}", doctors.north))
        .header("content-type", MULTIPART)
        .body(Body::from(multipart(&dx)))
        .unwrap();
    let (status, body) = send(&router, stow).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let north = OrgId::parse("org-north").unwrap();
    let instances = hub.cases.dicom_instances(&north, None).unwrap();
    let row = instances[0].row.clone();
    let sha = hex::encode(row.sha256);
    // The crew asked for a consult: its id is a probe too.
    let ctx = case_model::EditContext {
        user: UserId::parse("ana.medic").unwrap(),
        now: case_model::Timestamp::from_unix_millis(common::now_s() * 1000),
    };
    hub.cases
        .edit_case(
            &ctx,
            &north,
            case,
            &[case_model::Edit::RequestConsult { reason: "probe".into(), urgency: Default::default() }],
        )
        .unwrap();
    let before = hub.cases.read_case(&UserId::parse("dr.ana").unwrap(), &north, case).unwrap();
    let consult = before.consults[0]["id"].as_str().unwrap().to_owned();
    assert!(before.attachments.iter().any(|a| a["sha256"] == sha.as_str()));

    // Everything that must never come back to anyone outside org-north.
    let secrets: Vec<String> =
        vec![case.to_string(), row.study.clone(), row.series.clone(), row.sop.clone(), sha.clone(), temp_id.clone()];
    let ids = |name: &str| -> String {
        match name {
            "id" => case.to_string(),
            "sha256" => sha.clone(),
            "study" => row.study.clone(),
            "series" => row.series.clone(),
            "sop" => row.sop.clone(),
            "username" => "dr.ana".into(),
            "case" => case.to_string(),
            "consult" => consult.clone(),
            other => panic!("no probe id for path parameter {{{other}}}: add one"),
        }
    };
    let body_for = |method: &str, path: &str| -> Option<(&'static str, Vec<u8>)> {
        match (method, path) {
            ("get", _) => None,
            ("post", "/api/v1/cases/{id}/edits") => {
                Some(("application/json", br#"{"edits":[{"op":"add_note","text":"tenancy probe"}]}"#.to_vec()))
            }
            ("post", p) if p.starts_with("/dicomweb/studies") => Some((MULTIPART, multipart(&probe_dx))),
            ("post", "/api/v1/admin/users") => {
                Some(("application/json", br#"{"username":"probe.user","roles":["paramedic"]}"#.to_vec()))
            }
            ("post", "/api/v1/admin/users/{username}/disable" | "/api/v1/admin/users/{username}/reset-link") => None,
            ("post", "/api/v1/auth/logout") => None,
            ("put", "/api/v1/auth/pin") => Some(("application/json", br#"{"pin":"604182"}"#.to_vec())),
            ("delete", "/api/v1/admin/users/{username}/pin") => None,
            ("put", "/api/v1/admin/users/{username}/sso") => {
                Some(("application/json", br#"{"subject":"https://evil.example|probe"}"#.to_vec()))
            }
            ("put", "/api/v1/consults/on-call") => Some(("application/json", br#"{"on_call":true}"#.to_vec())),
            ("post", "/api/v1/consults/{case}/{consult}/claim") => None,
            ("post", "/api/v1/geofences") | ("put", "/api/v1/geofences/{id}") => Some((
                "application/json",
                br#"{"name":"probe","kind":"service_area","shape":{"type":"circle","center":{"lat":51.5,"lon":-0.1},"radius_m":500}}"#.to_vec(),
            )),
            ("delete", "/api/v1/geofences/{id}" | "/api/v1/calls/{case}/sessions/{id}") => None,
            ("post", "/api/v1/calls/{case}/whip" | "/api/v1/calls/{case}/whep") => {
                Some(("application/sdp", b"v=0\r\n".to_vec()))
            }
            (m, p) => panic!("no probe body for {m} {p}: add one"),
        }
    };

    // Every role, in each organisation.
    let mut south = Vec::new();
    let mut north_users = Vec::new();
    for role in Role::ALL {
        let name = format!("{}.probe", role.name().replace('_', "-"));
        south.push((role, common::create_and_login(&hub.identity, "org-south", &name, &[role]).0.access_token));
        north_users.push((role, common::create_and_login(&hub.identity, "org-north", &name, &[role]).0.access_token));
    }

    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            // The public allow-list: the document marks them with no security.
            if op["security"].as_array().is_some_and(|s| s.is_empty()) {
                continue;
            }
            let permission = op["x-medvan-permission"].as_str().map(permission_named);
            ops.push((method.clone(), path.clone(), permission));
        }
    }
    assert!(ops.len() >= 20, "{ops:?}");
    // Three rounds: everything that reads or changes, then stores (so no search runs after
    // another organisation filed an object into the study), then logging out (it ends the
    // caller's own login).
    let phase = |method: &str, path: &str| -> u8 {
        if path == "/api/v1/auth/logout" {
            2
        } else if method == "post" && path.starts_with("/dicomweb/studies") {
            1
        } else {
            0
        }
    };

    let mut calls = 0;
    let mut checked = BTreeSet::new();
    for round in 0..3 {
        for (who, users) in [("org-south", &south), ("org-north", &north_users)] {
            for (role, token) in users.iter() {
                for (method, path, permission) in ops.iter().filter(|(m, p, _)| phase(m, p) == round) {
                    let allowed = permission.is_none_or(|p| cloud_sync::identity::roles::allows(&[*role], p));
                    // In its own organisation a role is only probed where it lacks the permission.
                    if who == "org-north" && allowed {
                        continue;
                    }
                    let mut uri = path.clone();
                    let names: Vec<String> =
                        path.split('{').skip(1).map(|s| s.split('}').next().unwrap().to_owned()).collect();
                    for n in &names {
                        uri = uri.replace(&format!("{{{n}}}"), &ids(n));
                    }
                    let mut req = Request::builder()
                        .method(method.to_uppercase().as_str())
                        .uri(&uri)
                        .header("authorization", format!("Bearer {token}"));
                    let sent = body_for(method, path);
                    let sent_bytes = sent.as_ref().map(|(_, b)| b.clone()).unwrap_or_default();
                    let body = match sent {
                        Some((ct, b)) => {
                            req = req.header("content-type", ct);
                            Body::from(b)
                        }
                        None => Body::empty(),
                    };
                    let (status, bytes) = if path == "/api/v1/events" {
                        // A stream that does not end: what it sends in a moment is checked.
                        send_for(&router, req.body(body).unwrap(), std::time::Duration::from_millis(200)).await
                    } else {
                        send(&router, req.body(body).unwrap()).await
                    };
                    calls += 1;
                    checked.insert(format!("{method} {path}"));
                    let text = String::from_utf8_lossy(&bytes);
                    let what = format!("{role:?} of {who}: {method} {uri} -> {status} {text:.300}");
                    assert!(!status.is_server_error(), "{what}");
                    if !allowed {
                        assert_eq!(status, StatusCode::FORBIDDEN, "a role without the permission: {what}");
                    } else if !names.is_empty() && phase(method, path) != 1 {
                        // Another organisation's ids do not exist for this caller.
                        assert_eq!(status, StatusCode::NOT_FOUND, "another organisation's ids: {what}");
                    }
                    // No answer names anything of org-north the caller did not send itself (an error
                    // may echo the id asked for; a store into "their" study answers with the study UID
                    // the caller's own object carries).
                    let asked = format!("{uri} {}", String::from_utf8_lossy(&sent_bytes));
                    for s in secrets.iter().filter(|s| !asked.contains(s.as_str())) {
                        assert!(!text.contains(s.as_str()), "leaks {s}: {what}");
                    }
                }
            }
        }
    }
    println!("tenancy: {calls} calls over {} operations, none reached org-north", checked.len());
    assert!(checked.len() >= 20);

    // org-north is as it was: no note, no attachment, no account touched.
    let after = hub.cases.read_case(&UserId::parse("dr.ana").unwrap(), &north, case).unwrap();
    assert_eq!(after.notes.len(), before.notes.len());
    assert!(hub.cases.read_case(&UserId::parse("dr.ana").unwrap(), &north, case).unwrap().consults.len() == 1);
    assert_eq!(after.attachments.len(), before.attachments.len());
    assert_eq!(hub.cases.dicom_instances(&north, None).unwrap().len(), 1);
    let users = hub.identity.users(&north).unwrap();
    assert!(users.iter().all(|u| !u.disabled), "{users:?}");
    assert!(!users.iter().any(|u| u.username == "probe.user"));
    // And the van-made case never linked to an image stored by another organisation.
    let south_org = OrgId::parse("org-south").unwrap();
    for i in hub.cases.dicom_instances(&south_org, None).unwrap() {
        assert_eq!(i.row.case_id, None, "org-south's object is linked to {:?}", i.row.case_id);
    }
}
