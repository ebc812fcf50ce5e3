//! What the hub keeps about accounts and logins, and how it is sealed into storage.
//!
//! Each record is one identity row: its kind and key in clear (so it can be found), its
//! body sealed with a key bound to its kind and key (a body moved to another row does not
//! open). Secrets are kept as verifiers or hashes; the TOTP secret, which must be read back
//! to check a code, is inside the sealed body.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::roles::Role;
use crate::storage::crypto::Sealer;
use crate::storage::{IdentityRow, Storage, StorageError};

/// Record kinds.
pub(crate) const USER: &str = "user";
pub(crate) const SESSION: &str = "session";
pub(crate) const SIGNING_KEY: &str = "signing_key";
pub(crate) const RESET: &str = "reset";
pub(crate) const ROSTER_ACK: &str = "roster_ack";
pub(crate) const SSO_PENDING: &str = "sso_pending";
pub(crate) const DECOY: &str = "decoy_attempts";

/// An account.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct User {
    pub(crate) org: String,
    pub(crate) username: String,
    pub(crate) roles: Vec<Role>,
    #[serde(default)]
    pub(crate) email: Option<String>,
    /// The argon2id verifier (PHC string); none until the user sets a password.
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) totp: Option<Totp>,
    /// SHA-256 (hex) of each unused recovery code.
    #[serde(default)]
    pub(crate) recovery: Vec<String>,
    #[serde(default)]
    pub(crate) attempts: accounts::lockout::Attempts,
    #[serde(default)]
    pub(crate) disabled: bool,
    pub(crate) created_at: i64,
    /// The argon2id verifier of the PIN crew use on the vans' touchscreens, which goes to
    /// the organisation's vans in the roster.
    #[serde(default)]
    pub(crate) pin: Option<String>,
    /// The identity provider's person this account is linked to (`issuer|sub`), set by the
    /// first single sign-on.
    #[serde(default)]
    pub(crate) sso_subject: Option<String>,
    /// When a reset link was last mailed to the account's address.
    #[serde(default)]
    pub(crate) reset_mailed_at: Option<i64>,
    /// Made for single sign-on: its first SSO login binds it to the person at the
    /// provider. Other accounts are bound only by an administrator.
    #[serde(default)]
    pub(crate) sso_only: bool,
}

impl User {
    /// The record key: organisation and user name, which no name can contain a `/` of.
    pub(crate) fn key(org: &str, username: &str) -> String {
        format!("{org}/{username}")
    }

    pub(crate) fn needs_mfa(&self) -> bool {
        self.roles.iter().any(|r| r.needs_mfa()) || self.totp.as_ref().is_some_and(|t| t.confirmed)
    }
}

/// A TOTP authenticator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Totp {
    pub(crate) secret: Vec<u8>,
    /// The step of the last code accepted: no code of it or before is taken again.
    #[serde(default)]
    pub(crate) last_step: Option<u64>,
    /// Whether the user proved they hold it (a code was accepted once).
    pub(crate) confirmed: bool,
}

/// A login: its refresh tokens, its browser cookie, its timeouts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Session {
    pub(crate) org: String,
    pub(crate) username: String,
    pub(crate) roles: Vec<Role>,
    pub(crate) created_at: i64,
    pub(crate) last_seen: i64,
    /// Logged in with the password but the account still has to enrol its second factor:
    /// the session can do nothing else.
    pub(crate) mfa_pending: bool,
    /// SHA-256 (hex) of the browser cookie's secret, and of the CSRF token.
    pub(crate) cookie_hash: String,
    pub(crate) csrf_hash: String,
    /// The refresh-token family of this login (one family, keyed by the session id).
    pub(crate) refresh: tokens::refresh::Families,
    pub(crate) ended: bool,
    /// How the user logged in (`password`, `sso`).
    pub(crate) method: String,
}

/// Failed logins to a name that has no account, counted like an account's so a lockout
/// does not tell which names exist. Keyed by a keyed hash of the name.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Decoy {
    pub(crate) attempts: accounts::lockout::Attempts,
    /// The last failure, seconds: counts untouched for a day are swept.
    pub(crate) last: i64,
}

/// A signing key of the access tokens.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SigningKey {
    pub(crate) pkcs8: Vec<u8>,
    pub(crate) created_at: i64,
}

/// A pending password reset (or first password, for a new account).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Reset {
    pub(crate) org: String,
    pub(crate) username: String,
    pub(crate) expires_at: i64,
}

fn label(kind: &str, id: &str) -> Vec<u8> {
    format!("identity:{kind}:{id}").into_bytes()
}

/// Sealed identity records in a storage.
#[derive(Clone, Copy)]
pub(crate) struct Vault<'a> {
    pub(crate) storage: &'a dyn Storage,
    pub(crate) sealer: &'a Sealer,
}

impl Vault<'_> {
    /// Reads and opens a record, with its version.
    pub(crate) fn load<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Result<Option<(T, i64)>, StorageError> {
        let Some(row) = self.storage.identity(kind, id)? else { return Ok(None) };
        Ok(Some((open(self.sealer, &row)?, row.version)))
    }

    /// Seals and writes a record at `expected_version` (0: new), with `audit` in the same
    /// transaction.
    pub(crate) fn store<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        org: &str,
        expected_version: i64,
        body: &T,
        audit: Option<&audit::Record>,
    ) -> Result<i64, StorageError> {
        let plain = serde_json::to_vec(body).map_err(|e| StorageError::Database(e.to_string()))?;
        self.storage.put_identity(kind, id, org, expected_version, &self.sealer.seal(&label(kind, id), &plain), audit)
    }
}

/// Opens a record read by the caller.
pub(crate) fn open<T: DeserializeOwned>(sealer: &Sealer, row: &IdentityRow) -> Result<T, StorageError> {
    let plain = sealer.open(&label(&row.kind, &row.id), &row.sealed)?;
    serde_json::from_slice(&plain)
        .map_err(|e| StorageError::Unsealed(format!("identity record {}/{} does not parse: {e}", row.kind, row.id)))
}
