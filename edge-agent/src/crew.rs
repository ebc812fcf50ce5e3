//! Crew login on the van, with or without a network.
//!
//! The hub sends each van the roster of its organisation's paramedics with their PIN
//! verifiers (argon2id, never the PIN) when it changes. The van keeps the roster sealed with
//! the *PIN key*, which does not live on the data disk: in a van it is a systemd credential
//! sealed to the device's TPM (`LoadCredentialEncrypted=`), so a stolen disk, even with its
//! store key, gives no verifier to guess PINs against offline. On the device, each account
//! gets five free wrong PINs, then waits (30 s, doubling to an hour), counted durably so a
//! restart does not reset it.
//!
//! A login is a session held in memory (a restart logs everyone out): it ends after
//! `idle_timeout_s` without a request and `absolute_timeout_s` after the login. Break-glass
//! opens a short, flagged session with a stated reason when no one can log in (the roster
//! has not arrived, a PIN is forgotten) in an emergency; it is in the audit log, which the
//! hub receives and shows for review.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use case_model::{EditContext, Timestamp, UserId};
use case_store::{Store, StoreError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use sync_proto::CrewMember;

/// Where the roster and the failure counts are kept in the store.
const PEER: &str = "crew";
const ROSTER: &str = "roster";
/// What the roster is sealed under, beside the PIN key.
const AAD: &[u8] = b"medvan-crew-roster-v1";

/// Timeouts of crew sessions.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrewSettings {
    /// The PIN key file (32 bytes as 64 hex digits). Default: `pin-key` in systemd's
    /// `$CREDENTIALS_DIRECTORY`, where a TPM-sealed credential appears.
    pub pin_key_file: Option<PathBuf>,
    /// A session unused this long ends, seconds.
    pub idle_timeout_s: i64,
    /// A session ends this long after its login, seconds.
    pub absolute_timeout_s: i64,
    /// A break-glass session ends this long after it opened, seconds.
    pub break_glass_s: i64,
}

impl Default for CrewSettings {
    fn default() -> Self {
        CrewSettings { pin_key_file: None, idle_timeout_s: 600, absolute_timeout_s: 12 * 3600, break_glass_s: 1800 }
    }
}

impl CrewSettings {
    /// The PIN key file in force: configured, or systemd's credential.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.pin_key_file
            .clone()
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| Path::new(&d).join("pin-key")))
    }
}

/// Reads a PIN key file (64 hex digits, as `edge-agent gen-key` writes).
pub fn load_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the PIN key {}: {e}", path.display()))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("the PIN key {} must hold 64 hex digits", path.display()))
}

/// Why a crew request was refused. The messages are for the person at the touchscreen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrewError {
    /// This van has no PIN key: PIN login cannot work (break-glass still does).
    #[error("PIN login is not set up on this van (no PIN key); use break-glass in an emergency")]
    NoKey,
    /// Wrong user name or PIN (which is not said).
    #[error("the user name or PIN is wrong")]
    Wrong,
    /// Too many wrong PINs for this account.
    #[error("too many wrong PINs; try again in {0} s, or use break-glass in an emergency")]
    LockedOut(i64),
    /// No session, or it ended.
    #[error("log in on the touchscreen first (your session may have timed out)")]
    NoSession,
    /// A break-glass request without a name or reason.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the van's store failed: {0}")]
    Store(#[from] StoreError),
}

/// A logged-in crew member (or a break-glass login).
#[derive(Debug, Clone)]
pub struct CrewSession {
    /// Who: the user name, or `break-glass:<id>`.
    pub user: UserId,
    /// Roles in the organisation (none for break-glass).
    pub roles: Vec<String>,
    /// When it ends at the latest (seconds).
    pub expires_at: i64,
    /// When it was last used (seconds).
    last_seen: i64,
    /// A break-glass session, with its stated reason.
    pub break_glass: Option<String>,
}

