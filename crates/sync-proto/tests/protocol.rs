//! The protocol between an in-memory van and hub, messages passing through real frames.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT, ReadDoc};
use sync_proto::frame::{Decoder, encode};
use sync_proto::{
    BlobState, CallGrant, DocId, Event, Message, PositionReport, Priority, RefusalReason, Replica, ReplicaRefusal,
    Role, Session, SyncError,
};

#[derive(Default)]
struct Mem {
    actor: u8,
    docs: BTreeMap<DocId, Automerge>,
    states: HashMap<DocId, Vec<u8>>,
    priorities: HashMap<DocId, Priority>,
    refuse: BTreeSet<DocId>,
    blobs: BTreeMap<[u8; 32], (Vec<u8>, Priority)>,
    /// Partly received blobs, as a store would keep them durably.
    partial: HashMap<[u8; 32], Vec<u8>>,
    /// Positions the van reported.
    positions: Vec<PositionReport>,
    /// Call tickets: the hub's answers as the van received them.
    tickets: Vec<(DocId, Result<CallGrant, String>)>,
}

impl Mem {
    fn new(actor: u8) -> Mem {
        Mem { actor, ..Default::default() }
    }

    fn fresh(&self) -> Automerge {
        Automerge::new().with_actor(ActorId::from([self.actor; 16]))
    }

    fn create(&mut self, doc: DocId, priority: Priority) {
        let mut d = self.fresh();
        let mut tx = d.transaction();
        tx.put_object(ROOT, "notes", ObjType::List).unwrap();
        tx.commit();
        self.docs.insert(doc, d);
        self.priorities.insert(doc, priority);
    }

    fn edit(&mut self, doc: DocId, text: &str) {
        let d = self.docs.get_mut(&doc).unwrap();
        let notes = d.get(ROOT, "notes").unwrap().unwrap().1;
        let mut tx = d.transaction();
        let n = tx.length(&notes);
        tx.insert(&notes, n, text).unwrap();
        tx.commit();
    }

    fn notes(&self, doc: DocId) -> Vec<String> {
        let d = &self.docs[&doc];
        let notes = d.get(ROOT, "notes").unwrap().unwrap().1;
        (0..d.length(&notes)).map(|i| d.get(&notes, i).unwrap().unwrap().0.to_string()).collect()
    }
}

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

impl Mem {
    fn add_blob(&mut self, data: Vec<u8>, priority: Priority) -> [u8; 32] {
        let h = sha(&data);
        self.blobs.insert(h, (data, priority));
        h
    }
}

