//! Store benchmark: prints durable edit latency, group-commit throughput against one fsync
//! per edit, load time of a 10,000-change case and bytes on disk per typical case.
//!
//! Run with `cargo bench -p case-store`. Figures depend on the disk; the aims are p99
//! durable edit under 10 ms, throughput at least 20 times one fsync per edit, and a
//! 10,000-change case loading in under 50 ms.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use case_model::edit::{ProcedureInput, TextSplice, VitalsInput};
use case_model::{
    ActorId, CaseDoc, CaseId, Edit, EditContext, FieldName, FieldValue, NewCase, OrgId, Timestamp, UserId, VanId,
};
use case_store::{Store, StoreConfig, generate_key_file};

fn ctx() -> EditContext {
    static T: AtomicU64 = AtomicU64::new(1_795_000_000_000);
    EditContext {
        user: UserId::parse("ana").unwrap(),
        now: Timestamp::from_unix_millis(T.fetch_add(1, Ordering::Relaxed) as i64),
    }
}

fn config(dir: &Path) -> StoreConfig {
    let key = dir.join("store.key");
    if !key.exists() {
        generate_key_file(&key).unwrap();
    }
    let mut cfg = StoreConfig::new(dir.join("data"), key, VanId::parse("van-12").unwrap());
    cfg.compact_after = usize::MAX;
    cfg.create_if_missing = true;
    cfg
}

