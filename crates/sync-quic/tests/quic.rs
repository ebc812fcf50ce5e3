//! The sync protocol over real QUIC with mutual TLS, on loopback.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjType, ROOT};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sync_proto::{DocId, Priority, RefusalReason, Replica, ReplicaRefusal, Role, Session};
use sync_quic::driver::{client_config, run, server_config};
use sync_quic::identity::{DeviceId, FleetCa, device_of, new_device_key};
use time::{Duration as TimeDuration, OffsetDateTime};

#[derive(Debug, Default)]
struct Mem {
    docs: BTreeMap<DocId, Automerge>,
    states: HashMap<DocId, Vec<u8>>,
    blobs: BTreeMap<[u8; 32], Vec<u8>>,
    partial: HashMap<[u8; 32], Vec<u8>>,
}

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

impl Replica for Mem {
    fn scope(&self) -> Vec<DocId> {
        self.docs.keys().copied().collect()
    }
    fn heads(&self, doc: DocId) -> Vec<ChangeHash> {
        self.docs.get(&doc).map(|d| d.get_heads()).unwrap_or_default()
    }
    fn priority(&self, _: DocId) -> Priority {
        Priority::Case
    }
    fn sync_state(&mut self, doc: DocId) -> sync::State {
        self.states.get(&doc).and_then(|b| sync::State::decode(b).ok()).unwrap_or_default()
    }
    fn save_sync_state(&mut self, doc: DocId, state: &sync::State) {
        self.states.insert(doc, state.encode());
    }
    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        self.docs.entry(doc).or_default().generate_sync_message(state)
    }
    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        self.docs
            .entry(doc)
            .or_default()
            .receive_sync_message(state, msg)
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }
    fn accepts_blob(&self, _sha256: &[u8; 32], size: u64) -> bool {
        size <= 64 * 1024 * 1024
    }
    fn blobs(&self) -> Vec<([u8; 32], u64, Priority)> {
        self.blobs.iter().map(|(h, d)| (*h, d.len() as u64, Priority::FullImage)).collect()
    }
    fn blob_state(&self, h: &[u8; 32]) -> sync_proto::BlobState {
        if self.blobs.contains_key(h) {
            sync_proto::BlobState::Complete
        } else {
            self.partial
                .get(h)
                .map_or(sync_proto::BlobState::Missing, |p| sync_proto::BlobState::Partial(p.len() as u64))
        }
    }
    fn read_blob(&mut self, h: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, ReplicaRefusal> {
        Ok(self.blobs[h][offset as usize..(offset + len) as usize].to_vec())
    }
    fn write_blob(&mut self, h: &[u8; 32], _size: u64, _offset: u64, data: &[u8]) -> Result<(), ReplicaRefusal> {
        self.partial.entry(*h).or_default().extend_from_slice(data);
        Ok(())
    }
    fn finish_blob(&mut self, h: &[u8; 32], _size: u64) -> Result<(), ReplicaRefusal> {
        let data = self.partial.remove(h).unwrap_or_default();
        if sha(&data) != *h {
            return Err(ReplicaRefusal { reason: RefusalReason::Malformed, detail: "hash mismatch".into() });
        }
        self.blobs.insert(*h, data);
        Ok(())
    }
}

