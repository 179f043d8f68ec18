#!/usr/bin/env bash
# The main job on one machine: a hub and an agent (embedded SQLite), the agent enrolled
# with a token over mutual TLS, and a sample release deployed to it through the hub.
#
#   scripts/demo.sh          set up what is missing, start hub + agent, deploy, show the fleet
#   scripts/demo.sh stop     stop the hub and the agent (containers are left running)
#   scripts/demo.sh clean    stop, remove the demo's containers and state
#
# State lives in var/demo/ under the repository. Both processes keep running in the
# background after the script ends; their logs are var/demo/hub.log and var/demo/agent.log.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEMO=$REPO/var/demo
PY="${PYTHON:-python3}"
HUB_PORT=${EDGEFLEET_DEMO_PORT:-8443}
HUB=https://127.0.0.1:$HUB_PORT

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

stop_all() {
    for name in agent hub; do
        local pidfile=$DEMO/$name.pid
        if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || kill -TERM "$(cat "$pidfile")"
            for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
            echo "stopped $name"
        fi
        rm -f "$pidfile"
    done
}

case "${1:-run}" in
stop) stop_all; exit 0 ;;
clean)
    stop_all
    if [[ -f $DEMO/agent/identity.json ]]; then
        dev=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["device_id"])' "$DEMO/agent/identity.json")
        ids=$(docker ps -aq --filter "label=io.edgefleet.device=$dev")
        [[ -z $ids ]] || docker rm -f $ids >/dev/null
        nets=$(docker network ls -q --filter "label=io.edgefleet.device=$dev")
        [[ -z $nets ]] || docker network rm $nets >/dev/null
    fi
    rm -rf "$DEMO"
    echo "demo state removed"
    exit 0 ;;
run) ;;
*) die "unknown command $1 (run, stop, clean)" ;;
esac

say "installing edgefleet and its dependencies (if missing)"
if ! "$PY" -c 'import edge_agent.agent, hub.app, hub.edgectl, aiodocker, aiosqlite, aiohttp, uvloop, cryptography, pydantic, yaml' 2>/dev/null; then
    "$PY" -m pip install -q -e '.[hub]'
fi
say "bringing up the Docker engine and the local registry"
bash scripts/testenv.sh

stop_all
mkdir -p "$DEMO"
chmod 700 "$DEMO"

say "starting the hub on $HUB"
cat >"$DEMO/hub.toml" <<TOML
[server]
host = "127.0.0.1"
port = $HUB_PORT
data_dir = "$DEMO/hub"
TOML
setsid "$PY" -m hub.cli serve --config "$DEMO/hub.toml" >"$DEMO/hub.out" 2>"$DEMO/hub.log" &
echo $! >"$DEMO/hub.pid"
for _ in $(seq 100); do grep -q '^listening on' "$DEMO/hub.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^listening on' "$DEMO/hub.out" || die "hub did not start; see $DEMO/hub.log"

export EDGECTL_HUB=$HUB EDGECTL_TOKEN_FILE=$DEMO/hub/admin.token EDGECTL_CA=$DEMO/hub/ca.pem
ctl() { "$PY" -c "from hub.edgectl import main; main()" "$@"; }

if [[ ! -f $DEMO/agent/identity.json ]]; then
    say "creating a one-time enrollment token"
    TOKEN=$(ctl --json token create --uses 1 --expires 1h --tag site=demo |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
else
    TOKEN=already-enrolled
fi

say "starting the agent (it enrolls with mutual TLS, then syncs outbound only)"
cat >"$DEMO/agent.toml" <<TOML
data_dir = "$DEMO/agent"

[api]
socket = "$DEMO/agent.sock"

[hub]
url = "$HUB"
enrollment_token = "$TOKEN"
ca_file = "$DEMO/hub/ca.pem"
sync_interval_s = 5
TOML
setsid "$PY" -m edge_agent --config "$DEMO/agent.toml" run >"$DEMO/agent.log" 2>&1 &
echo $! >"$DEMO/agent.pid"
for _ in $(seq 150); do [[ -f $DEMO/agent/identity.json && -S $DEMO/agent.sock ]] && break; sleep 0.2; done
[[ -f $DEMO/agent/identity.json ]] || die "agent did not enroll; see $DEMO/agent.log"
DEVICE=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["device_id"])' "$DEMO/agent/identity.json")
echo "device $DEVICE enrolled"

say "deploying examples/sample-release.json to $DEVICE through the hub"
ctl target set "$DEVICE" examples/sample-release.json --deadline 120

say "waiting for the device to run the release and prove it good (in_sync)"
for _ in $(seq 180); do
    if ctl --json device show "$DEVICE" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["drift"] == "in_sync" and d.get("rollout_state") == "good" else 1)'; then
        break
    fi
    sleep 1
done

say "the fleet, as the hub sees it"
ctl devices
ctl device show "$DEVICE"
say "the device, as a technician sees it on site"
"$PY" -m edge_agent --socket "$DEMO/agent.sock" status
say "the sample web service answers on http://127.0.0.1:18080/"
busybox wget -q -O- http://127.0.0.1:18080/ || true
echo
echo "hub and agent keep running: logs in $DEMO/{hub,agent}.log; stop with: scripts/demo.sh stop"
