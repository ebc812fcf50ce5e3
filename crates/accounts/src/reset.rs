//! Password reset tokens: random, mailed to the account's address, kept only as a hash,
//! valid for a short time and for one use.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

/// How long a reset token works, seconds.
pub const LIFETIME_S: i64 = 30 * 60;

/// A reset token as kept: the hash, the account, the expiry, and whether it was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// The account.
    pub user: String,
    /// When it stops working (seconds).
    pub expires_at: i64,
    /// Whether it was used.
    pub used: bool,
}

/// Why a reset token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    /// Not a token this hub sent (or for another account).
    #[error("this reset link is not valid; ask for a new one")]
    Unknown,
    /// Used already.
    #[error("this reset link was used already; ask for a new one")]
    Used,
    /// Too old.
    #[error("this reset link has expired; ask for a new one")]
    Expired,
}

/// A new token for `user` (to mail), and what to keep of it.
pub fn issue(user: &str, now: i64, random: [u8; 32]) -> (String, Pending) {
    let token = B64.encode(random);
    let pending = Pending {
        hash: Sha256::digest(token.as_bytes()).into(),
        user: user.into(),
        expires_at: now + LIFETIME_S,
        used: false,
    };
    (token, pending)
}

/// Redeems `token` against what was kept; on success it is spent.
pub fn redeem(token: &str, kept: &mut Pending, now: i64) -> Result<String, ResetError> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if !crate::same(&hash, &kept.hash) {
        return Err(ResetError::Unknown);
    }
    if kept.used {
        return Err(ResetError::Used);
    }
    if now >= kept.expires_at {
        return Err(ResetError::Expired);
    }
    kept.used = true;
    Ok(kept.user.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_token_works_once_and_not_after_it_expires() {
        let (token, mut kept) = issue("dr.ana", 0, [3; 32]);
        assert_eq!(redeem("forged", &mut kept, 1), Err(ResetError::Unknown));
        assert_eq!(redeem(&token, &mut kept, 1), Ok("dr.ana".into()));
        assert_eq!(redeem(&token, &mut kept, 2), Err(ResetError::Used));
        let (token, mut kept) = issue("dr.ana", 0, [4; 32]);
        assert_eq!(redeem(&token, &mut kept, LIFETIME_S), Err(ResetError::Expired));
    }
}
