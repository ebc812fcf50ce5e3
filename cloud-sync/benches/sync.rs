//! The sync benchmark: prints, side by side, what the sync protocol costs on the wire and
//! how it fares on a bad cellular link against a plain HTTPS upload.
//!
//! Run as root (network namespaces, TUN): `cargo bench -p cloud-sync --bench sync`.
//! Environment: `MEDVAN_BENCH_BLOB_MB` (default 18), `MEDVAN_BENCH_VANS` (default 1000),
//! `MEDVAN_BENCH_SKIP_TCP=1` to skip the HTTPS comparison.
//!
//! Figures:
//! 1. wire bytes / payload bytes, for documents (500 cases' Automerge changes) and for a
//!    blob, counted by the link emulator on loopback;
//! 2. an 18 MB blob pushed through 10 Mbit/s, 50 ms RTT, 2% loss, by QUIC (CUBIC and BBR)
//!    and by curl over HTTPS (CUBIC and BBR), each divided by the bandwidth bound, through
//!    the same emulated link (IP packets forwarded between TUN devices in two namespaces);
//! 3. an idle reconnect of a van holding 1,000 cases: bytes on the wire and round trips
//!    (on a link with a 100 ms round trip), resumed and with a full handshake;
//! 4. the initial sync time of 500 cases;
//! 5. how many concurrent van connections one hub process holds, and its memory per
//!    connection (the hub runs as its own process, `medvan-hub run`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use case_model::codes::AttachmentKind;
use case_model::edit::VitalsInput;
use case_model::{Edit, EditContext, OrgId, Timestamp, UserId, VanId};
use case_store::{Store, StoreConfig, generate_key_file};
use cloud_sync::fleet::Hub;
use cloud_sync::storage::crypto::Sealer;
use cloud_sync::storage::sqlite::SqliteStorage;
use edge_agent::sync::StoreReplica;
use netsim::LinkConfig;
use netsim::netns::{NetnsLink, run_in};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use sync_proto::{Role, Session};
use sync_quic::driver::{Congestion, Liveness, client_config_with, connect, run, van_endpoint_config};
use sync_quic::identity::{DeviceId, FleetCa, new_device_key};
use time::{Duration as TimeDuration, OffsetDateTime};

fn ctx() -> EditContext {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(ms) }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Fixture {
    _dir: tempfile::TempDir,
    hub: Hub,
    org: OrgId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::from_master(&[1; 32]);
    let storage = Arc::new(SqliteStorage::open(&dir.path().join("hub"), &sealer).unwrap());
    let now = OffsetDateTime::now_utc();
    let ca = FleetCa::generate("bench fleet", now - TimeDuration::days(1), now + TimeDuration::days(365)).unwrap();
    let hub = Hub::assemble(storage, sealer, ca, 90, "hub.bench").unwrap();
    let org = OrgId::parse("org-north").unwrap();
    hub.cases.create_org(&UserId::parse("admin").unwrap(), &org, "North").unwrap();
    Fixture { _dir: dir, hub, org }
}

fn van_store(dir: &std::path::Path, van: &str) -> Store {
    let key = dir.join(format!("{van}.key"));
    generate_key_file(&key).unwrap();
    let mut config = StoreConfig::new(dir.join(van), key, VanId::parse(van).unwrap());
    config.create_if_missing = true;
    config.max_blob_bytes = 1 << 30;
    Store::open(config).unwrap()
}

fn identity(ca: &FleetCa, van: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let now = OffsetDateTime::now_utc();
    let (key, csr) = new_device_key().unwrap();
    let cert = ca
        .sign_device_request(
            &csr,
            &DeviceId::new("org-north", van).unwrap(),
            now - TimeDuration::days(1),
            now + TimeDuration::days(30),
        )
        .unwrap();
    (cert, key)
}

