//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits), as
//! authenticator apps make them. A code is accepted for its own step and one step either
//! side (clock drift), and never twice: the last step used is kept, and a code of that
//! step or an earlier one is refused as a replay.

use ring::hmac;

/// Seconds per step.
pub const STEP_S: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;

/// The code for `secret` at step `step`, as a number (RFC 4226 dynamic truncation).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let m = mac.as_ref();
    let offset = usize::from(m[m.len() - 1] & 0x0f);
    let bin = (u32::from(m[offset] & 0x7f) << 24)
        | (u32::from(m[offset + 1]) << 16)
        | (u32::from(m[offset + 2]) << 8)
        | u32::from(m[offset + 3]);
    bin % 10u32.pow(DIGITS)
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// Not the code of this time (or not six digits).
    #[error("the code is not right; type the code your authenticator shows now")]
    Wrong,
    /// Right, but already used.
    #[error("this code was already used; wait for the next one")]
    Replayed,
}

/// Checks `code` at `now` (seconds). `last_step` is the step of the last code accepted for
/// this account; on success the new one is returned, to be stored.
pub fn verify(secret: &[u8], code: &str, now: i64, last_step: Option<u64>) -> Result<u64, TotpError> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Wrong);
    }
    let given: u32 = code.parse().map_err(|_| TotpError::Wrong)?;
    let now_step = (now.max(0) / STEP_S) as u64;
    let mut matched = None;
    for step in now_step.saturating_sub(1)..=now_step + 1 {
        // Every candidate is computed, so timing does not tell which step matched.
        let ok = crate::same(&code_at(secret, step).to_be_bytes(), &given.to_be_bytes());
        if ok && matched.is_none() {
            matched = Some(step);
        }
    }
    let step = matched.ok_or(TotpError::Wrong)?;
    if last_step.is_some_and(|last| step <= last) {
        return Err(TotpError::Replayed);
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, with the last six of the eight digits.
    #[test]
    fn matches_the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59i64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code_at(secret, (t / 30) as u64), code % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn a_code_works_once_within_its_window_and_never_again() {
        let secret = b"a shared secret of twenty bytes!";
        let now = 1_800_000_000;
        let code = format!("{:06}", code_at(secret, (now / 30) as u64));
        let step = verify(secret, &code, now, None).unwrap();
        assert_eq!(verify(secret, &code, now + 5, Some(step)), Err(TotpError::Replayed));
        // Clock drift of one step either way is tolerated; two is not.
        assert!(verify(secret, &code, now + 30, None).is_ok());
        assert_eq!(verify(secret, &code, now + 90, None), Err(TotpError::Wrong));
        // An older code after a newer one was used is a replay too.
        let next = format!("{:06}", code_at(secret, (now / 30) as u64 + 1));
        let s2 = verify(secret, &next, now + 30, Some(step)).unwrap();
        assert_eq!(verify(secret, &code, now + 31, Some(s2)), Err(TotpError::Replayed));
        assert_eq!(verify(secret, "12345", now, None), Err(TotpError::Wrong));
        assert_eq!(verify(secret, "abcdef", now, None), Err(TotpError::Wrong));
    }
}
