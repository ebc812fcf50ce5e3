//! Live calls through the hub's media server: the van's GStreamer pipeline (webrtcbin,
//! test sources at 640x360 and 25 fps, each frame stamped with the time) publishes over
//! WHIP; a doctor's headless Chromium watches over WHEP and sends its own fake camera and
//! microphone over WHIP, which the van's touchscreen (another Chromium) watches; a second
//! doctor joins and leaves. Chat beside the call goes into the case. Then a doctor watches
//! over a link with 5% loss and 100 ms delay each way (a seeded relay). Prints what arrived
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

use std::time::Duration;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A hub serving HTTP on loopback with a media server on `media_port` (0: any), a case of
/// van-1, and its people logged in.
struct Setup {
    hub: cloud_sync::fleet::Hub,
    config: cloud_sync::config::Config,
    origin: String,
    case: String,
    view: case_model::CaseView,
    store: case_store::Store,
    medic: String,
    doctor: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup(media_port: u16) -> Setup {
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
    // The doctors' app, as scripts/setup-jstools.sh builds it.
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    assert!(web.join("index.html").exists(), "build the doctor app first: scripts/setup-jstools.sh");
    config.hub.web_dir = Some(web);
    config.calls = Some(cloud_sync::calls::CallConfig {
        bind: std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), media_port),
        advertise: host_ip(),
    });
    let state = cloud_sync::HubState::open(&config).unwrap().with_hub(&hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cloud_sync::serve(state, listener, async move {
        let _ = stop_rx.await;
    }));
    let (medic, _) = common::create_and_login(&hub.identity, "org-north", "ben.medic", &[Role::Paramedic]);
    let (doctor, _) = common::create_and_login(&hub.identity, "org-north", "dr.neuro", &[Role::Doctor]);
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    Setup {
        case: view.id.to_string(),
        hub,
        config,
        origin,
        view,
        store,
        medic: medic.access_token,
        doctor: doctor.access_token,
        stop: Some(stop_tx),
        server: Some(server),
        _dirs: (dir, vdir),
    }
}

impl Setup {
    /// The van starts publishing test sources (640x360, 25 fps, stamped).
    async fn publish(&self) -> media::publish::Publisher {
        self.publish_recording(None).await
    }

    async fn publish_recording(&self, record: Option<media::publish::Recording>) -> media::publish::Publisher {
        let settings = media::publish::Settings {
            url: format!("{}/api/v1/calls/{}/whip", self.origin, self.case),
            token: self.medic.clone(),
            source: media::source::Source::Test,
            format: media::source::Format { width: 640, height: 360, fps: 25 },
            bitrate_kbps: 1500,
            record,
        };
        // In a thread of its own: the pipeline blocks while it negotiates.
        tokio::task::spawn_blocking(move || media::publish::Publisher::start(&settings)).await.unwrap().unwrap()
    }

    /// A browser in the call as `token` for `secs` seconds (see tests/ui/whep.mjs).
    fn browser(
        &self,
        token: &str,
        secs: &str,
        extra: &[&str],
    ) -> tokio::task::JoinHandle<std::io::Result<std::process::Output>> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/whep.mjs");
        let mut args = vec![self.origin.clone(), self.case.clone(), token.to_owned(), secs.to_owned()];
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(&script).args(args).output())
    }

    async fn finish(mut self, publisher: media::publish::Publisher) {
        tokio::task::spawn_blocking(move || publisher.stop()).await.unwrap().unwrap();
        self.stop_server().await;
    }

    async fn stop_server(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

fn parse(out: std::process::Output, who: &str) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{who}'s browser failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{who}: {e}: {stderr}"))
}

fn brief(g: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "ice": g["ice"], "first_frame_ms": g["firstFrameMs"], "decoded_frames": g["decodedFrames"],
        "size": format!("{}x{}", g["width"], g["height"]), "fps": g["framesPerSecond"],
        "audio_packets": g["audioPackets"], "sent": g["outbound"], "sessions": g["sessions"],
    })
}

