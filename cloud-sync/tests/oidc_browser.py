"""A browser's part of a single sign-on, at the identity provider: follow the hub's
redirect to the provider, fill in its login form, follow its redirects until it sends the
browser back to the hub. Prints one JSON line: {"callback": URL} or {"refused": STATUS}.

    python oidc_browser.py AUTHORIZE_URL LOGIN PASSWORD CA_FILE CALLBACK_PREFIX
"""
import json
import re
import sys
from urllib.parse import urljoin

import requests

url, login, password, ca, prefix = sys.argv[1:6]
browser = requests.Session()
# Only the CA given is trusted, whatever the environment says (REQUESTS_CA_BUNDLE, proxies).
browser.trust_env = False
browser.verify = ca
for _ in range(20):
    if url.startswith(prefix):
        print(json.dumps({"callback": url}))
        sys.exit(0)
    r = browser.get(url, allow_redirects=False, timeout=10)
    if r.status_code == 200 and "<form" in r.text:
        action = re.search(r'<form[^>]*action="([^"]+)"', r.text).group(1)
        r = browser.post(urljoin(url, action), data={"login": login, "password": password},
                         allow_redirects=False, timeout=10)
    if r.status_code in (302, 303) and "location" in r.headers:
        url = urljoin(url, r.headers["location"])
        continue
    print(json.dumps({"refused": r.status_code, "body": r.text[:300]}))
    sys.exit(0)
sys.exit("too many redirects at the identity provider")
