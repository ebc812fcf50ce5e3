//! Pure-Rust crypto backend for [`str0m`] 0.25.
//!
//! str0m takes all of its cryptography from a pluggable [`CryptoProvider`]. The only backend
//! published for Linux is `str0m-aws-lc-rs`, which builds AWS-LC from C. The matching
//! `str0m-rust-crypto` 0.7 is not on crates.io, and its older releases still pull in aws-lc-rs
//! through dimpl's `rcgen` feature. This tree already has ring (for rustls) and the RustCrypto
//! crates. We want one TLS provider and no second C crypto library, so this crate connects str0m
//! to the crates we already have:
//!
//! - SRTP: AES-128-CM (`aes` + `ctr`), AEAD AES-128/256-GCM (`aes-gcm`), and the AES block round
//!   that str0m's SRTP key derivation uses.
//! - STUN message integrity (HMAC-SHA1) and certificate fingerprints (SHA-1, SHA-256).
//! - DTLS: dimpl, the sans-IO DTLS 1.2/1.3 engine that str0m is built on, with its RustCrypto
//!   provider. The self-signed certificate comes from rcgen on ring.
//!
//! Call [`install`] once at startup, or pass [`provider`] to `RtcConfig::set_crypto_provider`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use aes::cipher::{Block, BlockCipherEncrypt, KeyInit, KeyIvInit, StreamCipher};
use aes::{Aes128, Aes256};
use aes_gcm::aead::{AeadInOut, Nonce, Tag};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use hmac::{Hmac, Mac};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use str0m::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};
use str0m::crypto::dtls::{DtlsVersion, ProtocolVersion};
use str0m::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher, Aes128CmSha1_80Cipher};
use str0m::crypto::{CryptoError, CryptoProvider, Sha1HmacProvider, Sha1Provider, Sha256Provider};
use str0m::crypto::{SrtpProvider, SupportedAeadAes128Gcm, SupportedAeadAes256Gcm, SupportedAes128CmSha1_80};

/// SRTP's "AES counter mode" (RFC 3711 §4.1.1) is a 128-bit big-endian counter over the whole IV.
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Both SRTP GCM profiles use a 16-byte tag (RFC 7714 §14.2).
const GCM_TAG_LEN: usize = AeadAes128Gcm::TAG_LEN;

/// The crypto provider for str0m, made from the RustCrypto crates, dimpl and rcgen.
pub fn provider() -> CryptoProvider {
    static BACKEND: Backend = Backend;
    CryptoProvider {
        srtp_provider: &BACKEND,
        sha1_hmac_provider: &BACKEND,
        sha1_provider: &BACKEND,
        sha256_provider: &BACKEND,
        dtls_provider: &BACKEND,
    }
}

/// Installs [`provider`] as str0m's process-wide default, which every `Rtc` built without its own
/// provider uses. Call it once at startup. Later calls are no-ops: str0m keeps the first provider
/// installed and does not panic.
pub fn install() {
    provider().install_process_default();
}

/// One stateless unit type serves every provider role, so that all of them can be `&'static`.
#[derive(Debug)]
struct Backend;

impl Sha1Provider for Backend {
    fn sha1(&self, data: &[u8]) -> [u8; 20] {
        Sha1::digest(data).into()
    }
}

impl Sha256Provider for Backend {
    fn sha256(&self, data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }
}

impl Sha1HmacProvider for Backend {
    fn sha1_hmac(&self, key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        for payload in payloads {
            mac.update(payload);
        }
        mac.finalize().into_bytes().into()
    }
}

// ---------------------------------------------------------------------------------------------
// SRTP
// ---------------------------------------------------------------------------------------------

impl SrtpProvider for Backend {
    fn aes_128_cm_sha1_80(&self) -> &'static dyn SupportedAes128CmSha1_80 {
        &Backend
    }

    fn aead_aes_128_gcm(&self) -> &'static dyn SupportedAeadAes128Gcm {
        &Backend
    }

    fn aead_aes_256_gcm(&self) -> &'static dyn SupportedAeadAes256Gcm {
        &Backend
    }

    fn srtp_aes_128_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        ecb_round::<Aes128>(key, input, output);
    }

    fn srtp_aes_256_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        ecb_round::<Aes256>(key, input, output);
    }
}

