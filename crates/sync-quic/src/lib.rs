//! The sync protocol over QUIC with mutual TLS.
//!
//! - [`identity`]: the fleet's certificate authority, device keys and certificates. A van
//!   is known by its certificate, whose subject alternative name is
//!   `urn:medvan:van:<organisation>:<van>`; the hub's certificate is issued by the same CA,
//!   which the van pins.
//! - [`driver`]: QUIC configurations (rustls with the ring provider, the one crypto
//!   provider in the tree) and the loop that carries one [`sync_proto::Session`] over a
//!   bidirectional stream. The loop is all the I/O there is; the protocol lives in
//!   `sync-proto`.

pub mod driver;
pub mod enrol;
pub mod hub;
pub mod identity;
pub mod registry;
