//! [`Session`]: one connection's worth of the protocol, for either role.
//!
//! Call contract: create with [`Session::new`]; on the van, call [`Session::start`]; then
//! repeatedly feed every received message to [`Session::handle`], and drain
//! [`Session::poll_transmit`] until it returns `None`, sending what it returns in order.
//! After a local edit, call [`Session::local_change`]. [`Session::poll_event`] reports what
//! happened (refusals, documents that changed). A dropped connection is simply a dropped
//! session: the replica's persisted sync states let the next one resume.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use automerge::sync;
use sha2::{Digest, Sha256};

use crate::message::{AuditRecord, CrewMember, DocId, Message, Priority, RefusalReason, SignedHead};
use crate::{AUDIT_VERSION, CALL_VERSION, CallGrant, MIN_PROTOCOL_VERSION, POSITION_VERSION, PROTOCOL_VERSION};

/// Which side of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The van: opens the session.
    Van,
    /// The hub: answers.
    Hub,
}

/// Why a document's changes were refused by the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRefusal {
    /// The kind of refusal sent to the peer.
    pub reason: RefusalReason,
    /// What to do about it, for a person.
    pub detail: String,
}

/// How much of a blob this side holds, durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// Nothing.
    Missing,
    /// The first `n` bytes (a transfer that was cut off).
    Partial(u64),
    /// All of it, verified.
    Complete,
}

/// Size of the blob pieces a session sends.
pub const CHUNK: u64 = 64 * 1024;

/// The documents a session syncs, as the store behind it holds them.
///
/// Implementations persist sync states per peer and document, and enforce authorisation
/// in [`Replica::receive`]. The blob methods have defaults for replicas without blobs.
pub trait Replica {
    /// Documents this side syncs with the peer.
    fn scope(&self) -> Vec<DocId>;
    /// The document's current heads, sorted; empty if this side does not hold it.
    fn heads(&self, doc: DocId) -> Vec<automerge::ChangeHash>;
    /// Every document in scope with its heads: what a reconnect compares. The default asks
    /// [`Replica::scope`] and [`Replica::heads`]; a replica that can answer in one look at
    /// its index (the hub, for a van holding a thousand cases) should.
    fn scope_heads(&self) -> Vec<(DocId, Vec<automerge::ChangeHash>)> {
        self.scope().into_iter().map(|doc| (doc, self.heads(doc))).collect()
    }
    /// How urgent the document's traffic is.
    fn priority(&self, doc: DocId) -> Priority;
    /// The persisted sync state with this peer, or a fresh one.
    fn sync_state(&mut self, doc: DocId) -> sync::State;
    /// Persists the sync state with this peer.
    fn save_sync_state(&mut self, doc: DocId, state: &sync::State);
    /// Automerge's next sync message for the document, if any.
    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message>;
    /// Applies a sync message from the peer, or refuses it.
    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal>;

    /// Whether this side takes the blob offered: it stores blobs, a document in scope
    /// refers to this hash, and the size is within its limit. A declined offer is ignored.
    fn accepts_blob(&self, _sha256: &[u8; 32], _size: u64) -> bool {
        false
    }
    /// The session is over: persist whatever the replica batched (sync states).
    fn flush(&mut self) {}
    /// Complete blobs this side holds that belong to documents in scope:
    /// `(sha256, size, priority)`.
    fn blobs(&self) -> Vec<([u8; 32], u64, Priority)> {
        Vec::new()
    }
    /// How much of a blob this side holds.
    fn blob_state(&self, _sha256: &[u8; 32]) -> BlobState {
        BlobState::Missing
    }
    /// Reads `len` bytes of a complete blob from `offset`.
    fn read_blob(&mut self, _sha256: &[u8; 32], _offset: u64, _len: u64) -> Result<Vec<u8>, ReplicaRefusal> {
        Err(ReplicaRefusal { reason: RefusalReason::NotAuthorised, detail: "this side keeps no blobs".into() })
    }
    /// Stores bytes of a blob of `size` bytes being received, at `offset` (the end of what
    /// is held). Persist them before returning: a later session resumes from what is held.
    fn write_blob(&mut self, _sha256: &[u8; 32], _size: u64, _offset: u64, _data: &[u8]) -> Result<(), ReplicaRefusal> {
        Err(ReplicaRefusal { reason: RefusalReason::NotAuthorised, detail: "this side keeps no blobs".into() })
    }
    /// All `size` bytes are held: verify the hash and make the blob complete, or discard it.
    fn finish_blob(&mut self, _sha256: &[u8; 32], _size: u64) -> Result<(), ReplicaRefusal> {
        Err(ReplicaRefusal { reason: RefusalReason::NotAuthorised, detail: "this side keeps no blobs".into() })
    }

