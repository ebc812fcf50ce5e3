#!/usr/bin/env bash
# JavaScript tools the tests run as independent parties, installed from npm with their lock
# files (so a run is repeatable): node-oidc-provider, the OpenID provider the hub's SSO test
# logs in through. Node itself comes from scripts/setup-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in cloud-sync/tests/oidc-provider; do
  stamp="$dir/node_modules/.medvan-lock"
  if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
    continue
  fi
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$stamp"
  echo "setup-jstools: installed $dir"
done
