//! The hub's behaviour over each storage backend: every test here runs twice, once on
//! SQLite with files and once on PostgreSQL (on loopback; `MEDVAN_TEST_POSTGRES` names
//! another server). Vans are real encrypted case stores speaking the sync protocol through
//! real frames, in memory.

mod common;

use common::pump;

use std::sync::Arc;

use case_model::edit::{AllergyInput, VitalsInput};
use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use cloud_sync::cases::CaseHub;
use cloud_sync::fleet::Hub;
use cloud_sync::storage::crypto::Sealer;
use cloud_sync::storage::postgres::PgStorage;
use cloud_sync::storage::sqlite::SqliteStorage;
use cloud_sync::storage::{Storage, StorageError};
use edge_agent::sync::StoreReplica;
use sync_proto::{BlobState, DocId, Event, Replica};
use sync_quic::identity::{DeviceId, FleetCa};

/// A backend under test, and what must outlive it.
struct Backend {
    storage: Arc<dyn Storage>,
    sealer: Sealer,
    _dir: Option<tempfile::TempDir>,
    reopen: Box<dyn Fn() -> Arc<dyn Storage>>,
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(f) = self.cleanup.take() {
            f();
        }
    }
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::from_master(&[7; 32]);
    let path = dir.path().to_owned();
    let s2 = sealer.clone();
    Backend {
        storage: Arc::new(SqliteStorage::open(&path, &sealer).unwrap()),
        sealer,
        _dir: Some(dir),
        reopen: Box::new(move || Arc::new(SqliteStorage::open(&path, &s2).unwrap())),
        cleanup: None,
    }
}

fn postgres() -> Backend {
    let url = std::env::var("MEDVAN_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres password=postgres dbname=test".into());
    let mut r = [0u8; 6];
    rand::fill(&mut r);
    let schema = format!("medvan_test_{}", hex::encode(r));
    let storage = PgStorage::connect(&url, &schema, 2).unwrap_or_else(|e| {
        panic!("PostgreSQL at {url:?} is needed for the hub's storage tests ({e}); scripts/setup-deps.sh sets it up")
    });
    let (u2, s2) = (url.clone(), schema.clone());
    Backend {
        storage: Arc::new(storage),
        sealer: Sealer::from_master(&[7; 32]),
        _dir: None,
        reopen: Box::new(move || Arc::new(PgStorage::connect(&u2, &s2, 2).unwrap())),
        // Each test has its own schema; it goes when the test ends.
        cleanup: Some(Box::new(move || PgStorage::connect(&url, &schema, 1).unwrap().destroy().unwrap())),
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $name() { super::$name(super::sqlite()) } )* }
        mod on_postgres { $( #[test] fn $name() { super::$name(super::postgres()) } )* }
    };
}

on_both!(
    vans_upload_cases_doctors_edit_them_and_story_4_reaches_both_sides,
    a_van_is_refused_other_organisations_and_unassigned_cases_and_the_session_goes_on,
    an_assigned_case_reaches_the_assigned_van_only,
    two_hub_processes_appending_to_one_case_lose_nothing,
    blobs_arrive_in_chunks_resume_after_a_cut_and_a_bad_one_is_discarded,
    the_registry_persists_tokens_certificates_and_revocations,
    the_audit_chain_records_access_and_refusals_and_verifies,
    an_image_attached_on_a_van_reaches_the_hub_and_the_assigned_van,
    a_vans_dicom_is_filed_for_its_organisation_and_linked_to_its_case,
    identity_rows_and_van_audit_copies_keep_versions_order_and_organisations,
);

fn ctx(user: &str) -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(ms) }
}

struct Van {
    _dir: tempfile::TempDir,
    store: Store,
    device: DeviceId,
}

fn van(org: &str, name: &str) -> Van {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"), key, VanId::parse(name).unwrap());
    config.create_if_missing = true;
    Van { store: Store::open(config).unwrap(), _dir: dir, device: DeviceId::new(org, name).unwrap() }
}

fn hub_over(storage: Arc<dyn Storage>, sealer: Sealer) -> Arc<CaseHub> {
    Arc::new(CaseHub::new(storage, sealer))
}