    /// The hub: the crew roster for this van, if it differs from the one the van last
    /// confirmed.
    fn roster_update(&mut self) -> Option<([u8; 32], Vec<CrewMember>)> {
        None
    }
    /// The hub: the van confirmed storing the roster with this digest.
    fn roster_acked(&mut self, _digest: [u8; 32]) {}

    /// The hub: the van reported where it is.
    fn receive_position(&mut self, _report: crate::PositionReport) {}

    /// The hub: a ticket to the live call of `doc` for this van, or why not (for a person).
    /// Only for a case the van may sync.
    fn call_ticket(&mut self, _doc: DocId) -> Result<CallGrant, String> {
        Err("this hub does not host live calls".into())
    }

    /// The van: the hub's answer to [`Session::request_call_ticket`].
    fn receive_call_ticket(&mut self, _doc: DocId, _grant: Result<CallGrant, String>) {}
    /// The van: stores the roster (replacing the last); durable on return.
    fn receive_roster(&mut self, _digest: [u8; 32], _members: Vec<CrewMember>) -> Result<(), ReplicaRefusal> {
        Err(ReplicaRefusal { reason: RefusalReason::NotAuthorised, detail: "this side keeps no crew roster".into() })
    }
    /// The hub: the van's public key (the raw P-256 point of its certificate), to check its
    /// signed tree heads with.
    fn set_peer_key(&mut self, _key: &[u8]) {}
    /// The van: up to `max` entries of its audit log after position `after`, with the signed
    /// tree head at the last of them; `None` when there are none.
    fn audit_batch(&mut self, _after: u64, _max: usize) -> Option<(Vec<AuditRecord>, SignedHead)> {
        None
    }
    /// The van: how much of its log the hub has confirmed (persisted across sessions);
    /// `None` when it cannot be read (then nothing is sent).
    fn audit_acked(&self) -> Option<u64> {
        Some(0)
    }
    /// The van: the hub confirmed holding its log up to `size`; persist it.
    fn set_audit_acked(&mut self, _size: u64) {}
    /// The hub: checks a batch of the van's log extends the copy held and keeps it; answers
    /// how much is held. A refusal means the van's log was tampered with.
    fn receive_audit(
        &mut self,
        _first_seq: u64,
        _entries: Vec<AuditRecord>,
        _head: SignedHead,
    ) -> Result<u64, ReplicaRefusal> {
        Err(ReplicaRefusal { reason: RefusalReason::NotAuthorised, detail: "this side keeps no audit logs".into() })
    }
}

/// Entries per audit batch: a few hundred kilobytes at most.
pub const AUDIT_BATCH: usize = 500;

