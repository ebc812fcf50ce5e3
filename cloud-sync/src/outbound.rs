//! Connections the hub opens to other services over TLS: HTTPS to identity providers
//! (single sign-on, https only) and TLS to the mail relay (STARTTLS or from the start; a
//! relay on the same machine may be configured without).
//!
//! Trust comes from a CA file given in the config, or the system's bundle: a hospital's
//! identity provider often has a certificate from the hospital's own CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where Debian keeps the system's trusted CAs.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The largest answer read from a provider: discovery documents and key sets are small.
const MAX_BODY: usize = 1 << 20;

/// Why a request to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL cannot be used.
    #[error("the URL {0:?} is not a usable https URL")]
    Url(String),
    /// No connection, no TLS, or the answer was cut or too large.
    #[error("{host} could not be reached: {why}")]
    Unreachable {
        /// Whom we tried.
        host: String,
        /// What happened.
        why: String,
    },
    /// No answer in time.
    #[error("{0} did not answer in time")]
    Timeout(String),
}

/// A TLS client configuration trusting `ca_file` (PEM), or the system's CAs without one.
pub fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CAS));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("Failed to read the CA certificates in {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("Failed to read a certificate in {}", path.display()))?;
        roots.add(cert).with_context(|| format!("A certificate in {} is not a usable CA", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no CA certificate", path.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("Failed to set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `host:port`, checking the certificate names `host`.
pub async fn tls_connect(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, OutboundError> {
    let unreachable = |why: String| OutboundError::Unreachable { host: host.to_owned(), why };
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|_| OutboundError::Url(host.to_owned()))?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((name.to_str().as_ref(), port)))
        .await
        .map_err(|_| OutboundError::Timeout(host.to_owned()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tls_upgrade(tls, host, tcp, timeout).await
}

/// Starts TLS on an open connection (STARTTLS), checking the certificate names `host`.
pub async fn tls_upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    stream: S,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<S>, OutboundError> {
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|_| OutboundError::Url(host.to_owned()))?;
    tokio::time::timeout(timeout, tokio_rustls::TlsConnector::from(tls.clone()).connect(name, stream))
        .await
        .map_err(|_| OutboundError::Timeout(host.to_owned()))?
        .map_err(|e| OutboundError::Unreachable { host: host.to_owned(), why: format!("TLS failed: {e}") })
}

/// An HTTPS client for small JSON exchanges: one request per connection, answers of at most
/// 1 MiB, a deadline on the whole exchange.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl HttpsClient {
    /// A client trusting what `tls` trusts, giving up on an exchange after `timeout`.
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> HttpsClient {
        HttpsClient { tls, timeout }
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str) -> Result<Answer, OutboundError> {
        self.send(url, "GET", None, None).await
    }

    /// POSTs a form to `url`, with an `Authorization` header if given.
    pub async fn post_form(
        &self,
        url: &str,
        body: String,
        authorization: Option<&str>,
    ) -> Result<Answer, OutboundError> {
        self.send(url, "POST", Some(body), authorization).await
    }

    async fn send(
        &self,
        url: &str,
        method: &str,
        form: Option<String>,
        authorization: Option<&str>,
    ) -> Result<Answer, OutboundError> {
        let uri: hyper::Uri = url.parse().map_err(|_| OutboundError::Url(url.to_owned()))?;
        let (Some("https"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(OutboundError::Url(url.to_owned()));
        };
        let host = host.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let exchange = async {
            let unreachable = |why: String| OutboundError::Unreachable { host: host.clone(), why };
            let stream = tls_connect(&self.tls, &host, port, self.timeout).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            // The connection task ends with the exchange (one request per connection).
            tokio::spawn(conn);
            let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, authority)
                .header(hyper::header::ACCEPT, "application/json")
                .header(hyper::header::USER_AGENT, "medvan-hub");
            if let Some(a) = authorization {
                req = req.header(hyper::header::AUTHORIZATION, a);
            }
            if form.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let req = req
                .body(Full::new(Bytes::from(form.unwrap_or_default())))
                .map_err(|_| OutboundError::Url(url.to_owned()))?;
            let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("the answer was cut or larger than 1 MiB: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| OutboundError::Timeout(host.clone()))?
    }
}
