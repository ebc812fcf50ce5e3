//! ID token checks (OpenID Connect Core §3.1.3.7).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use crate::jwk::{ALGORITHMS, Jwks};
use crate::{IdTokenError, LEEWAY_S};

/// An ID token older than this is not taken, seconds: it cannot belong to a login that is
/// happening now.
const MAX_AGE_S: i64 = 600;

/// The checked claims of an ID token.
#[derive(Debug, Clone)]
pub struct IdClaims {
    /// The issuer.
    pub issuer: String,
    /// The provider's stable identifier of the person (`sub`).
    pub subject: String,
    /// Every claim, for mapping the person to an account.
    pub claims: Map<String, Value>,
}

impl IdClaims {
    /// A claim's value as text, if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// What an ID token is checked against.
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) nonce: &'a str,
    /// The algorithms the provider says it signs with (none listed: all we take).
    pub(crate) provider_algs: &'a [String],
}

pub(crate) fn verify(token: &str, keys: &Jwks, expect: &Expect<'_>, now: i64) -> Result<IdClaims, IdTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(IdTokenError::Malformed);
    };
    let decode = |p: &str| B64.decode(p).map_err(|_| IdTokenError::Malformed);
    let header: Map<String, Value> = serde_json::from_slice(&decode(h)?).map_err(|_| IdTokenError::Malformed)?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(IdTokenError::Malformed)?;
    let listed = expect.provider_algs.is_empty() || expect.provider_algs.iter().any(|a| a == alg);
    if !ALGORITHMS.contains(&alg) || !listed {
        return Err(IdTokenError::Algorithm(alg.to_owned()));
    }
    if header.contains_key("crit") {
        // No extension is understood here, so a token that makes one critical is refused.
        return Err(IdTokenError::Malformed);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let signed = &token[..h.len() + 1 + c.len()];
    keys.verify(alg, kid, signed.as_bytes(), &decode(s)?)?;

    // Only a verified payload is read.
    let claims: Map<String, Value> = serde_json::from_slice(&decode(c)?).map_err(|_| IdTokenError::Malformed)?;
    let text = |name: &'static str| claims.get(name).and_then(Value::as_str).ok_or(IdTokenError::Claim(name));
    let number = |name: &'static str| claims.get(name).and_then(Value::as_i64).ok_or(IdTokenError::Claim(name));
    let iss = text("iss")?;
    if iss != expect.issuer {
        return Err(IdTokenError::Issuer { expected: expect.issuer.to_owned(), got: iss.to_owned() });
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err(IdTokenError::Claim("aud")),
    };
    if !audiences.contains(&expect.client_id) {
        return Err(IdTokenError::Audience);
    }
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != expect.client_id => return Err(IdTokenError::Audience),
        None if audiences.len() > 1 => return Err(IdTokenError::Audience),
        _ => {}
    }
    if now >= number("exp")?.saturating_add(LEEWAY_S) {
        return Err(IdTokenError::Expired);
    }
    let iat = number("iat")?;
    if iat > now + LEEWAY_S || iat < now - MAX_AGE_S {
        return Err(IdTokenError::IssuedAt);
    }
    if text("nonce").map_err(|_| IdTokenError::Nonce)? != expect.nonce {
        return Err(IdTokenError::Nonce);
    }
    let subject = text("sub")?;
    if subject.is_empty() {
        return Err(IdTokenError::Claim("sub"));
    }
    Ok(IdClaims { issuer: iss.to_owned(), subject: subject.to_owned(), claims: claims.clone() })
}
