//! Helpers shared by the hub's tests.

use sync_proto::frame::{Decoder, encode};
use sync_proto::{Event, Replica, Role, Session};

#[allow(dead_code)]
/// One van-hub connection in memory, through real frames, run until both sides are quiet;
/// returns the van's events and the number of messages.
pub(crate) fn pump(vr: &mut impl Replica, hr: &mut impl Replica) -> (Vec<Event>, usize) {
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    let (mut vd, mut hd) = (Decoder::default(), Decoder::default());
    vs.start(vr);
    let mut messages = 0;
    loop {
        let mut moved = false;
        while let Some(m) = vs.poll_transmit(vr) {
            hd.push(&encode(&m));
            messages += 1;
            moved = true;
        }
        while let Some(m) = hd.next_message().unwrap() {
            hs.handle(m, hr).unwrap();
        }
        while let Some(m) = hs.poll_transmit(hr) {
            vd.push(&encode(&m));
            messages += 1;
            moved = true;
        }
        while let Some(m) = vd.next_message().unwrap() {
            vs.handle(m, vr).unwrap();
        }
        if !moved {
            break;
        }
    }
    vr.flush();
    hr.flush();
    (std::iter::from_fn(|| vs.poll_event()).collect(), messages)
}

/// Like [`pump`], but counts the blob bytes sent to the van and drops the connection as
/// soon as `cut(bytes so far)` says so. Returns the blob bytes delivered.
#[allow(dead_code)]
pub(crate) fn pump_until(vr: &mut impl Replica, hr: &mut impl Replica, cut: impl Fn(u64) -> bool) -> u64 {
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    let (mut vd, mut hd) = (Decoder::default(), Decoder::default());
    vs.start(vr);
    let mut blob_bytes = 0u64;
    loop {
        let mut moved = false;
        while let Some(m) = vs.poll_transmit(vr) {
            hd.push(&encode(&m));
            moved = true;
        }
        while let Some(m) = hd.next_message().unwrap() {
            hs.handle(m, hr).unwrap();
        }
        // One message at a time from the hub, so the cut can fall mid-blob.
        if let Some(m) = hs.poll_transmit(hr) {
            if let sync_proto::Message::BlobChunk { data, .. } = &m {
                blob_bytes += data.len() as u64;
            }
            vd.push(&encode(&m));
            moved = true;
        }
        while let Some(m) = vd.next_message().unwrap() {
            vs.handle(m, vr).unwrap();
        }
        if cut(blob_bytes) {
            break;
        }
        if !moved {
            break;
        }
    }
    vr.flush();
    hr.flush();
    blob_bytes
}

/// Every change of a case in a van's store: a copy of the case, as a van that should not
/// hold it might.
#[allow(dead_code)]
pub(crate) fn all_changes(store: &case_store::Store, case: case_model::CaseId) -> Vec<Vec<u8>> {
    store.load_from_disk(case).unwrap().automerge().get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()).collect()
}

/// A DX object of `case` as the van's X-ray service makes it (the study UID carries the case
/// id), `columns` x `rows`, JPEG-LS and native.
#[allow(dead_code)]
pub(crate) fn dx_object(case: case_model::CaseId, patient_id: &str, columns: u16, rows: u16) -> (Vec<u8>, Vec<u8>) {
    dx_object_with(case, patient_id, columns, rows, (7, 8))
}

