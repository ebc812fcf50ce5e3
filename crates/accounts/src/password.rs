//! Password verifiers: argon2id, 19 MiB of memory, 2 passes, one lane, a 16-byte random
//! salt, stored in the PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;

/// Memory cost, KiB.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes.
pub const PASSES: u32 = 2;

fn hasher(m: u32, t: u32) -> Result<Argon2<'static>, String> {
    let params = Params::new(m, t, 1, Some(32)).map_err(|e| e.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A verifier for `password` with the caller's random `salt`.
pub fn hash(password: &str, salt: [u8; 16]) -> String {
    let mut out = [0u8; 32];
    // The parameters are constants within argon2's limits: hashing cannot fail.
    if let Ok(h) = hasher(MEMORY_KIB, PASSES) {
        let _ = h.hash_password_into(password.as_bytes(), &salt, &mut out);
    }
    format!("$argon2id$v=19$m={MEMORY_KIB},t={PASSES},p=1${}${}", B64.encode(salt), B64.encode(out))
}

/// Whether `password` matches `verifier` (compared in constant time). A verifier made with
/// weaker parameters than today's still verifies; [`needs_rehash`] says to replace it.
pub fn verify(password: &str, verifier: &str) -> bool {
    let Some((m, t, salt, expected)) = parse(verifier) else { return false };
    let Ok(h) = hasher(m, t) else { return false };
    let mut out = vec![0u8; expected.len()];
    if h.hash_password_into(password.as_bytes(), &salt, &mut out).is_err() {
        return false;
    }
    crate::same(&out, &expected)
}

/// Whether a verifier was made with less memory or fewer passes than today's.
pub fn needs_rehash(verifier: &str) -> bool {
    parse(verifier).is_none_or(|(m, t, _, _)| m < MEMORY_KIB || t < PASSES)
}

fn parse(v: &str) -> Option<(u32, u32, Vec<u8>, Vec<u8>)> {
    let mut parts = v.strip_prefix("$argon2id$v=19$")?.split('$');
    let params = parts.next()?;
    let salt = B64.decode(parts.next()?).ok()?;
    let hash = B64.decode(parts.next()?).ok()?;
    let (mut m, mut t) = (None, None);
    for kv in params.split(',') {
        match kv.split_once('=')? {
            ("m", x) => m = x.parse().ok(),
            ("t", x) => t = x.parse().ok(),
            ("p", "1") => {}
            _ => return None,
        }
    }
    (salt.len() >= 16 && hash.len() >= 16).then_some((m?, t?, salt, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_and_nothing_else_does() {
        let v = hash("correct horse battery staple", [7; 16]);
        assert!(v.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{v}");
        assert!(verify("correct horse battery staple", &v));
        assert!(!verify("correct horse battery stapl", &v));
        assert!(!verify("correct horse battery staple", &v.replace("t=2", "t=3")), "parameters are part of it");
        assert!(!verify("x", "not a verifier"));
        assert!(!needs_rehash(&v));
        // The same password with another salt gives another verifier.
        assert_ne!(v, hash("correct horse battery staple", [8; 16]));
    }

    #[test]
    fn a_weaker_verifier_still_verifies_and_asks_to_be_replaced() {
        let mut out = [0u8; 32];
        hasher(8 * 1024, 1).unwrap().hash_password_into(b"pw", &[1; 16], &mut out).unwrap();
        let weak = format!("$argon2id$v=19$m=8192,t=1,p=1${}${}", B64.encode([1u8; 16]), B64.encode(out));
        assert!(verify("pw", &weak));
        assert!(needs_rehash(&weak));
    }
}