/// Encrypts the single block in `input` into the front of `output`. str0m's key derivation
/// (RFC 3711 §4.3) runs AES in counter mode itself and only asks for one raw block at a time.
/// str0m always passes a master key of the right length and exactly one block, so a mismatch is
/// a programming error, not bad input from the network.
fn ecb_round<C: KeyInit + BlockCipherEncrypt>(key: &[u8], input: &[u8], output: &mut [u8]) {
    let cipher = C::new_from_slice(key).expect("str0m passes a master key of the cipher's length");
    let mut block = Block::<C>::try_from(input).expect("str0m derives keys one AES block at a time");
    cipher.encrypt_block(&mut block);
    output[..block.len()].copy_from_slice(&block);
}

/// The first `len` bytes of `output`. A short buffer becomes an error here, so it cannot cause a
/// slice panic.
fn head(output: &mut [u8], len: usize) -> Result<&mut [u8], CryptoError> {
    let have = output.len();
    output.get_mut(..len).ok_or_else(|| CryptoError::Other(format!("output buffer holds {have} bytes, {len} needed")))
}

impl SupportedAes128CmSha1_80 for Backend {
    fn create_cipher(&self, key: [u8; 16], _encrypt: bool) -> Box<dyn Aes128CmSha1_80Cipher> {
        Box::new(AesCm { key })
    }
}

/// AES-128 in counter mode. str0m computes and checks the HMAC-SHA1-80 tag itself.
struct AesCm {
    key: [u8; 16],
}

impl fmt::Debug for AesCm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesCm").finish_non_exhaustive()
    }
}

impl Aes128CmSha1_80Cipher for AesCm {
    fn encrypt(&mut self, iv: &[u8; 16], input: &[u8], output: &mut [u8]) -> Result<(), CryptoError> {
        let out = head(output, input.len())?;
        // The IV changes with every packet, so each call needs a fresh keystream.
        <Aes128Ctr as KeyIvInit>::new(&self.key.into(), iv.into()).apply_keystream_b2b(input, out);
        Ok(())
    }

    fn decrypt(&mut self, iv: &[u8; 16], input: &[u8], output: &mut [u8]) -> Result<(), CryptoError> {
        self.encrypt(iv, input, output)
    }
}

impl SupportedAeadAes128Gcm for Backend {
    fn create_cipher(&self, key: [u8; 16], _encrypt: bool) -> Box<dyn AeadAes128GcmCipher> {
        Box::new(Gcm(<Aes128Gcm as KeyInit>::new(&key.into())))
    }
}

impl SupportedAeadAes256Gcm for Backend {
    fn create_cipher(&self, key: [u8; 32], _encrypt: bool) -> Box<dyn AeadAes256GcmCipher> {
        Box::new(Gcm(<Aes256Gcm as KeyInit>::new(&key.into())))
    }
}

/// An AES-GCM key, expanded once per SRTP session.
struct Gcm<A>(A);

impl<A> fmt::Debug for Gcm<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcm").finish_non_exhaustive()
    }
}

impl AeadAes128GcmCipher for Gcm<Aes128Gcm> {
    fn encrypt(&mut self, iv: &[u8; 12], aad: &[u8], input: &[u8], output: &mut [u8]) -> Result<(), CryptoError> {
        gcm_seal(&self.0, iv, aad, input, output)
    }

    fn decrypt(
        &mut self,
        iv: &[u8; 12],
        aads: &[&[u8]],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, CryptoError> {
        gcm_open(&self.0, iv, aads, input, output)
    }
}

impl AeadAes256GcmCipher for Gcm<Aes256Gcm> {
    fn encrypt(&mut self, iv: &[u8; 12], aad: &[u8], input: &[u8], output: &mut [u8]) -> Result<(), CryptoError> {
        gcm_seal(&self.0, iv, aad, input, output)
    }

