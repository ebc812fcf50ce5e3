//! The text of a plain message (RFC 5322, with MIME for UTF-8: RFC 2045, RFC 2047).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::SmtpError;

/// A plain-text message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The From header: an address, or `Name <address>`.
    pub from: &'a str,
    /// The recipient's address.
    pub to: &'a str,
    /// The subject (any text; non-ASCII is encoded).
    pub subject: &'a str,
    /// The body (any text; lines end with `\n`).
    pub body: &'a str,
    /// The date, as RFC 5322 writes it (`Sat, 28 Nov 2026 09:15:00 +0000`).
    pub date: &'a str,
    /// A unique id, `<...@host>`.
    pub message_id: &'a str,
}

impl Message<'_> {
    /// The message text, lines ending in CRLF. The body is quoted-printable, so no line is
    /// too long and any text survives any relay.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SmtpError> {
        for (name, v) in [("From", self.from), ("To", self.to), ("Date", self.date), ("Message-ID", self.message_id)] {
            if !v.is_ascii() || v.chars().any(|c| c.is_ascii_control()) || v.is_empty() {
                return Err(SmtpError::Invalid(format!("the {name} header {v:?} is not one line of ASCII")));
            }
        }
        if !address_ok(self.to) || bare_address(self.from).is_none() {
            return Err(SmtpError::Invalid("the sender or recipient is not a mail address".into()));
        }
        let mut out = String::new();
        out.push_str(&format!("From: {}\r\nTo: {}\r\n", self.from, self.to));
        out.push_str(&format!("Subject: {}\r\n", encode_header(self.subject)));
        out.push_str(&format!("Date: {}\r\nMessage-ID: {}\r\n", self.date, self.message_id));
        out.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
        out.push_str("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        out.push_str(&quoted_printable(self.body));
        Ok(out.into_bytes())
    }
}

/// The bare address of a From value (`Name <a@b>` or `a@b`), if it is one.
pub fn bare_address(from: &str) -> Option<&str> {
    let a = match (from.rfind('<'), from.ends_with('>')) {
        (Some(i), true) => &from[i + 1..from.len() - 1],
        _ => from.trim(),
    };
    address_ok(a).then_some(a)
}

/// Whether `a` is a plain mail address (`local@domain`, no spaces, quotes or brackets):
/// what is safe to put in a command line and a header.
pub fn address_ok(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else { return false };
    let fine = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"@".contains(&b));
    a.len() <= 254 && fine(local) && fine(domain) && !domain.starts_with('.') && !domain.ends_with('.')
}

/// A header value: as it is if it is printable ASCII, else an RFC 2047 encoded word.
fn encode_header(v: &str) -> String {
    let v: String = v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if v.is_ascii() { v } else { format!("=?utf-8?B?{}?=", STANDARD.encode(v.as_bytes())) }
}

/// Quoted-printable (RFC 2045 §6.7), CRLF line ends, soft breaks before 76 characters.
fn quoted_printable(body: &str) -> String {
    let mut out = String::new();
    for line in body.trim_end_matches('\n').split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let bytes = line.as_bytes();
        let mut width = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let literal = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece = if literal { (b as char).to_string() } else { format!("={b:02X}") };
            if width + piece.len() > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            width += piece.len();
            out.push_str(&piece);
        }
        out.push_str("\r\n");
    }
    out
}
