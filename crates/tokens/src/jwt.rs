//! Access tokens: compact JWS (RFC 7515) with Ed25519 signatures (`alg` EdDSA, RFC 8037).
//!
//! Verification accepts exactly one algorithm. A token's header cannot pick another, so
//! `alg: none` and the HS256-with-the-public-key confusion are refused before any key is
//! touched. The key id must name a key of the set that has not been rotated out. Issuer and
//! audience are always required, and expiry is checked against the caller's clock.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The only algorithm issued and accepted.
pub const ALG: &str = "EdDSA";
/// Clock skew tolerated on expiry and issue times, in seconds.
pub const LEEWAY_S: i64 = 30;

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (the hub's URL).
    pub iss: String,
    /// Audience (the API the token is for).
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// The user's organisation.
    pub org: String,
    /// Roles in that organisation.
    pub roles: Vec<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

/// Why a token was refused. The message is for logs; callers answer 401 without detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("the token is not a compact JWS")]
    Malformed,
    /// An algorithm other than EdDSA (including `none` and HMAC).
    #[error("the token's algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// No key id, or one this hub never had or has rotated out.
    #[error("the token's key {0:?} is not a current signing key")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// Expired.
    #[error("the token expired")]
    Expired,
    /// Issued in the future (beyond the clock skew allowed).
    #[error("the token was issued in the future")]
    NotYetValid,
    /// Another issuer.
    #[error("the token's issuer is not this hub")]
    Issuer,
    /// Another audience.
    #[error("the token is not for this API")]
    Audience,
}

/// One signing key.
struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    /// When it stopped signing (seconds), once rotated.
    retired_at: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("retired_at", &self.retired_at).finish()
    }
}

/// The hub's signing keys: the newest signs; retired ones still verify until every token
/// they signed has expired, then they are gone.
#[derive(Debug)]
pub struct KeySet {
    issuer: String,
    audience: String,
    /// How long access tokens live, seconds.
    lifetime_s: i64,
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// A key set for tokens from `issuer` to `audience` that live `lifetime_s`, starting
    /// with the key in `pkcs8` (from [`KeySet::generate_pkcs8`]).
    pub fn new(issuer: &str, audience: &str, lifetime_s: i64, kid: &str, pkcs8: &[u8]) -> Result<KeySet, String> {
        let mut set = KeySet { issuer: issuer.into(), audience: audience.into(), lifetime_s, keys: Vec::new() };
        set.add(kid, pkcs8)?;
        Ok(set)
    }

    /// A new Ed25519 key as PKCS#8, from the caller's random source.
    pub fn generate_pkcs8(rng: &dyn ring::rand::SecureRandom) -> Result<Vec<u8>, String> {
        Ed25519KeyPair::generate_pkcs8(rng).map(|d| d.as_ref().to_vec()).map_err(|e| e.to_string())
    }