fn setup(b: &Backend) -> Arc<CaseHub> {
    let hub = hub_over(b.storage.clone(), b.sealer.clone());
    hub.create_org(&UserId::parse("admin").unwrap(), &OrgId::parse("org-north").unwrap(), "North EMS").unwrap();
    hub.create_org(&UserId::parse("admin").unwrap(), &OrgId::parse("org-south").unwrap(), "South EMS").unwrap();
    hub
}

/// One connection, run until both sides are quiet; returns the van's events and the
/// number of messages.
fn sync(v: &Van, hub: &Arc<CaseHub>) -> (Vec<Event>, usize) {
    let mut vr = StoreReplica::new(v.store.clone(), "hub").unwrap();
    let mut hr = hub.replica_for(&v.device);
    pump(&mut vr, &mut hr)
}

fn north() -> OrgId {
    OrgId::parse("org-north").unwrap()
}

fn vitals(hr: i64) -> Edit {
    Edit::AddVitals(VitalsInput { heart_rate: Some(hr), ..Default::default() })
}

fn vans_upload_cases_doctors_edit_them_and_story_4_reaches_both_sides(b: Backend) {
    let hub = setup(&b);
    let v = van("org-north", "van-12");
    let ids: Vec<CaseId> = (0..3).map(|_| v.store.create_case(&ctx("ana"), &north()).unwrap().id).collect();
    for id in &ids {
        v.store.edit_case(&ctx("ana"), *id, &[vitals(96)]).unwrap();
    }
    sync(&v, &hub);
    let doctor = UserId::parse("dr-osei").unwrap();
    for id in &ids {
        assert_eq!(hub.read_case(&doctor, &north(), *id).unwrap().vitals.len(), 1);
    }
    // Story 4: penicillin on the van, "no known allergies" by the doctor at the hub.
    let case = ids[1];
    v.store
        .edit_case(
            &ctx("ana"),
            case,
            &[Edit::AddAllergy(AllergyInput {
                substance: "penicillin".into(),
                code: None,
                code_system: None,
                category: Default::default(),
            })],
        )
        .unwrap();
    hub.edit_case(
        &ctx("dr-osei"),
        &north(),
        case,
        &[
            Edit::RecordNoKnownAllergies,
            Edit::AddNote { text: "distal radius fracture, splint".into(), consult_id: None },
        ],
    )
    .unwrap();
    let (events, _) = sync(&v, &hub);
    assert!(events.contains(&Event::DocChanged(DocId(*case.as_bytes()))), "{events:?}");
    let at_hub = hub.read_case(&doctor, &north(), case).unwrap();
    let at_van = v.store.read_case(&ctx("ana"), case).unwrap();
    for (name, view) in [("hub", &at_hub), ("van", &at_van)] {
        assert_eq!(view.notes.len(), 1, "{name}");
        assert_eq!(view.allergies.len(), 1, "{name}: the allergen is never dropped");
        assert_eq!(view.conflicts.len(), 1, "{name}: {:?}", view.conflicts);
        assert_eq!(view.conflicts[0].path, "patient.allergy_status");
    }
    // A hub restarted on the same storage holds the same cases, and an idle van reconnects
    // in one round trip.
    let hub2 = hub_over((b.reopen)(), b.sealer.clone());
    assert_eq!(hub2.read_case(&doctor, &north(), case).unwrap().notes, at_hub.notes);
    let (events, messages) = sync(&v, &hub2);
    assert_eq!(messages, 2, "an idle reconnect is a hello and a welcome: {events:?}");
    // Another organisation's user sees nothing of it.
    let south = OrgId::parse("org-south").unwrap();
    assert!(hub2.read_case(&UserId::parse("dr-x").unwrap(), &south, case).is_err());
    assert!(hub2.list_cases(&UserId::parse("dr-x").unwrap(), &south).unwrap().is_empty());
    assert_eq!(hub2.list_cases(&doctor, &north()).unwrap().len(), 3);
}

