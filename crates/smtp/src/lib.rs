//! Mail submission, sans-IO: the client side of an SMTP conversation (RFC 5321) with
//! STARTTLS (RFC 3207) and AUTH PLAIN (RFC 4954), and the text of a plain message
//! (RFC 5322). The caller owns the connection and the clock.
//!
//! The call contract of [`Client`]:
//! 1. connect (with TLS already for [`Tls::Implicit`]);
//! 2. feed every byte the server sends to [`Client::receive`], which answers with
//!    [`Step`]s to act on in order: write [`Step::Send`] bytes, on [`Step::StartTls`] start
//!    TLS on the connection and call [`Client::tls_started`] (whose steps come next), stop
//!    at [`Step::Done`];
//! 3. an error ends the conversation: close the connection.

mod client;
mod message;

pub use client::{Client, Credentials, Envelope, Reply, Step, Tls};
pub use message::{Message, address_ok, bare_address};

/// What went wrong in a conversation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmtpError {
    /// The server said no (or something unexpected) at a step.
    #[error("the mail server refused {stage}: {code} {text}")]
    Refused {
        /// What we were doing.
        stage: &'static str,
        /// Its reply code.
        code: u16,
        /// Its words.
        text: String,
    },
    /// TLS is required and the server does not offer STARTTLS.
    #[error("the mail server does not offer STARTTLS, and mail is only sent encrypted")]
    NoStartTls,
    /// Credentials are configured and the server offers no AUTH PLAIN (over TLS).
    #[error("the mail server does not offer AUTH PLAIN")]
    NoAuth,
    /// The server sent something that is not an SMTP reply.
    #[error("the mail server sent something that is not an SMTP reply: {0:?}")]
    Malformed(String),
    /// The message or an address cannot be sent as given.
    #[error("the message cannot be sent: {0}")]
    Invalid(String),
}