fn client_endpoint(socket: UdpSocket, f: &Fixture, van: &str, cc: Congestion) -> quinn::Endpoint {
    let (cert, key) = identity(&f.hub.ca, van);
    let mut ep = quinn::Endpoint::new(van_endpoint_config(), None, socket, Arc::new(quinn::TokioRuntime)).unwrap();
    ep.set_default_client_config(
        client_config_with(f.hub.ca.certificate(), cert, key, Liveness::default(), cc).unwrap(),
    );
    ep
}

/// One one-shot sync session from `store` through `ep` to `addr`.
async fn session(ep: &quinn::Endpoint, addr: SocketAddr, store: &Store) {
    session_quiet(ep, addr, store, Duration::from_millis(500)).await
}

/// A one-shot session that waits `quiet` for more from the hub once it has sent all it
/// had (a large image is still in flight in QUIC's buffers when the session has handed
/// over its last piece).
async fn session_quiet(ep: &quinn::Endpoint, addr: SocketAddr, store: &Store, quiet: Duration) {
    let mut connected = connect(ep, addr, "hub.bench").await.unwrap();
    let mut replica = StoreReplica::new(store.clone(), "hub").unwrap();
    loop {
        let (mut send, mut recv) = connected.conn.open_bi().await.unwrap();
        let mut s = Session::new(Role::Van);
        s.start(&replica);
        let result = run(&mut s, &mut replica, &mut send, &mut recv, quiet).await;
        if !connected.retry(&result) {
            break result.unwrap();
        }
    }
    connected.conn.close(0u32.into(), b"done");
}

/// What an idle reconnect cost.
struct Reconnect {
    /// Until the hub's answer is in and the handshake is over, both ways.
    bytes: u64,
    packets: u64,
    /// Hanging up afterwards.
    close_bytes: u64,
    /// From the connection attempt to the hub's welcome.
    took: Duration,
    resumed: bool,
}

/// Connects, says hello with the van's scope digest, waits for the hub's welcome (which
/// must say "in sync") and hangs up: what a van that has nothing new does.
async fn idle_reconnect(ep: &quinn::Endpoint, relay: &netsim::UdpRelay, store: &Store, settle: Duration) -> Reconnect {
    use sync_proto::frame::{Decoder, encode};
    ep.wait_idle().await;
    let before = relay.stats();
    let mut replica = StoreReplica::new(store.clone(), "hub").unwrap();
    let start = Instant::now();
    let mut s = Session::new(Role::Van);
    s.start(&replica);
    let connected = connect(ep, relay.local_addr(), "hub.bench").await.unwrap();
    let (mut send, mut recv) = connected.conn.open_bi().await.unwrap();
    while let Some(m) = s.poll_transmit(&mut replica) {
        send.write_all(&encode(&m)).await.expect("the hub took the 0-RTT hello");
    }
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 4096];
    let welcome = loop {
        let n = recv.read(&mut buf).await.unwrap().expect("the hub answers before finishing");
        decoder.push(&buf[..n]);
        if let Some(m) = decoder.next_message().unwrap() {
            break m;
        }
    };
    let took = start.elapsed();
    assert!(
        matches!(welcome, sync_proto::Message::Welcome { in_sync: true, .. }),
        "an idle van is told it is in sync: {welcome:?}"
    );
    // The handshake's last packets (the van's Finished, the hub's confirmation and next
    // ticket, acknowledgements) are part of the reconnect: let them arrive.
    tokio::time::sleep(settle).await;
    let connected_stats = relay.stats();
    // A van stays connected after this; a one-shot client hangs up, which costs a little more.
    connected.conn.close(0u32.into(), b"");
    ep.wait_idle().await;
    let after = relay.stats();
    let total = |a: &(netsim::LinkStats, netsim::LinkStats), b: &(netsim::LinkStats, netsim::LinkStats)| {
        (
            (a.0.bytes_out + a.1.bytes_out) - (b.0.bytes_out + b.1.bytes_out),
            (a.0.packets_out + a.1.packets_out) - (b.0.packets_out + b.1.packets_out),
        )
    };
    let (bytes, packets) = total(&connected_stats, &before);
    Reconnect {
        bytes,
        packets,
        close_bytes: total(&after, &connected_stats).0,
        took,
        resumed: connected.early.is_some(),
    }
}

