//! The login flow against tokens signed here with ring, one refusal per check.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use oidc::{Callback, Client, IdTokenError, Jwks, OidcError, Pending, Provider};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::json;

const ISSUER: &str = "https://idp.example";
const NOW: i64 = 1_800_000_000;

fn provider() -> Provider {
    Provider::from_discovery(
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://idp.example/auth",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
        })
        .to_string()
        .as_bytes(),
        ISSUER,
    )
    .unwrap()
}

fn client() -> Client {
    Client {
        client_id: "medvan-hub".into(),
        client_secret: Some("s3cret:&".into()),
        redirect_uri: "https://hub.example/cb".into(),
        scopes: vec!["profile".into()],
    }
}

struct Signer {
    es: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pk = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let es = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pk.as_ref(), &rng).unwrap();
        let pk = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pk.as_ref()).unwrap();
        Signer { es, ed, rng }
    }

    fn jwks(&self) -> Jwks {
        let p = self.es.public_key().as_ref();
        Jwks::parse(
            json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig",
                 "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": B64.encode(self.ed.public_key().as_ref())},
                {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": "AA", "y": "AA"},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = match header["alg"].as_str() {
            Some("ES256") => self.es.sign(&self.rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Some("EdDSA") => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
            _ => Vec::new(),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

fn claims(pending: &Pending) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": "medvan-hub", "sub": "248289761001", "nonce": pending.nonce,
           "iat": NOW - 5, "exp": NOW + 300, "preferred_username": "dr.osei"})
}

fn answer(id_token: &str) -> Vec<u8> {
    json!({"access_token": "x", "token_type": "Bearer", "id_token": id_token}).to_string().into_bytes()
}

fn start() -> Pending {
    oidc::begin(&provider(), &client(), &[9; 96]).1
}

#[test]
fn the_authorization_request_carries_pkce_s256_state_and_nonce() {
    let (url, pending) = oidc::begin(&provider(), &client(), &std::array::from_fn(|i| i as u8));
    let query = url.strip_prefix("https://idp.example/auth?").unwrap();
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["scope"], "openid profile");
    assert_eq!(params["state"], pending.state);
    assert_eq!(params["nonce"], pending.nonce);
    assert_eq!(params["code_challenge_method"], "S256");
    let digest = ring::digest::digest(&ring::digest::SHA256, pending.verifier.as_bytes());
    assert_eq!(params["code_challenge"], B64.encode(digest));
    assert!(pending.verifier.len() >= 43, "RFC 7636 wants at least 43 characters");
    assert_ne!(pending.state, pending.nonce);

    // The exchange sends the verifier, and the secret with HTTP Basic, each part
    // form-encoded first.
    let cb = Callback { code: "c0de".into(), state: pending.state.clone() };
    let req = oidc::token_request(&provider(), &client(), &pending, &cb).unwrap();
    assert_eq!(req.url, "https://idp.example/token");
    assert!(req.body.contains(&format!("code_verifier={}", pending.verifier)), "{}", req.body);
    let basic = base64::engine::general_purpose::STANDARD
        .decode(req.authorization.unwrap().strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(basic).unwrap(), "medvan-hub:s3cret%3A%26");
    // A public client names itself in the body instead.
    let public = Client { client_secret: None, ..client() };
    let req = oidc::token_request(&provider(), &public, &pending, &cb).unwrap();
    assert!(req.authorization.is_none() && req.body.contains("client_id=medvan-hub"));
    // A callback of another login is refused before anything is sent.
    let other = Callback { state: "someone-else".into(), ..cb };
    assert_eq!(oidc::token_request(&provider(), &client(), &pending, &other), Err(OidcError::StateMismatch));
}

#[test]
fn callbacks_and_discovery_documents_that_cannot_be_trusted_are_refused() {
    assert_eq!(Callback::parse("code=a&state=b").unwrap(), Callback { code: "a".into(), state: "b".into() });
    assert!(matches!(
        Callback::parse("error=access_denied&error_description=no+thanks&state=b"),
        Err(OidcError::Refused { error, description: Some(d) }) if error == "access_denied" && d == "no thanks"
    ));
    assert!(matches!(Callback::parse("state=b"), Err(OidcError::Callback(_))));
    assert!(matches!(Callback::parse("code=a&code=b&state=c"), Err(OidcError::Callback(_))));

    let doc = |issuer: &str, token: &str, methods: serde_json::Value| {
        json!({"issuer": issuer, "authorization_endpoint": "https://idp.example/auth", "token_endpoint": token,
               "jwks_uri": "https://idp.example/jwks", "code_challenge_methods_supported": methods})
        .to_string()
    };
    let good = doc(ISSUER, "https://idp.example/token", json!(["S256"]));
    assert!(Provider::from_discovery(good.as_bytes(), ISSUER).is_ok());
    for (what, text) in [
        ("another issuer", doc("https://evil.example", "https://idp.example/token", json!(["S256"]))),
        ("plain http endpoint", doc(ISSUER, "http://idp.example/token", json!(["S256"]))),
        ("no S256", doc(ISSUER, "https://idp.example/token", json!(["plain"]))),
        ("not JSON", "<html>".into()),
    ] {
        assert!(matches!(Provider::from_discovery(text.as_bytes(), ISSUER), Err(OidcError::Discovery(_))), "{what}");
    }
}

