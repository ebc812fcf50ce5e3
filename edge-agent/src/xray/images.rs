//! From the frame the detector returned to the images in the case: the windowed preview
//! first (small, it travels ahead of the full image), then the DICOM object; both stored as
//! encrypted, content-addressed blobs of the case. Attaching them is the caller's, in the
//! same change as the exposure record.

use std::time::{Duration, Instant};

use case_model::{CaseView, EditContext};
use case_store::Store;

/// What an exposure's images are of and how they were taken.
#[derive(Debug, Clone)]
pub struct Exposure<'a> {
    /// The case (for the patient and case identity in the DICOM object).
    pub case: &'a CaseView,
    /// Who exposed.
    pub operator: &'a str,
    /// Body part, projection, side.
    pub view: imaging::View,
    /// kV, mAs, time, dose, date and time.
    pub acquisition: imaging::Acquisition,
    /// The series (one per exposure) and the image.
    pub series_uuid: u128,
    /// The image's UUID.
    pub instance_uuid: u128,
}

/// The stored images.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The preview's hash and size.
    pub preview: (String, u64),
    /// The DICOM object's hash and size.
    pub dicom: (String, u64),
    /// The image's SOP Instance UID.
    pub sop_instance_uid: String,
    /// From the frame in hand to the preview stored.
    pub preview_after: Duration,
    /// From the frame in hand to the DICOM object stored.
    pub dicom_after: Duration,
}

/// Makes and stores the preview, then the DICOM object.
pub fn store(store: &Store, ctx: &EditContext, frame: &imaging::Frame, x: &Exposure<'_>) -> Result<Stored, String> {
    let start = Instant::now();
    let case_id = x.case.id;
    let image = imaging::present(frame).map_err(|e| e.to_string())?;
    let preview = imaging::preview(&image, 1024).map_err(|e| e.to_string())?;
    let p = store
        .put_blob(ctx, case_id, &mut preview.as_slice(), "image/png")
        .map_err(|e| format!("the preview could not be stored: {e}"))?;
    let preview_after = start.elapsed();
    let uids = imaging::Uids {
        study: super::study_uid(case_id),
        series: imaging::uid_from_uuid(x.series_uuid),
        instance: imaging::uid_from_uuid(x.instance_uuid),
    };
    let subject = super::subject(x.case, x.operator);
    let dicom = imaging::dicom(&image, frame, &subject, x.view, &x.acquisition, &uids).map_err(|e| e.to_string())?;
    let d = store
        .put_blob(ctx, case_id, &mut dicom.as_slice(), "application/dicom")
        .map_err(|e| format!("the DICOM object could not be stored: {e}"))?;
    Ok(Stored {
        preview: (p.sha256, p.size),
        dicom: (d.sha256, d.size),
        sop_instance_uid: uids.instance,
        preview_after,
        dicom_after: start.elapsed(),
    })
}
