//! Accounts, logins and tokens on the hub: who a caller is.
//!
//! - [`roles`]: roles and the permissions they carry, per organisation.
//! - `records`: what is kept (accounts, sessions, signing keys, reset tokens), sealed.
//! - This module: [`Identity`], the service the front door and the login routes call:
//!   password logins with a second factor (TOTP, or a recovery code) required for doctors and
//!   admins, lockout with back-off, sessions with idle and absolute timeouts, access tokens
//!   (EdDSA JWTs under rotating keys) and rotating refresh tokens, browser cookies with a
//!   CSRF token, single-use reset links.
//! - [`sso`]: logins through an organisation's OpenID Connect provider.
//!
//! Every method takes the time from its caller, so tests drive timeouts without waiting.

pub(crate) mod http;
pub(crate) mod records;
pub mod roles;
pub mod sso;

use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use case_model::{CaseId, OrgId, UserId};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokens::jwt::KeySet;

use self::records::{RESET, ROSTER_ACK, Reset, SESSION, SIGNING_KEY, Session, SigningKey, Totp, USER, User, Vault};
use self::roles::{Permission, Role};
use crate::storage::crypto::Sealer;
use crate::storage::{Storage, StorageError};

/// How long a new account's first-password link works, seconds.
pub const SETUP_LINK_S: i64 = 72 * 3600;
/// How long a password reset link works, seconds.
pub const RESET_LINK_S: i64 = accounts::reset::LIFETIME_S;
impl std::fmt::Debug for ResetMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetMail").field("username", &self.username).field("org", &self.org).finish_non_exhaustive()
    }
}

/// A second reset mail for one account is not sent sooner than this, seconds.
pub const RESET_MAIL_INTERVAL_S: i64 = 60;

/// A reset link to mail.
#[derive(Clone)]
pub struct ResetMail {
    /// The account's mail address.
    pub to: String,
    /// The single-use token.
    pub token: String,
    /// The account.
    pub username: String,
    /// Its organisation.
    pub org: String,
}

/// An account as an administrator sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserSummary {
    /// The user name.
    pub username: String,
    /// Roles in the organisation.
    pub roles: Vec<Role>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Whether it has an authenticator.
    pub mfa_enrolled: bool,
}

/// How tokens and sessions are made; the defaults suit a hospital deployment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `iss` of access tokens (the hub's URL).
    pub issuer: String,
    /// The `aud` of access tokens.
    pub audience: String,
    /// How long an access token works, seconds.
    pub access_lifetime_s: i64,
    /// A session unused this long ends, seconds.
    pub idle_timeout_s: i64,
    /// A session ends this long after its login, whatever happens, seconds.
    pub absolute_timeout_s: i64,
    /// A new signing key is made when the newest is this old, seconds.
    pub key_rotation_s: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: "medvan-hub".into(),
            audience: "medvan-api".into(),
            access_lifetime_s: 300,
            idle_timeout_s: 15 * 60,
            absolute_timeout_s: 12 * 3600,
            key_rotation_s: 24 * 3600,
        }
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user (their name in the organisation).
    pub user: UserId,
    /// Their organisation: the only one whose data they reach.
    pub org: OrgId,
    /// Their roles there.
    pub roles: Vec<Role>,
    /// The login session.
    pub session: String,
    /// For callers by the browser cookie: the SHA-256 (hex) of the session's CSRF token,
    /// which their state-changing requests must carry.
    pub(crate) csrf_hash: Option<String>,
    /// For a van calling with a call ticket ([`Identity::issue_call_ticket`]): the one case
    /// whose live call it may join. Such a caller has no roles, so nothing else lets it in.
    pub(crate) call_case: Option<CaseId>,
}

impl Principal {
    /// Whether the caller's roles allow `p`.
    pub fn can(&self, p: Permission) -> bool {
        roles::allows(&self.roles, p)
    }

    /// The case whose call this caller (a van with a ticket) may join, if that is what it is.
    pub fn call_case(&self) -> Option<CaseId> {
        self.call_case
    }
}

/// How long a van's call ticket is taken: long enough to start or end a call, too short to
/// be worth stealing (a call already running does not need it).
pub const CALL_TICKET_S: i64 = 120;

/// What a call ticket's token id starts with; login session ids are hex, never this.
const CALL_TICKET_JTI: &str = "call";

/// The subject of a van's call ticket: not a user name (those may not hold `:`).
fn van_subject(van: &str) -> String {
    format!("van:{van}")
}

/// Why a login, a refresh or a reset failed. The messages are safe to show the person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Wrong organisation, user name or password (which one is not said).
    #[error("the organisation, user name or password is wrong")]
    BadCredentials,
    /// Too many failures: wait.
    #[error("too many failed attempts; try again in {0} s")]
    LockedOut(i64),
    /// The account needs its second factor: send `totp` (or a `recovery_code`).
    #[error("this account needs the code from its authenticator app: send it as \"totp\" (or a \"recovery_code\")")]
    SecondFactorRequired,
    /// The second factor was wrong or replayed.
    #[error("{0}")]
    SecondFactor(String),
    /// The account is disabled.
    #[error("this account is disabled; ask your organisation's administrator")]
    Disabled,
    /// A refresh, enrolment or reset token that does not work (any more).
    #[error("{0}")]
    BadToken(String),
    /// A new password that does not meet the rules.
    #[error("{0}")]
    WeakPassword(String),
    /// A name or role that is not valid, or an account that exists.
    #[error("{0}")]
    Invalid(String),
    /// No such account.
    #[error("there is no user {0}")]
    NoSuchUser(String),
    /// Storage failed; nothing was changed.
    #[error("the hub's storage failed: {0}")]
    Storage(#[from] StorageError),
}

/// Why a request's credentials were refused (the answer is 401 without detail; this is
/// for the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The access token failed verification.
    #[error("access token refused: {0}")]
    Token(#[from] tokens::jwt::TokenError),
    /// The cookie names no live session.
    #[error("no live session for this cookie")]
    NoSession,
    /// The session ended by its idle or absolute timeout.
    #[error("the session timed out")]
    TimedOut,
    /// The storage failed.
    #[error("the session store failed: {0}")]
    Storage(String),
}

/// What a completed login hands the client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tokens {
    /// The access token (a JWT): `Authorization: Bearer <it>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token works.
    pub expires_in: i64,
    /// Spend it at `/api/v1/auth/refresh` for a new pair; it works once.
    pub refresh_token: String,
    /// For browsers: send it as `X-CSRF-Token` on every state-changing request.
    pub csrf_token: String,
    /// The user.
    pub user: String,
    /// Their organisation.
    pub org: String,
    /// Their roles.
    pub roles: Vec<Role>,
    /// When the session ends at the latest (seconds since the epoch).
    pub session_expires_at: i64,
    /// The browser cookie's value (sent as `Set-Cookie`, never in the body).
    #[serde(skip)]
    pub cookie: String,
}

