//! The fleet certificate authority and device identities.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Errors of identity operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Certificate generation or signing failed.
    #[error("certificate operation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A certificate does not carry a Medvan van identity.
    #[error("the certificate does not name a Medvan van (expected a URI urn:medvan:van:<org>:<van>): {0}")]
    NotAVan(String),
    /// An organisation or van name that cannot go into a certificate.
    #[error("{0:?} cannot be used as an organisation or van name: use letters, digits, '.', '_' and '-'")]
    BadName(String),
}

/// Who a device certificate says the van is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId {
    /// The organisation (tenant).
    pub org: String,
    /// The van.
    pub van: String,
}

impl DeviceId {
    /// Checks both names.
    pub fn new(org: &str, van: &str) -> Result<DeviceId, IdentityError> {
        check_name(org)?;
        check_name(van)?;
        Ok(DeviceId { org: org.to_owned(), van: van.to_owned() })
    }

    fn uri(&self) -> String {
        format!("urn:medvan:van:{}:{}", self.org, self.van)
    }
}

/// Checks that a name can go into a device certificate as an organisation or a van.
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(IdentityError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The fleet's certificate authority, held by the hub.
#[derive(Debug)]
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl FleetCa {
    /// A new CA valid between the given times.
    pub fn generate(
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<FleetCa, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(FleetCa { issuer: Issuer::new(params, key), cert })
    }

    /// The CA's certificate and private key (PKCS#8), DER, for the hub to keep. The key is
    /// the fleet's root of trust: store it encrypted and readable by the hub alone.
    pub fn to_der(&self) -> (Vec<u8>, Vec<u8>) {
        (self.cert.to_vec(), self.issuer.key().serialize_der())
    }

    /// A CA from what [`FleetCa::to_der`] returned.
    pub fn from_der(cert: &[u8], key: &[u8]) -> Result<FleetCa, IdentityError> {
        let cert = CertificateDer::from(cert.to_vec());
        let key = KeyPair::try_from(key)?;
        Ok(FleetCa { issuer: Issuer::from_ca_cert_der(&cert, key)?, cert })
    }

    /// The CA certificate, which vans pin.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the CA certificate, hex: what an enrolment token carries so a new van
    /// knows whom to trust.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// A certificate and key for the hub's sync endpoint, for the DNS name vans dial.
    pub fn issue_hub(
        &self,
        dns_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
        params.distinguished_name = dn(dns_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?.der().clone();
        Ok((cert, PrivatePkcs8KeyDer::from(key.serialize_der()).into()))
    }

    /// Signs a van's certificate request. The identity comes from the enrolment (the
    /// token), never from what the request asks for.
    pub fn sign_device_request(
        &self,
        csr_der: &[u8],
        device: &DeviceId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{}/{}", device.org, device.van));
        params.subject_alt_names = vec![SanType::URI(device.uri().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.der().clone())
    }
}

/// A van's new key and the certificate request to send with its enrolment token. The key
/// never leaves the van.
pub fn new_device_key() -> Result<(PrivateKeyDer<'static>, Vec<u8>), IdentityError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((PrivatePkcs8KeyDer::from(key.serialize_der()).into(), csr.der().to_vec()))
}

/// The subject's public key of a certificate (for P-256, the uncompressed point), to check
/// what the van signs with its device key.
pub fn public_key(cert: &CertificateDer<'_>) -> Result<Vec<u8>, IdentityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::NotAVan(format!("the certificate does not parse: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.to_vec())
}

/// The van a (verified) device certificate names.
pub fn device_of(cert: &CertificateDer<'_>) -> Result<DeviceId, IdentityError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| IdentityError::NotAVan(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::NotAVan(e.to_string()))?
        .ok_or_else(|| IdentityError::NotAVan("no subject alternative name".into()))?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix("urn:medvan:van:")
            && let Some((org, van)) = rest.split_once(':')
        {
            return DeviceId::new(org, van);
        }
    }
    Err(IdentityError::NotAVan("no urn:medvan:van: URI".into()))
}

/// When a certificate starts and stops being valid, in unix seconds.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), IdentityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| IdentityError::NotAVan(e.to_string()))?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// SHA-256 of a certificate, hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02x}")).collect()
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Medvan fleet");
    dn
}
