//! The sync protocol between a van and the hub, as a sans-IO state machine.
//!
//! A [`Session`] does no I/O, reads no clock and spawns nothing. Its caller (the QUIC
//! driver, or a test harness on virtual time) feeds it the peer's messages with
//! [`Session::handle`] and sends whatever [`Session::poll_transmit`] returns, most urgent
//! first, until it returns `None`. Documents are reached through the [`Replica`] trait, so
//! the same core runs in the van (over its store) and in the hub (over its store and its
//! authorisation rules).
//!
//! # The exchange
//!
//! 1. The van opens with [`Message::Hello`]: the protocol versions it speaks and a digest of
//!    its whole scope (every document it holds with the hub, and each one's heads).
//! 2. The hub answers [`Message::Welcome`], or [`Message::Refused`] if no version is shared.
//!    If the digests match, nothing changed on either side: the session is done after this
//!    one round trip, whatever the number of documents.
//! 3. Otherwise both send an [`Message::Inventory`] (a digest of each document's heads),
//!    and run Automerge's sync protocol ([`Message::Doc`]) for the documents that differ.
//!    Sync states are persisted per peer and document by the replica, so a reconnect
//!    resumes rather than starts over.
//! 4. Blobs (X-ray images, video) follow their documents: the holder offers them, the other
//!    side asks from the byte it already holds (so a cut transfer resumes), and confirms
//!    once the content matches its hash. Pieces are sent only when nothing more urgent
//!    waits: case documents before previews, previews before full images, images before
//!    video.
//! 5. A document the receiving side will not accept (another organisation's, say) is
//!    answered with [`Message::DocRefused`]; the rest of the session goes on.
//! 6. From version 2 the van sends its audit log: entries the hub has not confirmed, in
//!    batches ([`Message::AuditBatch`]), each with the log's signed tree head at its end.
//!    The hub keeps a copy, checks each batch extends what it holds (every entry's hash, every
//!    link, the Merkle root), and confirms ([`Message::AuditAck`]); a batch that does not
//!    extend it (an entry changed or removed, a tail cut after a head was signed) is answered
//!    with [`Message::AuditRefused`] and an alarm at the hub. An idle van whose log has not
//!    grown sends nothing.
//! 7. From version 2 the hub sends the crew roster (who may log in on the van offline, with
//!    their PIN verifiers) when it changed since the van last confirmed it: as the session
//!    starts and, in a session that stays open, whenever the hub's side is told it changed
//!    ([`Session::roster_changed`]; [`Message::Roster`], [`Message::RosterAck`]).
//! 8. From version 3 the van reports where it is ([`Message::Position`],
//!    [`Session::position`]) while connected; the hub hands each report to its replica and
//!    keeps nothing of it in the session.
//! 9. From version 4 the van may ask for a ticket to a case's live call
//!    ([`Message::CallTicketRequest`], [`Session::request_call_ticket`]); the hub's replica
//!    decides ([`Replica::call_ticket`]) and the answer goes to the van's
//!    ([`Replica::receive_call_ticket`]). The van's certificate is its credential for the
//!    call's WHIP request too, through the ticket.
//!
//! Messages travel as length-prefixed frames ([`frame`]); a frame over the size limit or
//! that does not decode ends the session with an error naming the problem.

pub mod frame;

mod message;
mod session;

pub use message::{
    AuditRecord, CallGrant, CrewMember, DocId, Message, PositionReport, Priority, RefusalReason, SignedHead,
};
pub use session::{AUDIT_BATCH, BlobState, CHUNK, Event, Replica, ReplicaRefusal, Role, Session, SyncError};

/// The newest protocol version this build speaks (2: the van's audit log travels too; 3:
/// and its position; 4: and tickets to live calls).
pub const PROTOCOL_VERSION: u16 = 4;
/// The first version that carries tickets to live calls.
pub const CALL_VERSION: u16 = 4;
/// The first version that carries positions.
pub const POSITION_VERSION: u16 = 3;
/// The first version that carries audit logs.
pub const AUDIT_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
