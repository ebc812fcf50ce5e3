//! Convergence under faults, in one process on virtual time: a hub and three vans edit the
//! same and different cases while their links are cut and restored at random, and, in a
//! second run, while every link loses 30% of packets and delays each by 300 ms. Vans are
//! real encrypted case stores, the hub is the real hub over each storage backend, and
//! messages pass through real frames; only the network is simulated.
//!
//! The link model is the one QUIC gives the protocol: a reliable, ordered stream per
//! connection. A lost packet costs a retransmission (a round trip plus a timeout) and holds
//! back everything behind it; a cut link kills the connection and everything in flight,
//! and the van reconnects with a fresh session once the link is back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use case_model::edit::{AllergyInput, VitalsInput};
use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use cloud_sync::cases::{CaseHub, HubReplica};
use cloud_sync::storage::Storage;
use cloud_sync::storage::crypto::Sealer;
use edge_agent::sync::StoreReplica;
use sync_proto::frame::{Decoder, encode};
use sync_proto::{DocId, Role, Session};
use sync_quic::identity::DeviceId;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Copy)]
struct LinkModel {
    /// One-way delay, ms.
    delay: u64,
    /// Probability that a packet is lost (and must be sent again).
    loss: f64,
    /// Cut and restore links at random.
    partitions: bool,
}

/// One direction of a connection: frames in flight with the time each arrives.
#[derive(Default)]
struct Pipe {
    in_flight: VecDeque<(u64, Vec<u8>)>,
    decoder: Decoder,
}

impl Pipe {
    fn send(&mut self, now: u64, frame: Vec<u8>, link: LinkModel, rng: &mut Rng) {
        // Each loss costs a retransmission timeout of about two round trips.
        let mut at = now + link.delay;
        while rng.chance(link.loss) {
            at += 4 * link.delay.max(25);
        }
        // A stream delivers in order: nothing overtakes what was sent before it.
        let at = at.max(self.in_flight.back().map_or(0, |(t, _)| *t));
        self.in_flight.push_back((at, frame));
    }
}

struct Connection {
    van_session: Session,
    van_replica: StoreReplica,
    hub_session: Session,
    hub_replica: HubReplica,
    to_hub: Pipe,
    to_van: Pipe,
    hub_changes: tokio::sync::broadcast::Receiver<DocId>,
}

struct Van {
    _dir: tempfile::TempDir,
    store: Store,
    device: DeviceId,
    link_up: bool,
    conn: Option<Connection>,
    /// Cases changed locally, offered to the session when there is one.
    changed: Arc<std::sync::Mutex<Vec<DocId>>>,
}

fn ctx(user: &str) -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse(user).unwrap(), now: Timestamp::from_unix_millis(ms) }
}

fn van(name: &str) -> Van {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.path().join("d"), key, VanId::parse(name).unwrap());
    config.create_if_missing = true;
    let store = Store::open(config).unwrap();
    let changed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = changed.clone();
    store.on_local_change(move |id| c.lock().unwrap().push(DocId(*id.as_bytes())));
    Van { _dir: dir, store, device: DeviceId::new("org-north", name).unwrap(), link_up: true, conn: None, changed }
}

fn connect(v: &mut Van, hub: &Arc<CaseHub>) {
    let mut van_replica = StoreReplica::new(v.store.clone(), "hub").unwrap();
    let mut van_session = Session::new(Role::Van);
    van_session.start(&van_replica);
    // Edits made before this connection are covered by the hello's scope digest.
    v.changed.lock().unwrap().clear();
    let _ = &mut van_replica;
    v.conn = Some(Connection {
        van_session,
        van_replica,
        hub_session: Session::new(Role::Hub),
        hub_replica: hub.replica_for(&v.device),
        to_hub: Pipe::default(),
        to_van: Pipe::default(),
        hub_changes: hub.changes().subscribe(),
    });
}

