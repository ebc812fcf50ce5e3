//! Conflicts: shown, never silently resolved.
//!
//! Automerge keeps every value written concurrently to the same key and picks a
//! deterministic winner. For a clinical record that is not enough: a winner chosen by actor
//! id could drop a recorded allergy. So every key holding more than one distinct value is
//! reported with all its values, who wrote each and when, until a person resolves it.
//!
//! One conflict is semantic rather than structural: "no known allergies" standing while an
//! allergy is recorded (which a list would happily merge) is reported as well.

use automerge::transaction::Transaction;
use automerge::{ObjId, ObjType, ReadDoc, Value, ValueRef};
use serde::{Deserialize, Serialize};

use crate::apply::{self, active_allergies};
use crate::codes::AllergyStatus;
use crate::edit::EditContext;
use crate::error::EditError;
use crate::fields::{FieldName, FieldValue};
use crate::layout::{self, FieldRecord};
use crate::time::Timestamp;

/// A field with more than one standing value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// The field's path; item fields name the item: `patient.allergies[12@ab..].retracted`.
    pub path: String,
    /// The NEMSIS element, where the field has one.
    pub nemsis_element: Option<String>,
    /// Why this is a conflict.
    pub kind: ConflictKind,
    /// The standing values, oldest first.
    pub values: Vec<ConflictValue>,
}

/// Why a conflict is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Two or more people set the field concurrently.
    Concurrent,
    /// The values merged, but contradict each other (no known allergies, yet an allergy).
    Contradiction,
}

/// One of the values of a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    /// The value.
    pub value: serde_json::Value,
    /// Who wrote it.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// What else a person needs to judge it (for a contradiction, the allergy recorded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// All conflicts in a document.
pub(crate) fn find(doc: &impl ReadDoc) -> Vec<Conflict> {
    let mut out = Vec::new();
    walk_map(doc, &automerge::ROOT, "", &mut out);
    allergy_contradiction(doc, &mut out);
    out
}

