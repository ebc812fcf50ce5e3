//! Crew login on the van with no network: PINs checked against the roster the hub sent,
//! limited guessing, idle logoff, break-glass; and every route of the agent's OpenAPI
//! document outside the way in refuses a request without a session.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use case_model::{OrgId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use edge_agent::api::{AppState, OPENAPI, app};
use edge_agent::crew::{Crew, CrewError, CrewSettings, store_roster};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sync_proto::CrewMember;
use tower::ServiceExt;

fn store(dir: &std::path::Path) -> Store {
    let key = dir.join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.join("data"), &key, VanId::parse("van-12").unwrap());
    config.create_if_missing = true;
    Store::open(config).unwrap()
}

fn member(name: &str, pin: &str) -> CrewMember {
    CrewMember {
        username: name.into(),
        roles: vec!["paramedic".into()],
        pin_verifier: accounts::password::hash(pin, [9; 16]),
    }
}

async fn send(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value, Option<String>) {
    let mut b = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = router.clone().oneshot(b.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paramedic_logs_in_with_a_pin_offline_guessing_is_limited_and_break_glass_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = [42u8; 32];
    store_roster(&store, &key, &[member("pat.medic", "604182"), member("sam.medic", "918273")]).unwrap();
    let crew = Crew::new(store.clone(), Some(key), CrewSettings::default());
    let router = app(AppState::new(store.clone(), OrgId::parse("org-north").unwrap(), 1 << 20).with_crew(crew));

    // No hub anywhere: the PIN is checked against the roster on the van.
    let (status, v, _) =
        send(&router, "POST", "/api/v1/crew/login", None, json!({"username": "pat.medic", "pin": "604182"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let (status, v, _) = send(&router, "POST", "/api/v1/cases", Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let case = v["id"].as_str().unwrap().to_owned();
    let (_, v, _) = send(&router, "GET", &format!("/api/v1/cases/{case}/audit"), Some(&token), Value::Null).await;
    assert!(v.to_string().contains("pat.medic"), "edits are recorded under the session's user: {v}");
    // Logged out: the token is dead.
    assert_eq!(send(&router, "POST", "/api/v1/crew/logout", Some(&token), Value::Null).await.0, StatusCode::NO_CONTENT);
    assert_eq!(send(&router, "GET", "/api/v1/cases", Some(&token), Value::Null).await.0, StatusCode::UNAUTHORIZED);

    // Guessing a PIN: five wrong ones are answered as wrong, then the account waits, even
    // for the right PIN; another account is not affected.
    let mut statuses = Vec::new();
    for guess in ["111111", "222222", "333333", "444444", "555555", "666666"] {
        statuses.push(
            send(&router, "POST", "/api/v1/crew/login", None, json!({"username": "sam.medic", "pin": guess})).await.0,
        );
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    let (status, v, retry) =
        send(&router, "POST", "/api/v1/crew/login", None, json!({"username": "sam.medic", "pin": "918273"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry: i64 = retry.unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        send(&router, "POST", "/api/v1/crew/login", None, json!({"username": "pat.medic", "pin": "604182"})).await.0,
        StatusCode::OK
    );
    // The count survives a restart of the agent (it is in the store).
    let crew2 = Crew::new(store.clone(), Some(key), CrewSettings::default());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(matches!(crew2.login("sam.medic", "918273", now), Err(CrewError::LockedOut(_))));

    // Break-glass: no PIN, a stated reason, a flagged short session in the audit log.
    let (status, v, _) =
        send(&router, "POST", "/api/v1/crew/break-glass", None, json!({"name": "Kim", "reason": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v, _) = send(
        &router,
        "POST",
        "/api/v1/crew/break-glass",
        None,
        json!({"name": "Kim Osei", "reason": "cardiac arrest on scene, tablet PIN pad cracked"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["break_glass"], true);
    let bg = v["token"].as_str().unwrap().to_owned();
    assert!(v["user"].as_str().unwrap().starts_with("break-glass:"));
    assert_eq!(send(&router, "POST", "/api/v1/cases", Some(&bg), json!({})).await.0, StatusCode::CREATED);
    let log = store.audit_after(0, 1000).unwrap();
    let flagged = log.iter().find(|e| e.action == "auth.break_glass").expect("break-glass is audited");
    assert!(flagged.detail.contains("cardiac arrest"), "{flagged:?}");
    assert!(log.iter().any(|e| e.action == "auth.pin_login" && e.outcome == audit::Outcome::Refused));
}

#[test]
fn sessions_end_when_idle_or_too_old_and_the_roster_opens_only_with_the_pin_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let key = [7u8; 32];
    store_roster(&store, &key, &[member("pat.medic", "604182")]).unwrap();
    let settings = CrewSettings::default();
    let crew = Crew::new(store.clone(), Some(key), settings.clone());
    let t0 = 1_900_000_000;
    let (token, _) = crew.login("pat.medic", "604182", t0).unwrap();
    assert!(crew.authenticate(&token, t0 + settings.idle_timeout_s - 1).is_ok());
    assert!(matches!(crew.authenticate(&token, t0 + 2 * settings.idle_timeout_s), Err(CrewError::NoSession)));
    let (token, _) = crew.login("pat.medic", "604182", t0).unwrap();
    let mut at = t0;
    while at + 300 < t0 + settings.absolute_timeout_s {
        at += 300;
        crew.authenticate(&token, at).unwrap();
    }
    assert!(crew.authenticate(&token, t0 + settings.absolute_timeout_s).is_err());
    // The verifier is not in the store in a form the disk alone gives: the roster opens
    // with the PIN key only.
    let other = Crew::new(store.clone(), Some([8u8; 32]), settings.clone());
    assert!(other.login("pat.medic", "604182", t0).is_err());
    let raw = store.peer_value("crew", "roster").unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("argon2id"));
    // Without a PIN key there is no PIN login at all.
    let keyless = Crew::new(store, None, settings);
    assert!(matches!(keyless.login("pat.medic", "604182", t0), Err(CrewError::NoKey)));
}

#[tokio::test]
async fn every_documented_route_outside_the_way_in_needs_a_crew_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let router = app(AppState::new(store, OrgId::parse("org-north").unwrap(), 1 << 20));
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let public = ["/health", "/openapi.json", "/api/v1/crew/login", "/api/v1/crew/break-glass", "/api/v1/crew/members"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if public.contains(&path.as_str()) {
                continue;
            }
            let uri = path.replace("{id}", "0190a7c4-0000-7000-8000-000000000001").replace(['{', '}'], "");
            for token in [None, Some("made-up-token")] {
                let (status, v, _) = send(&router, &method.to_uppercase(), &uri, token, json!({})).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}: {v}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked}");
}

#[test]
fn every_route_the_agent_serves_is_documented_and_every_documented_route_is_served() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let documented: std::collections::BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let served: std::collections::BTreeSet<String> = edge_agent::api::served_paths().into_iter().collect();
    assert!(served.len() >= 20, "{served:?}");
    assert_eq!(served.difference(&documented).collect::<Vec<_>>(), Vec::<&String>::new(), "served, not documented");
    assert_eq!(documented.difference(&served).collect::<Vec<_>>(), Vec::<&String>::new(), "documented, not served");
}