async fn until(mut check: impl FnMut() -> bool) {
    while !check() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Report(Vec<(String, String)>);

impl Report {
    fn add(&mut self, what: &str, figure: String) {
        println!("  {what}: {figure}");
        self.0.push((what.to_owned(), figure));
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = Report(Vec::new());
    // MEDVAN_BENCH_ONLY=loopback|lossy|concurrent runs one part.
    let only = std::env::var("MEDVAN_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    runtime.block_on(async {
        if part("loopback") {
            println!("== documents and blobs on loopback (through the link emulator, unshaped)");
            loopback(&mut report).await;
        }
        if part("lossy") {
            println!("== an 18 MB blob through 10 Mbit/s, 50 ms RTT, 2% loss (IP forwarded between namespaces)");
            lossy_push(&mut report).await;
        }
        if part("concurrent") {
            println!("== concurrent vans on one hub process");
            concurrent(&mut report).await;
        }
    });
    println!("\n== summary");
    let width = report.0.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
    for (what, figure) in &report.0 {
        println!("{what:width$}  {figure}");
    }
}

async fn loopback(report: &mut Report) {
    let f = fixture();
    let server = f.hub.bind_sync("127.0.0.1:0".parse().unwrap()).unwrap();
    let hub_addr = server.local_addr();
    {
        let (hub, server) = (f.hub.clone(), server.clone());
        tokio::spawn(async move { hub.serve_sync(server).await });
    }
    let relay = netsim::UdpRelay::start(hub_addr, LinkConfig::default(), LinkConfig::default(), 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = van_store(dir.path(), "van-1");
    let ep = client_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), &f, "van-1", Congestion::Bbr);

    // 500 cases, each with a few vitals and a narrative line: a shift's worth and more.
    for i in 0..500 {
        let id = store.create_case(&ctx(), &f.org).unwrap().id;
        for k in 0..4 {
            let v = VitalsInput { heart_rate: Some(60 + (i + k) % 80), spo2: Some(95), ..Default::default() };
            store.edit_case(&ctx(), id, &[Edit::AddVitals(v)]).unwrap();
        }
    }
    let payload: u64 = store
        .case_ids()
        .unwrap()
        .iter()
        .map(|id| {
            store
                .load_from_disk(*id)
                .unwrap()
                .automerge()
                .get_changes(&[])
                .iter()
                .map(|c| c.raw_bytes().len() as u64)
                .sum::<u64>()
        })
        .sum();
    let wire = |r: &netsim::UdpRelay| {
        let (u, d) = r.stats();
        u.bytes_out + d.bytes_out
    };
    let before = wire(&relay);
    let start = Instant::now();
    let (hub, org) = (f.hub.clone(), f.org.clone());
    let sync = {
        let (ep, store, addr) = (ep.clone(), store.clone(), relay.local_addr());
        tokio::spawn(async move { session(&ep, addr, &store).await })
    };
    until(|| hub.storage.cases_for_van(org.as_str(), "van-1").map(|c| c.len()).unwrap_or(0) == 500).await;
    let took = start.elapsed();
    sync.await.unwrap();
    let docs_wire = wire(&relay) - before;
    report.add("initial sync of 500 cases (loopback)", format!("{:.2} s", took.as_secs_f64()));
    report.add(
        "documents: wire / payload",
        format!("{:.2} ({docs_wire} bytes for {payload} bytes of changes)", docs_wire as f64 / payload as f64),
    );

    // What a QUIC connection with mutual TLS costs by itself: the first (full handshake,
    // both certificates) and the next.
    let probe = client_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), &f, "van-1", Congestion::Bbr);
    let mut costs = Vec::new();
    for _ in 0..2 {
        let before = wire(&relay);
        let conn = probe.connect(relay.local_addr(), "hub.bench").unwrap().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.close(0u32.into(), b"");
        probe.wait_idle().await;
        costs.push(wire(&relay) - before);
    }
    report.add(
        "QUIC connection alone",
        format!(
            "{} bytes the first time, {} bytes the next (connect, mutual TLS handshake, close)",
            costs[0], costs[1]
        ),
    );

    // Up to 1,000 cases, synced; then an idle reconnect.
    for _ in 0..500 {
        store.create_case(&ctx(), &f.org).unwrap();
    }
    session(&ep, relay.local_addr(), &store).await;
    // The hub's own time to answer, on the unshaped link.
    let unshaped = idle_reconnect(&ep, &relay, &store, Duration::from_millis(100)).await;
    report.add(
        "idle reconnect, unshaped link",
        format!("the hub's answer after {:.1} ms", unshaped.took.as_secs_f64() * 1e3),
    );
    // Round trips are counted on a link with a 100 ms round trip, so they show in the time.
    let rtt = Duration::from_millis(100);
    relay.set_config(LinkConfig { delay: rtt / 2, ..Default::default() });
    let hello = sync_proto::frame::encode(&sync_proto::Message::Hello {
        min_version: sync_proto::MIN_PROTOCOL_VERSION,
        max_version: sync_proto::PROTOCOL_VERSION,
        scope_digest: [0; 32],
    });
    let welcome = sync_proto::frame::encode(&sync_proto::Message::Welcome { version: 1, in_sync: true });
    // The usual reconnect resumes the TLS session the last one left a ticket for; a van
    // whose ticket is gone (a hub restart, a day offline) makes a full handshake.
    let resumed = idle_reconnect(&ep, &relay, &store, rtt * 3).await;
    let fresh = client_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), &f, "van-1", Congestion::Bbr);
    let full = idle_reconnect(&fresh, &relay, &store, rtt * 3).await;
    relay.set_config(LinkConfig::default());
    let line = |r: &Reconnect| {
        format!(
            "{} bytes in {} packets (and {} to hang up), {:.1} round trips to the hub's answer ({})",
            r.bytes,
            r.packets,
            r.close_bytes,
            r.took.as_secs_f64() / rtt.as_secs_f64(),
            if r.resumed { "resumed TLS session, hello in 0-RTT" } else { "full handshake, both certificates" }
        )
    };
    report.add(
        "idle reconnect, 1,000 cases",
        format!("{}; sync itself: hello {} B, welcome {} B", line(&resumed), hello.len(), welcome.len()),
    );
    report.add("idle reconnect, no ticket", line(&full));

    // A blob on loopback: wire / payload.
    let size = 8 << 20;
    let mut data = vec![0u8; size];
    rand::fill(&mut data[..]);
    let case = store.case_ids().unwrap()[0];
    store.attach(&ctx(), case, &mut data.as_slice(), "application/dicom", AttachmentKind::XrayStudy, None).unwrap();
    let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
    let before = wire(&relay);
    session(&ep, relay.local_addr(), &store).await;
    assert_eq!(
        f.hub.storage.complete_blob_size(&cloud_sync::cases::blob_key("org-north", &sha)).unwrap(),
        Some(size as u64)
    );
    let blob_wire = wire(&relay) - before;
    report.add(
        "blobs: wire / payload",
        format!("{:.3} ({blob_wire} bytes for an {} MiB image)", blob_wire as f64 / size as f64, size >> 20),
    );
}

