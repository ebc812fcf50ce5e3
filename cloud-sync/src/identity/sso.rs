//! Single sign-on: the hub as an OpenID Connect client of each organisation's identity
//! provider (authorization code flow with PKCE; the protocol checks are in the `oidc` crate).
//!
//! A login: `/api/v1/auth/sso/{org}/start` sends the browser to the provider with a fresh
//! state, nonce and PKCE challenge, kept sealed in storage (so any hub process can finish
//! it) and bound to the browser by a short-lived cookie. The provider sends the browser back
//! to `/callback`; the hub spends the pending login (once), exchanges the code, checks the ID
//! token, and maps the person to a hub account of that organisation by the claim the config
//! names. Names are not identities (OpenID Connect Core §5.7: `preferred_username` is not
//! unique and may change), so an account is bound to the provider's subject (`iss` and
//! `sub`): an account made for single sign-on (`Identity::add_sso_user`: no password, no
//! setup link) is bound by its first SSO login; any other account only by an
//! administrator (`PUT /api/v1/admin/users/{name}/sso`), so nobody at the provider takes
//! over a password account by getting its name. A bound account takes logins of its subject
//! only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use case_model::{OrgId, UserId};
use sha2::{Digest, Sha256};

use super::records::{SSO_PENDING, USER, User};
use super::{Identity, IdentityError, Tokens};
use crate::outbound::{HttpsClient, OutboundError};

/// How long a started login may take to come back, seconds.
pub const PENDING_S: i64 = 600;
/// Cached discovery documents are read again after this long, seconds.
const DISCOVERY_TTL_S: i64 = 3600;
/// Keys are fetched again on an unknown key id at most this often, seconds.
const JWKS_REFETCH_S: i64 = 60;

/// One organisation's identity provider: a `[[sso]]` table of the config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The organisation whose users log in through it.
    pub org: String,
    /// What the login page calls it ("St Mary's Hospital").
    pub name: String,
    /// The provider's issuer URL (https), exactly as its discovery document names it.
    pub issuer: String,
    /// The hub's client id at the provider.
    pub client_id: String,
    /// A file holding the client secret (a confidential client); none for a public client.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The ID token claim whose value is the hub user name.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// CA certificates (PEM) to trust for the provider; the system's without.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

fn default_scopes() -> Vec<String> {
    vec!["profile".into()]
}

/// Why a single sign-on failed.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// The organisation has no identity provider configured.
    #[error("single sign-on is not set up for organisation {0:?}")]
    NotConfigured(String),
    /// The provider could not be reached.
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(#[from] OutboundError),
    /// The provider answered something the protocol does not allow, or refused.
    #[error(transparent)]
    Protocol(#[from] oidc::OidcError),
    /// The login is unknown, used already or too old, or came back in another browser.
    #[error("this login is not valid any more (used already, too old, or started in another browser); start again")]
    Stale,
    /// The provider vouched for someone with no account here.
    #[error("{username:?} has no account in {org}; ask your administrator to add you")]
    NoAccount {
        /// The user name the claim gave.
        username: String,
        /// The organisation.
        org: String,
    },
    /// The account is linked to another person at the provider.
    #[error("the account {0:?} is linked to another identity at the provider; ask your administrator")]
    SubjectMismatch(String),
    /// The account has a password here and no administrator linked it to a provider
    /// identity yet.
    #[error(
        "the account {account:?} is not linked to your hospital login yet; ask your administrator to link it \
         to your identity at the provider, {subject:?}"
    )]
    NotLinked {
        /// The account.
        account: String,
        /// The provider identity (`issuer|sub`) to link.
        subject: String,
    },
    /// The account cannot log in.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A bug: the work failed inside the hub.
    #[error("the login failed inside the hub; try again")]
    Internal,
}

/// A login started and not finished yet, as kept in storage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PendingSso {
    pub(crate) org: String,
    pub(crate) pending: oidc::Pending,
    pub(crate) return_to: String,
    pub(crate) created_at: i64,
}

struct Provider {
    config: SsoConfig,
    client: oidc::Client,
    http: HttpsClient,
    /// The discovery document and keys, with when each was fetched.
    cache: tokio::sync::Mutex<Option<Fetched>>,
}