impl Replica for Mem {
    fn receive_position(&mut self, report: PositionReport) {
        self.positions.push(report);
    }
    fn call_ticket(&mut self, doc: DocId) -> Result<CallGrant, String> {
        // The hub's rule here: a ticket only for a case this side holds.
        if self.docs.contains_key(&doc) {
            Ok(CallGrant { token: format!("ticket-{}", doc.0[1]), expires_at: 120 })
        } else {
            Err("this van may not sync that case".into())
        }
    }
    fn receive_call_ticket(&mut self, doc: DocId, grant: Result<CallGrant, String>) {
        self.tickets.push((doc, grant));
    }
    fn accepts_blob(&self, _sha256: &[u8; 32], size: u64) -> bool {
        size <= 64 * 1024 * 1024
    }
    fn blobs(&self) -> Vec<([u8; 32], u64, Priority)> {
        self.blobs.iter().map(|(h, (d, p))| (*h, d.len() as u64, *p)).collect()
    }
    fn blob_state(&self, sha256: &[u8; 32]) -> BlobState {
        if self.blobs.contains_key(sha256) {
            BlobState::Complete
        } else {
            self.partial.get(sha256).map_or(BlobState::Missing, |p| BlobState::Partial(p.len() as u64))
        }
    }
    fn read_blob(&mut self, sha256: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, ReplicaRefusal> {
        let (data, _) = &self.blobs[sha256];
        Ok(data[offset as usize..(offset + len) as usize].to_vec())
    }
    fn write_blob(&mut self, sha256: &[u8; 32], _size: u64, offset: u64, data: &[u8]) -> Result<(), ReplicaRefusal> {
        let p = self.partial.entry(*sha256).or_default();
        assert_eq!(p.len() as u64, offset, "pieces arrive in order");
        p.extend_from_slice(data);
        Ok(())
    }
    fn finish_blob(&mut self, sha256: &[u8; 32], size: u64) -> Result<(), ReplicaRefusal> {
        let data = self.partial.remove(sha256).unwrap_or_default();
        if data.len() as u64 != size || sha(&data) != *sha256 {
            return Err(ReplicaRefusal {
                reason: RefusalReason::Malformed,
                detail: "content does not match its hash".into(),
            });
        }
        self.blobs.insert(*sha256, (data, Priority::FullImage));
        Ok(())
    }

    fn scope(&self) -> Vec<DocId> {
        self.docs.keys().copied().collect()
    }
    fn heads(&self, doc: DocId) -> Vec<ChangeHash> {
        self.docs.get(&doc).map(|d| d.get_heads()).unwrap_or_default()
    }
    fn priority(&self, doc: DocId) -> Priority {
        self.priorities.get(&doc).copied().unwrap_or(Priority::Case)
    }
    fn sync_state(&mut self, doc: DocId) -> sync::State {
        self.states.get(&doc).and_then(|b| sync::State::decode(b).ok()).unwrap_or_default()
    }
    fn save_sync_state(&mut self, doc: DocId, state: &sync::State) {
        self.states.insert(doc, state.encode());
    }
    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        self.docs.get(&doc)?.generate_sync_message(state)
    }
    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        if self.refuse.contains(&doc) {
            return Err(ReplicaRefusal {
                reason: RefusalReason::NotAuthorised,
                detail: "this van may not sync that case".into(),
            });
        }
        let fresh = self.fresh();
        let d = self.docs.entry(doc).or_insert(fresh);
        d.receive_sync_message(state, msg)
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }
}

#[derive(Debug, Default)]
struct Traffic {
    messages: usize,
    bytes: usize,
    /// Flights from the van: a round trip is one flight there and one back.
    van_flights: usize,
    doc_order: Vec<DocId>,
}

/// Runs a session pair to quiescence. `cut_after` drops the connection (and everything in
/// flight) after that many messages.
fn run(van: &mut Mem, hub: &mut Mem, cut_after: Option<usize>) -> (Traffic, Vec<Event>, Vec<Event>) {
    let mut vs = Session::new(Role::Van);
    let mut hs = Session::new(Role::Hub);
    let mut traffic = Traffic::default();
    let (mut vd, mut hd) = (Decoder::default(), Decoder::default());
    vs.start(van);
    loop {
        let mut moved = false;
        let mut flight = false;
        while let Some(m) = vs.poll_transmit(van) {
            if let Message::Doc { doc, .. } = &m {
                traffic.doc_order.push(*doc);
            }
            let bytes = encode(&m);
            traffic.bytes += bytes.len();
            traffic.messages += 1;
            if cut_after.is_some_and(|n| traffic.messages > n) {
                return (traffic, drain(&mut vs), drain(&mut hs));
            }
            hd.push(&bytes);
            while let Some(m) = hd.next_message().unwrap() {
                hs.handle(m, hub).unwrap();
            }
            moved = true;
            flight = true;
        }
        if flight {
            traffic.van_flights += 1;
        }
        while let Some(m) = hs.poll_transmit(hub) {
            let bytes = encode(&m);
            traffic.bytes += bytes.len();
            traffic.messages += 1;
            if cut_after.is_some_and(|n| traffic.messages > n) {
                return (traffic, drain(&mut vs), drain(&mut hs));
            }
            vd.push(&bytes);
            while let Some(m) = vd.next_message().unwrap() {
                vs.handle(m, van).unwrap();
            }
            moved = true;
        }
        if !moved {
            return (traffic, drain(&mut vs), drain(&mut hs));
        }
    }
}

fn drain(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn id(n: u16) -> DocId {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&n.to_be_bytes());
    DocId(b)
}

fn assert_converged(van: &Mem, hub: &Mem) {
    for (doc, d) in &van.docs {
        assert_eq!(hub.heads(*doc), d.get_heads(), "document {doc:?} differs");
    }
}