fn open(dir: &Path) -> Store {
    Store::open(config(dir)).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One 4 KiB write and fdatasync per "edit": the cost group commit avoids.
fn fsync_rate(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut f = fs::File::create(&path).unwrap();
    let block = [7u8; 4096];
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    fs::remove_file(path).unwrap();
    rate
}

fn latency(dir: &Path) -> (Duration, Duration, f64) {
    let store = open(dir);
    let org = OrgId::parse("org").unwrap();
    let case = store.create_case(&ctx(), &org).unwrap();
    let mut times = Vec::new();
    for i in 0..1000 {
        let edit = Edit::AddVitals(VitalsInput { heart_rate: Some(60 + i % 50), spo2: Some(95), ..Default::default() });
        let t = Instant::now();
        store.edit_case(&ctx(), case.id, &[edit]).unwrap();
        times.push(t.elapsed());
    }
    let total: Duration = times.iter().sum();
    times.sort();
    store.close();
    (percentile(&times, 0.5), percentile(&times, 0.99), times.len() as f64 / total.as_secs_f64())
}

fn throughput(cfg: StoreConfig, threads: usize, secs: u64) -> f64 {
    let store = Store::open(cfg).unwrap();
    let org = OrgId::parse("org").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, stop, count, org) = (store.clone(), stop.clone(), count.clone(), org.clone());
            std::thread::spawn(move || {
                let case = store.create_case(&ctx(), &org).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    store.edit_case(&ctx(), case.id, &[Edit::AddChat { text: "copy".into() }]).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let done = count.load(Ordering::Relaxed) - start_count;
    let rate = done as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    store.close();
    rate
}

/// A case built the way a crew builds one: `words` narrative words typed one change at a
/// time, `vitals` sets, `procedures` interventions and a few fields.
fn typical_case(id_seed: u8, words: usize, vitals: usize, procedures: usize, fields: usize) -> CaseDoc {
    let new = NewCase {
        id: CaseId::new_v7(ctx().now, [id_seed; 10]),
        org: OrgId::parse("org").unwrap(),
        van: VanId::parse("van-12").unwrap(),
        temp_patient_id: "T-BENCH1".into(),
    };
    let (mut doc, _) = CaseDoc::create(ActorId::from([id_seed; 16]), &ctx(), new);
    let total = words + vitals + procedures + fields;
    let mut made = (0, 0, 0, 0);
    const WORDS: &[&str] = &[
        "patient",
        "found",
        "supine",
        "beside",
        "ladder",
        "reports",
        "pain",
        "left",
        "forearm",
        "no",
        "loss",
        "of",
        "consciousness",
        "splinted",
        "and",
        "reassessed",
    ];
    for i in 0..total {
        let edit = if made.1 < vitals && i % (total / vitals.max(1)).max(1) == 0 {
            made.1 += 1;
            Edit::AddVitals(VitalsInput {
                heart_rate: Some(80 + (i % 30) as i64),
                systolic: Some(130),
                diastolic: Some(80),
                spo2: Some(97),
                respiratory_rate: Some(16),
                pain: Some(6),
                ..Default::default()
            })
        } else if made.2 < procedures && i % (total / procedures.max(1)).max(1) == 1 {
            made.2 += 1;
            Edit::AddProcedure(ProcedureInput {
                performed_at: None,
                procedure: "splint applied".into(),
                snomed: Some(79321009),
                attempts: None,
                successful: None,
                performer: None,
                performer_level: None,
            })
        } else if made.3 < fields && i % (total / fields.max(1)).max(1) == 2 {
            made.3 += 1;
            Edit::SetField { field: FieldName::ChiefComplaint, value: FieldValue::Text(format!("forearm pain {i}")) }
        } else if made.0 < words {
            made.0 += 1;
            Edit::EditNarrative(TextSplice { pos: None, delete: 0, insert: format!("{} ", WORDS[i % WORDS.len()]) })
        } else {
            Edit::AddChat { text: "ok".into() }
        };
        doc.apply(&ctx(), &[edit]).unwrap();
    }
    doc
}

/// Puts a document's changes into the store as one sync would.
fn import(store: &Store, doc: &CaseDoc) -> CaseId {
    let bytes: Vec<Vec<u8>> =
        doc.automerge().get_changes(&[]).into_iter().map(|mut c| c.bytes().into_owned()).collect();
    store.import_case(&ctx(), doc.id(), &bytes).unwrap();
    doc.id()
}

fn load_10k(dir: &Path) -> (usize, Duration, Duration) {
    let store = open(dir);
    let doc = typical_case(3, 8500, 1000, 200, 300);
    let changes = doc.history().len();
    let id = import(&store, &doc);
    let time = |store: &Store| {
        let mut v: Vec<Duration> = (0..7)
            .map(|_| {
                let t = Instant::now();
                let d = store.load_from_disk(id).unwrap();
                let e = t.elapsed();
                assert!(d.view().narrative.len() > 1000);
                e
            })
            .collect();
        v.sort();
        v[3]
    };
    let raw = time(&store);
    store.compact(id).unwrap();
    let compacted = time(&store);
    store.close();
    (changes, raw, compacted)
}

fn bytes_per_case(dir: &Path) -> (f64, f64, usize) {
    let store = open(dir);
    store.close();
    drop(store);
    let db = dir.join("data/cases.db");
    let empty = fs::metadata(&db).unwrap().len();
    let store = open(dir);
    let n = 20;
    let mut ids = Vec::new();
    let mut changes = 0;
    for i in 0..n {
        let doc = typical_case(10 + i as u8, 2000, 40, 10, 10);
        changes = doc.history().len();
        ids.push(import(&store, &doc));
    }
    store.close();
    drop(store);
    let raw = fs::metadata(&db).unwrap().len();
    let store = open(dir);
    for id in &ids {
        store.read_case(&ctx(), *id).unwrap();
        store.compact(*id).unwrap();
    }
    store.close();
    drop(store);
    // Space freed by compaction is reused by SQLite; VACUUM shows the compacted footprint.
    let conn = Store::raw_connection(&StoreConfig::new(
        dir.join("data"),
        dir.join("store.key"),
        VanId::parse("van-12").unwrap(),
    ))
    .unwrap();
    conn.execute_batch("VACUUM;").unwrap();
    drop(conn);
    let compacted = fs::metadata(&db).unwrap().len();
    ((raw - empty) as f64 / n as f64, (compacted.saturating_sub(empty)) as f64 / n as f64, changes)
}

fn main() {
    let base = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let sub = |name: &str| {
        let p = base.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    };
    println!("medvan store benchmark (SQLCipher, WAL, synchronous=FULL), data in {}", base.path().display());
    let fsyncs = fsync_rate(base.path());
    println!("one fsync per edit (4 KiB write + fdatasync): {fsyncs:.0} per second");
    let (p50, p99, seq) = latency(&sub("latency"));
    println!(
        "durable single edit, one writer: p50 {:.2} ms, p99 {:.2} ms ({seq:.0} edits/s)   aim: p99 < 10 ms",
        ms(p50),
        ms(p99)
    );
    // Group commit against one fsync per edit, same store, same 64 concurrent writers: on
    // this machine's disk, and on a simulated van eMMC whose syncs take 5 ms.
    let slow = test_support::powercut::register("bench-slow-flash");
    slow.set_sync_delay(Duration::from_millis(5));
    for (disk, vfs) in [("this disk", None), ("simulated 5 ms-sync flash", Some("bench-slow-flash"))] {
        let mut rates = Vec::new();
        for max_group in [1, 512] {
            let mut cfg = config(&sub(&format!("throughput-{}-{max_group}", vfs.is_some())));
            cfg.max_group = max_group;
            cfg.vfs = vfs.map(str::to_owned);
            rates.push(throughput(cfg, 64, 3));
        }
        println!(
            "durable edits/s, 64 writers, {disk}: one fsync per edit {:.0}, group commit {:.0} = {:.1} x   aim: >= 20 x",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
    let (changes, raw, compacted) = load_10k(&sub("load"));
    println!(
        "load a case of {changes} changes: {:.1} ms as raw changes, {:.1} ms from a compacted snapshot   aim: < 50 ms",
        ms(raw),
        ms(compacted)
    );
    let (raw, compacted, changes) = bytes_per_case(&sub("size"));
    println!(
        "bytes on disk per typical case (40 vitals, 10 interventions, 2,000 words typed word by word = {changes} changes): {:.0} KiB as changes, {:.0} KiB compacted",
        raw / 1024.0,
        compacted / 1024.0
    );
}