    fn decrypt(
        &mut self,
        iv: &[u8; 12],
        aads: &[&[u8]],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, CryptoError> {
        gcm_open(&self.0, iv, aads, input, output)
    }
}

/// Writes `ciphertext || tag` into `output`. This is the SRTP packet layout (RFC 7714 §5).
fn gcm_seal<A: AeadInOut>(
    aead: &A,
    iv: &[u8; 12],
    aad: &[u8],
    input: &[u8],
    output: &mut [u8],
) -> Result<(), CryptoError> {
    // The AAD is at least the 12-byte RTP header (RFC 7714 §8.2). If it is shorter, str0m has
    // changed how it calls us.
    debug_assert!(aad.len() >= 12, "SRTP AEAD associated data must be at least 12 bytes");
    let nonce = Nonce::<A>::try_from(&iv[..]).map_err(|_| CryptoError::Other("AES-GCM nonce length".into()))?;
    let (body, tag_out) = head(output, input.len() + GCM_TAG_LEN)?.split_at_mut(input.len());
    body.copy_from_slice(input);
    let tag = aead
        .encrypt_inout_detached(&nonce, aad, body.into())
        .map_err(|e| CryptoError::Other(format!("AES-GCM encrypt failed: {e}")))?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// Opens `ciphertext || tag` into `output` and returns the plaintext length. str0m passes the
/// AAD in pieces (for SRTCP, the header and the index). Together they are authenticated as one
/// string.
fn gcm_open<A: AeadInOut>(
    aead: &A,
    iv: &[u8; 12],
    aads: &[&[u8]],
    input: &[u8],
    output: &mut [u8],
) -> Result<usize, CryptoError> {
    let nonce = Nonce::<A>::try_from(&iv[..]).map_err(|_| CryptoError::Other("AES-GCM nonce length".into()))?;
    let Some(ct_len) = input.len().checked_sub(GCM_TAG_LEN) else {
        return Err(CryptoError::Other("AES-GCM input shorter than its tag".into()));
    };
    let (ciphertext, tag) = input.split_at(ct_len);
    let tag = Tag::<A>::try_from(tag).map_err(|_| CryptoError::Other("AES-GCM tag length".into()))?;
    let joined;
    let aad = match aads {
        [one] => *one,
        _ => {
            joined = aads.concat();
            joined.as_slice()
        }
    };
    let out = head(output, ct_len)?;
    out.copy_from_slice(ciphertext);
    aead.decrypt_inout_detached(&nonce, aad, out.into(), &tag)
        .map_err(|e| CryptoError::Other(format!("AES-GCM decrypt failed: {e}")))?;
    Ok(ct_len)
}

// ---------------------------------------------------------------------------------------------
// DTLS
// ---------------------------------------------------------------------------------------------

impl DtlsProvider for Backend {
    /// Makes a new ECDSA P-256 key and self-signed certificate on every call. Generating one costs
    /// something, so callers should reuse it (e.g. via `RtcConfig::set_dtls_cert`). Peers check it
    /// only against the SDP fingerprint. rcgen derives the serial number from the public key, so
    /// it is unique per certificate, which Firefox requires.
    fn generate_certificate(&self) -> Option<DtlsCert> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).ok()?;
        let mut params = CertificateParams::new(Vec::<String>::new()).ok()?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "WebRTC");
        params.distinguished_name = name;
        let cert = params.self_signed(&key).ok()?;
        // rcgen writes the key as PKCS#8 DER, which dimpl's RustCrypto key loader accepts.
        Some(DtlsCert { certificate: cert.der().to_vec(), private_key: key.serialize_der() })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // ICE has already proven return routability, so a server cookie would only add a round
        // trip. Naming the provider explicitly keeps dimpl from falling back to whatever default
        // another crate installed.
        let mut builder = dimpl::Config::builder()
            .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
            .use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config =
            Arc::new(builder.build().map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {e}")))?);
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => return Err(CryptoError::Other(format!("Unsupported DTLS version: {other}"))),
        };
        Ok(Box::new(DimplInstance(dtls)))
    }
}

