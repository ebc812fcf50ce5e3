//! The client's side of the conversation, one reply at a time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::SmtpError;
use crate::message::address_ok;

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain connection, upgraded with STARTTLS before anything else is said; a server
    /// that does not offer it gets no mail.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No encryption: only for a relay on the same machine. No credentials are sent.
    None,
}

/// A login at the relay.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// One mail: who sends, who gets it, and the message text ([`crate::Message`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's address (bare: `noreply@example.org`).
    pub from: String,
    /// The recipients' addresses.
    pub to: Vec<String>,
    /// The message, lines ending in CRLF.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message may carry a secret (a reset link): its size only.
        f.debug_struct("Envelope")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// One reply of the server: its code and its lines' text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code.
    pub lines: Vec<String>,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes to the connection.
    Send(Vec<u8>),
    /// Start TLS on the connection now, then call [`Client::tls_started`].
    StartTls,
    /// The server accepted the mail; the conversation is over (the QUIT before it may be
    /// sent, and the connection closed).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    StartTls,
    AwaitTls,
    Auth,
    MailFrom,
    RcptTo(usize),
    Data,
    Body,
    Done,
    Failed,
}

/// The longest reply line taken (RFC 5321 §4.5.3.1.5 allows 512; servers write longer).
const MAX_LINE: usize = 4096;
/// The most lines in one reply.
const MAX_LINES: usize = 100;

/// An SMTP client sending one mail.
#[derive(Debug)]
pub struct Client {
    state: State,
    tls: Tls,
    encrypted: bool,
    helo: String,
    credentials: Option<Credentials>,
    envelope: Envelope,
    buf: Vec<u8>,
    lines: Vec<String>,
    code: Option<u16>,
    capabilities: Vec<String>,
}