fn a_van_is_refused_other_organisations_and_unassigned_cases_and_the_session_goes_on(b: Backend) {
    let hub = setup(&b);
    let a = van("org-north", "van-1");
    let case = a.store.create_case(&ctx("ana"), &north()).unwrap().id;
    sync(&a, &hub);
    let doc = DocId(*case.as_bytes());

    // Van 9 of another organisation somehow holds a copy of the case and edits it, and
    // also has a case of its own.
    let b9 = van("org-south", "van-9");
    let changes = common::all_changes(&a.store, case);
    b9.store.import_case(&ctx("mallory"), case, &changes).unwrap();
    b9.store.edit_case(&ctx("mallory"), case, &[vitals(10)]).unwrap();
    let own = b9.store.create_case(&ctx("bob"), &OrgId::parse("org-south").unwrap()).unwrap().id;
    let (events, _) = sync(&b9, &hub);
    assert!(
        events.iter().any(
            |e| matches!(e, Event::RefusedByPeer { doc: d, detail, .. } if *d == doc && detail.contains("may not sync"))
        ),
        "{events:?}"
    );
    // The refused change is not stored, and the van's own case went through in the same session.
    assert_eq!(hub.read_case(&UserId::parse("dr").unwrap(), &north(), case).unwrap().vitals.len(), 0);
    let south = OrgId::parse("org-south").unwrap();
    assert!(hub.read_case(&UserId::parse("dr").unwrap(), &south, own).is_ok());
    // A van of the right organisation that neither created nor was assigned the case is refused too.
    let c = van("org-north", "van-2");
    c.store.import_case(&ctx("eve"), case, &changes).unwrap();
    c.store.edit_case(&ctx("eve"), case, &[vitals(20)]).unwrap();
    let (events, _) = sync(&c, &hub);
    assert!(events.iter().any(|e| matches!(e, Event::RefusedByPeer { doc: d, .. } if *d == doc)), "{events:?}");
    // A van creating a case in another organisation's name is refused.
    let forged = c.store.create_case(&ctx("eve"), &OrgId::parse("org-south").unwrap()).unwrap().id;
    let (events, _) = sync(&c, &hub);
    assert!(
        events.iter().any(|e| matches!(e, Event::RefusedByPeer { doc: d, .. } if *d == DocId(*forged.as_bytes()))),
        "{events:?}"
    );
    assert!(hub.read_case(&UserId::parse("dr").unwrap(), &south, forged).is_err());
    // Every refusal is in the audit log, with its reason.
    let trail = b.storage.audit_of_case(&case.to_string()).unwrap();
    let refused: Vec<_> = trail.iter().filter(|e| e.outcome == audit::Outcome::Refused).collect();
    assert!(
        refused.iter().any(|e| e.actor == "van:org-south/van-9" && e.detail.contains("another organisation")),
        "{trail:?}"
    );
    assert!(
        refused.iter().any(|e| e.actor == "van:org-north/van-2" && e.detail.contains("neither created")),
        "{trail:?}"
    );
}

fn an_assigned_case_reaches_the_assigned_van_only(b: Backend) {
    let hub = setup(&b);
    let a = van("org-north", "van-1");
    let case = a.store.create_case(&ctx("ana"), &north()).unwrap().id;
    a.store.edit_case(&ctx("ana"), case, &[vitals(120)]).unwrap();
    sync(&a, &hub);
    let b2 = van("org-north", "van-2");
    let c3 = van("org-north", "van-3");
    let admin = UserId::parse("dispatch").unwrap();
    assert!(
        hub.assign(&admin, &OrgId::parse("org-south").unwrap(), case, "van-2").is_err(),
        "not its organisation's case"
    );
    hub.assign(&admin, &north(), case, "van-2").unwrap();
    sync(&b2, &hub);
    sync(&c3, &hub);
    assert_eq!(b2.store.read_case(&ctx("ben"), case).unwrap().vitals.len(), 1);
    assert!(c3.store.read_case(&ctx("cy"), case).is_err(), "van 3 was not assigned");
    // The assigned van's edits are accepted and reach the creator.
    b2.store.edit_case(&ctx("ben"), case, &[vitals(110)]).unwrap();
    sync(&b2, &hub);
    sync(&a, &hub);
    assert_eq!(a.store.read_case(&ctx("ana"), case).unwrap().vitals.len(), 2);
}

