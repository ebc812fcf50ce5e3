//! Reading DICOM objects that others send (a PACS's STOW-RS, a van's upload): checking that
//! one is a whole, consistent image object, its attributes in the DICOM JSON model (PS3.18
//! Annex F) for QIDO-RS and WADO-RS metadata, and transcoding for clients that ask for a
//! transfer syntax other than the stored one.
//!
//! Input is untrusted: parsing runs behind `catch_unwind`, and every failure is a
//! [`ReadError`] saying what was wrong with the object.

use std::io::Cursor;

use base64::Engine as _;
use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex as _;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::Transcode;
use serde_json::{Map, Value as Json, json};

/// Explicit VR Little Endian: the default transfer syntax of DICOMweb.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// The most bytes decoding one object may take (a 43 x 43 cm panel at 100 µm, 16 bits,
/// with a wide margin).
const MAX_DECODED: u128 = 1 << 30;
/// The prefix of every Storage SOP class.
const STORAGE_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.";

/// What was wrong with an object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// Not a DICOM Part 10 file, or not readable as one.
    #[error("not a readable DICOM Part 10 object: {0}")]
    NotDicom(String),
    /// A required attribute is missing or empty.
    #[error("the object has no {0}")]
    Missing(&'static str),
    /// The file meta information and the data set disagree.
    #[error("the file meta information disagrees with the data set: {0}")]
    Inconsistent(String),
    /// Not an image storage object.
    #[error("not an image object ({0}); send image storage objects (CR, DX and others with pixel data)")]
    NotAnImage(String),
    /// A transfer syntax this service cannot produce.
    #[error("cannot convert the object to transfer syntax {0}")]
    Transcode(String),
}

/// An image object's identity, as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// SOP Class UID.
    pub sop_class: String,
    /// SOP Instance UID.
    pub sop_instance: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// The transfer syntax it is stored in.
    pub transfer_syntax: String,
    /// The data set in the DICOM JSON model, pixel data left out (served on request).
    pub metadata: Map<String, Json>,
}

/// The object as a Part 10 file. Some senders leave out the preamble and `DICM` prefix
/// (pydicom does when a data set has no preamble); the object is the same, so it gets them.
pub fn normalize(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ReadError> {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    // The file meta group (0002,xxxx), explicit VR little endian, starts the file.
    // pydicom also leaves out the group length and version, which Part 10 requires: they
    // are added.
    if bytes.len() >= 8 && bytes[0] == 0x02 && bytes[1] == 0x00 && bytes[4].is_ascii_uppercase() {
        let mut end = 0;
        while end + 8 <= bytes.len() && bytes[end] == 0x02 && bytes[end + 1] == 0x00 {
            let (len, head) = element_length(bytes, end, true)
                .filter(|(l, h)| *l != u32::MAX && end + h + *l as usize <= bytes.len())
                .ok_or_else(|| ReadError::NotDicom("a file meta element runs past the end of the object".into()))?;
            end += head + len as usize;
        }
        let has = |element: u8| {
            let mut at = 0;
            while at < end {
                if bytes[at + 2] == element && bytes[at + 3] == 0 {
                    return true;
                }
                let (len, head) = element_length(bytes, at, true).unwrap_or((0, 8));
                at += head + len as usize;
            }
            false
        };
        let version: &[u8] =
            if has(0x01) || has(0x00) { &[] } else { &[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1] };
        let mut out = Vec::with_capacity(bytes.len() + 160);
        out.extend_from_slice(&[0u8; 128]);
        out.extend_from_slice(b"DICM");
        if !has(0x00) {
            let group = u32::try_from(end + version.len())
                .map_err(|_| ReadError::NotDicom("the file meta group is too long".into()))?;
            out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
            out.extend_from_slice(&group.to_le_bytes());
        }
        out.extend_from_slice(version);
        out.extend_from_slice(bytes);
        return Ok(std::borrow::Cow::Owned(out));
    }
    Err(ReadError::NotDicom(
        "neither a DICM prefix after the 128-byte preamble nor a file meta group at the start".into(),
    ))
}

fn open(bytes: &[u8]) -> Result<DefaultDicomObject, ReadError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(ReadError::NotDicom("no DICM prefix after the 128-byte preamble".into()));
    }
    // The parser trusts declared lengths (a 4 GiB element in a 1 KiB file costs 4 GiB and
    // seconds): check them against the bytes there are first.
    lengths_fit(bytes)?;
    let parsed = std::panic::catch_unwind(|| {
        OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(Cursor::new(bytes))
    });
    match parsed {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(ReadError::NotDicom(e.to_string())),
        Err(_) => Err(ReadError::NotDicom("the data set is malformed".into())),
    }
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        .filter(|s| !s.is_empty())
}

