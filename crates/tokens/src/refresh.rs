//! Rotating refresh tokens (OAuth 2.0 Security BCP, refresh token rotation).
//!
//! A login starts a family. Each refresh spends the presented token and hands out the
//! next one. A spent token presented again means two parties hold the family (the owner
//! and a thief), so the whole family is revoked and both must log in again. Tokens are
//! kept only as SHA-256 hashes. The caller supplies the random bytes and the time, and
//! keeps [`Families`] wherever sessions live (it serialises).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a refresh was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Never issued (or from a family long gone).
    #[error("the refresh token is not known; log in again")]
    Unknown,
    /// Spent before: the family is revoked now.
    #[error("the refresh token was used before; every session of this login is ended, log in again")]
    Reused,
    /// The family was revoked (logout, reuse, or an administrator).
    #[error("this login was ended; log in again")]
    Revoked,
    /// Past the family's absolute lifetime.
    #[error("this login is too old; log in again")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Family {
    user: String,
    /// When the login happened (seconds); the family ends `max_age_s` after.
    started: i64,
    /// The hash (hex) of the one token that may be used next.
    current: String,
    revoked: bool,
}

/// Every refresh-token family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Families {
    families: HashMap<String, Family>,
    /// Token hash (hex) to family, for current and spent tokens alike.
    tokens: HashMap<String, String>,
}

/// A token handed out, and the family it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The refresh token (give it to the client; it is not kept).
    pub token: String,
    /// The family (the login).
    pub family: String,
    /// Whose it is.
    pub user: String,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Families {
    /// Starts a family for `user` at `now` with 32 fresh random bytes from the caller.
    pub fn start(&mut self, user: &str, now: i64, random: [u8; 32], family_id: &str) -> Issued {
        let token = B64.encode(random);
        self.families.insert(
            family_id.to_owned(),
            Family { user: user.to_owned(), started: now, current: hash(&token), revoked: false },
        );
        self.tokens.insert(hash(&token), family_id.to_owned());
        Issued { token, family: family_id.to_owned(), user: user.to_owned() }
    }

    /// Spends `token` and hands out the next one of its family, unless the family is older
    /// than `max_age_s`. A spent token revokes its family.
    pub fn refresh(&mut self, token: &str, now: i64, max_age_s: i64, random: [u8; 32]) -> Result<Issued, RefreshError> {
        let h = hash(token);
        let id = self.tokens.get(&h).cloned().ok_or(RefreshError::Unknown)?;
        let family = self.families.get_mut(&id).ok_or(RefreshError::Unknown)?;
        if family.revoked {
            return Err(RefreshError::Revoked);
        }
        if family.current != h {
            family.revoked = true;
            return Err(RefreshError::Reused);
        }
        if now >= family.started + max_age_s {
            family.revoked = true;
            return Err(RefreshError::Expired);
        }
        let next = B64.encode(random);
        family.current = hash(&next);
        let user = family.user.clone();
        self.tokens.insert(hash(&next), id.clone());
        Ok(Issued { token: next, family: id, user })
    }

    /// Ends a login (logout, or an administrator revoking it).
    pub fn revoke(&mut self, family: &str) {
        if let Some(f) = self.families.get_mut(family) {
            f.revoked = true;
        }
    }

    /// Ends every login of `user` (password change, account disabled).
    pub fn revoke_user(&mut self, user: &str) {
        for f in self.families.values_mut().filter(|f| f.user == user) {
            f.revoked = true;
        }
    }

    /// Forgets families past their absolute lifetime.
    pub fn prune(&mut self, now: i64, max_age_s: i64) {
        self.families.retain(|_, f| now < f.started + max_age_s);
        let families = &self.families;
        self.tokens.retain(|_, id| families.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn each_refresh_spends_its_token_and_a_reused_one_revokes_the_family() {
        let mut f = Families::default();
        let login = f.start("dr.ana", 0, [1; 32], "fam-1");
        let second = f.refresh(&login.token, 10, DAY, [2; 32]).unwrap();
        assert_eq!(second.user, "dr.ana");
        let third = f.refresh(&second.token, 20, DAY, [3; 32]).unwrap();
        // A thief replays the first token: refused, and the family ends for everyone.
        assert_eq!(f.refresh(&login.token, 30, DAY, [4; 32]), Err(RefreshError::Reused));
        assert_eq!(f.refresh(&third.token, 31, DAY, [5; 32]), Err(RefreshError::Revoked));
        // Another login of the same user is untouched.
        let other = f.start("dr.ana", 40, [6; 32], "fam-2");
        assert!(f.refresh(&other.token, 41, DAY, [7; 32]).is_ok());
    }

    #[test]
    fn unknown_expired_and_revoked_tokens_are_refused() {
        let mut f = Families::default();
        assert_eq!(f.refresh("nope", 0, DAY, [0; 32]), Err(RefreshError::Unknown));
        let a = f.start("dr.ana", 0, [1; 32], "a");
        assert_eq!(f.refresh(&a.token, DAY, DAY, [2; 32]), Err(RefreshError::Expired));
        let b = f.start("dr.ana", 0, [3; 32], "b");
        f.revoke_user("dr.ana");
        assert_eq!(f.refresh(&b.token, 1, DAY, [4; 32]), Err(RefreshError::Revoked));
        f.prune(2 * DAY, DAY);
        assert_eq!(f.refresh(&b.token, 2 * DAY, DAY, [5; 32]), Err(RefreshError::Unknown));
        // Only hashes are kept.
        let c = f.start("dr.sam", 0, [9; 32], "c");
        assert!(!serde_json::to_string(&f).unwrap().contains(&c.token));
    }
}
