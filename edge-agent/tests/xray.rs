//! The X-ray workflow end to end: the agent's API and X-ray service, the real serial shell,
//! and the simulated unit on a pseudo-terminal. An exposure ends in the case with its dose,
//! a preview and a DICOM object that dcmtk and dciodvfy read; each fault, and an agent
//! killed mid-exposure, ends safe with the abort recorded and no image half-written.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use case_model::{EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use edge_agent::api::{AppState, app};
use edge_agent::xray::XrayHandle;
use edge_agent::xray::detector::Simulated;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use xray_proto::generator::{Faults, GenConfig};
use xray_proto::message::GenState;
use xray_sim::{LineFaults, Simulator};

struct Van {
    _dir: tempfile::TempDir,
    store: Store,
    sim: Simulator,
    xray: XrayHandle,
    router: axum::Router,
    token: String,
}

fn van() -> Van {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"), &key, VanId::parse("van-12").unwrap());
    config.create_if_missing = true;
    let store = Store::open(config).unwrap();
    let sim = Simulator::start(GenConfig::default(), 11).unwrap();
    let xray = XrayHandle::start(store.clone(), sim.path(), Box::new(Simulated::new(640, 800, 3))).unwrap();
    let (crew, tokens) = edge_agent::crew::with_members(&store, &[("ana", "604182")]);
    let router = app(AppState::new(store.clone(), OrgId::parse("org-north").unwrap(), 1 << 20)
        .with_xray(xray.clone())
        .with_crew(crew));
    Van { _dir: dir, store, sim, xray, router, token: tokens["ana"].clone() }
}

