#!/usr/bin/env python3
"""Log in to a Medvan hub as a person would, and print an access token.

    scripts/hub-login.py HUB_URL ORG USERNAME PASSWORD_FILE TOTP_SECRET_FILE
    scripts/hub-login.py --code TOTP_SECRET_FILE     (the authenticator's code now, for the web app)

The password is read from PASSWORD_FILE. Accounts that need a second factor (doctors,
admins) enrol an authenticator at their first login: this script plays the authenticator
app, keeping the TOTP secret in TOTP_SECRET_FILE (mode 600) and computing codes from it
(RFC 6238: HMAC-SHA1, 30 s, 6 digits). Standard library only.
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request


def totp(secret_b32, step=None):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    step = int(time.time() // 30) if step is None else step
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--code":
        print(totp(open(sys.argv[2]).read().strip()))
        return
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    hub, org, user, password_file, totp_file = sys.argv[1:]
    password = open(password_file).read().strip()
    login = {"org": org, "username": user, "password": password}
    for _ in range(3):
        if os.path.exists(totp_file):
            login["totp"] = totp(open(totp_file).read().strip())
        status, body = post(f"{hub}/api/v1/auth/login", login)
        if status == 200 and body.get("mfa_enrolment_required"):
            token = body["enrolment_token"]
            status, setup = post(f"{hub}/api/v1/auth/mfa/enrol", {"enrolment_token": token})
            if status != 200:
                sys.exit(f"hub-login: enrolment failed: {status} {setup}")
            fd = os.open(totp_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, setup["secret"].encode())
            os.close(fd)
            status, body = post(f"{hub}/api/v1/auth/mfa/confirm",
                                {"enrolment_token": token, "code": totp(setup["secret"])})
        if status == 200:
            print(body["access_token"])
            return
        if status == 401 and "already used" in body.get("error", ""):
            # This step's code was spent (a login moments ago): the next step's will do.
            time.sleep(30 - time.time() % 30 + 0.5)
            continue
        sys.exit(f"hub-login: {status} {body.get('error', body)}")
    sys.exit("hub-login: no code was accepted")


if __name__ == "__main__":
    main()
