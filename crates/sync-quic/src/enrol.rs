//! Enrolment: how a new van gets its device certificate.
//!
//! A fleet manager asks the hub for a one-time token for an organisation and a van. The
//! token carries a secret, an expiry and the fingerprint of the fleet CA, so the van knows
//! whom to trust before it has any certificate. The van generates its own key (it never
//! leaves the van), connects with the enrolment ALPN and no client certificate, checks that
//! the hub's chain ends at the CA the token names, and sends the token with a certificate
//! request. The hub checks the token (known, unused, unexpired), marks it used, and signs a
//! certificate naming the van the token was issued for, whatever the request asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{DeviceId, FleetCa, IdentityError, fingerprint, new_device_key};

/// The ALPN protocol id of enrolment.
pub const ENROL_ALPN: &[u8] = b"medvan-enrol/1";

/// Why enrolment failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// The token text is not a Medvan enrolment token.
    #[error("that is not a Medvan enrolment token (expected mvt1:<org>:<van>:<expiry>:<ca fingerprint>:<secret>)")]
    Malformed,
    /// The hub does not know the token.
    #[error("the hub does not know this enrolment token; ask the fleet manager for a new one")]
    Unknown,
    /// The token was used before.
    #[error("this enrolment token was already used; each token enrols one van once: ask for a new one")]
    AlreadyUsed,
    /// The token expired.
    #[error("this enrolment token expired; ask the fleet manager for a new one")]
    Expired,
    /// The certificate request could not be signed.
    #[error("the certificate request was refused: {0}")]
    BadRequest(String),
    /// The hub refused (the hub's reason, as received by the van).
    #[error("the hub refused enrolment: {0}")]
    Refused(String),
    /// The connection failed (including a hub whose certificate is not from the token's CA).
    #[error("enrolment connection failed: {0}")]
    Connection(String),
}

/// A one-time enrolment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    /// The van it enrols.
    pub device: DeviceId,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// SHA-256 of the fleet CA certificate, hex.
    pub ca_fingerprint: String,
    secret: [u8; 32],
}

impl EnrolmentToken {
    /// The text handed to the van.
    pub fn encode(&self) -> String {
        format!(
            "mvt1:{}:{}:{}:{}:{}",
            self.device.org,
            self.device.van,
            self.expires_at,
            self.ca_fingerprint,
            hex::encode(self.secret)
        )
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Result<EnrolmentToken, EnrolError> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let ["mvt1", org, van, expires, fp, secret] = parts.as_slice() else { return Err(EnrolError::Malformed) };
        let device = DeviceId::new(org, van).map_err(|_| EnrolError::Malformed)?;
        let expires_at = expires.parse().map_err(|_| EnrolError::Malformed)?;
        let secret: [u8; 32] = hex::decode(secret).ok().and_then(|b| b.try_into().ok()).ok_or(EnrolError::Malformed)?;
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EnrolError::Malformed);
        }
        Ok(EnrolmentToken { device, expires_at, ca_fingerprint: fp.to_ascii_lowercase(), secret })
    }
}

#[derive(Debug)]
struct Record {
    device: DeviceId,
    expires_at: i64,
    used: bool,
}

/// The hub's register of enrolment tokens (kept in memory here; the hub's storage will
/// persist it). Only a hash of each secret is kept.
#[derive(Debug)]
pub struct Enroller {
    ca: Arc<FleetCa>,
    tokens: Mutex<HashMap<[u8; 32], Record>>,
    validity: time::Duration,
}

impl Enroller {
    /// An enroller signing with `ca`; device certificates last `validity`.
    pub fn new(ca: Arc<FleetCa>, validity: time::Duration) -> Enroller {
        Enroller { ca, tokens: Mutex::new(HashMap::new()), validity }
    }

    /// Issues a token for a van, valid until `expires_at` (unix seconds).
    pub fn issue(&self, device: DeviceId, expires_at: i64) -> EnrolmentToken {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        lock(&self.tokens)
            .insert(Sha256::digest(secret).into(), Record { device: device.clone(), expires_at, used: false });
        EnrolmentToken { device, expires_at, ca_fingerprint: self.ca.fingerprint(), secret }
    }

    /// Checks a token and signs the van's certificate request. A token works once.
    pub fn redeem(&self, token: &str, csr: &[u8], now: OffsetDateTime) -> Result<CertificateDer<'static>, EnrolError> {
        let token = EnrolmentToken::parse(token)?;
        let device = {
            let mut tokens = lock(&self.tokens);
            let record = tokens.get_mut(&<[u8; 32]>::from(Sha256::digest(token.secret))).ok_or(EnrolError::Unknown)?;
            if record.used {
                return Err(EnrolError::AlreadyUsed);
            }
            if now.unix_timestamp() > record.expires_at {
                return Err(EnrolError::Expired);
            }
            // Marked used before signing: a token cannot be raced into two certificates.
            record.used = true;
            record.device.clone()
        };
        self.ca
            .sign_device_request(csr, &device, now - time::Duration::minutes(5), now + self.validity)
            .map_err(|e: IdentityError| EnrolError::BadRequest(e.to_string()))
    }

    /// The CA certificate vans pin.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        self.ca.certificate()
    }
}

