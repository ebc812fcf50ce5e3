#!/usr/bin/env bash
# The test command: installs what the tests need, then checks formatting and lints and
# runs every test. Run from anywhere, as root on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  echo "==> $name: $((SECONDS - start)) s"
}

stage "install dependencies" scripts/setup-deps.sh
stage "python test clients" scripts/setup-pytools.sh
stage "javascript test parties" scripts/setup-jstools.sh
stage "format check" cargo fmt --all -- --check
stage "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# The browser story runs the optimised builds, as a van and a hub run them.
stage "release build" cargo build --release --locked -p edge-agent -p cloud-sync -p xray-sim
stage "tests" cargo test --workspace --locked
