//! The van's background sync against a hub over real QUIC through the link emulator:
//! edits flow while connected, a dead link is noticed, edits made offline wait, and the
//! van reconnects and catches up by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use case_model::edit::VitalsInput;
use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use edge_agent::sync::{StoreReplica, SyncSettings, spawn};
use sync_quic::driver::{Liveness, server_config};
use sync_quic::enrol::Enroller;
use sync_quic::hub::HubServer;
use sync_quic::identity::{DeviceId, FleetCa, new_device_key};
use time::{Duration as TimeDuration, OffsetDateTime};

fn store(dir: &std::path::Path, van: &str) -> Store {
    let key = dir.join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.join("data"), key, VanId::parse(van).unwrap());
    config.create_if_missing = true;
    Store::open(config).unwrap()
}

fn ctx() -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(ms) }
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_van_syncs_by_itself_notices_a_dead_link_and_catches_up() {
    let now = OffsetDateTime::now_utc();
    let ca = Arc::new(FleetCa::generate("fleet", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap());
    let (hub_cert, hub_key) =
        ca.issue_hub("hub.medvan.test", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap();
    let fast = Liveness { keep_alive: Duration::from_millis(300), idle_timeout: Duration::from_secs(2) };
    let hub_ep = quinn::Endpoint::server(
        server_config(ca.certificate(), hub_cert, hub_key, fast).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let relay =
        netsim::UdpRelay::start(hub_ep.local_addr().unwrap(), Default::default(), Default::default(), 3).await.unwrap();

    // The hub's side: a store stands in for the hub's storage until it lands.
    let hub_dir = tempfile::tempdir().unwrap();
    let hub_store = store(hub_dir.path(), "hub");
    let hub = HubServer::new(
        hub_ep,
        Arc::new(Enroller::new(
            ca.clone(),
            Arc::new(sync_quic::registry::MemoryRegistry::default()),
            TimeDuration::days(90),
        )),
    );
    let hs = hub_store.clone();
    let serving = hub.clone();
    tokio::spawn(
        async move { serving.serve(move |d: &DeviceId| StoreReplica::new(hs.clone(), &d.van).unwrap()).await },
    );

    // The van, enrolled.
    let (key, csr) = new_device_key().unwrap();
    let cert = ca
        .sign_device_request(
            &csr,
            &DeviceId::new("org-north", "van-12").unwrap(),
            now - TimeDuration::days(1),
            now + TimeDuration::days(90),
        )
        .unwrap();
    let van_dir = tempfile::tempdir().unwrap();
    let van_store = store(van_dir.path(), "van-12");
    let settings = SyncSettings {
        address: relay.local_addr().to_string(),
        server_name: "hub.medvan.test".into(),
        identity: edge_agent::identity::Identity { ca: ca.certificate().clone(), cert, key },
        identity_dir: None,
        renew_below: None,
        liveness: fast,
        roster_key: None,
    };
    let sync = spawn(van_store.clone(), settings).unwrap();

    let org = OrgId::parse("org-north").unwrap();
    let case: CaseId = van_store.create_case(&ctx(), &org).unwrap().id;
    let took = eventually("the new case reaches the hub", Duration::from_secs(10), || {
        hub_store.heads(case).unwrap() == van_store.heads(case).unwrap()
    })
    .await;
    eventually("the van reports up to date", Duration::from_secs(5), || sync.status().state == "up_to_date").await;
    println!("new case at the hub after {took:?}");

    // While connected, an edit goes across at once, without reconnecting.
    let connections = sync.status().connections;
    assert_eq!(connections, 1, "one connection so far");
    van_store
        .edit_case(&ctx(), case, &[Edit::AddVitals(VitalsInput { heart_rate: Some(101), ..Default::default() })])
        .unwrap();
    let took = eventually("a live edit reaches the hub", Duration::from_secs(5), || {
        hub_store.heads(case).unwrap() == van_store.heads(case).unwrap()
    })
    .await;
    println!("live edit at the hub after {took:?}");
    assert_eq!(sync.status().connections, connections, "the edit went over the open connection");

    // The link dies silently (a tunnel): the van notices by itself.
    relay.set_config(netsim::LinkConfig { loss: 1.0, ..Default::default() });
    let took = eventually("the van notices the dead link", Duration::from_secs(10), || {
        matches!(sync.status().state, "offline" | "connecting")
    })
    .await;
    println!("dead link noticed after {took:?}");
    let error = sync.status().last_error.unwrap_or_default();
    assert!(error.contains("timed out"), "the idle timeout noticed the dead link: {error}");
    van_store.edit_case(&ctx(), case, &[Edit::AddChat { text: "in the tunnel".into() }]).unwrap();
    assert_eq!(sync.status().pending_cases, 1);

    // Out of the tunnel: the van reconnects and catches up, nobody pressing anything.
    relay.set_config(Default::default());
    let took = eventually("the offline edit reaches the hub", Duration::from_secs(20), || {
        hub_store.heads(case).unwrap() == van_store.heads(case).unwrap()
    })
    .await;
    println!("offline edit at the hub {took:?} after the link came back");
    eventually("the van reports up to date again", Duration::from_secs(5), || sync.status().state == "up_to_date")
        .await;
    assert_eq!(sync.status().pending_cases, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_enrols_from_its_config_and_then_syncs_on_its_own() {
    let now = OffsetDateTime::now_utc();
    let ca = Arc::new(FleetCa::generate("fleet", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap());
    let (hub_cert, hub_key) =
        ca.issue_hub("localhost", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap();
    let hub_ep = quinn::Endpoint::server(
        server_config(ca.certificate(), hub_cert, hub_key, Liveness::default()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let port = hub_ep.local_addr().unwrap().port();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub_store = store(hub_dir.path(), "hub");
    let enroller = Arc::new(Enroller::new(
        ca.clone(),
        Arc::new(sync_quic::registry::MemoryRegistry::default()),
        TimeDuration::days(90),
    ));
    let hub = HubServer::new(hub_ep, enroller.clone());
    let hs = hub_store.clone();
    tokio::spawn(async move { hub.serve(move |d: &DeviceId| StoreReplica::new(hs.clone(), &d.van).unwrap()).await });

    let van_dir = tempfile::tempdir().unwrap();
    let key = van_dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let text = format!(
        "[agent]\nvan_id = \"van-4\"\norg_id = \"org-north\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[hub]\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nidentity_dir = \"{}\"\n",
        van_dir.path().join("data").display(),
        key.display(),
        van_dir.path().join("identity").display()
    );
    let config = edge_agent::config::Config::parse(&text).unwrap();
    edge_agent::init_store(&config).unwrap();
    let van_store = edge_agent::open_store(&config).unwrap();
    // Not enrolled yet: sync stays off and says so.
    assert_eq!(edge_agent::start_sync(&config, &van_store).await.unwrap().status().state, "not_configured");

    let token =
        enroller.issue(DeviceId::new("org-north", "van-4").unwrap(), now.unix_timestamp() + 600).unwrap().encode();
    edge_agent::enrol(&config, &token).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(van_dir.path().join("identity/device.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the device key is the agent's alone");

    let sync = edge_agent::start_sync(&config, &van_store).await.unwrap();
    let case = van_store.create_case(&ctx(), &OrgId::parse("org-north").unwrap()).unwrap().id;
    eventually("the case reaches the hub", Duration::from_secs(10), || {
        hub_store.heads(case).unwrap() == van_store.heads(case).unwrap()
    })
    .await;
    eventually("up to date", Duration::from_secs(5), || sync.status().state == "up_to_date").await;
}
