//! Enrolment: how a new van gets its device certificate.
//!
//! A fleet manager asks the hub for a one-time token for an organisation and a van. The
//! token carries a secret, an expiry and the fingerprint of the fleet CA, so the van knows
//! whom to trust before it has any certificate. The van generates its own key (it never
//! leaves the van), connects with the enrolment ALPN and no client certificate, checks that
//! the hub's chain ends at the CA the token names, and sends the token with a certificate
//! request. The hub checks the token (known, unused, unexpired), marks it used, and signs a
//! certificate naming the van the token was issued for, whatever the request asked.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{DeviceId, FleetCa, IdentityError, device_of, fingerprint, new_device_key};
use crate::registry::{Registry, RegistryError};

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
    /// The certificate presented for renewal was revoked.
    #[error("this van's certificate was revoked; it cannot be renewed (a fleet manager must enrol the van again)")]
    Revoked,
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

/// The hub's enrolment desk: issues tokens, redeems them, renews certificates. What it
/// must remember lives in a [`Registry`]; only a hash of each token's secret is kept.
#[derive(Debug)]
pub struct Enroller {
    ca: Arc<FleetCa>,
    registry: Arc<dyn Registry>,
    validity: time::Duration,
}

impl Enroller {
    /// An enroller signing with `ca`; device certificates last `validity`.
    pub fn new(ca: Arc<FleetCa>, registry: Arc<dyn Registry>, validity: time::Duration) -> Enroller {
        Enroller { ca, registry, validity }
    }

    /// Issues a token for a van, valid until `expires_at` (unix seconds).
    pub fn issue(&self, device: DeviceId, expires_at: i64) -> Result<EnrolmentToken, RegistryError> {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        self.registry.add_token(Sha256::digest(secret).into(), &device, expires_at)?;
        Ok(EnrolmentToken { device, expires_at, ca_fingerprint: self.ca.fingerprint(), secret })
    }

    /// Checks a token and signs the van's certificate request. A token enrols one key; the
    /// same key may redeem it again (a retry after a lost answer) and gets a fresh certificate.
    pub fn redeem(&self, token: &str, csr: &[u8], now: OffsetDateTime) -> Result<CertificateDer<'static>, EnrolError> {
        let token = EnrolmentToken::parse(token)?;
        let key_hash = request_key_hash(csr)?;
        // Marked used before signing: a token cannot be raced into two keys' certificates.
        let device = self.registry.redeem_token(Sha256::digest(token.secret).into(), key_hash, now.unix_timestamp())?;
        if device != token.device {
            return Err(EnrolError::Unknown);
        }
        self.sign(csr, &device, now)
    }

    /// Renews a certificate: `current` was verified by TLS (issued by this CA, unexpired);
    /// unless it is revoked, the van gets a new certificate for its new key.
    pub fn renew(
        &self,
        current: &CertificateDer<'_>,
        csr: &[u8],
        now: OffsetDateTime,
    ) -> Result<CertificateDer<'static>, EnrolError> {
        let device = device_of(current).map_err(|e| EnrolError::BadRequest(e.to_string()))?;
        match self.registry.is_revoked(&fingerprint(current)) {
            Ok(false) => {}
            Ok(true) => return Err(EnrolError::Revoked),
            Err(e) => return Err(EnrolError::Refused(e.to_string())),
        }
        self.sign(csr, &device, now)
    }

    fn sign(&self, csr: &[u8], device: &DeviceId, now: OffsetDateTime) -> Result<CertificateDer<'static>, EnrolError> {
        let not_after = now + self.validity;
        let cert = self
            .ca
            .sign_device_request(csr, device, now - time::Duration::minutes(5), not_after)
            .map_err(|e: IdentityError| EnrolError::BadRequest(e.to_string()))?;
        self.registry
            .record_certificate(&fingerprint(&cert), device, not_after.unix_timestamp())
            .map_err(|e| EnrolError::Refused(e.to_string()))?;
        Ok(cert)
    }

    /// The CA certificate vans pin.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        self.ca.certificate()
    }

    /// The registry behind this enroller.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }
}