/// Checks an object and reads what is indexed of it.
pub fn inspect(bytes: &[u8]) -> Result<Instance, ReadError> {
    let obj = open(bytes)?;
    let meta = obj.meta();
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    let sop_class = text(&obj, tags::SOP_CLASS_UID).ok_or(ReadError::Missing("SOP Class UID (0008,0016)"))?;
    let sop_instance = text(&obj, tags::SOP_INSTANCE_UID).ok_or(ReadError::Missing("SOP Instance UID (0008,0018)"))?;
    let study = text(&obj, tags::STUDY_INSTANCE_UID).ok_or(ReadError::Missing("Study Instance UID (0020,000D)"))?;
    let series = text(&obj, tags::SERIES_INSTANCE_UID).ok_or(ReadError::Missing("Series Instance UID (0020,000E)"))?;
    if trim(&meta.media_storage_sop_class_uid) != sop_class {
        return Err(ReadError::Inconsistent(format!(
            "Media Storage SOP Class UID {} but SOP Class UID {sop_class}",
            trim(&meta.media_storage_sop_class_uid)
        )));
    }
    if trim(&meta.media_storage_sop_instance_uid) != sop_instance {
        return Err(ReadError::Inconsistent(format!(
            "Media Storage SOP Instance UID {} but SOP Instance UID {sop_instance}",
            trim(&meta.media_storage_sop_instance_uid)
        )));
    }
    for (name, uid) in [("SOP Instance", &sop_instance), ("Study Instance", &study), ("Series Instance", &series)] {
        if !valid_uid(uid) {
            return Err(ReadError::NotDicom(format!("{name} UID {uid:?} is not a valid UID")));
        }
    }
    if !sop_class.starts_with(STORAGE_PREFIX) {
        return Err(ReadError::NotAnImage(format!("SOP Class UID {sop_class} is not a storage class")));
    }
    let has_pixels = obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_some();
    let rows = obj.element_opt(tags::ROWS).ok().flatten().and_then(|e| e.to_int::<u32>().ok()).unwrap_or(0);
    let columns = obj.element_opt(tags::COLUMNS).ok().flatten().and_then(|e| e.to_int::<u32>().ok()).unwrap_or(0);
    if !has_pixels || rows == 0 || columns == 0 {
        return Err(ReadError::NotAnImage(format!("SOP Class UID {sop_class} without pixel data, rows and columns")));
    }
    check_pixels(&obj, rows, columns)?;
    Ok(Instance {
        sop_class,
        sop_instance,
        study,
        series,
        transfer_syntax: trim(&meta.transfer_syntax),
        metadata: dataset_json(&obj),
    })
}