#[test]
fn a_van_and_an_empty_hub_converge_and_edits_flow_both_ways() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    for n in 0..5 {
        van.create(id(n), Priority::Case);
        van.edit(id(n), "vitals 1");
    }
    run(&mut van, &mut hub, None);
    assert_converged(&van, &hub);
    // A doctor edits at the hub while the paramedic edits in the van.
    hub.edit(id(2), "doctor: splint, no reduction");
    van.edit(id(2), "paramedic: pain 6/10");
    let (_, van_events, _) = run(&mut van, &mut hub, None);
    assert_converged(&van, &hub);
    assert!(van_events.contains(&Event::DocChanged(id(2))));
    let notes = van.notes(id(2));
    assert!(notes.iter().any(|n| n.contains("doctor")) && notes.iter().any(|n| n.contains("paramedic")), "{notes:?}");
}

#[test]
fn an_idle_reconnect_of_a_van_with_1000_cases_is_one_round_trip_and_tiny() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    for n in 0..1000 {
        van.create(id(n), Priority::Case);
    }
    run(&mut van, &mut hub, None);
    assert_converged(&van, &hub);
    let (traffic, van_events, _) = run(&mut van, &mut hub, None);
    println!(
        "idle reconnect, 1000 cases: {} messages, {} bytes, {} round trip(s)",
        traffic.messages, traffic.bytes, traffic.van_flights
    );
    assert_eq!(traffic.messages, 2, "hello and welcome only");
    assert_eq!(traffic.van_flights, 1);
    assert!(traffic.bytes < 4096, "{} bytes", traffic.bytes);
    assert_eq!(van_events, vec![Event::Ready { in_sync: true }]);
}

#[test]
fn cut_connections_resume_from_persisted_sync_states_and_converge() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for n in 0..20 {
        van.create(id(n), Priority::Case);
    }
    // 40 partitions: edits on both sides, each connection cut at a random message.
    for _ in 0..40 {
        for _ in 0..5 {
            let doc = id(next(20) as u16);
            if next(2) == 0 {
                van.edit(doc, "van");
            } else if hub.docs.get(&doc).is_some_and(|d| d.get(ROOT, "notes").unwrap().is_some()) {
                hub.edit(doc, "hub");
            }
        }
        run(&mut van, &mut hub, Some(next(30) as usize));
    }
    run(&mut van, &mut hub, None);
    assert_converged(&van, &hub);
    assert_eq!(hub.docs.len(), 20);
}

#[test]
fn urgent_documents_go_first() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    van.create(id(1), Priority::Video);
    van.create(id(2), Priority::FullImage);
    van.create(id(3), Priority::Case);
    van.create(id(4), Priority::Preview);
    van.create(id(5), Priority::Urgent);
    let (traffic, _, _) = run(&mut van, &mut hub, None);
    let mut first_seen = Vec::new();
    for d in traffic.doc_order {
        if !first_seen.contains(&d) {
            first_seen.push(d);
        }
    }
    assert_eq!(first_seen, vec![id(5), id(3), id(4), id(2), id(1)]);
}

#[test]
fn an_incompatible_van_is_refused_with_a_reason() {
    let mut hub = Mem::new(2);
    let mut hs = Session::new(Role::Hub);
    let err =
        hs.handle(Message::Hello { min_version: 7, max_version: 9, scope_digest: [0; 32] }, &mut hub).unwrap_err();
    assert!(matches!(err, SyncError::IncompatibleVersion { .. }));
    assert!(err.to_string().contains("update the older side"), "{err}");
    let Some(Message::Refused { reason, detail }) = hs.poll_transmit(&mut hub) else { panic!("no refusal sent") };
    assert_eq!(reason, RefusalReason::IncompatibleVersion);
    assert!(detail.contains("7..=9"));
    assert!(hs.is_closed());
}

