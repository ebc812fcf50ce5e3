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
        series: imaging::uid_from_uuid(7),
        instance: imaging::uid_from_uuid(8),
    };
    let make = |enc| imaging::dicom_with(&image, &frame, &subject, view, &acq, &uids, enc).unwrap();
    (make(imaging::PixelEncoding::JpegLsLossless), make(imaging::PixelEncoding::Native))
}

/// A hub in `dir` with organisations `org-north` and `org-south`, and a doctor of each
/// calling with a bearer token: `dr.ana` with `tok-north`, `dr.sam` with `tok-south`.
#[allow(dead_code)]
pub(crate) fn two_org_hub(dir: &std::path::Path) -> (cloud_sync::config::Config, cloud_sync::fleet::Hub) {
    use sha2::Digest;
    let digest = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let config = cloud_sync::config::Config::parse(&format!(
        "[hub]\ndata_dir = \"{}\"\n\n[[api_users]]\nuser = \"dr.ana\"\norg = \"org-north\"\ntoken_sha256 = \"{}\"\n\n\
         [[api_users]]\nuser = \"dr.sam\"\norg = \"org-south\"\ntoken_sha256 = \"{}\"\n",
        dir.display(),
        digest("tok-north"),
        digest("tok-south")
    ))
    .unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = cloud_sync::fleet::Hub::open(&config).unwrap();
    for org in ["org-north", "org-south"] {
        hub.cases
            .create_org(&case_model::UserId::parse("admin").unwrap(), &case_model::OrgId::parse(org).unwrap(), org)
            .unwrap();
    }
    (config, hub)
}