impl Van {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn bytes(&self, uri: &str) -> Vec<u8> {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::empty())
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        resp.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    async fn new_case(&self) -> String {
        let (s, case) = self.call(Method::POST, "/api/v1/cases", None).await;
        assert_eq!(s, StatusCode::CREATED);
        let id = case["id"].as_str().unwrap().to_owned();
        let (s, _) = self
            .call(
                Method::POST,
                &format!("/api/v1/cases/{id}/edits"),
                Some(json!({"edits": [
                    {"op": "set_field", "field": "patient.last_name", "value": "Okafor"},
                    {"op": "set_field", "field": "patient.first_name", "value": "Ada"},
                    {"op": "set_field", "field": "patient.sex", "value": "female"},
                    {"op": "set_field", "field": "patient.date_of_birth", "value": "1961-04-09"},
                ]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        id
    }

    /// Sets up a left hand PA at 55 kV, 2.5 mAs over `ms`, and arms; waits for ready.
    async fn ready(&self, case: &str, ms: u32) {
        self.wait(Duration::from_secs(5), |s| s["generator"] != "unknown").await;
        let (s, body) = self
            .call(
                Method::PUT,
                "/api/v1/xray/session",
                Some(json!({"case_id": case, "body_part": "HAND", "view": "PA", "laterality": "L",
                            "kv": 55, "mas": 2.5, "ms": ms})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["technique_set"], true, "{body}");
        let (s, body) = self.call(Method::POST, "/api/v1/xray/arm", None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        self.wait(Duration::from_secs(3), |s| s["armed"] == true).await;
    }

    async fn wait(&self, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + within;
        loop {
            let (_, s) = self.call(Method::GET, "/api/v1/xray", None).await;
            if want(&s) {
                return s;
            }
            assert!(Instant::now() < end, "not reached within {within:?}: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Presses and holds the confirm (as the touchscreen does, every 100 ms) until the
    /// attempt is recorded, calling `fault` once when the beam is on. Returns the record.
    async fn expose(&self, release_after: Option<Duration>, fault: impl FnOnce(&Simulator)) -> Value {
        let pressed = Instant::now();
        let (s, press) = self.call(Method::POST, "/api/v1/xray/confirm", None).await;
        assert_eq!(s, StatusCode::CREATED, "{press}");
        assert!(
            pressed.elapsed() < Duration::from_millis(450),
            "the press's token came back too late for the first hold"
        );
        let token = press["token"].as_str().unwrap().to_owned();
        let id = press["exposure_id"].as_str().unwrap().to_owned();
        let start = Instant::now();
        let mut fault = Some(fault);
        loop {
            if release_after.is_some_and(|d| start.elapsed() >= d) {
                let (s, _) = self.call(Method::POST, &format!("/api/v1/xray/confirm/{token}/release"), None).await;
                assert_eq!(s, StatusCode::NO_CONTENT);
            } else {
                let (s, _) = self.call(Method::POST, &format!("/api/v1/xray/confirm/{token}/hold"), None).await;
                assert_eq!(s, StatusCode::NO_CONTENT);
            }
            if self.sim.state() == GenState::Exposing
                && let Some(f) = fault.take()
            {
                f(&self.sim);
            }
            let (_, status) = self.call(Method::GET, "/api/v1/xray", None).await;
            if status["last_exposure"]["exposure_id"] == id.as_str() {
                return status["last_exposure"].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no outcome: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn case(&self, id: &str) -> case_model::CaseView {
        let ctx = EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(now()) };
        self.store.read_case(&ctx, case_model::CaseId::parse(id).unwrap()).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn exposure<'a>(case: &'a case_model::CaseView, id: &str) -> &'a case_model::Item {
    case.procedures
        .iter()
        .find(|p| p["exposure_id"] == id)
        .unwrap_or_else(|| panic!("exposure {id} not in {:#?}", case.procedures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exposure_lands_in_the_case_with_dose_preview_and_a_valid_dicom_object() {
    let van = van();
    let case = van.new_case().await;
    van.ready(&case, 100).await;
    let last = van.expose(None, |_| {}).await;
    assert_eq!(last["outcome"], "exposed", "{last}");
    let record = van.case(&case);
    let x = exposure(&record, last["exposure_id"].as_str().unwrap());
    assert_eq!(x["snomed"], 168_537_006, "a NEMSIS procedure: plain radiography");
    assert_eq!((x["kv"].as_f64(), x["mas"].as_f64(), x["ms"].as_i64()), (Some(55.0), Some(2.5), Some(100)));
    assert!(x["dap_mgy_cm2"].as_f64().unwrap() > 0.0, "{x:?}");
    assert_eq!(x["successful"], true);
    // The preview and the DICOM object are attached in the same change as the exposure.
    let dicom_sha = x["dicom_sha256"].as_str().unwrap();
    let preview_sha = x["preview_sha256"].as_str().unwrap();
    let kinds: Vec<(&str, &str)> =
        record.attachments.iter().map(|a| (a["sha256"].as_str().unwrap(), a["kind"].as_str().unwrap())).collect();
    assert!(kinds.contains(&(dicom_sha, "xray_study")) && kinds.contains(&(preview_sha, "xray_preview")), "{kinds:?}");
    let png = van.bytes(&format!("/api/v1/cases/{case}/attachments/{preview_sha}")).await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dcm = van.bytes(&format!("/api/v1/cases/{case}/attachments/{dicom_sha}")).await;
    assert_eq!(&dcm[128..132], b"DICM");
    // The audit log has the exposure with its technique and dose.
    let audit: Vec<String> = van
        .store
        .audit_of_case(case_model::CaseId::parse(&case).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert!(audit.iter().any(|d| d.contains("exposed 55.0 kV 2.50 mAs 100 ms DAP")), "{audit:?}");
    // Independent readers: dcmdump sees the patient and the technique; dciodvfy finds no error.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.dcm");
    std::fs::write(&file, &dcm).unwrap();
    // The tools are required (scripts/setup-deps.sh installs them): a missing one fails.
    let out = Command::new("dcmdump").arg(&file).output().expect("dcmdump (dcmtk) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in ["Okafor^Ada", "19610409", "[HAND]", "[55.0]", "ImageAndFluoroscopyAreaDoseProduct", "=JPEGLSLossless"]
    {
        assert!(text.contains(want), "dcmdump lacks {want}:\n{text}");
    }
    let uid = edge_agent::xray::study_uid(case_model::CaseId::parse(&case).unwrap());
    assert!(text.contains(&uid), "the study UID carries the case id");
    let out = Command::new("dciodvfy").arg(&file).output().expect("dciodvfy (dicom3tools) is installed");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("Error"), "{text}");
    van.xray.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_answered_at_once_and_recorded_with_the_technique_asked() {
    let van = van();
    let case = van.new_case().await;
    van.wait(Duration::from_secs(5), |s| s["generator"] != "unknown").await;
    // Out of the unit's range: refused before anything is sent, with what to do.
    let (s, body) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": case, "body_part": "HAND", "view": "PA", "laterality": "L", "kv": 170, "mas": 2.5, "ms": 100})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("kV"), "{body}");
    // A zero exposure time likewise.
    let (s, _) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": case, "body_part": "CHEST", "view": "PA", "kv": 110, "mas": 2.5, "ms": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // A hand with no side is a question for the operator, not a record.
    let (s, body) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": case, "body_part": "HAND", "view": "PA", "kv": 55, "mas": 2.5, "ms": 100})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["message"].as_str().unwrap().contains("L or R"), "{body}");
    // Pressing the confirm while not armed: refused and recorded.
    let (s, _) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": case, "body_part": "HAND", "view": "PA", "laterality": "R", "kv": 55, "mas": 2.5, "ms": 100})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = van.call(Method::POST, "/api/v1/xray/confirm", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not armed"), "{body}");
    let record = van.case(&case);
    let refused: Vec<_> = record.procedures.iter().filter(|p| p["outcome"] == "refused").collect();
    assert_eq!(refused.len(), 3, "{:#?}", record.procedures);
    assert_eq!(refused[0]["kv"], 170.0);
    assert_eq!(refused[1]["ms"], 0);
    assert_eq!(refused[2]["dap_mgy_cm2"], 0.0);
    assert!(refused.iter().all(|p| p["successful"] == false && p["reason"].as_str().is_some()));
    // Nobody records an exposure by hand through the case API.
    let forged = json!({"edits": [{"op": "record_exposure", "exposure_id": "f", "outcome": "exposed", "body_part": "HAND",
        "view": "PA", "laterality": "L", "kv": 55, "mas": 2.5, "ms": 100}]});
    let (s, body) = van.call(Method::POST, &format!("/api/v1/cases/{case}/edits"), Some(forged)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(van.case(&case).procedures.len(), 3);
    assert!(record.attachments.is_empty());
    assert_eq!(van.sim.records(), vec![], "nothing reached the beam");
    van.xray.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_arm_is_never_taken_for_a_press_and_the_session_only_changes_disarmed() {
    let van = van();
    let case = van.new_case().await;
    let other = van.new_case().await;
    van.ready(&case, 100).await;
    // Arm again: refused (busy), and that refusal belongs to the arm, not to what follows.
    let (s, body) = van.call(Method::POST, "/api/v1/xray/arm", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // The case or technique cannot change under an armed unit.
    let (s, body) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": other, "body_part": "CHEST", "view": "PA", "kv": 110, "mas": 4, "ms": 20})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("disarm"), "{body}");
    let last = van.expose(None, |_| {}).await;
    assert_eq!(last["outcome"], "exposed", "{last}");
    assert_eq!(last["case_id"], case.as_str());
    assert_eq!(van.case(&case).procedures.len(), 1);
    assert!(van.case(&other).procedures.is_empty());
    van.xray.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_press_held_through_preparation_gets_its_token_at_once_and_fires_when_ready() {
    let van = van();
    let case = van.new_case().await;
    van.wait(Duration::from_secs(5), |s| s["generator"] != "unknown").await;
    let (s, _) = van
        .call(
            Method::PUT,
            "/api/v1/xray/session",
            Some(json!({"case_id": case, "body_part": "CHEST", "view": "PA", "kv": 110, "mas": 4, "ms": 20})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = van.call(Method::POST, "/api/v1/xray/arm", None).await;
    assert_eq!(s, StatusCode::OK);
    // The tube takes about 600 ms to prepare; the press answers well before that, so the
    // first hold can follow within the controller's 500 ms.
    let start = Instant::now();
    let last = van.expose(None, |_| {}).await;
    assert_eq!(last["outcome"], "exposed", "{last}");
    assert!(start.elapsed() > Duration::from_millis(300), "it fired only once the tube was ready");
    van.xray.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_during_an_exposure_ends_safe_with_the_abort_recorded_and_no_image() {
    type Fault = Box<dyn FnOnce(&Simulator)>;
    let cases: Vec<(&str, Option<Duration>, Fault, &str)> = vec![
        ("released", Some(Duration::from_millis(300)), Box::new(|_| {}), "released"),
        ("door", None, Box::new(|s| s.set_faults(Faults { door_open: true, ..Faults::default() })), "interlock opened"),
        (
            "heat",
            None,
            Box::new(|s| s.set_faults(Faults { over_temperature: true, ..Faults::default() })),
            "overheated",
        ),
        ("mute", None, Box::new(|s| s.set_faults(Faults { mute: true, ..Faults::default() })), "heartbeat"),
        ("crc", None, Box::new(|s| s.set_line(LineFaults { drop: 0.0, corrupt: 1.0 })), "corrupting"),
        ("drop", None, Box::new(|s| s.set_line(LineFaults { drop: 1.0, corrupt: 0.0 })), "heartbeat"),
    ];
    for (name, release, fault, said) in cases {
        let van = van();
        let case = van.new_case().await;
        van.ready(&case, 2000).await;
        let last = van.expose(release, fault).await;
        assert_eq!(last["outcome"], "aborted", "{name}: {last}");
        let reason = last["reason"].as_str().unwrap().to_lowercase();
        assert!(reason.contains(said), "{name}: {reason}");
        let record = van.case(&case);
        let x = exposure(&record, last["exposure_id"].as_str().unwrap());
        assert_eq!(x["successful"], false, "{name}");
        assert!(record.attachments.is_empty(), "{name}: no image from an aborted exposure");
        // The unit is safe: the beam is off within the generator's watchdog at most.
        let end = Instant::now() + Duration::from_secs(2);
        while van.sim.state() == GenState::Exposing {
            assert!(Instant::now() < end, "{name}: the beam is still on");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Nothing resumes by itself: still not exposing a second later.
        std::thread::sleep(Duration::from_millis(300));
        assert_ne!(van.sim.state(), GenState::Exposing, "{name}");
        println!("{name}: {reason}");
        van.xray.stop();
    }
}

/// A minimal HTTP/1.1 client for the agent process (one request per connection), logged
/// in by break-glass (the process has no PIN key); a restarted agent gets a new login.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    static SESSIONS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let cached = SESSIONS.lock().unwrap().iter().find(|(a, _)| a == addr).map(|(_, t)| t.clone());
    let token = match cached {
        Some(t) => t,
        None => {
            let reason = json!({ "name": "Test Crew", "reason": "the roster has not reached this test van" });
            let (code, v) = raw_http(addr, "POST", "/api/v1/crew/break-glass", Some(&reason), None);
            assert_eq!(code, 201, "{v}");
            let t = v["token"].as_str().unwrap().to_owned();
            SESSIONS.lock().unwrap().push((addr.to_owned(), t.clone()));
            t
        }
    };
    let (code, v) = raw_http(addr, method, path, body, Some(&token));
    if code == 401 {
        // The agent restarted: its sessions went with it.
        SESSIONS.lock().unwrap().retain(|(a, _)| a != addr);
        return http(addr, method, path, body);
    }
    (code, v)
}

fn raw_http(addr: &str, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    let json = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

struct Process {
    child: std::process::Child,
    addr: String,
}

impl Drop for Process {
    /// A failed assertion must not leave an agent running (holding the test's output open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(config: &std::path::Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("agent exited before listening").unwrap();
        if line.contains("edge agent listening") {
            let at = line.split("address=").nth(1).unwrap();
            break at.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining the log so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Process { child, addr }
}

#[test]
fn an_agent_killed_mid_exposure_leaves_the_unit_safe_and_records_the_abort_when_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(GenConfig::default(), 5).unwrap();
    let bin = env!("CARGO_BIN_EXE_edge-agent");
    let key = dir.path().join("store.key");
    assert!(Command::new(bin).arg("gen-key").arg(&key).status().unwrap().success());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nvan_id = \"van-9\"\norg_id = \"org-north\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[xray]\nserial_port = \"{}\"\ndetector = \"simulated\"\nsimulated_size = [640, 800]\n",
            dir.path().join("data").display(),
            key.display(),
            sim.path()
        ),
    )
    .unwrap();
    assert!(Command::new(bin).args(["init-store", "--config"]).arg(&config).status().unwrap().success());
    let mut agent = start_agent(&config);
    let a = agent.addr.clone();
    let (code, case) = http(&a, "POST", "/api/v1/cases", None);
    assert_eq!(code, 201);
    let case = case["id"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(5);
    while http(&a, "GET", "/api/v1/xray", None).1["generator"] == "unknown" {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    let session = json!({"case_id": case, "body_part": "CHEST", "view": "PA", "kv": 110, "mas": 100, "ms": 2000});
    assert_eq!(http(&a, "PUT", "/api/v1/xray/session", Some(&session)).0, 200);
    assert_eq!(http(&a, "POST", "/api/v1/xray/arm", None).0, 200);
    while http(&a, "GET", "/api/v1/xray", None).1["armed"] != true {
        assert!(Instant::now() < end + Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, press) = http(&a, "POST", "/api/v1/xray/confirm", None);
    assert_eq!(code, 201, "{press}");
    let token = press["token"].as_str().unwrap().to_owned();
    let id = press["exposure_id"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(2);
    while sim.state() != GenState::Exposing {
        http(&a, "POST", &format!("/api/v1/xray/confirm/{token}/hold"), None);
        assert!(Instant::now() < end, "the exposure did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The beam is on. The agent dies without a word to the generator.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let killed = Instant::now();
    while sim.state() == GenState::Exposing {
        assert!(killed.elapsed() < Duration::from_millis(1500), "the generator's watchdog did not stop the beam");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("beam off {} ms after the agent was killed", killed.elapsed().as_millis());
    assert!(
        sim.records()
            .iter()
            .any(|r| matches!(r, xray_sim::Record::Aborted(_, xray_proto::message::AbortReason::Heartbeat))),
        "{:?}",
        sim.records()
    );
    // Started again, the agent records the abort from its journal, and nothing else.
    let mut agent = start_agent(&config);
    let a = agent.addr.clone();
    let (code, record) = http(&a, "GET", &format!("/api/v1/cases/{case}"), None);
    assert_eq!(code, 200);
    let procedures = record["procedures"].as_array().unwrap();
    assert_eq!(procedures.len(), 1, "{procedures:#?}");
    let x = &procedures[0];
    assert_eq!(x["exposure_id"], id.as_str());
    assert_eq!(x["outcome"], "aborted");
    assert!(x["reason"].as_str().unwrap().contains("agent stopped during this exposure"), "{x}");
    assert_eq!(x["kv"], 110.0);
    assert!(record["attachments"].as_array().unwrap().is_empty(), "nothing half-written");
    // The unit does not resume by itself, and a new exposure needs a new arm and press.
    assert_eq!(http(&a, "GET", "/api/v1/xray", None).1["armed"], false);
    assert_ne!(sim.state(), GenState::Exposing);
    // Started a third time: the journal was cleared; the abort is not recorded twice.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let mut agent = start_agent(&config);
    let (_, record) = http(&agent.addr, "GET", &format!("/api/v1/cases/{case}"), None);
    assert_eq!(record["procedures"].as_array().unwrap().len(), 1);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
}
