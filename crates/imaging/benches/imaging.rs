//! The imaging benchmark: prints, side by side, our path from a detector frame to a stored
//! DICOM object and preview, and dcmtk's `dcmcjpls` timed as a whole command, on the
//! simulator's 2500 x 3000 hand phantom and on a real radiograph (PyPI `pydicom-data`'s
//! CR image RG1_UNCI, fetched into `target/bench-data` on first run).
//!
//! Run: `cargo bench -p imaging --bench imaging`. Set `MEDVAN_RADIOGRAPH` to a DICOM file
//! to use another real image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dicom_pixeldata::Transcode;
use imaging::{Acquisition, BodyPart, Frame, Laterality, PixelEncoding, Projection, Subject, Uids, View};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn dcmcjpls(input: &Path, output: &Path) -> Duration {
    let runs = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new("dcmcjpls")
                .args(["--encode-lossless", input.to_str().unwrap(), output.to_str().unwrap()])
                .status()
                .expect("dcmcjpls (dcmtk) is installed: run scripts/setup-deps.sh as root");
            assert!(status.success(), "dcmcjpls failed on {}", input.display());
            start.elapsed()
        })
        .collect();
    median(runs)
}

fn pixel_bytes(path: &Path) -> usize {
    let obj = dicom_object::open_file(path).unwrap();
    let e = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap();
    match e.value() {
        dicom_core::value::Value::PixelSequence(seq) => seq.fragments().iter().map(|f| f.len()).sum(),
        v => v.to_bytes().map(|b| b.len()).unwrap_or(0),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("== the hand phantom (2500 x 3000, from the simulator)");
    let raw = xray_sim::phantom::hand(2500, 3000, 11);
    let frame = Frame {
        columns: raw.columns,
        rows: raw.rows,
        bits_stored: 14,
        pixel_pitch_um: 139,
        detector_id: "MVD-0042".into(),
        pixels: raw.pixels,
    };
    let subject = Subject {
        patient_id: "T-7F3A".into(),
        patient_name: String::new(),
        birth_date: String::new(),
        sex: String::new(),
        accession: "bench".into(),
        institution: "North EMS".into(),
        station: "van-12".into(),
        operator: "Silva^Ana".into(),
    };
    let view = View { body_part: BodyPart::Hand, projection: Projection::Pa, laterality: Laterality::Right };
    let acq =
        Acquisition { kv: 55.0, mas: 2.5, ms: 20, dap_mgy_cm2: 24.2, date: "20261127".into(), time: "101500".into() };
    let uids = Uids {
        study: imaging::uid_from_uuid(1),
        series: imaging::uid_from_uuid(2),
        instance: imaging::uid_from_uuid(3),
    };
    let (mut to_preview, mut to_dicom) = (Vec::new(), Vec::new());
    let mut dcm = Vec::new();
    for _ in 0..RUNS {
        // "Frame read" to "DICOM and preview stored": the preview is made and written first,
        // so it can travel ahead of the full image.
        let start = Instant::now();
        let image = imaging::present(&frame).unwrap();
        let preview = imaging::preview(&image, 1024).unwrap();
        std::fs::write(dir.path().join("preview.png"), &preview).unwrap();
        to_preview.push(start.elapsed());
        dcm = imaging::dicom(&image, &frame, &subject, view, &acq, &uids).unwrap();
        std::fs::write(dir.path().join("ours.dcm"), &dcm).unwrap();
        to_dicom.push(start.elapsed());
    }
    let image = imaging::present(&frame).unwrap();
    let native = imaging::dicom_with(&image, &frame, &subject, view, &acq, &uids, PixelEncoding::Native).unwrap();
    let native_path = dir.path().join("native.dcm");
    std::fs::write(&native_path, &native).unwrap();
    let theirs_path = dir.path().join("dcmtk.dcm");
    let theirs = dcmcjpls(&native_path, &theirs_path);
    let raw_bytes = image.pixels.len() * 2;
    let ours_px = pixel_bytes(&dir.path().join("ours.dcm"));
    let theirs_px = pixel_bytes(&theirs_path);
    println!(
        "  ours: preview stored after {}, DICOM stored after {} (median of {RUNS})",
        ms(median(to_preview.clone())),
        ms(median(to_dicom.clone()))
    );
    println!(
        "  ours: {} bytes of pixel data, {:.2}:1 ({} byte file)",
        ours_px,
        raw_bytes as f64 / ours_px as f64,
        dcm.len()
    );
    println!(
        "  dcmcjpls --encode-lossless, whole command: {} for {} bytes of pixel data, {:.2}:1",
        ms(theirs),
        theirs_px,
        raw_bytes as f64 / theirs_px as f64
    );

    println!("== a real radiograph");
    match radiograph() {
        Some(path) => {
            let original = dicom_object::open_file(&path).unwrap();
            let rows = original.element(dicom_dictionary_std::tags::ROWS).unwrap().to_int::<u32>().unwrap();
            let cols = original.element(dicom_dictionary_std::tags::COLUMNS).unwrap().to_int::<u32>().unwrap();
            let raw_bytes = pixel_bytes(&path);
            let mut ours = Vec::new();
            let mut out_bytes = 0;
            for _ in 0..RUNS {
                let start = Instant::now();
                let mut obj = dicom_object::open_file(&path).unwrap();
                obj.transcode(&dicom_transfer_syntax_registry::entries::JPEG_LS_LOSSLESS_IMAGE_COMPRESSION.erased())
                    .unwrap();
                let out = dir.path().join("real-ours.dcm");
                obj.write_to_file(&out).unwrap();
                ours.push(start.elapsed());
                out_bytes = pixel_bytes(&out);
            }
            let theirs_path = dir.path().join("real-dcmtk.dcm");
            let theirs = dcmcjpls(&path, &theirs_path);
            let theirs_px = pixel_bytes(&theirs_path);
            println!(
                "  {} ({cols} x {rows}, {raw_bytes} bytes of pixel data)",
                path.file_name().unwrap().to_string_lossy()
            );
            println!(
                "  ours (read, encode, write): {} for {out_bytes} bytes, {:.2}:1",
                ms(median(ours)),
                raw_bytes as f64 / out_bytes as f64
            );
            println!(
                "  dcmcjpls --encode-lossless, whole command: {} for {theirs_px} bytes, {:.2}:1",
                ms(theirs),
                raw_bytes as f64 / theirs_px as f64
            );
        }
        None => println!(
            "  skipped: no radiograph (set MEDVAN_RADIOGRAPH, or let the benchmark fetch pydicom-data from PyPI)"
        ),
    }
}

/// A real radiograph: `MEDVAN_RADIOGRAPH`, or RG1_UNCI from PyPI's pydicom-data.
fn radiograph() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MEDVAN_RADIOGRAPH") {
        return Some(PathBuf::from(p));
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    let file = cache.join("RG1_UNCI.dcm");
    if file.exists() {
        return Some(file);
    }
    std::fs::create_dir_all(&cache).ok()?;
    let fetched = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d", cache.to_str()?, "pydicom-data==1.0.0"])
        .status()
        .ok()?
        .success();
    if !fetched {
        return None;
    }
    let extract = format!(
        "import zipfile,glob; z=zipfile.ZipFile(glob.glob('{0}/pydicom_data-*.whl')[0]); open('{1}','wb').write(z.read('data_store/data/RG1_UNCI.dcm'))",
        cache.display(),
        file.display()
    );
    Command::new("python3").args(["-c", &extract]).status().ok()?.success().then_some(file)
}