/// str0m's `DtlsInstance` copies dimpl's API, so every method forwards unchanged.
struct DimplInstance(dimpl::Dtls);

impl fmt::Debug for DimplInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DimplInstance").finish_non_exhaustive()
    }
}

impl DtlsInstance for DimplInstance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        h(s).try_into().expect("hex of the right length")
    }

    #[test]
    fn digests_and_stun_hmac() {
        let p = provider();
        assert_eq!(p.sha1_provider.sha1(b"abc").to_vec(), h("a9993e364706816aba3e25717850c26c9cd0d89d"));
        assert_eq!(
            p.sha256_provider.sha256(b"abc").to_vec(),
            h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        // RFC 2202 test case 2, with the message split in two the way STUN splits it.
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            p.sha1_hmac_provider.sha1_hmac(b"Jefe", &parts).to_vec(),
            h("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
    }

    #[test]
    fn aes_cm_is_aes_128_ctr() {
        // NIST SP 800-38A F.5.1. The second block carries the counter out of its lowest byte.
        let key = arr::<16>("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = arr::<16>("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let plain = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let cm = provider().srtp_provider.aes_128_cm_sha1_80();
        let mut sealed = [0u8; 40];
        cm.create_cipher(key, true).encrypt(&iv, &plain, &mut sealed).unwrap();
        assert_eq!(sealed[..32], h("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")[..]);
        assert_eq!(sealed[32..], [0u8; 8], "bytes past the input stay untouched");
        let mut opened = [0u8; 32];
        cm.create_cipher(key, false).decrypt(&iv, &sealed[..32], &mut opened).unwrap();
        assert_eq!(opened[..], plain[..]);
        assert!(cm.create_cipher(key, true).encrypt(&iv, &plain, &mut [0u8; 8]).is_err());
    }

    // McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 4 (AES-128) and 16
    // (AES-256): 60-byte plaintext, 20-byte AAD.
    const GCM_IV: &str = "cafebabefacedbaddecaf888";
    const GCM_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const GCM_PLAIN: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";

    fn check_gcm(
        mut seal: impl FnMut(&[u8; 12], &[u8], &[u8], &mut [u8]) -> Result<(), CryptoError>,
        mut open: impl FnMut(&[u8; 12], &[&[u8]], &[u8], &mut [u8]) -> Result<usize, CryptoError>,
        ciphertext_and_tag: &str,
    ) {
        let (iv, aad, plain) = (arr::<12>(GCM_IV), h(GCM_AAD), h(GCM_PLAIN));
        let mut sealed = vec![0u8; plain.len() + GCM_TAG_LEN];
        seal(&iv, &aad, &plain, &mut sealed).unwrap();
        assert_eq!(sealed, h(ciphertext_and_tag));
        let mut opened = vec![0u8; sealed.len()];
        let n = open(&iv, &[&aad[..12], &aad[12..]], &sealed, &mut opened).unwrap();
        assert_eq!(opened[..n], plain[..]);
        sealed[0] ^= 1;
        assert!(open(&iv, &[aad.as_slice()], &sealed, &mut opened).is_err(), "tampering is detected");
        assert!(open(&iv, &[aad.as_slice()], &sealed[..GCM_TAG_LEN - 1], &mut opened).is_err());
    }

    #[test]
    fn aead_aes_128_gcm() {
        let key = arr::<16>("feffe9928665731c6d6a8f9467308308");
        let gcm = provider().srtp_provider.aead_aes_128_gcm();
        let (mut enc, mut dec) = (gcm.create_cipher(key, true), gcm.create_cipher(key, false));
        check_gcm(
            |iv, aad, input, output| enc.encrypt(iv, aad, input, output),
            |iv, aads, input, output| dec.decrypt(iv, aads, input, output),
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091\
             5bc94fbc3221a5db94fae95ae7121a47",
        );
    }

    #[test]
    fn aead_aes_256_gcm() {
        let key = arr::<32>("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let gcm = provider().srtp_provider.aead_aes_256_gcm();
        let (mut enc, mut dec) = (gcm.create_cipher(key, true), gcm.create_cipher(key, false));
        check_gcm(
            |iv, aad, input, output| enc.encrypt(iv, aad, input, output),
            |iv, aads, input, output| dec.decrypt(iv, aads, input, output),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b",
        );
    }

    #[test]
    fn ecb_round_encrypts_one_block() {
        // FIPS-197 appendix C.1 (AES-128) and C.3 (AES-256). str0m passes a 32-byte output.
        let srtp = provider().srtp_provider;
        let input = arr::<16>("00112233445566778899aabbccddeeff");
        let mut out = [0u8; 32];
        srtp.srtp_aes_128_ecb_round(&h("000102030405060708090a0b0c0d0e0f"), &input, &mut out);
        assert_eq!(out[..16], h("69c4e0d86a7b0430d8cdb78070b4c55a")[..]);
        assert_eq!(out[16..], [0u8; 16]);
        let key256 = h("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        srtp.srtp_aes_256_ecb_round(&key256, &input, &mut out);
        assert_eq!(out[..16], h("8ea2b7ca516745bfeafc49904b496089")[..]);
    }

    #[test]
    fn new_dtls_accepts_generated_certificate() {
        let dtls = provider().dtls_provider;
        let cert = dtls.generate_certificate().expect("rcgen generates a certificate");
        assert_eq!(cert.certificate.first(), Some(&0x30), "DER SEQUENCE");
        for version in [DtlsVersion::Dtls12, DtlsVersion::Dtls13, DtlsVersion::Auto] {
            assert!(dtls.new_dtls(&cert, Instant::now(), version, Some(1200)).is_ok(), "{version}");
        }
    }

    #[derive(Default)]
    struct Seen {
        connected: bool,
        data: Vec<u8>,
    }

    /// Polls `from` until its next timeout and hands its records to `to`.
    fn pump(from: &mut dyn DtlsInstance, to: &mut dyn DtlsInstance, seen: &mut Seen) {
        let mut buf = [0u8; 2048];
        loop {
            match from.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => to.handle_packet(p).expect("peer accepts the record"),
                DtlsOutput::Connected => seen.connected = true,
                DtlsOutput::ApplicationData(d) => seen.data.extend_from_slice(d),
                DtlsOutput::Timeout(_) => return,
                _ => {}
            }
        }
    }

    fn handshake(version: DtlsVersion, expected: ProtocolVersion) {
        let dtls = provider().dtls_provider;
        let now = Instant::now();
        let endpoint = || {
            let cert = dtls.generate_certificate().expect("rcgen generates a certificate");
            dtls.new_dtls(&cert, now, version, None).expect("dimpl accepts the certificate")
        };
        let (mut client, mut server) = (endpoint(), endpoint());
        client.set_active(true);
        let (mut c, mut s) = (Seen::default(), Seen::default());
        for _ in 0..20 {
            client.handle_timeout(now).unwrap();
            server.handle_timeout(now).unwrap();
            pump(client.as_mut(), server.as_mut(), &mut c);
            pump(server.as_mut(), client.as_mut(), &mut s);
            if c.connected && s.connected {
                break;
            }
        }
        assert!(c.connected && s.connected, "{version} handshake did not complete");
        assert_eq!(client.protocol_version(), Some(expected));
        assert!(client.is_active() && !server.is_active());
        assert_eq!(client.send_application_data(b"ping").unwrap(), 4);
        pump(client.as_mut(), server.as_mut(), &mut c);
        pump(server.as_mut(), client.as_mut(), &mut s);
        assert_eq!(s.data, b"ping");
    }

    #[test]
    fn dtls_12_handshake_with_generated_certificates() {
        handshake(DtlsVersion::Dtls12, ProtocolVersion::DTLS1_2);
    }

    #[test]
    fn dtls_13_handshake_with_generated_certificates() {
        handshake(DtlsVersion::Dtls13, ProtocolVersion::DTLS1_3);
    }

    #[test]
    fn install_twice_is_harmless() {
        install();
        install();
        assert!(CryptoProvider::get_default().is_some());
    }
}
