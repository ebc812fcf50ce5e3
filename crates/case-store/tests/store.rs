//! The store seen from outside: durability through power cuts, damage and full disks,
//! encryption at rest, and the audit trail.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use case_model::edit::{AttachmentInput, VitalsInput};
use case_model::{CaseId, Edit, EditContext, FieldName, FieldValue, OrgId, Timestamp, UserId, VanId};
use case_store::{Durability, OpenError, Store, StoreConfig, StoreError, generate_key_file};

static CLOCK: AtomicU64 = AtomicU64::new(1_795_000_000_000);

fn ctx(user: &str) -> EditContext {
    EditContext {
        user: UserId::parse(user).unwrap(),
        now: Timestamp::from_unix_millis(CLOCK.fetch_add(1, Ordering::Relaxed) as i64),
    }
}

fn org() -> OrgId {
    OrgId::parse("org-north").unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    key: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    Env { data: dir.path().join("data"), key, _dir: dir }
}

fn config(e: &Env) -> StoreConfig {
    let mut c = StoreConfig::new(&e.data, &e.key, VanId::parse("van-12").unwrap());
    c.create_if_missing = true;
    c
}

fn chat(n: usize) -> Edit {
    Edit::AddChat { text: format!("edit-{n}") }
}

/// Everything under `dir`, as (path, bytes).
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_file_under_the_data_directory_contains_the_patients_name() {
    let e = env();
    let store = Store::open(config(&e)).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    let blob = store
        .put_blob(
            &ctx("ana"),
            case.id,
            &mut &b"DICOM preamble ... PatientName=Quixote^Zebedee ... Zebedee Quixote"[..],
            "application/dicom",
        )
        .unwrap();
    store
        .edit_case(
            &ctx("ana"),
            case.id,
            &[
                Edit::SetField { field: FieldName::FirstName, value: FieldValue::Text("Zebedee".into()) },
                Edit::SetField { field: FieldName::LastName, value: FieldValue::Text("Quixote".into()) },
                Edit::EditNarrative(case_model::edit::TextSplice {
                    pos: None,
                    delete: 0,
                    insert: "Zebedee Quixote fell from a ladder.".into(),
                }),
                Edit::AddAttachment(AttachmentInput {
                    sha256: blob.sha256.clone(),
                    kind: case_model::codes::AttachmentKind::XrayStudy,
                    media_type: "application/dicom".into(),
                    size: blob.size,
                    label: Some("Zebedee Quixote forearm".into()),
                }),
            ],
        )
        .unwrap();
    store.compact(case.id).unwrap();
    let (read, media) = store.read_blob(&ctx("dr-osei"), case.id, &blob.sha256).unwrap();
    assert_eq!(media, "application/dicom");
    assert!(contains(&read, b"Zebedee Quixote"), "the attachment reads back decrypted");
    // While the store is open (WAL and shared memory present) and after it closed.
    for phase in ["open", "closed"] {
        let files = all_files(&e.data);
        assert!(files.len() >= 3, "{files:?}");
        for (path, bytes) in &files {
            for needle in [&b"Zebedee"[..], b"Quixote", b"ZEBEDEE", b"zebedee"] {
                assert!(
                    !contains(bytes, needle),
                    "{phase}: {} contains {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
        store.close();
    }
}

#[test]
fn every_call_is_audited_and_a_changed_entry_is_named() {
    let e = env();
    let store = Store::open(config(&e)).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    store
        .edit_case(&ctx("ana"), case.id, &[Edit::AddVitals(VitalsInput { heart_rate: Some(88), ..Default::default() })])
        .unwrap();
    store.read_case(&ctx("dr-osei"), case.id).unwrap();
    store.list_cases(&ctx("dr-osei"), &Default::default()).unwrap();
    store.conflicts(&ctx("dr-osei"), case.id).unwrap();
    let refused = store.edit_case(
        &ctx("ana"),
        case.id,
        &[Edit::AddVitals(VitalsInput { heart_rate: Some(900), ..Default::default() })],
    );
    assert!(matches!(refused, Err(StoreError::Invalid(_))));
    let missing = CaseId::new_v7(Timestamp::from_unix_millis(1), [0; 10]);
    assert!(matches!(store.read_case(&ctx("mallory"), missing), Err(StoreError::NotFound(_))));

    let entries = store.audit_of_case(case.id).unwrap();
    let got: Vec<(String, String, String)> =
        entries.iter().map(|e| (e.actor.clone(), e.action.clone(), format!("{:?}", e.outcome))).collect();
    assert_eq!(
        got,
        vec![
            ("ana".into(), "case.create".into(), "Allowed".into()),
            ("ana".into(), "case.edit".into(), "Allowed".into()),
            ("dr-osei".into(), "case.read".into(), "Allowed".into()),
            ("dr-osei".into(), "case.list".into(), "Allowed".into()),
            ("dr-osei".into(), "case.read".into(), "Allowed".into()),
            ("ana".into(), "case.edit".into(), "Refused".into()),
        ]
    );
    assert_eq!(
        entries[5].detail, "edit 0: out_of_range vitals.heart_rate",
        "the refused value itself stays out of the log"
    );
    let missing_entries = store.audit_of_case(missing).unwrap();
    assert_eq!(missing_entries.len(), 1);
    assert_eq!(missing_entries[0].actor, "mallory");
    let head = store.verify_audit().unwrap();
    assert_eq!(head.size, 7, "six entries for the case and one for the missing case");
    store.close();

    // Someone with the key changes entry 3 behind the store's back.
    let conn = Store::raw_connection(&config(&e)).unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_update; UPDATE audit_log SET actor = 'nobody' WHERE seq = 3;").unwrap();
    drop(conn);
    let store = Store::open(config(&e)).unwrap();
    let err = store.verify_audit().unwrap_err();
    assert_eq!(err.to_string(), "audit entry 3 was altered: its contents do not match its hash");
}

#[test]
fn the_index_lists_cases_without_loading_documents() {
    let e = env();
    let store = Store::open(config(&e)).unwrap();
    let a = store.create_case(&ctx("ana"), &org()).unwrap();
    let b = store.create_case(&ctx("ana"), &org()).unwrap();
    store
        .edit_case(
            &ctx("ana"),
            a.id,
            &[
                Edit::SetField { field: FieldName::LastName, value: FieldValue::Text("Okafor".into()) },
                Edit::SetStatus {
                    status: case_model::codes::CaseStatus::OnScene,
                    at: None,
                    source: Default::default(),
                },
            ],
        )
        .unwrap();
    let on_scene = store
        .list_cases(&ctx("ana"), &case_store::CaseFilter { status: Some("on_scene".into()), ..Default::default() })
        .unwrap();
    assert_eq!(on_scene.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a.id]);
    let by_name = store
        .list_cases(&ctx("ana"), &case_store::CaseFilter { patient: Some("okaf".into()), ..Default::default() })
        .unwrap();
    assert_eq!(by_name.len(), 1);
    assert_eq!(by_name[0].patient_name.as_deref(), Some("Okafor"));
    let all = store.list_cases(&ctx("ana"), &Default::default()).unwrap();
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b.id, a.id], "newest first");
}

