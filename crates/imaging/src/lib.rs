//! From a detector frame to what a doctor reads: a DICOM Digital X-Ray object (For
//! Presentation, pixel data compressed losslessly with JPEG-LS) and a small windowed
//! preview that travels ahead of it.
//!
//! Pure functions over bytes: no files, no clock. The caller supplies the identities, the
//! time and the UIDs (see [`uid_from_uuid`]).

pub mod read;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// A raw detector frame: dose-proportional 16-bit values, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Columns.
    pub columns: u16,
    /// Rows.
    pub rows: u16,
    /// Bits used of each value (12 to 16).
    pub bits_stored: u8,
    /// Detector pixel pitch in micrometres.
    pub pixel_pitch_um: u16,
    /// The detector's serial number.
    pub detector_id: String,
    /// The pixels, `rows * columns` of them.
    pub pixels: Vec<u16>,
}

/// Who and what the image is of.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Patient id (the case's temporary id until the patient is identified).
    pub patient_id: String,
    /// Patient name, `Family^Given`, empty if unknown.
    pub patient_name: String,
    /// Birth date `YYYYMMDD`, empty if unknown.
    pub birth_date: String,
    /// `M`, `F`, `O` or empty.
    pub sex: String,
    /// The case id, as the accession number.
    pub accession: String,
    /// The organisation, as the institution.
    pub institution: String,
    /// The van, as the station name.
    pub station: String,
    /// The operator.
    pub operator: String,
}

/// Where on the body, seen from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The body part.
    pub body_part: BodyPart,
    /// The projection.
    pub projection: Projection,
    /// Which side.
    pub laterality: Laterality,
}

/// Body parts the van's unit images, with their DICOM codes (CID 4031, SNOMED CT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPart {
    /// Chest.
    Chest,
    /// Hand.
    Hand,
    /// Wrist.
    Wrist,
    /// Forearm.
    Forearm,
    /// Ankle.
    Ankle,
    /// Foot.
    Foot,
    /// Knee.
    Knee,
    /// Pelvis.
    Pelvis,
}

impl BodyPart {
    /// Body Part Examined (0018,0015), SNOMED CT code and meaning.
    pub fn codes(self) -> (&'static str, &'static str, &'static str) {
        match self {
            BodyPart::Chest => ("CHEST", "51185008", "Chest"),
            BodyPart::Hand => ("HAND", "85562004", "Hand"),
            BodyPart::Wrist => ("WRIST", "74670003", "Wrist joint"),
            BodyPart::Forearm => ("FOREARM", "14975008", "Forearm"),
            BodyPart::Ankle => ("ANKLE", "70258002", "Ankle joint"),
            BodyPart::Foot => ("FOOT", "56459004", "Foot"),
            BodyPart::Knee => ("KNEE", "72696002", "Knee"),
            BodyPart::Pelvis => ("PELVIS", "12921003", "Pelvis"),
        }
    }

    /// Every body part, in the order a menu shows them.
    pub const ALL: [BodyPart; 8] = [
        BodyPart::Chest,
        BodyPart::Hand,
        BodyPart::Wrist,
        BodyPart::Forearm,
        BodyPart::Ankle,
        BodyPart::Foot,
        BodyPart::Knee,
        BodyPart::Pelvis,
    ];

    /// The part by its Body Part Examined term (`HAND`), case-insensitive.
    pub fn parse(s: &str) -> Option<BodyPart> {
        BodyPart::ALL.into_iter().find(|b| b.codes().0.eq_ignore_ascii_case(s))
    }

    /// Whether the part has a side.
    pub fn paired(self) -> bool {
        !matches!(self, BodyPart::Chest | BodyPart::Pelvis)
    }
}

/// Projections, with their View Position and DICOM codes (CID 4010, SNOMED CT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// Antero-posterior.
    Ap,
    /// Postero-anterior.
    Pa,
    /// Lateral.
    Lateral,
    /// Oblique.
    Oblique,
}

impl Projection {
    /// View Position (0018,5101), code and meaning.
    pub fn codes(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Projection::Ap => ("AP", "399348003", "antero-posterior"),
            Projection::Pa => ("PA", "399255003", "postero-anterior"),
            Projection::Lateral => ("LL", "399198007", "lateral"),
            Projection::Oblique => ("", "399197002", "oblique"),
        }
    }
}

