//! Imaging studies on the hub: the rules above storage for DICOM objects, the same for both
//! backends. An object is filed under one organisation (the caller's, or the van's that
//! uploaded it), its bytes kept as that organisation's blob (sealed chunks), its attributes
//! sealed beside a clear index of UIDs, and linked to the organisation's case whose id its
//! Study Instance UID carries (vans make one study per case, `2.25.<case uuid>`). Nothing
//! here is reachable across organisations: every query names the caller's.

use case_model::edit::AttachmentInput;
use case_model::{CaseId, Edit, EditContext, OrgId, UserId};
use imaging::read::{self, Instance, ReadError};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use sync_proto::{BlobState, DocId};

use crate::cases::{CaseError, CaseHub, blob_key, read_blob};
use crate::storage::{DicomRow, StorageError};

/// The largest object accepted (a 43 x 43 cm panel, uncompressed, with room to spare).
pub const MAX_OBJECT: usize = 128 * 1024 * 1024;

/// Why an object was not stored: the DICOM failure reason (PS3.4 status codes, as STOW-RS
/// reports them in Failure Reason (0008,1197)) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SOP Class UID, when it could be read.
    pub sop_class: Option<String>,
    /// SOP Instance UID, when it could be read.
    pub sop_instance: Option<String>,
    /// The status code.
    pub reason: u16,
    /// In words.
    pub message: String,
}

/// Status codes used in Failure Reason.
pub mod status {
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// A different object with this SOP Instance UID is held.
    pub const DUPLICATE_INSTANCE: u16 = 0x0111;
    /// SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Out of resources (too large).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Data set does not match SOP class, or is inconsistent.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

/// An object filed (or found filed already, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filed {
    /// SOP Class UID.
    pub sop_class: String,
    /// SOP Instance UID.
    pub sop_instance: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// The case it was linked to.
    pub case_id: Option<CaseId>,
    /// Whether it was held already.
    pub already: bool,
}

/// An instance as a query sees it: the index row and its attributes.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// The index row.
    pub row: DicomRow,
    /// Its attributes, DICOM JSON.
    pub meta: Map<String, Json>,
}

fn meta_label(org: &str, sop: &str) -> Vec<u8> {
    let mut l = b"dicom-meta\0".to_vec();
    l.extend_from_slice(org.as_bytes());
    l.push(0);
    l.extend_from_slice(sop.as_bytes());
    l
}

/// The case whose id a study UID carries (`2.25.<the case's UUID as a number>`).
pub fn case_of_study(study: &str) -> Option<CaseId> {
    let n: u128 = study.strip_prefix("2.25.")?.parse().ok()?;
    Some(CaseId::from_bytes(n.to_be_bytes()))
}

fn refusal(instance: Option<&Instance>, reason: u16, message: String) -> Refusal {
    Refusal {
        sop_class: instance.map(|i| i.sop_class.clone()),
        sop_instance: instance.map(|i| i.sop_instance.clone()),
        reason,
        message,
    }
}

impl CaseHub {
    /// Files a DICOM object for `org`, sent by `actor` (a person, or `van:<org>/<van>`).
    /// `study` restricts it to one study (STOW-RS to `/studies/{study}`).
    pub fn store_dicom(
        &self,
        actor: &str,
        org: &OrgId,
        bytes: &[u8],
        study: Option<&str>,
    ) -> Result<Result<Filed, Refusal>, CaseError> {
        if bytes.len() > MAX_OBJECT {
            return Ok(Err(refusal(
                None,
                status::OUT_OF_RESOURCES,
                format!("the object is larger than {} MiB", MAX_OBJECT / (1024 * 1024)),
            )));
        }
        let normalized = match read::normalize(bytes) {
            Ok(b) => b,
            Err(e) => {
                self.audit_dicom(actor, None, audit::Outcome::Refused, format!("dicom.store refused: {e}"))?;
                return Ok(Err(refusal(None, status::CANNOT_UNDERSTAND, e.to_string())));
            }
        };
        let bytes: &[u8] = &normalized;
        let instance = match read::inspect(bytes) {
            Ok(i) => i,
            Err(e) => {
                let reason = match &e {
                    ReadError::NotAnImage(_) => status::SOP_CLASS_NOT_SUPPORTED,
                    ReadError::Missing(_) | ReadError::Inconsistent(_) => status::DATA_SET_MISMATCH,
                    _ => status::CANNOT_UNDERSTAND,
                };
                self.audit_dicom(actor, None, audit::Outcome::Refused, format!("dicom.store refused: {e}"))?;
                return Ok(Err(refusal(None, reason, e.to_string())));
            }
        };
        if let Some(s) = study
            && s != instance.study
        {
            let message =
                format!("the object belongs to study {}, not to study {s} named in the request", instance.study);
            self.audit_dicom(actor, None, audit::Outcome::Refused, format!("dicom.store refused: {message}"))?;
            return Ok(Err(refusal(Some(&instance), status::DATA_SET_MISMATCH, message)));
        }
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        // A different object under a held SOP Instance UID is refused before its bytes are
        // written (an identical one is simply there already).
        let held = self.storage().dicom_instances(org.as_str(), Some(&instance.study))?;
        if held.iter().any(|r| r.sop == instance.sop_instance && r.sha256 != sha) {
            return self.refuse_duplicate(actor, &instance);
        }
        self.put_org_blob(org.as_str(), &sha, bytes)?;
        // Linked to a case only when the case is this organisation's.
        let case_id = case_of_study(&instance.study)
            .filter(|c| matches!(self.storage().case_meta(DocId(*c.as_bytes())), Ok(Some(m)) if m.org == org.as_str()));
        let meta = serde_json::to_vec(&instance.metadata)
            .map_err(|e| CaseError::Damaged(instance.sop_instance.clone(), e.to_string()))?;
        let row = DicomRow {
            org: org.as_str().to_owned(),
            study: instance.study.clone(),
            series: instance.series.clone(),
            sop: instance.sop_instance.clone(),
            case_id: case_id.map(|c| c.to_string()),
            sha256: sha,
            size: bytes.len() as u64,
            sealed_meta: self.sealer().seal(&meta_label(org.as_str(), &instance.sop_instance), &meta),
            stored_at: crate::cases::now().unix_millis(),
        };
        let rec = audit::Record {
            at: row.stored_at,
            actor: actor.to_owned(),
            action: "dicom.store".into(),
            case_id: row.case_id.clone(),
            outcome: audit::Outcome::Allowed,
            detail: format!("study {} series {} instance {}", row.study, row.series, row.sop),
        };
        let held = self.storage().put_dicom_instance(&row, &rec)?;
        let filed = Filed {
            sop_class: instance.sop_class.clone(),
            sop_instance: instance.sop_instance.clone(),
            study: instance.study.clone(),
            series: instance.series.clone(),
            case_id,
            already: held.is_some(),
        };
        match held {
            // Another hub process filed a different object under it meanwhile.
            Some(h) if h != sha => self.refuse_duplicate(actor, &instance),
            Some(_) => Ok(Ok(filed)),
            None => {
                if let Some(case) = case_id {
                    self.attach_study(actor, org, case, &sha, bytes.len() as u64);
                }
                Ok(Ok(filed))
            }
        }
    }