/// What a password login leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in.
    Session(Box<Tokens>),
    /// The account must enrol an authenticator first; the token opens the enrolment
    /// routes only.
    EnrolMfa {
        /// For `/api/v1/auth/mfa/enrol` and `/confirm`.
        enrolment_token: String,
    },
}

/// A new authenticator, shown once.
#[derive(Debug, serde::Serialize)]
pub struct MfaSetup {
    /// The secret, base32 (to type into an authenticator app).
    pub secret: String,
    /// The `otpauth://` URI (for a QR code).
    pub otpauth_uri: String,
    /// Ten single-use recovery codes; keep them offline.
    pub recovery_codes: Vec<String>,
}

/// A second factor offered with a password.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    /// A TOTP code.
    Totp(String),
    /// A recovery code (spent on use).
    Recovery(String),
}

/// The hub's identity service.
#[derive(Debug)]
pub struct Identity {
    storage: Arc<dyn Storage>,
    sealer: Sealer,
    settings: Settings,
    keys: RwLock<KeySet>,
    /// When the keys were last read from storage (seconds).
    keys_loaded_at: RwLock<i64>,
    /// Whether each session seen with a bearer token was live, and when that was checked:
    /// a logout or a disabled account stops its access tokens within [`SESSION_RECHECK_S`].
    session_checks: std::sync::Mutex<std::collections::HashMap<String, (bool, i64)>>,
    /// Claims of access tokens whose signature was checked, by the token's SHA-256.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], tokens::jwt::Claims>>,
    /// Organisations whose crew roster changed.
    rosters: tokio::sync::broadcast::Sender<String>,
    rng: SystemRandom,
}

/// How long a bearer token's session is taken as live before it is looked at again.
pub const SESSION_RECHECK_S: i64 = 5;

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A verifier to check unknown users' passwords against, so a wrong user name takes as long
/// as a wrong password.
fn decoy_verifier() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| accounts::password::hash("decoy password, never matches", [7; 16]))
}

/// Text from a request as it may go into the log: at most 64 characters of a name's
/// alphabet, anything else shown as `?`.
fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || "._:@/-".contains(c) { c } else { '?' }).collect()
}

/// Where a session token (`<session id>.<secret>`) splits.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (sid, secret) = token.split_once('.')?;
    (sid.len() == 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((sid, secret))
}

/// RFC 4648 base32 without padding, as authenticator apps take secrets.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in bytes.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..chars {
            out.push(ALPHABET[((n >> (35 - 5 * i)) & 31) as usize] as char);
        }
    }
    out
}

/// Checks a new password: long enough to resist guessing, short enough to hash.
pub fn check_password_rules(password: &str, username: &str) -> Result<(), IdentityError> {
    let chars = password.chars().count();
    if chars < 12 {
        return Err(IdentityError::WeakPassword(format!(
            "the password has {chars} characters; use at least 12 (a few unrelated words work well)"
        )));
    }
    if password.len() > 256 {
        return Err(IdentityError::WeakPassword("the password is longer than 256 bytes; use a shorter one".into()));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(IdentityError::WeakPassword("the password must not be the user name".into()));
    }
    Ok(())
}

/// Checks a new PIN: six to eight digits, not one digit repeated, not a run up or down.
pub fn check_pin_rules(pin: &str) -> Result<(), IdentityError> {
    let digits: Vec<u8> = pin.bytes().collect();
    if !(6..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return Err(IdentityError::WeakPassword("a PIN is 6 to 8 digits".into()));
    }
    let steps: Vec<i16> = digits.windows(2).map(|w| i16::from(w[1]) - i16::from(w[0])).collect();
    if steps.iter().all(|d| *d == 0) || steps.iter().all(|d| *d == 1) || steps.iter().all(|d| *d == -1) {
        return Err(IdentityError::WeakPassword(
            "the PIN is too easy to guess (one digit repeated, or a run like 123456); choose another".into(),
        ));
    }
    Ok(())
}

impl Identity {
    /// Opens the service over `storage`, making a signing key if none is fresh enough.
    pub fn open(
        storage: Arc<dyn Storage>,
        sealer: Sealer,
        settings: Settings,
        now: i64,
    ) -> Result<Identity, StorageError> {
        let rng = SystemRandom::new();
        let keys = Self::load_keys(&*storage, &sealer, &settings, &rng, now)?;
        Ok(Identity {
            storage,
            sealer,
            settings,
            keys: RwLock::new(keys),
            keys_loaded_at: RwLock::new(now),
            session_checks: Default::default(),
            verified: Default::default(),
            rosters: tokio::sync::broadcast::channel(64).0,
            rng,
        })
    }

    fn load_keys(
        storage: &dyn Storage,
        sealer: &Sealer,
        settings: &Settings,
        rng: &SystemRandom,
        now: i64,
    ) -> Result<KeySet, StorageError> {
        let mut stored: Vec<(String, SigningKey)> = storage
            .identities(SIGNING_KEY, "")?
            .iter()
            .map(|row| Ok((row.id.clone(), records::open::<SigningKey>(sealer, row)?)))
            .collect::<Result<_, StorageError>>()?;
        stored.sort_by_key(|(_, k)| k.created_at);
        if stored.last().is_none_or(|(_, k)| now - k.created_at >= settings.key_rotation_s) {
            let pkcs8 = KeySet::generate_pkcs8(rng).map_err(StorageError::Database)?;
            let mut id = [0u8; 8];
            rng.fill(&mut id).map_err(|_| StorageError::Database("no randomness".into()))?;
            let kid = hex::encode(id);
            let key = SigningKey { pkcs8, created_at: now };
            Vault { storage, sealer }.store(SIGNING_KEY, &kid, "", 0, &key, None)?;
            stored.push((kid, key));
        }
        // Keys too old to have signed a live token are not loaded (and are removed).
        let keep_after = stored.last().map_or(now, |(_, k)| k.created_at) - settings.access_lifetime_s - 120;
        let mut set: Option<KeySet> = None;
        for (i, (kid, key)) in stored.iter().enumerate() {
            let superseded_at = stored.get(i + 1).map(|(_, k)| k.created_at);
            if superseded_at.is_some_and(|at| at < keep_after) {
                storage.delete_identity(SIGNING_KEY, kid, None)?;
                continue;
            }
            match &mut set {
                None => {
                    set = Some(
                        KeySet::new(&settings.issuer, &settings.audience, settings.access_lifetime_s, kid, &key.pkcs8)
                            .map_err(StorageError::Database)?,
                    )
                }
                Some(s) => s.rotate(kid, &key.pkcs8, key.created_at).map_err(StorageError::Database)?,
            }
        }
        let mut set = set.ok_or_else(|| StorageError::Database("no signing key".into()))?;
        set.prune(now);
        Ok(set)
    }

