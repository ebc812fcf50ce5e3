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
cargo build --release --locked -p edge-agent -p cloud-sync -p xray-sim
echo "==> building the doctor app"
scripts/setup-jstools.sh

state=${MEDVAN_STATE:-$PWD/.medvan}
mkdir -p "$state"
chmod 700 "$state"
hub_port=${MEDVAN_HUB_PORT:-8720}
agent_port=${MEDVAN_AGENT_PORT:-8710}
[ -f "$state/store.key" ] || target/release/edge-agent gen-key "$state/store.key" >/dev/null
# The crew PIN key. In a van it is a systemd credential sealed to the TPM, never on the
# data disk; here it is a file beside the state.
[ -f "$state/pin.key" ] || target/release/edge-agent gen-key "$state/pin.key" >/dev/null

sync_port=${MEDVAN_SYNC_PORT:-8721}
cat > "$state/hub.toml" <<TOML
[hub]
listen = "127.0.0.1:$hub_port"
sync_listen = "127.0.0.1:$sync_port"
server_name = "hub.medvan.local"
data_dir = "$state/hub"
key_file = "$state/hub.key"
# The links DICOMweb hands out (retrieve and bulk data URLs).
public_url = "http://127.0.0.1:$hub_port"
# The doctor app, served at /.
web_dir = "$PWD/cloud-sync/web/dist"

TOML
cat > "$state/agent.toml" <<TOML
[agent]
van_id = "van-12"
org_id = "org-north"
data_dir = "$state/van-12"
key_file = "$state/store.key"
listen = "127.0.0.1:$agent_port"

[hub]
address = "127.0.0.1:$sync_port"
server_name = "hub.medvan.local"
identity_dir = "$state/van-12-identity"

# The simulated X-ray unit: the generator on a pseudo-terminal (xray-sim, started below
# and linked at this path), and a simulated flat panel.
[xray]
serial_port = "$state/ttyXRAY0"
detector = "simulated"

[crew]
pin_key_file = "$state/pin.key"
TOML

