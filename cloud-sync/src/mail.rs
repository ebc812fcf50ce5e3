//! Mail from the hub (password reset links), through the deployment's relay: the `smtp`
//! crate's conversation over a connection this module opens, encrypted with STARTTLS or
//! TLS from the start.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use smtp::{Client, Credentials, Envelope, Message, Step, Tls};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::outbound::{self, OutboundError};

/// The `[mail]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// The relay, `host:port` (587 for STARTTLS, 465 for TLS from the start).
    pub relay: String,
    /// `starttls` (the default), `implicit`, or `none` (a relay on this machine only).
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// The From of the hub's mail: `Medvan <noreply@hospital.example>`.
    pub from: String,
    /// The user name at the relay, if it wants a login.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the relay password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the relay; the system's without.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name the hub greets the relay with (EHLO).
    #[serde(default = "default_helo")]
    pub helo_name: String,
}

/// How the connection to the relay is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain, then STARTTLS before anything else.
    Starttls,
    /// TLS from the first byte.
    Implicit,
    /// No encryption (a relay on this machine).
    None,
}

fn default_tls() -> TlsMode {
    TlsMode::Starttls
}

fn default_helo() -> String {
    "medvan-hub".into()
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The relay's conversation failed.
    #[error(transparent)]
    Smtp(#[from] smtp::SmtpError),
    /// The relay could not be reached, or TLS failed.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The connection broke.
    #[error("the connection to the mail relay broke: {0}")]
    Io(#[from] std::io::Error),
    /// The relay closed the connection before it took the mail.
    #[error("the mail relay closed the connection before it took the mail")]
    Closed,
    /// No answer in time.
    #[error("the mail relay did not answer in time")]
    Timeout,
}

/// Sends mail through the configured relay.
#[derive(Debug)]
pub struct Mailer {
    host: String,
    port: u16,
    tls_mode: TlsMode,
    from: String,
    from_address: String,
    credentials: Option<Credentials>,
    tls: Arc<rustls::ClientConfig>,
    helo: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Mailer {
    /// A mailer for `config`, checked: the relay address parses, the sender is an address,
    /// and nothing would go unencrypted to another machine.
    pub fn new(config: &MailConfig) -> anyhow::Result<Mailer> {
        let (host, port) = config
            .relay
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().ok()?)))
            .with_context(|| format!("[mail] relay {:?} must be host:port, like mail.example.org:587", config.relay))?;
        if config.tls == TlsMode::None {
            let local = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(local, "[mail] tls = \"none\" is only for a relay on this machine; use starttls");
            anyhow::ensure!(config.username.is_none(), "[mail] a login is only sent over TLS; use starttls");
        }
        let from_address = smtp::bare_address(&config.from)
            .with_context(|| format!("[mail] from {:?} must be an address, or Name <address>", config.from))?
            .to_owned();
        let credentials = match (&config.username, &config.password_file) {
            (Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: std::fs::read_to_string(p)
                    .with_context(|| format!("Failed to read the mail relay password {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("[mail] username and password_file go together"),
        };
        Ok(Mailer {
            host,
            port,
            tls_mode: config.tls,
            from: config.from.clone(),
            from_address,
            credentials,
            tls: outbound::tls_config(config.ca_file.as_deref()).context("[mail] the relay's CA")?,
            helo: config.helo_name.clone(),
        })
    }

    /// Sends one plain-text mail to `to`; done once the relay has taken it.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let now = time::OffsetDateTime::now_utc();
        let date = now
            .format(time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
            ))
            .map_err(|e| MailError::Io(std::io::Error::other(e)))?;
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let message_id = format!("<{}@{}>", hex::encode(id), self.helo);
        let data = Message { from: &self.from, to, subject, body, date: &date, message_id: &message_id }.to_bytes()?;
        let envelope = Envelope { from: self.from_address.clone(), to: vec![to.to_owned()], data };
        let tls = match self.tls_mode {
            TlsMode::Starttls => Tls::StartTls,
            TlsMode::Implicit => Tls::Implicit,
            TlsMode::None => Tls::None,
        };
        let mut client = Client::new(&self.helo, tls, self.credentials.clone(), envelope)?;
        tokio::time::timeout(TIMEOUT, self.converse_all(&mut client)).await.map_err(|_| MailError::Timeout)?
    }

    async fn converse_all(&self, client: &mut Client) -> Result<(), MailError> {
        if self.tls_mode == TlsMode::Implicit {
            let mut stream = outbound::tls_connect(&self.tls, &self.host, self.port, TIMEOUT).await?;
            return match converse(client, &mut stream, Vec::new()).await? {
                Ended::Done => Ok(()),
                Ended::StartTls => Err(MailError::Closed),
            };
        }
        let mut tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| OutboundError::Unreachable { host: self.host.clone(), why: e.to_string() })?;
        match converse(client, &mut tcp, Vec::new()).await? {
            Ended::Done => Ok(()),
            Ended::StartTls => {
                let mut stream = outbound::tls_upgrade(&self.tls, &self.host, tcp, TIMEOUT).await?;
                let first = client.tls_started();
                match converse(client, &mut stream, first).await? {
                    Ended::Done => Ok(()),
                    Ended::StartTls => Err(MailError::Closed),
                }
            }
        }
    }
}

enum Ended {
    Done,
    StartTls,
}

/// Runs the conversation on `stream` (after acting on `first`) until the mail is taken or
/// TLS must start.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client,
    stream: &mut S,
    first: Vec<Step>,
) -> Result<Ended, MailError> {
    let mut steps = first;
    let mut buf = vec![0u8; 4096];
    loop {
        for step in steps.drain(..) {
            match step {
                Step::Send(bytes) => stream.write_all(&bytes).await?,
                Step::StartTls => return Ok(Ended::StartTls),
                Step::Done => {
                    // The QUIT went out just before; the relay has the mail whatever it says.
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                    return Ok(Ended::Done);
                }
            }
        }
        stream.flush().await?;
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(MailError::Closed);
        }
        steps = client.receive(&buf[..n])?;
    }
}