/// What a van sends on the enrolment stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EnrolRequest {
    pub(crate) token: String,
    pub(crate) csr: Vec<u8>,
}

/// What the hub answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum EnrolResponse {
    Issued { cert: Vec<u8>, ca: Vec<u8> },
    Refused { reason: String },
}

const MAX_ENROL_MESSAGE: usize = 64 * 1024;

pub(crate) async fn write_message<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), EnrolError> {
    let body = postcard::to_allocvec(msg).map_err(|e| EnrolError::Connection(e.to_string()))?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await.map_err(|e| EnrolError::Connection(e.to_string()))?;
    send.write_all(&body).await.map_err(|e| EnrolError::Connection(e.to_string()))?;
    send.finish().map_err(|e| EnrolError::Connection(e.to_string()))
}

pub(crate) async fn read_message<T: for<'de> Deserialize<'de>>(recv: &mut quinn::RecvStream) -> Result<T, EnrolError> {
    let bytes = recv.read_to_end(MAX_ENROL_MESSAGE + 4).await.map_err(|e| EnrolError::Connection(e.to_string()))?;
    if bytes.len() < 4 {
        return Err(EnrolError::Connection("the message was cut short".into()));
    }
    postcard::from_bytes(&bytes[4..]).map_err(|e| EnrolError::Connection(format!("the message does not decode: {e}")))
}

/// The hub's side of one enrolment stream.
pub(crate) async fn serve(
    enroller: &Enroller,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), EnrolError> {
    let request: EnrolRequest = read_message(recv).await?;
    let response = match enroller.redeem(&request.token, &request.csr, OffsetDateTime::now_utc()) {
        Ok(cert) => EnrolResponse::Issued { cert: cert.to_vec(), ca: enroller.ca_certificate().to_vec() },
        Err(e) => {
            tracing::warn!(error = %e, "refused an enrolment");
            EnrolResponse::Refused { reason: e.to_string() }
        }
    };
    write_message(send, &response).await
}

/// A van's new identity, as enrolment returns it.
#[derive(Debug)]
pub struct Enrolled {
    /// The device certificate.
    pub cert: CertificateDer<'static>,
    /// The device key (generated on the van).
    pub key: PrivateKeyDer<'static>,
    /// The fleet CA certificate, to pin from now on.
    pub ca: CertificateDer<'static>,
}

/// Enrols this van with the hub at `addr` using `token`.
pub async fn enrol(addr: std::net::SocketAddr, server_name: &str, token: &str) -> Result<Enrolled, EnrolError> {
    let conn_err = |e: &dyn std::fmt::Display| EnrolError::Connection(e.to_string());
    let parsed = EnrolmentToken::parse(token)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa { fingerprint: parsed.ca_fingerprint.clone(), provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| conn_err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ENROL_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| conn_err(&e))?;
    let bind: std::net::SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|e| conn_err(&e))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(&e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, server_name).map_err(|e| conn_err(&e))?.await.map_err(|e| conn_err(&e))?;
    let (key, csr) = new_device_key().map_err(|e| EnrolError::BadRequest(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_err(&e))?;
    write_message(&mut send, &EnrolRequest { token: token.trim().to_owned(), csr }).await?;
    let response: EnrolResponse = read_message(&mut recv).await?;
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    match response {
        EnrolResponse::Issued { cert, ca } => {
            let ca = CertificateDer::from(ca);
            if fingerprint(&ca) != parsed.ca_fingerprint {
                return Err(EnrolError::Refused("the hub returned a CA other than the token's".into()));
            }
            Ok(Enrolled { cert: CertificateDer::from(cert), key, ca })
        }
        EnrolResponse::Refused { reason } => Err(EnrolError::Refused(reason)),
    }
}

/// Trusts a server whose chain includes the CA with the token's fingerprint, and verifies
/// the chain against that CA like any other.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_what_is_expected() {
        let t = EnrolmentToken {
            device: DeviceId::new("org-north", "van-12").unwrap(),
            expires_at: 1_800_000_000,
            ca_fingerprint: "ab".repeat(32),
            secret: [7; 32],
        };
        assert_eq!(EnrolmentToken::parse(&t.encode()).unwrap(), t);
        let err = EnrolmentToken::parse("hello").unwrap_err();
        assert!(err.to_string().contains("mvt1:<org>"), "{err}");
    }
}