#[test]
fn a_refused_document_does_not_poison_the_session() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    for n in 0..3 {
        van.create(id(n), Priority::Case);
    }
    hub.refuse.insert(id(1));
    let (_, van_events, hub_events) = run(&mut van, &mut hub, None);
    assert!(
        van_events.iter().any(
            |e| matches!(e, Event::RefusedByPeer { doc, reason: RefusalReason::NotAuthorised, .. } if *doc == id(1))
        ),
        "{van_events:?}"
    );
    assert!(hub_events.iter().any(|e| matches!(e, Event::RefusedPeer { doc, .. } if *doc == id(1))));
    assert!(!hub.docs.contains_key(&id(1)));
    assert_eq!(hub.heads(id(0)), van.heads(id(0)));
    assert_eq!(hub.heads(id(2)), van.heads(id(2)));
}

#[test]
fn garbage_and_out_of_turn_messages_end_the_session_by_name() {
    let mut hub = Mem::new(2);
    let mut hs = Session::new(Role::Hub);
    let err = hs.handle(Message::Inventory { docs: vec![] }, &mut hub).unwrap_err();
    assert!(err.to_string().contains("Inventory is not expected"), "{err}");
    let mut van = Mem::new(1);
    van.create(id(1), Priority::Case);
    let mut hs = Session::new(Role::Hub);
    hs.handle(Message::Hello { min_version: 1, max_version: 1, scope_digest: [0; 32] }, &mut hub).unwrap();
    let err =
        hs.handle(Message::Doc { doc: id(1), priority: Priority::Case, sync: vec![0xde, 0xad] }, &mut hub).unwrap_err();
    assert!(err.to_string().contains("does not decode"), "{err}");
    // A peer may not make this side walk its whole scope again and again.
    let mut hs = Session::new(Role::Hub);
    hs.handle(Message::Hello { min_version: 1, max_version: 1, scope_digest: [0; 32] }, &mut hub).unwrap();
    hs.handle(Message::Inventory { docs: vec![] }, &mut hub).unwrap();
    let err = hs.handle(Message::Inventory { docs: vec![] }, &mut hub).unwrap_err();
    assert!(err.to_string().contains("second Inventory"), "{err}");
}

/// A link of `bytes_per_tick` each way (a tick is 100 ms of virtual time): each side sends
/// at most that much per tick and the other reads it on the next. Returns the ticks taken
/// and the bytes carried; stops early after `cut_at_bytes` (the connection drops, and what
/// was in flight is lost). `on_tick` sees the hub after every tick.
fn run_link(
    van: &mut Mem,
    hub: &mut Mem,
    bytes_per_tick: usize,
    cut_at_bytes: Option<usize>,
    mut on_tick: impl FnMut(usize, &Mem, &[Event]),
) -> (usize, usize) {
    let mut vs = Session::new(Role::Van);
    let mut hs = Session::new(Role::Hub);
    vs.start(van);
    let (mut to_hub, mut to_van): (Vec<Message>, Vec<Message>) = (Vec::new(), Vec::new());
    let mut carried = 0usize;
    let (mut van_credit, mut hub_credit) = (0i64, 0i64);
    for tick in 0..1_000_000 {
        for m in to_hub.drain(..) {
            hs.handle(m, hub).unwrap();
        }
        for m in to_van.drain(..) {
            vs.handle(m, van).unwrap();
        }
        let events = drain(&mut hs);
        on_tick(tick, hub, &events);
        // Credit carries over, so a message larger than one tick's worth takes several.
        van_credit = (van_credit + bytes_per_tick as i64).min(bytes_per_tick as i64);
        while van_credit > 0 {
            let Some(m) = vs.poll_transmit(van) else { break };
            let n = encode(&m).len();
            carried += n;
            van_credit -= n as i64;
            to_hub.push(m);
        }
        hub_credit = (hub_credit + bytes_per_tick as i64).min(bytes_per_tick as i64);
        while hub_credit > 0 {
            let Some(m) = hs.poll_transmit(hub) else { break };
            let n = encode(&m).len();
            carried += n;
            hub_credit -= n as i64;
            to_van.push(m);
        }
        if cut_at_bytes.is_some_and(|c| carried >= c) {
            return (tick, carried);
        }
        if to_hub.is_empty() && to_van.is_empty() && vs.is_idle() && hs.is_idle() && van_credit >= 0 && hub_credit >= 0
        {
            return (tick, carried);
        }
    }
    panic!("the link never went quiet");
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn a_20_mb_blob_cut_halfway_resumes_without_resending() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    van.create(id(1), Priority::Case);
    let size = 20 * 1024 * 1024;
    let h = van.add_blob(blob(size, 7), Priority::FullImage);
    let (_, first) = run_link(&mut van, &mut hub, 1 << 20, Some(size / 2), |_, _, _| {});
    assert!(matches!(hub.blob_state(&h), BlobState::Partial(n) if n > 0), "{:?}", hub.blob_state(&h));
    let (_, second) = run_link(&mut van, &mut hub, 1 << 20, None, |_, _, _| {});
    assert_eq!(hub.blob_state(&h), BlobState::Complete);
    let total = first + second;
    println!("20 MiB blob with a cut: {total} bytes carried, {:.3} x its size", total as f64 / size as f64);
    assert!((total as f64) < 1.1 * size as f64, "{total} bytes for a {size}-byte blob");
}