    /// Rotates the signing key if it is due, picks up keys another hub process made, and
    /// sweeps single sign-ons started and never finished.
    pub fn maintain_keys(&self, now: i64) -> Result<(), StorageError> {
        let keys = Self::load_keys(&*self.storage, &self.sealer, &self.settings, &self.rng, now)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        *self.keys_loaded_at.write().unwrap_or_else(|p| p.into_inner()) = now;
        // The sweep is housekeeping: a failure is logged and tried again next time, and never
        // holds up the keys above.
        if let Err(e) = self.sweep(now) {
            tracing::warn!(error = %e, "could not sweep stale login records; trying again later");
        }
        Ok(())
    }

    /// Removes single sign-ons started and never finished, and failure counts of unknown
    /// names untouched for a day.
    fn sweep(&self, now: i64) -> Result<(), StorageError> {
        for row in self.storage.identities(records::SSO_PENDING, "")? {
            let stale = records::open::<sso::PendingSso>(&self.sealer, &row)
                .map_or(true, |p| now >= p.created_at + sso::PENDING_S);
            if stale {
                self.storage.delete_identity(records::SSO_PENDING, &row.id, None)?;
            }
        }
        for row in self.storage.identities(records::DECOY, "")? {
            let stale = records::open::<records::Decoy>(&self.sealer, &row)
                .map_or(true, |d| now - d.last >= 86_400 && d.attempts.check(now).is_ok());
            if stale {
                self.storage.delete_identity(records::DECOY, &row.id, None)?;
            }
        }
        Ok(())
    }