/// Walks the elements (file meta group, then the data set in its transfer syntax) and
/// checks every defined length fits in what is left, sequences and items included.
fn lengths_fit(bytes: &[u8]) -> Result<(), ReadError> {
    let short = |what: &str| ReadError::NotDicom(format!("{what} runs past the end of the object"));
    // The meta group is always explicit VR little endian; it ends where group 0002 does.
    let mut at = 132;
    let mut ts = String::new();
    while at + 8 <= bytes.len() && bytes[at] == 0x02 && bytes[at + 1] == 0x00 {
        let (len, head) = element_length(bytes, at, true).ok_or_else(|| short("a file meta element"))?;
        let end = at + head + len as usize;
        if len == u32::MAX || end > bytes.len() {
            return Err(short("a file meta element"));
        }
        if bytes[at + 2..at + 4] == [0x10, 0x00] {
            ts = String::from_utf8_lossy(&bytes[at + head..end]).trim_end_matches(['\0', ' ']).to_owned();
        }
        at = end;
    }
    let explicit = match ts.as_str() {
        "1.2.840.10008.1.2" => false,
        // A deflated data set cannot be checked before it is inflated (and can inflate to
        // any size); big endian is retired. Neither comes from an image source today.
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.2" => {
            return Err(ReadError::Transcode(format!(
                "{ts} (deflated or big endian) is not accepted; send the object uncompressed or in a \
                 compressed image transfer syntax"
            )));
        }
        _ => true,
    };
    walk(bytes, at, bytes.len(), explicit, false, 0).map(|_| ())
}

/// The declared length of the element at `at` and the size of its header.
fn element_length(bytes: &[u8], at: usize, explicit: bool) -> Option<(u32, usize)> {
    let h = bytes.get(at..at + 8)?;
    let group = u16::from_le_bytes([h[0], h[1]]);
    if group == 0xFFFE || !explicit {
        return Some((u32::from_le_bytes([h[4], h[5], h[6], h[7]]), 8));
    }
    match &h[4..6] {
        b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"UC" | b"UR" | b"OD" | b"OL" | b"OV" | b"SV" | b"UV" => {
            let l = bytes.get(at + 8..at + 12)?;
            Some((u32::from_le_bytes([l[0], l[1], l[2], l[3]]), 12))
        }
        _ => Some((u32::from(u16::from_le_bytes([h[6], h[7]])), 8)),
    }
}

/// Walks elements from `at` to `end` (or to a delimiter when `end` is undefined), returning
/// where it stopped. In encapsulated pixel data (`raw`) an item holds bytes, not elements.
fn walk(bytes: &[u8], mut at: usize, end: usize, explicit: bool, raw: bool, depth: u32) -> Result<usize, ReadError> {
    let short = || ReadError::NotDicom("an element's length runs past the end of the object".into());
    if depth > 32 {
        return Err(ReadError::NotDicom("sequences are nested more than 32 deep".into()));
    }
    while at < end {
        let (len, head) = element_length(bytes, at, explicit).ok_or_else(short)?;
        let tag = (u16::from_le_bytes([bytes[at], bytes[at + 1]]), u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]));
        at += head;
        match (tag, len) {
            // Item and sequence delimiters end an undefined-length container, and only one.
            ((0xFFFE, 0xE00D), _) | ((0xFFFE, 0xE0DD), _) if end == usize::MAX => return Ok(at),
            ((0xFFFE, 0xE00D), _) | ((0xFFFE, 0xE0DD), _) => {
                return Err(ReadError::NotDicom("a delimiter inside a defined-length item or sequence".into()));
            }
            ((0xFFFE, 0xE000), u32::MAX) => at = walk(bytes, at, usize::MAX, explicit, false, depth + 1)?,
            (_, u32::MAX) => {
                // An undefined-length sequence or encapsulated pixel data: items until the
                // sequence delimiter.
                let pixels = tag == (0x7FE0, 0x0010);
                at = walk(bytes, at, usize::MAX, explicit, pixels, depth + 1)?;
            }
            (_, len) => {
                let next = at.checked_add(len as usize).filter(|n| *n <= bytes.len()).ok_or_else(short)?;
                let is_sq = if explicit {
                    bytes.get(at - head + 4..at - head + 6) == Some(b"SQ")
                } else {
                    // Implicit VR: the dictionary says which elements are sequences.
                    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
                    dicom_dictionary_std::StandardDataDictionary
                        .by_tag(Tag(tag.0, tag.1))
                        .is_some_and(|e| e.vr().relaxed() == VR::SQ)
                };
                if is_sq || (tag.0 == 0xFFFE && !raw) {
                    walk(bytes, at, next, explicit, false, depth + 1)?;
                }
                at = next;
            }
        }
        if end == usize::MAX && at >= bytes.len() {
            return Err(short());
        }
    }
    Ok(at)
}