impl Client {
    /// A client that will greet the server as `helo` and send `envelope`.
    pub fn new(
        helo: &str,
        tls: Tls,
        credentials: Option<Credentials>,
        envelope: Envelope,
    ) -> Result<Client, SmtpError> {
        for a in std::iter::once(&envelope.from).chain(&envelope.to) {
            if !address_ok(a) {
                return Err(SmtpError::Invalid(format!("{a:?} is not a mail address")));
            }
        }
        if envelope.to.is_empty() {
            return Err(SmtpError::Invalid("there is no recipient".into()));
        }
        if helo.is_empty() || !helo.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)) {
            return Err(SmtpError::Invalid(format!("{helo:?} is not a host name to greet with")));
        }
        if credentials.is_some() && tls == Tls::None {
            return Err(SmtpError::Invalid("credentials are only sent over an encrypted connection".into()));
        }
        Ok(Client {
            state: State::Greeting,
            tls,
            encrypted: tls == Tls::Implicit,
            helo: helo.to_owned(),
            credentials,
            envelope,
            buf: Vec::new(),
            lines: Vec::new(),
            code: None,
            capabilities: Vec::new(),
        })
    }

    /// Takes bytes the server sent; answers what to do, in order.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Vec<Step>, SmtpError> {
        self.buf.extend_from_slice(bytes);
        let mut steps = Vec::new();
        while let Some(reply) = self.next_reply()? {
            if self.state == State::StartTls && reply.code == 220 && !self.buf.is_empty() {
                // Bytes after the go-ahead were sent in the clear and would be read as if
                // they came over TLS (the STARTTLS injection attack): refuse.
                self.state = State::Failed;
                return Err(SmtpError::Malformed("the server sent more after agreeing to STARTTLS".into()));
            }
            match self.handle(reply) {
                Ok(more) => steps.extend(more),
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
        Ok(steps)
    }

    /// TLS is up: greet again (what the server offers may differ now).
    pub fn tls_started(&mut self) -> Vec<Step> {
        debug_assert_eq!(self.state, State::AwaitTls);
        self.encrypted = true;
        self.capabilities.clear();
        self.state = State::Ehlo;
        vec![self.ehlo()]
    }

    /// Whether the server accepted the mail.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn next_reply(&mut self) -> Result<Option<Reply>, SmtpError> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Err(SmtpError::Malformed("a reply line is too long".into()));
                }
                return Ok(None);
            };
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
            let bad = || SmtpError::Malformed(line.chars().take(80).collect());
            let digits = line.get(..3).filter(|d| d.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
            let code: u16 = digits.parse().map_err(|_| bad())?;
            if self.code.is_some_and(|c| c != code) || !(200..600).contains(&code) {
                return Err(bad());
            }
            let (last, text) = match line.as_bytes().get(3) {
                None => (true, ""),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => return Err(bad()),
            };
            self.lines.push(text.to_owned());
            if self.lines.len() > MAX_LINES {
                return Err(SmtpError::Malformed("a reply has too many lines".into()));
            }
            if last {
                self.code = None;
                return Ok(Some(Reply { code, lines: std::mem::take(&mut self.lines) }));
            }
            self.code = Some(code);
        }
    }

    fn ehlo(&self) -> Step {
        Step::Send(format!("EHLO {}\r\n", self.helo).into_bytes())
    }

    fn refused(stage: &'static str, r: &Reply) -> SmtpError {
        SmtpError::Refused { stage, code: r.code, text: r.lines.join(" ") }
    }

    fn handle(&mut self, r: Reply) -> Result<Vec<Step>, SmtpError> {
        match self.state {
            State::Greeting if r.code == 220 => {
                self.state = State::Ehlo;
                Ok(vec![self.ehlo()])
            }
            State::Greeting => Err(Self::refused("the connection", &r)),
            State::Ehlo if r.code == 250 => {
                self.capabilities = r.lines.iter().skip(1).map(|l| l.to_ascii_uppercase()).collect();
                if !self.encrypted && self.tls == Tls::StartTls {
                    if !self.offers("STARTTLS") {
                        return Err(SmtpError::NoStartTls);
                    }
                    self.state = State::StartTls;
                    return Ok(vec![Step::Send(b"STARTTLS\r\n".to_vec())]);
                }
                match &self.credentials {
                    Some(c) => {
                        let plain = self.capabilities.iter().any(|l| {
                            l.split_whitespace().next() == Some("AUTH") && l.split_whitespace().any(|m| m == "PLAIN")
                        });
                        if !plain {
                            return Err(SmtpError::NoAuth);
                        }
                        let token = STANDARD.encode(format!("\0{}\0{}", c.username, c.password));
                        self.state = State::Auth;
                        Ok(vec![Step::Send(format!("AUTH PLAIN {token}\r\n").into_bytes())])
                    }
                    None => Ok(vec![self.mail_from()]),
                }
            }
            State::Ehlo => Err(Self::refused("the greeting (EHLO)", &r)),
            State::StartTls if r.code == 220 => {
                self.state = State::AwaitTls;
                Ok(vec![Step::StartTls])
            }
            State::StartTls => Err(Self::refused("STARTTLS", &r)),
            State::Auth if r.code == 235 => Ok(vec![self.mail_from()]),
            State::Auth => Err(Self::refused("the login (AUTH PLAIN)", &r)),
            State::MailFrom if r.code == 250 => {
                self.state = State::RcptTo(0);
                Ok(vec![Step::Send(format!("RCPT TO:<{}>\r\n", self.envelope.to[0]).into_bytes())])
            }
            State::MailFrom => Err(Self::refused("the sender", &r)),
            State::RcptTo(i) if r.code == 250 || r.code == 251 => {
                if let Some(next) = self.envelope.to.get(i + 1) {
                    self.state = State::RcptTo(i + 1);
                    return Ok(vec![Step::Send(format!("RCPT TO:<{next}>\r\n").into_bytes())]);
                }
                self.state = State::Data;
                Ok(vec![Step::Send(b"DATA\r\n".to_vec())])
            }
            State::RcptTo(_) => Err(Self::refused("a recipient", &r)),
            State::Data if r.code == 354 => {
                self.state = State::Body;
                Ok(vec![Step::Send(dot_stuffed(&self.envelope.data))])
            }
            State::Data => Err(Self::refused("the message (DATA)", &r)),
            State::Body if r.code == 250 => {
                self.state = State::Done;
                Ok(vec![Step::Send(b"QUIT\r\n".to_vec()), Step::Done])
            }
            State::Body => Err(Self::refused("the message", &r)),
            State::AwaitTls | State::Done | State::Failed => {
                Err(SmtpError::Malformed(format!("{} {}", r.code, r.lines.join(" "))))
            }
        }
    }

    fn offers(&self, what: &str) -> bool {
        self.capabilities.iter().any(|l| l.split_whitespace().next() == Some(what))
    }

    fn mail_from(&mut self) -> Step {
        self.state = State::MailFrom;
        Step::Send(format!("MAIL FROM:<{}>\r\n", self.envelope.from).into_bytes())
    }
}

/// The message as DATA carries it: CRLF line ends, a line starting with a dot gets a second
/// one (RFC 5321 §4.5.2), and the terminating dot line.
fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let text = data.strip_suffix(b"\r\n").or_else(|| data.strip_suffix(b"\n")).unwrap_or(data);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
