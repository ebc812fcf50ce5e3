//! The sync protocol over two real (encrypted, durable) stores: a van and a stand-in for
//! the hub's store, until the hub's own storage lands. Messages pass through real frames.

use case_model::edit::{AllergyInput, VitalsInput};
use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use edge_agent::sync::StoreReplica;
use sync_proto::frame::{Decoder, encode};
use sync_proto::{Event, Role, Session};

struct Side {
    _dir: tempfile::TempDir,
    config: StoreConfig,
    store: Store,
}

fn side(van: &str) -> Side {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join("data"), key, VanId::parse(van).unwrap());
    config.create_if_missing = true;
    let store = Store::open(config.clone()).unwrap();
    Side { _dir: dir, config, store }
}

fn ctx(user: &str) -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(ms) }
}

/// One connection between the van and the hub, run until both are quiet.
/// Returns the messages exchanged and the van's events.
fn sync(van: &Store, hub: &Store) -> (usize, Vec<Event>) {
    let mut vr = StoreReplica::new(van.clone(), "hub").unwrap();
    let mut hr = StoreReplica::new(hub.clone(), "van-12").unwrap();
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    let (mut vd, mut hd) = (Decoder::default(), Decoder::default());
    vs.start(&vr);
    let mut messages = 0;
    loop {
        let mut moved = false;
        while let Some(m) = vs.poll_transmit(&mut vr) {
            hd.push(&encode(&m));
            messages += 1;
            moved = true;
        }
        while let Some(m) = hd.next_message().unwrap() {
            hs.handle(m, &mut hr).unwrap();
        }
        while let Some(m) = hs.poll_transmit(&mut hr) {
            vd.push(&encode(&m));
            messages += 1;
            moved = true;
        }
        while let Some(m) = vd.next_message().unwrap() {
            vs.handle(m, &mut vr).unwrap();
        }
        if !moved {
            break;
        }
    }
    vr.save_states().unwrap();
    hr.save_states().unwrap();
    (messages, std::iter::from_fn(|| vs.poll_event()).collect())
}

#[test]
fn cases_edits_and_story_4_conflicts_flow_between_two_stores_and_reconnects_resume() {
    let van = side("van-12");
    let hub = side("hub");
    let org = OrgId::parse("org-north").unwrap();
    let ids: Vec<CaseId> = (0..3).map(|_| van.store.create_case(&ctx("ana"), &org).unwrap().id).collect();
    for id in &ids {
        van.store
            .edit_case(&ctx("ana"), *id, &[Edit::AddVitals(VitalsInput { heart_rate: Some(96), ..Default::default() })])
            .unwrap();
    }
    sync(&van.store, &hub.store);
    for id in &ids {
        assert_eq!(hub.store.heads(*id).unwrap(), van.store.heads(*id).unwrap());
    }

    // Story 4: while the van is offline the paramedic records penicillin; at the hub a
    // doctor records no known allergies. A doctor's note travels back too.
    let case = ids[1];
    van.store
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
    hub.store
        .edit_case(
            &ctx("dr-osei"),
            case,
            &[
                Edit::RecordNoKnownAllergies,
                Edit::AddNote { text: "distal radius fracture, splint".into(), consult_id: None },
            ],
        )
        .unwrap();
    let (_, events) = sync(&van.store, &hub.store);
    assert!(events.contains(&Event::DocChanged(sync_proto::DocId(*case.as_bytes()))), "{events:?}");
    for (name, store) in [("van", &van.store), ("hub", &hub.store)] {
        let view = store.read_case(&ctx("ana"), case).unwrap();
        assert_eq!(view.notes.len(), 1, "{name}");
        assert_eq!(view.allergies.len(), 1, "{name}: the allergen is never dropped");
        assert_eq!(view.conflicts.len(), 1, "{name}: {:?}", view.conflicts);
        assert_eq!(view.conflicts[0].path, "patient.allergy_status");
        let by: Vec<&str> = view.conflicts[0].values.iter().map(|v| v.by.as_str()).collect();
        assert!(by.contains(&"ana") && by.contains(&"dr-osei"), "{name}: {by:?}");
    }

    // Both restart (ignition off and on); nothing changed, so a reconnect is one round trip.
    van.store.close();
    hub.store.close();
    let (van_cfg, hub_cfg) = (van.config.clone(), hub.config.clone());
    drop((van.store, hub.store));
    let (van_store, hub_store) = (Store::open(van_cfg).unwrap(), Store::open(hub_cfg).unwrap());
    let (messages, events) = sync(&van_store, &hub_store);
    assert_eq!(messages, 2, "an idle reconnect is a hello and a welcome");
    assert_eq!(events, vec![Event::Ready { in_sync: true }]);
    // A new edit after the restart goes across using the persisted sync states.
    van_store.edit_case(&ctx("ana"), ids[0], &[Edit::AddChat { text: "leaving the valley".into() }]).unwrap();
    sync(&van_store, &hub_store);
    assert_eq!(hub_store.heads(ids[0]).unwrap(), van_store.heads(ids[0]).unwrap());
    // The hub's audit log names the peer that wrote each change it took in.
    let trail = hub_store.audit_of_case(ids[0]).unwrap();
    assert!(trail.iter().any(|e| e.actor == "sync:van-12" && e.action == "case.import"), "{trail:?}");
    assert!(trail.iter().any(|e| e.actor == "sync:van-12" && e.action == "case.merge"), "{trail:?}");
    hub_store.verify_audit().unwrap();
}
