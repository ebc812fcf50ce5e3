//! Consult recordings: each finished segment of a call's recording is sealed into its case
//! as an encrypted attachment (`video_segment`, synced after everything else) and the plain
//! file deleted. Segments are written to a folder in memory (a tmpfs), so a recording is
//! never on the van's disk unencrypted.

use std::path::Path;

use case_model::codes::AttachmentKind;
use case_model::edit::AttachmentInput;
use case_model::{CaseId, Edit, EditContext};
use case_store::Store;

/// The media type of a segment (Matroska: H.264 and Opus).
pub const SEGMENT_MEDIA_TYPE: &str = "video/x-matroska";

/// Seals the segment at `path` into `case` and deletes the file. Returns the blob's hash.
pub fn ingest(store: &Store, ctx: &EditContext, case: CaseId, path: &Path, label: &str) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let blob = store.put_blob(ctx, case, &mut file, SEGMENT_MEDIA_TYPE)?;
    let attach = Edit::AddAttachment(AttachmentInput {
        sha256: blob.sha256.clone(),
        kind: AttachmentKind::VideoSegment,
        media_type: SEGMENT_MEDIA_TYPE.to_owned(),
        size: blob.size,
        label: Some(label.to_owned()),
    });
    store.edit_case(ctx, case, &[attach])?;
    // Stored durably and encrypted: only now does the plain copy go.
    std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("sealed, but cannot delete {}: {e}", path.display()))?;
    Ok(blob.sha256)
}
