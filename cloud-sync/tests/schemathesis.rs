//! schemathesis (PyPI), an independent API fuzzer, against the hub's OpenAPI document:
//! authenticated as a doctor and as an admin, at least 50 examples per operation that takes
//! any input (80 asked for; Hypothesis stops early on inputs it has seen), no server
//! error and no response that breaks its documented schema.

mod common;

use cloud_sync::identity::roles::Role;
use cloud_sync::{HubState, app};

fn schemathesis() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pytools/bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run scripts/setup-pytools.sh (scripts/test.sh does)", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_off_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, _) = common::two_org_hub(dir.path());
    // The fuzzer sends thousands of requests from one address within minutes.
    config.front_door.per_address_per_s = 1e6;
    config.front_door.per_address_burst = 1_000_000;
    config.front_door.per_user_per_s = 1e6;
    config.front_door.per_user_burst = 1_000_000;
    config.front_door.logins_per_address_per_min = 1e6;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.hub.public_url = Some(format!("http://{addr}"));
    // A relay, so the forgotten-password route is in service (no account here has a mail
    // address, so nothing is ever sent to it).
    config.mail = Some(cloud_sync::mail::MailConfig {
        relay: "127.0.0.1:25".into(),
        tls: cloud_sync::mail::TlsMode::Starttls,
        from: "noreply@medvan.test".into(),
        username: None,
        password_file: None,
        ca_file: None,
        helo_name: "medvan-hub".into(),
    });
    // Tokens that outlive the run.
    let long = cloud_sync::identity::Settings { access_lifetime_s: 3600, ..hub.identity.settings().clone() };
    let identity = cloud_sync::identity::Identity::open(
        hub.storage.clone(),
        cloud_sync::storage::crypto::Sealer::load(&config.key_file()).unwrap(),
        long,
        common::now_s(),
    )
    .unwrap();
    let (doctor, _) = common::create_and_login(&identity, "org-north", "dr.fuzz", &[Role::Doctor]);
    let (admin, _) = common::create_and_login(&identity, "org-north", "adm.fuzz", &[Role::Admin]);
    let state = HubState::open(&config).unwrap().with_hub(&hub);
    let server = tokio::spawn(async move {
        axum::serve(listener, app(state).into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    });
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/openapi.json");
    let reports = tempfile::tempdir().unwrap();
    let mut totals = Vec::new();
    let mut before = requests_by_route(addr).await;
    let mut per_op: std::collections::HashMap<(String, String), u64> = std::collections::HashMap::new();
    for (who, token) in [("doctor", doctor.access_token), ("admin", admin.access_token)] {
        let report = reports.path().join(format!("{who}.json"));
        let (bin, spec, path) = (schemathesis(), spec.clone(), report.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .arg("run")
                .arg(&spec)
                .args(["--url", &format!("http://{addr}")])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args(["--checks", "not_a_server_error,response_schema_conformance,content_type_conformance"])
                // One worker: Python 3.11's parser is not safe to run from two threads at once, and
                // schemathesis parses lambdas' sources while it generates.
                .args(["--max-examples", "80", "--seed", "20261127", "--workers", "1"])
                .args(["--phases", "examples,coverage,fuzzing"])
                // STOW-RS bodies are multipart/related DICOM, which schemathesis cannot
                // make; PyPI dicomweb-client drives them (tests/dicomweb.rs).
                .args(["--exclude-operation-id", "stowStudies", "--exclude-operation-id", "stowStudy"])
                // The event stream does not end (it is a stream); tests/tenancy.rs reads it.
                .args(["--exclude-path", "/api/v1/events"])
                // WHIP and WHEP bodies are SDP offers (application/sdp), which schemathesis
                // cannot make; tests/calls.rs sends real ones from GStreamer and Chromium.
                .args(["--exclude-path", "/api/v1/calls/{case}/whip", "--exclude-path", "/api/v1/calls/{case}/whep"])
                .args(["--report", "json", "--report-json-path"])
                .arg(&path)
                .args(["--no-color", "--output-truncate", "true"])
                .env("SCHEMATHESIS_HOOKS", "")
                // Its caches go to the run's temporary directory, not the source tree.
                .current_dir(path.parent().expect("the report is in a directory"))
                .args(["--generation-database", "none"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).rev().take(25).collect();
        println!("schemathesis as {who}:\n{}", summary.into_iter().rev().collect::<Vec<_>>().join("\n"));
        assert!(
            out.status.success(),
            "schemathesis found problems as {who}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Requests per operation, as the hub's own metrics counted them.
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let now = requests_by_route(addr).await;
        let doc: serde_json::Value = serde_json::from_str(cloud_sync::OPENAPI).unwrap();
        let mut fewest = (u64::MAX, String::new());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let key = (path.clone(), method.to_ascii_uppercase());
                let n = now.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0);
                // Left out above: STOW-RS (multipart DICOM), the event stream (it does not end),
                // and WHIP and WHEP (SDP bodies).
                if op["operationId"].as_str().is_some_and(|id| id.starts_with("stow"))
                    || path == "/api/v1/events"
                    || path.ends_with("/whip")
                    || path.ends_with("/whep")
                {
                    continue;
                }
                // An operation with no input at all (no parameter, body or credential) has
                // one request to make.
                let has_input = op["parameters"].as_array().is_some_and(|p| !p.is_empty())
                    || op.get("requestBody").is_some()
                    || op["security"].as_array().is_some_and(|s| !s.is_empty());
                if has_input {
                    // A DELETE that succeeds ends its run early (schemathesis treats the
                    // resource as gone): the two runs together must reach 50.
                    *per_op.entry(key.clone()).or_insert(0) += n;
                    if method != "delete" {
                        assert!(n >= 50, "{method} {path}: only {n} requests as {who}");
                    }
                    if n < fewest.0 {
                        fewest = (n, format!("{} {path}", method.to_ascii_uppercase()));
                    }
                }
                println!("  {:<7}{path:<78} {n:>5} requests", method.to_ascii_uppercase());
            }
        }
        before = now;
        let generated = r["test_cases"]["generated"].as_u64().unwrap();
        let tested = r["operations"]["tested"].as_u64().unwrap();
        println!(
            "schemathesis as {who}: {tested} operations, {generated} test cases, no failures; fewest requests to one operation: {} ({})",
            fewest.0, fewest.1
        );
        assert_eq!(r["test_cases"]["with_failures"], 0);
        assert_eq!(r["test_cases"]["errored"], 0);
        totals.push((who, generated));
    }
    server.abort();
    assert_eq!(totals.len(), 2);
    for ((path, method), n) in per_op {
        assert!(n >= 50, "{method} {path}: only {n} requests in both runs");
    }
}

/// Requests answered so far, by route template and method, from the hub's `/metrics`.
async fn requests_by_route(addr: std::net::SocketAddr) -> std::collections::HashMap<(String, String), u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let mut out = std::collections::HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("medvan_http_requests_total{")) {
        let field = |name: &str| -> String {
            let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            line[start..].split('"').next().unwrap().to_owned()
        };
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry((field("route"), field("method"))).or_default() += n;
    }
    out
}