fn two_hub_processes_appending_to_one_case_lose_nothing(b: Backend) {
    let hub1 = setup(&b);
    let hub2 = hub_over((b.reopen)(), b.sealer.clone());
    let a = van("org-north", "van-1");
    let case = a.store.create_case(&ctx("ana"), &north()).unwrap().id;
    sync(&a, &hub1);
    // Both hubs have the case cached, then each writes without seeing the other's write.
    let dr = UserId::parse("dr").unwrap();
    hub1.read_case(&dr, &north(), case).unwrap();
    hub2.read_case(&dr, &north(), case).unwrap();
    let note = |t: &str| Edit::AddNote { text: t.into(), consult_id: None };
    hub1.edit_case(&ctx("dr-a"), &north(), case, &[note("from hub 1")]).unwrap();
    hub2.edit_case(&ctx("dr-b"), &north(), case, &[note("from hub 2")]).unwrap();
    // Hub 1's copy is now behind storage: what it tells the van must not be.
    sync(&a, &hub1);
    assert_eq!(a.store.read_case(&ctx("ana"), case).unwrap().notes.len(), 2, "hub 1 served its stale copy");
    for h in [&hub1, &hub2] {
        assert_eq!(h.read_case(&dr, &north(), case).unwrap().notes.len(), 2);
    }
    let fresh = hub_over((b.reopen)(), b.sealer.clone());
    assert_eq!(fresh.read_case(&dr, &north(), case).unwrap().notes.len(), 2);
    let (_, messages) = sync(&a, &hub2);
    assert!(messages <= 2, "a van already in sync exchanges a hello and a welcome only, not {messages} messages");
}

fn blobs_arrive_in_chunks_resume_after_a_cut_and_a_bad_one_is_discarded(b: Backend) {
    use sha2::Digest;
    let hub = setup(&b);
    let device = DeviceId::new("org-north", "van-1").unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
    let mut r = hub.replica_for(&device);
    assert!(r.accepts_blob(&sha, data.len() as u64));
    assert_eq!(r.blob_state(&sha), BlobState::Missing);
    // Two chunks arrive, then the link is cut.
    let chunk = sync_proto::CHUNK as usize;
    r.write_blob(&sha, data.len() as u64, 0, &data[..chunk]).unwrap();
    r.write_blob(&sha, data.len() as u64, chunk as u64, &data[chunk..2 * chunk]).unwrap();
    drop(r);
    // A new connection (to a restarted hub) resumes from what is held.
    let hub = hub_over((b.reopen)(), b.sealer.clone());
    let mut r = hub.replica_for(&device);
    assert_eq!(r.blob_state(&sha), BlobState::Partial(2 * chunk as u64));
    assert!(r.write_blob(&sha, data.len() as u64, 0, &data[..chunk]).is_err(), "a chunk out of order is refused");
    let mut offset = 2 * chunk;
    while offset < data.len() {
        let end = (offset + chunk).min(data.len());
        r.write_blob(&sha, data.len() as u64, offset as u64, &data[offset..end]).unwrap();
        offset = end;
    }
    r.finish_blob(&sha, data.len() as u64).unwrap();
    assert_eq!(r.blob_state(&sha), BlobState::Complete);
    assert_eq!(
        cloud_sync::cases::read_blob(&hub, "org-north", &sha, 100_000, 70_000).unwrap(),
        &data[100_000..170_000]
    );
    // Bytes that do not hash to the name are discarded whole.
    let bad: [u8; 32] = sha2::Sha256::digest(b"something else").into();
    r.write_blob(&bad, 1000, 0, &data[..1000]).unwrap();
    // A short piece that is not the last is refused: resumes always start on a chunk.
    assert!(r.write_blob(&[8; 32], 3 * chunk as u64, 0, &data[..1000]).is_err());
    let err = r.finish_blob(&bad, 1000).unwrap_err();
    assert!(err.detail.contains("does not match"), "{}", err.detail);
    assert_eq!(r.blob_state(&bad), BlobState::Missing);
    // Stored chunks are sealed: the plaintext appears nowhere in storage.
    let sealed = b.storage.blob_chunk(&cloud_sync::cases::blob_key("org-north", &sha), 0).unwrap().unwrap();
    assert!(!sealed.windows(64).any(|w| w == &data[..64]));
}

