//! Each van's audit log reaches the hub with the sync, its tree heads signed by the van's
//! device key; the hub keeps a copy and catches a log cut or rewritten after it was sent.

mod common;

use std::sync::Arc;

use case_model::{Edit, EditContext, Timestamp, UserId};
use cloud_sync::identity::roles::Role;
use edge_agent::sync::{AuditSigner, StoreReplica};
use sync_proto::{Event, Replica};
use sync_quic::identity::DeviceId;
use time::{Duration, OffsetDateTime};

fn ctx_of(user: &str) -> EditContext {
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(1_800_000_000_000) }
}

fn store_config(dir: &std::path::Path) -> case_store::StoreConfig {
    case_store::StoreConfig::new(dir.join("d"), dir.join("k"), case_model::VanId::parse("van-1").unwrap())
}

fn tampered(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::AuditTampered { detail } => Some(detail.clone()),
        _ => None,
    })
}

#[test]
fn the_hub_keeps_each_vans_signed_audit_log_and_catches_one_cut_and_rewritten_after_it_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, _) = common::two_org_hub(dir.path());
    let vdir = tempfile::tempdir().unwrap();
    let (store, view) = common::van_case(&hub, vdir.path());
    let case = view.id;
    // The van's device key and its certificate from the fleet CA.
    let (key, csr) = sync_quic::identity::new_device_key().unwrap();
    let device = DeviceId::new("org-north", "van-1").unwrap();
    let now = OffsetDateTime::now_utc();
    let cert = hub.ca.sign_device_request(&csr, &device, now - Duration::hours(1), now + Duration::days(1)).unwrap();
    let signer = Arc::new(AuditSigner::new(key.secret_der(), "org-north/van-1").unwrap());
    let public = sync_quic::identity::public_key(&cert).unwrap();
    let sync = |store: &case_store::Store| -> (Vec<Event>, usize) {
        let mut van = StoreReplica::new(store.clone(), "hub").unwrap().with_audit_signer(signer.clone());
        let mut at_hub = hub.cases.replica_for(&device);
        at_hub.set_peer_key(&public);
        common::pump(&mut van, &mut at_hub)
    };
    let note = |store: &case_store::Store, n: usize, user: &str| {
        for i in 0..n {
            let ctx = ctx_of(user);
            store.edit_case(&ctx, case, &[Edit::AddNote { text: format!("note {i}"), consult_id: None }]).unwrap();
            store.read_case(&ctx, case).unwrap();
        }
    };
    note(&store, 5, "ana");

    // The whole log arrives, under a head the van signed.
    let (events, _) = sync(&store);
    let size = store.audit_size().unwrap();
    assert!(events.contains(&Event::AuditDelivered(size)), "{events:?}");
    let held = hub.storage.van_audit_hashes("org-north", "van-1").unwrap();
    assert_eq!(held.len() as u64, size);
    let head = hub.storage.van_audit_head("org-north", "van-1").unwrap().unwrap();
    assert_eq!(head.size, size);
    let tree = audit::merkle::TreeHead { size: head.size, root: head.root };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public)
        .verify(&tree.signing_bytes("org-north/van-1"), &head.signature)
        .expect("the stored head carries the van's signature, checkable later by an auditor");
    let copy = hub.storage.van_audit_entries("org-north", "van-1", 0, 10_000).unwrap();
    assert_eq!(copy.iter().map(|e| e.hash.clone()).collect::<Vec<_>>(), {
        let mine = store.audit_after(0, 10_000).unwrap();
        mine.iter().map(|e| e.hash.clone()).collect::<Vec<_>>()
    });

    // Idle: nothing new, nothing sent (the reconnect stays one round trip).
    let (events, messages) = sync(&store);
    assert!(!events.iter().any(|e| matches!(e, Event::AuditDelivered(_))), "{events:?}");
    assert_eq!(messages, 2, "hello and welcome only");

    // More work: only the new entries go.
    note(&store, 3, "ana");
    let (events, _) = sync(&store);
    let size = store.audit_size().unwrap();
    assert!(events.contains(&Event::AuditDelivered(size)), "{events:?}");
    assert_eq!(hub.storage.van_audit_hashes("org-north", "van-1").unwrap().len() as u64, size);

    // Someone with the store key cuts the log's last four entries, which the hub holds
    // under a signed head, and lets the van write on.
    store.close();
    drop(store);
    let conn = case_store::Store::raw_connection(&store_config(vdir.path())).unwrap();
    conn.execute_batch(&format!("DROP TRIGGER audit_no_delete; DELETE FROM audit_log WHERE seq > {};", size - 4))
        .unwrap();
    drop(conn);
    let store = case_store::Store::open(store_config(vdir.path())).unwrap();
    // Cut, and nothing written yet: the head alone shows the log shrank.
    let (events, _) = sync(&store);
    let why = tampered(&events).expect("the hub refuses a log shorter than the head it holds");
    assert!(why.contains("signed tree head"), "{why}");
    // Written on past where it was, as someone else: the rewritten entries do not extend
    // the copy (the entry after the copy's end no longer links to it).
    note(&store, 4, "mallory");
    let (events, _) = sync(&store);
    let why = tampered(&events).expect("the hub refuses a rewritten tail");
    assert!(why.contains(&format!("entry {}", size + 1)), "{why}");
    // The hub's own log has the alarm, and its copy is untouched.
    let alarms: Vec<audit::Entry> = hub
        .storage
        .audit_entries(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "van_audit.tampered")
        .collect();
    assert_eq!(alarms.len(), 2, "{alarms:#?}");
    assert_eq!(alarms[0].actor, "van:org-north/van-1");
    assert_eq!(hub.storage.van_audit_hashes("org-north", "van-1").unwrap().len() as u64, size);
    // A head signed by another key is refused too.
    let other = {
        let (k, _) = sync_quic::identity::new_device_key().unwrap();
        Arc::new(AuditSigner::new(k.secret_der(), "org-north/van-1").unwrap())
    };
    let vdir2 = tempfile::tempdir().unwrap();
    let (second, _) = common::van_case(&hub, vdir2.path());
    let mut van = StoreReplica::new(second.clone(), "hub").unwrap().with_audit_signer(other);
    let device2 = DeviceId::new("org-north", "van-1").unwrap();
    let mut at_hub = hub.cases.replica_for(&device2);
    at_hub.set_peer_key(&public);
    let (events, _) = common::pump(&mut van, &mut at_hub);
    assert!(tampered(&events).is_some_and(|w| w.contains("signature")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_login_on_a_van_shows_up_for_review_at_the_hub() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let (config, hub, doctors) = common::two_org_hub(dir.path());
    let vdir = tempfile::tempdir().unwrap();
    let (store, _) = common::van_case(&hub, vdir.path());
    let (key, csr) = sync_quic::identity::new_device_key().unwrap();
    let device = DeviceId::new("org-north", "van-1").unwrap();
    let now = OffsetDateTime::now_utc();
    let cert = hub.ca.sign_device_request(&csr, &device, now - Duration::hours(1), now + Duration::days(1)).unwrap();
    let signer = Arc::new(AuditSigner::new(key.secret_der(), "org-north/van-1").unwrap());
    // In the van, with no network: a break-glass login.
    let crew = edge_agent::crew::Crew::new(store.clone(), None, Default::default());
    crew.break_glass("Kim Osei", "cardiac arrest, PIN pad broken", common::now_s()).unwrap();
    // The next sync carries it to the hub with the rest of the van's log.
    let mut van = StoreReplica::new(store.clone(), "hub").unwrap().with_audit_signer(signer);
    let mut at_hub = hub.cases.replica_for(&device);
    at_hub.set_peer_key(&sync_quic::identity::public_key(&cert).unwrap());
    common::pump(&mut van, &mut at_hub);

    let router = cloud_sync::app(cloud_sync::HubState::open(&config).unwrap().with_hub(&hub));
    let (admin, _) = common::create_and_login(&hub.identity, "org-north", "adm.kim", &[Role::Admin]);
    let (south_admin, _) = common::create_and_login(&hub.identity, "org-south", "adm.lou", &[Role::Admin]);
    let get = |token: String| {
        let router = router.clone();
        async move {
            let req = Request::builder()
                .uri("/api/v1/admin/break-glass")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let body: serde_json::Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap_or_default();
            (status, body)
        }
    };
    let (status, list) = get(admin.access_token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["van"], "van-1");
    assert!(list[0]["detail"].as_str().unwrap().contains("PIN pad broken"));
    assert!(list[0]["user"].as_str().unwrap().starts_with("break-glass:"));
    // Another organisation's admin sees none of it; a doctor may not look.
    assert_eq!(get(south_admin.access_token).await.1.as_array().unwrap().len(), 0);
    assert_eq!(get(doctors.north).await.0, StatusCode::FORBIDDEN);
}