/// Dead links noticed within two seconds, so the fault tests run quickly.
fn fast() -> sync_quic::driver::Liveness {
    sync_quic::driver::Liveness { keep_alive: Duration::from_millis(300), idle_timeout: Duration::from_secs(2) }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

struct Fleet {
    ca: std::sync::Arc<FleetCa>,
    hub_cert: CertificateDer<'static>,
    hub_key: PrivateKeyDer<'static>,
}

fn fleet() -> Fleet {
    let ca = FleetCa::generate("Medvan test fleet", now() - TimeDuration::days(1), now() + TimeDuration::days(3650))
        .unwrap();
    let (hub_cert, hub_key) =
        ca.issue_hub("hub.medvan.test", now() - TimeDuration::days(1), now() + TimeDuration::days(365)).unwrap();
    Fleet { ca: std::sync::Arc::new(ca), hub_cert, hub_key }
}

fn van_identity(
    ca: &FleetCa,
    van: &str,
    not_after: OffsetDateTime,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let (key, csr) = new_device_key().unwrap();
    let cert = ca
        .sign_device_request(&csr, &DeviceId::new("org-north", van).unwrap(), now() - TimeDuration::days(30), not_after)
        .unwrap();
    (cert, key)
}

fn hub_endpoint(f: &Fleet) -> quinn::Endpoint {
    let config = server_config(f.ca.certificate(), f.hub_cert.clone(), f.hub_key.clone_key(), fast()).unwrap();
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn van_endpoint(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client_config(ca, cert, key, fast()).unwrap());
    ep
}

fn doc_with_notes(n: usize) -> Automerge {
    let mut d = Automerge::new();
    let mut tx = d.transaction();
    let list = tx.put_object(ROOT, "notes", ObjType::List).unwrap();
    for i in 0..n {
        tx.insert(&list, i, format!("note {i}")).unwrap();
    }
    tx.commit();
    d
}

/// The hub's side of one connection: who connected, and the session run to its end.
async fn serve_one(ep: quinn::Endpoint, mut hub: Mem) -> Result<(DeviceId, Mem), String> {
    let incoming = ep.accept().await.ok_or("endpoint closed")?;
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let certs = conn.peer_identity().ok_or("no peer identity")?;
    let certs = certs.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "unexpected identity type")?;
    let device = device_of(&certs[0]).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let mut session = Session::new(Role::Hub);
    run(&mut session, &mut hub, &mut send, &mut recv, Duration::from_millis(300)).await.map_err(|e| e.to_string())?;
    Ok((device, hub))
}

async fn connect_and_sync(ep: &quinn::Endpoint, addr: SocketAddr, van: &mut Mem) -> Result<(), String> {
    let conn = ep.connect(addr, "hub.medvan.test").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut session = Session::new(Role::Van);
    session.start(van);
    run(&mut session, van, &mut send, &mut recv, Duration::from_millis(300)).await.map_err(|e| e.to_string())?;
    conn.close(0u32.into(), b"done");
    Ok(())
}

#[tokio::test]
async fn a_van_syncs_with_the_hub_over_quic_with_mutual_tls() {
    let f = fleet();
    let hub_ep = hub_endpoint(&f);
    let addr = hub_ep.local_addr().unwrap();
    let server = tokio::spawn(serve_one(hub_ep, Mem::default()));
    let (cert, key) = van_identity(&f.ca, "van-12", now() + TimeDuration::days(90));
    let van_ep = van_endpoint(f.ca.certificate(), cert, key);
    let mut van = Mem::default();
    for n in 0..5u8 {
        van.docs.insert(DocId([n; 16]), doc_with_notes(20));
    }
    connect_and_sync(&van_ep, addr, &mut van).await.unwrap();
    let (device, hub) = server.await.unwrap().unwrap();
    assert_eq!(device, DeviceId::new("org-north", "van-12").unwrap(), "the hub knows the van by its certificate");
    for (id, d) in &van.docs {
        assert_eq!(hub.heads(*id), d.get_heads());
    }
}