/// What a session reports to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished; `in_sync` if nothing needed doing.
    Ready {
        /// Whether the scopes already matched.
        in_sync: bool,
    },
    /// The peer's changes to a document were applied.
    DocChanged(DocId),
    /// The peer refused this side's changes to a document.
    RefusedByPeer {
        /// The document.
        doc: DocId,
        /// Why.
        reason: RefusalReason,
        /// The peer's explanation.
        detail: String,
    },
    /// This side refused the peer's changes to a document.
    RefusedPeer {
        /// The document.
        doc: DocId,
        /// Why.
        detail: String,
    },
    /// A blob arrived whole and verified.
    BlobReceived([u8; 32]),
    /// The peer confirmed it holds a blob this side offered.
    BlobDelivered([u8; 32]),
    /// A received blob failed verification and was discarded (it is fetched again once).
    BlobRejected {
        /// The blob.
        sha256: [u8; 32],
        /// Why.
        detail: String,
    },
    /// The hub confirmed holding the van's audit log up to this size.
    AuditDelivered(u64),
    /// The van stored a new crew roster.
    RosterReceived,
    /// The van could not store the crew roster (it comes again next session).
    RosterNotStored {
        /// Why.
        detail: String,
    },
    /// A van's audit log does not extend the copy the hub holds (hub: this side found it;
    /// van: the hub said so).
    AuditTampered {
        /// What was found.
        detail: String,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// No protocol version in common.
    #[error(
        "the peer speaks sync protocol versions {min}..={max}, this side {ours_min}..={ours_max}; update the older side"
    )]
    IncompatibleVersion {
        /// Peer's oldest.
        min: u16,
        /// Peer's newest.
        max: u16,
        /// Our oldest.
        ours_min: u16,
        /// Our newest.
        ours_max: u16,
    },
    /// The peer refused the session.
    #[error("the peer refused the session: {0}")]
    Refused(String),
    /// The peer broke the protocol (a message out of turn, one that does not decode).
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    AwaitWelcome,
    AwaitHello,
    Syncing,
    Closed,
}

/// One connection's session.
#[derive(Debug)]
pub struct Session {
    role: Role,
    phase: Phase,
    outbox: BinaryHeap<Reverse<(Priority, u64, Queued)>>,
    next_seq: u64,
    events: VecDeque<Event>,
    /// Sync states of documents in flight in this session (the replica persists them).
    states: BTreeMap<DocId, sync::State>,
    /// Blobs being sent: the peer asked for them.
    sending: BTreeMap<[u8; 32], Outgoing>,
    /// Blobs being received: this side asked for them.
    receiving: BTreeMap<[u8; 32], Incoming>,
    /// Blobs this side stopped receiving (a write failed); late pieces are ignored.
    abandoned: std::collections::BTreeSet<[u8; 32]>,
    /// Documents changed locally before the handshake finished, offered once it does.
    early_changes: std::collections::BTreeSet<DocId>,
    /// Blobs stored locally before the handshake finished, offered once it does.
    early_blobs: BTreeMap<[u8; 32], (u64, Priority)>,
    /// Whether the peer's inventory arrived.
    inventory_seen: bool,
    /// The version agreed in the handshake.
    version: u16,
    /// The van: an audit batch awaits the hub's answer, or the hub refused the log.
    audit_waiting: bool,
    audit_stopped: bool,
    /// The van: what the hub confirmed, as this session knows it (kept here so a van that
    /// cannot persist it does not send the same batch again and again).
    audit_acked: Option<u64>,
}

#[derive(Debug)]
struct Outgoing {
    size: u64,
    next: u64,
    priority: Priority,
    seq: u64,
}

#[derive(Debug)]
struct Incoming {
    size: u64,
    next: u64,
    retried: bool,
}

/// A message waiting to be sent, ordered by priority then by when it was queued.
#[derive(Debug, PartialEq, Eq)]
struct Queued(Message);

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        // Ties are impossible: the sequence number before this field is unique.
        std::cmp::Ordering::Equal
    }
}

impl Session {
    /// A new session for `role`.
    pub fn new(role: Role) -> Session {
        let phase = match role {
            Role::Van => Phase::Start,
            Role::Hub => Phase::AwaitHello,
        };
        Session {
            role,
            phase,
            outbox: BinaryHeap::new(),
            next_seq: 0,
            events: VecDeque::new(),
            states: BTreeMap::new(),
            sending: BTreeMap::new(),
            receiving: BTreeMap::new(),
            abandoned: Default::default(),
            early_changes: Default::default(),
            early_blobs: Default::default(),
            inventory_seen: false,
            version: MIN_PROTOCOL_VERSION,
            audit_waiting: false,
            audit_stopped: false,
            audit_acked: None,
        }
    }