impl Projection {
    /// The projection by its short name: `AP`, `PA`, `LAT` (or `LL`), `OBL`, case-insensitive.
    pub fn parse(s: &str) -> Option<Projection> {
        match s.to_ascii_uppercase().as_str() {
            "AP" => Some(Projection::Ap),
            "PA" => Some(Projection::Pa),
            "LAT" | "LL" => Some(Projection::Lateral),
            "OBL" => Some(Projection::Oblique),
            _ => None,
        }
    }

    /// The short name [`Projection::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Projection::Ap => "AP",
            Projection::Pa => "PA",
            Projection::Lateral => "LAT",
            Projection::Oblique => "OBL",
        }
    }
}

/// Image laterality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Laterality {
    /// Left.
    Left,
    /// Right.
    Right,
    /// Unpaired (chest, pelvis).
    Unpaired,
}

impl Laterality {
    /// `L`, `R` or `U`, case-insensitive.
    pub fn parse(s: &str) -> Option<Laterality> {
        match s.to_ascii_uppercase().as_str() {
            "L" => Some(Laterality::Left),
            "R" => Some(Laterality::Right),
            "U" => Some(Laterality::Unpaired),
            _ => None,
        }
    }

    /// Image Laterality (0020,0062).
    pub fn as_str(self) -> &'static str {
        match self {
            Laterality::Left => "L",
            Laterality::Right => "R",
            Laterality::Unpaired => "U",
        }
    }
}

/// How the image was acquired.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquisition {
    /// kV.
    pub kv: f64,
    /// mAs.
    pub mas: f64,
    /// Exposure time, ms.
    pub ms: u32,
    /// Dose-area product, mGy.cm2.
    pub dap_mgy_cm2: f64,
    /// When: `YYYYMMDD`.
    pub date: String,
    /// When: `HHMMSS`.
    pub time: String,
}

/// The UIDs of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uids {
    /// The study (one per case).
    pub study: String,
    /// The series (one per exposure).
    pub series: String,
    /// The image.
    pub instance: String,
}

/// A DICOM UID under the UUID arc (`2.25.`, ISO/IEC 9834-8): no registered root needed.
pub fn uid_from_uuid(uuid: u128) -> String {
    format!("2.25.{uuid}")
}

/// What could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    /// The frame's pixel count does not match its size.
    #[error(
        "the frame says {columns} x {rows} but holds {len} pixels: the detector read was incomplete; read the frame again"
    )]
    FrameSize {
        /// Columns.
        columns: u16,
        /// Rows.
        rows: u16,
        /// Pixels held.
        len: usize,
    },
    /// JPEG-LS encoding failed.
    #[error("JPEG-LS encoding failed: {0}")]
    Encode(String),
    /// Writing the DICOM file failed.
    #[error("writing the DICOM object failed: {0}")]
    Write(String),
    /// The preview could not be encoded.
    #[error("encoding the preview failed: {0}")]
    Preview(String),
}

/// A processed image: 12-bit values, bone bright (MONOCHROME2), with its window.
#[derive(Debug, Clone)]
pub struct Presentation {
    /// Columns.
    pub columns: u16,
    /// Rows.
    pub rows: u16,
    /// Values 0 to 4095.
    pub pixels: Vec<u16>,
    /// Window centre.
    pub window_center: f64,
    /// Window width.
    pub window_width: f64,
}

/// Bits stored in the For Presentation image.
pub const BITS_STORED: u8 = 12;
const MAX_OUT: f64 = 4095.0;