#[test]
fn compaction_keeps_every_change_and_reloads_identically() {
    let e = env();
    let mut cfg = config(&e);
    cfg.compact_after = 20;
    let store = Store::open(cfg.clone()).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    for i in 0..75 {
        store.edit_case(&ctx("ana"), case.id, &[chat(i)]).unwrap();
    }
    store.compact(case.id).unwrap();
    let before = store.read_case(&ctx("ana"), case.id).unwrap();
    store.close();
    drop(store);
    let store = Store::open(cfg).unwrap();
    let after = store.read_case(&ctx("ana"), case.id).unwrap();
    assert_eq!(after.chat.len(), 75);
    assert_eq!(serde_json::to_value(&before).unwrap(), serde_json::to_value(&after).unwrap());
}

// ---- Damage, wrong keys, full disks ----

fn store_with_one_case(e: &Env) -> CaseId {
    let store = Store::open(config(e)).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    for i in 0..50 {
        store.edit_case(&ctx("ana"), case.id, &[chat(i)]).unwrap();
    }
    store.close();
    case.id
}

#[test]
fn a_wrong_key_is_named_and_the_database_is_left_untouched() {
    let e = env();
    store_with_one_case(&e);
    let before = fs::read(e.data.join("cases.db")).unwrap();
    let other = e.key.with_file_name("other.key");
    generate_key_file(&other).unwrap();
    let mut cfg = config(&e);
    cfg.key_file = other;
    let err = Store::open(cfg).unwrap_err();
    assert!(matches!(err, OpenError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("different key"), "{err}");
    assert_eq!(fs::read(e.data.join("cases.db")).unwrap(), before);
}

#[test]
fn a_damaged_or_truncated_database_is_refused_and_never_overwritten() {
    let e = env();
    store_with_one_case(&e);
    let db = e.data.join("cases.db");
    let good = fs::read(&db).unwrap();
    assert!(good.len() > 8192, "{}", good.len());

    // A flipped byte in the middle of a page.
    let mut damaged = good.clone();
    let mid = good.len() / 2;
    damaged[mid] ^= 0x55;
    fs::write(&db, &damaged).unwrap();
    let err = Store::open(config(&e)).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(fs::read(&db).unwrap(), damaged, "the damaged file was not modified");

    // Truncated to half, then to nothing.
    fs::write(&db, &good[..good.len() / 2]).unwrap();
    let err = Store::open(config(&e)).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    fs::write(&db, b"").unwrap();
    let err = Store::open(config(&e)).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(fs::read(&db).unwrap(), b"");

    // Deleted outright.
    fs::remove_file(&db).unwrap();
    let err = Store::open(config(&e)).unwrap_err();
    assert!(matches!(err, OpenError::MissingDatabase { .. }), "{err}");
    assert!(!db.exists(), "no empty database was created in its place");

    // Restored, it opens and holds everything.
    fs::write(&db, &good).unwrap();
    let store = Store::open(config(&e)).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn a_full_disk_refuses_the_write_clearly_and_loses_nothing() {
    let e = env();
    let control = test_support::powercut::register("medvan-fulldisk");
    let mut cfg = config(&e);
    cfg.vfs = Some("medvan-fulldisk".into());
    let store = Store::open(cfg.clone()).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    for i in 0..10 {
        store.edit_case(&ctx("ana"), case.id, &[chat(i)]).unwrap();
    }
    control.set_disk_quota(0);
    let err = store.edit_case(&ctx("ana"), case.id, &[Edit::AddChat { text: "lost".into() }]).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull), "{err}");
    assert!(err.to_string().contains("free space"), "{err}");
    // Reads of what is stored still work while the disk is full... except that a read is
    // audited, and the audit entry cannot be written: the read is refused, not served
    // unaudited.
    assert!(matches!(store.read_case(&ctx("ana"), case.id), Err(StoreError::DiskFull)));
    control.clear_disk_quota();
    store.edit_case(&ctx("ana"), case.id, &[chat(10)]).unwrap();
    let view = store.read_case(&ctx("ana"), case.id).unwrap();
    let texts: Vec<&str> = view.chat.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts, (0..=10).map(|i| format!("edit-{i}")).collect::<Vec<_>>());
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