hub() { target/release/medvan-hub --config "$state/hub.toml" "$@"; }
hub init >/dev/null
hub org list | grep '^org-north' >/dev/null || hub org create org-north --name "North EMS" >/dev/null
# A doctor of org-north. Doctors need an authenticator app: scripts/hub-login.py plays it,
# keeping the TOTP secret in $state/doctor.totp.
if [ ! -f "$state/doctor.password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 > "$state/doctor.password")
  hub user add org-north dr.osei --role doctor --password-stdin < "$state/doctor.password" >/dev/null
fi
hub_login() {
  python3 scripts/hub-login.py "http://127.0.0.1:$hub_port" org-north dr.osei "$state/doctor.password" "$state/doctor.totp"
}
# A paramedic of org-north, crew of the van: logs in there with a PIN, offline if need be.
if [ ! -f "$state/paramedic.password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 > "$state/paramedic.password")
  hub user add org-north ana.medic --role paramedic --password-stdin < "$state/paramedic.password" >/dev/null
fi
[ -f "$state/van-12/store.id" ] || target/release/edge-agent init-store --config "$state/agent.toml"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
wait_for() {
  for _ in $(seq 1 100); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "run: $1 did not come up" >&2
  return 1
}

target/release/xray-sim --no-console --link "$state/ttyXRAY0" > "$state/xray-sim.log" &
pids+=($!)
# Started directly, not through the function, so that $! is the hub itself.
target/release/medvan-hub --config "$state/hub.toml" run &
pids+=($!)
wait_for "http://127.0.0.1:$hub_port/health"
# The paramedic sets a PIN at the hub (six to eight digits, not a run); it reaches the van
# with the crew roster when the van next connects.
pin_file="$state/paramedic.pin"
if [ ! -f "$pin_file" ]; then
  (umask 077; printf '%06d' $(( (RANDOM * 32768 + RANDOM) % 900000 + 100000 )) > "$pin_file")
  medic_token=$(python3 scripts/hub-login.py "http://127.0.0.1:$hub_port" org-north ana.medic "$state/paramedic.password" "$state/paramedic.totp")
  curl -fsS -X PUT -H "Authorization: Bearer $medic_token" -H 'Content-Type: application/json' \
    -d "{\"pin\":\"$(cat "$pin_file")\"}" "http://127.0.0.1:$hub_port/api/v1/auth/pin" >/dev/null
fi
if [ ! -f "$state/van-12-identity/device.der" ]; then
  token=$(hub van token org-north van-12 --valid-hours 1)
  target/release/edge-agent enrol --config "$state/agent.toml" --token "$token"
fi
target/release/edge-agent run --config "$state/agent.toml" &
pids+=($!)

wait_for "http://127.0.0.1:$agent_port/health"

crew_login() {
  curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"username\":\"ana.medic\",\"pin\":\"$(cat "$pin_file")\"}" \
    "http://127.0.0.1:$agent_port/api/v1/crew/login" | sed -E 's/.*"token":"([^"]+)".*/\1/'
}
# The roster arrives with the van's first sync. Each try before that counts as a wrong PIN
# (five are free), so try a few times, slowly.
crew_token=""
for _ in 1 2 3 4; do
  sleep 1.5
  crew_token=$(crew_login 2>/dev/null) && [ -n "$crew_token" ] && break
done

cat <<TXT

Medvan is running: a hub and van-12 of org-north, enrolled and syncing over QUIC.
  the van's touchscreen:  http://127.0.0.1:$agent_port/   (ana.medic, PIN in $state/paramedic.pin)
  the doctors' web app:   http://127.0.0.1:$hub_port/   (org-north, dr.osei, password in
                          $state/doctor.password; the authenticator's code:
                          python3 scripts/hub-login.py --code $state/doctor.totp)
  hub:  http://127.0.0.1:$hub_port/health     (API description: /openapi.json)
        vans sync on udp 127.0.0.1:$sync_port
  van:  http://127.0.0.1:$agent_port/health     (API description: /openapi.json)
        sync status: http://127.0.0.1:$agent_port/api/v1/sync

The van drives a simulated X-ray unit (xray-sim on $state/ttyXRAY0): see /api/v1/xray.
Try the van's case API as the paramedic ana.medic (PIN in $state/paramedic.pin, checked on
the van against the roster the hub sent; the session ends after 10 minutes unused):
  crew=\$(curl -s -X POST -H 'Content-Type: application/json' -d "{\\"username\\":\\"ana.medic\\",\\"pin\\":\\"\$(cat $pin_file)\\"}" http://127.0.0.1:$agent_port/api/v1/crew/login | sed -E 's/.*"token":"([^"]+)".*/\\1/')
  curl -s -X POST -H "Authorization: Bearer \$crew" http://127.0.0.1:$agent_port/api/v1/cases
  curl -s -H "Authorization: Bearer \$crew" http://127.0.0.1:$agent_port/api/v1/cases
and the doctor's view of the same cases at the hub (dr.osei logs in with a password and a
code from the authenticator that scripts/hub-login.py plays; the token lasts 5 minutes):
  token=\$(python3 scripts/hub-login.py http://127.0.0.1:$hub_port org-north dr.osei $state/doctor.password $state/doctor.totp)
  curl -s -H "Authorization: Bearer \$token" http://127.0.0.1:$hub_port/api/v1/cases
and the X-rays over DICOMweb (QIDO-RS, WADO-RS, STOW-RS), for any DICOMweb viewer:
  curl -s -H "Authorization: Bearer \$token" http://127.0.0.1:$hub_port/dicomweb/studies
Hub metrics for Prometheus: http://127.0.0.1:$hub_port/metrics
State (keys, databases) is in $state. Ctrl-C stops both.
TXT

if $smoke; then
  # Checks read a whole response through grep (not grep -q, which stops at the first
  # match and leaves curl writing into a closed pipe: exit 23 under pipefail).
  [ -n "$crew_token" ] || { echo "smoke: the crew roster did not reach the van" >&2; exit 1; }
  crew="Authorization: Bearer $crew_token"
  echo "smoke: the paramedic's PIN, set at the hub, logs in on the van"
  api="http://127.0.0.1:$agent_port/api/v1"
  id=$(curl -fsS -X POST -H "$crew" "$api/cases" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -fsS -X POST -H "$crew" -H 'Content-Type: application/json' \
    -d '{"edits":[{"op":"add_vitals","heart_rate":92,"spo2":97}]}' "$api/cases/$id/edits" >/dev/null
  curl -fsS -H "$crew" "$api/cases/$id" | grep '"heart_rate":92' >/dev/null
  curl -fsS -H "$crew" "$api/audit/verify" | grep '"intact":true' >/dev/null
  echo "smoke: case $id created, edited, read back, audit chain intact"
  # An X-ray of the left hand: set up, arm, hold the confirm until the exposure is recorded.
  curl -fsS -X PUT -H "$crew" -H 'Content-Type: application/json' \
    -d "{\"case_id\":\"$id\",\"body_part\":\"HAND\",\"view\":\"PA\",\"laterality\":\"L\",\"kv\":55,\"mas\":2.5,\"ms\":100}" \
    "$api/xray/session" >/dev/null
  curl -fsS -X POST -H "$crew" "$api/xray/arm" >/dev/null
  for _ in $(seq 1 50); do
    curl -fsS -H "$crew" "$api/xray" | grep '"armed":true' >/dev/null && break
    sleep 0.1
  done
  token=$(curl -fsS -X POST -H "$crew" "$api/xray/confirm" | sed -E 's/.*"token":"([0-9a-f]+)".*/\1/')
  for _ in $(seq 1 50); do
    curl -fsS -X POST -H "$crew" "$api/xray/confirm/$token/hold" >/dev/null
    curl -fsS -H "$crew" "$api/xray" | grep '"outcome":"exposed"' >/dev/null && break
    sleep 0.1
  done
  curl -fsS -X POST -H "$crew" "$api/xray/confirm/$token/release" >/dev/null
  curl -fsS -H "$crew" "$api/cases/$id" | grep '"media_type":"application/dicom"' >/dev/null
  echo "smoke: an X-ray exposure was recorded with its dose, preview and DICOM object"
  # The case reaches the hub over QUIC without anyone pressing sync...
  hubapi="http://127.0.0.1:$hub_port/api/v1"
  auth="Authorization: Bearer $(hub_login)"
  for _ in $(seq 1 100); do
    curl -fsS -H "$auth" "$hubapi/cases/$id" 2>/dev/null | grep '"heart_rate":92' >/dev/null && break
    sleep 0.1
  done
  curl -fsS -H "$auth" "$hubapi/cases/$id" | grep '"heart_rate":92' >/dev/null
  echo "smoke: the case reached the hub"
  # ...with its X-ray, which the hub files for DICOMweb: a standard client finds the study.
  for _ in $(seq 1 100); do
    curl -fsS -H "$auth" "http://127.0.0.1:$hub_port/dicomweb/studies?ModalitiesInStudy=DX" | grep '"DX"' >/dev/null && break
    sleep 0.1
  done
  curl -fsS -H "$auth" "http://127.0.0.1:$hub_port/dicomweb/studies?ModalitiesInStudy=DX" | grep '"DX"' >/dev/null
  echo "smoke: the X-ray is searchable at the hub over DICOMweb (QIDO-RS)"
  # ...and the doctor's note comes back to the van.
  curl -fsS -X POST -H "$auth" -H 'Content-Type: application/json' \
    -d '{"edits":[{"op":"add_note","text":"splint and x-ray on arrival"}]}' "$hubapi/cases/$id/edits" >/dev/null
  for _ in $(seq 1 100); do
    curl -fsS -H "$crew" "$api/cases/$id" | grep 'splint and x-ray' >/dev/null && break
    sleep 0.1
  done
  curl -fsS -H "$crew" "$api/cases/$id" | grep 'splint and x-ray' >/dev/null
  echo "smoke: the doctor's note reached the van"
  # The front door: no token, no data; metrics counted the doctor's requests.
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$hubapi/cases")" = 401 ]
  curl -fsS "http://127.0.0.1:$hub_port/metrics" | grep 'medvan_http_requests_total{route="/api/v1/cases/{id}",method="GET",status="200"}' >/dev/null
  echo "smoke: the hub's front door refuses callers without a token and counts requests"
  # The van's audit log came along, under heads the van signed: the hub holds a copy.
  for _ in $(seq 1 100); do
    van_log=$(hub audit export --van org-north/van-12)
    [ -n "$van_log" ] && break
    sleep 0.1
  done
  grep -q '"action":"case.create"' <<< "$van_log"
  echo "smoke: the van's audit log reached the hub, checked against its signed tree heads"
  hub verify-audit
  exit 0
fi
wait