/// The pixel data must be whole: native data as long as the image says, compressed data
/// decodable (a truncated object parses, but its last fragment is cut short).
fn check_pixels(obj: &DefaultDicomObject, rows: u32, columns: u32) -> Result<(), ReadError> {
    let int = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok());
    let pixels = obj.element(tags::PIXEL_DATA).map_err(|_| ReadError::Missing("Pixel Data (7FE0,0010)"))?;
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
        .unwrap_or(1);
    match pixels.value() {
        Value::Primitive(p) => {
            let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
            let bits = int(tags::BITS_ALLOCATED).ok_or(ReadError::Missing("Bits Allocated (0028,0100)"))?;
            let want =
                u128::from(rows) * u128::from(columns) * u128::from(samples) * u128::from(bits) * u128::from(frames);
            let want = want.div_ceil(8);
            let have = p.to_bytes().len() as u128;
            if have < want {
                return Err(ReadError::NotDicom(format!(
                    "the pixel data holds {have} bytes; {rows} x {columns} pixels need {want}: the object is cut short"
                )));
            }
            Ok(())
        }
        _ => {
            use dicom_pixeldata::PixelDecoder;
            // Decoding allocates the whole image: a header that claims a huge one is refused
            // before any memory is set aside.
            let decoded = u128::from(rows) * u128::from(columns) * 8 * u128::from(frames.max(1));
            if decoded > MAX_DECODED {
                return Err(ReadError::NotAnImage(format!(
                    "{rows} x {columns} pixels in {frames} frames is larger than this service decodes"
                )));
            }
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data().map(|_| ()))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ReadError::NotDicom(format!("the compressed pixel data cannot be decoded: {e}"))),
                Err(_) => Err(ReadError::NotDicom("the compressed pixel data cannot be decoded".into())),
            }
        }
    }
}

/// A UID: 1 to 64 characters of digits and dots, no empty or zero-led component.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

/// The object converted to transfer syntax `ts` (as stored when it already is).
pub fn transcode(bytes: &[u8], ts: &str) -> Result<Vec<u8>, ReadError> {
    let mut obj = open(bytes)?;
    if obj.meta().transfer_syntax.trim_end_matches(['\0', ' ']) == ts {
        return Ok(bytes.to_vec());
    }
    let target = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| ReadError::Transcode(ts.to_owned()))?;
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.transcode(target)));
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ReadError::Transcode(format!("{ts}: {e}"))),
        Err(_) => return Err(ReadError::Transcode(format!("{ts}: the pixel data could not be decoded"))),
    }
    let mut out = Vec::new();
    obj.write_all(&mut out).map_err(|e| ReadError::Transcode(format!("{ts}: {e}")))?;
    Ok(out)
}

/// The pixel data uncompressed (Explicit VR Little Endian), as WADO-RS bulk data.
pub fn pixel_data(bytes: &[u8]) -> Result<Vec<u8>, ReadError> {
    let native = transcode(bytes, EXPLICIT_VR_LITTLE_ENDIAN)?;
    let obj = open(&native)?;
    let e = obj.element(tags::PIXEL_DATA).map_err(|_| ReadError::Missing("Pixel Data (7FE0,0010)"))?;
    e.to_bytes().map(|b| b.into_owned()).map_err(|e| ReadError::Transcode(e.to_string()))
}

/// The data set (not the file meta group) in the DICOM JSON model. Pixel data is left out:
/// it is retrieved with the instance.
fn dataset_json(obj: &InMemDicomObject) -> Map<String, Json> {
    let mut out = Map::new();
    for e in obj.iter() {
        let tag = e.tag();
        if tag.group() == 0x0002 || tag == tags::PIXEL_DATA || tag.element() == 0 {
            continue;
        }
        let key = format!("{:04X}{:04X}", tag.group(), tag.element());
        out.insert(key, element_json(e.vr(), e.value()));
    }
    out
}

