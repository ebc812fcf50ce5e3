//! Account secrets for the hub's login, sans-IO: the caller passes the time and the random
//! bytes, and stores what these functions return.
//!
//! - [`password`]: argon2id verifiers (19 MiB, 2 passes, as OWASP recommends at least).
//! - [`totp`]: time-based one-time codes (RFC 6238), a code never accepted twice.
//! - [`lockout`]: failed logins slow down, then lock, with exponential back-off.
//! - [`reset`]: password reset tokens that expire and work once.

pub mod lockout;
pub mod password;
pub mod reset;
pub mod totp;

/// Whether two byte strings are equal, in time that depends on their length only.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
