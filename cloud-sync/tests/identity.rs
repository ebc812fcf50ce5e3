//! Logins, tokens and the front door, through the hub's router.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cloud_sync::identity::roles::Role;
use cloud_sync::identity::{Identity, LoginOutcome, SecondFactor, Settings};
use cloud_sync::{HubState, app};
use common::{PASSWORD, create_and_login, now_s};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: serde_json::Value,
}

async fn call(router: &axum::Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or_default() }
}

fn get(uri: &str, token: &str) -> Request<Body> {
    Request::builder().uri(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, body: serde_json::Value) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn hub_with(dir: &std::path::Path, extra: &str) -> (cloud_sync::config::Config, cloud_sync::fleet::Hub, axum::Router) {
    let config =
        cloud_sync::config::Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n{extra}", dir.display())).unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    for org in ["org-north", "org-south"] {
        hub.cases
            .create_org(&case_model::UserId::parse("admin").unwrap(), &case_model::OrgId::parse(org).unwrap(), org)
            .unwrap();
    }
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    (config, hub, router)
}

fn forge(header: serde_json::Value, claims: serde_json::Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode(sig))
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_foreign_and_misaddressed_tokens_are_refused_and_a_reused_refresh_token_ends_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "");
    let (tokens, _) = create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    // The genuine token works.
    let ok = call(&router, get("/api/v1/auth/me", &tokens.access_token)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["org"], "org-north");
    assert!(ok.headers.contains_key("x-request-id"));

    let claims = serde_json::json!({
        "iss": "medvan-hub", "aud": "medvan-api", "sub": "pat.medic", "org": "org-north",
        "roles": ["paramedic", "admin"], "iat": now_s(), "exp": now_s() + 300, "jti": "x",
    });
    let jwks = call(&router, Request::builder().uri("/.well-known/jwks.json").body(Body::empty()).unwrap()).await;
    let kid = jwks.body["keys"][0]["kid"].as_str().unwrap().to_owned();
    let public = B64.decode(jwks.body["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut refused = Vec::new();
    // alg none, no signature.
    refused.push(("alg none", forge(serde_json::json!({"alg": "none", "kid": kid}), claims.clone(), b"")));
    // HS256 keyed with the public key (the algorithm confusion attack).
    let hs = {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::json!({"alg": "HS256", "kid": kid}).to_string()),
            B64.encode(claims.to_string())
        );
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public), input.as_bytes());
        format!("{input}.{}", B64.encode(tag.as_ref()))
    };
    refused.push(("HS256 with the public key", hs));
    // A genuine token with its payload changed (a role added) keeps a signature that no
    // longer matches.
    let mut parts: Vec<String> = tokens.access_token.split('.').map(str::to_owned).collect();
    let mut payload: serde_json::Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = serde_json::json!(["admin"]);
    parts[1] = B64.encode(payload.to_string());
    refused.push(("payload changed", parts.join(".")));
    // Expired: issued by the hub's own key an hour ago.
    let old = match hub.identity.login("org-north", "pat.medic", PASSWORD, None, now_s() - 3600).unwrap() {
        LoginOutcome::Session(t) => t.access_token,
        other => panic!("{other:?}"),
    };
    refused.push(("expired", old));
    // Signed with the hub's keys but for another audience, or by another issuer.
    for (what, settings) in [
        ("wrong audience", Settings { audience: "billing-api".into(), ..Settings::default() }),
        ("wrong issuer", Settings { issuer: "https://evil.example".into(), ..Settings::default() }),
    ] {
        let other = Identity::open(hub.storage.clone(), sealer(dir.path()), settings, now_s()).unwrap();
        let LoginOutcome::Session(t) = other.login("org-north", "pat.medic", PASSWORD, None, now_s()).unwrap() else {
            panic!()
        };
        refused.push((what, t.access_token));
    }
    // Signed by a key this hub does not hold (rotated out, or another hub's).
    let elsewhere = tempfile::tempdir().unwrap();
    let (_c2, hub2, _r2) = hub_with(elsewhere.path(), "");
    let (foreign, _) = create_and_login(&hub2.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    refused.push(("key not held", foreign.access_token));
    for (what, token) in &refused {
        let a = call(&router, get("/api/v1/cases", token)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.body);
        assert!(a.headers.contains_key("www-authenticate"), "{what}");
    }

    // Refresh rotates; the spent token used again ends the whole login.
    let r1 = tokens.refresh_token.clone();
    let second = call(&router, post_json("/api/v1/auth/refresh", serde_json::json!({"refresh_token": r1}))).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let r2 = second.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(
        call(&router, get("/api/v1/cases", second.body["access_token"].as_str().unwrap())).await.status,
        StatusCode::OK
    );
    let replay = call(&router, post_json("/api/v1/auth/refresh", serde_json::json!({"refresh_token": r1}))).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.body["error"].as_str().unwrap().contains("used before"), "{}", replay.body);
    let after = call(&router, post_json("/api/v1/auth/refresh", serde_json::json!({"refresh_token": r2}))).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "the family is revoked: {}", after.body);
    // Every login, refresh refusal and session end went into the audit chain, intact.
    hub.storage.verify_audit().unwrap().unwrap();
}