#[tokio::test]
async fn vans_without_a_valid_fleet_certificate_are_refused() {
    let f = fleet();
    let other =
        FleetCa::generate("Someone else", now() - TimeDuration::days(1), now() + TimeDuration::days(10)).unwrap();
    let cases: Vec<(&str, CertificateDer<'static>, PrivateKeyDer<'static>)> = vec![
        {
            let (c, k) = van_identity(&other, "van-9", now() + TimeDuration::days(30));
            ("a certificate from another CA", c, k)
        },
        {
            let (c, k) = van_identity(&f.ca, "van-9", now() - TimeDuration::days(1));
            ("an expired certificate", c, k)
        },
    ];
    for (what, cert, key) in cases {
        let hub_ep = hub_endpoint(&f);
        let addr = hub_ep.local_addr().unwrap();
        let server = tokio::spawn(serve_one(hub_ep, Mem::default()));
        let van_ep = van_endpoint(f.ca.certificate(), cert, key);
        let mut van = Mem::default();
        van.docs.insert(DocId([1; 16]), doc_with_notes(3));
        let client = connect_and_sync(&van_ep, addr, &mut van).await;
        let served = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(client.is_err(), "{what}: the van's sync succeeded");
        let err = served.unwrap_err();
        assert!(err.to_lowercase().contains("certificate"), "{what}: {err}");
    }

    // A van that pins the fleet CA refuses a hub with a certificate from elsewhere.
    let (bad_hub_cert, bad_hub_key) =
        other.issue_hub("hub.medvan.test", now() - TimeDuration::days(1), now() + TimeDuration::days(10)).unwrap();
    let impostor = Fleet { ca: std::sync::Arc::new(other), hub_cert: bad_hub_cert, hub_key: bad_hub_key };
    let hub_ep = hub_endpoint(&impostor);
    let addr = hub_ep.local_addr().unwrap();
    let _server = tokio::spawn(serve_one(hub_ep, Mem::default()));
    let (cert, key) = van_identity(&f.ca, "van-12", now() + TimeDuration::days(30));
    let van_ep = van_endpoint(f.ca.certificate(), cert, key);
    let err = connect_and_sync(&van_ep, addr, &mut Mem::default()).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn a_revoked_van_is_cut_off_within_a_second_and_refused_after_while_others_keep_syncing() {
    use sync_quic::enrol::Enroller;
    use sync_quic::hub::{CLOSE_REVOKED, HubServer};
    let f = fleet();
    use sync_quic::registry::{MemoryRegistry, Registry};
    let registry = std::sync::Arc::new(MemoryRegistry::default());
    let enroller = std::sync::Arc::new(Enroller::new(f.ca.clone(), registry.clone(), TimeDuration::days(90)));
    let hub = HubServer::new(hub_endpoint(&f), enroller);
    let addr = hub_endpoint_addr(&hub);
    let serving = hub.clone();
    tokio::spawn(async move { serving.serve(|_| Mem::default()).await });

    let (cert9, key9) = van_identity(&f.ca, "van-9", now() + TimeDuration::days(30));
    let van9_id = DeviceId::new("org-north", "van-9").unwrap();
    registry.record_certificate(&sync_quic::identity::fingerprint(&cert9), &van9_id, 0).unwrap();
    let van9 = van_endpoint(f.ca.certificate(), cert9, key9);
    let conn9 = van9.connect(addr, "hub.medvan.test").unwrap().await.unwrap();
    // Let the hub register the connection, then revoke van 9 (it was stolen).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = std::time::Instant::now();
    assert_eq!(hub.revoke(&van9_id).unwrap(), 1);
    let reason = tokio::time::timeout(Duration::from_secs(1), conn9.closed())
        .await
        .expect("still connected a second after revocation");
    println!("revoked van disconnected after {:?}", start.elapsed());
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code, CLOSE_REVOKED.into()),
        other => panic!("closed for another reason: {other}"),
    }
    // Its next attempt is refused.
    let mut van = Mem::default();
    van.docs.insert(DocId([9; 16]), doc_with_notes(2));
    assert!(connect_and_sync(&van9, addr, &mut van).await.is_err());

    // Van 12 is unaffected.
    let (cert12, key12) = van_identity(&f.ca, "van-12", now() + TimeDuration::days(30));
    let van12 = van_endpoint(f.ca.certificate(), cert12, key12);
    let mut v12 = Mem::default();
    v12.docs.insert(DocId([12; 16]), doc_with_notes(2));
    connect_and_sync(&van12, addr, &mut v12).await.unwrap();
}

fn hub_endpoint_addr(hub: &sync_quic::hub::HubServer) -> SocketAddr {
    hub.local_addr()
}

