//! The log in the shapes other systems read: JSON lines in the Elastic Common Schema (what
//! an ELK stack's Filebeat ships as they are) and FHIR R4 AuditEvent resources (what a
//! health information exchange or a FHIR server keeps). Pure functions of an entry: the
//! chain's hashes travel with each entry, so an exported copy can be checked against the
//! log it came from.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Entry, Outcome};

/// The ECS version the fields follow.
pub const ECS_VERSION: &str = "8.11.0";

/// What kind of access an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Created something.
    Create,
    /// Read or searched.
    Read,
    /// Changed something.
    Update,
    /// Removed something.
    Delete,
    /// Logged in or out, or another security event.
    Authenticate,
    /// Anything else (an administrative act).
    Other,
}

/// Classifies an action name (`case.read`, `auth.login`, `dicom.store`...).
pub fn access_of(action: &str) -> Access {
    let (area, verb) = action.split_once('.').unwrap_or(("", action));
    if area == "auth" {
        return Access::Authenticate;
    }
    match verb {
        v if v.starts_with("read") || v.starts_with("list") || v.starts_with("search") => Access::Read,
        "retrieve" | "metadata" | "export" | "verify" => Access::Read,
        v if v.starts_with("create") || v == "store" || v == "upload" => Access::Create,
        v if v.starts_with("delete") || v.starts_with("revoke") || v == "disable" => Access::Delete,
        v if v.starts_with("edit") || v.starts_with("assign") || v.starts_with("set") || v == "exposure" => {
            Access::Update
        }
        _ => Access::Other,
    }
}

fn timestamp(at_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// One entry as an ECS document (one line of the JSON lines export). `service` names the
/// system that kept the log (`medvan-hub`, `edge-agent van-12`).
pub fn ecs(entry: &Entry, service: &str) -> Value {
    let access = access_of(&entry.action);
    let category = match access {
        Access::Authenticate => json!(["authentication"]),
        Access::Other if entry.action.starts_with("user.") => json!(["iam"]),
        Access::Other => json!(["configuration"]),
        _ => json!(["database"]),
    };
    let kind = match access {
        Access::Create => "creation",
        Access::Read => "access",
        Access::Update => "change",
        Access::Delete => "deletion",
        Access::Authenticate => "start",
        Access::Other => "info",
    };
    let mut doc = json!({
        "@timestamp": timestamp(entry.at),
        "ecs": { "version": ECS_VERSION },
        "event": {
            "kind": "event",
            "category": category,
            "type": [kind],
            "action": entry.action,
            "outcome": if entry.outcome == Outcome::Allowed { "success" } else { "failure" },
            "sequence": entry.seq,
            "dataset": "medvan.audit",
        },
        "user": { "name": entry.actor },
        "service": { "name": service },
        "message": format!("{} {} {}", entry.actor, entry.action, entry.outcome.as_str()),
        "medvan": {
            "audit": { "seq": entry.seq, "hash": entry.hash, "prev": entry.prev, "detail": entry.detail },
        },
    });
    if let Some(case) = &entry.case_id {
        doc["medvan"]["case_id"] = json!(case);
    }
    doc
}

/// One entry as a FHIR R4 AuditEvent. `observer` names the system that kept the log.
pub fn fhir_audit_event(entry: &Entry, observer: &str) -> Value {
    let access = access_of(&entry.action);
    let action = match access {
        Access::Create => "C",
        Access::Read => "R",
        Access::Update => "U",
        Access::Delete => "D",
        Access::Authenticate | Access::Other => "E",
    };
    // DICOM audit event types (DCM): 110114 User Authentication, 110110 Patient Record,
    // 110100 Application Activity.
    let (code, display) = match access {
        Access::Authenticate => ("110114", "User Authentication"),
        _ if entry.case_id.is_some() => ("110110", "Patient Record"),
        _ => ("110100", "Application Activity"),
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("medvan-audit-{}", entry.seq),
        "type": { "system": "http://dicom.nema.org/resources/ontology/DCM", "code": code, "display": display },
        "subtype": [{ "system": "urn:medvan:audit-action", "code": entry.action }],
        "action": action,
        "recorded": timestamp(entry.at),
        // 0 success; 4 minor failure (a refused request).
        "outcome": if entry.outcome == Outcome::Allowed { "0" } else { "4" },
        "agent": [{
            "who": { "identifier": { "system": "urn:medvan:user", "value": entry.actor } },
            "requestor": true,
        }],
        "source": {
            "observer": { "display": observer },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }],
        },
        "entity": [{
            "what": { "identifier": { "system": "urn:medvan:audit-entry", "value": entry.hash } },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
        }],
    });
    // FHIR strings are never empty: an entry without detail has no description.
    if !entry.detail.is_empty() {
        event["entity"][0]["description"] = json!(entry.detail);
        if entry.outcome != Outcome::Allowed {
            event["outcomeDesc"] = json!(entry.detail);
        }
    }
    if let Some(case) = &entry.case_id
        && let Some(list) = event["entity"].as_array_mut()
    {
        list.push(json!({
            "what": { "identifier": { "system": "urn:medvan:case", "value": case } },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, outcome: Outcome, case: Option<&str>) -> Entry {
        Entry {
            seq: 7,
            at: 1_800_000_000_123,
            actor: "dr.ana".into(),
            action: action.into(),
            case_id: case.map(str::to_owned),
            outcome,
            detail: "fields [vitals]".into(),
            prev: "00".repeat(32),
            hash: "ab".repeat(32),
        }
    }

    #[test]
    fn actions_map_to_access_kinds() {
        assert_eq!(access_of("case.read"), Access::Read);
        assert_eq!(access_of("case.list"), Access::Read);
        assert_eq!(access_of("dicom.search"), Access::Read);
        assert_eq!(access_of("case.create"), Access::Create);
        assert_eq!(access_of("dicom.store"), Access::Create);
        assert_eq!(access_of("case.edit"), Access::Update);
        assert_eq!(access_of("auth.login"), Access::Authenticate);
        assert_eq!(access_of("user.disable"), Access::Delete);
        assert_eq!(access_of("van.enrol"), Access::Other);
    }

    #[test]
    fn ecs_and_fhir_carry_who_what_when_and_the_chain() {
        let e = entry("case.read", Outcome::Allowed, Some("0190a7c4-0000-7000-8000-000000000001"));
        let doc = ecs(&e, "medvan-hub");
        assert_eq!(doc["@timestamp"], "2027-01-15T08:00:00.123Z");
        assert_eq!(doc["event"]["outcome"], "success");
        assert_eq!(doc["event"]["type"][0], "access");
        assert_eq!(doc["user"]["name"], "dr.ana");
        assert_eq!(doc["medvan"]["audit"]["hash"], e.hash);
        let ev = fhir_audit_event(&e, "medvan-hub");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["type"]["code"], "110110");
        assert_eq!(ev["entity"][1]["role"]["code"], "1");
        let refused = fhir_audit_event(&entry("auth.login", Outcome::Refused, None), "medvan-hub");
        assert_eq!(refused["outcome"], "4");
        assert_eq!(refused["type"]["code"], "110114");
        assert_eq!(refused["action"], "E");
        assert_eq!(ecs(&entry("auth.login", Outcome::Refused, None), "x")["event"]["category"][0], "authentication");
    }
}