/// Moves one connection forward to `now`; returns whether anything happened, or `Err` if
/// the session failed (the connection is then dropped).
fn step(v: &mut Van, now: u64, link: LinkModel, rng: &mut Rng) -> Result<bool, String> {
    let changed: Vec<DocId> = std::mem::take(&mut *v.changed.lock().unwrap());
    let Some(c) = v.conn.as_mut() else { return Ok(false) };
    let mut moved = false;
    for doc in changed {
        c.van_session.local_change(doc, &mut c.van_replica);
    }
    while let Ok(doc) = c.hub_changes.try_recv() {
        c.hub_session.local_change(doc, &mut c.hub_replica);
    }
    while let Some(m) = c.van_session.poll_transmit(&mut c.van_replica) {
        c.to_hub.send(now, encode(&m), link, rng);
        moved = true;
    }
    while let Some(m) = c.hub_session.poll_transmit(&mut c.hub_replica) {
        c.to_van.send(now, encode(&m), link, rng);
        moved = true;
    }
    while c.to_hub.in_flight.front().is_some_and(|(t, _)| *t <= now) {
        let (_, frame) = c.to_hub.in_flight.pop_front().unwrap();
        c.to_hub.decoder.push(&frame);
        while let Some(m) = c.to_hub.decoder.next_message().map_err(|e| e.to_string())? {
            c.hub_session.handle(m, &mut c.hub_replica).map_err(|e| e.to_string())?;
        }
        moved = true;
    }
    while c.to_van.in_flight.front().is_some_and(|(t, _)| *t <= now) {
        let (_, frame) = c.to_van.in_flight.pop_front().unwrap();
        c.to_van.decoder.push(&frame);
        while let Some(m) = c.to_van.decoder.next_message().map_err(|e| e.to_string())? {
            c.van_session.handle(m, &mut c.van_replica).map_err(|e| e.to_string())?;
        }
        moved = true;
    }
    Ok(moved)
}

fn drop_connection(v: &mut Van) {
    if let Some(mut c) = v.conn.take() {
        // What a driver does when a connection ends: keep the sync states learnt so far.
        sync_proto::Replica::flush(&mut c.van_replica);
        sync_proto::Replica::flush(&mut c.hub_replica);
    }
}

fn quiet(v: &Van) -> bool {
    v.conn.as_ref().is_none_or(|c| {
        c.to_hub.in_flight.is_empty()
            && c.to_van.in_flight.is_empty()
            && c.van_session.is_idle()
            && c.hub_session.is_idle()
    })
}

/// What the run must end with.
#[derive(Default)]
struct Expected {
    /// Vitals recorded per case (each with a distinct heart rate).
    vitals: BTreeMap<CaseId, Vec<i64>>,
    /// Doctors' notes per case.
    notes: BTreeMap<CaseId, Vec<String>>,
}

