//! Tokens for the hub's front door, sans-IO: no clock, no storage, no randomness of its
//! own. Callers pass the time and the random bytes, and keep what must be kept.
//!
//! - [`jwt`]: short-lived access tokens, JWTs signed with Ed25519 (`alg` EdDSA), under signing
//!   keys that rotate ([`jwt::KeySet`]); verification pins the algorithm, the key id, the
//!   issuer, the audience and the lifetime, and publishes the verification keys as a JWKS.
//! - [`refresh`]: rotating refresh tokens in families: each use gives a new token and spends
//!   the old one; presenting a spent token revokes the whole family (a stolen token used
//!   after its owner, or the owner after the thief, ends the session for both).

pub mod jwt;
pub mod refresh;
