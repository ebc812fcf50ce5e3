//! Consult routing through the hub's API: requests reach the doctors on call, the first
//! claim wins, an unclaimed request escalates to every doctor, a note answers it, and the
//! event stream tells the doctor's app as cases change.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use case_model::{Edit, EditContext, OrgId, Timestamp, UserId};
use cloud_sync::identity::roles::Role;
use cloud_sync::{HubState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

use common::call;

fn crew() -> EditContext {
    EditContext { user: UserId::parse("ana.medic").unwrap(), now: Timestamp::from_unix_millis(common::now_s() * 1000) }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_the_doctors_on_call_the_first_claim_wins_and_unclaimed_ones_escalate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, doctors) = common::two_org_hub(dir.path());
    config.consults.escalate_after_s = 2;
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let north = OrgId::parse("org-north").unwrap();
    let (osei, _) = common::create_and_login(&hub.identity, "org-north", "dr.osei", &[Role::Doctor]);
    let (medic, _) = common::create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    let (ana, osei) = (doctors.north, osei.access_token);

    // Dr Osei goes on call; Dr Ana does not.
    let (status, _) =
        call(&router, "PUT", "/api/v1/consults/on-call", &osei, Some(serde_json::json!({"on_call": true}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, who) = call(&router, "GET", "/api/v1/consults/on-call", &ana, None).await;
    assert_eq!(who, serde_json::json!({"on_call": false, "on_call_until": null, "doctors_on_call": ["dr.osei"]}));
    // For a shift: twelve hours unless the config says otherwise.
    let (_, me) = call(&router, "GET", "/api/v1/consults/on-call", &osei, None).await;
    let until = me["on_call_until"].as_i64().unwrap();
    assert!((until - common::now_s() - 12 * 3600).abs() <= 5, "{me}");

    // The van asks for a consult (here written at the hub as the crew would from the van).
    let vdir = tempfile::tempdir().unwrap();
    let (_store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    let asked = Edit::RequestConsult {
        reason: "forearm X-ray, please review".into(),
        urgency: case_model::edit::Urgency::Urgent,
    };
    let after = hub.cases.edit_case(&crew(), &north, case, &[asked]).unwrap();
    let consult = after.consults[0]["id"].as_str().unwrap().to_owned();

    // It goes to the doctor on call, not (yet) to the others.
    let (status, queue) = call(&router, "GET", "/api/v1/consults", &osei, None).await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(queue.as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(queue[0]["state"], "waiting");
    assert_eq!(queue[0]["escalated"], false);
    assert_eq!(queue[0]["reason"], "forearm X-ray, please review");
    let (_, queue) = call(&router, "GET", "/api/v1/consults", &ana, None).await;
    assert_eq!(queue, serde_json::json!([]), "not on call, not escalated");
    // A paramedic has no queue.
    let (status, _) = call(&router, "GET", "/api/v1/consults", &medic.access_token, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Two doctors claim at once: exactly one wins; the other is told who has it.
    let claim = format!("/api/v1/consults/{case}/{consult}/claim");
    let (a, b) = tokio::join!(call(&router, "POST", &claim, &osei, None), call(&router, "POST", &claim, &ana, None));
    let statuses = [a.0, b.0];
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{a:?} {b:?}");
    let (winner, loser) = if a.0 == StatusCode::OK { (a.1, b.1) } else { (b.1, a.1) };
    assert!(loser["error"].as_str().unwrap().contains(winner["claimed_by"].as_str().unwrap()), "{loser}");
    let winner_name = winner["claimed_by"].as_str().unwrap().to_owned();
    let (_, queue) = call(&router, "GET", "/api/v1/consults", &osei, None).await;
    assert_eq!(queue[0]["state"], "claimed");
    assert_eq!(queue[0]["claimed_by"], winner_name.as_str());
    // An unknown request, and another organisation's doctor, find nothing.
    let (status, _) = call(&router, "POST", &format!("/api/v1/consults/{case}/nope/claim"), &osei, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&router, "POST", &claim, &doctors.south, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A second request nobody claims escalates to every doctor after the set time.
    let second =
        Edit::RequestConsult { reason: "pain relief advice".into(), urgency: case_model::edit::Urgency::Routine };
    hub.cases.edit_case(&crew(), &north, case, &[second]).unwrap();
    let (_, queue) = call(&router, "GET", "/api/v1/consults", &ana, None).await;
    let shown_to_ana =
        |q: &serde_json::Value| q.as_array().unwrap().iter().any(|i| i["reason"] == "pain relief advice");
    assert!(!shown_to_ana(&queue), "{queue}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, queue) = call(&router, "GET", "/api/v1/consults", &ana, None).await;
    assert!(shown_to_ana(&queue), "escalated: {queue}");
    assert!(queue.as_array().unwrap().iter().any(|i| i["reason"] == "pain relief advice" && i["escalated"] == true));

    // The note that names the consult answers it.
    let winner_token = if winner_name == "dr.osei" { &osei } else { &ana };
    let note = serde_json::json!({"edits": [{"op": "add_note", "text": "splint, come to us", "consult_id": consult}]});
    let (status, _) = call(&router, "POST", &format!("/api/v1/cases/{case}/edits"), winner_token, Some(note)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, queue) = call(&router, "GET", "/api/v1/consults", &osei, None).await;
    let first = queue.as_array().unwrap().iter().find(|i| i["consult_id"] == consult.as_str()).unwrap();
    assert_eq!(first["state"], "answered");
    assert_eq!(queue.as_array().unwrap().last().unwrap()["consult_id"], consult.as_str(), "answered ones last");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_tells_a_doctor_of_their_organisations_case_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let vdir = tempfile::tempdir().unwrap();
    let (_store, view) = common::van_case(&hub, vdir.path());
    let open = |token: String| {
        let router = router.clone();
        async move {
            let req = Request::builder()
                .uri("/api/v1/events")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            resp.into_body()
        }
    };
    let mut north = open(doctors.north.clone()).await;
    let mut south = open(doctors.south.clone()).await;
    // Both get the first tick at once; then org-north's case changes.
    let read = |body: &mut Body| {
        let mut body = std::mem::take(body);
        async move {
            let mut text = String::new();
            let _ = tokio::time::timeout(Duration::from_millis(1500), async {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(d) = frame.into_data() {
                        text.push_str(&String::from_utf8_lossy(&d));
                    }
                    if text.contains("event: case") {
                        break;
                    }
                }
            })
            .await;
            (text, body)
        }
    };
    let north_org = OrgId::parse("org-north").unwrap();
    let edit = Edit::AddNote { text: "seen".into(), consult_id: None };
    hub.cases.edit_case(&crew(), &north_org, view.id, &[edit]).unwrap();
    let (n, _) = read(&mut north).await;
    let (s, _) = read(&mut south).await;
    assert!(n.contains(&format!("event: case\ndata: {}", view.id)), "{n}");
    assert!(!s.contains(&view.id.to_string()), "org-south hears nothing of org-north's case: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_shutting_down_ends_the_event_streams_instead_of_waiting_for_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cloud_sync::serve(HubState::open(&config).unwrap().with_hub(&hub), listener, async {
        let _ = stopped.await;
    }));
    // A browser's event stream, open.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        doctors.north
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 256];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // The hub is told to stop: it does, within moments, though the stream was open.
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(ended.is_ok(), "the hub waited for the event stream to end");
    ended.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn going_on_call_lapses_after_the_configured_shift() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, doctors) = common::two_org_hub(dir.path());
    // A shift of no length: going on call lapses at once.
    config.consults.on_call_hours = 0;
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let on = Some(serde_json::json!({"on_call": true}));
    let (status, _) = call(&router, "PUT", "/api/v1/consults/on-call", &doctors.north, on).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, who) = call(&router, "GET", "/api/v1/consults/on-call", &doctors.north, None).await;
    assert_eq!(who, serde_json::json!({"on_call": false, "on_call_until": null, "doctors_on_call": []}));
}