    /// Opens the session (the van's side): queues the hello.
    pub fn start(&mut self, replica: &impl Replica) {
        if self.role == Role::Van && self.phase == Phase::Start {
            self.queue(Message::Hello {
                min_version: MIN_PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                scope_digest: scope_digest(replica),
            });
            self.phase = Phase::AwaitWelcome;
        }
    }

    /// Handles one message from the peer.
    pub fn handle(&mut self, msg: Message, replica: &mut impl Replica) -> Result<(), SyncError> {
        match (self.phase, msg) {
            (Phase::Closed, _) => Err(SyncError::Protocol("message after the session closed".into())),
            (Phase::AwaitHello, Message::Hello { min_version, max_version, scope_digest: theirs }) => {
                let version = max_version.min(PROTOCOL_VERSION);
                if version < min_version.max(MIN_PROTOCOL_VERSION) {
                    let err = SyncError::IncompatibleVersion {
                        min: min_version,
                        max: max_version,
                        ours_min: MIN_PROTOCOL_VERSION,
                        ours_max: PROTOCOL_VERSION,
                    };
                    self.queue(Message::Refused {
                        reason: RefusalReason::IncompatibleVersion,
                        detail: err.to_string(),
                    });
                    self.phase = Phase::Closed;
                    return Err(err);
                }
                let in_sync = theirs == scope_digest(replica);
                self.version = version;
                self.queue(Message::Welcome { version, in_sync });
                self.enter_syncing(in_sync, replica);
                Ok(())
            }
            (Phase::AwaitWelcome, Message::Welcome { version, in_sync }) => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    self.phase = Phase::Closed;
                    return Err(SyncError::Protocol(format!(
                        "the hub chose version {version}, which this side never offered"
                    )));
                }
                self.version = version;
                self.enter_syncing(in_sync, replica);
                Ok(())
            }
            (_, Message::Refused { detail, .. }) => {
                self.phase = Phase::Closed;
                Err(SyncError::Refused(detail))
            }
            (Phase::Syncing, Message::Inventory { docs }) => {
                // One inventory per session: each costs a look at every document in scope.
                if std::mem::replace(&mut self.inventory_seen, true) {
                    self.phase = Phase::Closed;
                    return Err(SyncError::Protocol("a second Inventory in one session".into()));
                }
                let theirs: BTreeMap<DocId, [u8; 32]> = docs.into_iter().collect();
                for (doc, heads) in replica.scope_heads() {
                    let ours = heads_digest(&heads);
                    if theirs.get(&doc) != Some(&ours) {
                        self.sync_doc(doc, replica);
                    }
                }
                Ok(())
            }
            (Phase::Syncing, Message::Doc { doc, sync: bytes, .. }) => {
                let msg = sync::Message::decode(&bytes).map_err(|e| {
                    SyncError::Protocol(format!("the sync message for a document does not decode: {e}"))
                })?;
                let mut state = self.states.remove(&doc).unwrap_or_else(|| replica.sync_state(doc));
                let before = replica.heads(doc);
                match replica.receive(doc, &mut state, msg) {
                    Ok(()) => {
                        if replica.heads(doc) != before {
                            self.events.push_back(Event::DocChanged(doc));
                        }
                        replica.save_sync_state(doc, &state);
                        self.states.insert(doc, state);
                        self.sync_doc(doc, replica);
                    }
                    Err(refusal) => {
                        // Refusing one document does not poison the rest of the session.
                        self.events.push_back(Event::RefusedPeer { doc, detail: refusal.detail.clone() });
                        self.queue(Message::DocRefused { doc, reason: refusal.reason, detail: refusal.detail });
                    }
                }
                Ok(())
            }
            (Phase::Syncing, Message::BlobOffer { sha256, size, .. }) => {
                if !replica.accepts_blob(&sha256, size) || self.receiving.contains_key(&sha256) {
                    // A side without blob storage takes documents only; a repeated offer
                    // must not restart a transfer under way.
                    return Ok(());
                }
                match replica.blob_state(&sha256) {
                    BlobState::Complete => self.queue(Message::BlobHave { sha256 }),
                    state => {
                        let from = match state {
                            BlobState::Partial(n) if n <= size => n,
                            _ => 0,
                        };
                        self.abandoned.remove(&sha256);
                        self.receiving.insert(sha256, Incoming { size, next: from, retried: false });
                        if from == size {
                            // Everything is here already (a cut after the last piece): verify.
                            self.finish(sha256, replica);
                        } else {
                            self.queue(Message::BlobWant { sha256, from });
                        }
                    }
                }
                Ok(())
            }
            (Phase::Syncing, Message::BlobWant { sha256, from }) => {
                let Some((_, size, priority)) = replica.blobs().into_iter().find(|(s, _, _)| *s == sha256) else {
                    return Err(SyncError::Protocol("the peer asked for a blob this side never offered".into()));
                };
                if from > size {
                    return Err(SyncError::Protocol(format!(
                        "the peer asked for a blob from byte {from}, past its end ({size})"
                    )));
                }
                if from < size {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.sending.insert(sha256, Outgoing { size, next: from, priority, seq });
                }
                Ok(())
            }
            (Phase::Syncing, Message::BlobChunk { sha256, offset, data }) => {
                let Some(incoming) = self.receiving.get_mut(&sha256) else {
                    if self.abandoned.contains(&sha256) {
                        return Ok(());
                    }
                    return Err(SyncError::Protocol("the peer sent part of a blob this side did not ask for".into()));
                };
                if offset != incoming.next || offset + data.len() as u64 > incoming.size {
                    return Err(SyncError::Protocol(format!(
                        "the peer sent blob bytes at {offset}, expected {} (of {})",
                        incoming.next, incoming.size
                    )));
                }
                if let Err(refusal) = replica.write_blob(&sha256, incoming.size, offset, &data) {
                    self.receiving.remove(&sha256);
                    self.abandoned.insert(sha256);
                    self.events.push_back(Event::BlobRejected { sha256, detail: refusal.detail });
                    return Ok(());
                }
                incoming.next += data.len() as u64;
                if incoming.next == incoming.size {
                    self.finish(sha256, replica);
                }
                Ok(())
            }
            (Phase::Syncing, Message::BlobHave { sha256 }) => {
                self.sending.remove(&sha256);
                self.events.push_back(Event::BlobDelivered(sha256));
                Ok(())
            }
            (Phase::Syncing, Message::DocRefused { doc, reason, detail }) => {
                self.states.remove(&doc);
                self.events.push_back(Event::RefusedByPeer { doc, reason, detail });
                Ok(())
            }
            (Phase::Syncing, Message::AuditBatch { first_seq, entries, head })
                if self.role == Role::Hub && self.version >= AUDIT_VERSION =>
            {
                match replica.receive_audit(first_seq, entries, head) {
                    Ok(size) => self.queue(Message::AuditAck { size }),
                    Err(refusal) => {
                        self.events.push_back(Event::AuditTampered { detail: refusal.detail.clone() });
                        self.queue(Message::AuditRefused { detail: refusal.detail });
                    }
                }
                Ok(())
            }
            (Phase::Syncing, Message::AuditAck { size }) if self.role == Role::Van && self.audit_waiting => {
                self.audit_waiting = false;
                let acked = self.audit_acked.unwrap_or(0);
                self.audit_acked = Some(size);
                replica.set_audit_acked(size);
                if size > acked {
                    self.events.push_back(Event::AuditDelivered(size));
                    self.push_audit(replica);
                } else if size < acked {
                    // The hub holds less than it confirmed before (a restored database):
                    // send again from what it holds.
                    self.push_audit(replica);
                }
                // The same size: the hub took nothing this time (it could not store it);
                // the next session tries again.
                Ok(())
            }
            (Phase::Syncing, Message::Roster { digest, members }) if self.role == Role::Van => {
                match replica.receive_roster(digest, members) {
                    Ok(()) => {
                        self.events.push_back(Event::RosterReceived);
                        self.queue(Message::RosterAck { digest });
                    }
                    // Not confirmed: the hub sends it again next session.
                    Err(refusal) => self.events.push_back(Event::RosterNotStored { detail: refusal.detail }),
                }
                Ok(())
            }
            (Phase::Syncing, Message::RosterAck { digest }) if self.role == Role::Hub => {
                replica.roster_acked(digest);
                Ok(())
            }
            (Phase::Syncing, Message::Position(report))
                if self.role == Role::Hub && self.version >= POSITION_VERSION =>
            {
                replica.receive_position(report);
                Ok(())
            }
            (Phase::Syncing, Message::CallTicketRequest { doc })
                if self.role == Role::Hub && self.version >= CALL_VERSION =>
            {
                let grant = replica.call_ticket(doc);
                self.queue(Message::CallTicket { doc, grant });
                Ok(())
            }
            (Phase::Syncing, Message::CallTicket { doc, grant }) if self.role == Role::Van => {
                replica.receive_call_ticket(doc, grant);
                Ok(())
            }
            (Phase::Syncing, Message::AuditRefused { detail }) if self.role == Role::Van => {
                self.audit_waiting = false;
                self.audit_stopped = true;
                self.events.push_back(Event::AuditTampered { detail });
                Ok(())
            }
            (phase, msg) => {
                self.phase = Phase::Closed;
                Err(SyncError::Protocol(format!("{} is not expected while {phase:?}", name(&msg))))
            }
        }
    }

    /// Tells the session a document changed locally, so it offers the change to the peer
    /// (and, on the van, the audit entries the change added).
    pub fn local_change(&mut self, doc: DocId, replica: &mut impl Replica) {
        match self.phase {
            Phase::Syncing => {
                self.sync_doc(doc, replica);
                self.push_audit(replica);
            }
            // The hello's digest predates this change: offer it once the handshake is done,
            // even if the hub then says the scopes matched.
            Phase::Start | Phase::AwaitWelcome | Phase::AwaitHello => {
                self.early_changes.insert(doc);
            }
            Phase::Closed => {}
        }
    }

    /// The hub: tells the session the van's crew roster may have changed (a PIN set or
    /// removed, an account disabled), so a van that stays connected gets it now rather
    /// than at its next session.
    pub fn roster_changed(&mut self, replica: &mut impl Replica) {
        if self.phase == Phase::Syncing {
            self.offer_roster(replica);
        }
    }

    /// The van: reports where it is, if the hub speaks positions; a report waiting to be
    /// sent is replaced by a newer one. Returns whether it was queued.
    pub fn position(&mut self, report: crate::PositionReport) -> bool {
        if self.phase != Phase::Syncing || self.role != Role::Van || self.version < POSITION_VERSION {
            return false;
        }
        self.outbox.retain(|Reverse((_, _, Queued(m)))| !matches!(m, Message::Position(_)));
        self.queue(Message::Position(report));
        true
    }

    /// The van: asks the hub for a ticket to the live call of `doc`; the answer goes to the
    /// replica ([`Replica::receive_call_ticket`]). Returns whether it was asked: not before
    /// the session is syncing, nor of a hub older than version 4.
    pub fn request_call_ticket(&mut self, doc: DocId) -> bool {
        if self.phase != Phase::Syncing || self.role != Role::Van || self.version < CALL_VERSION {
            return false;
        }
        self.queue(Message::CallTicketRequest { doc });
        true
    }

    /// Tells the session this side now holds a blob the peer may need.
    pub fn local_blob(&mut self, sha256: [u8; 32], size: u64, priority: Priority) {
        match self.phase {
            Phase::Syncing => self.queue(Message::BlobOffer { sha256, size, priority }),
            // As with documents: the hello's digest predates this blob, and a hello sent as
            // 0-RTT data on a dead link can wait a long time for its answer. Offered once
            // the handshake is done, even if the hub then says the scopes matched.
            Phase::Start | Phase::AwaitWelcome | Phase::AwaitHello => {
                self.early_blobs.insert(sha256, (size, priority));
            }
            Phase::Closed => {}
        }
    }

    /// The next message to send, most urgent first. Blob pieces are read from the replica
    /// only when nothing more urgent waits, so a large image never holds back a case.
    pub fn poll_transmit(&mut self, replica: &mut impl Replica) -> Option<Message> {
        loop {
            let queued = self.outbox.peek().map(|Reverse((p, seq, _))| (*p, *seq));
            let stream = self.sending.iter().map(|(sha, o)| ((o.priority, o.seq), *sha)).min();
            let chunk_first = match (queued, stream) {
                (Some(q), Some((s, _))) => s < q,
                (None, Some(_)) => true,
                _ => false,
            };
            if !chunk_first {
                return self.outbox.pop().map(|Reverse((_, _, Queued(m)))| m);
            }
            let (_, sha) = stream.expect("checked above");
            if let Some(m) = self.next_chunk(sha, replica) {
                return Some(m);
            }
            // The blob could not be read; it was dropped from `sending`: look again.
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the session has ended (refused, or the peer broke the protocol).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the handshake is done and nothing is waiting to be sent.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Syncing && self.outbox.is_empty() && self.sending.is_empty()
    }

    fn next_chunk(&mut self, sha256: [u8; 32], replica: &mut impl Replica) -> Option<Message> {
        let out = self.sending.get_mut(&sha256)?;
        let offset = out.next;
        let len = CHUNK.min(out.size - offset);
        match replica.read_blob(&sha256, offset, len) {
            Ok(data) if data.len() as u64 == len => {
                out.next += len;
                if out.next >= out.size {
                    // The last piece: the peer answers with BlobHave.
                    self.sending.remove(&sha256);
                }
                Some(Message::BlobChunk { sha256, offset, data })
            }
            _ => {
                self.sending.remove(&sha256);
                None
            }
        }
    }

    fn finish(&mut self, sha256: [u8; 32], replica: &mut impl Replica) {
        let Some(incoming) = self.receiving.remove(&sha256) else { return };
        match replica.finish_blob(&sha256, incoming.size) {
            Ok(()) => {
                self.events.push_back(Event::BlobReceived(sha256));
                self.queue(Message::BlobHave { sha256 });
            }
            Err(refusal) => {
                self.events.push_back(Event::BlobRejected { sha256, detail: refusal.detail });
                if !incoming.retried {
                    // Fetch it once more from the start; a second failure is left to a
                    // later session.
                    self.receiving.insert(sha256, Incoming { size: incoming.size, next: 0, retried: true });
                    self.queue(Message::BlobWant { sha256, from: 0 });
                }
            }
        }
    }

    /// The handshake is done (on either side): unless the scopes matched, send the
    /// inventory and offer blobs; then offer whatever changed during the handshake.
    fn enter_syncing(&mut self, in_sync: bool, replica: &mut impl Replica) {
        self.phase = Phase::Syncing;
        let early_blobs = std::mem::take(&mut self.early_blobs);
        if !in_sync {
            self.queue(inventory(replica));
            self.offer_blobs(replica);
        } else {
            for (sha256, (size, priority)) in early_blobs {
                self.queue(Message::BlobOffer { sha256, size, priority });
            }
        }
        self.events.push_back(Event::Ready { in_sync });
        self.offer_early_changes(replica);
        self.push_audit(replica);
        self.offer_roster(replica);
    }

    /// The hub: sends the roster if the van's differs from the current one.
    fn offer_roster(&mut self, replica: &mut impl Replica) {
        if self.role == Role::Hub
            && self.version >= AUDIT_VERSION
            && let Some((digest, members)) = replica.roster_update()
        {
            self.queue(Message::Roster { digest, members });
        }
    }

    /// The van: sends the next batch of its audit log the hub has not confirmed, one batch
    /// in flight at a time. Nothing when the log has not grown, so an idle reconnect stays
    /// one round trip.
    fn push_audit(&mut self, replica: &mut impl Replica) {
        if self.role != Role::Van || self.version < AUDIT_VERSION || self.audit_waiting || self.audit_stopped {
            return;
        }
        let Some(acked) = self.audit_acked.or_else(|| replica.audit_acked()) else { return };
        self.audit_acked = Some(acked);
        if let Some((entries, head)) = replica.audit_batch(acked, AUDIT_BATCH) {
            self.audit_waiting = true;
            self.queue(Message::AuditBatch { first_seq: acked + 1, entries, head });
        }
    }

    fn offer_early_changes(&mut self, replica: &mut impl Replica) {
        for doc in std::mem::take(&mut self.early_changes) {
            self.sync_doc(doc, replica);
        }
    }

    fn offer_blobs(&mut self, replica: &impl Replica) {
        for (sha256, size, priority) in replica.blobs() {
            self.queue(Message::BlobOffer { sha256, size, priority });
        }
    }

    fn sync_doc(&mut self, doc: DocId, replica: &mut impl Replica) {
        let mut state = self.states.remove(&doc).unwrap_or_else(|| replica.sync_state(doc));
        if let Some(msg) = replica.generate(doc, &mut state) {
            let priority = replica.priority(doc);
            self.queue(Message::Doc { doc, priority, sync: msg.encode() });
        }
        replica.save_sync_state(doc, &state);
        self.states.insert(doc, state);
    }

    fn queue(&mut self, msg: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outbox.push(Reverse((msg.priority(), seq, Queued(msg))));
    }
}