async fn lossy_push(report: &mut Report) {
    let mb = env_u64("MEDVAN_BENCH_BLOB_MB", 18);
    let size = (mb * 1_000_000) as usize;
    let bound = size as f64 * 8.0 / 10e6;
    let cellular = LinkConfig {
        rate_bps: Some(10_000_000),
        delay: Duration::from_millis(25),
        loss: 0.02,
        queue_bytes: 128 * 1024,
        ..Default::default()
    };
    let link = match NetnsLink::create("mvbench", 9, cellular.clone(), cellular, 42) {
        Ok(l) => l,
        Err(e) => {
            report.add("lossy link", format!("skipped: {e} (needs root and iproute2)"));
            return;
        }
    };
    let (hub_ip, van_ip) = (link.hub_addr(), link.van_addr());
    report.add("bandwidth bound", format!("{bound:.1} s for {mb} MB at 10 Mbit/s"));

    for cc in [Congestion::Cubic, Congestion::Bbr] {
        let f = fixture();
        let socket = run_in(link.hub_ns(), move || UdpSocket::bind((hub_ip, 0)).unwrap()).unwrap();
        let server = f.hub.sync_on_socket(socket).unwrap();
        let addr = server.local_addr();
        {
            let (hub, server) = (f.hub.clone(), server.clone());
            tokio::spawn(async move { hub.serve_sync(server).await });
        }
        let dir = tempfile::tempdir().unwrap();
        let store = van_store(dir.path(), "van-1");
        let case = store.create_case(&ctx(), &f.org).unwrap().id;
        let mut data = vec![0u8; size];
        rand::fill(&mut data[..]);
        store.attach(&ctx(), case, &mut data.as_slice(), "application/dicom", AttachmentKind::XrayStudy, None).unwrap();
        let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
        let socket = run_in(link.van_ns(), move || UdpSocket::bind((van_ip, 0)).unwrap()).unwrap();
        let ep = client_endpoint(socket, &f, "van-1", cc);
        let start = Instant::now();
        let sync = tokio::spawn(async move { session_quiet(&ep, addr, &store, Duration::from_secs(10)).await });
        let storage = f.hub.storage.clone();
        let key = cloud_sync::cases::blob_key("org-north", &sha);
        until(|| storage.complete_blob_size(&key).ok().flatten().is_some()).await;
        let took = start.elapsed().as_secs_f64();
        sync.await.unwrap();
        server.close();
        report.add(&format!("QUIC push, {cc:?}"), format!("{took:.1} s = {:.2} x the bound", took / bound));
    }

    if std::env::var("MEDVAN_BENCH_SKIP_TCP").is_ok() {
        return;
    }
    match https_push(&link, size, bound, report) {
        Ok(()) => {}
        Err(e) => report.add("HTTPS push", format!("skipped: {e}")),
    }
}