fn the_registry_persists_tokens_certificates_and_revocations(b: Backend) {
    use sync_quic::enrol::EnrolError;
    let now = time::OffsetDateTime::now_utc();
    let ca = FleetCa::generate("test", now - time::Duration::days(1), now + time::Duration::days(30)).unwrap();
    let (cert, key) = ca.to_der();
    b.storage.save_ca(&cert, &b.sealer.seal(b"fleet-ca-key", &key)).unwrap();
    assert!(matches!(b.storage.save_ca(&cert, &key), Err(StorageError::CaExists)), "never replaced");
    let hub = Hub::assemble(b.storage.clone(), b.sealer.clone(), ca, 90, "hub.test").unwrap();
    let device = DeviceId::new("org-north", "van-4").unwrap();
    let token = hub.enroller.issue(device.clone(), now.unix_timestamp() + 600).unwrap().encode();
    let (_k, csr) = sync_quic::identity::new_device_key().unwrap();
    let cert = hub.enroller.redeem(&token, &csr, now).unwrap();
    // After a restart the token is still used, and the same key may retry.
    let reopened = (b.reopen)();
    let hub2 = Hub::assemble(
        reopened.clone(),
        b.sealer.clone(),
        FleetCa::from_der(&hub.ca.to_der().0, &hub.ca.to_der().1).unwrap(),
        90,
        "hub.test",
    )
    .unwrap();
    hub2.enroller.redeem(&token, &csr, now).unwrap();
    let (_k2, other) = sync_quic::identity::new_device_key().unwrap();
    assert_eq!(hub2.enroller.redeem(&token, &other, now).unwrap_err(), EnrolError::AlreadyUsed);
    // Revocation covers every certificate of the van and is seen by another process.
    let fp = sync_quic::identity::fingerprint(&cert);
    assert!(!reopened.is_revoked(&fp).unwrap());
    assert_eq!(b.storage.revoke_device(&device).unwrap(), 2, "both certificates issued");
    assert!(reopened.is_revoked(&fp).unwrap());
    let list = reopened.revocations_after(0).unwrap();
    assert_eq!(list.len(), 2);
    assert!(reopened.revocations_after(list[1].seq).unwrap().is_empty());
    assert_eq!(b.storage.revoke_device(&device).unwrap(), 0, "revoking twice changes nothing");
    // A revoked van's token is void, even for the key it was bound to.
    assert_eq!(hub2.enroller.redeem(&token, &csr, now).unwrap_err(), EnrolError::AlreadyUsed);
}

fn the_audit_chain_records_access_and_refusals_and_verifies(b: Backend) {
    let hub = setup(&b);
    let a = van("org-north", "van-1");
    let case = a.store.create_case(&ctx("ana"), &north()).unwrap().id;
    sync(&a, &hub);
    let dr = UserId::parse("dr").unwrap();
    hub.read_case(&dr, &north(), case).unwrap();
    assert!(hub.read_case(&dr, &OrgId::parse("org-south").unwrap(), case).is_err());
    let trail = b.storage.audit_of_case(&case.to_string()).unwrap();
    let actions: Vec<(&str, &str, audit::Outcome)> =
        trail.iter().map(|e| (e.actor.as_str(), e.action.as_str(), e.outcome)).collect();
    assert!(actions.contains(&("van:org-north/van-1", "case.create", audit::Outcome::Allowed)), "{actions:?}");
    assert!(actions.contains(&("dr", "case.read", audit::Outcome::Allowed)), "{actions:?}");
    assert!(actions.contains(&("dr", "case.read", audit::Outcome::Refused)), "{actions:?}");
    let head = b.storage.verify_audit().unwrap().unwrap();
    assert!(head.size >= 5, "{head:?}");
}