/// Turns a raw frame into a For Presentation image: logarithm (attenuation adds up along
/// a ray, so its log is linear in tissue thickness), scaled between the 0.5th and 99.5th
/// percentiles, inverted so bone is bright, and a window fitted to the anatomy.
pub fn present(frame: &Frame) -> Result<Presentation, ImagingError> {
    check_size(frame)?;
    // A lookup table: 65,536 logarithms instead of one per pixel.
    let lut: Vec<f32> = (0..=u16::MAX).map(|v| (f32::from(v) + 1.0).ln()).collect();
    let mut hist = vec![0u32; 65536];
    for &p in &frame.pixels {
        hist[usize::from(p)] += 1;
    }
    let lo = lut[usize::from(percentile(&hist, frame.pixels.len(), 0.005))];
    let hi = lut[usize::from(percentile(&hist, frame.pixels.len(), 0.995))];
    let span = (hi - lo).max(f32::EPSILON);
    // A second table maps raw values straight to output values.
    let out_lut: Vec<u16> =
        lut.iter().map(|&l| ((1.0 - ((l - lo) / span).clamp(0.0, 1.0)) * MAX_OUT as f32).round() as u16).collect();
    let pixels: Vec<u16> = frame.pixels.iter().map(|&p| out_lut[usize::from(p)]).collect();
    // Window on what lies inside the body: neither open field (darkest) nor the shadow of
    // the collimator (brightest).
    let mut out_hist = vec![0u32; 4096];
    let mut body = 0usize;
    for &p in &pixels {
        if p > 200 && p < 3900 {
            out_hist[usize::from(p)] += 1;
            body += 1;
        }
    }
    let (w_lo, w_hi) = if body > 0 {
        (f64::from(percentile(&out_hist, body, 0.01)), f64::from(percentile(&out_hist, body, 0.99)))
    } else {
        (0.0, MAX_OUT)
    };
    let width = (w_hi - w_lo).max(64.0);
    Ok(Presentation {
        columns: frame.columns,
        rows: frame.rows,
        pixels,
        window_center: (w_lo + w_hi) / 2.0,
        window_width: width,
    })
}

fn check_size(frame: &Frame) -> Result<(), ImagingError> {
    pixels_fit(frame.columns, frame.rows, frame.pixels.len())
}

/// Whether `len` pixels fill `columns` x `rows` (and there are some).
fn pixels_fit(columns: u16, rows: u16, len: usize) -> Result<(), ImagingError> {
    if len != usize::from(columns) * usize::from(rows) || len == 0 {
        return Err(ImagingError::FrameSize { columns, rows, len });
    }
    Ok(())
}

impl Presentation {
    /// A `Presentation` is plain data anyone can build: its size is checked before use, so a
    /// mismatched one is an error, not an out-of-bounds read.
    fn check_size(&self) -> Result<(), ImagingError> {
        pixels_fit(self.columns, self.rows, self.pixels.len())
    }
}

/// The value below which `share` of `total` counts in `hist` lie.
fn percentile(hist: &[u32], total: usize, share: f64) -> u16 {
    let target = (total as f64 * share) as u64;
    let mut seen = 0u64;
    for (v, &n) in hist.iter().enumerate() {
        seen += u64::from(n);
        if seen > target {
            return v as u16;
        }
    }
    (hist.len() - 1) as u16
}

/// How the pixel data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEncoding {
    /// JPEG-LS lossless (1.2.840.10008.1.2.4.80): what Medvan sends.
    JpegLsLossless,
    /// Uncompressed, Explicit VR Little Endian: for tools and comparisons.
    Native,
}

/// The DICOM DX For Presentation object as a Part 10 file, its pixel data in JPEG-LS
/// lossless.
pub fn dicom(
    image: &Presentation,
    frame: &Frame,
    subject: &Subject,
    view: View,
    acq: &Acquisition,
    uids: &Uids,
) -> Result<Vec<u8>, ImagingError> {
    dicom_with(image, frame, subject, view, acq, uids, PixelEncoding::JpegLsLossless)
}