/// p50 and p95 of the latencies the browser read off the frames.
fn latency(got: &serde_json::Value) -> (f64, f64, usize) {
    let mut lat: Vec<f64> = got["latencies"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    lat.sort_by(f64::total_cmp);
    assert!(lat.len() >= 50, "the time code was read from {} frames", lat.len());
    (percentile(&lat, 0.5), percentile(&lat, 0.95), lat.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_publishes_and_a_doctor_in_chromium_watches_and_answers_through_the_hub() {
    let t = setup(0).await;
    let (hub, config, origin, case, view, store) = (&t.hub, &t.config, &t.origin, &t.case, &t.view, &t.store);
    let _ = origin;
    let (south, _) = common::create_and_login(&hub.identity, "org-south", "dr.south", &[Role::Doctor]);
    let publisher = t.publish().await;

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
    let other = cloud_sync::app(cloud_sync::HubState::open(config).unwrap().with_hub(hub));
    for (method, uri) in [("GET", format!("/api/v1/calls/{case}")), ("POST", format!("/api/v1/calls/{case}/whep"))] {
        let resp = other.clone().oneshot(client(method, &uri, &south.access_token, "v=0")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {uri}");
    }

    // Three browsers at once: the neurologist watches for 12 s and sends their camera; the
    // van's touchscreen (the crew's login) watches for 12 s; a second doctor joins after 3 s
    // and leaves after 4.
    let (stroke, _) = common::create_and_login(&hub.identity, "org-north", "dr.stroke", &[Role::Doctor]);
    let doctor_run = t.browser(&t.doctor, "12", &["--publish"]);
    let van_run = t.browser(&t.medic, "12", &["--delay", "1"]);
    let second_run = t.browser(&stroke.access_token, "4", &["--delay", "3"]);
    let got = parse(doctor_run.await.unwrap().unwrap(), "the doctor");
    let van = parse(van_run.await.unwrap().unwrap(), "the van");
    let second = parse(second_run.await.unwrap().unwrap(), "the second doctor");
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

    let (p50, p95, n) = latency(&got);
    println!("glass-to-glass latency, clean link: p50 {p50:.0} ms, p95 {p95:.0} ms over {n} frames");
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
        &t.doctor,
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

    t.finish(publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_a_link_with_5_percent_loss_and_100_ms_delay_stays_up() {
    // A free UDP port for the media server, so the doctor's link can be put in front of it.
    let port = std::net::UdpSocket::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let t = setup(port).await;
    let shaped = netsim::LinkConfig { loss: 0.05, delay: Duration::from_millis(100), ..Default::default() };
    let link =
        netsim::UdpRelay::start(std::net::SocketAddr::new(host_ip(), port), shaped.clone(), shaped, 7).await.unwrap();
    let publisher = t.publish().await;
    let via = link.local_addr().to_string();
    let got = parse(t.browser(&t.doctor, "15", &["--via", &via]).await.unwrap().unwrap(), "the doctor");
    println!("doctor's browser on a lossy link: {}", brief(&got));
    let (up, down) = link.stats();
    println!("the doctor's link: {up:?} up, {down:?} down");
    assert!(down.dropped > 50, "the link lost packets: {down:?}");
    // Still up: the picture keeps coming (at least 10 fps on average) and the sound.
    assert_eq!(got["ice"], "connected", "{got}");
    assert!(got["decodedFrames"].as_u64().unwrap_or(0) >= 150, "{got}");
    assert!(got["audioPackets"].as_u64().unwrap_or(0) >= 500, "{got}");
    let (p50, p95, n) = latency(&got);
    println!(
        "glass-to-glass latency, 5% loss and 100 ms delay on the doctor's link: p50 {p50:.0} ms, p95 {p95:.0} ms over {n} frames"
    );
    assert!(p50 < 1250.0 + 500.0 && p95 < 2000.0 + 500.0, "p50 {p50} p95 {p95}");
    t.finish(publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_joins_the_call_and_sees_the_map_in_the_web_app() {
    let t = setup(0).await;
    common::create_with_password(&t.hub.identity, "org-north", "dr.app", &[Role::Doctor]);
    let (admin, _) = common::create_and_login(&t.hub.identity, "org-north", "adm.zones", &[Role::Admin]);
    let router = cloud_sync::app(cloud_sync::HubState::open(&t.config).unwrap().with_hub(&t.hub));
    let zone = serde_json::json!({
        "name": "St Mary's approach", "kind": "hospital_approach",
        "shape": {"type": "circle", "center": {"lat": 51.5155, "lon": -0.1746}, "radius_m": 1000}, "team": ["dr.app"],
    });
    let (status, _) = common::call(&router, "POST", "/api/v1/geofences", &admin.access_token, Some(zone)).await;
    assert_eq!(status, StatusCode::CREATED);
    let publisher = t.publish().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/call_app.mjs");
    let args = [t.origin.clone(), t.case.clone(), "dr.app".to_owned(), common::PASSWORD.to_owned()];
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(&script).args(args).output())
        .await
        .unwrap()
        .unwrap();
    let got = parse(out, "the doctor app");
    println!("doctor app: {got}");
    assert!(got["people"].as_str().unwrap_or_default().contains("ben.medic"), "{got}");
    assert_eq!(got["own_camera"], true, "{got}");
    assert_eq!(got["left"], true);
    assert_eq!(got["zones_drawn"], 1, "{got}");
    assert_eq!(got["off_host"], serde_json::json!([]), "{got}");
    t.finish(publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_of_a_consult_reaches_the_hub_whole_after_the_van_reconnects() {
    let mut t = setup(0).await;
    let spool = tempfile::tempdir().unwrap();
    let record = media::publish::Recording { dir: spool.path().to_owned(), segment_s: 4, bitrate_kbps: 2500 };
    let publisher = t.publish_recording(Some(record)).await;
    // The call runs for ten seconds; the van is offline for the hub's sync meanwhile.
    let crew = case_model::EditContext {
        user: case_model::UserId::parse("ben.medic").unwrap(),
        now: case_model::Timestamp::from_unix_millis(common::now_s() * 1000),
    };
    let case = t.view.id;
    let mut sealed = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for seg in publisher.finished_segments() {
            let label = format!("consult recording, {}", seg.file_name().unwrap().to_string_lossy());
            sealed.push(edge_agent::recordings::ingest(&t.store, &crew, case, &seg, &label).unwrap());
        }
    }
    let stopped = tokio::task::spawn_blocking(move || publisher.stop()).await.unwrap().unwrap();
    for seg in &stopped.segments {
        let label = format!("consult recording, {}", seg.file_name().unwrap().to_string_lossy());
        sealed.push(edge_agent::recordings::ingest(&t.store, &crew, case, seg, &label).unwrap());
    }
    assert!(sealed.len() >= 3, "segments of 4 s over 10 s: {sealed:?}");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "no plain segment is left behind");

    // The van reconnects: the sync carries the case and then the recording.
    let device = sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap();
    common::pump(
        &mut edge_agent::sync::StoreReplica::new(t.store.clone(), "hub").unwrap(),
        &mut t.hub.cases.replica_for(&device),
    );
    let north = case_model::OrgId::parse("org-north").unwrap();
    let doctor = case_model::UserId::parse("dr.neuro").unwrap();
    let at_hub = t.hub.cases.read_case(&doctor, &north, case).unwrap();
    let segments: Vec<&case_model::Item> = at_hub.attachments.iter().filter(|a| a["kind"] == "video_segment").collect();
    assert_eq!(segments.len(), sealed.len());
    let out = tempfile::tempdir().unwrap();
    let mut decoded = 0;
    for (i, a) in segments.iter().enumerate() {
        let sha = a["sha256"].as_str().unwrap();
        let (bytes, media_type) = t.hub.cases.read_attachment(&doctor, &north, case, sha).unwrap();
        assert_eq!(media_type, "video/x-matroska");
        let path = out.path().join(format!("{i}.mkv"));
        std::fs::write(&path, bytes).unwrap();
        decoded += media::inspect::decoded_video_frames(&path).unwrap();
    }
    let recorded = stopped.recorded_frames;
    println!(
        "recording: {} segments, {recorded} frames recorded in the van, {decoded} decoded at the hub",
        segments.len()
    );
    t.stop_server().await;
    assert!(recorded >= 200, "ten seconds at 25 fps: {recorded}");
    let off = (decoded as f64 - recorded as f64).abs() / recorded as f64;
    assert!(off <= 0.01, "decoded {decoded} of {recorded} recorded frames");
}
