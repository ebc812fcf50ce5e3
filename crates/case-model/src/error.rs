//! Errors of the case model: every variant says what was wrong and what to do.

use crate::time::Timestamp;

/// Why an edit was refused. Nothing of a refused batch is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// A number outside the range its NEMSIS element allows.
    #[error("{field}{} must be between {min} and {max}; got {value}", element_suffix(element))]
    OutOfRange {
        /// Our field name.
        field: String,
        /// The NEMSIS element.
        element: &'static str,
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
        /// The value refused.
        value: f64,
    },
    /// A value of the wrong shape (bad code, bad date, text too long...).
    #[error("{field}{}: {reason}", element_suffix(element))]
    Invalid {
        /// Our field name.
        field: String,
        /// The NEMSIS element.
        element: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The case is closed: clinical records are corrected by addenda, never by editing.
    #[error("the case was closed at {closed_at}; record the correction as an addendum instead")]
    CaseClosed {
        /// When it was closed.
        closed_at: Timestamp,
    },
    /// An edit named an item (a vital sign entry, an allergy...) the case does not hold.
    #[error("this case has no {kind} with id {id:?}")]
    UnknownItem {
        /// Which list was searched.
        kind: &'static str,
        /// The id given.
        id: String,
    },
    /// A conflict resolution named a field that is not in conflict (perhaps someone resolved it first).
    #[error("{path} is not in conflict; reload the case and check its current value")]
    NotInConflict {
        /// The path given.
        path: String,
    },
    /// A conflict resolution for a field we cannot validate picked a value that is not one of the conflicting values.
    #[error("{path}: choose one of the conflicting values: {choices}")]
    NotAChoice {
        /// The path given.
        path: String,
        /// The values that may be chosen, as JSON.
        choices: String,
    },
    /// The document was written by a newer version of Medvan.
    #[error(
        "this case uses schema version {found}, newer than this software understands ({supported}); update Medvan before editing it"
    )]
    NewerSchema {
        /// Version found in the document.
        found: u64,
        /// Newest version this build understands.
        supported: u64,
    },
    /// The document uses an older schema and must be migrated before it is edited.
    #[error(
        "this case uses schema version {found}; it must be migrated to version {current} before it is edited (the store does this when it loads a case)"
    )]
    NeedsMigration {
        /// Version found in the document.
        found: u64,
        /// The version this build writes.
        current: u64,
    },
    /// The case document is malformed in a way validation cannot explain: a bug or damage.
    #[error("the case document could not be updated ({0}); nothing was changed")]
    Internal(String),
    /// Closing a case that still has conflicts.
    #[error("the case has {0} unresolved conflict(s); resolve them before closing it")]
    UnresolvedConflicts(usize),
    /// An empty batch.
    #[error("no edits were given")]
    Empty,
}

impl EditError {
    /// The field the error is about, if any: what an audit entry records of a refusal
    /// (the refused value itself may be patient data and stays out of the log).
    pub fn field(&self) -> Option<&str> {
        match self {
            EditError::OutOfRange { field, .. } | EditError::Invalid { field, .. } => Some(field),
            EditError::NotInConflict { path } | EditError::NotAChoice { path, .. } => Some(path),
            _ => None,
        }
    }

    /// A short name of the kind of refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            EditError::OutOfRange { .. } => "out_of_range",
            EditError::Invalid { .. } => "invalid",
            EditError::CaseClosed { .. } => "case_closed",
            EditError::UnknownItem { .. } => "unknown_item",
            EditError::NotInConflict { .. } => "not_in_conflict",
            EditError::NotAChoice { .. } => "not_a_choice",
            EditError::NewerSchema { .. } => "newer_schema",
            EditError::NeedsMigration { .. } => "needs_migration",
            EditError::Internal(_) => "internal",
            EditError::UnresolvedConflicts(_) => "unresolved_conflicts",
            EditError::Empty => "empty",
        }
    }
}

fn element_suffix(element: &str) -> String {
    if element.is_empty() { String::new() } else { format!(" ({element})") }
}

/// An edit in a batch was refused; `index` says which (counting from 0).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("edit {index}: {error}")]
pub struct BatchError {
    /// Position of the refused edit in the batch.
    pub index: usize,
    /// Why it was refused.
    #[source]
    pub error: EditError,
}

/// Why stored bytes could not be read as a case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Automerge could not decode the bytes.
    #[error("the case document is damaged and cannot be decoded: {0}")]
    Decode(#[from] automerge::AutomergeError),
    /// The bytes decode, but are not a Medvan case (identity missing).
    #[error("the document is not a Medvan case: {0}")]
    NotACase(&'static str),
    /// Changes were loaded whose dependencies are missing, so some edits cannot be shown.
    #[error(
        "{0} change(s) of this case depend on changes that are missing from storage; sync the case from the hub to recover them"
    )]
    MissingDependencies(usize),
    /// One stored or received change does not decode.
    #[error("change {index} of this case is damaged ({reason}); sync the case from the hub to recover it")]
    BadChange {
        /// Its position in the list given.
        index: usize,
        /// What the decoder said.
        reason: String,
    },
}
