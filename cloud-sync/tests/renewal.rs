//! Certificates over time, against the real hub: a van renews its certificate before it
//! expires without anyone stepping in, and a van whose certificate lapsed in a garage says
//! so, keeps recording, and syncs again once re-enrolled with a new token, with no restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use case_model::{EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use cloud_sync::fleet::Hub;
use cloud_sync::storage::crypto::Sealer;
use cloud_sync::storage::sqlite::SqliteStorage;
use edge_agent::identity::{self, Identity};
use edge_agent::sync::{SyncSettings, spawn};
use sync_quic::identity::{DeviceId, FleetCa, fingerprint, new_device_key};
use time::{Duration as TimeDuration, OffsetDateTime};

fn ctx() -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(ms) }
}

fn store(dir: &std::path::Path, van: &str) -> Store {
    let key = dir.join(format!("{van}.key"));
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.join(van), key, VanId::parse(van).unwrap());
    config.create_if_missing = true;
    Store::open(config).unwrap()
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_before_expiry_and_a_lapsed_van_re_enrols_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::from_master(&[9; 32]);
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("hub"), &sealer).unwrap());
    let now = OffsetDateTime::now_utc();
    let ca = FleetCa::generate("fleet", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap();
    // Device certificates last a day here.
    let hub = Hub::assemble(storage.clone(), sealer, ca, 1, "hub.test").unwrap();
    let admin = UserId::parse("admin").unwrap();
    let org = OrgId::parse("org-north").unwrap();
    hub.cases.create_org(&admin, &org, "North").unwrap();
    let server = hub.bind_sync("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    {
        let (hub, server) = (hub.clone(), server.clone());
        tokio::spawn(async move { hub.serve_sync(server).await });
    }

    // Van 1 enrols; its renewal threshold (two days) is already passed, so it renews at once.
    let token = hub.enroller.issue(DeviceId::new("org-north", "van-1").unwrap(), now.unix_timestamp() + 600).unwrap();
    let first = sync_quic::enrol::enrol(addr, "hub.test", &token.encode()).await.unwrap();
    let id_dir = dir.path().join("van-1-identity");
    let first = Identity { ca: first.ca, cert: first.cert, key: first.key };
    identity::store(&id_dir, &first).unwrap();
    let van1 = store(dir.path(), "van-1");
    let sync1 = spawn(
        van1.clone(),
        SyncSettings {
            address: addr.to_string(),
            server_name: "hub.test".into(),
            identity: first.clone(),
            identity_dir: Some(id_dir.clone()),
            renew_below: Some(Duration::from_secs(2 * 86_400)),
            liveness: Default::default(),
            roster_key: None,
        },
    )
    .unwrap();
    eventually("van 1 renews its certificate", Duration::from_secs(10), || {
        identity::load(&id_dir).unwrap().unwrap().cert != first.cert
    })
    .await;
    let renewed = identity::load(&id_dir).unwrap().unwrap();
    assert_ne!(renewed.key.secret_der(), first.key.secret_der(), "a renewal brings a new key");
    assert_eq!(sync_quic::identity::device_of(&renewed.cert).unwrap(), DeviceId::new("org-north", "van-1").unwrap());
    let case = van1.create_case(&ctx(), &org).unwrap().id;
    eventually("van 1's case reaches the hub", Duration::from_secs(10), || {
        hub.cases.read_case(&admin, &org, case).is_ok()
    })
    .await;
    assert_ne!(sync1.status().state, "certificate_expired");
    // Both certificates are on record: revoking the van would revoke both.
    assert!(!hub.storage.is_revoked(&fingerprint(&renewed.cert)).unwrap());

    // Van 2 stood in a garage while its certificate lapsed.
    let (key, csr) = new_device_key().unwrap();
    let own_ca = FleetCa::from_der(&hub.ca.to_der().0, &hub.ca.to_der().1).unwrap();
    let device = DeviceId::new("org-north", "van-2").unwrap();
    let lapsed =
        own_ca.sign_device_request(&csr, &device, now - TimeDuration::days(100), now - TimeDuration::days(3)).unwrap();
    let id_dir2 = dir.path().join("van-2-identity");
    let old = Identity { ca: hub.ca.certificate().clone(), cert: lapsed, key };
    identity::store(&id_dir2, &old).unwrap();
    let van2 = store(dir.path(), "van-2");
    let sync2 = spawn(
        van2.clone(),
        SyncSettings {
            address: addr.to_string(),
            server_name: "hub.test".into(),
            identity: old,
            identity_dir: Some(id_dir2.clone()),
            renew_below: None,
            liveness: Default::default(),
            roster_key: None,
        },
    )
    .unwrap();
    eventually("van 2 says its certificate expired", Duration::from_secs(5), || {
        sync2.status().state == "certificate_expired"
    })
    .await;
    let error = sync2.status().last_error.unwrap_or_default();
    assert!(error.contains("edge-agent enrol"), "the van says what to do: {error}");
    // The crew keeps recording meanwhile.
    let case2 = van2.create_case(&ctx(), &org).unwrap().id;
    // The fleet manager issues a new token; the installer enrols (as `edge-agent enrol`
    // does, into the identity directory) while the agent keeps running.
    let token = hub.enroller.issue(device, now.unix_timestamp() + 600).unwrap();
    let again = sync_quic::enrol::enrol(addr, "hub.test", &token.encode()).await.unwrap();
    identity::store(&id_dir2, &Identity { ca: again.ca, cert: again.cert, key: again.key }).unwrap();
    eventually("van 2's case reaches the hub after re-enrolment", Duration::from_secs(15), || {
        hub.cases.read_case(&admin, &org, case2).is_ok()
    })
    .await;
    eventually("van 2 is up to date", Duration::from_secs(5), || sync2.status().state == "up_to_date").await;
}
