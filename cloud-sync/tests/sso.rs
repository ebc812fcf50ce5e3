//! Single sign-on through a real OpenID provider (node-oidc-provider, run here on loopback
//! over HTTPS): the hub is the relying party, a Python `requests` session plays the
//! browser at the provider, and the hub's router answers the browser's requests.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cloud_sync::identity::roles::Role;
use http_body_util::BodyExt;
use tower::ServiceExt;

const HUB: &str = "https://hub.medvan.test";
const SECRET: &str = "a client secret the provider and the hub share";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The provider, killed when the test ends.
struct Provider {
    child: std::process::Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(cert: &Path, key: &Path) -> Provider {
    let dir = repo().join("cloud-sync/tests/oidc-provider");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "{} has no node_modules: run scripts/setup-jstools.sh (scripts/test.sh does)",
        dir.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args([&port.to_string(), cert.to_str().unwrap(), key.to_str().unwrap()])
        .arg(format!("{HUB}/api/v1/auth/sso/org-north/callback"))
        .arg(SECRET)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup-deps.sh installs it)");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("the provider prints its issuer once it listens");
    // Whatever else it prints is passed on (a closed pipe would kill it).
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            println!("provider: {l}");
        }
    });
    Provider { child, issuer: ready["issuer"].as_str().unwrap().to_owned() }
}

