//! A seeded link emulator, for tests and benchmarks. This kernel has no `tc netem`, so
//! links are shaped here.
//!
//! [`Link`] is the sans-IO core: packets go in with the time they were sent and come out at
//! the time they arrive, after loss, delay, jitter (which reorders), duplication and a rate
//! limit, all drawn from a seeded generator so a run can be repeated. [`UdpRelay`] puts two
//! links (one each way) between a UDP client and a server on loopback, for QUIC.
//! [`netns::NetnsLink`] puts them between two network namespaces instead, forwarding IP
//! packets between TUN devices, so TCP goes through the same link as QUIC.

mod link;
#[cfg(target_os = "linux")]
pub mod netns;
mod relay;

pub use link::{Link, LinkConfig, LinkStats};
pub use relay::UdpRelay;
