#!/usr/bin/env bash
# Installs what building and testing Medvan needs on Debian (run as root). Idempotent:
# packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential   # cc for SQLCipher's C amalgamation
  pkg-config
  libssl-dev        # SQLCipher's crypto provider (libcrypto)
  curl              # the run script's smoke check
  iproute2          # network namespaces for the link emulator's TCP shaping
  ca-certificates
  cmake             # builds CharLS (JPEG-LS) for DICOM pixel data (imaging)
  dcmtk             # dcmdump, dcm2pnm, dcmcjpls: independent readers of our DICOM files
  dicom3tools       # dciodvfy: the DICOM object validator the imaging tests run
  libusb-1.0-0-dev  # the detector's USB shell (rusb over the system libusb)
  umockdev          # a virtual USB detector for the USB shell's tests
  python3-venv      # a venv for the Python clients the tests use (scripts/setup-pytools.sh)
  chromium          # the real browser the apps' end-to-end test drives headless (tests/ui)
  fonts-dejavu-core # the apps' font, so pages render (and measure) the same everywhere
  # GStreamer 1.22 for media/: capture, encoding, webrtcbin (the van's side of a call)
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-nice gstreamer1.0-tools
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node runs the JavaScript parties of the tests (scripts/setup-jstools.sh): Debian's nodejs
# and npm unless a Node 18 or newer is installed already (from elsewhere, say).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
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

node_major=$(node --version | sed -E 's/^v([0-9]+).*/\1/')
if [ "${node_major:-0}" -lt 18 ]; then
  echo "setup-deps: node $(node --version) is too old; the tests need Node 18 or newer" >&2
  exit 1
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

# The hub's storage tests run against PostgreSQL as well as SQLite. Machines of this kind
# run a server on 127.0.0.1:5432; a machine without one gets Debian's, with the database
# and password the tests use (MEDVAN_TEST_POSTGRES overrides the connection string).
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if [ -z "${MEDVAN_TEST_POSTGRES:-}" ] && ! pg_up; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-deps: no PostgreSQL on 127.0.0.1:5432 and not root to install one; set MEDVAN_TEST_POSTGRES" >&2
    exit 1
  fi
  echo "setup-deps: installing PostgreSQL for the hub's storage tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
  su postgres -c "psql -qtc \"SELECT 1 FROM pg_database WHERE datname = 'test'\" | grep -q 1 || createdb test"
fi
