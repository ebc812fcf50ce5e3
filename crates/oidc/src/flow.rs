//! The authorization code flow with PKCE, step by step.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde_json::Value;

use crate::id_token::{self, Expect};
use crate::{IdClaims, Jwks, OidcError};

/// What the provider's discovery document says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The issuer, exactly as configured and as ID tokens must name it.
    pub issuer: String,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// Where the provider's keys are.
    pub jwks_uri: String,
    /// The algorithms the provider signs ID tokens with.
    pub id_token_algs: Vec<String>,
}

impl Provider {
    /// Reads a discovery document (OpenID Connect Discovery 1.0 §3) for `issuer`. Its issuer
    /// must be exactly `issuer` (§4.3: a document naming another issuer could be an
    /// impersonation), its endpoints https, and it must offer the code flow and PKCE S256.
    pub fn from_discovery(json: &[u8], issuer: &str) -> Result<Provider, OidcError> {
        let bad = |why: String| OidcError::Discovery(why);
        let v: Value = serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let text = |name: &str| {
            v.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| bad(format!("no {name:?}")))
        };
        let list = |name: &str| -> Option<Vec<String>> {
            v.get(name)
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        };
        let named = text("issuer")?;
        if named != issuer {
            return Err(bad(format!("it names the issuer {named:?}, but {issuer:?} was configured")));
        }
        let https = |name: &str| -> Result<String, OidcError> {
            let url = text(name)?;
            if url.starts_with("https://") { Ok(url) } else { Err(bad(format!("{name} {url:?} is not https"))) }
        };
        if let Some(types) = list("response_types_supported")
            && !types.iter().any(|t| t == "code")
        {
            return Err(bad("it does not offer the authorization code flow (response type \"code\")".into()));
        }
        if let Some(methods) = list("code_challenge_methods_supported")
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(bad("it does not offer PKCE with S256".into()));
        }
        Ok(Provider {
            issuer: named,
            authorization_endpoint: https("authorization_endpoint")?,
            token_endpoint: https("token_endpoint")?,
            jwks_uri: https("jwks_uri")?,
            id_token_algs: list("id_token_signing_alg_values_supported").unwrap_or_default(),
        })
    }
}

/// This relying party as registered with the provider.
#[derive(Clone)]
pub struct Client {
    /// The client id.
    pub client_id: String,
    /// The client secret of a confidential client (sent with HTTP Basic); none for a
    /// public client, which PKCE alone protects.
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back.
    pub redirect_uri: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
}

/// A login under way: what the caller keeps (secretly) between [`begin`] and [`finish`].
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// Binds the callback to this login (and to the browser that started it).
    pub state: String,
    /// Binds the ID token to this login.
    pub nonce: String,
    /// The PKCE code verifier: only the party that started the login can exchange its code.
    pub verifier: String,
}

/// Starts a login: the URL to send the browser to, and the [`Pending`] login to keep.
/// `random` must come from a secure generator: it makes the state, the nonce and the PKCE
/// verifier (32 bytes each, so 256 bits apiece).
pub fn begin(provider: &Provider, client: &Client, random: &[u8; 96]) -> (String, Pending) {
    let pending = Pending {
        state: B64.encode(&random[..32]),
        nonce: B64.encode(&random[32..64]),
        verifier: B64.encode(&random[64..]),
    };
    let challenge = B64.encode(ring::digest::digest(&ring::digest::SHA256, pending.verifier.as_bytes()));
    let scope = std::iter::once("openid")
        .chain(client.scopes.iter().map(String::as_str).filter(|s| *s != "openid"))
        .collect::<Vec<_>>()
        .join(" ");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", &client.redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if provider.authorization_endpoint.contains('?') { '&' } else { '?' };
    (format!("{}{sep}{query}", provider.authorization_endpoint), pending)
}

/// What the browser brought back to the redirect URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    /// The authorization code.
    pub code: String,
    /// The state, to match against the pending login.
    pub state: String,
}

impl Callback {
    /// The `state` a callback's query carries, if it carries exactly one: to match against
    /// the login (and the browser) before anything else of the callback is trusted.
    pub fn state_of(query: &str) -> Option<String> {
        let mut found =
            form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "state").map(|(_, v)| v.into_owned());
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// Reads the callback's query string. An error answer from the provider is
    /// [`OidcError::Refused`].
    pub fn parse(query: &str) -> Result<Callback, OidcError> {
        let (mut code, mut state, mut error, mut description) = (None, None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*k {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                "error_description" => &mut description,
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(OidcError::Callback(format!("{k} is given twice")));
            }
        }
        if let Some(error) = error {
            return Err(OidcError::Refused { error, description });
        }
        match (code, state) {
            (Some(code), Some(state)) if !code.is_empty() && !state.is_empty() => Ok(Callback { code, state }),
            _ => Err(OidcError::Callback("it has no code and state".into())),
        }
    }
}

/// The code exchange to POST to the token endpoint (`application/x-www-form-urlencoded`).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token endpoint.
    pub url: String,
    /// The form body.
    pub body: String,
    /// The `Authorization` header of a confidential client (`client_secret_basic`).
    pub authorization: Option<String>,
}

/// The code exchange for `callback`, which must belong to `pending`.
pub fn token_request(
    provider: &Provider,
    client: &Client,
    pending: &Pending,
    callback: &Callback,
) -> Result<TokenRequest, OidcError> {
    if callback.state != pending.state {
        return Err(OidcError::StateMismatch);
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "authorization_code")
        .append_pair("code", &callback.code)
        .append_pair("redirect_uri", &client.redirect_uri)
        .append_pair("code_verifier", &pending.verifier);
    let authorization = match &client.client_secret {
        Some(secret) => {
            // RFC 6749 §2.3.1: both parts form-encoded before Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            Some(format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(&client.client_id), enc(secret)))))
        }
        None => {
            form.append_pair("client_id", &client.client_id);
            None
        }
    };
    Ok(TokenRequest { url: provider.token_endpoint.clone(), body: form.finish(), authorization })
}

/// Checks the token endpoint's answer (`status`, `body`) and its ID token; `keys` are the
/// provider's, `now` is Unix seconds.
pub fn finish(
    provider: &Provider,
    client: &Client,
    pending: &Pending,
    status: u16,
    body: &[u8],
    keys: &Jwks,
    now: i64,
) -> Result<IdClaims, OidcError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| OidcError::TokenResponse(format!("HTTP {status}, and the body is not JSON")))?;
    if !(200..300).contains(&status) {
        let error = v.get("error").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        let description = v.get("error_description").and_then(Value::as_str).map(str::to_owned);
        return Err(OidcError::Refused { error, description });
    }
    let token_type = v.get("token_type").and_then(Value::as_str).unwrap_or("");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(OidcError::TokenResponse(format!("token_type is {token_type:?}, not Bearer")));
    }
    let id_token = v
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::TokenResponse("it has no id_token (was the openid scope granted?)".into()))?;
    let expect = Expect {
        issuer: &provider.issuer,
        client_id: &client.client_id,
        nonce: &pending.nonce,
        provider_algs: &provider.id_token_algs,
    };
    Ok(id_token::verify(id_token, keys, &expect, now)?)
}

// Secrets (the client secret, the PKCE verifier, the code) stay out of debug output.

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("confidential", &self.client_secret.is_some())
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest").field("url", &self.url).finish_non_exhaustive()
    }
}
