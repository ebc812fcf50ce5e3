//! Password reset by mail: the hub mails a single-use link through a real SMTP server
//! (aiosmtpd, run here on loopback, insisting on STARTTLS and a login) and the link sets
//! the password once.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::identity::roles::Role;
use cloud_sync::identity::{IdentityError, LoginOutcome};
use common::{PASSWORD, now_s};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Sink(std::process::Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sink(port: u16, cert: &Path, key: &Path, out: &Path) -> Sink {
    let python = repo().join("target/pytools/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup-pytools.sh", python.display());
    let mut child = std::process::Command::new(python)
        .arg(repo().join("cloud-sync/tests/smtp_sink.py"))
        .args([&port.to_string(), cert.to_str().unwrap(), key.to_str().unwrap(), "hub", "relay password"])
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the mail server did not start");
    Sink(child)
}

fn mails(out: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
}

async fn post(router: &axum::Router, uri: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn password_works(hub: &cloud_sync::fleet::Hub, user: &str, password: &str) -> bool {
    match hub.identity.login("org-north", user, password, None, now_s()) {
        Ok(LoginOutcome::Session(_) | LoginOutcome::EnrolMfa { .. }) => true,
        Err(IdentityError::BadCredentials) => false,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_password_is_reset_through_a_mailed_single_use_link() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = dir.path().join("mail");
    let _sink = start_sink(port, &cert, &key, &out);
    std::fs::write(dir.path().join("relay-password"), "relay password\n").unwrap();
    let config = cloud_sync::config::Config::parse(&format!(
        "[hub]\ndata_dir = \"{data}\"\npublic_url = \"https://hub.medvan.test\"\n\n[mail]\nrelay = \"127.0.0.1:{port}\"\n\
         from = \"Medvan <noreply@medvan.test>\"\nusername = \"hub\"\npassword_file = \"{pw}\"\nca_file = \"{ca}\"\n",
        data = dir.path().join("hub").display(),
        pw = dir.path().join("relay-password").display(),
        ca = ca.display(),
    ))
    .unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    let north = case_model::OrgId::parse("org-north").unwrap();
    hub.cases.create_org(&case_model::UserId::parse("admin").unwrap(), &north, "North EMS").unwrap();
    for (user, mail) in [("dr.osei", Some("k.osei@stmary.test")), ("pat.medic", None)] {
        let u = case_model::UserId::parse(user).unwrap();
        let link =
            hub.identity.add_user("admin", &north, &u, &[Role::Doctor], mail.map(str::to_owned), now_s()).unwrap();
        hub.identity.redeem_reset(&link, PASSWORD, now_s()).unwrap();
    }
    let router = cloud_sync::app(cloud_sync::HubState::open(&config).unwrap().with_hub(&hub));

    // Dr Osei forgot his password.
    let asked = Instant::now();
    let (status, known) =
        post(&router, "/api/v1/auth/password/forgot", serde_json::json!({"org": "org-north", "username": "dr.osei"}))
            .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = loop {
        if let Some(m) = mails(&out).pop() {
            break m;
        }
        assert!(asked.elapsed() < Duration::from_secs(20), "no mail reached the mail server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("reset mail delivered {} ms after the request", asked.elapsed().as_millis());
    // Delivered over STARTTLS after a login, to the account's address, and a well-formed
    // message by Python's email parser.
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["authenticated"], true);
    assert_eq!(mail["mail_from"], "noreply@medvan.test");
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["k.osei@stmary.test"]));
    assert_eq!(mail["subject"], "Reset your Medvan password");
    assert_eq!(mail["defects"], serde_json::json!([]), "{mail}");
    let body = mail["body"].as_str().unwrap();
    let token = body
        .split("https://hub.medvan.test/reset-password#token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no link in {body}"))
        .to_owned();

    // The link sets the password once.
    let new = "a brand new passphrase";
    let (status, _) =
        post(&router, "/api/v1/auth/password/reset", serde_json::json!({"token": token, "password": new})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(password_works(&hub, "dr.osei", new));
    assert!(!password_works(&hub, "dr.osei", PASSWORD));
    let (status, again) = post(
        &router,
        "/api/v1/auth/password/reset",
        serde_json::json!({"token": token, "password": "and another one"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{again}");
    assert!(password_works(&hub, "dr.osei", new), "the spent link changed nothing");

    // The answer is the same for an unknown account, one with no address, and one mailed a
    // moment ago, and none of them gets a mail.
    for who in ["nobody.here", "pat.medic", "dr.osei"] {
        let (status, body) =
            post(&router, "/api/v1/auth/password/forgot", serde_json::json!({"org": "org-north", "username": who}))
                .await;
        assert_eq!((status, &body), (StatusCode::ACCEPTED, &known), "{who}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mails(&out).len(), 1, "only the first request was mailed");

    // Each link made and each refusal is in the audit log.
    let entries = hub.storage.audit_entries(0, 100_000).unwrap();
    let mailed: Vec<_> = entries.iter().filter(|e| e.detail.contains("by=mail")).collect();
    assert_eq!(mailed.iter().filter(|e| e.outcome == audit::Outcome::Refused).count(), 2, "{mailed:?}");
}