/// [`dx_object`] with the series and instance UIDs made from `uid_seeds`.
#[allow(dead_code)]
pub(crate) fn dx_object_with(
    case: case_model::CaseId,
    patient_id: &str,
    columns: u16,
    rows: u16,
    uid_seeds: (u128, u128),
) -> (Vec<u8>, Vec<u8>) {
    let raw = xray_sim::phantom::hand(columns, rows, 9);
    let frame = imaging::Frame {
        columns: raw.columns,
        rows: raw.rows,
        bits_stored: 14,
        pixel_pitch_um: 140,
        detector_id: "MVD-TEST".into(),
        pixels: raw.pixels,
    };
    let image = imaging::present(&frame).unwrap();
    let subject = imaging::Subject {
        patient_id: patient_id.into(),
        patient_name: "Okafor^Ada".into(),
        birth_date: "19610409".into(),
        sex: "F".into(),
        accession: "A1".into(),
        institution: "org-north".into(),
        station: "van-1".into(),
        operator: "ana".into(),
    };
    let view = imaging::View {
        body_part: imaging::BodyPart::Hand,
        projection: imaging::Projection::Pa,
        laterality: imaging::Laterality::Left,
    };
    let acq = imaging::Acquisition {
        kv: 55.0,
        mas: 2.5,
        ms: 25,
        dap_mgy_cm2: 0.3,
        date: "20261127".into(),
        time: "101500".into(),
    };
    let uids = imaging::Uids {
        study: edge_agent::xray::study_uid(case),
        series: imaging::uid_from_uuid(uid_seeds.0),
        instance: imaging::uid_from_uuid(uid_seeds.1),
    };
    let make = |enc| imaging::dicom_with(&image, &frame, &subject, view, &acq, &uids, enc).unwrap();
    (make(imaging::PixelEncoding::JpegLsLossless), make(imaging::PixelEncoding::Native))
}