struct Fetched {
    provider: oidc::Provider,
    at: i64,
    keys: oidc::Jwks,
    keys_at: i64,
}

/// The configured identity providers, by organisation.
#[derive(Default)]
pub struct Sso {
    providers: HashMap<String, Arc<Provider>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso").field("orgs", &self.providers.keys().collect::<Vec<_>>()).finish()
    }
}

/// An organisation's provider, as the login page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SsoEntry {
    /// The organisation.
    pub org: String,
    /// The provider's name.
    pub name: String,
    /// Where a browser starts the login.
    pub start: String,
}

impl Sso {
    /// Sets up the providers of `configs`; `public_url` is the hub's address as browsers
    /// reach it, which the callback address is made from.
    pub fn new(configs: &[SsoConfig], public_url: Option<&str>) -> anyhow::Result<Sso> {
        let mut providers = HashMap::new();
        for c in configs {
            OrgId::parse(&c.org).map_err(|e| anyhow::anyhow!("[[sso]] org {:?}: {e}", c.org))?;
            anyhow::ensure!(c.issuer.starts_with("https://"), "[[sso]] issuer {:?} must be an https URL", c.issuer);
            let base = public_url.context(
                "[[sso]] needs [hub] public_url: the identity provider sends browsers back to the hub's public address",
            )?;
            let client_secret = match &c.client_secret_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("Failed to read the SSO client secret {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let client = oidc::Client {
                client_id: c.client_id.clone(),
                client_secret,
                redirect_uri: format!("{}/api/v1/auth/sso/{}/callback", base.trim_end_matches('/'), c.org),
                scopes: c.scopes.clone(),
            };
            let tls = crate::outbound::tls_config(c.ca_file.as_deref())
                .with_context(|| format!("[[sso]] of {}: the provider's CA", c.org))?;
            let p = Provider {
                config: c.clone(),
                client,
                http: HttpsClient::new(tls, Duration::from_secs(10)),
                cache: Default::default(),
            };
            anyhow::ensure!(
                providers.insert(c.org.clone(), Arc::new(p)).is_none(),
                "[[sso]]: organisation {} has two identity providers",
                c.org
            );
        }
        Ok(Sso { providers })
    }

    /// The providers, for the login page.
    pub fn entries(&self) -> Vec<SsoEntry> {
        let mut list: Vec<SsoEntry> = self
            .providers
            .values()
            .map(|p| SsoEntry {
                org: p.config.org.clone(),
                name: p.config.name.clone(),
                start: format!("/api/v1/auth/sso/{}/start", p.config.org),
            })
            .collect();
        list.sort_by(|a, b| a.org.cmp(&b.org));
        list
    }

    fn provider(&self, org: &str) -> Result<&Arc<Provider>, SsoError> {
        self.providers.get(org).ok_or_else(|| SsoError::NotConfigured(org.to_owned()))
    }

    /// Starts a login for `org`: the provider URL to send the browser to, and the state to
    /// bind to the browser. `return_to` is where the browser goes afterwards (a path here).
    pub async fn start(
        &self,
        identity: &Arc<Identity>,
        org: &str,
        return_to: &str,
        now: i64,
    ) -> Result<(String, String), SsoError> {
        let p = self.provider(org)?;
        let provider = p.discovered(now, false).await?.0;
        let (url, pending) = oidc::begin(&provider, &p.client, &identity.random::<96>());
        let state = pending.state.clone();
        let keep = PendingSso { org: org.to_owned(), pending, return_to: return_to.to_owned(), created_at: now };
        let id = identity.clone();
        // Kept under no organisation: the maintenance timer sweeps them all together.
        blocking(move || Ok(id.vault().store(SSO_PENDING, &state_key(&keep.pending.state), "", 0, &keep, None)?))
            .await?;
        Ok((url, state))
    }