/// SHA-256 of the public key a certificate request carries: what a token is bound to.
fn request_key_hash(csr: &[u8]) -> Result<[u8; 32], EnrolError> {
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(csr)
        .map_err(|e| EnrolError::BadRequest(format!("the certificate request does not decode: {e}")))?;
    Ok(Sha256::digest(req.certification_request_info.subject_pki.raw).into())
}

/// What a van sends on the enrolment stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum EnrolRequest {
    /// A first certificate, for a token.
    Enrol { token: String, csr: Vec<u8> },
    /// A new certificate for the van the connection's client certificate names.
    Renew { csr: Vec<u8> },
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

/// The hub's side of one enrolment stream. `peer` is the client certificate TLS verified,
/// if the van presented one (renewal).
pub(crate) async fn serve(
    enroller: &Enroller,
    peer: Option<CertificateDer<'static>>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), EnrolError> {
    let request: EnrolRequest = read_message(recv).await?;
    let now = OffsetDateTime::now_utc();
    let result = match (&request, peer) {
        (EnrolRequest::Enrol { token, csr }, _) => enroller.redeem(token, csr, now),
        (EnrolRequest::Renew { csr }, Some(cert)) => enroller.renew(&cert, csr, now),
        (EnrolRequest::Renew { .. }, None) => {
            Err(EnrolError::BadRequest("renewal needs the current device certificate; none was presented".into()))
        }
    };
    let response = match result {
        Ok(cert) => {
            let device = device_of(&cert).map(|d| format!("{}/{}", d.org, d.van)).unwrap_or_default();
            let kind = if matches!(request, EnrolRequest::Renew { .. }) { "renewed" } else { "enrolled" };
            tracing::info!(van = %device, "{kind} a van");
            EnrolResponse::Issued { cert: cert.to_vec(), ca: enroller.ca_certificate().to_vec() }
        }
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
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| conn_err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let (key, csr) = new_device_key().map_err(|e| EnrolError::BadRequest(e.to_string()))?;
    let request = EnrolRequest::Enrol { token: token.trim().to_owned(), csr };
    let (cert, ca) = exchange(addr, server_name, tls, &request).await?;
    if fingerprint(&ca) != parsed.ca_fingerprint {
        return Err(EnrolError::Refused("the hub returned a CA other than the token's".into()));
    }
    Ok(Enrolled { cert, key, ca })
}

/// Renews this van's certificate before it expires: connects with the current certificate
/// and key, pins `ca`, and returns a new certificate for a new key (the CA stays the same).
pub async fn renew(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Enrolled, EnrolError> {
    let conn_err = |e: &dyn std::fmt::Display| EnrolError::Connection(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| conn_err(&e))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| conn_err(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| conn_err(&e))?;
    let (new_key, csr) = new_device_key().map_err(|e| EnrolError::BadRequest(e.to_string()))?;
    let (new_cert, returned_ca) = exchange(addr, server_name, tls, &EnrolRequest::Renew { csr }).await?;
    if returned_ca != *ca {
        return Err(EnrolError::Refused("the hub returned a CA other than the one this van pins".into()));
    }
    Ok(Enrolled { cert: new_cert, key: new_key, ca: returned_ca })
}

/// One request and its answer on the enrolment ALPN.
async fn exchange(
    addr: std::net::SocketAddr,
    server_name: &str,
    mut tls: rustls::ClientConfig,
    request: &EnrolRequest,
) -> Result<(CertificateDer<'static>, CertificateDer<'static>), EnrolError> {
    let conn_err = |e: &dyn std::fmt::Display| EnrolError::Connection(e.to_string());
    tls.alpn_protocols = vec![ENROL_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| conn_err(&e))?;
    let bind: std::net::SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|e| conn_err(&e))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(&e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, server_name).map_err(|e| conn_err(&e))?.await.map_err(|e| conn_err(&e))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_err(&e))?;
    write_message(&mut send, request).await?;
    let response: EnrolResponse = read_message(&mut recv).await?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match response {
        EnrolResponse::Issued { cert, ca } => Ok((CertificateDer::from(cert), CertificateDer::from(ca))),
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