fn sealer(dir: &std::path::Path) -> cloud_sync::storage::crypto::Sealer {
    cloud_sync::storage::crypto::Sealer::load(&dir.join("hub.key")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn doctors_need_a_second_factor_codes_work_once_and_guessing_locks_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "");
    let (first, secret) = create_and_login(&hub.identity, "org-north", "dr.ana", &[Role::Doctor]);
    let (secret, step) = secret.expect("doctors enrol an authenticator");
    assert!(!first.access_token.is_empty());
    let login = |body: serde_json::Value| call(&router, post_json("/api/v1/auth/login", body));
    let base = serde_json::json!({"org": "org-north", "username": "dr.ana", "password": PASSWORD});
    // The password alone is not enough.
    let a = login(base.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["second_factor_required"], true, "{}", a.body);
    // The code the enrolment used is refused as a replay.
    let used = format!("{:06}", accounts::totp::code_at(&secret, step));
    let mut with_code = base.clone();
    with_code["totp"] = used.clone().into();
    let a = login(with_code).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body["error"].as_str().unwrap().contains("already used"), "{}", a.body);
    // The next step's code works (within the drift window), once.
    let next = format!("{:06}", accounts::totp::code_at(&secret, step + 1));
    let mut with_next = base.clone();
    with_next["totp"] = next.into();
    let a = login(with_next.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.headers["set-cookie"].to_str().unwrap().contains("HttpOnly; SameSite=Strict"));
    assert_eq!(a.headers["cache-control"], "no-store");
    let again = login(with_next).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.body);

    // Guessing passwords: five free failures (two spent above on codes), then a wait that
    // even the right password does not skip.
    let mut wrong = base.clone();
    wrong["password"] = "guess guess guess".into();
    // One failure stands already (the replayed code after the last success).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login(wrong.clone()).await.status);
    }
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    let mut right = base.clone();
    right["totp"] = format!("{:06}", accounts::totp::code_at(&secret, step + 2)).into();
    let locked = login(right).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{}", locked.body);
    let retry: u64 = locked.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // A recovery code stands in for the authenticator, once.
    let id = &hub.identity;
    let o = case_model::OrgId::parse("org-north").unwrap();
    let u = case_model::UserId::parse("adm.kim").unwrap();
    let link = id.add_user("admin", &o, &u, &[Role::Admin], None, now_s()).unwrap();
    id.redeem_reset(&link, PASSWORD, now_s()).unwrap();
    let LoginOutcome::EnrolMfa { enrolment_token } = id.login("org-north", "adm.kim", PASSWORD, None, now_s()).unwrap()
    else {
        panic!("admins enrol too")
    };
    let setup = id.mfa_enrol(&enrolment_token, now_s()).unwrap();
    let s2 = common::base32_decode(&setup.secret);
    id.mfa_confirm(&enrolment_token, &format!("{:06}", accounts::totp::code_at(&s2, (now_s() / 30) as u64)), now_s())
        .unwrap();
    let code = setup.recovery_codes[3].clone();
    let use_code = || id.login("org-north", "adm.kim", PASSWORD, Some(SecondFactor::Recovery(code.clone())), now_s());
    assert!(matches!(use_code().unwrap(), LoginOutcome::Session(_)));
    assert!(use_code().unwrap_err().to_string().contains("recovery code"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_links_work_once_and_end_every_login() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "");
    let (tokens, _) = create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    let (o, u) = (case_model::OrgId::parse("org-north").unwrap(), case_model::UserId::parse("pat.medic").unwrap());
    let link = hub.identity.reset_link("admin", &o, &u, now_s(), 1800).unwrap();
    let reset = |password: &str| {
        call(
            &router,
            post_json("/api/v1/auth/password/reset", serde_json::json!({"token": link, "password": password})),
        )
    };
    let weak = reset("short").await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(weak.body["error"].as_str().unwrap().contains("at least 12"), "{}", weak.body);
    assert_eq!(reset("a brand new passphrase").await.status, StatusCode::NO_CONTENT);
    let twice = reset("another new passphrase").await;
    assert_eq!(twice.status, StatusCode::UNAUTHORIZED, "{}", twice.body);
    // The old login ends (its refresh token no longer works); the new password logs in.
    let r =
        call(&router, post_json("/api/v1/auth/refresh", serde_json::json!({"refresh_token": tokens.refresh_token})))
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let ok = call(
        &router,
        post_json(
            "/api/v1/auth/login",
            serde_json::json!({"org": "org-north", "username": "pat.medic", "password": "a brand new passphrase"}),
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    // An expired link is refused.
    let stale = hub.identity.reset_link("admin", &o, &u, now_s() - 7200, 1800).unwrap();
    assert!(
        hub.identity
            .redeem_reset(&stale, "yet another passphrase", now_s())
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_sessions_need_the_csrf_token_and_end_when_idle_or_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "");
    let (tokens, _) = create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    let cookie = format!("{}={}", cloud_sync::front_door::SESSION_COOKIE, tokens.cookie);
    let by_cookie = |method: &str, uri: &str, csrf: Option<&str>| {
        let mut b = Request::builder().method(method).uri(uri).header("cookie", cookie.clone());
        if let Some(c) = csrf {
            b = b.header("x-csrf-token", c);
        }
        b.header("content-type", "application/json").body(Body::from("{}")).unwrap()
    };
    assert_eq!(call(&router, by_cookie("GET", "/api/v1/cases", None)).await.status, StatusCode::OK);
    let forged = call(&router, by_cookie("POST", "/api/v1/auth/logout", None)).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(forged.body["error"].as_str().unwrap().contains("X-CSRF-Token"));
    let wrong = call(&router, by_cookie("POST", "/api/v1/auth/logout", Some("not-the-token"))).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let out = call(&router, by_cookie("POST", "/api/v1/auth/logout", Some(&tokens.csrf_token))).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(call(&router, by_cookie("GET", "/api/v1/cases", None)).await.status, StatusCode::UNAUTHORIZED);

    // Timeouts, on the server's clock.
    let id = &hub.identity;
    let s = id.settings().clone();
    let (t, _) = create_and_login(id, "org-north", "pat.two", &[Role::Paramedic]);
    let start = now_s();
    // Used every ten minutes the session lives past the idle timeout, up to the absolute one.
    let mut at = start;
    while at + 600 < start + s.absolute_timeout_s {
        at += 600;
        id.authenticate_cookie(&t.cookie, at).unwrap();
    }
    assert!(id.authenticate_cookie(&t.cookie, start + s.absolute_timeout_s + 1).is_err());
    let (idle, _) = create_and_login(id, "org-north", "pat.three", &[Role::Paramedic]);
    assert!(id.authenticate_cookie(&idle.cookie, now_s() + s.idle_timeout_s - 30).is_ok());
    let late = now_s() + 2 * s.idle_timeout_s;
    assert_eq!(id.authenticate_cookie(&idle.cookie, late).unwrap_err(), cloud_sync::identity::AuthError::TimedOut);
    assert!(id.refresh(&idle.refresh_token, late).is_err(), "an idle session cannot be refreshed either");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_limit_what_each_user_does_rate_limits_answer_429_and_metrics_count_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "[front_door]\nper_user_per_s = 0.5\nper_user_burst = 6\n");
    let (admin, _) = create_and_login(&hub.identity, "org-north", "adm.kim", &[Role::Admin]);
    let (dispatcher, _) = create_and_login(&hub.identity, "org-north", "dis.lee", &[Role::Dispatcher]);
    // An administrator manages accounts but reads no case.
    let a = call(&router, get("/api/v1/cases", &admin.access_token)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body["error"].as_str().unwrap().contains("case_read"), "{}", a.body);
    let users = call(&router, get("/api/v1/admin/users", &admin.access_token)).await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.body);
    assert_eq!(users.body.as_array().unwrap().len(), 2);
    // A dispatcher reads cases, cannot manage accounts.
    assert_eq!(call(&router, get("/api/v1/cases", &dispatcher.access_token)).await.status, StatusCode::OK);
    assert_eq!(call(&router, get("/api/v1/admin/users", &dispatcher.access_token)).await.status, StatusCode::FORBIDDEN);
    // Past the burst, a user waits.
    let mut answers = Vec::new();
    for _ in 0..10 {
        let a = call(&router, get("/api/v1/cases", &dispatcher.access_token)).await;
        let limited = a.status == StatusCode::TOO_MANY_REQUESTS;
        answers.push(a);
        if limited {
            break;
        }
    }
    // Two requests came before the loop: the burst of six ends at the fifth here.
    assert_eq!(answers.len(), 5, "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    let last = answers.pop().unwrap();
    let retry: u64 = last.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another user is not slowed by it.
    assert_eq!(call(&router, get("/api/v1/admin/users", &admin.access_token)).await.status, StatusCode::OK);
    // A request id given is echoed; metrics count by route template, never by id.
    let req = Request::builder()
        .uri("/api/v1/cases/0190a7c4-0000-7000-8000-000000000001")
        .header("authorization", format!("Bearer {}", admin.access_token))
        .header("x-request-id", "trace-42")
        .body(Body::empty())
        .unwrap();
    let a = call(&router, req).await;
    assert_eq!(a.headers["x-request-id"], "trace-42");
    let metrics =
        router.clone().oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(metrics.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("route=\"/api/v1/cases/{id}\",method=\"GET\",status=\"403\"} 1"), "{text}");
    assert!(text.contains("medvan_front_door_refusals_total{reason=\"rate_limited\"} 1"), "{text}");
    assert!(!text.contains("0190a7c4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_stops_access_tokens_parallel_guesses_all_count_and_logins_take_json_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, router) = hub_with(dir.path(), "[front_door]\nlogins_per_address_per_min = 1000.0\n");
    let (tokens, _) = create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    // Logged out: the access token stops working too, not only the refresh token.
    let sid = tokens.refresh_token.split('.').next().unwrap().to_owned();
    hub.identity.logout(&sid, now_s()).unwrap();
    assert_eq!(call(&router, get("/api/v1/cases", &tokens.access_token)).await.status, StatusCode::UNAUTHORIZED);
    // A made-up refresh secret for a known session id does not end that session.
    let (live, _) = create_and_login(&hub.identity, "org-north", "pat.two", &[Role::Paramedic]);
    let live_sid = live.refresh_token.split('.').next().unwrap();
    let forged = format!("{live_sid}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert!(hub.identity.refresh(&forged, now_s()).is_err());
    assert!(hub.identity.refresh(&live.refresh_token, now_s()).is_ok(), "the real login goes on");

    // Twenty wrong passwords at once: every one is counted, so the account is locked after.
    let id = hub.identity.clone();
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                id.login("org-north", "pat.two", &format!("guess number {i}"), None, now_s())
            })
        })
        .collect();
    for g in guesses {
        assert!(g.await.unwrap().is_err());
    }
    let after = hub.identity.login("org-north", "pat.two", PASSWORD, None, now_s());
    assert!(matches!(after, Err(cloud_sync::identity::IdentityError::LockedOut(_))), "{after:?}");

    // A name with no account locks the same way after the same failures, so a lockout does
    // not tell an attacker which names exist.
    let lock_point = |user: &'static str| {
        (1..=10)
            .find(|_| {
                matches!(
                    hub.identity.login("org-north", user, "wrong password here", None, now_s()),
                    Err(cloud_sync::identity::IdentityError::LockedOut(_))
                )
            })
            .unwrap_or(0)
    };
    create_and_login(&hub.identity, "org-north", "pat.three", &[Role::Paramedic]);
    let real = lock_point("pat.three");
    assert!(real > 1, "the account locks after some failures");
    assert_eq!(lock_point("no.such.person"), real, "an unknown name locks at the same point");

    // A cross-site form cannot post a login.
    let form = Request::builder()
        .method("POST")
        .uri("/api/v1/auth/login")
        .header("content-type", "text/plain")
        .body(Body::from(
            serde_json::json!({"org": "org-north", "username": "pat.medic", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    assert_eq!(call(&router, form).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}