/// Digest of a document's heads (sorted): equal on both sides exactly when they agree.
fn heads_digest(heads: &[automerge::ChangeHash]) -> [u8; 32] {
    let mut sorted: Vec<&automerge::ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for head in sorted {
        h.update(head.0);
    }
    h.finalize().into()
}

/// Digest of a whole scope: every document and its heads.
fn scope_digest(replica: &impl Replica) -> [u8; 32] {
    let mut docs = replica.scope_heads();
    docs.sort();
    let mut h = Sha256::new();
    h.update(b"medvan-scope-v1");
    for (doc, heads) in docs {
        h.update(doc.0);
        h.update(heads_digest(&heads));
    }
    // Blobs count too: a van whose image has not reached the hub is not in sync.
    let mut blobs: Vec<[u8; 32]> = replica.blobs().into_iter().map(|(sha, _, _)| sha).collect();
    blobs.sort();
    for sha in blobs {
        h.update(sha);
    }
    h.finalize().into()
}

fn inventory(replica: &impl Replica) -> Message {
    let mut docs: Vec<(DocId, [u8; 32])> =
        replica.scope_heads().into_iter().map(|(d, heads)| (d, heads_digest(&heads))).collect();
    docs.sort();
    Message::Inventory { docs }
}

fn name(msg: &Message) -> &'static str {
    match msg {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Refused { .. } => "Refused",
        Message::Inventory { .. } => "Inventory",
        Message::Doc { .. } => "Doc",
        Message::DocRefused { .. } => "DocRefused",
        Message::BlobOffer { .. } => "BlobOffer",
        Message::BlobWant { .. } => "BlobWant",
        Message::BlobChunk { .. } => "BlobChunk",
        Message::BlobHave { .. } => "BlobHave",
        Message::AuditBatch { .. } => "AuditBatch",
        Message::AuditAck { .. } => "AuditAck",
        Message::AuditRefused { .. } => "AuditRefused",
        Message::Roster { .. } => "Roster",
        Message::RosterAck { .. } => "RosterAck",
        Message::Position(_) => "Position",
        Message::CallTicketRequest { .. } => "CallTicketRequest",
        Message::CallTicket { .. } => "CallTicket",
    }
}
