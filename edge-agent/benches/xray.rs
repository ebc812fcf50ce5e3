//! The X-ray image benchmark: prints, side by side in one run, the time from "frame read"
//! (the detector's last bulk transfer checked by the frame reader) to "preview stored" and
//! "DICOM stored" (encrypted blobs in a real case store, through the agent's own image
//! path), with the JPEG-LS size and ratio, against dcmtk's `dcmcjpls` timed as a whole
//! command on the same frame; and the same on a real radiograph (PyPI `pydicom-data`'s CR
//! image RG1_UNCI, fetched into `target/bench-data` on first run).
//!
//! Run: `cargo bench -p edge-agent --bench xray`. Set `MEDVAN_RADIOGRAPH` to a DICOM file
//! to use another real image. Aims: faster than dcmtk at an equal or better ratio; the
//! preview stored in under 300 ms.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use case_model::{EditContext, FieldName, FieldValue, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use dicom_pixeldata::Transcode;
use edge_agent::xray::images::{self, Exposure};
use imaging::{Acquisition, BodyPart, Frame, Laterality, PixelEncoding, Projection, View};
use xray_proto::detector::Command as DetectorCommand;
use xray_sim::detector::{Answer, SimDetector};

const RUNS: usize = 5;

fn store(dir: &Path) -> Store {
    let key = dir.join("store.key");
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.join("data"), &key, VanId::parse("van-12").unwrap());
    config.create_if_missing = true;
    Store::open(config).unwrap()
}

fn ctx() -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(ms) }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let case = store.create_case(&ctx(), &OrgId::parse("org-north").unwrap()).unwrap().id;
    let edit = |f, v: &str| case_model::Edit::SetField { field: f, value: FieldValue::Text(v.into()) };
    let case = store
        .edit_case_view(&ctx(), case, &[edit(FieldName::LastName, "Okafor"), edit(FieldName::FirstName, "Ada")])
        .unwrap();

    println!("== the hand phantom (2500 x 3000, 14 bits, from the simulated panel)");
    let mut panel = SimDetector::new(2500, 3000, 42, 11);
    panel.command(&DetectorCommand::Arm(1).encode()).unwrap();
    panel.exposed();
    let Ok(Answer::Frame(transfers)) = panel.command(&DetectorCommand::Read(1).encode()) else { panic!("no frame") };
    let start = Instant::now();
    let raw = edge_agent::xray::detector::read_transfers(1, transfers.iter().map(Vec::as_slice)).unwrap();
    println!("  frame reader: {} transfers checked in {}", transfers.len(), ms(start.elapsed()));
    let frame = Frame {
        columns: raw.header.columns,
        rows: raw.header.rows,
        bits_stored: raw.header.bits_stored,
        pixel_pitch_um: raw.header.pixel_pitch_um,
        detector_id: "MVD-0042".into(),
        pixels: raw.pixels,
    };
    let view = View { body_part: BodyPart::Hand, projection: Projection::Pa, laterality: Laterality::Right };
    let acquisition =
        Acquisition { kv: 55.0, mas: 2.5, ms: 20, dap_mgy_cm2: 24.2, date: "20261127".into(), time: "101500".into() };
    let (mut to_preview, mut to_dicom) = (Vec::new(), Vec::new());
    let mut stored = None;
    for run in 0..RUNS {
        let x = Exposure {
            case: &case,
            operator: "ana",
            view,
            acquisition: acquisition.clone(),
            series_uuid: 1000 + run as u128,
            instance_uuid: 2000 + run as u128,
        };
        let s = images::store(&store, &ctx(), &frame, &x).unwrap();
        to_preview.push(s.preview_after);
        to_dicom.push(s.dicom_after);
        stored = Some(s);
    }
    let stored = stored.unwrap();
    let sha: [u8; 32] = hex::decode(&stored.dicom.0).unwrap().try_into().unwrap();
    let dicom = store.blob_range(&sha, 0, stored.dicom.1).unwrap();
    let ours_path = dir.path().join("ours.dcm");
    std::fs::write(&ours_path, &dicom).unwrap();
    let image = imaging::present(&frame).unwrap();
    let uids = imaging::Uids { study: "2.25.1".into(), series: "2.25.2".into(), instance: "2.25.3".into() };
    let subject = imaging::Subject {
        patient_id: "T-1".into(),
        patient_name: String::new(),
        birth_date: String::new(),
        sex: String::new(),
        accession: "bench".into(),
        institution: "org-north".into(),
        station: "van-12".into(),
        operator: "ana".into(),
    };
    let native =
        imaging::dicom_with(&image, &frame, &subject, view, &acquisition, &uids, PixelEncoding::Native).unwrap();
    let native_path = dir.path().join("native.dcm");
    std::fs::write(&native_path, &native).unwrap();
    let theirs_path = dir.path().join("dcmtk.dcm");
    let theirs = dcmcjpls(&native_path, &theirs_path);
    let raw_bytes = image.pixels.len() * 2;
    let ours_px = pixel_bytes(&ours_path);
    let theirs_px = pixel_bytes(&theirs_path);
    println!(
        "  ours, frame read -> stored (encrypted, in the case store): preview {}, DICOM {} (median of {RUNS})",
        ms(median(to_preview)),
        ms(median(to_dicom))
    );
    println!(
        "  ours: {ours_px} bytes of pixel data, {:.2}:1 ({} byte file)",
        raw_bytes as f64 / ours_px as f64,
        dicom.len()
    );
    println!(
        "  dcmcjpls --encode-lossless, whole command: {} for {theirs_px} bytes of pixel data, {:.2}:1",
        ms(theirs),
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
                let mut out = Vec::new();
                obj.write_all(&mut out).unwrap();
                store.put_blob(&ctx(), case.id, &mut out.as_slice(), "application/dicom").unwrap();
                ours.push(start.elapsed());
                let file = dir.path().join("real-ours.dcm");
                std::fs::write(&file, &out).unwrap();
                out_bytes = pixel_bytes(&file);
            }
            let theirs_path = dir.path().join("real-dcmtk.dcm");
            let theirs = dcmcjpls(&path, &theirs_path);
            let theirs_px = pixel_bytes(&theirs_path);
            println!(
                "  {} ({cols} x {rows}, {raw_bytes} bytes of pixel data)",
                path.file_name().unwrap().to_string_lossy()
            );
            println!(
                "  ours (read, encode, store encrypted): {} for {out_bytes} bytes, {:.2}:1",
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

/// A real radiograph: `MEDVAN_RADIOGRAPH`, or RG1_UNCI from PyPI's pydicom-data.
fn radiograph() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MEDVAN_RADIOGRAPH") {
        return Some(PathBuf::from(p));
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
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