    fn add(&mut self, kid: &str, pkcs8: &[u8]) -> Result<(), String> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("the signing key is not Ed25519 PKCS#8: {e}"))?;
        if self.keys.iter().any(|k| k.kid == kid) {
            return Err(format!("key id {kid} is taken"));
        }
        self.keys.push(SigningKey { kid: kid.into(), pair, retired_at: None });
        Ok(())
    }

    /// Rotates: `pkcs8` signs from `now` on; the previous key verifies until the tokens it
    /// signed have expired.
    pub fn rotate(&mut self, kid: &str, pkcs8: &[u8], now: i64) -> Result<(), String> {
        for k in &mut self.keys {
            k.retired_at.get_or_insert(now);
        }
        self.add(kid, pkcs8)?;
        self.prune(now);
        Ok(())
    }

    /// Drops retired keys whose tokens have all expired.
    pub fn prune(&mut self, now: i64) {
        let keep_for = self.lifetime_s + LEEWAY_S;
        self.keys.retain(|k| k.retired_at.is_none_or(|at| now < at + keep_for));
    }

    fn current(&self) -> &SigningKey {
        // `new` adds one key and keys are only ever added after it, so there is one.
        self.keys.iter().rev().find(|k| k.retired_at.is_none()).unwrap_or(&self.keys[self.keys.len() - 1])
    }

    /// Issues an access token for `sub` of `org` with `roles`, valid from `now`.
    pub fn issue(&self, sub: &str, org: &str, roles: &[String], now: i64, jti: &str) -> String {
        self.issue_for(sub, org, roles, now, jti, self.lifetime_s)
    }

    /// [`KeySet::issue`] for a token that lives `lifetime_s`, at most the set's lifetime
    /// (a rotated key verifies no longer than that).
    pub fn issue_for(&self, sub: &str, org: &str, roles: &[String], now: i64, jti: &str, lifetime_s: i64) -> String {
        let lifetime_s = lifetime_s.clamp(1, self.lifetime_s);
        let key = self.current();
        let header = serde_json::json!({ "alg": ALG, "typ": "at+jwt", "kid": key.kid });
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.into(),
            org: org.into(),
            roles: roles.to_vec(),
            iat: now,
            exp: now + lifetime_s,
            jti: jti.into(),
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(&claims).unwrap_or_default())
        );
        let sig = key.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.as_ref()))
    }

    /// Verifies a token at `now` and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: Header =
            B64.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
        // The algorithm is ours to choose, never the token's.
        if header.alg != ALG {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey(kid))?;
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ED25519, key.pair.public_key().as_ref())
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            B64.decode(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if now >= claims.exp + LEEWAY_S {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + LEEWAY_S {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// The verification keys as a JSON Web Key Set (RFC 7517, OKP keys of RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": ALG, "kid": k.kid,
                    "x": B64.encode(k.pair.public_key().as_ref()),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use ring::hmac;
    use ring::rand::SystemRandom;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn set() -> KeySet {
        let pkcs8 = KeySet::generate_pkcs8(&SystemRandom::new()).unwrap();
        KeySet::new("https://hub.example.org", "medvan-api", 300, "k1", &pkcs8).unwrap()
    }

    fn roles() -> Vec<String> {
        vec!["doctor".into()]
    }

    fn forge(header: &serde_json::Value, claims: &serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    fn claims(iss: &str, aud: &str) -> serde_json::Value {
        serde_json::json!({"iss": iss, "aud": aud, "sub": "dr.ana", "org": "org-north", "roles": ["admin"],
                           "iat": NOW, "exp": NOW + 300, "jti": "x"})
    }

    #[test]
    fn a_token_issued_verifies_with_its_claims() {
        let s = set();
        let t = s.issue("dr.ana", "org-north", &roles(), NOW, "j1");
        let c = s.verify(&t, NOW + 10).unwrap();
        assert_eq!((c.sub.as_str(), c.org.as_str(), c.roles.clone()), ("dr.ana", "org-north", roles()));
        // One changed character anywhere and it fails.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(std::str::from_utf8(&bad).unwrap(), NOW).is_err());
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let s = set();
        let none = forge(
            &serde_json::json!({"alg": "none", "kid": "k1"}),
            &claims("https://hub.example.org", "medvan-api"),
            |_| Vec::new(),
        );
        assert_eq!(s.verify(&none, NOW), Err(TokenError::Algorithm("none".into())));
        // The classic confusion: HMAC keyed with the (public) verification key.
        let public = B64.decode(s.jwks()["keys"][0]["x"].as_str().unwrap()).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &public);
        let hs = forge(
            &serde_json::json!({"alg": "HS256", "kid": "k1"}),
            &claims("https://hub.example.org", "medvan-api"),
            |m| hmac::sign(&key, m).as_ref().to_vec(),
        );
        assert_eq!(s.verify(&hs, NOW), Err(TokenError::Algorithm("HS256".into())));
    }

    #[test]
    fn expired_wrong_audience_wrong_issuer_and_future_tokens_are_refused() {
        let pkcs8 = KeySet::generate_pkcs8(&SystemRandom::new()).unwrap();
        let s = KeySet::new("https://hub.example.org", "medvan-api", 300, "k1", &pkcs8).unwrap();
        let t = s.issue("dr.ana", "org-north", &roles(), NOW, "j");
        assert_eq!(s.verify(&t, NOW + 300 + LEEWAY_S), Err(TokenError::Expired));
        assert!(s.verify(&t, NOW + 300 + LEEWAY_S - 1).is_ok(), "within the skew allowed");
        // The same key, verifying for another API or as another issuer.
        let other_aud = KeySet::new("https://hub.example.org", "another-api", 300, "k1", &pkcs8).unwrap();
        assert_eq!(other_aud.verify(&t, NOW), Err(TokenError::Audience));
        let other_iss = KeySet::new("https://evil.example", "medvan-api", 300, "k1", &pkcs8).unwrap();
        assert_eq!(other_iss.verify(&t, NOW), Err(TokenError::Issuer));
        assert_eq!(s.verify(&t, NOW - 100), Err(TokenError::NotYetValid));
        // A shorter-lived token expires on its own time; none outlives the set's lifetime.
        let short = s.issue_for("van:van-1", "org-north", &[], NOW, "call.x", 60);
        assert!(s.verify(&short, NOW + 60 + LEEWAY_S - 1).is_ok());
        assert_eq!(s.verify(&short, NOW + 60 + LEEWAY_S), Err(TokenError::Expired));
        let long = s.issue_for("van:van-1", "org-north", &[], NOW, "call.y", 86_400);
        assert_eq!(s.verify(&long, NOW + 300 + LEEWAY_S), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_signed_by_a_rotated_out_key_is_refused_and_a_foreign_key_never_verifies() {
        let rng = SystemRandom::new();
        let mut s = set();
        let old = s.issue("dr.ana", "org-north", &roles(), NOW, "j");
        s.rotate("k2", &KeySet::generate_pkcs8(&rng).unwrap(), NOW + 60).unwrap();
        let new = s.issue("dr.ana", "org-north", &roles(), NOW + 61, "j2");
        assert!(new.contains('.') && s.verify(&new, NOW + 62).is_ok());
        // The old key still verifies its unexpired tokens...
        assert!(s.verify(&old, NOW + 100).is_ok());
        assert_eq!(s.jwks()["keys"].as_array().unwrap().len(), 2);
        // ...until its tokens have all expired: then it is gone, and so is anything it signed.
        s.prune(NOW + 60 + 300 + LEEWAY_S);
        assert_eq!(s.verify(&old, NOW + 100), Err(TokenError::UnknownKey("k1".into())));
        assert_eq!(s.jwks()["keys"].as_array().unwrap().len(), 1);
        // A token from another hub's key under a known kid fails its signature.
        let foreign = set().issue("dr.ana", "org-north", &roles(), NOW, "j");
        let foreign = foreign.replace(
            &foreign[..foreign.find('.').unwrap()],
            &B64.encode(serde_json::json!({"alg": "EdDSA", "kid": "k2"}).to_string()),
        );
        assert_eq!(s.verify(&foreign, NOW + 62), Err(TokenError::Signature));
    }
}