/// [`dicom`] with a choice of pixel encoding.
pub fn dicom_with(
    image: &Presentation,
    frame: &Frame,
    subject: &Subject,
    view: View,
    acq: &Acquisition,
    uids: &Uids,
    encoding: PixelEncoding,
) -> Result<Vec<u8>, ImagingError> {
    image.check_size()?;
    let mut o = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| {
        o.put(DataElement::new(tag, vr, value));
    };
    let s = |v: &str| PrimitiveValue::from(v.to_owned());
    // SOP Common.
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, s("ISO_IR 192"));
    put(tags::SOP_CLASS_UID, VR::UI, s(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION));
    put(tags::SOP_INSTANCE_UID, VR::UI, s(&uids.instance));
    // Patient.
    put(tags::PATIENT_NAME, VR::PN, s(&subject.patient_name));
    put(tags::PATIENT_ID, VR::LO, s(&subject.patient_id));
    put(tags::PATIENT_BIRTH_DATE, VR::DA, s(&subject.birth_date));
    put(tags::PATIENT_SEX, VR::CS, s(&subject.sex));
    // General Study.
    put(tags::STUDY_INSTANCE_UID, VR::UI, s(&uids.study));
    put(tags::STUDY_DATE, VR::DA, s(&acq.date));
    put(tags::STUDY_TIME, VR::TM, s(&acq.time));
    put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, s(""));
    put(tags::STUDY_ID, VR::SH, s(&short(&subject.accession, 16)));
    put(tags::ACCESSION_NUMBER, VR::SH, s(&short(&subject.accession, 16)));
    put(tags::STUDY_DESCRIPTION, VR::LO, s("Prehospital radiograph"));
    // General and DX Series.
    put(tags::MODALITY, VR::CS, s("DX"));
    put(tags::SERIES_INSTANCE_UID, VR::UI, s(&uids.series));
    put(tags::SERIES_NUMBER, VR::IS, s("1"));
    put(tags::OPERATORS_NAME, VR::PN, s(&subject.operator));
    put(tags::PRESENTATION_INTENT_TYPE, VR::CS, s("FOR PRESENTATION"));
    // General Equipment.
    put(tags::MANUFACTURER, VR::LO, s("Medvan"));
    put(tags::INSTITUTION_NAME, VR::LO, s(&subject.institution));
    put(tags::STATION_NAME, VR::SH, s(&short(&subject.station, 16)));
    put(tags::MANUFACTURER_MODEL_NAME, VR::LO, s("Medvan portable DR"));
    put(tags::SOFTWARE_VERSIONS, VR::LO, s(env!("CARGO_PKG_VERSION")));
    // General Image, DX Image.
    put(tags::INSTANCE_NUMBER, VR::IS, s("1"));
    put(tags::CONTENT_DATE, VR::DA, s(&acq.date));
    put(tags::CONTENT_TIME, VR::TM, s(&acq.time));
    put(tags::ACQUISITION_DATE_TIME, VR::DT, s(&format!("{}{}", acq.date, acq.time)));
    put(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(["ORIGINAL".to_owned(), "PRIMARY".to_owned()].into()));
    put(tags::BURNED_IN_ANNOTATION, VR::CS, s("NO"));
    put(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, s("00"));
    put(tags::PIXEL_INTENSITY_RELATIONSHIP, VR::CS, s("LOG"));
    // -1: higher values mean less X-ray intensity (bone is bright).
    put(tags::PIXEL_INTENSITY_RELATIONSHIP_SIGN, VR::SS, PrimitiveValue::from(-1_i16));
    put(tags::RESCALE_INTERCEPT, VR::DS, s("0"));
    put(tags::RESCALE_SLOPE, VR::DS, s("1"));
    put(tags::RESCALE_TYPE, VR::LO, s("US"));
    put(tags::PRESENTATION_LUT_SHAPE, VR::CS, s("IDENTITY"));
    put(tags::WINDOW_CENTER, VR::DS, s(&format!("{:.0}", image.window_center)));
    put(tags::WINDOW_WIDTH, VR::DS, s(&format!("{:.0}", image.window_width)));
    // Rows run toward the feet; columns toward the patient's left seen from the front
    // (AP) and toward the right seen from behind (PA).
    let across = match view.projection {
        Projection::Ap | Projection::Oblique => "L",
        Projection::Pa => "R",
        Projection::Lateral => "A",
    };
    put(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Strs([across.to_owned(), "F".to_owned()].into()));
    // Image Pixel.
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s("MONOCHROME2"));
    put(tags::ROWS, VR::US, PrimitiveValue::from(image.rows));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(image.columns));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(u16::from(BITS_STORED)));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(u16::from(BITS_STORED) - 1));
    put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0_u16));
    // DX Anatomy Imaged and Positioning.
    let (body, part_code, part_meaning) = view.body_part.codes();
    let (position, view_code, view_meaning) = view.projection.codes();
    put(tags::BODY_PART_EXAMINED, VR::CS, s(body));
    put(tags::IMAGE_LATERALITY, VR::CS, s(view.laterality.as_str()));
    put(tags::VIEW_POSITION, VR::CS, s(position));
    // A portable unit: no positioner.
    put(tags::POSITIONER_TYPE, VR::CS, s("NONE"));
    // DX Detector.
    let pitch = format!("{:.3}", f64::from(frame.pixel_pitch_um) / 1000.0);
    put(tags::DETECTOR_TYPE, VR::CS, s("SCINTILLATOR"));
    put(tags::DETECTOR_ID, VR::SH, s(&short(&frame.detector_id, 16)));
    put(tags::IMAGER_PIXEL_SPACING, VR::DS, PrimitiveValue::Strs([pitch.clone(), pitch].into()));
    // X-Ray Acquisition Dose.
    put(tags::KVP, VR::DS, s(&format!("{:.1}", acq.kv)));
    put(tags::EXPOSURE_TIME, VR::IS, s(&acq.ms.to_string()));
    put(tags::EXPOSURE_INU_AS, VR::IS, s(&format!("{:.0}", acq.mas * 1000.0)));
    put(tags::EXPOSURE, VR::IS, s(&format!("{:.0}", acq.mas)));
    // Image and Fluoroscopy Area Dose Product is in dGy.cm2.
    put(tags::IMAGE_AND_FLUOROSCOPY_AREA_DOSE_PRODUCT, VR::DS, s(&format!("{:.5}", acq.dap_mgy_cm2 / 100.0)));
    o.put(DataElement::new(
        tags::ANATOMIC_REGION_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![code_item(part_code, "SCT", part_meaning)]),
    ));
    o.put(DataElement::new(
        tags::VIEW_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![code_item(view_code, "SCT", view_meaning)]),
    ));
    o.put(DataElement::new(tags::ACQUISITION_CONTEXT_SEQUENCE, VR::SQ, DataSetSequence::<InMemDicomObject>::empty()));
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    let transfer_syntax = match encoding {
        PixelEncoding::Native => {
            o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes)));
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        }
        PixelEncoding::JpegLsLossless => {
            // Encoded straight into one fragment (single frame, empty basic offset table):
            // no native copy of the image in the object, no transcoding pass.
            let info = charls::FrameInfo {
                width: u32::from(image.columns),
                height: u32::from(image.rows),
                bits_per_sample: i32::from(BITS_STORED),
                component_count: 1,
            };
            let mut encoded =
                charls::CharLS::default().encode(info, 0, &bytes).map_err(|e| ImagingError::Encode(e.to_string()))?;
            if encoded.len() % 2 == 1 {
                encoded.push(0);
            }
            let fragments = dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![encoded]);
            o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, dicom_core::value::Value::from(fragments)));
            uids::JPEGLS_LOSSLESS
        }
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
        .media_storage_sop_instance_uid(uids.instance.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("MEDVAN_0");
    let file = o.with_meta(meta).map_err(|e| ImagingError::Write(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| ImagingError::Write(e.to_string()))?;
    Ok(out)
}

/// Our implementation class UID (under the UUID arc, fixed for this software).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.190184730391262371532089587298519461357";

fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value.to_owned())),
        DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from(scheme.to_owned())),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning.to_owned())),
    ])
}