/// RFC 4648 base32 (no padding), to read the TOTP secret an enrolment shows.
#[allow(dead_code)]
pub(crate) fn base32_decode(s: &str) -> Vec<u8> {
    let (mut bits, mut acc, mut out) = (0u32, 0u64, Vec::new());
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {c}"),
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The time now, seconds since the epoch.
#[allow(dead_code)]
pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Creates `user` in `org` with `roles` and a password, logs in (enrolling an authenticator
/// where the roles need one) and returns the login's tokens and, if enrolled, the TOTP
/// secret and the step of the code the enrolment used.
#[allow(dead_code)]
pub(crate) fn create_and_login(
    id: &cloud_sync::identity::Identity,
    org: &str,
    user: &str,
    roles: &[cloud_sync::identity::roles::Role],
) -> (cloud_sync::identity::Tokens, Option<(Vec<u8>, u64)>) {
    use cloud_sync::identity::LoginOutcome;
    let (o, u) = (case_model::OrgId::parse(org).unwrap(), case_model::UserId::parse(user).unwrap());
    let link = id.add_user("admin", &o, &u, roles, None, now_s()).unwrap();
    id.redeem_reset(&link, PASSWORD, now_s()).unwrap();
    match id.login(org, user, PASSWORD, None, now_s()).unwrap() {
        LoginOutcome::Session(t) => (*t, None),
        LoginOutcome::EnrolMfa { enrolment_token } => {
            let setup = id.mfa_enrol(&enrolment_token, now_s()).unwrap();
            let secret = base32_decode(&setup.secret);
            let step = (now_s() / 30) as u64;
            let code = format!("{:06}", accounts::totp::code_at(&secret, step));
            (id.mfa_confirm(&enrolment_token, &code, now_s()).unwrap(), Some((secret, step)))
        }
    }
}

/// The password test accounts get.
#[allow(dead_code)]
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// Access tokens of the two organisations' doctors.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub(crate) struct Doctors {
    /// `dr.ana` of `org-north`.
    pub(crate) north: String,
    /// `dr.sam` of `org-south`.
    pub(crate) south: String,
}

/// A hub in `dir` with organisations `org-north` and `org-south`, and a doctor of each
/// logged in: `dr.ana` and `dr.sam`.
#[allow(dead_code)]
pub(crate) fn two_org_hub(dir: &std::path::Path) -> (cloud_sync::config::Config, cloud_sync::fleet::Hub, Doctors) {
    let config = cloud_sync::config::Config::parse(&format!("[hub]\ndata_dir = \"{}\"\n", dir.display())).unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    for org in ["org-north", "org-south"] {
        hub.cases
            .create_org(&case_model::UserId::parse("admin").unwrap(), &case_model::OrgId::parse(org).unwrap(), org)
            .unwrap();
    }
    let doctor = [cloud_sync::identity::roles::Role::Doctor];
    let north = create_and_login(&hub.identity, "org-north", "dr.ana", &doctor).0.access_token;
    let south = create_and_login(&hub.identity, "org-south", "dr.sam", &doctor).0.access_token;
    (config, hub, Doctors { north, south })
}

/// A new store of van `van` in `dir`.
#[allow(dead_code)]
pub(crate) fn van_store(dir: &std::path::Path, van: &str) -> case_store::Store {
    let key = dir.join("k");
    case_store::generate_key_file(&key).unwrap();
    let mut sc = case_store::StoreConfig::new(dir.join("d"), key, case_model::VanId::parse(van).unwrap());
    sc.create_if_missing = true;
    case_store::Store::open(sc).unwrap()
}

/// A store of van `van-1` of org-north in `dir` that created a case (by `ana`), synced to
/// `hub`: the store and the case as the van sees it.
#[allow(dead_code)]
pub(crate) fn van_case(
    hub: &cloud_sync::fleet::Hub,
    dir: &std::path::Path,
) -> (case_store::Store, case_model::CaseView) {
    let store = van_store(dir, "van-1");
    let ctx = case_model::EditContext {
        user: case_model::UserId::parse("ana").unwrap(),
        now: case_model::Timestamp::from_unix_millis(1_800_000_000_000),
    };
    let view = store.create_case(&ctx, &case_model::OrgId::parse("org-north").unwrap()).unwrap();
    let device = sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap();
    pump(&mut edge_agent::sync::StoreReplica::new(store.clone(), "hub").unwrap(), &mut hub.cases.replica_for(&device));
    (store, view)
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`: `(ca.pem,
/// cert.pem, key.pem)`, for the TLS servers tests run (an identity provider, a mail relay).
#[allow(dead_code)]
pub(crate) fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Medvan test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Calls the hub's router as `token` (a bearer), with a JSON body if given: the status and
/// the JSON answer (null if it is not JSON).
#[allow(dead_code)]
pub(crate) async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req =
        axum::http::Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            axum::body::Body::from(b.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let resp = router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Creates `user` in `org` with `roles` and the test password, without logging in (a
/// browser does that, enrolling its authenticator).
#[allow(dead_code)]
pub(crate) fn create_with_password(
    id: &cloud_sync::identity::Identity,
    org: &str,
    user: &str,
    roles: &[cloud_sync::identity::roles::Role],
) {
    let (o, u) = (case_model::OrgId::parse(org).unwrap(), case_model::UserId::parse(user).unwrap());
    let link = id.add_user("admin", &o, &u, roles, None, now_s()).unwrap();
    id.redeem_reset(&link, PASSWORD, now_s()).unwrap();
}

/// Serves `hub`'s sync over real QUIC on loopback, enrols van-1 of org-north and starts its
/// sync service over `store` (reporting `positions`, if given), as the agent runs it.
#[allow(dead_code)]
pub(crate) async fn live_van(
    hub: &cloud_sync::fleet::Hub,
    store: &case_store::Store,
    roster_key: Option<[u8; 32]>,
    positions: Option<tokio::sync::watch::Receiver<Option<sync_proto::PositionReport>>>,
) -> edge_agent::sync::SyncHandle {
    let server = hub.bind_sync("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    {
        let (hub, server) = (hub.clone(), server.clone());
        tokio::spawn(async move { hub.serve_sync(server).await });
    }
    let device = sync_quic::identity::DeviceId::new("org-north", "van-1").unwrap();
    let token = hub.enroller.issue(device, now_s() + 600).unwrap();
    let enrolled = sync_quic::enrol::enrol(addr, "hub.medvan.local", &token.encode()).await.unwrap();
    edge_agent::sync::spawn_reporting(
        store.clone(),
        edge_agent::sync::SyncSettings {
            address: addr.to_string(),
            server_name: "hub.medvan.local".into(),
            identity: edge_agent::identity::Identity { ca: enrolled.ca, cert: enrolled.cert, key: enrolled.key },
            identity_dir: None,
            renew_below: None,
            liveness: Default::default(),
            roster_key,
        },
        positions,
    )
    .unwrap()
}