fn run(storage: Arc<dyn Storage>, link: LinkModel, seed: u64) {
    let mut rng = Rng(seed);
    let hub = Arc::new(CaseHub::new(storage.clone(), Sealer::from_master(&[3; 32])));
    let admin = UserId::parse("dispatch").unwrap();
    let org = OrgId::parse("org-north").unwrap();
    hub.create_org(&admin, &org, "North EMS").unwrap();
    let mut vans: Vec<Van> = ["van-1", "van-2", "van-3"].iter().map(|n| van(n)).collect();
    let mut expected = Expected::default();

    // A shared case opened by van 1 and assigned to vans 2 and 3; each van has its own too.
    let shared = vans[0].store.create_case(&ctx("ana"), &org).unwrap().id;
    let mut own: Vec<Vec<CaseId>> =
        vans.iter().map(|v| vec![v.store.create_case(&ctx("crew"), &org).unwrap().id]).collect();
    // The shared case must reach the hub before it can be assigned.
    connect(&mut vans[0], &hub);
    let mut now = 0u64;
    while !quiet(&vans[0]) || now == 0 {
        now += 10;
        step(&mut vans[0], now, LinkModel { delay: 10, loss: 0.0, partitions: false }, &mut rng).unwrap();
    }
    drop_connection(&mut vans[0]);
    hub.assign(&admin, &org, shared, "van-2").unwrap();
    hub.assign(&admin, &org, shared, "van-3").unwrap();
    for v in vans.iter_mut() {
        connect(v, &hub);
    }

    let mut partitions = 0;
    let mut heart_rate = 40;
    let mut story4_done = false;
    let end_of_chaos = 120_000;
    while now < end_of_chaos {
        now += 20;
        // Edits: vans on their own and the shared case; doctors at the hub.
        if rng.chance(0.02) {
            let i = rng.below(3) as usize;
            let case = if rng.chance(0.5) { shared } else { own[i][rng.below(own[i].len() as u64) as usize] };
            heart_rate += 1;
            let edit = Edit::AddVitals(VitalsInput { heart_rate: Some(heart_rate), ..Default::default() });
            // A van may not hold the shared case yet; it edits only what it has.
            if vans[i].store.edit_case(&ctx("crew"), case, &[edit]).is_ok() {
                expected.vitals.entry(case).or_default().push(heart_rate);
            }
        }
        if rng.chance(0.003) {
            let i = rng.below(3) as usize;
            own[i].push(vans[i].store.create_case(&ctx("crew"), &org).unwrap().id);
        }
        if rng.chance(0.01) {
            let text = format!("note {now}");
            if hub
                .edit_case(&ctx("dr-osei"), &org, shared, &[Edit::AddNote { text: text.clone(), consult_id: None }])
                .is_ok()
            {
                expected.notes.entry(shared).or_default().push(text);
            }
        }
        // Story 4, in the middle of it all: penicillin recorded on van 2 while it is cut
        // off; "no known allergies" recorded by the doctor at the hub.
        if !story4_done && now > end_of_chaos / 2 && !vans[1].link_up {
            let allergy = Edit::AddAllergy(AllergyInput {
                substance: "penicillin".into(),
                code: None,
                code_system: None,
                category: Default::default(),
            });
            if vans[1].store.edit_case(&ctx("ana"), shared, &[allergy]).is_ok() {
                hub.edit_case(&ctx("dr-osei"), &org, shared, &[Edit::RecordNoKnownAllergies]).unwrap();
                story4_done = true;
            }
        }
        // Partitions: links go down and come back at random.
        for v in vans.iter_mut() {
            if link.partitions && rng.chance(if v.link_up { 0.004 } else { 0.01 }) {
                v.link_up = !v.link_up;
                if !v.link_up {
                    partitions += 1;
                    drop_connection(v);
                }
            }
            if v.link_up && v.conn.is_none() {
                connect(v, &hub);
            }
            if let Err(e) = step(v, now, link, &mut rng) {
                panic!("seed {seed}: a session failed at {now} ms: {e}");
            }
        }
    }
    if link.partitions {
        assert!(partitions >= 30, "seed {seed}: only {partitions} partitions");
    }
    assert!(story4_done || !link.partitions, "seed {seed}: story 4 never happened");
    if !story4_done {
        // Without partitions, story 4 happens between syncs instead.
        let allergy = Edit::AddAllergy(AllergyInput {
            substance: "penicillin".into(),
            code: None,
            code_system: None,
            category: Default::default(),
        });
        vans[1].store.edit_case(&ctx("ana"), shared, &[allergy]).unwrap();
        hub.edit_case(&ctx("dr-osei"), &org, shared, &[Edit::RecordNoKnownAllergies]).unwrap();
    }
    // Heal every link, then let everything settle.
    let settle_until = now + 600_000;
    for v in vans.iter_mut() {
        v.link_up = true;
        if v.conn.is_none() {
            connect(v, &hub);
        }
    }
    while now < settle_until {
        now += 20;
        for v in vans.iter_mut() {
            step(v, now, link, &mut rng).unwrap_or_else(|e| panic!("seed {seed}: a session failed: {e}"));
        }
        if vans.iter().all(quiet) {
            break;
        }
    }
    assert!(
        vans.iter().all(quiet),
        "seed {seed}: still syncing {} s after the links healed",
        (settle_until - end_of_chaos) / 1000
    );
    for v in vans.iter_mut() {
        drop_connection(v);
    }
    println!("seed {seed}: {partitions} partitions, settled at {} s of virtual time", now / 1000);

    // Every replica holds identical heads for every case it is entitled to.
    let dr = UserId::parse("dr-osei").unwrap();
    for (i, v) in vans.iter().enumerate() {
        let mut entitled: Vec<CaseId> = own[i].clone();
        entitled.push(shared);
        for case in entitled {
            let mut van_heads = v.store.heads(case).unwrap();
            van_heads.sort();
            let at_hub = hub.replica_for(&v.device);
            let hub_heads = sync_proto::Replica::heads(&at_hub, DocId(*case.as_bytes()));
            assert_eq!(van_heads, hub_heads, "seed {seed}: {} and the hub differ on {case}", v.device.van);
        }
        // And nothing it may not have.
        for other in own.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, c)| c) {
            assert!(
                v.store.read_case(&ctx("x"), *other).is_err(),
                "seed {seed}: {} holds another van's case",
                v.device.van
            );
        }
    }
    // No edit is lost.
    for (case, rates) in &expected.vitals {
        let view = hub.read_case(&dr, &org, *case).unwrap();
        let got: Vec<i64> = view.vitals.iter().filter_map(|v| v.get("heart_rate").and_then(|h| h.as_i64())).collect();
        for r in rates {
            assert!(got.contains(r), "seed {seed}: heart rate {r} on {case} was lost");
        }
    }
    let shared_view = hub.read_case(&dr, &org, shared).unwrap();
    for text in expected.notes.get(&shared).into_iter().flatten() {
        assert!(
            shared_view.notes.iter().any(|n| n.get("text").and_then(|t| t.as_str()) == Some(text)),
            "seed {seed}: {text} lost"
        );
    }
    // Story 4's conflict is visible at the hub and on every van holding the case.
    let conflict = |conflicts: &[case_model::Conflict]| conflicts.iter().any(|c| c.path == "patient.allergy_status");
    assert!(conflict(&shared_view.conflicts), "seed {seed}: hub shows no allergy conflict");
    assert_eq!(shared_view.allergies.len(), 1, "the allergen is never dropped");
    for v in &vans {
        let view = v.store.read_case(&ctx("crew"), shared).unwrap();
        assert!(conflict(&view.conflicts), "seed {seed}: {} shows no allergy conflict", v.device.van);
    }
}

