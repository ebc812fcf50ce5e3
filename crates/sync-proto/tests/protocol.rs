//! The protocol between an in-memory van and hub, messages passing through real frames.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, ROOT, ReadDoc};
use sync_proto::frame::{Decoder, encode};
use sync_proto::{DocId, Event, Message, Priority, RefusalReason, Replica, ReplicaRefusal, Role, Session, SyncError};

#[derive(Default)]
struct Mem {
    actor: u8,
    docs: BTreeMap<DocId, Automerge>,
    states: HashMap<DocId, Vec<u8>>,
    priorities: HashMap<DocId, Priority>,
    refuse: BTreeSet<DocId>,
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

impl Replica for Mem {
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
        while let Some(m) = vs.poll_transmit() {
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
        while let Some(m) = hs.poll_transmit() {
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
    let Some(Message::Refused { reason, detail }) = hs.poll_transmit() else { panic!("no refusal sent") };
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
}
