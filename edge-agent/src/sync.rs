//! The van's side of sync: the protocol's [`Replica`] over the case store.
//!
//! Sync states are kept in memory during a session and written to the store in one batch
//! by [`StoreReplica::flush`] (losing them costs bytes, never data). Every change received
//! is durable before the protocol acknowledges it, as with any edit.

use std::collections::BTreeMap;

use automerge::sync;
use case_model::{CaseId, EditContext, UserId};
use case_store::{Store, StoreError};
use sync_proto::{DocId, Priority, RefusalReason, Replica, ReplicaRefusal};

/// A store seen by one sync peer.
#[derive(Debug)]
pub struct StoreReplica {
    store: Store,
    peer: String,
    /// The acting user recorded on changes received from the peer.
    actor: UserId,
    pending: BTreeMap<DocId, Vec<u8>>,
}

impl StoreReplica {
    /// The store as the peer named `peer` syncs with it.
    pub fn new(store: Store, peer: &str) -> anyhow::Result<StoreReplica> {
        let actor = UserId::parse(&format!("sync:{peer}"))?;
        Ok(StoreReplica { store, peer: peer.to_owned(), actor, pending: BTreeMap::new() })
    }

    /// Writes the session's sync states to the store.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let states = std::mem::take(&mut self.pending).into_iter().map(|(d, s)| (CaseId::from_bytes(d.0), s)).collect();
        self.store.save_sync_states(&self.peer, states)
    }

    fn ctx(&self) -> EditContext {
        EditContext { user: self.actor.clone(), now: crate::api::now() }
    }
}

fn case(doc: DocId) -> CaseId {
    CaseId::from_bytes(doc.0)
}

impl Replica for StoreReplica {
    fn scope(&self) -> Vec<DocId> {
        match self.store.case_ids() {
            Ok(ids) => ids.into_iter().map(|id| DocId(*id.as_bytes())).collect(),
            Err(e) => {
                tracing::error!(error = %e, "sync: could not list cases");
                Vec::new()
            }
        }
    }

    fn heads(&self, doc: DocId) -> Vec<automerge::ChangeHash> {
        let mut heads = self.store.heads(case(doc)).unwrap_or_default();
        heads.sort();
        heads
    }

    fn priority(&self, _doc: DocId) -> Priority {
        Priority::Case
    }

    fn sync_state(&mut self, doc: DocId) -> sync::State {
        let stored = match self.pending.get(&doc) {
            Some(s) => Some(s.clone()),
            None => self.store.sync_state(&self.peer, case(doc)).ok().flatten(),
        };
        stored.and_then(|b| sync::State::decode(&b).ok()).unwrap_or_default()
    }

    fn save_sync_state(&mut self, doc: DocId, state: &sync::State) {
        self.pending.insert(doc, state.encode());
    }

    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        match self.store.sync_generate(case(doc), state) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(case = %case(doc), error = %e, "sync: could not prepare a case");
                None
            }
        }
    }

    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        let ctx = self.ctx();
        self.store
            .sync_receive(&ctx, case(doc), state, msg)
            .map(|_| ())
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }
}