/// One pass over each map with Automerge's own conflict flags; `get_all` only where a key
/// actually holds several values.
fn walk_map(doc: &impl ReadDoc, obj: &ObjId, prefix: &str, out: &mut Vec<Conflict>) {
    for item in doc.map_range(obj, ..) {
        let join = |key: &str| {
            if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
        };
        if item.conflict {
            let path = join(&item.key);
            if let Ok(all) = doc.get_all(obj, item.key.as_ref())
                && let Some(c) = conflict_of(doc, &path, &all)
            {
                out.push(c);
            }
            continue;
        }
        match item.value {
            ValueRef::Object(ObjType::Map) => walk_map(doc, &item.id(), &join(&item.key), out),
            ValueRef::Object(ObjType::List) => {
                let list_path = join(&item.key);
                for element in doc.list_range(item.id(), ..) {
                    if let ValueRef::Object(ObjType::Map) = element.value {
                        let id = element.id();
                        walk_map(doc, &id, &format!("{list_path}[{id}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn conflict_of(doc: &impl ReadDoc, path: &str, all: &[(Value<'_>, ObjId)]) -> Option<Conflict> {
    let mut values: Vec<ConflictValue> = Vec::new();
    for (value, id) in all {
        let cv = match value {
            Value::Object(ObjType::Map) => {
                let rec = layout::read_field(doc, id)?;
                record_value(path, &rec, None)
            }
            Value::Scalar(s) => {
                let (by, at) = author_of(doc, id);
                ConflictValue { value: layout::from_scalar(s).to_json(), by, at, detail: None }
            }
            // Containers are created once per case, so two of them under one key means the
            // document was built by other software; show the winner only.
            _ => return None,
        };
        values.push(cv);
    }
    values.sort_by(|a, b| (a.at, &a.by).cmp(&(b.at, &b.by)));
    // The same value written twice (two devices running the same migration, say) is not a conflict.
    let mut distinct: Vec<&serde_json::Value> = values.iter().map(|v| &v.value).collect();
    distinct.dedup();
    distinct.sort_by_key(|v| v.to_string());
    distinct.dedup();
    if distinct.len() < 2 {
        return None;
    }
    Some(Conflict {
        path: path.to_owned(),
        nemsis_element: FieldName::parse(path).map(|f| f.nemsis_element().to_owned()),
        kind: ConflictKind::Concurrent,
        values,
    })
}

fn record_value(path: &str, rec: &FieldRecord, detail: Option<String>) -> ConflictValue {
    let value = match (FieldName::parse(path), &rec.value) {
        (Some(f), FieldValue::Int(ms)) if f.is_date_time() => Timestamp::from_unix_millis(*ms).to_string().into(),
        (_, v) => v.to_json(),
    };
    ConflictValue { value, by: rec.by.clone(), at: rec.at, detail }
}

/// "No known allergies" standing while allergies are recorded.
fn allergy_contradiction(doc: &impl ReadDoc, out: &mut Vec<Conflict>) {
    let path = FieldName::AllergyStatus.path();
    if out.iter().any(|c| c.path == path) {
        return;
    }
    let Some(patient) = layout::walk_maps(doc, &["patient"]) else {
        return;
    };
    let Some(status) = layout::field_at(doc, &patient, "allergy_status") else {
        return;
    };
    if status.value != FieldValue::Text(AllergyStatus::NoKnownAllergies.as_str().into()) {
        return;
    }
    let active = active_allergies(doc);
    if active.is_empty() {
        return;
    }
    let mut values = vec![record_value(path, &status, None)];
    for (_, obj) in &active {
        values.push(ConflictValue {
            value: AllergyStatus::Known.as_str().into(),
            by: layout::get_str(doc, obj, "by").unwrap_or_default(),
            at: Timestamp::from_unix_millis(layout::get_i64(doc, obj, "at").unwrap_or(0)),
            detail: layout::get_str(doc, obj, "substance").map(|s| format!("allergy recorded: {s}")),
        });
    }
    values.sort_by(|a, b| (a.at, &a.by).cmp(&(b.at, &b.by)));
    out.push(Conflict {
        path: path.to_owned(),
        nemsis_element: Some("eHistory.06".into()),
        kind: ConflictKind::Contradiction,
        values,
    });
}

/// Plain scalars are written once, with their item, through this crate; two standing values
/// mean the document was edited by other software, which left no author.
fn author_of(_doc: &impl ReadDoc, _id: &ObjId) -> (String, Timestamp) {
    ("(unknown: not written through Medvan)".into(), Timestamp::from_unix_millis(0))
}

/// Resolves the conflict at `path` with `value`.
pub(crate) fn resolve(
    tx: &mut Transaction<'_>,
    ctx: &EditContext,
    path: &str,
    value: &FieldValue,
) -> Result<(), EditError> {
    let conflict = find(tx)
        .into_iter()
        .find(|c| c.path == path)
        .ok_or_else(|| EditError::NotInConflict { path: path.chars().take(200).collect() })?;
    let stored = match FieldName::parse(path) {
        Some(field) => field.validate(value, ctx.now)?,
        None => {
            let chosen = value.to_json();
            if !conflict.values.iter().any(|v| v.value == chosen) {
                let choices: Vec<String> = conflict.values.iter().map(|v| v.value.to_string()).collect();
                return Err(EditError::NotAChoice { path: path.into(), choices: choices.join(", ") });
            }
            value.clone()
        }
    };
    let (container, key) = locate(tx, path).ok_or_else(|| EditError::NotInConflict { path: path.into() })?;
    // A put supersedes every value standing at the key, so this ends the conflict everywhere
    // once it syncs.
    layout::put_field(tx, &container, &key, &stored, &ctx.user, ctx.now).map_err(|e| EditError::Invalid {
        field: path.into(),
        element: "",
        reason: format!("could not write the resolution: {e}"),
    })?;
    if path == FieldName::AllergyStatus.path()
        && stored == FieldValue::Text(AllergyStatus::NoKnownAllergies.as_str().into())
    {
        // The person decided that the recorded allergies were wrong: strike them through,
        // keeping them readable in the record.
        for (_, obj) in active_allergies(tx) {
            layout::put_field(
                tx,
                &obj,
                "retracted",
                &FieldValue::Text("conflict resolved: no known allergies".into()),
                &ctx.user,
                ctx.now,
            )
            .map_err(|e| EditError::Invalid { field: path.into(), element: "", reason: e.to_string() })?;
        }
    }
    let item = apply::new_item(tx, &["resolutions"], ctx)?;
    apply::put(tx, &item, "path", path)?;
    apply::put(tx, &item, "chosen", stored.to_json().to_string())?;
    let replaced = serde_json::to_string(&conflict.values).unwrap_or_default();
    apply::put(tx, &item, "replaced", replaced)?;
    Ok(())
}

/// The map and key a conflict path points at: `a.b[item].c` -> (object of item, "c").
fn locate(doc: &impl ReadDoc, path: &str) -> Option<(ObjId, String)> {
    let mut obj = automerge::ROOT;
    let mut segments = split_path(path)?;
    let last = segments.pop()?;
    let Segment::Key(last) = last else { return None };
    for seg in segments {
        obj = match seg {
            Segment::Key(k) => match doc.get(&obj, k).ok()?? {
                (Value::Object(_), id) => id,
                _ => return None,
            },
            Segment::Item(id) => layout::items(doc, &obj).into_iter().find(|(i, _)| i == id)?.1,
        };
    }
    Some((obj, last.to_owned()))
}

enum Segment<'a> {
    Key(&'a str),
    Item(&'a str),
}

fn split_path(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        match part.find('[') {
            None => out.push(Segment::Key(part)),
            Some(i) => {
                out.push(Segment::Key(&part[..i]));
                let rest = part[i + 1..].strip_suffix(']')?;
                out.push(Segment::Item(rest));
            }
        }
    }
    Some(out)
}
