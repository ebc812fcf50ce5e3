//! TCP through the emulated link between two namespaces (needs root, as CI runs).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use netsim::LinkConfig;
use netsim::netns::{NetnsLink, run_in};

#[test]
fn tcp_between_namespaces_is_rate_limited_delayed_and_counted() {
    let shaped = LinkConfig { rate_bps: Some(8_000_000), delay: Duration::from_millis(20), ..Default::default() };
    let link = NetnsLink::create("mvnt", 1, shaped.clone(), shaped, 1)
        .expect("network namespaces and TUN need root and iproute2 (scripts/setup-deps.sh installs iproute2)");
    let hub = link.hub_addr();
    let listener = run_in(link.hub_ns(), move || std::net::TcpListener::bind((hub, 5000)).unwrap()).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    let payload = vec![7u8; 1_000_000];
    let start = Instant::now();
    let mut client = run_in(link.van_ns(), move || std::net::TcpStream::connect((hub, 5000)).unwrap()).unwrap();
    client.write_all(&payload).unwrap();
    drop(client);
    assert_eq!(server.join().unwrap(), payload.len());
    let took = start.elapsed();
    let (up, down) = link.stats();
    println!("1 MB over 8 Mbit/s, 40 ms RTT: {took:?}; up {up:?}; down {down:?}");
    // The bandwidth bound is 1 s; nothing can beat it, and the link carried it all.
    assert!(took >= Duration::from_millis(950), "faster than the link allows: {took:?}");
    assert!(up.bytes_out >= payload.len() as u64, "{up:?}");
    assert!(down.packets_out > 0, "acknowledgements flow back");
}