#[test]
fn on_a_slow_link_every_case_and_preview_completes_before_any_full_image() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    for n in 0..50 {
        van.create(id(n), Priority::Case);
        van.edit(id(n), "vitals");
    }
    let previews: Vec<[u8; 32]> = (0..10).map(|i| van.add_blob(blob(100 * 1024, i), Priority::Preview)).collect();
    let fulls: Vec<[u8; 32]> = (0..10).map(|i| van.add_blob(blob(1024 * 1024, 100 + i), Priority::FullImage)).collect();
    let van_heads: HashMap<DocId, Vec<ChangeHash>> = (0..50).map(|n| (id(n), van.heads(id(n)))).collect();
    let mut docs_done: HashMap<DocId, usize> = HashMap::new();
    let mut blob_done: HashMap<[u8; 32], usize> = HashMap::new();
    // 1 Mbit/s: 12,500 bytes per 100 ms tick.
    let (ticks, _) = run_link(&mut van, &mut hub, 12_500, None, |tick, hub, events| {
        for (doc, heads) in &van_heads {
            if !docs_done.contains_key(doc) && hub.heads(*doc) == *heads {
                docs_done.insert(*doc, tick);
            }
        }
        for e in events {
            if let Event::BlobReceived(h) = e {
                blob_done.insert(*h, tick);
            }
        }
    });
    assert_eq!(docs_done.len(), 50);
    assert_eq!(blob_done.len(), 20);
    let last_doc = docs_done.values().max().unwrap();
    let last_preview = previews.iter().map(|h| blob_done[h]).max().unwrap();
    let first_full = fulls.iter().map(|h| blob_done[h]).min().unwrap();
    println!(
        "1 Mbit/s: cases done by {:.1} s, previews by {:.1} s, first full image at {:.1} s, all by {:.1} s",
        *last_doc as f64 / 10.0,
        last_preview as f64 / 10.0,
        first_full as f64 / 10.0,
        ticks as f64 / 10.0
    );
    assert!(*last_doc < first_full && last_preview < first_full);
}

#[test]
fn a_blob_that_fails_its_hash_is_refetched_once() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    van.create(id(1), Priority::Case);
    let h = van.add_blob(blob(300 * 1024, 3), Priority::Preview);
    // The hub holds a damaged partial copy from an earlier session.
    hub.partial.insert(h, vec![0xEE; 100 * 1024]);
    let (_, _) = run_link(&mut van, &mut hub, 1 << 20, None, |_, _, _| {});
    assert_eq!(hub.blob_state(&h), BlobState::Complete);
    assert_eq!(hub.blobs[&h].0, van.blobs[&h].0);
}

