//! Errors of the case model: every variant says what was wrong and what to do.

use crate::time::Timestamp;

/// Why an edit was refused. Nothing of a refused batch is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// A number outside the range its NEMSIS element allows.
    #[error("{field} ({element}) must be between {min} and {max}; got {value}")]
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
    #[error("{field} ({element}): {reason}")]
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
    /// An empty batch.
    #[error("no edits were given")]
    Empty,
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
    #[error("{0} change(s) of this case depend on changes that are missing from storage")]
    MissingDependencies(usize),
}
