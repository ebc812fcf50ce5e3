//! Where things live in the case document, and small helpers to reach them.
//!
//! Every container (map, list, text) is created once, in the case's first change. Two
//! replicas therefore never create the same container concurrently, which would make one of
//! them, and everything written into it, lose to the other.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value};

use crate::fields::FieldValue;
use crate::ids::UserId;
use crate::time::Timestamp;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u64 = 2;

pub(crate) const SCHEMA: &str = "schema";
pub(crate) const CASE: &str = "case";
pub(crate) const NARRATIVE: &str = "narrative";
pub(crate) const ASSESSMENT: &str = "assessment";

/// Maps under the root, and maps nested in them.
pub(crate) const MAPS: &[&[&str]] =
    &[&["case"], &["response"], &["patient"], &["patient", "insurance"], &["situation"]];
/// Lists of items, by path.
pub(crate) const LISTS: &[&[&str]] = &[
    &["timeline"],
    &["patient", "allergies"],
    &["patient", "medications"],
    &["patient", "history"],
    &["vitals"],
    &["procedures"],
    &["medications_given"],
    &["attachments"],
    &["consults"],
    &["notes"],
    &["prescriptions"],
    &["chat"],
    &["addenda"],
    &["resolutions"],
    &["track"],
];
/// Text objects.
pub(crate) const TEXTS: &[&str] = &[NARRATIVE, ASSESSMENT];

/// Creates every container of a new case.
pub(crate) fn create_containers(tx: &mut impl Transactable) -> Result<(), automerge::AutomergeError> {
    for path in MAPS {
        let parent =
            walk_maps(tx, &path[..path.len() - 1]).ok_or(automerge::AutomergeError::InvalidOp(ObjType::Map))?;
        tx.put_object(&parent, path[path.len() - 1], ObjType::Map)?;
    }
    for path in LISTS {
        let parent =
            walk_maps(tx, &path[..path.len() - 1]).ok_or(automerge::AutomergeError::InvalidOp(ObjType::Map))?;
        tx.put_object(&parent, path[path.len() - 1], ObjType::List)?;
    }
    for name in TEXTS {
        tx.put_object(automerge::ROOT, *name, ObjType::Text)?;
    }
    Ok(())
}

/// Follows map keys from the root. Returns `None` if a step is missing or not a map.
pub(crate) fn walk_maps(doc: &impl ReadDoc, path: &[&str]) -> Option<ObjId> {
    let mut obj = automerge::ROOT;
    for key in path {
        match doc.get(&obj, *key).ok()?? {
            (Value::Object(ObjType::Map), id) => obj = id,
            _ => return None,
        }
    }
    Some(obj)
}

/// The object at `path` whose last step may be a list or text.
pub(crate) fn object(doc: &impl ReadDoc, path: &[&str]) -> Option<ObjId> {
    let (last, parents) = path.split_last()?;
    let parent = walk_maps(doc, parents)?;
    match doc.get(&parent, *last).ok()?? {
        (Value::Object(_), id) => Some(id),
        _ => None,
    }
}

/// Writes a field record `{v, by, at}` under `key` of `obj`.
pub(crate) fn put_field(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    value: &FieldValue,
    by: &UserId,
    at: Timestamp,
) -> Result<(), automerge::AutomergeError> {
    let rec = tx.put_object(obj, key, ObjType::Map)?;
    tx.put(&rec, "v", to_scalar(value))?;
    tx.put(&rec, "by", by.as_str())?;
    tx.put(&rec, "at", at.unix_millis())?;
    Ok(())
}

/// A field record as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldRecord {
    pub(crate) value: FieldValue,
    pub(crate) by: String,
    pub(crate) at: Timestamp,
}

/// Reads a field record object, if `rec` is one.
pub(crate) fn read_field(doc: &impl ReadDoc, rec: &ObjId) -> Option<FieldRecord> {
    let value = match doc.get(rec, "v").ok()?? {
        (Value::Scalar(s), _) => from_scalar(&s),
        _ => return None,
    };
    Some(FieldRecord {
        value,
        by: get_str(doc, rec, "by").unwrap_or_default(),
        at: Timestamp::from_unix_millis(get_i64(doc, rec, "at").unwrap_or(0)),
    })
}

/// Reads the winning field record at `obj[key]`.
pub(crate) fn field_at(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<FieldRecord> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(ObjType::Map), rec) => read_field(doc, &rec),
        _ => None,
    }
}

pub(crate) fn to_scalar(v: &FieldValue) -> ScalarValue {
    match v {
        FieldValue::Null => ScalarValue::Null,
        FieldValue::Bool(b) => ScalarValue::Boolean(*b),
        FieldValue::Int(i) => ScalarValue::Int(*i),
        FieldValue::Float(f) => ScalarValue::F64(*f),
        FieldValue::Text(s) => ScalarValue::Str(s.as_str().into()),
    }
}

pub(crate) fn from_scalar(s: &ScalarValue) -> FieldValue {
    match s {
        ScalarValue::Boolean(b) => FieldValue::Bool(*b),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => FieldValue::Int(*i),
        ScalarValue::Uint(u) => FieldValue::Int(*u as i64),
        ScalarValue::F64(f) => FieldValue::Float(*f),
        ScalarValue::Str(s) => FieldValue::Text(s.to_string()),
        _ => FieldValue::Null,
    }
}

pub(crate) fn get_str(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

pub(crate) fn get_i64(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<i64> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Some(*i),
            ScalarValue::Uint(u) => Some(*u as i64),
            _ => None,
        },
        _ => None,
    }
}

/// The items of a list, with their ids (the Automerge object id of each item, which is
/// unique across all replicas).
pub(crate) fn items(doc: &impl ReadDoc, list: &ObjId) -> Vec<(String, ObjId)> {
    doc.list_range(list, ..)
        .filter(|item| matches!(item.value, automerge::ValueRef::Object(ObjType::Map)))
        .map(|item| {
            let id = item.id();
            (id.to_string(), id)
        })
        .collect()
}
