//! A process that writes to a van store as fast as it can and prints a line for every write
//! the store acknowledged. The crash test kills it with SIGKILL at random instants.
//!
//! Usage: `crash-writer DATA_DIR KEY_FILE THREADS`

use std::io::Write;
use std::sync::{Arc, Mutex};

use case_model::{Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, key, threads] = args.as_slice() else {
        eprintln!("usage: crash-writer DATA_DIR KEY_FILE THREADS");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let mut config = StoreConfig::new(data, key, VanId::parse("van-7").expect("valid"));
    config.compact_after = 16;
    config.create_if_missing = true;
    let store = Store::open(config).unwrap_or_else(|e| {
        eprintln!("crash-writer: {e}");
        std::process::exit(1)
    });
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let org = OrgId::parse("org-festival").expect("valid");
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            let org = org.clone();
            std::thread::spawn(move || {
                let ctx = || EditContext { user: UserId::parse("ana").expect("valid"), now: now() };
                let case = store.create_case(&ctx(), &org).expect("create");
                let mut i = 0u64;
                loop {
                    let text = format!("w{t}-{i}-{}", std::process::id());
                    store.edit_case(&ctx(), case.id, &[Edit::AddChat { text: text.clone() }]).expect("edit");
                    // Printed only after the store returned: the write is acknowledged.
                    let mut o = out.lock().expect("stdout lock");
                    writeln!(o, "{}", medvan_tests::ack_line(&case.id.to_string(), &text)).expect("stdout");
                    o.flush().expect("stdout");
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn now() -> Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Timestamp::from_unix_millis(ms)
}
