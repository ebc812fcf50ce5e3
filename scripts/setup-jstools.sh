#!/usr/bin/env bash
# JavaScript from npm, installed with the lock files (so a run is repeatable): the doctor app
# (cloud-sync/web: the dwv viewer library and esbuild, which builds the app into dist/, as
# the hub serves it) and the independent parties the tests run: node-oidc-provider, the
# OpenID provider the hub's SSO test logs in through, and playwright-core and axe-core, which
# drive Debian's Chromium through story 1 and check each page (tests/ui). Node comes from
# scripts/setup-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in cloud-sync/web cloud-sync/tests/oidc-provider tests/ui; do
  stamp="$dir/node_modules/.medvan-lock"
  if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
    continue
  fi
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$stamp"
  echo "setup-jstools: installed $dir"
done
# The doctor app is built every time: its sources may have changed since the last build.
npm run --prefix cloud-sync/web --silent build