/// curl uploading to a Python HTTPS server across the same link; the sender's TCP
/// congestion controller is set in the van's namespace.
fn https_push(link: &NetnsLink, size: usize, bound: f64, report: &mut Report) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir()?;
    let now = OffsetDateTime::now_utc();
    let ca = FleetCa::generate("bench tls", now - TimeDuration::days(1), now + TimeDuration::days(2))?;
    let (cert, key) = ca.issue_hub("hub.bench", now - TimeDuration::days(1), now + TimeDuration::days(2))?;
    std::fs::write(dir.path().join("ca.der"), ca.certificate())?;
    std::fs::write(dir.path().join("cert.der"), &cert)?;
    std::fs::write(dir.path().join("key.der"), key.secret_der())?;
    let sh = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new(args[0]).args(&args[1..]).current_dir(dir.path()).status()?;
        anyhow::ensure!(st.success(), "{} failed", args.join(" "));
        Ok(())
    };
    sh(&["openssl", "x509", "-inform", "DER", "-in", "ca.der", "-out", "ca.pem"])?;
    sh(&["openssl", "x509", "-inform", "DER", "-in", "cert.der", "-out", "cert.pem"])?;
    sh(&["openssl", "pkey", "-inform", "DER", "-in", "key.der", "-out", "key.pem"])?;
    std::fs::write(dir.path().join("server.py"), SERVER_PY)?;
    let mut data = vec![0u8; size];
    rand::fill(&mut data[..]);
    std::fs::write(dir.path().join("blob.bin"), &data)?;
    let hub = link.hub_addr().to_string();
    /// Stops the HTTPS server and restores the TCP settings, however this function ends.
    struct Cleanup(std::process::Child, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = Command::new("sysctl")
                .args(["-qw", &format!("net.ipv4.tcp_allowed_congestion_control={}", self.1)])
                .status();
        }
    }
    let allowed = String::from_utf8(
        Command::new("sysctl").args(["-n", "net.ipv4.tcp_allowed_congestion_control"]).output()?.stdout,
    )?
    .trim()
    .to_owned();
    let mut server = Command::new("ip")
        .args(["netns", "exec", link.hub_ns(), "python3", "server.py", &hub, "8443", "cert.pem", "key.pem"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().expect("piped");
    let _cleanup = Cleanup(server, allowed.clone());
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        anyhow::ensure!(line.starts_with("ready"), "the HTTPS server did not start");
    }
    // A namespace may pick only controllers the host allows; allow CUBIC for this run.
    sh(&["sysctl", "-qw", &format!("net.ipv4.tcp_allowed_congestion_control={allowed} cubic")])?;
    for cc in ["cubic", "bbr"] {
        sh(&["ip", "netns", "exec", link.van_ns(), "sysctl", "-qw", &format!("net.ipv4.tcp_congestion_control={cc}")])?;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                link.van_ns(),
                "curl",
                "-sS",
                "--cacert",
                "ca.pem",
                "--resolve",
                &format!("hub.bench:8443:{hub}"),
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                "@blob.bin",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                "https://hub.bench:8443/upload",
            ])
            .current_dir(dir.path())
            .output()?;
        anyhow::ensure!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        let took: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        report.add(&format!("HTTPS push (curl), TCP {cc}"), format!("{took:.1} s = {:.2} x the bound", took / bound));
    }
    Ok(())
}

