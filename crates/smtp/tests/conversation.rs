//! Conversations with a scripted server, reply by reply.

use smtp::{Client, Credentials, Envelope, Message, SmtpError, Step, Tls};

fn envelope() -> Envelope {
    let data = Message {
        from: "Medvan <noreply@medvan.test>",
        to: "k.osei@stmary.test",
        subject: "Réinitialiser",
        body: "Hello,\n.a line starting with a dot\nsecond line\n",
        date: "Sat, 28 Nov 2026 09:15:00 +0000",
        message_id: "<1@medvan.test>",
    }
    .to_bytes()
    .unwrap();
    Envelope { from: "noreply@medvan.test".into(), to: vec!["k.osei@stmary.test".into()], data }
}

fn creds() -> Option<Credentials> {
    Some(Credentials { username: "hub".into(), password: "pw".into() })
}

fn sent(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Send(b) => String::from_utf8_lossy(b).into_owned(),
            Step::StartTls => "<TLS>".into(),
            Step::Done => "<DONE>".into(),
        })
        .collect()
}

#[test]
fn starttls_then_login_then_the_mail_is_accepted() {
    let mut c = Client::new("hub.medvan.test", Tls::StartTls, creds(), envelope()).unwrap();
    assert_eq!(sent(&c.receive(b"220 mail.test ESMTP\r\n").unwrap()), "EHLO hub.medvan.test\r\n");
    // Before TLS the server offers AUTH too; nothing but STARTTLS is said in the clear.
    let s = c.receive(b"250-mail.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n").unwrap();
    assert_eq!(sent(&s), "STARTTLS\r\n");
    // A reply may arrive in pieces.
    assert!(c.receive(b"220 go ").unwrap().is_empty());
    assert_eq!(sent(&c.receive(b"ahead\r\n").unwrap()), "<TLS>");
    assert_eq!(sent(&c.tls_started()), "EHLO hub.medvan.test\r\n");
    let s = c.receive(b"250-mail.test\r\n250-SIZE 1000000\r\n250 AUTH PLAIN\r\n").unwrap();
    assert_eq!(sent(&s), "AUTH PLAIN AGh1YgBwdw==\r\n", "base64 of \\0hub\\0pw");
    assert_eq!(sent(&c.receive(b"235 ok\r\n").unwrap()), "MAIL FROM:<noreply@medvan.test>\r\n");
    assert_eq!(sent(&c.receive(b"250 ok\r\n").unwrap()), "RCPT TO:<k.osei@stmary.test>\r\n");
    assert_eq!(sent(&c.receive(b"250 ok\r\n").unwrap()), "DATA\r\n");
    let body = sent(&c.receive(b"354 go\r\n").unwrap());
    assert!(body.contains("\r\n..a line starting with a dot\r\n"), "dot-stuffed: {body}");
    assert!(body.contains("Subject: =?utf-8?B?"), "{body}");
    assert!(body.ends_with("\r\n.\r\n"));
    assert!(!c.is_done());
    assert_eq!(sent(&c.receive(b"250 queued as 1\r\n").unwrap()), "QUIT\r\n<DONE>");
    assert!(c.is_done());
}

#[test]
fn a_server_that_cannot_keep_the_mail_private_or_says_no_gets_nothing() {
    // No STARTTLS on offer: stop before anything is sent.
    let mut c = Client::new("hub", Tls::StartTls, creds(), envelope()).unwrap();
    c.receive(b"220 hi\r\n").unwrap();
    assert_eq!(c.receive(b"250-mail\r\n250 AUTH PLAIN\r\n"), Err(SmtpError::NoStartTls));

    // Bytes sent in the clear behind the STARTTLS go-ahead (command injection) are refused.
    let mut c = Client::new("hub", Tls::StartTls, None, envelope()).unwrap();
    c.receive(b"220 hi\r\n").unwrap();
    c.receive(b"250-mail\r\n250 STARTTLS\r\n").unwrap();
    assert!(matches!(c.receive(b"220 go\r\n250 injected\r\n"), Err(SmtpError::Malformed(_))));

    // Credentials but no AUTH PLAIN after TLS.
    let mut c = Client::new("hub", Tls::Implicit, creds(), envelope()).unwrap();
    c.receive(b"220 hi\r\n").unwrap();
    assert_eq!(c.receive(b"250-mail\r\n250 AUTH LOGIN\r\n"), Err(SmtpError::NoAuth));

    // A refused recipient is reported with the server's words.
    let mut c = Client::new("hub", Tls::Implicit, None, envelope()).unwrap();
    c.receive(b"220 hi\r\n250 mail\r\n250 ok\r\n").unwrap();
    assert_eq!(
        c.receive(b"550 5.1.1 no such user\r\n"),
        Err(SmtpError::Refused { stage: "a recipient", code: 550, text: "5.1.1 no such user".into() })
    );
    assert!(!c.is_done());

    // Garbage is not a reply.
    let mut c = Client::new("hub", Tls::Implicit, None, envelope()).unwrap();
    assert!(matches!(c.receive(b"HTTP/1.1 400 Bad Request\r\n"), Err(SmtpError::Malformed(_))));
    let mut c = Client::new("hub", Tls::Implicit, None, envelope()).unwrap();
    assert!(matches!(c.receive(b"250-a\r\n354 b\r\n"), Err(SmtpError::Malformed(_))), "codes differ within a reply");

    // Nothing is sent unencrypted with a password, nor to an address that could smuggle a
    // command.
    assert!(matches!(Client::new("hub", Tls::None, creds(), envelope()), Err(SmtpError::Invalid(_))));
    let smuggle = Envelope { to: vec!["a@b>\r\nRCPT TO:<c@d".into()], ..envelope() };
    assert!(matches!(Client::new("hub", Tls::None, None, smuggle), Err(SmtpError::Invalid(_))));
}

#[test]
fn message_text_is_quoted_printable_with_short_lines_and_no_header_injection() {
    let long = "x".repeat(200) + " é=";
    let m = Message {
        from: "noreply@medvan.test",
        to: "a@b.test",
        subject: "hi",
        body: &long,
        date: "Sat, 28 Nov 2026 09:15:00 +0000",
        message_id: "<1@m>",
    };
    let text = String::from_utf8(m.to_bytes().unwrap()).unwrap();
    assert!(text.lines().all(|l| l.len() <= 76), "{text}");
    assert!(text.contains("=C3=A9=3D"), "é and = are encoded: {text}");
    let evil = Message { to: "a@b.test\r\nBcc: everyone@x.test", ..m };
    assert!(matches!(evil.to_bytes(), Err(SmtpError::Invalid(_))));
}
