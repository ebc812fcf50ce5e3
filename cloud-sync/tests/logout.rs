//! A login that ends is an end for what outlives a request: the caller's event stream
//! closes, and they are taken out of any call they are in, within seconds, whoever ended it
//! (the caller logging out elsewhere; an administrator disabling them ends their logins the
//! same way).

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_sync::identity::roles::Role;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A WebRTC offer to watch a call, made by str0m as a viewer's browser would.
fn viewer_offer() -> String {
    rtc_crypto::install();
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(str0m::media::MediaKind::Video, str0m::media::Direction::RecvOnly, None, None, None);
    change.add_media(str0m::media::MediaKind::Audio, str0m::media::Direction::RecvOnly, None, None, None);
    let (offer, _pending) = change.apply().unwrap();
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_ends_closes_its_event_stream_and_takes_its_caller_out_of_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, hub, _) = common::two_org_hub(dir.path());
    config.calls = Some(cloud_sync::calls::CallConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise: std::net::Ipv4Addr::LOCALHOST.into(),
    });
    let router = cloud_sync::app(cloud_sync::HubState::open(&config).unwrap().with_hub(&hub));
    let vdir = tempfile::tempdir().unwrap();
    let (_store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    let (doctor, _) = common::create_and_login(&hub.identity, "org-north", "dr.lee", &[Role::Doctor]);
    let (other, _) = common::create_and_login(&hub.identity, "org-north", "dr.kay", &[Role::Doctor]);
    let (doctor, other) = (doctor.access_token, other.access_token);
    let request = |method: &str, uri: String, token: &str, body: Body| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/sdp")
            .body(body)
            .unwrap()
    };

    // The doctor watches the event stream and the case's call; a colleague does the same.
    let mut streams = Vec::new();
    for token in [&doctor, &other] {
        let resp = router.clone().oneshot(request("GET", "/api/v1/events".into(), token, Body::empty())).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push(tokio::spawn(async move {
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            Instant::now()
        }));
    }
    for token in [&doctor, &other] {
        let uri = format!("/api/v1/calls/{case}/whep");
        let resp = router.clone().oneshot(request("POST", uri, token, Body::from(viewer_offer()))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let in_call = async |who: &str| {
        let (status, list) = common::call(&router, "GET", &format!("/api/v1/calls/{case}"), &other, None).await;
        assert_eq!(status, StatusCode::OK);
        list.as_array().unwrap().iter().any(|p| p["who"] == who)
    };
    let started = Instant::now();
    while !(in_call("dr.lee").await && in_call("dr.kay").await) {
        assert!(started.elapsed() < Duration::from_secs(5), "both are in the call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The doctor logs out (from another tab, say).
    let logout = router.clone().oneshot(request("POST", "/api/v1/auth/logout".into(), &doctor, Body::empty()));
    assert_eq!(logout.await.unwrap().status(), StatusCode::NO_CONTENT);
    let out = Instant::now();

    // Out of the call within the re-check (10 s), well before a peer that never connects
    // is dropped (20 s); the colleague stays.
    while in_call("dr.lee").await {
        assert!(out.elapsed() < Duration::from_secs(15), "still in the call {:?} after the logout", out.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left_after = out.elapsed();
    assert!(in_call("dr.kay").await, "the colleague is still in the call");
    // The stream ended too, and only the doctor's.
    let ended =
        tokio::time::timeout(Duration::from_secs(15), streams.remove(0)).await.expect("the stream ended").unwrap();
    let stream_after = ended.duration_since(out);
    assert!(!streams[0].is_finished(), "the colleague's stream goes on");
    println!("after the logout: out of the call in {left_after:?}, event stream closed in {stream_after:?}");
    assert!(stream_after < Duration::from_secs(15));
    // Both were audited.
    let trail = hub.cases.storage().audit_of_case(&case.to_string()).unwrap();
    assert!(
        trail.iter().any(|e| e.actor == "dr.lee" && e.action == "call.leave" && e.detail == "the login ended"),
        "{trail:?}"
    );
}
