//! The hub under attack, over real QUIC with mutual TLS: each attempt is refused with a
//! logged reason, and a legitimate van keeps syncing between every one of them.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use cloud_sync::fleet::Hub;
use cloud_sync::storage::crypto::Sealer;
use cloud_sync::storage::sqlite::SqliteStorage;
use edge_agent::sync::StoreReplica;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sync_proto::{Role, Session};
use sync_quic::driver::{Liveness, client_config, run};
use sync_quic::enrol::{EnrolError, enrol};
use sync_quic::hub::{CLOSE_NOT_A_VAN, CLOSE_REVOKED};
use sync_quic::identity::{DeviceId, FleetCa, new_device_key};
use time::{Duration as TimeDuration, OffsetDateTime};

/// Everything the hub logs, for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Waits until the log holds `needle` (the hub logs from its own tasks).
    async fn wait_for(&self, needle: &str) {
        for _ in 0..250 {
            if self.text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the hub never logged {needle:?}; it logged:\n{}", self.text());
    }
}

fn ctx(user: &str) -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(ms) }
}

fn store(dir: &tempfile::TempDir, van: &str) -> Store {
    let key = dir.path().join(format!("{van}.key"));
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join(van), key, VanId::parse(van).unwrap());
    config.create_if_missing = true;
    Store::open(config).unwrap()
}

fn endpoint(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client_config(ca, cert, key, Liveness::default()).unwrap());
    ep
}

