//! The front door's cost: an authenticated read through the full middleware stack (request
//! id, rate limits, token verification, access log, metrics) beside the same handler with
//! no middleware (the caller put in place directly), in one run, in process.
//!
//! `cargo bench -p cloud-sync --bench front_door`. Environment: `MEDVAN_BENCH_REQUESTS`
//! (default 20000 per variant), `MEDVAN_BENCH_CLIENTS` (default 8 concurrent).
//!
//! Two reads: `GET /api/v1/auth/me` (no storage: the middleware's share is plain) and
//! `GET /api/v1/cases` (an organisation's case list: a query of the SQLite store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::identity::roles::Role;
use cloud_sync::identity::{LoginOutcome, Principal};
use cloud_sync::{HubState, app, bare_routes};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Runs `total` requests from `clients` concurrent tasks; returns requests per second and
/// the latency percentiles 50 and 99.
async fn drive(router: &Router, uri: &str, token: Option<&str>, total: u64, clients: u64) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (router, uri, token) = (router.clone(), uri.to_owned(), token.map(str::to_owned));
        let n = total / clients;
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let mut b = Request::builder().uri(&uri);
                if let Some(t) = &token {
                    b = b.header("authorization", format!("Bearer {t}"));
                }
                let t0 = Instant::now();
                let resp = router.clone().oneshot(b.body(Body::empty()).unwrap()).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

fn main() {
    let total = env_u64("MEDVAN_BENCH_REQUESTS", 20_000);
    let clients = env_u64("MEDVAN_BENCH_CLIENTS", 8);
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        cloud_sync::config::Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n", dir.path().display())).unwrap();
    // The limits stay in the stack but never bite: the benchmark measures their cost.
    config.front_door.per_address_per_s = 1e9;
    config.front_door.per_address_burst = u32::MAX;
    config.front_door.per_user_per_s = 1e9;
    config.front_door.per_user_burst = u32::MAX;
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    let (org, user) = (case_model::OrgId::parse("org-north").unwrap(), case_model::UserId::parse("dis.lee").unwrap());
    hub.cases.create_org(&case_model::UserId::parse("admin").unwrap(), &org, "North").unwrap();
    let link = hub.identity.add_user("admin", &org, &user, &[Role::Dispatcher], None, now_s()).unwrap();
    hub.identity.redeem_reset(&link, "a long bench passphrase", now_s()).unwrap();
    let LoginOutcome::Session(tokens) =
        hub.identity.login("org-north", "dis.lee", "a long bench passphrase", None, now_s()).unwrap()
    else {
        panic!("dispatchers need no second factor")
    };
    let principal = hub.identity.authenticate_bearer(&tokens.access_token, now_s()).unwrap();

    let full = app(HubState::open(&config).unwrap().with_hub(&hub));
    let state = Arc::new(HubState::open(&config).unwrap().with_hub(&hub));
    let bare: Router = bare_routes().layer(axum::Extension::<Principal>(principal)).with_state(state);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Access log lines go nowhere (no subscriber): their formatting cost is not measured.
    println!("front door: {total} requests per variant, {clients} concurrent clients, in process (no TCP)");
    println!("{:<22} {:>12} {:>10} {:>10}", "read", "variant", "req/s", "p99");
    for uri in ["/api/v1/auth/me", "/api/v1/cases"] {
        let n = if uri == "/api/v1/cases" { total / 10 } else { total };
        rt.block_on(async {
            // Warm both once.
            drive(&full, uri, Some(&tokens.access_token), clients * 10, clients).await;
            drive(&bare, uri, None, clients * 10, clients).await;
            let (f_rps, _, f_p99) = drive(&full, uri, Some(&tokens.access_token), n, clients).await;
            let (b_rps, _, b_p99) = drive(&bare, uri, None, n, clients).await;
            println!("{uri:<22} {:>12} {f_rps:>10.0} {:>10.3?}", "front door", f_p99);
            println!("{uri:<22} {:>12} {b_rps:>10.0} {:>10.3?}", "bare", b_p99);
            println!(
                "{uri:<22} {:>12} {:>9.1}% {:>+9.3?}",
                "cost",
                (1.0 - f_rps / b_rps) * 100.0,
                f_p99.saturating_sub(b_p99)
            );
        });
    }
}
