//! Story 3, the dead zone: the ignition is switched off and on many times, once in the
//! middle of saving. A writer process is killed with SIGKILL at random instants, 200 times;
//! after each kill the store reopens, passes SQLite's integrity check, every case loads,
//! and every write the writer saw acknowledged is there.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use case_model::{CaseId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};

const KILLS: usize = 200;

#[test]
fn acknowledged_writes_survive_200_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    generate_key_file(&key).unwrap();
    let data = dir.path().join("data");
    let mut acked: HashMap<CaseId, HashSet<String>> = HashMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut total_acks = 0usize;
    for round in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // From "killed while opening" to a few dozen writes in.
        let delay = Duration::from_micros(rng % 60_000);
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .args([data.as_os_str(), key.as_os_str(), "3".as_ref()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut touched: HashSet<CaseId> = HashSet::new();
        for line in rx.try_iter() {
            let mut parts = line.splitn(3, ' ');
            let (Some("ack"), Some(case), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
                panic!("round {round}: unexpected line {line:?}");
            };
            let case = CaseId::parse(case).unwrap();
            acked.entry(case).or_default().insert(text.to_owned());
            touched.insert(case);
            total_acks += 1;
        }

        let mut config = StoreConfig::new(&data, &key, VanId::parse("van-7").unwrap());
        // The writer may have died before it created the store.
        config.create_if_missing = true;
        let store = Store::open(config)
            .unwrap_or_else(|e| panic!("round {round}: the store does not reopen after SIGKILL: {e}"));
        assert_eq!(store.integrity_check().unwrap(), "ok", "round {round}");
        // The cases written this round every round; every case ever acknowledged, and every
        // stored case, every 20 rounds and at the end.
        let full = round % 20 == 19 || round == KILLS - 1;
        let to_check: Vec<CaseId> = if full { acked.keys().copied().collect() } else { touched.into_iter().collect() };
        for id in to_check {
            let doc = store
                .load_from_disk(id)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged case {id} is gone: {e}"));
            let texts: HashSet<String> =
                doc.view().chat.iter().filter_map(|c| c["text"].as_str().map(str::to_owned)).collect();
            let lost: Vec<&String> = acked[&id].difference(&texts).collect();
            assert!(lost.is_empty(), "round {round}: case {id} lost acknowledged writes {lost:?}");
        }
        if full {
            for id in store.case_ids().unwrap() {
                store.load_from_disk(id).unwrap_or_else(|e| panic!("round {round}: case {id} does not load: {e}"));
            }
            store.verify_audit().unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        store.close();
    }
    println!("{KILLS} SIGKILLs, {total_acks} acknowledged writes, none lost");
    assert!(total_acks > KILLS, "the writer barely wrote anything ({total_acks} acks): the test proves little");
}