    /// Finishes a login from the provider's callback (`query`), for the browser holding
    /// `browser_state`: the new session, and where to send the browser.
    pub async fn finish(
        &self,
        identity: &Arc<Identity>,
        org: &str,
        query: &str,
        browser_state: Option<&str>,
        now: i64,
    ) -> Result<(Tokens, String), SsoError> {
        let p = self.provider(org)?;
        // Nothing of the callback is trusted (not even a provider's error words) before its
        // state is the one this browser started.
        let state = oidc::Callback::state_of(query);
        if state.is_none() || browser_state != state.as_deref() {
            return Err(SsoError::Stale);
        }
        let callback = oidc::Callback::parse(query)?;
        // Spent before anything else: a callback replayed, even in parallel, finds nothing.
        let id = identity.clone();
        let key = state_key(&callback.state);
        let kept = blocking(move || {
            let found = id.vault().load::<PendingSso>(SSO_PENDING, &key)?;
            Ok(match found {
                Some((kept, _)) if id.storage.delete_identity(SSO_PENDING, &key, None)? => Some(kept),
                _ => None,
            })
        })
        .await?
        .filter(|k| k.org == org && now < k.created_at + PENDING_S)
        .ok_or(SsoError::Stale)?;

        let (provider, _) = p.discovered(now, false).await?;
        let req = oidc::token_request(&provider, &p.client, &kept.pending, &callback)?;
        let answer = p.http.post_form(&req.url, req.body, req.authorization.as_deref()).await?;
        let (_, keys) = p.discovered(now, false).await?;
        let claims = match oidc::finish(&provider, &p.client, &kept.pending, answer.status, &answer.body, &keys, now) {
            // A key made since the keys were fetched: fetch them again (rate-limited) and retry.
            Err(oidc::OidcError::IdToken(oidc::IdTokenError::NoKey(_))) => {
                let (_, keys) = p.discovered(now, true).await?;
                oidc::finish(&provider, &p.client, &kept.pending, answer.status, &answer.body, &keys, now)?
            }
            other => other?,
        };
        let username_claim = p.config.username_claim.clone();
        let id = identity.clone();
        let org = org.to_owned();
        let tokens = blocking(move || id.sso_login(&org, &claims, &username_claim, now)).await?;
        Ok((tokens, kept.return_to))
    }
}

impl Provider {
    /// The discovery document and keys, fetched when missing or old; `refetch_keys` asks
    /// for the keys again (at most once a minute).
    async fn discovered(&self, now: i64, refetch_keys: bool) -> Result<(oidc::Provider, oidc::Jwks), SsoError> {
        // One fetch at a time per provider (each bounded by the client's 10 s deadline); the
        // others wait for its result rather than fetching again.
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_none_or(|f| now - f.at >= DISCOVERY_TTL_S) {
            match self.fetch_all().await {
                Ok((provider, keys)) => *cache = Some(Fetched { provider, at: now, keys, keys_at: now }),
                // A provider briefly unreachable at refresh time: the document and keys in
                // hand still verify its tokens; try again in a minute.
                Err(e) => match cache.as_mut() {
                    Some(f) => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "could not refresh the identity provider's configuration; using the last one");
                        f.at = now - DISCOVERY_TTL_S + JWKS_REFETCH_S;
                    }
                    None => return Err(e),
                },
            }
        } else if refetch_keys && cache.as_ref().is_some_and(|f| now - f.keys_at >= JWKS_REFETCH_S) {
            let f = cache.as_mut().expect("checked just above");
            f.keys_at = now;
            f.keys = self.fetch_keys(&f.provider).await?;
        }
        let f = cache.as_ref().expect("filled just above");
        Ok((f.provider.clone(), f.keys.clone()))
    }

    async fn fetch_all(&self) -> Result<(oidc::Provider, oidc::Jwks), SsoError> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let doc = self.http.get(&url).await?;
        if doc.status != 200 {
            return Err(oidc::OidcError::Discovery(format!("{url} answered HTTP {}", doc.status)).into());
        }
        let provider = oidc::Provider::from_discovery(&doc.body, &self.config.issuer)?;
        let keys = self.fetch_keys(&provider).await?;
        Ok((provider, keys))
    }

    async fn fetch_keys(&self, provider: &oidc::Provider) -> Result<oidc::Jwks, SsoError> {
        let answer = self.http.get(&provider.jwks_uri).await?;
        if answer.status != 200 {
            return Err(oidc::OidcError::Keys(format!("{} answered HTTP {}", provider.jwks_uri, answer.status)).into());
        }
        Ok(oidc::Jwks::parse(&answer.body)?)
    }
}

