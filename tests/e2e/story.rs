//! Story 1 in real browsers (`tests/ui/story1.mjs`): the touchscreen offline, the link
//! back, the doctor's app, the note back on the touchscreen; then the same with a hub
//! restart and a link cut mid-upload. It runs the optimised builds
//! (scripts/test.sh builds them first) as separate processes, and Debian's Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn story_one_the_fall_on_the_farm_in_real_browsers() {
    let root = root();
    let bin = root.join("target/release");
    for b in ["medvan-hub", "edge-agent", "xray-sim"] {
        assert!(
            bin.join(b).exists(),
            "{} is missing: the story runs the optimised builds; run scripts/test.sh (it builds them first) or \
             cargo build --release -p cloud-sync -p edge-agent -p xray-sim",
            bin.join(b).display()
        );
    }
    for (p, how) in [
        ("cloud-sync/web/dist/app.js", "scripts/setup-jstools.sh builds the doctor app"),
        ("tests/ui/node_modules/playwright-core", "scripts/setup-jstools.sh installs the browser driver"),
        ("/usr/bin/chromium", "scripts/setup-deps.sh installs Debian's chromium"),
    ] {
        assert!(root.join(p).exists(), "{p} is missing: {how}");
    }
    // The clean story (with its figures), then the same with the hub restarted mid-way and
    // the link cut during an upload. One after the other: each runs a hub, a van and a
    // browser, which is what two cores hold.
    for (name, args) in [("story1", &[][..]), ("story1-faults", &["--faults"][..])] {
        let artifacts = root.join("target/ui-artifacts").join(name);
        let status = Command::new("node")
            .arg(root.join("tests/ui/story1.mjs"))
            .args(args)
            .env("MEDVAN_BIN", &bin)
            .env("MEDVAN_WEB", root.join("cloud-sync/web/dist"))
            .env("MEDVAN_ARTIFACTS", &artifacts)
            .status()
            .expect("node runs");
        assert!(status.success(), "{name} failed; screenshots of each step are in {}", artifacts.display());
    }
}