/// The browser at the provider: from the authorization URL to the hub's callback URL, or
/// the provider's refusal.
fn browse_provider(authorize: &str, login: &str, password: &str, ca: &Path) -> serde_json::Value {
    let python = repo().join("target/pytools/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup-pytools.sh", python.display());
    let out = std::process::Command::new(python)
        .arg(repo().join("cloud-sync/tests/oidc_browser.py"))
        .args([authorize, login, password, ca.to_str().unwrap(), &format!("{HUB}/")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(router: &axum::Router, uri: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::builder().uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer { status, headers, body }
}

/// `name=value` of the cookie `name` the answer sets.
fn set_cookie(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .find(|kv| kv.starts_with(&format!("{name}=")) && kv.len() > name.len() + 1)
}

/// Starts a login at the hub and walks the provider: the callback path and the browser's
/// binding cookie, or the provider's answer if it refused.
async fn sso(router: &axum::Router, login: &str, password: &str, ca: &Path) -> (String, String) {
    let start = get(router, "/api/v1/auth/sso/org-north/start?return_to=/cases", None).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
    let authorize = start.headers[header::LOCATION].to_str().unwrap().to_owned();
    let binding = set_cookie(&start, "__Host-medvan_sso").expect("the start binds the login to the browser");
    let walked = browse_provider(&authorize, login, password, ca);
    let callback = walked["callback"].as_str().unwrap_or_else(|| panic!("the provider refused: {walked}"));
    (callback.strip_prefix(HUB).unwrap().to_owned(), binding)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_through_the_hospitals_openid_provider_ends_with_a_hub_session_for_the_mapped_user() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certificates(dir.path());
    let provider = start_provider(&cert, &key);
    std::fs::write(dir.path().join("sso-secret"), SECRET).unwrap();
    let config = cloud_sync::config::Config::parse(&format!(
        "[hub]\ndata_dir = \"{data}\"\npublic_url = \"{HUB}\"\n\n[[sso]]\norg = \"org-north\"\nname = \"St Mary's\"\n\
         issuer = \"{issuer}\"\nclient_id = \"medvan-hub\"\nclient_secret_file = \"{secret}\"\nca_file = \"{ca}\"\n\n\
         [front_door]\nlogins_per_address_per_min = 1000.0\n",
        data = dir.path().join("hub").display(),
        issuer = provider.issuer,
        secret = dir.path().join("sso-secret").display(),
        ca = ca.display(),
    ))
    .unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    let admin = case_model::UserId::parse("admin").unwrap();
    for org in ["org-north", "org-south"] {
        hub.cases.create_org(&admin, &case_model::OrgId::parse(org).unwrap(), org).unwrap();
    }
    let north = case_model::OrgId::parse("org-north").unwrap();
    let osei = case_model::UserId::parse("dr.osei").unwrap();
    // dr.osei's account was made for single sign-on (no password here): his first SSO login
    // binds it. dr.berg's account has a password: only an administrator binds it.
    hub.identity.add_sso_user("admin", &north, &osei, &[Role::Doctor], None, common_now()).unwrap();
    let berg = case_model::UserId::parse("dr.berg").unwrap();
    let link = hub.identity.add_user("admin", &north, &berg, &[Role::Doctor], None, common_now()).unwrap();
    hub.identity.redeem_reset(&link, "dr berg's own passphrase", common_now()).unwrap();
    let router = cloud_sync::app(cloud_sync::HubState::open(&config).unwrap().with_hub(&hub));

    // The login page lists the provider.
    let list = get(&router, "/api/v1/auth/sso", None).await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list[0]["org"], "org-north");
    assert_eq!(list[0]["start"], "/api/v1/auth/sso/org-north/start");

    // Kwame Osei logs in at the hospital; the provider's preferred_username names dr.osei.
    let (callback, binding) = sso(&router, "kwame.osei", "correct horse battery", &ca).await;
    // The callback from a browser that did not start the login is refused, and does not
    // spend the login...
    let elsewhere = get(&router, &callback, None).await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST, "{}", elsewhere.body);
    assert!(elsewhere.body.contains("another browser"), "{}", elsewhere.body);
    // ...which the starting browser then finishes.
    let done = get(&router, &callback, Some(&binding)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("url=/cases"), "the page moves on to return_to: {}", done.body);
    let session = set_cookie(&done, "__Host-medvan_session").expect("a session cookie");
    let attrs =
        done.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    let session_attrs = attrs.iter().find(|c| c.starts_with("__Host-medvan_session=")).unwrap();
    for a in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session_attrs.contains(a), "{session_attrs} lacks {a}");
    }
    assert!(set_cookie(&done, "__Host-medvan_csrf").is_some(), "the page's script gets the CSRF token");
    let me = get(&router, "/api/v1/auth/me", Some(&session)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!((me["user"].as_str(), me["org"].as_str()), (Some("dr.osei"), Some("org-north")));
    assert_eq!(me["roles"], serde_json::json!(["doctor"]));
    // The session reaches the doctor's data (the cookie is a real session, not a page).
    let cases = get(&router, "/api/v1/cases", Some(&session)).await;
    assert_eq!(cases.status, StatusCode::OK, "{}", cases.body);

    // The same callback again (a replay, or a back button) finds the login spent.
    let replay = get(&router, &callback, Some(&binding)).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert!(set_cookie(&replay, "__Host-medvan_session").is_none());

    // Someone the hospital knows but the organisation has no account for: refused, with
    // what to do.
    let (callback, binding) = sso(&router, "stranger", "stranger password", &ca).await;
    let refused = get(&router, &callback, Some(&binding)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("no.such.doctor") && refused.body.contains("administrator"), "{}", refused.body);
    assert!(set_cookie(&refused, "__Host-medvan_session").is_none());
    // An account made (with a setup link) for someone who has not set their password yet is
    // not an SSO account: a matching name at the provider does not take it.
    let pending = case_model::UserId::parse("no.such.doctor").unwrap();
    hub.identity.add_user("admin", &north, &pending, &[Role::Doctor], None, common_now()).unwrap();
    let (callback, binding) = sso(&router, "stranger", "stranger password", &ca).await;
    let refused = get(&router, &callback, Some(&binding)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("not linked"), "{}", refused.body);

    // Another person at the provider whose preferred_username was changed to dr.osei does
    // not get dr.osei's account: it is linked to Kwame's subject since his first login.
    let (callback, binding) = sso(&router, "impostor", "impostor password", &ca).await;
    let refused = get(&router, &callback, Some(&binding)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("linked to another identity"), "{}", refused.body);

    // Ana Berg at the provider is not yet dr.berg here: the account has a password of its
    // own, and a name from the provider is not enough to take it.
    let (callback, binding) = sso(&router, "ana.berg", "ana berg password", &ca).await;
    let refused = get(&router, &callback, Some(&binding)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("not linked"), "{}", refused.body);
    let subject = format!("{}|ana.berg", provider.issuer);
    assert!(refused.body.contains(&subject), "the page names the identity to link: {}", refused.body);
    // An administrator links it (PUT /api/v1/admin/users/dr.berg/sso); then it works.
    let (admin, _) = common::create_and_login(&hub.identity, "org-north", "adm.kim", &[Role::Admin]);
    let linked = router
        .clone()
        .oneshot(
            Request::builder()
                .method("PUT")
                .uri("/api/v1/admin/users/dr.berg/sso")
                .header(header::AUTHORIZATION, format!("Bearer {}", admin.access_token))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::json!({ "subject": subject }).to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(linked.status(), StatusCode::NO_CONTENT);
    let (callback, binding) = sso(&router, "ana.berg", "ana berg password", &ca).await;
    let done = get(&router, &callback, Some(&binding)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("dr.berg"), "{}", done.body);

    // A crafted callback with a provider error for someone else's login shows nothing it
    // carries and does not cancel their login.
    let crafted = get(
        &router,
        "/api/v1/auth/sso/org-north/callback?error=access_denied&error_description=Call+0800+now&state=x",
        Some(&binding),
    )
    .await;
    assert_eq!(crafted.status, StatusCode::BAD_REQUEST, "{}", crafted.body);
    assert!(!crafted.body.contains("0800"), "{}", crafted.body);
    assert!(
        set_cookie(&crafted, "__Host-medvan_sso").is_none()
            && !crafted
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .any(|c| c.to_str().unwrap().starts_with("__Host-medvan_sso="))
    );
    assert_eq!(crafted.headers[header::REFERRER_POLICY], "no-referrer");

    // A wrong password at the provider gets no code at all.
    let start = get(&router, "/api/v1/auth/sso/org-north/start", None).await;
    let authorize = start.headers[header::LOCATION].to_str().unwrap().to_owned();
    let walked = browse_provider(&authorize, "kwame.osei", "wrong", &ca);
    assert_eq!(walked["refused"], 401, "{walked}");

    // A disabled account cannot log in through the provider either.
    hub.identity.disable_user("admin", &north, &osei, common_now()).unwrap();
    let (callback, binding) = sso(&router, "kwame.osei", "correct horse battery", &ca).await;
    let refused = get(&router, &callback, Some(&binding)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);

    // Not an open redirect, and only configured organisations.
    let open_redirect = get(&router, "/api/v1/auth/sso/org-north/start?return_to=//evil.example/", None).await;
    assert_eq!(open_redirect.status, StatusCode::BAD_REQUEST);
    let south = get(&router, "/api/v1/auth/sso/org-south/start", None).await;
    assert_eq!(south.status, StatusCode::NOT_FOUND, "{}", south.body);

    // The audit log has the SSO login and each refusal.
    let entries = hub.storage.audit_entries(0, 100_000).unwrap();
    let sso_lines: Vec<&audit::Entry> = entries.iter().filter(|e| e.detail.contains("method=sso")).collect();
    assert!(sso_lines.iter().any(|e| e.outcome == audit::Outcome::Allowed && e.actor == "dr.osei"), "{sso_lines:?}");
    assert!(sso_lines.iter().filter(|e| e.outcome == audit::Outcome::Refused).count() >= 3, "{sso_lines:?}");
}

fn common_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
