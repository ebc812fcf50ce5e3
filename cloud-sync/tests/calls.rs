//! Live calls through the hub's media server: the van's GStreamer pipeline (webrtcbin,
//! test sources at 640x360 and 25 fps, each frame stamped with the time) publishes over
//! WHIP; a doctor's headless Chromium watches over WHEP and sends its own fake camera and
//! microphone over WHIP, which the van's touchscreen (another Chromium) watches; a second
//! doctor joins and leaves. Chat beside the call goes into the case. Prints what arrived
//! and the glass-to-glass latency.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::identity::roles::Role;
use tower::ServiceExt;

/// This host's address as other hosts would reach it (no packet is sent), or loopback.
fn host_ip() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("192.0.2.1:9").map(|()| s));
    probe.and_then(|s| s.local_addr()).map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_publishes_and_a_doctor_in_chromium_watches_and_answers_through_the_hub() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
    let node_modules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/node_modules/playwright-core");
    assert!(node_modules.exists(), "run scripts/setup-jstools.sh first (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, _) = common::two_org_hub(dir.path());
    let ip = host_ip();
    config.calls = Some(cloud_sync::calls::CallConfig { bind: "0.0.0.0:0".parse().unwrap(), advertise: ip });
    let state = cloud_sync::HubState::open(&config).unwrap().with_hub(&hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cloud_sync::serve(state, listener, async move {
        let _ = stop_rx.await;
    }));

    let (medic, _) = common::create_and_login(&hub.identity, "org-north", "ben.medic", &[Role::Paramedic]);
    let (doctor, _) = common::create_and_login(&hub.identity, "org-north", "dr.neuro", &[Role::Doctor]);
    let (south, _) = common::create_and_login(&hub.identity, "org-south", "dr.south", &[Role::Doctor]);
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    let case = view.id.to_string();

    // The van publishes (in its own thread: the pipeline blocks while it negotiates).
    let whip = format!("{origin}/api/v1/calls/{case}/whip");
    let settings = media::publish::Settings {
        url: whip.clone(),
        token: medic.access_token.clone(),
        source: media::source::Source::Test,
        format: media::source::Format { width: 640, height: 360, fps: 25 },
        bitrate_kbps: 1500,
    };
    let publisher =
        tokio::task::spawn_blocking(move || media::publish::Publisher::start(&settings)).await.unwrap().unwrap();

    // Someone of another organisation cannot join the call, nor see who is in it.
    let client = |method: &str, uri: &str, token: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/sdp")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    // (A second front end on the same hub, with a media server of its own.)
    let other = cloud_sync::app(cloud_sync::HubState::open(&config).unwrap().with_hub(&hub));
    for (method, uri) in [("GET", format!("/api/v1/calls/{case}")), ("POST", format!("/api/v1/calls/{case}/whep"))] {
        let resp = other.clone().oneshot(client(method, &uri, &south.access_token, "v=0")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {uri}");
    }

    // Three browsers at once: the neurologist watches for 12 s and sends their camera; the
    // van's touchscreen (the crew's login) watches for 12 s; a second doctor joins after 3 s
    // and leaves after 4.
    let (stroke, _) = common::create_and_login(&hub.identity, "org-north", "dr.stroke", &[Role::Doctor]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/whep.mjs");
    let browser = |token: &str, secs: &str, extra: &[&str]| {
        let mut args = vec![origin.clone(), case.clone(), token.to_owned(), secs.to_owned()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let script = script.clone();
        tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(&script).args(args).output())
    };
    let doctor_run = browser(&doctor.access_token, "12", &["--publish"]);
    let van_run = browser(&medic.access_token, "12", &["--delay", "1"]);
    let second_run = browser(&stroke.access_token, "4", &["--delay", "3"]);
    let parse = |out: std::process::Output, who: &str| -> serde_json::Value {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{who}'s browser failed: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{who}: {e}: {stderr}"))
    };
    let got = parse(doctor_run.await.unwrap().unwrap(), "the doctor");
    let van = parse(van_run.await.unwrap().unwrap(), "the van");
    let second = parse(second_run.await.unwrap().unwrap(), "the second doctor");
    let brief = |g: &serde_json::Value| {
        serde_json::json!({
            "ice": g["ice"], "first_frame_ms": g["firstFrameMs"], "decoded_frames": g["decodedFrames"],
            "size": format!("{}x{}", g["width"], g["height"]), "fps": g["framesPerSecond"],
            "audio_packets": g["audioPackets"], "sent": g["outbound"], "sessions": g["sessions"],
        })
    };
    println!("doctor's browser: {}", brief(&got));
    println!("van's touchscreen: {}", brief(&van));
    println!("second doctor: {}", brief(&second));
    // The van's picture and sound reach the doctor, at the size and rate sent.
    assert!(got["decodedFrames"].as_u64().unwrap_or(0) >= 100, "video frames arrived: {got}");
    assert!(got["width"].as_u64().unwrap_or(0) >= 640 && got["height"].as_u64().unwrap_or(0) >= 360, "{got}");
    assert!(got["audioPackets"].as_u64().unwrap_or(0) >= 200, "audio arrived: {got}");
    // The doctor's camera and microphone reach the van.
    assert!(got["outbound"]["video"]["packetsSent"].as_u64().unwrap_or(0) > 100, "{got}");
    assert!(van["decodedFrames"].as_u64().unwrap_or(0) >= 100, "the doctor's video reached the van: {van}");
    assert!(van["audioPackets"].as_u64().unwrap_or(0) >= 200, "the doctor's audio reached the van: {van}");
    // The second doctor saw the van while in the call, and the call counted them in and out.
    assert!(second["decodedFrames"].as_u64().unwrap_or(0) >= 25, "{second}");
    assert_eq!(second["deleted"], 200);
    let sessions: Vec<u64> = got["sessions"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).collect();
    let most = sessions.iter().copied().max().unwrap_or(0);
    assert_eq!(most, 5, "the van and the doctor publishing, three watching: {sessions:?}");
    assert!(sessions.last().copied().unwrap_or(0) <= 4, "the second doctor left: {sessions:?}");

    let mut lat: Vec<f64> = got["latencies"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    lat.sort_by(f64::total_cmp);
    assert!(lat.len() >= 100, "the time code was read from {} frames", lat.len());
    let (p50, p95) = (percentile(&lat, 0.5), percentile(&lat, 0.95));
    println!("glass-to-glass latency, clean loopback link: p50 {p50:.0} ms, p95 {p95:.0} ms over {} frames", lat.len());
    // Aims are 250 and 400 ms; the ceiling is five times that (a noisy machine).
    assert!(p50 < 1250.0 && p95 < 2000.0, "p50 {p50} p95 {p95}");
    assert_eq!(got["deleted"], 200);

    // Chat beside the call is kept in the case: the doctor's line reaches the van with the
    // sync, and the crew's answer reaches the hub.
    let north = case_model::OrgId::parse("org-north").unwrap();
    let (status, _) = common::call(
        &other,
        "POST",
        &format!("/api/v1/cases/{case}/edits"),
        &doctor.access_token,
        Some(serde_json::json!({"edits": [{"op": "add_chat", "text": "Any facial droop? Show me the left side."}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let crew = case_model::EditContext {
        user: case_model::UserId::parse("ben.medic").unwrap(),
        now: case_model::Timestamp::from_unix_millis(common::now_s() * 1000),
    };
    store.edit_case(&crew, view.id, &[case_model::Edit::AddChat { text: "Yes, right side droop.".into() }]).unwrap();
    let device = sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap();
    common::pump(
        &mut edge_agent::sync::StoreReplica::new(store.clone(), "hub").unwrap(),
        &mut hub.cases.replica_for(&device),
    );
    let at_van: Vec<String> =
        store.read_case(&crew, view.id).unwrap().chat.iter().map(|c| c["text"].to_string()).collect();
    let at_hub: Vec<String> = hub
        .cases
        .read_case(&case_model::UserId::parse("dr.neuro").unwrap(), &north, view.id)
        .unwrap()
        .chat
        .iter()
        .map(|c| c["text"].to_string())
        .collect();
    assert_eq!(at_van.len(), 2, "{at_van:?}");
    assert_eq!(at_van, at_hub);

    tokio::task::spawn_blocking(move || publisher.stop()).await.unwrap().unwrap();
    let _ = stop_tx.send(());
    let _ = server.await;
}