/// The van's crew logins.
#[derive(Debug)]
pub struct Crew {
    store: Store,
    key: Option<[u8; 32]>,
    settings: CrewSettings,
    /// Sessions by the SHA-256 of their token.
    sessions: Mutex<HashMap<[u8; 32], CrewSession>>,
    /// PIN checks run one at a time, so guesses sent in parallel are all counted before
    /// the next is checked (a van has one touchscreen; logins are rare).
    checking: Mutex<()>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn ctx(user: &str, now: i64) -> EditContext {
    EditContext {
        user: UserId::parse(user).unwrap_or_else(|_| UserId::parse("unknown").expect("a valid name")),
        now: Timestamp::from_unix_millis(now * 1000),
    }
}

/// A verifier to check PINs of unknown names against, so a wrong name takes as long as a
/// wrong PIN.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| accounts::password::hash("not a pin", [3; 16]))
}

/// Seals the roster with the PIN key and keeps it in the store, durably.
pub fn store_roster(store: &Store, key: &[u8; 32], members: &[CrewMember]) -> Result<(), StoreError> {
    let plain = serde_json::to_vec(members).map_err(|e| StoreError::Failed(e.to_string()))?;
    let mut nonce = [0u8; 24];
    rand::fill(&mut nonce);
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(&XNonce::from(nonce), Payload { msg: &plain, aad: AAD })
        .map_err(|_| StoreError::Failed("sealing the roster failed".into()))?;
    let mut value = nonce.to_vec();
    value.extend_from_slice(&sealed);
    store.set_peer_value(PEER, ROSTER, value)
}

impl Crew {
    /// Crew logins over `store`, with the PIN key if this van has one.
    pub fn new(store: Store, key: Option<[u8; 32]>, settings: CrewSettings) -> Crew {
        Crew { store, key, settings, sessions: Mutex::new(HashMap::new()), checking: Mutex::new(()) }
    }