const SERVER_PY: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        left = int(self.headers.get("Content-Length", 0))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn concurrent(report: &mut Report) {
    let vans = env_u64("MEDVAN_BENCH_VANS", 1000) as usize;
    let dir = tempfile::tempdir().unwrap();
    // Free ports for the hub to take (a race with another process is possible, and loud).
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sync = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_path = dir.path().join("hub.toml");
    std::fs::write(
        &config_path,
        format!(
            "[hub]\nlisten = \"127.0.0.1:{http}\"\nsync_listen = \"127.0.0.1:{sync}\"\nserver_name = \"hub.bench\"\ndata_dir = \"{}\"\n",
            dir.path().join("hub").display()
        ),
    )
    .unwrap();
    let config = cloud_sync::config::Config::load(&config_path).unwrap();
    cloud_sync::fleet::init(&config).unwrap();
    let hub = Hub::open(&config).unwrap();
    /// The hub process goes when this function ends, however it ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_medvan-hub"))
            .args(["--config", config_path.to_str().unwrap(), "run"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(child.0.id());
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, sync).into();
    // One socket for all the vans; each connection presents its own van's certificate.
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let start = Instant::now();
    let mut conns = Vec::new();
    let mut failed = 0;
    for i in 0..vans {
        let (cert, key) = identity(&hub.ca, &format!("van-{i}"));
        let cfg = client_config_with(hub.ca.certificate(), cert, key, Liveness::default(), Congestion::Cubic).unwrap();
        match ep.connect_with(cfg, addr, "hub.bench").unwrap().await {
            Ok(conn) => {
                // Each van says hello and waits, as an idle van does.
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let hello = sync_proto::frame::encode(&sync_proto::Message::Hello {
                        min_version: sync_proto::MIN_PROTOCOL_VERSION,
                        max_version: sync_proto::PROTOCOL_VERSION,
                        scope_digest: [0; 32],
                    });
                    let _ = send.write_all(&hello).await;
                    conns.push((conn, send, _recv));
                }
            }
            Err(_) => failed += 1,
        }
    }
    let connected = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alive = conns.iter().filter(|(c, _, _)| c.close_reason().is_none()).count();
    let rss = rss_kib(child.0.id());
    report.add(
        "concurrent vans on one hub process",
        format!(
            "{alive} of {vans} connected and holding ({failed} failed), set up in {:.1} s",
            connected.as_secs_f64()
        ),
    );
    report.add(
        "hub memory per connection",
        format!(
            "{:.0} KiB (hub RSS {} MiB idle, {} MiB with {alive} vans)",
            (rss.saturating_sub(base)) as f64 / alive.max(1) as f64,
            base / 1024,
            rss / 1024
        ),
    );
    drop(conns);
    drop(child);
}