#[tokio::test]
async fn a_new_van_enrols_with_a_one_time_token_and_then_syncs() {
    use sync_quic::enrol::{EnrolError, Enroller, enrol};
    use sync_quic::hub::{CLOSE_NOT_A_VAN, HubServer};
    let f = fleet();
    let registry = std::sync::Arc::new(sync_quic::registry::MemoryRegistry::default());
    let enroller = std::sync::Arc::new(Enroller::new(f.ca.clone(), registry, TimeDuration::days(90)));
    let hub = HubServer::new(hub_endpoint(&f), enroller.clone());
    let addr = hub.local_addr();
    let serving = hub.clone();
    tokio::spawn(async move { serving.serve(|_| Mem::default()).await });

    let device = DeviceId::new("org-north", "van-5").unwrap();
    let token = enroller.issue(device.clone(), now().unix_timestamp() + 3600).unwrap().encode();
    let enrolled = enrol(addr, "hub.medvan.test", &token).await.unwrap();
    assert_eq!(device_of(&enrolled.cert).unwrap(), device);
    assert_eq!(&enrolled.ca, f.ca.certificate());
    // With its new certificate the van syncs.
    let van_ep = van_endpoint(&enrolled.ca, enrolled.cert, enrolled.key);
    let mut van = Mem::default();
    van.docs.insert(DocId([5; 16]), doc_with_notes(4));
    connect_and_sync(&van_ep, addr, &mut van).await.unwrap();

    // The token works once.
    let err = enrol(addr, "hub.medvan.test", &token).await.unwrap_err();
    assert!(matches!(&err, EnrolError::Refused(r) if r.contains("already used")), "{err}");
    // An expired token is refused.
    let old =
        enroller.issue(DeviceId::new("org-north", "van-6").unwrap(), now().unix_timestamp() - 1).unwrap().encode();
    let err = enrol(addr, "hub.medvan.test", &old).await.unwrap_err();
    assert!(matches!(&err, EnrolError::Refused(r) if r.contains("expired")), "{err}");
    // A token naming another CA makes the van refuse this hub.
    let other =
        FleetCa::generate("Someone else", now() - TimeDuration::days(1), now() + TimeDuration::days(10)).unwrap();
    let foreign = token.replace(&f.ca.fingerprint(), &other.fingerprint());
    let err = enrol(addr, "hub.medvan.test", &foreign).await.unwrap_err();
    assert!(matches!(err, EnrolError::Connection(_)), "{err}");
    // A client with no certificate cannot sync.
    let mut tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(f.ca.certificate().clone()).unwrap();
                roots
            })
            .with_no_client_auth();
    tls.alpn_protocols = vec![sync_quic::driver::ALPN.to_vec()];
    let mut anon = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    anon.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = anon.connect(addr, "hub.medvan.test").unwrap().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code, CLOSE_NOT_A_VAN.into()),
        other => panic!("closed for another reason: {other}"),
    }
}

/// Runs one hub session per connection, keeping the hub's replica across connections.
async fn hub_loop(ep: quinn::Endpoint, hub: std::sync::Arc<tokio::sync::Mutex<Mem>>, quiet: Duration) {
    while let Some(incoming) = ep.accept().await {
        let Ok(conn) = incoming.await else { continue };
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let mut session = Session::new(Role::Hub);
                let mut guard = hub.lock().await;
                let _ = run(&mut session, &mut *guard, &mut send, &mut recv, quiet).await;
            }
        });
    }
}

async fn van_session(ep: &quinn::Endpoint, addr: SocketAddr, van: &mut Mem, quiet: Duration) -> Result<(), String> {
    let conn = ep.connect(addr, "hub.medvan.test").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut session = Session::new(Role::Van);
    session.start(van);
    let result = run(&mut session, van, &mut send, &mut recv, quiet).await.map_err(|e| e.to_string());
    conn.close(0u32.into(), b"done");
    result
}

