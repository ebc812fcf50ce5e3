//! Where the vans are, and geofences, end to end: a simulated GPS receiver on a pty plays a
//! drive with realistic noise; the van's agent reads it over the serial port and reports its
//! position over real QUIC; the hub decides zone entries and raises the pre-arrival alert.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use case_model::{Edit, EditContext, FieldName, FieldValue, OrgId, Timestamp, UserId};
use cloud_sync::identity::roles::Role;
use cloud_sync::{HubState, app};
use geofence::{LatLon, distance_m, offset};

use common::call;

async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const HOSPITAL: LatLon = LatLon { lat: 51.5155, lon: -0.1746 };
const RADIUS_M: f64 = 1000.0;

/// A drive towards the hospital that first follows a road passing 25 m outside its approach
/// zone for 1.6 km, turns in to the hospital, leaves the zone, and comes back.
fn route() -> Vec<LatLon> {
    let mut r = vec![offset(HOSPITAL, 10.0, 3500.0)];
    for a in (45..=135).step_by(10) {
        r.push(offset(HOSPITAL, f64::from(a), RADIUS_M + 25.0));
    }
    r.push(offset(HOSPITAL, 135.0, 200.0));
    r.push(offset(HOSPITAL, 250.0, 1600.0));
    r.push(offset(HOSPITAL, 250.0, 300.0));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_into_a_hospital_zone_with_gps_noise_raises_exactly_one_alert_at_the_right_time() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hub, _) = common::two_org_hub(dir.path());
    let router = app(HubState::open(&config).unwrap().with_hub(&hub));
    let (admin, _) = common::create_and_login(&hub.identity, "org-north", "adm.lee", &[Role::Admin]);
    let (ed, _) = common::create_and_login(&hub.identity, "org-north", "dr.ed", &[Role::Doctor]);
    let (other, _) = common::create_and_login(&hub.identity, "org-north", "dr.other", &[Role::Doctor]);
    let (admin, ed, other) = (admin.access_token, ed.access_token, other.access_token);

    // The admin defines the hospital's approach zone; bad definitions say what is wrong.
    let zone = serde_json::json!({
        "name": "St Mary's approach",
        "kind": "hospital_approach",
        "shape": {"type": "circle", "center": {"lat": HOSPITAL.lat, "lon": HOSPITAL.lon}, "radius_m": RADIUS_M},
        "team": ["dr.ed"],
    });
    let (status, created) = call(&router, "POST", "/api/v1/geofences", &admin, Some(zone.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let zone_id = created["id"].as_str().unwrap().to_owned();
    let mut bad = zone.clone();
    bad["shape"]["radius_m"] = serde_json::json!(-5);
    let (status, err) = call(&router, "POST", "/api/v1/geofences", &admin, Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].as_str().unwrap_or_default().contains("radius"), "{err}");
    let (status, _) = call(&router, "POST", "/api/v1/geofences", &ed, Some(zone.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a doctor does not define zones");
    let (status, zones) = call(&router, "GET", "/api/v1/geofences", &ed, None).await;
    assert_eq!((status, zones.as_array().unwrap().len()), (StatusCode::OK, 1), "a doctor sees them on the map");

    let vdir = tempfile::tempdir().unwrap();
    let (store, _) = common::van_case(&hub, vdir.path());

    // The crew's case: a stroke, with the time of onset.
    let now_ms = common::now_s() * 1000;
    let crew = EditContext { user: UserId::parse("ben.medic").unwrap(), now: Timestamp::from_unix_millis(now_ms) };
    let north = OrgId::parse("org-north").unwrap();
    let case = store.create_case(&crew, &north).unwrap().id;
    let onset = Timestamp::from_unix_millis(now_ms - 40 * 60_000);
    store
        .edit_case(
            &crew,
            case,
            &[
                Edit::SetField {
                    field: FieldName::ChiefComplaint,
                    value: FieldValue::Text("right arm weakness, slurred speech".into()),
                },
                Edit::SetField { field: FieldName::SymptomOnset, value: FieldValue::Text(onset.to_string()) },
                Edit::SetField { field: FieldName::Age, value: FieldValue::Int(68) },
            ],
        )
        .unwrap();

    // The receiver: 15 m of noise (per axis), one damaged line in every seven fixes, played
    // 20 times faster than real time, its clock ending before now (fixes are never in the
    // future for the case record).
    let drive = gps_sim::Drive { route: route(), speed_mps: 25.0, start_ms: 0, noise_m: 15.0, hz: 1.0 };
    let duration_s = drive.duration_s();
    let drive = gps_sim::Drive { start_ms: now_ms - (duration_s as i64 + 30) * 1000, ..drive };
    // The truth: when the van really enters the zone.
    let crossing_ms = (0..(duration_s * 10.0) as i64)
        .map(|ds| ds as f64 / 10.0)
        .find(|t| distance_m(drive.truth(*t).0, HOSPITAL) < RADIUS_M)
        .map(|t| drive.start_ms + (t * 1000.0) as i64)
        .unwrap();
    // The noise is real: judged fix by fix, the van would enter and leave many times.
    let naive_entries = drive
        .fixes(42)
        .take(duration_s as usize)
        .map(|f| distance_m(f.reported, HOSPITAL) < RADIUS_M)
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| !w[0] && w[1])
        .count();
    assert!(naive_entries >= 3, "the noise should fool a fix-by-fix test ({naive_entries} entries)");

    let sim = gps_sim::Simulator::start(drive.clone(), 42, 20.0, gps_sim::LineFaults { every: 7 }).unwrap();
    let gps = edge_agent::gps::GpsHandle::start(
        store.clone(),
        "van-1".into(),
        &edge_agent::gps::GpsConfig { device: sim.path().to_owned(), baud: 9600 },
    )
    .unwrap();
    let sync = common::live_van(&hub, &store, None, Some(gps.positions())).await;

    // The van shows on the map while it drives.
    eventually("the van appears on the map", Duration::from_secs(20), async || {
        let (_, vans) = call(&router, "GET", "/api/v1/fleet/positions", &ed, None).await;
        vans.as_array().is_some_and(|v| v.len() == 1 && v[0]["active_case"] == case.to_string())
    })
    .await;
    // Wait for the whole drive (at 20x) and a little more.
    let end_ms = drive.start_ms + (duration_s * 1000.0) as i64;
    eventually("the drive ends", Duration::from_secs(60), async || sim.last_sent_ms() >= end_ms + 5000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Exactly one alert, to the receiving team, at the right time, with the case summary.
    let (status, alerts) = call(&router, "GET", "/api/v1/alerts", &ed, None).await;
    assert_eq!(status, StatusCode::OK, "{alerts}");
    let alerts = alerts.as_array().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["case_id"], case.to_string());
    assert_eq!(a["zone_id"], zone_id.as_str());
    assert_eq!(a["summary"]["chief_complaint"], "right arm weakness, slurred speech");
    assert_eq!(a["summary"]["symptom_onset"], onset.to_string());
    let entered =
        time::OffsetDateTime::parse(a["entered_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let entered_ms = (entered.unix_timestamp_nanos() / 1_000_000) as i64;
    let late_s = (entered_ms - crossing_ms) as f64 / 1000.0;
    println!(
        "pre-arrival alert: the van entered the zone {late_s:+.1} s from the true crossing (GPS time); {naive_entries} naive entries along the way"
    );
    assert!((-3.0..=6.0).contains(&late_s), "entered {late_s} s from the true crossing");
    let (_, none) = call(&router, "GET", "/api/v1/alerts", &other, None).await;
    assert_eq!(none, serde_json::json!([]), "not in the team");

    // Every decision is in the hub's audit log: entries, the leave, one alert, the reads.
    let log = hub.storage.audit_entries(0, 10_000).unwrap();
    let count = |action: &str| log.iter().filter(|e| e.record().action == action).count();
    assert_eq!(count("geofence.enter"), 2, "entered, left and entered again");
    assert_eq!(count("geofence.leave"), 1);
    assert!(
        count("geofence.alert") >= 1
            && log.iter().any(|e| e.record().action == "geofence.alert"
                && e.record().case_id.as_deref() == Some(case.to_string().as_str()))
    );
    assert_eq!(count("geofence.alert.read"), 1);

    // Damaged lines were refused and counted; the route is in the case, thinned.
    let st = gps.status();
    assert!(st.refused >= 10, "{st:?}");
    assert_eq!(st.active_case.as_deref(), Some(case.to_string().as_str()));
    gps.stop();
    let view = store.read_case(&crew, case).unwrap();
    assert!(view.track.len() >= 20 && view.track.len() < (duration_s as usize) / 3, "{} points", view.track.len());
    assert!(view.attachments.iter().any(|a| a["kind"] == "gps_track"), "the full track is attached");
    drop(sync);
}