    /// The keys identity records are sealed with (for records kept beside them).
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The storage the accounts live in (for routes that read beside them).
    pub(crate) fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The verification keys (JWKS).
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).jwks()
    }

    fn vault(&self) -> Vault<'_> {
        Vault { storage: &*self.storage, sealer: &self.sealer }
    }

    fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        // The system's generator does not fail on Linux once booted.
        self.rng.fill(&mut b).expect("the system random generator works");
        b
    }

    fn audit(&self, actor: &str, action: &str, outcome: audit::Outcome, detail: String, at: i64) -> audit::Record {
        audit::Record {
            at: at * 1000,
            actor: actor.to_owned(),
            action: action.to_owned(),
            case_id: None,
            outcome,
            detail,
        }
    }

    // ---- accounts -------------------------------------------------------------------

    /// Creates an account with `roles` and returns a link token for its first password
    /// (valid [`SETUP_LINK_S`]).
    pub fn add_user(
        &self,
        actor: &str,
        org: &OrgId,
        username: &UserId,
        roles: &[Role],
        email: Option<String>,
        now: i64,
    ) -> Result<String, IdentityError> {
        self.create_user(actor, org, username, roles, email, false, now)?;
        self.reset_link(actor, org, username, now, SETUP_LINK_S)
    }

    /// Creates an account that logs in through the organisation's identity provider: no
    /// password, no setup link; its first single sign-on binds it to the person at the
    /// provider whose claim names it.
    pub fn add_sso_user(
        &self,
        actor: &str,
        org: &OrgId,
        username: &UserId,
        roles: &[Role],
        email: Option<String>,
        now: i64,
    ) -> Result<(), IdentityError> {
        self.create_user(actor, org, username, roles, email, true, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_user(
        &self,
        actor: &str,
        org: &OrgId,
        username: &UserId,
        roles: &[Role],
        email: Option<String>,
        sso_only: bool,
        now: i64,
    ) -> Result<(), IdentityError> {
        if roles.is_empty() {
            return Err(IdentityError::Invalid("give the user at least one role".into()));
        }
        if username.as_str().contains(':') {
            // `van:...` and `system:...` name vans and the hub's own processes.
            return Err(IdentityError::Invalid("a user name may not contain `:`; pick another".into()));
        }
        if !self.storage.orgs()?.iter().any(|(id, _)| id == org.as_str()) {
            return Err(StorageError::NoSuchOrg(org.to_string()).into());
        }
        let user = User {
            org: org.to_string(),
            username: username.to_string(),
            roles: roles.to_vec(),
            email,
            password: None,
            totp: None,
            recovery: Vec::new(),
            attempts: Default::default(),
            disabled: false,
            created_at: now,
            pin: None,
            sso_subject: None,
            reset_mailed_at: None,
            sso_only,
        };
        let key = User::key(org.as_str(), username.as_str());
        let roles_text: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        let rec = self.audit(
            actor,
            "user.create",
            audit::Outcome::Allowed,
            format!("user={key} roles={}{}", roles_text.join(","), if sso_only { " sso" } else { "" }),
            now,
        );
        match self.vault().store(USER, &key, org.as_str(), 0, &user, Some(&rec)) {
            Err(StorageError::Conflict) => {
                return Err(IdentityError::Invalid(format!("user {username} exists already in {org}")));
            }
            other => other?,
        };
        Ok(())
    }

    /// A single-use link token that sets the account's password (valid `valid_s`).
    pub fn reset_link(
        &self,
        actor: &str,
        org: &OrgId,
        username: &UserId,
        now: i64,
        valid_s: i64,
    ) -> Result<String, IdentityError> {
        let key = User::key(org.as_str(), username.as_str());
        if self.vault().load::<User>(USER, &key)?.is_none() {
            return Err(IdentityError::NoSuchUser(key));
        }
        let token = B64.encode(self.random::<32>());
        let reset = Reset { org: org.to_string(), username: username.to_string(), expires_at: now + valid_s };
        let rec = self.audit(actor, "user.reset_link", audit::Outcome::Allowed, format!("user={key}"), now);
        self.vault().store(RESET, &sha_hex(&token), org.as_str(), 0, &reset, Some(&rec))?;
        Ok(token)
    }

    /// A reset link for a user who forgot their password, to mail to the address on their
    /// account: none for an unknown, disabled or address-less account, or when one was
    /// mailed less than [`RESET_MAIL_INTERVAL_S`] ago (so nobody floods a mailbox). The
    /// caller answers the same whatever this finds.
    pub fn reset_by_mail(&self, org: &str, username: &str, now: i64) -> Result<Option<ResetMail>, IdentityError> {
        let (Ok(o), Ok(u)) = (OrgId::parse(org), UserId::parse(username)) else { return Ok(None) };
        let key = User::key(org, username);
        let mut why_not = None;
        let user = self.update_user(&key, |user| {
            why_not = if user.disabled {
                Some("disabled")
            } else if user.email.is_none() {
                Some("no mail address")
            } else if user.sso_subject.is_some() {
                // Its login is the hospital's: a password set here would outlive the hospital
                // switching the person off.
                Some("logs in through single sign-on")
            } else if user.reset_mailed_at.is_some_and(|t| now - t < RESET_MAIL_INTERVAL_S) {
                Some("mailed a moment ago")
            } else {
                user.reset_mailed_at = Some(now);
                None
            };
            Ok(())
        });
        let user = match user {
            Ok(user) => user,
            Err(IdentityError::NoSuchUser(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let detail = format!("user={key} by=mail");
        if let Some(why) = why_not {
            let rec = self.audit(username, "user.reset_link", audit::Outcome::Refused, format!("{detail} {why}"), now);
            self.storage.audit(&rec)?;
            return Ok(None);
        }
        // A new link replaces any earlier one: only the latest mail works.
        for row in self.storage.identities(RESET, org)? {
            if records::open::<Reset>(&self.sealer, &row).is_ok_and(|r| r.username == username) {
                self.storage.delete_identity(RESET, &row.id, None)?;
            }
        }
        let token = self.reset_link(username, &o, &u, now, RESET_LINK_S)?;
        Ok(user.email.map(|to| ResetMail { to, token, username: user.username, org: user.org }))
    }

    /// Sets a password with a reset link token; the token is spent and every login of the
    /// account ends.
    pub fn redeem_reset(&self, token: &str, password: &str, now: i64) -> Result<(), IdentityError> {
        let id = sha_hex(token.trim());
        let Some((reset, _)) = self.vault().load::<Reset>(RESET, &id)? else {
            return Err(IdentityError::BadToken(
                "this link is not valid or was used already; ask for a new one".into(),
            ));
        };
        if now >= reset.expires_at {
            self.storage.delete_identity(RESET, &id, None)?;
            return Err(IdentityError::BadToken("this link has expired; ask for a new one".into()));
        }
        check_password_rules(password, &reset.username)?;
        // Spending the token first: of two concurrent uses only one finds it.
        if !self.storage.delete_identity(RESET, &id, None)? {
            return Err(IdentityError::BadToken("this link was used already; ask for a new one".into()));
        }
        let key = User::key(&reset.org, &reset.username);
        let verifier = accounts::password::hash(password, self.random::<16>());
        self.update_user(&key, |u| {
            u.password = Some(verifier.clone());
            u.attempts = Default::default();
            Ok(())
        })?;
        self.storage.audit(&self.audit(
            &reset.username,
            "user.password_set",
            audit::Outcome::Allowed,
            format!("user={key}"),
            now,
        ))?;
        self.end_sessions_of(&reset.org, &reset.username, now)?;
        Ok(())
    }

    /// Disables an account and ends its logins.
    pub fn disable_user(&self, actor: &str, org: &OrgId, username: &UserId, now: i64) -> Result<(), IdentityError> {
        let key = User::key(org.as_str(), username.as_str());
        self.update_user(&key, |u| {
            u.disabled = true;
            Ok(())
        })?;
        self.roster_changed(org.as_str());
        self.storage.audit(&self.audit(actor, "user.disable", audit::Outcome::Allowed, format!("user={key}"), now))?;
        self.end_sessions_of(org.as_str(), username.as_str(), now)?;
        Ok(())
    }

    /// Applies `f` to an account, retrying when another writer came first.
    fn update_user(
        &self,
        key: &str,
        mut f: impl FnMut(&mut User) -> Result<(), IdentityError>,
    ) -> Result<User, IdentityError> {
        loop {
            let Some((mut user, version)) = self.vault().load::<User>(USER, key)? else {
                return Err(IdentityError::NoSuchUser(key.to_owned()));
            };
            f(&mut user)?;
            match self.vault().store(USER, key, &user.org.clone(), version, &user, None) {
                Ok(_) => return Ok(user),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The accounts of an organisation.
    pub fn users(&self, org: &OrgId) -> Result<Vec<UserSummary>, IdentityError> {
        self.storage
            .identities(USER, org.as_str())?
            .iter()
            .map(|row| {
                let u: User = records::open(&self.sealer, row)?;
                let mfa_enrolled = u.totp.as_ref().is_some_and(|t| t.confirmed);
                Ok(UserSummary { username: u.username, roles: u.roles, disabled: u.disabled, mfa_enrolled })
            })
            .collect()
    }

    // ---- crew PINs and the vans' roster ------------------------------------------------

    /// Sets the caller's PIN for the vans' touchscreens (6 to 8 digits, not a run or a
    /// repeat); it reaches the organisation's vans with their next sync.
    pub fn set_pin(&self, org: &OrgId, username: &UserId, pin: &str, now: i64) -> Result<(), IdentityError> {
        check_pin_rules(pin)?;
        let verifier = accounts::password::hash(pin, self.random::<16>());
        let key = User::key(org.as_str(), username.as_str());
        self.update_user(&key, |u| {
            u.pin = Some(verifier.clone());
            Ok(())
        })?;
        self.roster_changed(org.as_str());
        self.storage.audit(&self.audit(
            username.as_str(),
            "user.pin_set",
            audit::Outcome::Allowed,
            format!("user={key}"),
            now,
        ))?;
        Ok(())
    }

    /// Removes an account's PIN: it stops working on the vans connected to this hub process
    /// within moments, and on the others at their next sync.
    pub fn clear_pin(&self, actor: &str, org: &OrgId, username: &UserId, now: i64) -> Result<(), IdentityError> {
        let key = User::key(org.as_str(), username.as_str());
        self.update_user(&key, |u| {
            u.pin = None;
            Ok(())
        })?;
        self.roster_changed(org.as_str());
        self.storage.audit(&self.audit(
            actor,
            "user.pin_cleared",
            audit::Outcome::Allowed,
            format!("user={key}"),
            now,
        ))?;
        Ok(())
    }

    /// Where changes of organisations' crew rosters are announced (by organisation), so
    /// connected vans get them in their open sync session. Only this process's changes are
    /// announced; a van connected to another hub process gets them at its next session.
    pub fn roster_changes(&self) -> tokio::sync::broadcast::Sender<String> {
        self.rosters.clone()
    }

    fn roster_changed(&self, org: &str) {
        // No receiver (no van connected) is fine: the roster goes at the next session.
        let _ = self.rosters.send(org.to_owned());
    }

    /// The crew roster of an organisation's vans: its paramedics with a PIN, not disabled,
    /// by name, and a digest of it.
    pub fn roster(&self, org: &str) -> Result<([u8; 32], Vec<sync_proto::CrewMember>), IdentityError> {
        let mut members = Vec::new();
        for row in self.storage.identities(USER, org)? {
            let u: User = records::open(&self.sealer, &row)?;
            if u.disabled || !u.roles.contains(&Role::Paramedic) {
                continue;
            }
            if let Some(pin) = u.pin {
                members.push(sync_proto::CrewMember {
                    username: u.username,
                    roles: u.roles.iter().map(|r| r.name().to_owned()).collect(),
                    pin_verifier: pin,
                });
            }
        }
        members.sort_by(|a, b| a.username.cmp(&b.username));
        let mut h = Sha256::new();
        for m in &members {
            h.update(serde_json::to_vec(&(&m.username, &m.roles, &m.pin_verifier)).unwrap_or_default());
            h.update([0]);
        }
        Ok((h.finalize().into(), members))
    }

    /// The digest of the roster a van last confirmed.
    pub fn roster_acked(&self, org: &str, van: &str) -> Result<Option<[u8; 32]>, IdentityError> {
        let id = format!("{org}/{van}");
        Ok(self.vault().load::<String>(ROSTER_ACK, &id)?.and_then(|(h, _)| hex::decode(h).ok()?.try_into().ok()))
    }

    /// Records that a van stored the roster with `digest`.
    pub fn set_roster_acked(&self, org: &str, van: &str, digest: [u8; 32]) -> Result<(), IdentityError> {
        let id = format!("{org}/{van}");
        loop {
            let version = self.vault().load::<String>(ROSTER_ACK, &id)?.map_or(0, |(_, v)| v);
            match self.vault().store(ROSTER_ACK, &id, org, version, &hex::encode(digest), None) {
                Err(StorageError::Conflict) => continue,
                other => {
                    other?;
                    return Ok(());
                }
            }
        }
    }

    // ---- logins ---------------------------------------------------------------------

    /// A password login, with the second factor where the account needs one.
    pub fn login(
        &self,
        org: &str,
        username: &str,
        password: &str,
        second: Option<SecondFactor>,
        now: i64,
    ) -> Result<LoginOutcome, IdentityError> {
        let key = User::key(org, username);
        let found = if OrgId::parse(org).is_ok() && UserId::parse(username).is_ok() {
            self.vault().load::<User>(USER, &key)?
        } else {
            None
        };
        if found.is_none() {
            // The same answers as for a real account, lockout included, and the same work:
            // neither the words, the timing nor a lock that never comes tell who exists.
            // Names that cannot exist are not written to the log as given.
            // The count lives in storage like an account's (every hub process, and a restart,
            // see the same one). A name that cannot be an account is not counted.
            if OrgId::parse(org).is_ok() && UserId::parse(username).is_ok() {
                self.count_decoy(&key, now)?;
            }
            let _ = accounts::password::verify(password, decoy_verifier());
            let actor = if UserId::parse(username).is_ok() { username } else { "unknown" };
            self.storage.audit(&self.audit(
                actor,
                "auth.login",
                audit::Outcome::Refused,
                format!("org={} unknown user", printable(org)),
                now,
            ))?;
            return Err(IdentityError::BadCredentials);
        }
        // The attempt counts as failed before it is checked, so guesses sent in parallel all
        // count; only a complete login clears the count.
        let user = self.update_user(&key, |u| {
            if let Err(l) = u.attempts.check(now) {
                return Err(IdentityError::LockedOut(l.retry_after_s));
            }
            u.attempts.failed(now);
            Ok(())
        })?;
        let password_ok = user.password.as_deref().is_some_and(|v| accounts::password::verify(password, v));
        if !password_ok {
            self.audit_failure(&key, &user, "wrong password", now)?;
            return Err(IdentityError::BadCredentials);
        }
        if user.disabled {
            return Err(IdentityError::Disabled);
        }
        let enrolled = user.totp.as_ref().is_some_and(|t| t.confirmed);
        if user.needs_mfa() && !enrolled {
            let sid = self.start_session(&user, now, true, "password")?;
            return Ok(LoginOutcome::EnrolMfa { enrolment_token: sid.cookie });
        }
        if enrolled {
            // Without a code the attempt stays counted: a password alone must not clear
            // the count that limits code guessing.
            let f = second.ok_or(IdentityError::SecondFactorRequired)?;
            if let Err(why) = self.check_second_factor(&key, f, now) {
                self.audit_failure(&key, &user, "wrong second factor", now)?;
                return Err(why);
            }
        }
        // Disabled meanwhile (an administrator acting during the password check): no session.
        let user = self.update_user(&key, |u| {
            if u.disabled {
                return Err(IdentityError::Disabled);
            }
            u.attempts.succeeded();
            Ok(())
        })?;
        let tokens = self.start_session(&user, now, false, "password")?;
        Ok(LoginOutcome::Session(Box::new(tokens)))
    }

    /// Counts a failed login to a name with no account; locked out as an account would be.
    fn count_decoy(&self, key: &str, now: i64) -> Result<(), IdentityError> {
        let id = self.sealer.name_key(key);
        loop {
            let (mut d, version) = self.vault().load::<records::Decoy>(records::DECOY, &id)?.unwrap_or_default();
            if let Err(l) = d.attempts.check(now) {
                return Err(IdentityError::LockedOut(l.retry_after_s));
            }
            d.attempts.failed(now);
            d.last = now;
            match self.vault().store(records::DECOY, &id, "", version, &d, None) {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn audit_failure(&self, key: &str, user: &User, why: &str, now: i64) -> Result<(), IdentityError> {
        let locked =
            user.attempts.check(now).err().map(|l| format!(" locked_for={}s", l.retry_after_s)).unwrap_or_default();
        self.storage.audit(&self.audit(
            &user.username,
            "auth.login",
            audit::Outcome::Refused,
            format!("user={key} {why} failures={}{locked}", user.attempts.failures()),
            now,
        ))?;
        Ok(())
    }

    fn check_second_factor(&self, key: &str, factor: SecondFactor, now: i64) -> Result<(), IdentityError> {
        self.update_user(key, |u| match &factor {
            SecondFactor::Totp(code) => {
                let t = u.totp.as_mut().ok_or(IdentityError::SecondFactorRequired)?;
                let step = accounts::totp::verify(&t.secret, code, now, t.last_step)
                    .map_err(|e| IdentityError::SecondFactor(e.to_string()))?;
                t.last_step = Some(step);
                Ok(())
            }
            SecondFactor::Recovery(code) => {
                let h = sha_hex(&code.trim().to_ascii_uppercase());
                let before = u.recovery.len();
                u.recovery.retain(|c| *c != h);
                if u.recovery.len() == before {
                    return Err(IdentityError::SecondFactor("this recovery code is not valid or was used".into()));
                }
                Ok(())
            }
        })?;
        Ok(())
    }

    fn start_session(&self, user: &User, now: i64, mfa_pending: bool, method: &str) -> Result<Tokens, IdentityError> {
        let sid = hex::encode(self.random::<16>());
        let cookie_secret = B64.encode(self.random::<32>());
        let csrf = B64.encode(self.random::<32>());
        let mut refresh = tokens::refresh::Families::default();
        let issued = refresh.start(&user.username, now, self.random::<32>(), &sid);
        let session = Session {
            org: user.org.clone(),
            username: user.username.clone(),
            roles: user.roles.clone(),
            created_at: now,
            last_seen: now,
            mfa_pending,
            cookie_hash: sha_hex(&cookie_secret),
            csrf_hash: sha_hex(&csrf),
            refresh,
            ended: false,
            method: method.to_owned(),
        };
        let action = if mfa_pending { "auth.mfa_enrolment_started" } else { "auth.login" };
        let rec = self.audit(
            &user.username,
            action,
            audit::Outcome::Allowed,
            format!("user={} session={sid} method={method}", User::key(&user.org, &user.username)),
            now,
        );
        self.vault().store(SESSION, &sid, &user.org, 0, &session, Some(&rec))?;
        Ok(self.tokens_for(&sid, &session, &issued.token, format!("{sid}.{cookie_secret}"), csrf, now))
    }

    fn tokens_for(&self, sid: &str, s: &Session, refresh: &str, cookie: String, csrf: String, now: i64) -> Tokens {
        let roles: Vec<String> = s.roles.iter().map(|r| r.name().to_owned()).collect();
        let jti = format!("{sid}.{}", hex::encode(self.random::<8>()));
        let access_token =
            self.keys.read().unwrap_or_else(|p| p.into_inner()).issue(&s.username, &s.org, &roles, now, &jti);
        Tokens {
            access_token,
            token_type: "Bearer",
            expires_in: self.settings.access_lifetime_s,
            refresh_token: format!("{sid}.{refresh}"),
            csrf_token: csrf,
            user: s.username.clone(),
            org: s.org.clone(),
            roles: s.roles.clone(),
            session_expires_at: s.created_at + self.settings.absolute_timeout_s,
            cookie,
        }
    }

    fn live(&self, s: &Session, now: i64) -> bool {
        !s.ended
            && now < s.created_at + self.settings.absolute_timeout_s
            && now < s.last_seen + self.settings.idle_timeout_s
    }

    /// A pending enrolment's session, by its token.
    fn enrolment(&self, token: &str, now: i64) -> Result<(String, Session, i64), IdentityError> {
        let bad = || IdentityError::BadToken("this enrolment is not valid any more; log in again".into());
        let (sid, secret) = split_token(token.trim()).ok_or_else(bad)?;
        let (s, version) = self.vault().load::<Session>(SESSION, sid)?.ok_or_else(bad)?;
        let fresh = now < s.created_at + 600;
        if !s.mfa_pending || !self.live(&s, now) || !fresh || sha_hex(secret) != s.cookie_hash {
            return Err(bad());
        }
        Ok((sid.to_owned(), s, version))
    }

    /// Starts enrolling an authenticator: a new secret and recovery codes, shown once.
    pub fn mfa_enrol(&self, enrolment_token: &str, now: i64) -> Result<MfaSetup, IdentityError> {
        let (_, s, _) = self.enrolment(enrolment_token, now)?;
        let secret = self.random::<20>().to_vec();
        let codes: Vec<String> = (0..10)
            .map(|_| {
                let c = base32(&self.random::<7>());
                format!("{}-{}", &c[..5], &c[5..10])
            })
            .collect();
        let key = User::key(&s.org, &s.username);
        let hashes: Vec<String> = codes.iter().map(|c| sha_hex(c)).collect();
        self.update_user(&key, |u| {
            if u.totp.as_ref().is_some_and(|t| t.confirmed) {
                return Err(IdentityError::Invalid("this account has an authenticator already".into()));
            }
            u.totp = Some(Totp { secret: secret.clone(), last_step: None, confirmed: false });
            u.recovery = hashes.clone();
            Ok(())
        })?;
        let b32 = base32(&secret);
        let label = format!("Medvan:{}@{}", s.username, s.org);
        Ok(MfaSetup {
            otpauth_uri: format!("otpauth://totp/{label}?secret={b32}&issuer=Medvan&algorithm=SHA1&digits=6&period=30"),
            secret: b32,
            recovery_codes: codes,
        })
    }

    /// Confirms the authenticator with a code from it; the login then completes.
    pub fn mfa_confirm(&self, enrolment_token: &str, code: &str, now: i64) -> Result<Tokens, IdentityError> {
        let (sid, s, version) = self.enrolment(enrolment_token, now)?;
        let key = User::key(&s.org, &s.username);
        let confirmed = self.update_user(&key, |u| {
            if let Err(l) = u.attempts.check(now) {
                return Err(IdentityError::LockedOut(l.retry_after_s));
            }
            let t = u.totp.as_mut().ok_or_else(|| IdentityError::Invalid("start the enrolment first".into()))?;
            // An authenticator confirmed already is not confirmed again through another
            // enrolment (that would be code guessing without a lock).
            if t.confirmed {
                return Err(IdentityError::Invalid("this account has an authenticator already; log in".into()));
            }
            let step = accounts::totp::verify(&t.secret, code, now, t.last_step)
                .map_err(|e| IdentityError::SecondFactor(e.to_string()))?;
            t.last_step = Some(step);
            t.confirmed = true;
            u.attempts.succeeded();
            Ok(())
        });
        let user = match confirmed {
            Err(IdentityError::SecondFactor(why)) => {
                let user = self.update_user(&key, |u| {
                    u.attempts.failed(now);
                    Ok(())
                })?;
                self.audit_failure(&key, &user, "wrong code at enrolment", now)?;
                return Err(IdentityError::SecondFactor(why));
            }
            other => other?,
        };
        // The enrolment session ends; the login is a new session.
        let mut ended = s;
        ended.ended = true;
        let rec = self.audit(&user.username, "auth.mfa_enrolled", audit::Outcome::Allowed, format!("user={key}"), now);
        self.vault().store(SESSION, &sid, &user.org, version, &ended, Some(&rec))?;
        self.start_session(&user, now, false, "password")
    }

    /// Spends a refresh token for a new pair.
    pub fn refresh(&self, token: &str, now: i64) -> Result<Tokens, IdentityError> {
        let bad = |m: &str| IdentityError::BadToken(m.to_owned());
        let (sid, secret) =
            split_token(token.trim()).ok_or_else(|| bad("the refresh token is not known; log in again"))?;
        loop {
            let Some((mut s, version)) = self.vault().load::<Session>(SESSION, sid)? else {
                return Err(bad("the refresh token is not known; log in again"));
            };
            if s.mfa_pending {
                return Err(bad("the refresh token is not known; log in again"));
            }
            let disabled =
                self.vault().load::<User>(USER, &User::key(&s.org, &s.username))?.is_none_or(|(u, _)| u.disabled);
            let outcome = if disabled {
                Err(tokens::refresh::RefreshError::Revoked)
            } else if self.live(&s, now) {
                s.refresh.refresh(secret, now, self.settings.absolute_timeout_s, self.random::<32>())
            } else {
                Err(tokens::refresh::RefreshError::Expired)
            };
            // A secret this session never issued proves nothing about its holder (anyone can
            // read a session id): it is refused without ending the session.
            if outcome == Err(tokens::refresh::RefreshError::Unknown) {
                return Err(bad("the refresh token is not known; log in again"));
            }
            let (audit, result) = match outcome {
                Ok(issued) => {
                    s.last_seen = now;
                    (None, Ok(issued))
                }
                Err(e) => {
                    s.ended = true;
                    let rec = self.audit(
                        &s.username,
                        "auth.refresh",
                        audit::Outcome::Refused,
                        format!("session={sid} {e}"),
                        now,
                    );
                    (Some(rec), Err(e))
                }
            };
            match self.vault().store(SESSION, sid, &s.org.clone(), version, &s, audit.as_ref()) {
                Err(StorageError::Conflict) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            return match result {
                Ok(issued) => {
                    // A refreshed pair keeps the session's cookie and CSRF token unchanged
                    // (the client has them); only the bearer tokens are new.
                    let mut t = self.tokens_for(sid, &s, &issued.token, String::new(), String::new(), now);
                    t.csrf_token.clear();
                    Ok(t)
                }
                Err(e) => Err(IdentityError::BadToken(e.to_string())),
            };
        }
    }

    /// Ends a session (logout).
    pub fn logout(&self, sid: &str, now: i64) -> Result<(), IdentityError> {
        self.end_session(sid, "auth.logout", now)
    }

    fn end_session(&self, sid: &str, action: &str, now: i64) -> Result<(), IdentityError> {
        loop {
            let Some((mut s, version)) = self.vault().load::<Session>(SESSION, sid)? else {
                return Ok(());
            };
            if s.ended {
                return Ok(());
            }
            s.ended = true;
            let rec = self.audit(&s.username, action, audit::Outcome::Allowed, format!("session={sid}"), now);
            match self.vault().store(SESSION, sid, &s.org.clone(), version, &s, Some(&rec)) {
                Err(StorageError::Conflict) => continue,
                other => {
                    other?;
                    return Ok(());
                }
            }
        }
    }

    fn end_sessions_of(&self, org: &str, username: &str, now: i64) -> Result<(), IdentityError> {
        for row in self.storage.identities(SESSION, org)? {
            let s: Session = records::open(&self.sealer, &row)?;
            if s.username == username && !s.ended {
                self.end_session(&row.id, "auth.session_revoked", now)?;
            }
        }
        Ok(())
    }

    // ---- per request ----------------------------------------------------------------

    /// Checks a bearer access token.
    pub fn authenticate_bearer(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        // A token verified before is not verified again (an Ed25519 check costs tens of
        // microseconds; a hash, one): the cache holds the claims until the token expires.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified.get(&digest).filter(|c| now < c.exp + tokens::jwt::LEEWAY_S).cloned()
        };
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = self.verify_signature(token, now)?;
                let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if verified.len() >= 50_000 {
                    verified.retain(|_, c| now < c.exp + tokens::jwt::LEEWAY_S);
                }
                verified.insert(digest, c.clone());
                c
            }
        };
        let session = claims.jti.split('.').next().unwrap_or_default().to_owned();
        if session == CALL_TICKET_JTI {
            return Self::call_principal(&claims);
        }
        if !self.session_live(&session, now)? {
            return Err(AuthError::NoSession);
        }
        Ok(Principal {
            user: UserId::parse(&claims.sub).map_err(|_| AuthError::Token(tokens::jwt::TokenError::Malformed))?,
            org: OrgId::parse(&claims.org).map_err(|_| AuthError::Token(tokens::jwt::TokenError::Malformed))?,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            session,
            csrf_hash: None,
            call_case: None,
        })
    }

    /// A ticket to one case's live call for a van of `org` that may sync the case (the
    /// caller checked that, over the van's certificate). Signed like an access token, for
    /// [`CALL_TICKET_S`], with no roles: it opens that call's WHIP and WHEP and nothing else.
    pub fn issue_call_ticket(&self, org: &str, van: &str, case: CaseId, now: i64) -> sync_proto::CallGrant {
        let jti = format!("{CALL_TICKET_JTI}.{case}.{}", hex::encode(self.random::<8>()));
        let token = self.keys.read().unwrap_or_else(|p| p.into_inner()).issue_for(
            &van_subject(van),
            org,
            &[],
            now,
            &jti,
            CALL_TICKET_S,
        );
        sync_proto::CallGrant { token, expires_at: now + CALL_TICKET_S }
    }

    fn call_principal(claims: &tokens::jwt::Claims) -> Result<Principal, AuthError> {
        let malformed = || AuthError::Token(tokens::jwt::TokenError::Malformed);
        let case = claims.jti.split('.').nth(1).and_then(|c| CaseId::parse(c).ok()).ok_or_else(malformed)?;
        if !claims.sub.starts_with("van:") || !claims.roles.is_empty() {
            return Err(malformed());
        }
        Ok(Principal {
            user: UserId::parse(&claims.sub).map_err(|_| malformed())?,
            org: OrgId::parse(&claims.org).map_err(|_| malformed())?,
            roles: Vec::new(),
            session: claims.jti.clone(),
            csrf_hash: None,
            call_case: Some(case),
        })
    }

    fn verify_signature(&self, token: &str, now: i64) -> Result<tokens::jwt::Claims, AuthError> {
        let verified = self.keys.read().unwrap_or_else(|p| p.into_inner()).verify(token, now);
        let claims = match verified {
            // Another hub process may have rotated the key: look once more.
            Err(tokens::jwt::TokenError::UnknownKey(_)) => {
                // At most once a minute, whatever keys tokens name.
                let due = *self.keys_loaded_at.read().unwrap_or_else(|p| p.into_inner()) + 60 < now;
                if due {
                    self.maintain_keys(now).map_err(|e| AuthError::Storage(e.to_string()))?;
                }
                self.keys.read().unwrap_or_else(|p| p.into_inner()).verify(token, now)?
            }
            other => other?,
        };
        Ok(claims)
    }

    /// Whether `p`'s login still stands: not logged out, ended by an administrator (a
    /// disabled account's sessions end) or past its absolute timeout. What outlives a
    /// request (an event stream, a live call) asks again every so often. A van's call
    /// ticket stands for its own short life.
    ///
    /// Read from storage each time (not through the bearer tokens' short cache, which may
    /// still hold a session's state from before its second factor was confirmed).
    pub fn still_stands(&self, p: &Principal, now: i64) -> Result<bool, AuthError> {
        if p.call_case.is_some() {
            return Ok(true);
        }
        let s = self.vault().load::<Session>(SESSION, &p.session).map_err(|e| AuthError::Storage(e.to_string()))?;
        Ok(s.is_some_and(|(s, _)| !s.ended && !s.mfa_pending && now < s.created_at + self.settings.absolute_timeout_s))
    }

    /// Whether a bearer token's session still stands (not logged out, revoked or timed
    /// out), looked at in storage at most every [`SESSION_RECHECK_S`] per session.
    fn session_live(&self, sid: &str, now: i64) -> Result<bool, AuthError> {
        {
            let checks = self.session_checks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((live, at)) = checks.get(sid)
                && now < at + SESSION_RECHECK_S
            {
                return Ok(*live);
            }
        }
        let s = self.vault().load::<Session>(SESSION, sid).map_err(|e| AuthError::Storage(e.to_string()))?;
        let live =
            s.is_some_and(|(s, _)| !s.ended && !s.mfa_pending && now < s.created_at + self.settings.absolute_timeout_s);
        let mut checks = self.session_checks.lock().unwrap_or_else(|p| p.into_inner());
        if checks.len() > 100_000 {
            checks.retain(|_, (_, at)| now < *at + SESSION_RECHECK_S);
        }
        checks.insert(sid.to_owned(), (live, now));
        Ok(live)
    }

    /// Checks a browser session cookie, and keeps the session alive.
    pub fn authenticate_cookie(&self, cookie: &str, now: i64) -> Result<Principal, AuthError> {
        let (sid, secret) = split_token(cookie.trim()).ok_or(AuthError::NoSession)?;
        let storage_err = |e: StorageError| AuthError::Storage(e.to_string());
        let (mut s, version) =
            self.vault().load::<Session>(SESSION, sid).map_err(storage_err)?.ok_or(AuthError::NoSession)?;
        if s.mfa_pending || s.ended || sha_hex(secret) != s.cookie_hash {
            return Err(AuthError::NoSession);
        }
        if !self.live(&s, now) {
            return Err(AuthError::TimedOut);
        }
        // The idle clock moves at most once a minute per session: not a write per request.
        if now - s.last_seen >= 60 {
            s.last_seen = now;
            match self.vault().store(SESSION, sid, &s.org.clone(), version, &s, None) {
                Ok(_) | Err(StorageError::Conflict) => {}
                Err(e) => return Err(storage_err(e)),
            }
        }
        Ok(Principal {
            user: UserId::parse(&s.username).map_err(|_| AuthError::NoSession)?,
            org: OrgId::parse(&s.org).map_err(|_| AuthError::NoSession)?,
            roles: s.roles.clone(),
            session: sid.to_owned(),
            csrf_hash: Some(s.csrf_hash),
            call_case: None,
        })
    }

    /// Whether `token` is the CSRF token of the caller's session.
    pub fn csrf_ok(p: &Principal, token: &str) -> bool {
        p.csrf_hash.as_deref().is_some_and(|h| accounts::same(h.as_bytes(), sha_hex(token.trim()).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foo"), "MZXW6");
        assert_eq!(base32(b"foob"), "MZXW6YQ");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn signing_keys_rotate_old_ones_verify_until_their_tokens_expire_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::from_master(&[9; 32]);
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::sqlite::SqliteStorage::open(dir.path(), &sealer).unwrap());
        let settings = Settings { access_lifetime_s: 300, key_rotation_s: 600, ..Settings::default() };
        let t = 1_900_000_000;
        let id = Identity::open(storage.clone(), sealer.clone(), settings.clone(), t).unwrap();
        let kids = |id: &Identity| -> Vec<String> {
            id.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
        };
        let first = kids(&id);
        assert_eq!(first.len(), 1);
        let issue = |id: &Identity, at: i64| id.keys.read().unwrap().issue("ana", "org-north", &[], at, "s.1");
        let old_token = issue(&id, t + 500);
        // Reopening before the rotation is due keeps the key (a restart is not a rotation).
        let again = Identity::open(storage.clone(), sealer.clone(), settings.clone(), t + 100).unwrap();
        assert_eq!(kids(&again), first);
        // Due: a new key signs; the old one still verifies the tokens it signed.
        id.maintain_keys(t + 600).unwrap();
        let second = kids(&id);
        assert_eq!(second.len(), 2);
        assert!(id.keys.read().unwrap().verify(&old_token, t + 700).is_ok());
        let new_token = issue(&id, t + 700);
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(new_token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_ne!(header["kid"], first[0].as_str(), "the new key signs");
        // Another process picks the new key up by itself: the token passes the signature
        // check and is refused only because these test tokens belong to no session.
        assert_eq!(again.authenticate_bearer(&new_token, t + 700).unwrap_err(), AuthError::NoSession);
        assert!(again.keys.read().unwrap().verify(&new_token, t + 700).is_ok());
        // Two rotations on, the first key is gone from storage and from the key set.
        id.maintain_keys(t + 1200).unwrap();
        assert!(!kids(&id).contains(&first[0]));
        assert_eq!(
            id.keys.read().unwrap().verify(&old_token, t + 700),
            Err(tokens::jwt::TokenError::UnknownKey(first[0].clone()))
        );
        assert!(storage.identity(records::SIGNING_KEY, &first[0]).unwrap().is_none());
    }

    #[test]
    fn password_rules_say_what_to_do() {
        assert!(check_password_rules("short", "ana").unwrap_err().to_string().contains("at least 12"));
        assert!(check_password_rules("dr.ana.long.name", "dr.ana.long.name").is_err());
        assert!(check_password_rules("correct horse battery", "ana").is_ok());
    }
}