/// Passes messages both ways until neither side has anything to send.
fn pump(van: &mut Mem, hub: &mut Mem, vs: &mut Session, hs: &mut Session) {
    loop {
        let mut moved = false;
        while let Some(m) = vs.poll_transmit(van) {
            hs.handle(m, hub).unwrap();
            moved = true;
        }
        while let Some(m) = hs.poll_transmit(hub) {
            vs.handle(m, van).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn positions_reach_the_hub_newest_only_and_not_before_the_handshake() {
    let report = |at_ms| PositionReport {
        at_ms,
        lat_e7: 515_000_000,
        lon_e7: -1_200_000,
        accuracy_dm: 150,
        speed_cms: Some(1500),
        course_cdeg: Some(9000),
        active_case: Some(id(1)),
    };
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    assert!(!vs.position(report(1)), "no session yet");
    vs.start(&van);
    pump(&mut van, &mut hub, &mut vs, &mut hs);
    assert!(vs.position(report(2)));
    assert!(vs.position(report(3)));
    pump(&mut van, &mut hub, &mut vs, &mut hs);
    assert_eq!(hub.positions, vec![report(3)], "a newer report replaces one not yet sent");
    // A van never sends its position to a hub that does not speak version 3.
    let mut vs = Session::new(Role::Van);
    vs.start(&van);
    while vs.poll_transmit(&mut van).is_some() {}
    vs.handle(Message::Welcome { version: 2, in_sync: true }, &mut van).unwrap();
    assert!(!vs.position(report(4)));
}

#[test]
fn call_tickets_are_asked_in_a_session_and_answered_by_the_hubs_rule() {
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    van.create(id(1), Priority::Case);
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    assert!(!vs.request_call_ticket(id(1)), "no session yet");
    vs.start(&van);
    pump(&mut van, &mut hub, &mut vs, &mut hs);
    assert!(vs.request_call_ticket(id(1)));
    assert!(vs.request_call_ticket(id(9)));
    pump(&mut van, &mut hub, &mut vs, &mut hs);
    assert_eq!(van.tickets.len(), 2, "{:?}", van.tickets);
    assert_eq!(van.tickets[0], (id(1), Ok(CallGrant { token: "ticket-1".into(), expires_at: 120 })));
    assert_eq!(van.tickets[1], (id(9), Err("this van may not sync that case".into())));
    assert!(hub.tickets.is_empty());
    // The token stays out of logs.
    assert!(!format!("{:?}", van.tickets[0]).contains("ticket-1"));
    // A hub that does not speak version 4 is never asked.
    let mut vs = Session::new(Role::Van);
    vs.start(&van);
    while vs.poll_transmit(&mut van).is_some() {}
    vs.handle(Message::Welcome { version: 3, in_sync: true }, &mut van).unwrap();
    assert!(!vs.request_call_ticket(id(1)));
    // A van cannot hand the hub a ticket, nor a hub ask a van for one.
    let mut hs = Session::new(Role::Hub);
    hs.handle(Message::Hello { min_version: 1, max_version: 4, scope_digest: [0; 32] }, &mut hub).unwrap();
    let forged = Message::CallTicket { doc: id(1), grant: Ok(CallGrant { token: "x".into(), expires_at: 1 }) };
    assert!(hs.handle(forged, &mut hub).is_err());
}

#[test]
fn what_the_van_stores_while_its_hello_waits_on_a_dead_link_still_reaches_the_hub() {
    // A van reconnecting sends its hello as 0-RTT data at once, even while the link is
    // still down; the crew go on working, and the hub answers the old hello when the link
    // is back, saying the scopes matched (they did, when the hello was written).
    let (mut van, mut hub) = (Mem::new(1), Mem::new(2));
    let (mut vs, mut hs) = (Session::new(Role::Van), Session::new(Role::Hub));
    vs.start(&van);
    let hello: Vec<Message> = std::iter::from_fn(|| vs.poll_transmit(&mut van)).collect();
    van.create(id(1), Priority::Case);
    van.edit(id(1), "fall on the farm, left forearm");
    vs.local_change(id(1), &mut van);
    let preview = van.add_blob(blob(40_000, 3), Priority::Preview);
    let image = van.add_blob(blob(600_000, 9), Priority::FullImage);
    vs.local_blob(preview, 40_000, Priority::Preview);
    vs.local_blob(image, 600_000, Priority::FullImage);
    for m in hello {
        hs.handle(m, &mut hub).unwrap();
    }
    pump(&mut van, &mut hub, &mut vs, &mut hs);
    assert!(drain(&mut vs).contains(&Event::Ready { in_sync: true }), "the hub judged the scopes by the old hello");
    assert_converged(&van, &hub);
    for (name, h) in [("preview", preview), ("full image", image)] {
        assert_eq!(hub.blob_state(&h), BlobState::Complete, "the {name} stored during the handshake");
        assert_eq!(hub.blobs[&h].0, van.blobs[&h].0);
    }
}
