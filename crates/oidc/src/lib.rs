//! An OpenID Connect relying party (OpenID Connect Core 1.0, authorization code flow, with
//! PKCE, RFC 7636), sans-IO: this crate builds the requests and checks the answers; the
//! caller moves the bytes and gives the time.
//!
//! One login, in order:
//! 1. [`Provider::from_discovery`] reads the provider's `/.well-known/openid-configuration`
//!    (fetched by the caller) and checks it names the issuer that was configured.
//! 2. [`begin`] makes the authorization URL to send the browser to, and the [`Pending`]
//!    login (state, nonce, PKCE verifier) the caller keeps until the browser comes back.
//! 3. [`Callback::parse`] reads the query the browser comes back with.
//! 4. [`token_request`] makes the code exchange the caller POSTs to the token endpoint.
//! 5. [`finish`] checks the token endpoint's answer and its ID token against the provider's
//!    keys ([`Jwks`], fetched by the caller) and gives the [`IdClaims`].
//!
//! The ID token is checked as Core §3.1.3.7 asks: signature by a key of the provider's JWKS
//! with an asymmetric algorithm (RS256, PS256, ES256, EdDSA; never `none` or HMAC), issuer,
//! audience and authorized party, expiry and issue time, and the nonce of this login.

mod flow;
mod id_token;
mod jwk;

pub use flow::{Callback, Client, Pending, Provider, TokenRequest, begin, finish, token_request};
pub use id_token::IdClaims;
pub use jwk::Jwks;

/// Seconds of clock difference allowed between the provider and us.
pub const LEEWAY_S: i64 = 60;

/// What went wrong in a login.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OidcError {
    /// The provider's discovery document is unusable.
    #[error("the identity provider's configuration is unusable: {0}")]
    Discovery(String),
    /// The provider's keys (JWKS) are unusable.
    #[error("the identity provider's keys are unusable: {0}")]
    Keys(String),
    /// The provider answered the authorization request (or the token request) with an
    /// error. The words of a callback come from its URL, which anyone can make: show them
    /// only once the callback's state matched the login ([`Callback::state_of`]).
    #[error("the identity provider refused the login: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The OAuth error code (`access_denied`, `login_required`, ...).
        error: String,
        /// The provider's words, if any.
        description: Option<String>,
    },
    /// The callback is not one this relying party can take.
    #[error("the login callback is malformed: {0}")]
    Callback(String),
    /// The callback's state is not the one this login sent.
    #[error("the login callback does not belong to this login (state mismatch)")]
    StateMismatch,
    /// The token endpoint's answer is unusable.
    #[error("the identity provider's token answer is unusable: {0}")]
    TokenResponse(String),
    /// The ID token failed a check.
    #[error("the ID token is refused: {0}")]
    IdToken(#[from] IdTokenError),
}

/// Why an ID token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdTokenError {
    /// Not a compact JWS of three base64url parts with JSON header and claims.
    #[error("it is not a well-formed signed JWT")]
    Malformed,
    /// Its algorithm is not one we take (`none`, HMAC, or one the provider does not list).
    #[error("its algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No key of the provider's JWKS fits its header.
    #[error("no key of the provider's JWKS matches it (kid {0:?})")]
    NoKey(Option<String>),
    /// The signature does not verify.
    #[error("its signature does not verify")]
    Signature,
    /// Issued by someone else.
    #[error("it was issued by {got:?}, not {expected:?}")]
    Issuer {
        /// The provider's issuer.
        expected: String,
        /// The token's `iss`.
        got: String,
    },
    /// Not addressed to this client.
    #[error("it is not addressed to this client (aud or azp)")]
    Audience,
    /// Expired.
    #[error("it has expired")]
    Expired,
    /// Issued in the future, or too long ago to belong to this login.
    #[error("its issue time is not plausible")]
    IssuedAt,
    /// Its nonce is not this login's.
    #[error("its nonce is not this login's (a replayed token?)")]
    Nonce,
    /// A required claim is missing or of the wrong type.
    #[error("its claim {0:?} is missing or not of the right type")]
    Claim(&'static str),
}