// ---- Power cuts ----

/// Runs a workload until the power is cut at a random write, then reopens and checks.
/// Returns how many acknowledged writes were lost.
fn power_cut_round(seed: u64, durability: Durability) -> Result<usize, String> {
    let e = env();
    // One VFS per durability: tests run in parallel and must not cut each other's power.
    let vfs = format!("medvan-powercut-{durability:?}");
    let vfs = vfs.as_str();
    let control = test_support::powercut::register(vfs);
    control.restore();
    control.set_seed(seed);
    let mut cfg = config(&e);
    cfg.vfs = Some(vfs.into());
    cfg.durability = durability;
    cfg.compact_after = 8;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    if durability != Durability::Full {
        // Create the schema safely, so that what the unsafe setting loses is acknowledged
        // edits rather than the whole store.
        let mut safe = cfg.clone();
        safe.durability = Durability::Full;
        Store::open(safe).unwrap().close();
    }
    // Sometimes the power goes while the store is being created.
    let cut_during_open = durability == Durability::Full && next(10) == 0;
    if cut_during_open {
        control.cut_after_writes(1 + next(12));
    }
    let acked: Arc<Mutex<Vec<(CaseId, String)>>> = Arc::new(Mutex::new(Vec::new()));
    if let Ok(store) = Store::open(cfg.clone()) {
        if !cut_during_open {
            control.cut_after_writes(1 + next(400));
        }
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let store = store.clone();
                let acked = acked.clone();
                std::thread::spawn(move || {
                    let Ok(case) = store.create_case(&ctx("ana"), &org()) else {
                        return;
                    };
                    acked.lock().unwrap().push((case.id, String::new()));
                    for i in 0..200 {
                        let text = format!("t{t}-{i}");
                        match store.edit_case(&ctx("ana"), case.id, &[Edit::AddChat { text: text.clone() }]) {
                            Ok(_) => acked.lock().unwrap().push((case.id, text)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        control.cut_now();
        store.close();
    }
    // Every connection of the dead store must be gone before the power comes back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while control.open_files() > 0 {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: connections outlived the store");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    control.restore();

    // Power is back: open with the real file system, as the van would.
    let store = match Store::open(config(&e)) {
        Ok(s) => s,
        Err(err) => return Err(format!("seed {seed}: store does not reopen after a power cut: {err}")),
    };
    assert_eq!(store.integrity_check().unwrap(), "ok", "seed {seed}");
    store.verify_audit().unwrap_or_else(|err| panic!("seed {seed}: {err}"));
    let acked = acked.lock().unwrap();
    let mut lost = 0;
    let mut ids: Vec<CaseId> = acked.iter().map(|(id, _)| *id).collect();
    ids.dedup();
    for id in store.case_ids().unwrap() {
        store.load_from_disk(id).unwrap_or_else(|err| panic!("seed {seed}: case {id} does not load: {err}"));
    }
    for id in ids {
        let Ok(doc) = store.load_from_disk(id) else {
            lost += acked.iter().filter(|(c, _)| *c == id).count();
            continue;
        };
        let view = doc.view();
        let texts: Vec<&str> = view.chat.iter().filter_map(|c| c["text"].as_str()).collect();
        lost += acked.iter().filter(|(c, t)| *c == id && !t.is_empty() && !texts.contains(&t.as_str())).count();
    }
    store.close();
    Ok(lost)
}

#[test]
fn acknowledged_writes_survive_200_power_cuts() {
    for seed in 1..=200 {
        let lost = power_cut_round(seed, Durability::Full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lost, 0, "seed {seed}: {lost} acknowledged writes lost with synchronous=FULL");
    }
}

#[test]
fn the_power_cut_harness_catches_unsafe_durability_settings() {
    for durability in [Durability::UnsafeNormal, Durability::UnsafeOff] {
        let mut lost = 0;
        let mut unopenable = 0;
        for seed in 1000..1040 {
            match power_cut_round(seed, durability) {
                Ok(n) => lost += n,
                Err(_) => unopenable += 1,
            }
        }
        println!("{durability:?}: {lost} acknowledged writes lost, {unopenable} stores unreadable, over 40 cuts");
        assert!(lost + unopenable > 0, "{durability:?} lost nothing: the harness cannot tell safe from unsafe");
    }
}

#[test]
fn a_disk_filling_up_under_concurrent_writers_reports_every_outcome_truthfully() {
    let e = env();
    let control = test_support::powercut::register("medvan-fulldisk-concurrent");
    let mut cfg = config(&e);
    cfg.vfs = Some("medvan-fulldisk-concurrent".into());
    let store = Store::open(cfg).unwrap();
    let cases: Vec<CaseId> = (0..6).map(|_| store.create_case(&ctx("ana"), &org()).unwrap().id).collect();
    // Room for a few dozen more commits, then the disk is full mid-group.
    control.set_disk_quota(200 * 1024);
    let outcomes: Vec<(CaseId, String, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let store = store.clone();
                s.spawn(move || {
                    (0..60)
                        .map(|i| {
                            let text = format!("t{t}-{i}");
                            let r = store.edit_case(&ctx("ana"), id, &[Edit::AddChat { text: text.clone() }]);
                            if let Err(err) = &r {
                                assert!(matches!(err, StoreError::DiskFull), "unexpected error: {err}");
                            }
                            (id, text, r.is_ok())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let refused = outcomes.iter().filter(|o| !o.2).count();
    assert!(refused > 0, "the quota never tripped; the test proves nothing");
    control.clear_disk_quota();
    store.close();
    drop(store);
    let store = Store::open(config(&e)).unwrap();
    for id in &cases {
        let texts: Vec<String> = store
            .load_from_disk(*id)
            .unwrap()
            .view()
            .chat
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_owned())
            .collect();
        for (case, text, ok) in outcomes.iter().filter(|o| o.0 == *id) {
            assert_eq!(
                texts.contains(text),
                *ok,
                "case {case}: {text} was reported {} but is {}",
                if *ok { "saved" } else { "not saved" },
                if texts.contains(text) { "stored" } else { "missing" }
            );
        }
    }
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[test]
fn a_missing_store_is_an_error_unless_creation_is_asked_for_and_one_process_holds_it() {
    let e = env();
    let mut cfg = config(&e);
    cfg.create_if_missing = false;
    let err = Store::open(cfg.clone()).unwrap_err();
    assert!(matches!(err, OpenError::NoStore { .. }), "{err}");
    assert!(err.to_string().contains("partition is mounted"), "{err}");
    assert!(!e.data.exists(), "nothing was created");
    let store = Store::open(config(&e)).unwrap();
    let err = Store::open(cfg.clone()).unwrap_err();
    assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    // Read-only verification works beside the open store.
    assert_eq!(Store::verify_audit_at(&cfg).unwrap().unwrap().size, 0);
    store.close();
    drop(store);
    Store::open(cfg).unwrap();
}

#[test]
fn attachments_must_name_an_uploaded_blob_and_take_its_stored_size_and_type() {
    let e = env();
    let store = Store::open(config(&e)).unwrap();
    let case = store.create_case(&ctx("ana"), &org()).unwrap();
    let fake = Edit::AddAttachment(AttachmentInput {
        sha256: "ab".repeat(32),
        kind: case_model::codes::AttachmentKind::Photo,
        media_type: "text/html".into(),
        size: 1,
        label: None,
    });
    let err = store.edit_case(&ctx("ana"), case.id, &[fake]).unwrap_err();
    assert!(err.to_string().contains("upload the file first"), "{err}");
    let blob = store.put_blob(&ctx("ana"), case.id, &mut &b"png bytes"[..], "image/png").unwrap();
    let lying = Edit::AddAttachment(AttachmentInput {
        sha256: blob.sha256.clone(),
        kind: case_model::codes::AttachmentKind::Photo,
        media_type: "text/html".into(),
        size: 999,
        label: None,
    });
    let view = store.edit_case_view(&ctx("ana"), case.id, &[lying]).unwrap();
    assert_eq!(view.attachments[0]["media_type"], "image/png");
    assert_eq!(view.attachments[0]["size"], 9);
}

#[test]
fn a_damaged_change_row_fails_the_load_by_name_instead_of_hiding_later_edits() {
    let e = env();
    let id = store_with_one_case(&e);
    let conn = Store::raw_connection(&config(&e)).unwrap();
    conn.execute("UPDATE changes SET bytes = x'00112233' WHERE id = (SELECT MIN(id) + 10 FROM changes)", []).unwrap();
    drop(conn);
    let store = Store::open(config(&e)).unwrap();
    let err = store.load_from_disk(id).unwrap_err();
    assert!(err.to_string().contains("is damaged") && err.to_string().contains("sync the case from the hub"), "{err}");
}