fn sqlite() -> (Arc<dyn Storage>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = cloud_sync::storage::sqlite::SqliteStorage::open(dir.path(), &Sealer::from_master(&[3; 32])).unwrap();
    (Arc::new(storage), dir)
}

#[test]
fn converges_through_random_partitions() {
    for seed in [1, 2] {
        let (storage, _dir) = sqlite();
        run(storage, LinkModel { delay: 40, loss: 0.0, partitions: true }, seed);
    }
}

#[test]
fn converges_through_30_percent_loss_and_300_ms_delay() {
    let (storage, _dir) = sqlite();
    run(storage, LinkModel { delay: 300, loss: 0.3, partitions: false }, 7);
}

#[test]
fn converges_through_partitions_on_postgres() {
    let url = std::env::var("MEDVAN_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres password=postgres dbname=test".into());
    let mut r = [0u8; 6];
    rand::fill(&mut r);
    let schema = format!("medvan_test_{}", hex::encode(r));
    let storage = cloud_sync::storage::postgres::PgStorage::connect(&url, &schema, 2).unwrap();
    run(Arc::new(storage), LinkModel { delay: 40, loss: 0.0, partitions: true }, 3);
    cloud_sync::storage::postgres::PgStorage::connect(&url, &schema, 1).unwrap().destroy().unwrap();
}
