#!/usr/bin/env bash
# Installs what building and testing Medvan needs on Debian (run as root). Idempotent:
# packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential   # cc for SQLCipher's C amalgamation
  pkg-config
  libssl-dev        # SQLCipher's crypto provider (libcrypto)
  curl              # the run script's smoke check
  ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-deps: missing Debian packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  echo "setup-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-deps: cargo not found. Medvan needs Rust 1.90 or newer (rustup); Debian's packaged Rust is too old." >&2
  exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 90 ]; then
  echo "setup-deps: $(rustc --version) is too old; Medvan needs Rust 1.90 or newer" >&2
  exit 1
fi