fn an_image_attached_on_a_van_reaches_the_hub_and_the_assigned_van(b: Backend) {
    use case_model::codes::AttachmentKind;
    use sha2::Digest;
    let hub = setup(&b);
    let a = van("org-north", "van-1");
    let case = a.store.create_case(&ctx("ana"), &north()).unwrap().id;
    let image: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let sha: [u8; 32] = sha2::Sha256::digest(&image).into();
    a.store
        .attach(&ctx("ana"), case, &mut image.as_slice(), "application/dicom", AttachmentKind::XrayStudy, None)
        .unwrap();
    let (events, _) = sync(&a, &hub);
    assert!(events.contains(&Event::BlobDelivered(sha)), "{events:?}");
    assert_eq!(cloud_sync::cases::read_blob(&hub, "org-north", &sha, 0, image.len() as u64).unwrap(), image);
    // Nothing changed: the next connection is one round trip, blobs included.
    let (_, messages) = sync(&a, &hub);
    assert_eq!(messages, 2);

    // Van 2 is assigned the case and gets the image too; a cut halfway resumes.
    hub.assign(&UserId::parse("dispatch").unwrap(), &north(), case, "van-2").unwrap();
    let b2 = van("org-north", "van-2");
    let mut vr = StoreReplica::new(b2.store.clone(), "hub").unwrap();
    let mut hr = hub.replica_for(&b2.device);
    let delivered = common::pump_until(&mut vr, &mut hr, |sent| sent > 300_000);
    assert!(delivered > 300_000 && delivered < image.len() as u64, "cut halfway: {delivered}");
    assert!(matches!(vr.blob_state(&sha), BlobState::Partial(n) if n > 0), "{:?}", vr.blob_state(&sha));
    let mut vr = StoreReplica::new(b2.store.clone(), "hub").unwrap();
    let mut hr = hub.replica_for(&b2.device);
    let resumed = common::pump_until(&mut vr, &mut hr, |_| false);
    assert!(
        delivered + resumed < image.len() as u64 * 11 / 10,
        "{delivered} + {resumed} blob bytes for {}",
        image.len()
    );
    assert_eq!(vr.blob_state(&sha), BlobState::Complete);
    assert_eq!(b2.store.read_blob(&ctx("ben"), case, &hex::encode(sha)).unwrap().0, image);
}

/// A small DX object of `case`, as the van's X-ray service makes it.
fn dx_of(case: CaseId, patient: &str) -> Vec<u8> {
    common::dx_object(case, patient, 64, 80).0
}

fn a_vans_dicom_is_filed_for_its_organisation_and_linked_to_its_case(b: Backend) {
    use case_model::codes::AttachmentKind;
    let hub = setup(&b);
    let v = van("org-north", "van-12");
    let case = v.store.create_case(&ctx("ana"), &north()).unwrap().id;
    let image = dx_of(case, "T-1");
    v.store
        .attach(&ctx("ana"), case, &mut image.as_slice(), "application/dicom", AttachmentKind::XrayStudy, None)
        .unwrap();
    sync(&v, &hub);
    // Filed under the van's organisation, linked to the case its study UID names.
    let found = hub.dicom_instances(&north(), None).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].row.case_id, Some(case.to_string()));
    assert_eq!(found[0].row.study, edge_agent::xray::study_uid(case));
    assert_eq!(found[0].meta["00100020"]["Value"][0], "T-1");
    assert_eq!(hub.dicom_bytes(&found[0].row).unwrap(), image);
    // Nothing of it for another organisation, even with the same study UID.
    let south = OrgId::parse("org-south").unwrap();
    assert!(hub.dicom_instances(&south, None).unwrap().is_empty());
    let filed = hub.store_dicom("dr-sam", &south, &image, None).unwrap().unwrap();
    assert_eq!(filed.case_id, None, "a study UID naming another organisation's case links to nothing");
    assert!(!filed.already, "each organisation files its own copy");
    // The same object again is already there; a different one under its SOP Instance UID is refused.
    let again = hub.store_dicom("dr-osei", &north(), &image, None).unwrap().unwrap();
    assert!(again.already);
    let other = dx_of(case, "SOMEONE-ELSE");
    let refused = hub.store_dicom("dr-osei", &north(), &other, None).unwrap().unwrap_err();
    assert_eq!(refused.reason, cloud_sync::dicom::status::DUPLICATE_INSTANCE);
    assert_eq!(hub.dicom_instances(&north(), None).unwrap().len(), 1);
    // The attributes are sealed: the stored row holds no patient id in clear.
    let row = &b.storage.dicom_instances("org-north", None).unwrap()[0];
    assert!(!row.sealed_meta.windows(3).any(|w| w == b"T-1"));
    let audit = b.storage.audit_of_case(&case.to_string()).unwrap();
    assert!(audit.iter().any(|e| e.action == "dicom.store" && e.actor == "van:org-north/van-12"), "{audit:#?}");
}

