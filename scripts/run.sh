#!/usr/bin/env bash
# The main job: builds Medvan and runs a hub and one simulated van on embedded defaults
# (SQLite, local files), printing where to point curl. Ctrl-C stops both.
#
#   scripts/run.sh            run until Ctrl-C
#   scripts/run.sh --smoke    start both, create and edit a case through the van's API, stop
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
[ "${1:-}" = "--smoke" ] && smoke=true

scripts/setup-deps.sh
echo "==> building (release)"
cargo build --release --locked -p edge-agent -p cloud-sync

state=${MEDVAN_STATE:-$PWD/.medvan}
mkdir -p "$state"
chmod 700 "$state"
hub_port=${MEDVAN_HUB_PORT:-8720}
agent_port=${MEDVAN_AGENT_PORT:-8710}
[ -f "$state/store.key" ] || target/release/edge-agent gen-key "$state/store.key" >/dev/null

cat > "$state/hub.toml" <<TOML
[hub]
listen = "127.0.0.1:$hub_port"
data_dir = "$state/hub"
TOML
cat > "$state/agent.toml" <<TOML
[agent]
van_id = "van-12"
org_id = "org-north"
data_dir = "$state/van-12"
key_file = "$state/store.key"
listen = "127.0.0.1:$agent_port"

[hub]
address = "127.0.0.1:4433"
identity_dir = "$state/van-12-identity"
TOML

[ -f "$state/van-12/store.id" ] || target/release/edge-agent init-store --config "$state/agent.toml"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

target/release/medvan-hub run --config "$state/hub.toml" &
pids+=($!)
target/release/edge-agent run --config "$state/agent.toml" &
pids+=($!)

wait_for() {
  for _ in $(seq 1 100); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "run: $1 did not come up" >&2
  return 1
}
wait_for "http://127.0.0.1:$hub_port/health"
wait_for "http://127.0.0.1:$agent_port/health"

cat <<TXT

Medvan is running.
  hub:  http://127.0.0.1:$hub_port/health     (API description: /openapi.json)
  van:  http://127.0.0.1:$agent_port/health     (API description: /openapi.json)

Try the van's case API (the acting user goes in X-Medvan-User until crew login lands):
  curl -s -X POST -H 'X-Medvan-User: ana' http://127.0.0.1:$agent_port/api/v1/cases
  curl -s -H 'X-Medvan-User: ana' http://127.0.0.1:$agent_port/api/v1/cases
State (keys, databases) is in $state. Ctrl-C stops both.
TXT

if $smoke; then
  api="http://127.0.0.1:$agent_port/api/v1"
  id=$(curl -fsS -X POST -H 'X-Medvan-User: ana' "$api/cases" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -fsS -X POST -H 'X-Medvan-User: ana' -H 'Content-Type: application/json' \
    -d '{"edits":[{"op":"add_vitals","heart_rate":92,"spo2":97}]}' "$api/cases/$id/edits" >/dev/null
  curl -fsS -H 'X-Medvan-User: ana' "$api/cases/$id" | grep -q '"heart_rate":92'
  curl -fsS -H 'X-Medvan-User: ana' "$api/audit/verify" | grep -q '"intact":true'
  echo "smoke: case $id created, edited, read back, audit chain intact"
  exit 0
fi
wait