#[tokio::test]
async fn sync_converges_through_30_percent_loss_and_300_ms_delay() {
    let f = fleet();
    let hub_ep = quinn::Endpoint::server(
        server_config(f.ca.certificate(), f.hub_cert.clone(), f.hub_key.clone_key(), Default::default()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let bad = netsim::LinkConfig { loss: 0.3, delay: Duration::from_millis(300), ..Default::default() };
    let relay = netsim::UdpRelay::start(hub_ep.local_addr().unwrap(), bad.clone(), bad, 7).await.unwrap();
    let hub = std::sync::Arc::new(tokio::sync::Mutex::new(Mem::default()));
    let quiet = Duration::from_secs(4);
    tokio::spawn(hub_loop(hub_ep, hub.clone(), quiet));
    let (cert, key) = van_identity(&f.ca, "van-3", now() + TimeDuration::days(30));
    let mut van_ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    van_ep.set_default_client_config(client_config(f.ca.certificate(), cert, key, Default::default()).unwrap());
    let mut van = Mem::default();
    for n in 0..5u8 {
        van.docs.insert(DocId([n; 16]), doc_with_notes(30));
    }
    let start = std::time::Instant::now();
    van_session(&van_ep, relay.local_addr(), &mut van, quiet).await.unwrap();
    let (up, down) = relay.stats();
    println!("30% loss, 300 ms each way: synced in {:?}; up {up:?}; down {down:?}", start.elapsed() - quiet);
    assert!(up.dropped > 0 && down.dropped > 0, "the link dropped nothing: the test proves little");
    let hub = hub.lock().await;
    for (id, d) in &van.docs {
        assert_eq!(hub.heads(*id), d.get_heads());
    }
}

#[tokio::test]
async fn a_20_mib_blob_cut_halfway_resumes_with_under_1_1_times_its_size_on_the_wire() {
    let f = fleet();
    let hub_ep = hub_endpoint(&f);
    let relay = netsim::UdpRelay::start(hub_ep.local_addr().unwrap(), Default::default(), Default::default(), 11)
        .await
        .unwrap();
    let hub = std::sync::Arc::new(tokio::sync::Mutex::new(Mem::default()));
    let quiet = Duration::from_millis(500);
    tokio::spawn(hub_loop(hub_ep, hub.clone(), quiet));
    let (cert, key) = van_identity(&f.ca, "van-1", now() + TimeDuration::days(30));
    let van_ep = van_endpoint(f.ca.certificate(), cert, key);
    let size = 20 * 1024 * 1024;
    let data: Vec<u8> = (0..size).map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let h = sha(&data);
    let mut van = Mem::default();
    van.docs.insert(DocId([1; 16]), doc_with_notes(3));
    van.blobs.insert(h, data);

    // Cut the link once about half the blob has crossed.
    let cutter = {
        let relay = relay.clone();
        tokio::spawn(async move {
            while relay.bytes_carried() < (size / 2) as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            relay.set_config(netsim::LinkConfig { loss: 1.0, ..Default::default() });
        })
    };
    let first = van_session(&van_ep, relay.local_addr(), &mut van, quiet).await;
    cutter.await.unwrap();
    assert!(first.is_err(), "the first session should have died with the link");
    let held = match hub.lock().await.blob_state(&h) {
        sync_proto::BlobState::Partial(n) => n,
        other => panic!("after the cut the hub holds {other:?}"),
    };
    relay.set_config(Default::default());
    van_session(&van_ep, relay.local_addr(), &mut van, quiet).await.unwrap();
    assert_eq!(hub.lock().await.blob_state(&h), sync_proto::BlobState::Complete);
    let wire = relay.bytes_carried();
    println!("20 MiB blob, cut after {held} bytes held: {wire} bytes on the wire = {:.3} x", wire as f64 / size as f64);
    assert!((wire as f64) < 1.1 * size as f64, "{wire} bytes on the wire for {size}");
}

#[tokio::test]
async fn a_van_renews_its_certificate_before_expiry_and_a_revoked_one_cannot() {
    use sync_quic::enrol::{EnrolError, Enroller, enrol, renew};
    use sync_quic::hub::HubServer;
    let f = fleet();
    let registry = std::sync::Arc::new(sync_quic::registry::MemoryRegistry::default());
    let enroller = std::sync::Arc::new(Enroller::new(f.ca.clone(), registry, TimeDuration::days(90)));
    let hub = HubServer::new(hub_endpoint(&f), enroller.clone());
    let addr = hub.local_addr();
    let serving = hub.clone();
    tokio::spawn(async move { serving.serve(|_| Mem::default()).await });

    let device = DeviceId::new("org-north", "van-7").unwrap();
    let token = enroller.issue(device.clone(), now().unix_timestamp() + 3600).unwrap().encode();
    let first = enrol(addr, "hub.medvan.test", &token).await.unwrap();
    let renewed = renew(addr, "hub.medvan.test", &first.ca, first.cert.clone(), first.key.clone_key()).await.unwrap();
    assert_eq!(device_of(&renewed.cert).unwrap(), device);
    assert_ne!(renewed.cert, first.cert, "a renewal issues a new certificate");
    assert_ne!(renewed.key.secret_der(), first.key.secret_der(), "for a new key");
    // The renewed identity syncs.
    let van_ep = van_endpoint(&renewed.ca, renewed.cert.clone(), renewed.key.clone_key());
    let mut van = Mem::default();
    van.docs.insert(DocId([7; 16]), doc_with_notes(1));
    connect_and_sync(&van_ep, addr, &mut van).await.unwrap();

    // Once the van is revoked, none of its certificates renews.
    assert_eq!(hub.revoke(&device).unwrap(), 2);
    let err = renew(addr, "hub.medvan.test", &renewed.ca, renewed.cert, renewed.key).await.unwrap_err();
    assert!(matches!(&err, EnrolError::Refused(r) if r.contains("revoked")), "{err}");
    // A fresh token enrols it again (the van was recovered): the new certificate works.
    let token = enroller.issue(device.clone(), now().unix_timestamp() + 3600).unwrap().encode();
    let again = enrol(addr, "hub.medvan.test", &token).await.unwrap();
    let van_ep = van_endpoint(&again.ca, again.cert, again.key);
    connect_and_sync(&van_ep, addr, &mut van).await.unwrap();
}

#[test]
fn a_token_redeemed_again_by_the_same_key_is_a_retry_and_by_another_key_is_refused() {
    use sync_quic::enrol::{EnrolError, Enroller};
    let f = fleet();
    let registry = std::sync::Arc::new(sync_quic::registry::MemoryRegistry::default());
    let enroller = Enroller::new(f.ca.clone(), registry, TimeDuration::days(90));
    let device = DeviceId::new("org-north", "van-8").unwrap();
    let token = enroller.issue(device.clone(), now().unix_timestamp() + 60).unwrap().encode();
    let (_key, csr) = new_device_key().unwrap();
    let a = enroller.redeem(&token, &csr, now()).unwrap();
    // The answer was lost; the van asks again with the same request.
    let b = enroller.redeem(&token, &csr, now()).unwrap();
    assert_eq!(device_of(&a).unwrap(), device);
    assert_eq!(device_of(&b).unwrap(), device);
    // Someone else who copied the token gets nothing, even before it expires.
    let (_other, other_csr) = new_device_key().unwrap();
    assert_eq!(enroller.redeem(&token, &other_csr, now()).unwrap_err(), EnrolError::AlreadyUsed);
    // A used token stays refused to other keys after it expires too.
    let later = now() + TimeDuration::hours(2);
    assert_eq!(enroller.redeem(&token, &other_csr, later).unwrap_err(), EnrolError::AlreadyUsed);
    // Retries end when the token expires: a key held by a thief cannot mint certificates later.
    assert_eq!(enroller.redeem(&token, &csr, later).unwrap_err(), EnrolError::Expired);
}

/// One session through [`sync_quic::driver::connect`] (0-RTT when the endpoint holds a
/// ticket): whether it went early, and how it ended.
async fn resume_and_sync(ep: &quinn::Endpoint, addr: SocketAddr, van: &mut Mem) -> (bool, Result<(), String>) {
    let mut connected = match sync_quic::driver::connect(ep, addr, "hub.medvan.test").await {
        Ok(c) => c,
        Err(e) => return (false, Err(e.to_string())),
    };
    let early = connected.early.is_some();
    let result = loop {
        let (mut send, mut recv) = match connected.conn.open_bi().await {
            Ok(s) => s,
            Err(e) => break Err(e.to_string()),
        };
        let mut session = Session::new(Role::Van);
        session.start(van);
        let result = run(&mut session, van, &mut send, &mut recv, Duration::from_millis(300)).await;
        if !connected.retry(&result) {
            break result.map_err(|e| e.to_string());
        }
    };
    connected.conn.close(0u32.into(), b"done");
    (early, result)
}

#[tokio::test]
async fn a_reconnect_resumes_with_0rtt_and_is_still_refused_when_expired_revoked_or_the_hub_forgot_it() {
    use sync_quic::enrol::Enroller;
    use sync_quic::hub::{CLOSE_EXPIRED, CLOSE_REVOKED, HubServer};
    use sync_quic::registry::MemoryRegistry;
    let f = fleet();
    let hub_doc = DocId([0xab; 16]);
    let registry = std::sync::Arc::new(MemoryRegistry::default());
    let start_hub = || {
        let enroller = std::sync::Arc::new(Enroller::new(f.ca.clone(), registry.clone(), TimeDuration::days(90)));
        let hub = HubServer::new(hub_endpoint(&f), enroller);
        let serving = hub.clone();
        tokio::spawn(async move {
            serving
                .serve(move |_| {
                    let mut m = Mem::default();
                    m.docs.insert(hub_doc, doc_with_notes(1));
                    m
                })
                .await
        });
        hub
    };
    let hub = start_hub();
    let addr = hub.local_addr();
    let van_ep = |cert, key| {
        let mut ep = quinn::Endpoint::new(
            sync_quic::driver::van_endpoint_config(),
            None,
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::sync::Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        ep.set_default_client_config(client_config(f.ca.certificate(), cert, key, fast()).unwrap());
        ep
    };

    // The first connection is a full handshake; the next resumes, and its hello goes early.
    let (cert, key) = van_identity(&f.ca, "van-3", now() + TimeDuration::days(30));
    let van3 = DeviceId::new("org-north", "van-3").unwrap();
    sync_quic::registry::Registry::record_certificate(&*registry, &sync_quic::identity::fingerprint(&cert), &van3, 0)
        .unwrap();
    let ep = van_ep(cert, key);
    let (early, first) = resume_and_sync(&ep, addr, &mut Mem::default()).await;
    assert!(!early && first.is_ok(), "first: early {early}, {first:?}");
    let mut van = Mem::default();
    let (early, second) = resume_and_sync(&ep, addr, &mut van).await;
    assert!(early, "the second connection did not resume with 0-RTT");
    second.unwrap();
    assert!(van.docs.contains_key(&hub_doc), "the resumed session synced");

    // A hub that lost its sessions (a restart) turns the early data down; the session
    // starts again after the handshake, and completes.
    let restarted = start_hub();
    let mut van = Mem::default();
    let (early, after_restart) = resume_and_sync(&ep, restarted.local_addr(), &mut van).await;
    assert!(early, "the van tried 0-RTT with the forgotten ticket");
    after_restart.unwrap();
    assert!(van.docs.contains_key(&hub_doc), "the session after the turned-down 0-RTT synced");

    // Resumption skips the TLS verifier; the hub still refuses a certificate that expired
    // since the ticket was issued ...
    let (cert, key) = van_identity(&f.ca, "van-4", now() + TimeDuration::seconds(2));
    let short = van_ep(cert, key);
    let (_, ok) = resume_and_sync(&short, addr, &mut Mem::default()).await;
    ok.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let connected = sync_quic::driver::connect(&short, addr, "hub.medvan.test").await.unwrap();
    assert!(connected.early.is_some(), "the expired van resumed its session");
    match tokio::time::timeout(Duration::from_secs(5), connected.conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, CLOSE_EXPIRED.into()),
        other => panic!("an expired van's resumed session ended otherwise: {other}"),
    }

    // ... and one revoked since.
    assert_eq!(hub.revoke(&van3).unwrap(), 1);
    let connected = sync_quic::driver::connect(&ep, addr, "hub.medvan.test").await.unwrap();
    assert!(connected.early.is_some(), "the revoked van resumed its session");
    match tokio::time::timeout(Duration::from_secs(5), connected.conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, CLOSE_REVOKED.into()),
        other => panic!("a revoked van's resumed session ended otherwise: {other}"),
    }
}
