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

/// The calls of this file run one at a time: each is real-time media on a 2-core machine,
/// and two at once would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn setup(media_port: u16) -> Setup {
    let serial = SERIAL.lock().await;
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
        _serial: serial,
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
            source: media::source::Source::Test { busy: false },
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

/// The video frames the hub's copies of recording segments `shas` of `case` decode to,
/// read as a doctor of org-north.
fn decoded_at_hub(hub: &cloud_sync::fleet::Hub, case: case_model::CaseId, shas: &[String]) -> u64 {
    let north = case_model::OrgId::parse("org-north").unwrap();
    let doctor = case_model::UserId::parse("dr.neuro").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut decoded = 0;
    for (i, sha) in shas.iter().enumerate() {
        let (bytes, media_type) = hub.cases.read_attachment(&doctor, &north, case, sha).unwrap();
        assert_eq!(media_type, "video/x-matroska");
        let path = out.path().join(format!("{i}.mkv"));
        std::fs::write(&path, bytes).unwrap();
        decoded += media::inspect::decoded_video_frames(&path).unwrap();
    }
    decoded
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
    let doctor_run = t.browser(&t.doctor, "15", &["--publish"]);
    let van_run = t.browser(&t.medic, "12", &["--delay", "1"]);
    let second_run = t.browser(&stroke.access_token, "6", &["--delay", "3"]);
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
    // Still up: the picture keeps coming and the sound.
    assert_eq!(got["ice"], "connected", "{got}");
    assert!(got["decodedFrames"].as_u64().unwrap_or(0) >= 100, "{got}");
    // A DTLS handshake packet lost on this link costs a retransmission timer (1 s, then 2 s),
    // so the join itself takes a variable few seconds: the sound is judged from then on
    // (Opus sends 50 packets a second; 5% are lost).
    let joined_s = got["firstFrameMs"].as_f64().unwrap_or(f64::MAX) / 1000.0;
    assert!(joined_s < 10.0, "joined after {joined_s} s: {got}");
    let audio_rate = got["audioPackets"].as_f64().unwrap_or(0.0) / (15.0 - joined_s);
    println!("joined after {joined_s:.1} s; then {audio_rate:.0} audio packets a second");
    assert!(audio_rate >= 35.0, "the sound kept coming: {audio_rate:.0} packets a second: {got}");
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
    let shas: Vec<String> = segments.iter().map(|a| a["sha256"].as_str().unwrap().to_owned()).collect();
    let decoded = decoded_at_hub(&t.hub, case, &shas);
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

/// The van's cell link as the test drives it, in a network namespace of its own: the hub
/// (HTTP and media) in another, joined by a shaped link; the doctor's browser beside the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_van_follows_its_link_down_and_up_keeps_audio_and_comes_back_after_a_tunnel() {
    use netsim::netns::{NetnsLink, run_in};
    let _serial = SERIAL.lock().await;
    let rate = |mbps: f64| netsim::LinkConfig {
        delay: Duration::from_millis(20),
        rate_bps: Some((mbps * 1e6) as u64),
        queue_bytes: 48 * 1024,
        ..Default::default()
    };
    let link = match NetnsLink::create("mvcl", 31, rate(4.0), rate(4.0), 5) {
        Ok(l) => l,
        Err(e) => panic!("this test needs root and iproute2 (network namespaces, TUN): {e}"),
    };
    let (hub_ns, van_ns, hub_ip) = (link.hub_ns().to_owned(), link.van_ns().to_owned(), link.hub_addr());
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, _) = common::two_org_hub(dir.path());
    config.calls = Some(cloud_sync::calls::CallConfig { bind: (hub_ip, 0).into(), advertise: hub_ip.into() });
    let (medic, _) = common::create_and_login(&hub.identity, "org-north", "ben.medic", &[Role::Paramedic]);
    let (doctor, _) = common::create_and_login(&hub.identity, "org-north", "dr.neuro", &[Role::Doctor]);
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    // The media server's socket and the HTTP listener live in the hub's namespace.
    let state = {
        let (config, hub) = (config.clone(), hub.clone());
        run_in(&hub_ns, move || cloud_sync::HubState::open(&config).unwrap().with_hub(&hub)).unwrap()
    };
    let listener = run_in(&hub_ns, move || std::net::TcpListener::bind((hub_ip, 0)).unwrap()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(cloud_sync::serve(state, tokio::net::TcpListener::from_std(listener).unwrap(), async move {
            let _ = stop_rx.await;
        }));

    // The van publishes from its namespace.
    let settings = media::publish::Settings {
        url: format!("{origin}/api/v1/calls/{}/whip", view.id),
        token: medic.access_token.clone(),
        // Detail everywhere: the picture must load the link for the bitrate to matter.
        source: media::source::Source::Test { busy: true },
        format: media::source::Format { width: 640, height: 360, fps: 25 },
        bitrate_kbps: 1500,
        record: None,
    };
    // The van's case sync also runs over the same link: its own runtime, made in the van's
    // namespace so its sockets are there.
    let sync_socket = run_in(&hub_ns, move || std::net::UdpSocket::bind((hub_ip, 0)).unwrap()).unwrap();
    let sync_server = hub.sync_on_socket(sync_socket).unwrap();
    let sync_addr = sync_server.local_addr();
    {
        let (hub, server) = (hub.clone(), sync_server.clone());
        tokio::spawn(async move { hub.serve_sync(server).await });
    }
    let token = hub
        .enroller
        .issue(sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap(), common::now_s() + 600)
        .unwrap();
    let van_rt = {
        let store = store.clone();
        run_in(&van_ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let enrolled =
                rt.block_on(sync_quic::enrol::enrol(sync_addr, "hub.medvan.local", &token.encode())).unwrap();
            let _entered = rt.enter();
            let settings = edge_agent::sync::SyncSettings {
                address: sync_addr.to_string(),
                server_name: "hub.medvan.local".into(),
                identity: edge_agent::identity::Identity { ca: enrolled.ca, cert: enrolled.cert, key: enrolled.key },
                identity_dir: None,
                renew_below: None,
                liveness: Default::default(),
                roster_key: None,
            };
            let handle = edge_agent::sync::spawn(store, settings).unwrap();
            drop(_entered);
            (rt, handle)
        })
        .unwrap()
    };
    let case = view.id;
    let mut changes = hub.cases.changes().subscribe();
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(doc) = changes.recv().await {
                if doc.0 == *case.as_bytes() {
                    arrivals.lock().unwrap().push(std::time::Instant::now());
                }
            }
        });
    }
    let crew = case_model::EditContext {
        user: case_model::UserId::parse("ben.medic").unwrap(),
        now: case_model::Timestamp::from_unix_millis(common::now_s() * 1000),
    };
    let mut edits: Vec<(std::time::Instant, &str)> = Vec::new();

    let publisher = {
        let ns = van_ns.clone();
        tokio::task::spawn_blocking(move || {
            run_in(&ns, move || media::publish::Publisher::start(&settings)).unwrap().unwrap()
        })
        .await
        .unwrap()
    };

    // The doctor watches for 56 s from beside the hub.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/whep.mjs");
    let args = [origin.clone(), view.id.to_string(), doctor.access_token.clone(), "56".into()];
    let ns = hub_ns.clone();
    let browser = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ip").args(["netns", "exec", &ns, "node"]).arg(&script).args(args).output()
    });
    // The link's day: 4 Mbit/s, 0.5, 4 again, a 10 s tunnel, 4.
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut marks = Vec::new();
    let mut samples: Vec<(i64, media::publish::LinkView)> = Vec::new();
    let plan = [
        (14.0, rate(4.0), "4 Mbit/s"),
        (12.0, rate(0.5), "0.5 Mbit/s"),
        (10.0, rate(4.0), "4 Mbit/s"),
        (10.0, netsim::LinkConfig { loss: 1.0, ..rate(4.0) }, "tunnel"),
        (10.0, rate(4.0), "4 Mbit/s"),
    ];
    for (secs, cfg, what) in plan {
        link.set_config(cfg.clone(), cfg);
        marks.push((now_ms(), what));
        let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut tick = 0;
        while std::time::Instant::now() < end {
            samples.push((now_ms(), publisher.link()));
            // Once a second the crew records something (not in the tunnel, where nothing
            // can arrive).
            if tick % 4 == 0 && what != "tunnel" {
                let text = format!("pupils equal, t+{}", samples.len());
                store.edit_case(&crew, case, &[case_model::Edit::AddChat { text }]).unwrap();
                edits.push((std::time::Instant::now(), what));
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let got = parse(browser.await.unwrap().unwrap(), "the doctor");
    for (t, what) in &marks {
        println!("link at +{:.1} s: {what}", (t - marks[0].0) as f64 / 1000.0);
    }
    let at = |i: usize| marks[i].0;
    // The bitrate follows the link down and up within 5 s.
    let first_after = |from: i64, ok: &dyn Fn(&media::publish::LinkView) -> bool| {
        samples.iter().find(|(t, v)| *t >= from && ok(v)).map(|(t, _)| (t - from) as f64 / 1000.0)
    };
    let trace: Vec<String> = samples
        .iter()
        .step_by(2)
        .map(|(t, v)| {
            let rtt = v.rtt_s.map_or("-".to_owned(), |r| format!("{:.0}", r * 1000.0));
            let lost = (v.fraction_lost * 100.0).round();
            let recv = v.recv_kbps.map_or("-".to_owned(), |r| r.to_string());
            format!("{:.1}s:{}/{}/{recv}/{rtt}/{lost}", (t - at(0)) as f64 / 1000.0, v.target_kbps, v.sent_kbps)
        })
        .collect();
    println!("van's video bitrate (target/sent/arrived kbit/s, round trip ms, lost %): {}", trace.join(" "));
    let down = first_after(at(1), &|v| v.target_kbps <= 460).unwrap_or(f64::INFINITY);
    // Following it back up: at twice what the narrow link allowed.
    let up = first_after(at(2), &|v| v.target_kbps >= 1000).unwrap_or(f64::INFINITY);
    let full = first_after(at(2), &|v| v.target_kbps >= 2000).unwrap_or(f64::INFINITY);
    println!(
        "the bitrate followed the link down (to 0.46 Mbit/s) in {down:.1} s and up (to 1 Mbit/s) in {up:.1} s; 2 Mbit/s in {full:.1} s"
    );
    assert!(down <= 5.0 && up <= 5.0, "down {down} s, up {up} s");
    // Audio: no gap over 200 ms outside the tunnel.
    let timeline: Vec<(i64, u64, u64)> = got["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_u64().unwrap(), r[2].as_u64().unwrap()))
        .collect();
    let mut worst_gap = 0i64;
    let mut since: Option<i64> = None;
    for w in timeline.windows(2) {
        let (t, _, heard) = w[1];
        let in_tunnel = t >= at(3) - 500 && t <= at(4) + 3000;
        if heard > w[0].2 || in_tunnel || t < at(0) + 3000 {
            if let Some(s) = since.take() {
                worst_gap = worst_gap.max(t - s);
            }
        } else if since.is_none() {
            since = Some(w[0].0);
        }
    }
    println!("longest audio gap outside the tunnel: {worst_gap} ms");
    assert!(worst_gap <= 200 + 100, "{worst_gap} ms (sampled every 100 ms)");
    // After the tunnel the picture comes back by itself within 5 s.
    let frames_at = |t: i64| timeline.iter().rev().find(|r| r.0 <= t).map(|r| r.1).unwrap_or(0);
    let before = frames_at(at(4));
    let back = timeline.iter().find(|r| r.0 >= at(4) && r.1 > before + 5).map(|r| (r.0 - at(4)) as f64 / 1000.0);
    println!("video after the 10 s tunnel: back in {back:?} s");
    assert!(back.is_some_and(|s| s <= 5.0), "{back:?}");

    // Case edits made in the van during the call reached the hub (each edit's time to the
    // first change of the case the hub announced after it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = arrivals.lock().unwrap().clone();
    let timed: Vec<(f64, &str, f64)> = edits
        .iter()
        .filter(|(_, what)| *what != "tunnel")
        .map(|(t, what)| {
            let delay =
                arrived.iter().find(|a| *a >= t).map_or(f64::INFINITY, |a| a.duration_since(*t).as_secs_f64() * 1000.0);
            (t.duration_since(edits[0].0).as_secs_f64(), *what, delay)
        })
        .collect();
    let slow: Vec<String> =
        timed.iter().filter(|e| e.2 > 500.0).map(|(at, what, d)| format!("+{at:.1}s ({what}): {d:.0} ms")).collect();
    println!("edits slower than 500 ms (seconds after the first edit): {}", slow.join(", "));
    let mut delays: Vec<f64> = timed.iter().map(|e| e.2).collect();
    delays.sort_by(f64::total_cmp);
    let p95 = percentile(&delays, 0.95);
    println!(
        "case edits in the van during the call on the shaped link: p50 {:.0} ms, p95 {p95:.0} ms over {} edits",
        percentile(&delays, 0.5),
        delays.len()
    );
    // Aim 1 s; the ceiling is five times that.
    assert!(p95 <= 5000.0, "{delays:?}");
    let ns = van_ns.clone();
    tokio::task::spawn_blocking(move || run_in(&ns, move || publisher.stop()).unwrap()).await.unwrap().unwrap();
    van_rt.0.shutdown_background();
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(store);
}

/// The whole van side of a consult: the crew press "Start video consult" on the touchscreen
/// (Chromium on the agent's page); the agent gets a ticket over its real QUIC sync session,
/// publishes its camera and microphone (test sources) over WHIP and records the consult;
/// the touchscreen plays the doctor through the agent's WHEP relay. The recording syncs to
/// the hub whole while the session stays up. The ticket opens that case's call and nothing
/// else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crew_start_a_video_consult_on_the_touchscreen_and_its_recording_reaches_the_hub() {
    use cloud_sync::fleet::Hub;
    use sync_quic::identity::DeviceId;
    let mut t = setup(0).await;
    let hub: &Hub = &t.hub;
    let sync = common::live_van(hub, &t.store, None, None).await;
    let up = std::time::Instant::now();
    while !matches!(sync.status().state, "up_to_date" | "syncing") {
        assert!(up.elapsed() < Duration::from_secs(20), "the van never connected: {:?}", sync.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let case = t.view.id;

    // The ticket: this case's call only, for a case this van may sync.
    let ticket = sync.call_ticket(case).await.expect("a ticket for the van's own case");
    assert!(ticket.expires_at <= common::now_s() + 120, "taken briefly");
    let router = cloud_sync::app(cloud_sync::HubState::open(&t.config).unwrap().with_hub(hub));
    let (status, _) = common::call(&router, "GET", &format!("/api/v1/calls/{case}"), &ticket.token, None).await;
    assert_eq!(status, StatusCode::OK, "the ticket shows who is in the case's call");
    for uri in [
        format!("/api/v1/cases/{case}"),
        "/api/v1/cases".to_owned(),
        "/api/v1/fleet/positions".into(),
        "/api/v1/auth/me".into(),
    ] {
        let (status, body) = common::call(&router, "GET", &uri, &ticket.token, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a call ticket reads nothing: {uri} {body}");
    }
    // Another van's case of the same organisation: no ticket, and this ticket opens no call of it.
    let vdir2 = tempfile::tempdir().unwrap();
    let other_case = {
        let store2 = common::van_store(vdir2.path(), "van-2");
        let ctx = case_model::EditContext {
            user: case_model::UserId::parse("ana").unwrap(),
            now: case_model::Timestamp::from_unix_millis(common::now_s() * 1000),
        };
        let view = store2.create_case(&ctx, &case_model::OrgId::parse("org-north").unwrap()).unwrap();
        common::pump(
            &mut edge_agent::sync::StoreReplica::new(store2.clone(), "hub").unwrap(),
            &mut hub.cases.replica_for(&DeviceId::new("org-north", "van-2").unwrap()),
        );
        view.id
    };
    match sync.call_ticket(other_case).await {
        Err(edge_agent::sync::TicketError::Refused(why)) => assert!(why.contains("may not sync"), "{why}"),
        other => panic!("van-1 got a ticket to van-2's case: {other:?}"),
    }
    let req = Request::builder()
        .method("POST")
        .uri(format!("/api/v1/calls/{other_case}/whep"))
        .header("authorization", format!("Bearer {}", ticket.token))
        .header("content-type", "application/sdp")
        .body(Body::from("v=0"))
        .unwrap();
    assert_eq!(router.clone().oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);

    // The van's agent, as it runs in the van: its API and touchscreen on loopback.
    let spool = tempfile::tempdir().unwrap();
    let calls = edge_agent::calls::CallHandle::new(
        toml::from_str(&format!(
            "hub_url = {:?}\nsource = \"test\"\nrecordings_dir = {:?}\nsegment_s = 3\n",
            t.origin,
            spool.path().display().to_string()
        ))
        .unwrap(),
        t.store.clone(),
        sync.clone(),
    )
    .unwrap();
    let crew = edge_agent::crew::Crew::new(t.store.clone(), None, Default::default());
    let state =
        edge_agent::api::AppState::new(t.store.clone(), case_model::OrgId::parse("org-north").unwrap(), 1 << 26)
            .with_sync(sync.clone())
            .with_calls(calls.clone())
            .with_crew(crew);
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_origin = format!("http://{}", agent.local_addr().unwrap());
    let agent_server = tokio::spawn(async move { axum::serve(agent, edge_agent::api::app(state)).await });

    // The doctor joins from the hub a few seconds in (watching the van, sending a camera);
    // the crew start the consult on the touchscreen and watch for 8 s once the doctor shows.
    let doctor_run = t.browser(&t.doctor, "14", &["--publish", "--delay", "4"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/touchscreen_call.mjs");
    let args = [agent_origin.clone(), case.to_string(), "8".to_owned()];
    let touch_run =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(&script).args(args).output());
    let touch = parse(touch_run.await.unwrap().unwrap(), "the touchscreen");
    let got = parse(doctor_run.await.unwrap().unwrap(), "the doctor");
    println!("touchscreen: {touch}");
    println!("doctor's browser: {}", brief(&got));
    // The crew's press started the call; the doctor's picture and sound played in the van.
    assert!(touch["liveMs"].as_u64().unwrap() < 15_000, "{touch}");
    assert!(touch["framesPerSecond"].as_f64().unwrap() >= 10.0, "the doctor's video played: {touch}");
    assert!(touch["received"]["audioPackets"].as_u64().unwrap_or(0) >= 200, "the doctor's microphone: {touch}");
    assert!(touch["endedText"].as_str().unwrap().contains("stored in the case"), "{touch}");
    assert_eq!(touch["startVisibleAgain"], true);
    assert_eq!(touch["smallTargets"], serde_json::json!([]), "touch targets under 48 px: {touch}");
    assert_eq!(touch["offHost"], serde_json::json!([]), "the touchscreen talked only to its agent: {touch}");
    // The van's camera and microphone reached the doctor, stamped frames and all.
    assert!(got["decodedFrames"].as_u64().unwrap_or(0) >= 100, "{got}");
    assert!(got["width"].as_u64().unwrap_or(0) >= 640, "{got}");
    assert!(got["audioPackets"].as_u64().unwrap_or(0) >= 200, "{got}");
    let (p50, p95, n) = latency(&got);
    println!("glass-to-glass latency, van agent to doctor: p50 {p50:.0} ms, p95 {p95:.0} ms over {n} frames");
    assert!(p50 < 1250.0 && p95 < 2000.0, "p50 {p50} p95 {p95}");

    // The recording: sealed into the case in the van as it went, nothing plain left behind,
    // and at the hub over the live session, decoding to the frames recorded.
    let view = calls.status();
    println!("the call as the agent saw it: {}", serde_json::to_string(&view).unwrap());
    assert_eq!(view.state, "ended");
    assert!(view.segments_sealed >= 2, "{view:?}");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "no plain segment is left behind");
    let north = case_model::OrgId::parse("org-north").unwrap();
    let doctor = case_model::UserId::parse("dr.neuro").unwrap();
    let started = std::time::Instant::now();
    let segments = loop {
        let at_hub = hub.cases.read_case(&doctor, &north, case).unwrap();
        let segs: Vec<String> = at_hub
            .attachments
            .iter()
            .filter(|a| a["kind"] == "video_segment")
            .filter_map(|a| a["sha256"].as_str().map(str::to_owned))
            .collect();
        let whole = segs.len() == view.segments_sealed as usize
            && segs.iter().all(|s| hub.cases.read_attachment(&doctor, &north, case, s).is_ok());
        if whole {
            break segs;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the recording did not reach the hub: {segs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let decoded = decoded_at_hub(hub, case, &segments);
    let recorded = view.recorded_frames;
    println!("recording: {} segments, {recorded} frames recorded, {decoded} decoded at the hub", segments.len());
    assert!(recorded >= 150, "{recorded}");
    assert!((decoded as f64 - recorded as f64).abs() / recorded as f64 <= 0.01, "decoded {decoded} of {recorded}");

    // Both sides wrote it down: the hub each ticket (given or refused) and the van's joins
    // under its own name; the van its crew's start and end.
    let at_hub = hub.cases.storage().audit_of_case(&case.to_string()).unwrap();
    let hub_actions: Vec<(String, String)> = at_hub.iter().map(|e| (e.actor.clone(), e.action.clone())).collect();
    for (actor, action) in
        [("van:org-north/van-1", "call.ticket"), ("van:van-1", "call.publish"), ("van:van-1", "call.watch")]
    {
        assert!(hub_actions.iter().any(|(a, b)| a == actor && b == action), "{actor} {action} in {hub_actions:?}");
    }
    let refused = hub.cases.storage().audit_of_case(&other_case.to_string()).unwrap();
    assert!(
        refused.iter().any(|e| e.action == "call.ticket" && e.outcome == audit::Outcome::Refused),
        "the refused ticket is audited"
    );
    let at_van: Vec<String> = t.store.audit_after(0, 10_000).unwrap().into_iter().map(|e| e.action).collect();
    for action in ["call.start", "call.watch", "call.end"] {
        assert!(at_van.iter().any(|a| a == action), "{action} in the van's log");
    }
    agent_server.abort();
    t.stop_server().await;
}