    fn roster(&self, key: &[u8; 32]) -> Result<Vec<CrewMember>, CrewError> {
        let Some(value) = self.store.peer_value(PEER, ROSTER)? else { return Ok(Vec::new()) };
        if value.len() < 24 {
            return Ok(Vec::new());
        }
        let (nonce, sealed) = value.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().expect("24 bytes split off");
        let plain = XChaCha20Poly1305::new(key.into())
            .decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad: AAD })
            .map_err(|_| StoreError::Failed("the crew roster does not open with this van's PIN key".into()))?;
        Ok(serde_json::from_slice(&plain).map_err(|e| StoreError::Failed(e.to_string()))?)
    }

    /// The user names of the crew who can log in on this van, sorted: the touchscreen shows
    /// them as tiles to tap (no keyboard is assumed). Names only, never verifiers.
    pub fn members(&self) -> Result<Vec<String>, CrewError> {
        let key = self.key.ok_or(CrewError::NoKey)?;
        let mut names: Vec<String> = self.roster(&key)?.into_iter().map(|m| m.username).collect();
        names.sort();
        Ok(names)
    }

    fn attempts(&self, username: &str) -> Result<accounts::lockout::Attempts, CrewError> {
        let raw = self.store.peer_value(PEER, &format!("attempts/{username}"))?;
        Ok(raw.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default())
    }

    fn save_attempts(&self, username: &str, a: &accounts::lockout::Attempts) -> Result<(), CrewError> {
        let value = serde_json::to_vec(a).map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(self.store.set_peer_value(PEER, &format!("attempts/{username}"), value)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CrewSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_session(&self, session: CrewSession) -> String {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let token = B64.encode(raw);
        self.lock().insert(digest(&token), session);
        token
    }

    /// A PIN login at `now` (seconds). Blocks for the PIN check (argon2id).
    pub fn login(&self, username: &str, pin: &str, now: i64) -> Result<(String, CrewSession), CrewError> {
        let key = self.key.ok_or(CrewError::NoKey)?;
        let _one_at_a_time = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        let name_ok = UserId::parse(username).is_ok();
        let account = if name_ok { username } else { "unknown" };
        let mut attempts = self.attempts(account)?;
        if let Err(l) = attempts.check(now) {
            return Err(CrewError::LockedOut(l.retry_after_s));
        }
        let roster = self.roster(&key)?;
        let member = roster.iter().find(|m| m.username == username);
        let verifier = member.map_or(decoy(), |m| m.pin_verifier.as_str());
        let ok = accounts::password::verify(pin, verifier) && member.is_some();
        if !ok {
            attempts.failed(now);
            self.save_attempts(account, &attempts)?;
            self.store.record_event(
                &ctx(account, now),
                "auth.pin_login",
                audit::Outcome::Refused,
                format!("wrong user name or PIN; failures={}", attempts.failures()),
            )?;
            return Err(CrewError::Wrong);
        }
        attempts.succeeded();
        self.save_attempts(account, &attempts)?;
        let member = member.expect("checked");
        let session = CrewSession {
            user: UserId::parse(username).map_err(|_| CrewError::Wrong)?,
            roles: member.roles.clone(),
            expires_at: now + self.settings.absolute_timeout_s,
            last_seen: now,
            break_glass: None,
        };
        self.store.record_event(&ctx(username, now), "auth.pin_login", audit::Outcome::Allowed, String::new())?;
        let token = self.open_session(session.clone());
        Ok((token, session))
    }

    /// A break-glass login: no PIN, a stated reason, a short session, flagged in the audit
    /// log for review at the hub.
    pub fn break_glass(&self, name: &str, reason: &str, now: i64) -> Result<(String, CrewSession), CrewError> {
        let (name, reason) = (name.trim(), reason.trim());
        if name.is_empty() || name.chars().count() > 80 {
            return Err(CrewError::Invalid("give your name (up to 80 characters)".into()));
        }
        if reason.chars().count() < 10 || reason.chars().count() > 500 {
            return Err(CrewError::Invalid(
                "state the reason in 10 to 500 characters (what is happening, why no one can log in)".into(),
            ));
        }
        let mut id = [0u8; 3];
        rand::fill(&mut id);
        let user = UserId::parse(&format!("break-glass:{}", hex::encode(id))).expect("a valid name");
        let session = CrewSession {
            user: user.clone(),
            roles: Vec::new(),
            expires_at: now + self.settings.break_glass_s,
            last_seen: now,
            break_glass: Some(reason.to_owned()),
        };
        self.store.record_event(
            &ctx(user.as_str(), now),
            "auth.break_glass",
            audit::Outcome::Allowed,
            format!("name={name:?} reason={reason:?} valid_s={}", self.settings.break_glass_s),
        )?;
        let token = self.open_session(session.clone());
        Ok((token, session))
    }

    /// The session of a token at `now`, which counts as use.
    pub fn authenticate(&self, token: &str, now: i64) -> Result<CrewSession, CrewError> {
        let mut sessions = self.lock();
        let key = digest(token.trim());
        let Some(s) = sessions.get_mut(&key) else { return Err(CrewError::NoSession) };
        let idle_over = s.break_glass.is_none() && now >= s.last_seen + self.settings.idle_timeout_s;
        if now >= s.expires_at || idle_over {
            sessions.remove(&key);
            return Err(CrewError::NoSession);
        }
        s.last_seen = now;
        Ok(s.clone())
    }

    /// Ends a session.
    pub fn logout(&self, token: &str, now: i64) -> Result<(), CrewError> {
        if let Some(s) = self.lock().remove(&digest(token.trim())) {
            self.store.record_event(
                &ctx(s.user.as_str(), now),
                "auth.logout",
                audit::Outcome::Allowed,
                String::new(),
            )?;
        }
        Ok(())
    }
}

/// A crew with these members and PINs, logged in: for tests and demonstrations of the API
/// without a hub. Returns the crew and a session token per member.
pub fn with_members(store: &Store, members: &[(&str, &str)]) -> (Crew, HashMap<String, String>) {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let roster: Vec<CrewMember> = members
        .iter()
        .map(|(name, pin)| CrewMember {
            username: (*name).to_owned(),
            roles: vec!["paramedic".into()],
            pin_verifier: accounts::password::hash(pin, [5; 16]),
        })
        .collect();
    store_roster(store, &key, &roster).expect("the roster is stored");
    let crew = Crew::new(store.clone(), Some(key), CrewSettings::default());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let tokens = members
        .iter()
        .map(|(name, pin)| ((*name).to_owned(), crew.login(name, pin, now).expect("the member logs in").0))
        .collect();
    (crew, tokens)
}