fn element_json<I, P>(vr: VR, value: &Value<I, P>) -> Json
where
    I: ItemJson,
{
    let mut el = Map::new();
    el.insert("vr".into(), Json::String(vr.to_string().into()));
    match value {
        Value::Sequence(seq) => {
            let items: Vec<Json> = seq.items().iter().map(|i| Json::Object(i.to_json())).collect();
            if !items.is_empty() {
                el.insert("Value".into(), Json::Array(items));
            }
        }
        Value::PixelSequence(_) => {}
        Value::Primitive(p) => {
            if let Some(v) = primitive_json(vr, p) {
                el.insert(if matches!(v, Json::String(_)) { "InlineBinary" } else { "Value" }.into(), v);
            }
        }
    }
    Json::Object(el)
}

/// What a sequence item turns into.
trait ItemJson {
    fn to_json(&self) -> Map<String, Json>;
}

impl ItemJson for InMemDicomObject {
    fn to_json(&self) -> Map<String, Json> {
        dataset_json(self)
    }
}

/// A primitive value: an array for `Value`, or a base64 string for `InlineBinary`.
fn primitive_json(vr: VR, p: &PrimitiveValue) -> Option<Json> {
    if matches!(p, PrimitiveValue::Empty) {
        return None;
    }
    let strings =
        || -> Vec<String> { p.to_multi_str().iter().map(|s| s.trim_end_matches(['\0', ' ']).to_owned()).collect() };
    let values: Vec<Json> = match vr {
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
            return Some(Json::String(base64::engine::general_purpose::STANDARD.encode(p.to_bytes())));
        }
        VR::PN => {
            strings().into_iter().map(|s| if s.is_empty() { json!({}) } else { json!({ "Alphabetic": s }) }).collect()
        }
        VR::IS => strings().iter().map(|s| s.trim().parse::<i64>().map_or(Json::Null, Json::from)).collect(),
        VR::DS => strings()
            .iter()
            .map(|s| {
                s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Json::Null, Json::Number)
            })
            .collect(),
        VR::US | VR::SS | VR::UL | VR::SL | VR::UV | VR::SV => match p {
            PrimitiveValue::U8(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::U16(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::I16(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::U32(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::I32(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::U64(v) => v.iter().map(|x| Json::from(*x)).collect(),
            PrimitiveValue::I64(v) => v.iter().map(|x| Json::from(*x)).collect(),
            _ => strings().iter().map(|s| s.trim().parse::<i64>().map_or(Json::Null, Json::from)).collect(),
        },
        VR::FL | VR::FD => p
            .to_multi_float64()
            .unwrap_or_default()
            .into_iter()
            .map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number))
            .collect(),
        VR::AT => match p {
            PrimitiveValue::Tags(t) => {
                t.iter().map(|t| Json::String(format!("{:04X}{:04X}", t.group(), t.element()))).collect()
            }
            _ => Vec::new(),
        },
        _ => strings().into_iter().map(|s| if s.is_empty() { Json::Null } else { Json::String(s) }).collect(),
    };
    if values.is_empty() { None } else { Some(Json::Array(values)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_checked() {
        assert!(valid_uid("1.2.840.10008.1.2.1"));
        assert!(valid_uid("2.25.0"));
        for bad in ["", "1..2", "1.02", "1.2a", &"1".repeat(65)] {
            assert!(!valid_uid(bad), "{bad}");
        }
    }

    #[test]
    fn junk_truncation_and_a_missing_prefix_are_refused_not_panics() {
        assert!(matches!(inspect(b"hello"), Err(ReadError::NotDicom(_))));
        let mut fake = vec![0u8; 128];
        fake.extend_from_slice(b"DICM");
        fake.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(inspect(&fake), Err(ReadError::NotDicom(_))));
    }
}
