"""A mail server for the hub's password-reset test: aiosmtpd on loopback that insists on
STARTTLS and a login before it takes mail, parses each message with Python's email
package, and writes what it got as OUTDIR/<n>.json. Prints "ready" once it listens.

    python smtp_sink.py PORT CERT KEY USER PASSWORD OUTDIR
"""
import email
import email.policy
import json
import pathlib
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, user, password, outdir = sys.argv[1:7]
out = pathlib.Path(outdir)
out.mkdir(parents=True, exist_ok=True)
lock = threading.Lock()


class Sink:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "date": str(msg["Date"]),
            "message_id": str(msg["Message-ID"]),
            "defects": [type(d).__name__ for d in msg.defects],
            "body": msg.get_body(preferencelist=("plain",)).get_content(),
        }
        with lock:
            n = len(list(out.glob("*.json")))
            tmp = out / f"{n}.tmp"
            tmp.write_text(json.dumps(record))
            tmp.rename(out / f"{n}.json")
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok)


tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
controller = Controller(
    Sink(), hostname="127.0.0.1", port=int(port), tls_context=tls, require_starttls=True,
    authenticator=authenticator, auth_required=True, auth_require_tls=True, decode_data=False,
)
controller.start()
print("ready", flush=True)
threading.Event().wait()