impl Identity {
    /// A session for the hub account the provider's `claims` name in `org`.
    fn sso_login(
        &self,
        org: &str,
        claims: &oidc::IdClaims,
        username_claim: &str,
        now: i64,
    ) -> Result<Tokens, SsoError> {
        let subject = format!("{}|{}", claims.issuer, claims.subject);
        let refuse = |why: &str, err: SsoError| -> Result<Tokens, SsoError> {
            self.storage.audit(&self.audit(
                "unknown",
                "auth.login",
                audit::Outcome::Refused,
                format!("org={} method=sso subject={} {why}", super::printable(org), super::printable(&subject)),
                now,
            ))?;
            Err(err)
        };
        let name = claims.text(username_claim).unwrap_or("");
        let no_account = || SsoError::NoAccount { username: name.to_owned(), org: org.to_owned() };
        let Ok(username) = UserId::parse(name) else {
            return refuse(&format!("claim {username_claim} is not a user name"), no_account());
        };
        let key = User::key(org, username.as_str());
        if self.vault().load::<User>(USER, &key)?.is_none() {
            return refuse(&format!("no account {}", username.as_str()), no_account());
        }
        let user = self.update_user(&key, |u| {
            if u.disabled {
                return Err(IdentityError::Disabled);
            }
            match &u.sso_subject {
                Some(s) if *s != subject => Err(IdentityError::Invalid("subject".into())),
                Some(_) => Ok(()),
                // Only an account made for single sign-on is bound by its first login (an
                // account waiting for its owner's first password is not).
                None if u.sso_only && u.password.is_none() && u.totp.is_none() => {
                    u.sso_subject = Some(subject.clone());
                    Ok(())
                }
                None => Err(IdentityError::Invalid("not linked".into())),
            }
        });
        let user = match user {
            Ok(u) => u,
            Err(IdentityError::Invalid(why)) if why == "not linked" => {
                return refuse(
                    &format!("account {key} has a password and is not linked to a provider identity"),
                    SsoError::NotLinked { account: key, subject: subject.clone() },
                );
            }
            Err(IdentityError::Invalid(_)) => {
                return refuse(&format!("account {key} is linked to another subject"), SsoError::SubjectMismatch(key));
            }
            Err(IdentityError::Disabled) => {
                return refuse(&format!("account {key} is disabled"), IdentityError::Disabled.into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.start_session(&user, now, false, "sso")?)
    }
}

fn state_key(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, SsoError> + Send + 'static) -> Result<T, SsoError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| SsoError::Internal)?
}

impl From<crate::storage::StorageError> for SsoError {
    fn from(e: crate::storage::StorageError) -> Self {
        SsoError::Identity(e.into())
    }
}

impl Identity {
    /// Links an account to a person at the organisation's identity provider (`subject`:
    /// `issuer|sub`, as a refused SSO login shows it), or unlinks it (`None`).
    pub fn set_sso_subject(
        &self,
        actor: &str,
        org: &OrgId,
        username: &UserId,
        subject: Option<String>,
        now: i64,
    ) -> Result<(), IdentityError> {
        if let Some(s) = &subject
            && (s.len() > 512 || !s.contains('|') || s.chars().any(char::is_control))
        {
            return Err(IdentityError::Invalid(
                "subject must be the provider identity as a refused login shows it: <issuer>|<sub>".into(),
            ));
        }
        let key = User::key(org.as_str(), username.as_str());
        self.update_user(&key, |u| {
            u.sso_subject = subject.clone();
            Ok(())
        })?;
        let what = match &subject {
            Some(s) => format!("user={key} subject={}", super::printable(s)),
            None => format!("user={key} unlinked"),
        };
        self.storage.audit(&self.audit(actor, "user.sso_link", audit::Outcome::Allowed, what, now))?;
        Ok(())
    }
}
