//! The provider's signing keys (a JWK Set, RFC 7517) and signature checks with them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature;

use crate::{IdTokenError, OidcError};

/// The algorithms an ID token may be signed with: asymmetric only, so knowing the
/// provider's public key never lets anyone sign.
pub(crate) const ALGORITHMS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];

/// A provider's public keys.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    /// The algorithm the key is for, if it says.
    alg: Option<String>,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point (0x04 || x || y).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Jwks {
    /// Reads a JWK Set. Keys of kinds we do not verify with, and encryption keys, are
    /// skipped; a set with no usable key is an error.
    pub fn parse(json: &[u8]) -> Result<Jwks, OidcError> {
        let bad = |why: &str| OidcError::Keys(why.to_owned());
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let list = v.get("keys").and_then(|k| k.as_array()).ok_or_else(|| bad("no \"keys\" array"))?;
        let mut keys = Vec::new();
        for k in list {
            let s = |name: &str| k.get(name).and_then(|x| x.as_str());
            let bytes = |name: &str| s(name).and_then(|x| B64.decode(x).ok());
            if s("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let material = match (s("kty"), s("crv")) {
                (Some("RSA"), _) => match (bytes("n"), bytes("e")) {
                    (Some(n), Some(e)) => Material::Rsa { n, e },
                    _ => continue,
                },
                (Some("EC"), Some("P-256")) => match (bytes("x"), bytes("y")) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        Material::P256([&[4u8][..], &x, &y].concat())
                    }
                    _ => continue,
                },
                (Some("OKP"), Some("Ed25519")) => match bytes("x") {
                    Some(x) if x.len() == 32 => Material::Ed25519(x),
                    _ => continue,
                },
                _ => continue,
            };
            keys.push(Key { kid: s("kid").map(str::to_owned), alg: s("alg").map(str::to_owned), material });
        }
        if keys.is_empty() {
            return Err(bad("no signing key of a kind we verify with (RSA, P-256, Ed25519)"));
        }
        Ok(Jwks { keys })
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `sig` over `message` with the key the header names (`kid`), or the only key
    /// that fits `alg` when the header names none.
    pub(crate) fn verify(&self, alg: &str, kid: Option<&str>, message: &[u8], sig: &[u8]) -> Result<(), IdTokenError> {
        let fits = |k: &&Key| {
            k.alg.as_deref().is_none_or(|a| a == alg)
                && matches!(
                    (&k.material, alg),
                    (Material::Rsa { .. }, "RS256" | "PS256")
                        | (Material::P256(_), "ES256")
                        | (Material::Ed25519(_), "EdDSA")
                )
        };
        let candidates: Vec<&Key> = match kid {
            Some(kid) => self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).filter(fits).collect(),
            None => self.keys.iter().filter(fits).collect(),
        };
        let [key] = candidates[..] else {
            return Err(IdTokenError::NoKey(kid.map(str::to_owned)));
        };
        let ok = match (&key.material, alg) {
            (Material::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Material::Rsa { n, e }, "PS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PSS_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Material::P256(point), "ES256") => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(x), "EdDSA") => {
                signature::UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok()
            }
            _ => false,
        };
        if ok { Ok(()) } else { Err(IdTokenError::Signature) }
    }
}