async fn sync_once(ep: &quinn::Endpoint, addr: SocketAddr, store: &Store) -> Result<(), String> {
    let conn = ep.connect(addr, "hub.test").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut replica = StoreReplica::new(store.clone(), "hub").unwrap();
    let mut session = Session::new(Role::Van);
    session.start(&replica);
    run(&mut session, &mut replica, &mut send, &mut recv, Duration::from_millis(300))
        .await
        .map_err(|e| e.to_string())?;
    conn.close(0u32.into(), b"done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_with_a_logged_reason_while_other_vans_keep_syncing() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();

    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::from_master(&[5; 32]);
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("hub"), &sealer).unwrap());
    let now = OffsetDateTime::now_utc();
    let ca = FleetCa::generate("fleet", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap();
    let hub = Hub::assemble(storage.clone(), sealer, ca, 90, "hub.test").unwrap();
    let admin = UserId::parse("admin").unwrap();
    let north = OrgId::parse("org-north").unwrap();
    hub.cases.create_org(&admin, &north, "North").unwrap();
    hub.cases.create_org(&admin, &OrgId::parse("org-south").unwrap(), "South").unwrap();
    let server = hub.bind_sync("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    {
        let (hub, server) = (hub.clone(), server.clone());
        tokio::spawn(async move { hub.serve_sync(server).await });
    }

    // Van 1 enrols with a token and syncs a case; it must keep working throughout.
    let token =
        hub.enroller.issue(DeviceId::new("org-north", "van-1").unwrap(), now.unix_timestamp() + 600).unwrap().encode();
    let v1 = enrol(addr, "hub.test", &token).await.unwrap();
    let v1_store = store(&dir, "van-1");
    let case: CaseId = v1_store.create_case(&ctx("ana"), &north).unwrap().id;
    let v1_ep = endpoint(&v1.ca, v1.cert.clone(), v1.key.clone_key());
    let mut heart_rate = 60;
    let mut still_syncs = async || {
        heart_rate += 1;
        let vitals = case_model::edit::VitalsInput { heart_rate: Some(heart_rate), ..Default::default() };
        v1_store.edit_case(&ctx("ana"), case, &[Edit::AddVitals(vitals)]).unwrap();
        sync_once(&v1_ep, addr, &v1_store).await.unwrap();
        let view = hub.cases.read_case(&admin, &north, case).unwrap();
        assert!(view.vitals.iter().any(|v| v["heart_rate"] == heart_rate), "van 1's edit did not arrive");
    };
    still_syncs().await;

    // A reused enrolment token.
    let err = enrol(addr, "hub.test", &token).await.unwrap_err();
    assert!(matches!(&err, EnrolError::Refused(r) if r.contains("already used")), "{err}");
    logs.wait_for("refused an enrolment").await;
    still_syncs().await;

    // An unenrolled client: TLS without a certificate gets in only to enrol.
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(v1.ca.clone()).unwrap();
            roots
        })
        .with_no_client_auth();
    tls.alpn_protocols = vec![sync_quic::driver::ALPN.to_vec()];
    let mut anon = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    anon.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = anon.connect(addr, "hub.test").unwrap().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, CLOSE_NOT_A_VAN.into()),
        other => panic!("closed for another reason: {other}"),
    }
    logs.wait_for("the peer presented no certificate").await;
    still_syncs().await;

    // A certificate from another CA, and an expired one from ours.
    let other = FleetCa::generate("impostor", now - TimeDuration::days(1), now + TimeDuration::days(9)).unwrap();
    let device = DeviceId::new("org-north", "van-1").unwrap();
    let (key, csr) = new_device_key().unwrap();
    let forged =
        other.sign_device_request(&csr, &device, now - TimeDuration::days(1), now + TimeDuration::days(9)).unwrap();
    assert!(sync_once(&endpoint(&v1.ca, forged, key), addr, &v1_store).await.is_err());
    let own_ca = FleetCa::from_der(&hub.ca.to_der().0, &hub.ca.to_der().1).unwrap();
    let (key, csr) = new_device_key().unwrap();
    let expired =
        own_ca.sign_device_request(&csr, &device, now - TimeDuration::days(100), now - TimeDuration::days(10)).unwrap();
    assert!(sync_once(&endpoint(&v1.ca, expired, key), addr, &v1_store).await.is_err());
    // The impostor's refusal may be logged first: wait for the expired one's own reason.
    logs.wait_for("xpired").await;
    assert!(logs.text().contains("refused a connection"), "{}", logs.text());
    still_syncs().await;

    // An enrolled van sending garbage, then a message over the size limit.
    let token2 =
        hub.enroller.issue(DeviceId::new("org-north", "van-2").unwrap(), now.unix_timestamp() + 600).unwrap().encode();
    let v2 = enrol(addr, "hub.test", &token2).await.unwrap();
    let v2_ep = endpoint(&v2.ca, v2.cert.clone(), v2.key.clone_key());
    let v2_conn = v2_ep.connect(addr, "hub.test").unwrap().await.unwrap();
    let (mut send, _recv) = v2_conn.open_bi().await.unwrap();
    let mut garbage = vec![0u8; 2000];
    rand::fill(&mut garbage[..]);
    garbage[..4].copy_from_slice(&100u32.to_be_bytes());
    send.write_all(&garbage).await.unwrap();
    logs.wait_for("does not decode").await;
    still_syncs().await;
    let (mut send, _recv) = v2_conn.open_bi().await.unwrap();
    send.write_all(&0xffff_fff0u32.to_be_bytes()).await.unwrap();
    logs.wait_for("the limit is").await;
    still_syncs().await;

    // A van of another organisation writing to van 1's case.
    let token3 =
        hub.enroller.issue(DeviceId::new("org-south", "van-9").unwrap(), now.unix_timestamp() + 600).unwrap().encode();
    let v3 = enrol(addr, "hub.test", &token3).await.unwrap();
    let v3_store = store(&dir, "van-9");
    let changes = common::all_changes(&v1_store, case);
    v3_store.import_case(&ctx("mallory"), case, &changes).unwrap();
    v3_store.edit_case(&ctx("mallory"), case, &[Edit::AddChat { text: "mine now".into() }]).unwrap();
    sync_once(&endpoint(&v3.ca, v3.cert, v3.key), addr, &v3_store).await.unwrap();
    logs.wait_for("the case belongs to another organisation").await;
    assert!(hub.cases.read_case(&admin, &north, case).unwrap().chat.is_empty(), "the foreign edit was stored");
    still_syncs().await;

    // Van 2 is revoked while connected: cut off within a second, refused afterwards.
    let start = std::time::Instant::now();
    hub.storage.revoke_device(&DeviceId::new("org-north", "van-2").unwrap()).unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(1), v2_conn.closed())
        .await
        .expect("a revoked van was still connected a second later");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, CLOSE_REVOKED.into()),
        other => panic!("closed for another reason: {other}"),
    }
    println!("revoked van disconnected after {:?}", start.elapsed());
    let v2_store = store(&dir, "van-2");
    assert!(sync_once(&v2_ep, addr, &v2_store).await.is_err());
    logs.wait_for("refused a revoked van").await;
    still_syncs().await;
}
