//! A phantom frame becomes a DICOM DX object that independent tools accept (dicom3tools'
//! `dciodvfy`, dcmtk's `dcmdump`, `dcml2pnm`, `dcmdjpls` and `dcm2pnm`), whose JPEG-LS pixel data decodes to
//! exactly the image we made, and a preview a browser can show.

use std::process::Command;
use std::time::Instant;

use dicom_pixeldata::PixelDecoder;
use imaging::{Acquisition, BodyPart, Frame, Laterality, Projection, Subject, Uids, View};

fn frame() -> Frame {
    let raw = xray_sim::phantom::hand(2500, 3000, 11);
    Frame {
        columns: raw.columns,
        rows: raw.rows,
        bits_stored: 14,
        pixel_pitch_um: 139,
        detector_id: "MVD-0042".into(),
        pixels: raw.pixels,
    }
}

fn subject() -> Subject {
    Subject {
        patient_id: "T-7F3A".into(),
        patient_name: "Doe^Jane".into(),
        birth_date: "19700101".into(),
        sex: "F".into(),
        accession: "0193b1e2c3d4e5f6".into(),
        institution: "North EMS".into(),
        station: "van-12".into(),
        operator: "Silva^Ana".into(),
    }
}

fn tool(name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is not installed ({e}): run scripts/setup-deps.sh as root"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_phantom_hand_becomes_a_valid_lossless_dx_object_and_a_preview() {
    let frame = frame();
    let start = Instant::now();
    let image = imaging::present(&frame).unwrap();
    let uids = Uids {
        study: imaging::uid_from_uuid(0x0193_b1e2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b),
        series: imaging::uid_from_uuid(0x5f1e_0000_1111_4222_8333_4444_5555_6666),
        instance: imaging::uid_from_uuid(0x7a2b_0000_1111_4222_8333_4444_5555_7777),
    };
    let acq =
        Acquisition { kv: 55.0, mas: 2.5, ms: 20, dap_mgy_cm2: 24.2, date: "20261127".into(), time: "101500".into() };
    let view = View { body_part: BodyPart::Hand, projection: Projection::Pa, laterality: Laterality::Right };
    let preview = imaging::preview(&image, 1024).unwrap();
    let preview_done = start.elapsed();
    let dcm = imaging::dicom(&image, &frame, &subject(), view, &acq, &uids).unwrap();
    let all_done = start.elapsed();
    let raw_bytes = frame.pixels.len() * 2;
    println!(
        "2500 x 3000 hand: preview after {preview_done:?}, DICOM after {all_done:?}; {} bytes, {:.2}:1 against the 16-bit frame (debug build)",
        dcm.len(),
        raw_bytes as f64 / dcm.len() as f64
    );
    assert!(dcm.len() < raw_bytes / 2, "JPEG-LS should at least halve a radiograph: {} bytes", dcm.len());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.dcm");
    std::fs::write(&path, &dcm).unwrap();
    let file = path.to_str().unwrap();

    let (ok, out) = tool("dciodvfy", &[file]);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(ok && errors.is_empty(), "dciodvfy found errors:\n{out}");
    println!("dciodvfy: {} warnings", out.lines().filter(|l| l.starts_with("Warning")).count());

    let (ok, out) = tool("dcmdump", &[file]);
    assert!(ok, "{out}");
    assert!(out.contains("JPEGLSLossless") || out.contains("JPEG-LS Lossless"), "{out}");
    assert!(out.contains("T-7F3A") && out.contains("DX") && out.contains("FOR PRESENTATION"));

    // dcmtk reads JPEG-LS with dcml2pnm (dcm2pnm with the JPEG-LS codecs); Debian's plain
    // dcm2pnm reads it once dcmtk's own dcmdjpls has decompressed it. Both images agree.
    let direct = dir.path().join("direct.pgm");
    let (ok, out) = tool("dcml2pnm", &[file, direct.to_str().unwrap()]);
    assert!(ok, "dcml2pnm could not read it: {out}");
    let plain = dir.path().join("plain.dcm");
    let (ok, out) = tool("dcmdjpls", &[file, plain.to_str().unwrap()]);
    assert!(ok, "dcmdjpls could not decompress it: {out}");
    let via = dir.path().join("via.pgm");
    let (ok, out) = tool("dcm2pnm", &[plain.to_str().unwrap(), via.to_str().unwrap()]);
    assert!(ok, "dcm2pnm could not read it: {out}");
    let (a, b) = (std::fs::read(&direct).unwrap(), std::fs::read(&via).unwrap());
    assert!(a.len() > 2500 * 3000, "dcml2pnm wrote a whole image");
    assert!(a == b, "dcmtk's two readings differ");

    // Lossless: the pixel data decodes to exactly what was encoded.
    let obj = dicom_object::open_file(&path).unwrap();
    let decoded = obj.decode_pixel_data().unwrap();
    let back: Vec<u16> = decoded.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    assert_eq!(back.len(), image.pixels.len());
    assert!(back == image.pixels, "JPEG-LS lossless changed pixels");

    // The preview: a PNG of at most 1024 pixels a side, with contrast in it.
    let png = image::load_from_memory(&preview).unwrap().to_luma8();
    assert!(png.width() <= 1024 && png.height() <= 1024 && png.height() > 800, "{}x{}", png.width(), png.height());
    let (min, max) = png.pixels().fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(max - min > 150, "the preview is windowed to use the grey range: {min}..{max}");
    println!("preview {}x{}, {} bytes", png.width(), png.height(), preview.len());
    if let Ok(dir) = std::env::var("MEDVAN_TEST_ARTEFACTS") {
        std::fs::write(std::path::Path::new(&dir).join("hand-preview.png"), &preview).unwrap();
    }
}

#[test]
fn a_frame_whose_size_does_not_match_its_pixels_is_refused() {
    let mut f = frame();
    f.pixels.truncate(100);
    let err = imaging::present(&f).unwrap_err().to_string();
    assert!(err.starts_with("the frame says 2500 x 3000 but holds 100 pixels"), "{err}");
    // A processed image built by hand with the wrong size is refused too, not read past.
    let mut image = imaging::present(&frame()).unwrap();
    image.pixels.truncate(100);
    assert!(imaging::preview(&image, 1024).is_err());
}