/// Cuts a value to a VR's length limit on a character boundary.
fn short(v: &str, max: usize) -> String {
    v.chars().take(max).collect()
}

/// The preview: the image shrunk to at most `max_side` pixels on its long side, windowed
/// to 8 bits, as PNG.
pub fn preview(image: &Presentation, max_side: u16) -> Result<Vec<u8>, ImagingError> {
    image.check_size()?;
    let (c, r) = (usize::from(image.columns), usize::from(image.rows));
    let step = c.max(r).div_ceil(usize::from(max_side.max(1))).max(1);
    let (pc, pr) = (c / step, r / step);
    let lo = image.window_center - image.window_width / 2.0;
    let scale = 255.0 / image.window_width;
    let mut out = vec![0u8; pc * pr];
    for y in 0..pr {
        for x in 0..pc {
            // Mean of the step x step block: a box filter, enough for a preview.
            let mut sum = 0u64;
            for yy in y * step..(y + 1) * step {
                let row = &image.pixels[yy * c + x * step..yy * c + (x + 1) * step];
                sum += row.iter().map(|&p| u64::from(p)).sum::<u64>();
            }
            let mean = sum as f64 / (step * step) as f64;
            out[y * pc + x] = ((mean - lo) * scale).clamp(0.0, 255.0) as u8;
        }
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &out,
        pc as u32,
        pr as u32,
        image::ExtendedColorType::L8,
    )
    .map_err(|e| ImagingError::Preview(e.to_string()))?;
    Ok(png)
}
