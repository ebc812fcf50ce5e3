//! The `edge-agent` binary as an operator meets it: `--help`, key generation, and a real
//! SIGTERM to a running agent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

#[test]
fn help_lists_the_commands() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["run", "gen-key", "verify-audit", "example-config"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn a_missing_config_is_a_clear_error() {
    let out = agent().args(["run", "--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("Failed to read config file /nonexistent/agent.toml"), "{err}");
}

#[test]
fn sigterm_stops_a_running_agent_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    assert!(agent().arg("gen-key").arg(&key).status().unwrap().success());
    let again = agent().arg("gen-key").arg(&key).output().unwrap();
    assert!(!again.status.success(), "gen-key must not overwrite a key");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nvan_id = \"van-9\"\norg_id = \"org-north\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data").display(),
            key.display()
        ),
    )
    .unwrap();
    let init = agent().args(["init-store", "--config"]).arg(&config).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let mut child = agent()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.next().expect("agent exited before listening").unwrap();
        if line.contains("edge agent listening") {
            break;
        }
        assert!(Instant::now() < deadline, "agent did not start");
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "agent exited with {exit}: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped cleanly")), "{rest:?}");
    let audit = agent().args(["verify-audit", "--config"]).arg(&config).output().unwrap();
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    assert!(String::from_utf8_lossy(&audit.stdout).contains("audit log intact"));
}