fn identity_rows_and_van_audit_copies_keep_versions_order_and_organisations(b: Backend) {
    use cloud_sync::storage::{StorageError, VanHead};
    let st = &b.storage;
    // Identity rows: created once, updated at the version read, listed per organisation.
    assert_eq!(st.put_identity("user", "org-north/ana", "org-north", 0, b"v1", None).unwrap(), 1);
    assert!(matches!(
        st.put_identity("user", "org-north/ana", "org-north", 0, b"again", None),
        Err(StorageError::Conflict)
    ));
    assert_eq!(st.put_identity("user", "org-north/ana", "org-north", 1, b"v2", None).unwrap(), 2);
    assert!(matches!(
        st.put_identity("user", "org-north/ana", "org-north", 1, b"stale", None),
        Err(StorageError::Conflict)
    ));
    st.put_identity("user", "org-south/sam", "org-south", 0, b"s", None).unwrap();
    let north = st.identities("user", "org-north").unwrap();
    assert_eq!(north.len(), 1);
    assert_eq!((north[0].version, north[0].sealed.as_slice()), (2, &b"v2"[..]));
    assert!(st.delete_identity("user", "org-north/ana", None).unwrap());
    assert!(!st.delete_identity("user", "org-north/ana", None).unwrap());
    assert!(st.identity("user", "org-north/ana").unwrap().is_none());

    // A van's audit copy: appended in order only, read back whole, searched per organisation.
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(audit::SCHEMA_SQL).unwrap();
    for (i, action) in ["case.create", "auth.break_glass", "case.read"].iter().enumerate() {
        let r = audit::Record {
            at: 1_000 + i as i64,
            actor: "ana".into(),
            action: (*action).into(),
            case_id: None,
            outcome: audit::Outcome::Allowed,
            detail: format!("entry {i}"),
        };
        audit::append(&conn, &r).unwrap();
    }
    let entries = audit::after(&conn, 0, 10).unwrap();
    let head = VanHead { size: 2, root: [1; 32], signature: vec![2; 64], received_at: 5 };
    st.append_van_audit("org-north", "van-1", &entries[..2], &head).unwrap();
    // Not following what is held: refused, nothing stored.
    assert!(matches!(st.append_van_audit("org-north", "van-1", &entries[..1], &head), Err(StorageError::Conflict)));
    let head3 = VanHead { size: 3, root: [3; 32], signature: vec![4; 64], received_at: 6 };
    st.append_van_audit("org-north", "van-1", &entries[2..], &head3).unwrap();
    let hashes = st.van_audit_hashes("org-north", "van-1").unwrap();
    assert_eq!(
        hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        entries.iter().map(|e| e.hash.clone()).collect::<Vec<_>>()
    );
    assert_eq!(st.van_audit_entries("org-north", "van-1", 1, 10).unwrap(), entries[1..].to_vec());
    assert_eq!(st.van_audit_head("org-north", "van-1").unwrap(), Some(head3));
    let found = st.van_audit_by_action("org-north", "auth.break_glass", 10).unwrap();
    assert_eq!(found, vec![("van-1".to_owned(), entries[1].clone())]);
    assert!(st.van_audit_by_action("org-south", "auth.break_glass", 10).unwrap().is_empty());
    assert!(st.van_audit_hashes("org-south", "van-1").unwrap().is_empty());
}