    fn refuse_duplicate(&self, actor: &str, instance: &Instance) -> Result<Result<Filed, Refusal>, CaseError> {
        let message = format!("a different object with SOP Instance UID {} is already stored", instance.sop_instance);
        self.audit_dicom(actor, None, audit::Outcome::Refused, format!("dicom.store refused: {message}"))?;
        Ok(Err(refusal(Some(instance), status::DUPLICATE_INSTANCE, message)))
    }

    /// A person's upload appears in the case as an attachment (a van's is attached already).
    fn attach_study(&self, actor: &str, org: &OrgId, case: CaseId, sha: &[u8; 32], size: u64) {
        let Ok(user) = UserId::parse(actor) else { return };
        let hex = hex::encode(sha);
        if let Ok(view) = self.read_case(&user, org, case)
            && view.attachments.iter().any(|a| a.get("sha256").and_then(|s| s.as_str()) == Some(hex.as_str()))
        {
            return;
        }
        let edit = Edit::AddAttachment(AttachmentInput {
            sha256: hex,
            kind: case_model::codes::AttachmentKind::XrayStudy,
            media_type: "application/dicom".into(),
            size,
            label: Some("imported study".into()),
        });
        let ctx = EditContext { user, now: crate::cases::now() };
        if let Err(e) = self.edit_case(&ctx, org, case, &[edit]) {
            // A closed case takes no attachment; the study stays filed and linked.
            tracing::warn!(case = %case, error = %e, "a stored study could not be attached to its case");
        }
    }

    /// An organisation's instances (of one study, or all), with their attributes.
    pub fn dicom_instances(&self, org: &OrgId, study: Option<&str>) -> Result<Vec<InstanceView>, CaseError> {
        let rows = self.storage().dicom_instances(org.as_str(), study)?;
        rows.into_iter()
            .map(|row| {
                let plain = self.sealer().open(&meta_label(&row.org, &row.sop), &row.sealed_meta)?;
                let meta =
                    serde_json::from_slice(&plain).map_err(|e| CaseError::Damaged(row.sop.clone(), e.to_string()))?;
                Ok(InstanceView { row, meta })
            })
            .collect()
    }

    /// An instance's bytes.
    pub fn dicom_bytes(&self, row: &DicomRow) -> Result<Vec<u8>, CaseError> {
        Ok(read_blob(self, &row.org, &row.sha256, 0, row.size)?)
    }

    /// Audits an access to imaging data.
    pub fn audit_dicom(
        &self,
        actor: &str,
        case: Option<&str>,
        outcome: audit::Outcome,
        detail: String,
    ) -> Result<(), StorageError> {
        self.storage().audit(&audit::Record {
            at: crate::cases::now().unix_millis(),
            actor: actor.to_owned(),
            action: detail.split_whitespace().next().unwrap_or("dicom").to_owned(),
            case_id: case.map(str::to_owned),
            outcome,
            detail,
        })
    }

    /// Writes bytes as an organisation's blob (sealed chunks), unless it holds them.
    fn put_org_blob(&self, org: &str, sha: &[u8; 32], bytes: &[u8]) -> Result<(), StorageError> {
        let key = blob_key(org, sha);
        if self.storage().blob_state(&key)? == BlobState::Complete {
            return Ok(());
        }
        for (index, chunk) in bytes.chunks(sync_proto::CHUNK as usize).enumerate() {
            let sealed = self.sealer().seal_chunk(&key, index as u64, chunk);
            self.storage().put_blob_chunk(&key, index as u64, chunk.len() as u64, &sealed)?;
        }
        self.storage().complete_blob(&key, bytes.len() as u64)
    }
}
