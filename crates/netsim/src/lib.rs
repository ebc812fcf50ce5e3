//! A seeded link emulator, for tests and benchmarks. This kernel has no `tc netem`, so
//! links are shaped here.
//!
//! [`Link`] is the sans-IO core: packets go in with the time they were sent and come out at
//! the time they arrive, after loss, delay, jitter (which reorders), duplication and a rate
//! limit, all drawn from a seeded generator so a run can be repeated. [`UdpRelay`] puts two
//! links (one each way) between a UDP client and a server on loopback, for QUIC.

mod link;
mod relay;

pub use link::{Link, LinkConfig, LinkStats};
pub use relay::UdpRelay;
