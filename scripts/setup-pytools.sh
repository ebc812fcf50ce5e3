#!/usr/bin/env bash
# Python tools the tests drive as independent clients (a venv under target/, made once):
# dicomweb-client, the DICOMweb client library the hub's DICOMweb test stores, searches
# and retrieves with; fhir.resources, whose FHIR models check the audit export; schemathesis,
# which fuzzes the hub's API from its OpenAPI document; aiosmtpd, the mail server the
# hub's password-reset mail goes to; requests, the browser stand-in of the SSO test. Versions are pinned so a test run is
# repeatable.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pytools
want="dicomweb-client==0.61.2 pydicom==3.0.2 numpy==2.4.6 fhir.resources==8.3.0 schemathesis==4.32.5 aiosmtpd==1.4.6 requests==2.32.5"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.installed" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/pip" install -q --disable-pip-version-check $want
echo "$want" > "$venv/.installed"
echo "setup-pytools: $want in $venv"
