//! The protocol's messages. These are the wire format: only they derive `Serialize`.

use serde::{Deserialize, Serialize};

/// A document (case) id: the 16 bytes of its UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub [u8; 16]);

/// How urgent a document's traffic is. Lower sorts first: emergency alerts and case
/// documents go before X-ray previews, previews before full images, images before video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Handshake and inventory: tiny, and everything waits on them.
    Control,
    /// Emergency alerts.
    Urgent,
    /// Case documents.
    Case,
    /// X-ray previews.
    Preview,
    /// Full-resolution images.
    FullImage,
    /// Video recordings.
    Video,
}

/// Why a session or a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No protocol version in common.
    IncompatibleVersion,
    /// The peer may not sync this document.
    NotAuthorised,
    /// The peer sent something malformed.
    Malformed,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// The van's opening.
    Hello {
        /// Oldest version the van speaks.
        min_version: u16,
        /// Newest version the van speaks.
        max_version: u16,
        /// Digest of the van's whole scope.
        scope_digest: [u8; 32],
    },
    /// The hub's answer to a compatible hello.
    Welcome {
        /// The version both will use.
        version: u16,
        /// Whether the scope digests matched: nothing to do.
        in_sync: bool,
    },
    /// The session is refused; the connection should close.
    Refused {
        /// Why.
        reason: RefusalReason,
        /// What to do about it, for a person.
        detail: String,
    },
    /// A digest of each document's heads on the sender's side.
    Inventory {
        /// `(document, heads digest)`, sorted by document.
        docs: Vec<(DocId, [u8; 32])>,
    },
    /// An Automerge sync message for one document.
    Doc {
        /// The document.
        doc: DocId,
        /// Its priority on the sender's side.
        priority: Priority,
        /// The encoded Automerge sync message.
        sync: Vec<u8>,
    },
    /// The sender holds a blob (an attachment of a document in scope) the receiver may lack.
    BlobOffer {
        /// SHA-256 of the blob's content.
        sha256: [u8; 32],
        /// Its size in bytes.
        size: u64,
        /// Its priority on the sender's side.
        priority: Priority,
    },
    /// The receiver wants the blob from this offset on (what it already holds, durably).
    BlobWant {
        /// The blob.
        sha256: [u8; 32],
        /// First byte wanted.
        from: u64,
    },
    /// A piece of a blob.
    BlobChunk {
        /// The blob.
        sha256: [u8; 32],
        /// Offset of `data` in the blob.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The receiver holds the whole blob and verified its hash.
    BlobHave {
        /// The blob.
        sha256: [u8; 32],
    },
    /// The receiver will not accept changes to this document.
    DocRefused {
        /// The document.
        doc: DocId,
        /// Why.
        reason: RefusalReason,
        /// What to do about it, for a person.
        detail: String,
    },
    /// Van to hub (version 2 on): entries of the van's audit log from `first_seq`, and the
    /// signed tree head at the last of them.
    AuditBatch {
        /// The position of the first entry.
        first_seq: u64,
        /// The entries, in order.
        entries: Vec<AuditRecord>,
        /// The signed head after them.
        head: SignedHead,
    },
    /// Hub to van: the hub holds the van's log up to this size.
    AuditAck {
        /// Entries held.
        size: u64,
    },
    /// Hub to van (version 2 on): the crew allowed on the van, whole, when it changed since
    /// the van last confirmed it.
    Roster {
        /// Digest of the roster, for the confirmation.
        digest: [u8; 32],
        /// The members.
        members: Vec<CrewMember>,
    },
    /// Van to hub: the roster with this digest is stored.
    RosterAck {
        /// The roster's digest.
        digest: [u8; 32],
    },
    /// Hub to van: the batch does not extend what the hub holds of the van's log (an entry
    /// changed, removed or reordered, or a tail cut after a head was signed). The hub has
    /// raised an alarm; the van stops sending its log this session.
    AuditRefused {
        /// What the hub found.
        detail: String,
    },
    /// Van to hub (version 3 on): where the van is now. Not stored by the protocol: the
    /// newest replaces the last.
    Position(PositionReport),
    /// Van to hub (version 4 on): a ticket to publish the case's live call, asked when the
    /// crew starts a video consult.
    CallTicketRequest {
        /// The case.
        doc: DocId,
    },
    /// Hub to van: the ticket, or why there is none.
    CallTicket {
        /// The case.
        doc: DocId,
        /// The ticket, or why the hub gave none (for a person).
        grant: Result<CallGrant, String>,
    },
}

/// A ticket to a case's live call: a bearer token the hub's call endpoints (WHIP, WHEP)
/// take for that case alone, briefly.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallGrant {
    /// The bearer token.
    pub token: String,
    /// When it stops being accepted (seconds since the epoch, the hub's clock).
    pub expires_at: i64,
}

impl std::fmt::Debug for CallGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer token stays out of logs.
        f.debug_struct("CallGrant").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// Where a van is, from its GPS receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionReport {
    /// When the fix was taken (ms since the epoch, GPS time).
    pub at_ms: i64,
    /// Latitude, 1e-7 degrees.
    pub lat_e7: i32,
    /// Longitude, 1e-7 degrees.
    pub lon_e7: i32,
    /// 1-sigma horizontal accuracy, decimetres.
    pub accuracy_dm: u32,
    /// Speed over ground, cm/s.
    pub speed_cms: Option<u32>,
    /// Course over ground, hundredths of a degree.
    pub course_cdeg: Option<u16>,
    /// The case the crew is working, if any.
    pub active_case: Option<DocId>,
}

/// One audit log entry as the van keeps it, for the hub's copy. The hub recomputes `hash`
/// from the rest and checks that `prev` is the entry before's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the van's log, from 1.
    pub seq: u64,
    /// When (ms since the epoch, the van's clock).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which case.
    pub case_id: Option<String>,
    /// `allowed` or `refused`.
    pub outcome: String,
    /// Details.
    pub detail: String,
    /// The previous entry's hash.
    pub prev: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

/// A signed tree head of a van's audit log: its size and Merkle root (RFC 6962 over the
/// entries' hashes), signed by the van's device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Entries covered.
    pub size: u64,
    /// The Merkle root of the first `size` entries.
    pub root: [u8; 32],
    /// The van's signature (ECDSA P-256, ASN.1) over the head's signing bytes.
    pub signature: Vec<u8>,
}

/// A crew member allowed on the van: who, in which roles, and the verifier of their PIN
/// (an argon2id PHC string; never the PIN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrewMember {
    /// The user name.
    pub username: String,
    /// Roles in the organisation.
    pub roles: Vec<String>,
    /// The PIN's verifier.
    pub pin_verifier: String,
}

impl Message {
    /// The priority the message is sent with.
    pub fn priority(&self) -> Priority {
        match self {
            Message::Doc { priority, .. } | Message::BlobOffer { priority, .. } => *priority,
            // Geofence alerts hang on it.
            Message::Position(_) => Priority::Urgent,
            _ => Priority::Control,
        }
    }
}