#[test]
fn a_genuine_id_token_is_taken_and_each_kind_of_bad_one_is_refused() {
    let s = Signer::new();
    let keys = s.jwks();
    assert_eq!(keys.len(), 2, "the encryption key is not used for signatures");
    let pending = start();
    let finish = |token: &str| oidc::finish(&provider(), &client(), &pending, 200, &answer(token), &keys, NOW);

    for alg in ["ES256", "EdDSA"] {
        let kid = if alg == "ES256" { "ec1" } else { "ed1" };
        let ok = finish(&s.sign(json!({"alg": alg, "kid": kid}), claims(&pending))).unwrap();
        assert_eq!(ok.subject, "248289761001");
        assert_eq!(ok.text("preferred_username"), Some("dr.osei"));
    }
    // Without a kid, the only key fitting the algorithm is used.
    assert!(finish(&s.sign(json!({"alg": "EdDSA"}), claims(&pending))).is_ok());

    let with = |patch: serde_json::Value| {
        let mut c = claims(&pending);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        s.sign(json!({"alg": "ES256", "kid": "ec1"}), c)
    };
    let genuine = with(json!({}));
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let changed = B64.encode(claims(&pending).to_string().replace("dr.osei", "admin"));
    parts[1] = &changed;
    let tampered = parts.join(".");
    let hs256 = {
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "HS256", "kid": "ec1"}).to_string()),
            B64.encode(claims(&pending).to_string())
        );
        let public = s.es.public_key().as_ref();
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public), input.as_bytes());
        format!("{input}.{}", B64.encode(tag.as_ref()))
    };
    let cases: Vec<(&str, String, IdTokenError)> = vec![
        ("alg none", s.sign(json!({"alg": "none"}), claims(&pending)), IdTokenError::Algorithm("none".into())),
        ("HS256 keyed with the public key", hs256, IdTokenError::Algorithm("HS256".into())),
        ("payload changed after signing", tampered, IdTokenError::Signature),
        (
            "unknown key",
            s.sign(json!({"alg": "ES256", "kid": "old"}), claims(&pending)),
            IdTokenError::NoKey(Some("old".into())),
        ),
        (
            "key of another kind",
            s.sign(json!({"alg": "ES256", "kid": "ed1"}), claims(&pending)),
            IdTokenError::NoKey(Some("ed1".into())),
        ),
        (
            "another issuer",
            with(json!({"iss": "https://evil.example"})),
            IdTokenError::Issuer { expected: ISSUER.into(), got: "https://evil.example".into() },
        ),
        ("another audience", with(json!({"aud": "billing"})), IdTokenError::Audience),
        ("several audiences, no azp", with(json!({"aud": ["medvan-hub", "billing"]})), IdTokenError::Audience),
        ("azp of another client", with(json!({"azp": "billing"})), IdTokenError::Audience),
        ("expired", with(json!({"exp": NOW - 120})), IdTokenError::Expired),
        ("issued in the future", with(json!({"iat": NOW + 600})), IdTokenError::IssuedAt),
        ("issued long ago", with(json!({"iat": NOW - 3600, "exp": NOW + 60})), IdTokenError::IssuedAt),
        ("another login's nonce", with(json!({"nonce": "replayed"})), IdTokenError::Nonce),
        ("no nonce", with(json!({"nonce": null})), IdTokenError::Nonce),
        ("no subject", with(json!({"sub": null})), IdTokenError::Claim("sub")),
        ("not a JWT", "abc.def".into(), IdTokenError::Malformed),
    ];
    for (what, token, why) in cases {
        assert_eq!(finish(&token).unwrap_err(), OidcError::IdToken(why), "{what}");
    }
    // The token addressed to several clients is fine once it names us as the authorized party.
    assert!(finish(&with(json!({"aud": ["medvan-hub", "billing"], "azp": "medvan-hub"}))).is_ok());

    // An algorithm the provider does not list is refused even with a fitting key.
    let mut narrow = provider();
    narrow.id_token_algs = vec!["EdDSA".into()];
    assert_eq!(
        oidc::finish(&narrow, &client(), &pending, 200, &answer(&genuine), &keys, NOW).unwrap_err(),
        OidcError::IdToken(IdTokenError::Algorithm("ES256".into()))
    );
    // The token endpoint's refusal is passed on with its words; an answer with no ID token
    // is refused.
    let refused = json!({"error": "invalid_grant", "error_description": "grant request is invalid"}).to_string();
    assert!(matches!(
        oidc::finish(&provider(), &client(), &pending, 400, refused.as_bytes(), &keys, NOW),
        Err(OidcError::Refused { error, .. }) if error == "invalid_grant"
    ));
    let no_id = json!({"access_token": "x", "token_type": "Bearer"}).to_string();
    assert!(matches!(
        oidc::finish(&provider(), &client(), &pending, 200, no_id.as_bytes(), &keys, NOW),
        Err(OidcError::TokenResponse(_))
    ));
}
