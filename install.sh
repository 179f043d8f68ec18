#!/usr/bin/env bash
# Install edge-agent on this device: one command, as root.
#
#   ./install.sh --hub-url URL --token TOKEN --ca-sha256 sha256:HEX [--device-id ID]
#                [--data-dir DIR] [--binary PATH] [--no-start] [--force-config]
#   ./install.sh --uninstall [--purge] [--purge-containers] [--device-id ID]
#
# Run it from the release bundle (install.sh, edge-agent-<version>-linux-<arch>,
# SHA256SUMS, edge-agent.service, edge-agent.sysusers.conf) or from a source checkout with
# a build in dist/. It checks the binary's SHA-256, installs it as /usr/local/bin/edge-agent,
# creates the edge-agent system user (in the docker group: the engine's socket is the one
# privilege the agent needs), writes /etc/edge-agent/agent.toml (kept if it exists, unless
# --force-config), installs and enables systemd/edge-agent.service and starts it; the
# agent enrolls with the hub using the token on its first start. Without --hub-url the
# agent runs standalone (targets applied locally with `edge-agent apply`).
# Where systemd is not running (a container, a chroot, an image being built), the unit is
# installed and enabled by symlink but not started: it starts on the next boot.
#
# --uninstall stops and removes the unit and the binary, and leaves the device's
# containers running, its configuration and its data. --purge also removes
# /etc/edge-agent, /var/lib/edge-agent, /var/log/edge-agent and the user;
# --purge-containers removes this device's containers, networks and volumes (those
# labelled io.edgefleet.device=<device id>) through the docker CLI.
# --root DIR installs under DIR instead of / (for image builds and tests).
set -euo pipefail

NAME=edge-agent
root=""
hub_url=""
token=""
ca_sha256=""
device_id=""
data_dir=/var/lib/edge-agent
binary=""
start=1
force_config=0
uninstall=0
purge=0
purge_containers=0

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

while (($#)); do
    case $1 in
    --hub-url) hub_url=$2; shift ;;
    --token) token=$2; shift ;;
    --ca-sha256) ca_sha256=$2; shift ;;
    --device-id) device_id=$2; shift ;;
    --data-dir) data_dir=$2; shift ;;
    --binary) binary=$2; shift ;;
    --root) root=${2%/}; shift ;;
    --no-start) start=0 ;;
    --force-config) force_config=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --purge-containers) purge_containers=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[[ $(id -u) == 0 ]] || die "run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$root/usr/local/bin/$NAME
CONF_DIR=$root/etc/$NAME
CONF=$CONF_DIR/agent.toml
UNIT_DIR=$root/etc/systemd/system
UNIT=$UNIT_DIR/$NAME.service
WANTS=$UNIT_DIR/multi-user.target.wants/$NAME.service
SYSUSERS=$root/usr/lib/sysusers.d/$NAME.conf
STATE_DIR=$root$data_dir
LOG_DIR=$root/var/log/$NAME

# systemd manages units only when it is PID 1 of this (non-chrooted, un-rooted) system.
systemd_running() { [[ -z $root && -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

# Users and groups in $root's own /etc (useradd --root does that for us).
useradd_root() { if [[ -n $root ]]; then "$@" --root "$root"; else "$@"; fi; }

find_file() {
    local f
    for f in "$@"; do
        [[ -f $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

arch_label() {
    case $(uname -m) in
    x86_64 | amd64) echo x86_64 ;;
    aarch64 | arm64) echo aarch64 ;;
    armv7l | armv8l | armhf) echo armv7 ;;
    *) die "unsupported architecture $(uname -m)" ;;
    esac
}

toml_string() {
    local v=${1//\\/\\\\}
    printf '"%s"' "${v//\"/\\\"}"
}

configured_device_id() {
    [[ -n $device_id ]] && { echo "$device_id"; return; }
    [[ -f $CONF ]] && sed -n 's/^device_id *= *"\(.*\)"$/\1/p' "$CONF" | head -1
}

purge_device_containers() {
    local id
    id=$(configured_device_id)
    [[ -n $id ]] || die "--purge-containers needs the device id: pass --device-id ID"
    command -v docker >/dev/null || die "--purge-containers needs the docker CLI"
    local filter=label=io.edgefleet.device=$id
    say "removing containers, networks and volumes of device $id"
    docker ps -aq --filter "$filter" | xargs -r docker rm -f >/dev/null
    docker network ls -q --filter "$filter" | xargs -r docker network rm >/dev/null
    docker volume ls -q --filter "$filter" | xargs -r docker volume rm >/dev/null
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
    else
        say "systemd is not running: skipped systemctl stop/disable"
    fi
    rm -f "$WANTS" "$UNIT" "$BIN" "$SYSUSERS"
    systemd_running && systemctl daemon-reload
    ((purge_containers)) && purge_device_containers
    if ((purge)); then
        rm -rf "$CONF_DIR" "$STATE_DIR" "$LOG_DIR"
        if getent_root passwd "$NAME" >/dev/null; then
            useradd_root userdel "$NAME" >/dev/null 2>&1 || say "could not remove user $NAME"
        fi
        say "removed edge-agent, its configuration, data and user"
    else
        say "removed edge-agent; kept $CONF_DIR and $STATE_DIR (--purge removes them)"
    fi
    ((purge_containers)) || say "the device's containers were left as they are"
}

getent_root() {
    local db=$1 key=$2
    grep -E "^$key:" "$root/etc/$db"
}

install_binary() {
    local label src sums want
    label=$(arch_label)
    if [[ -z $binary ]]; then
        binary=$(find_file "$HERE"/edge-agent-*-linux-"$label" "$HERE"/dist/edge-agent-*-linux-"$label") ||
            die "no edge-agent-*-linux-$label next to install.sh (use --binary PATH)"
    fi
    [[ -f $binary ]] || die "no such binary: $binary"
    sums=$(find_file "$(dirname "$binary")/SHA256SUMS") || sums=""
    if [[ -n $sums ]]; then
        want=$(awk -v n="$(basename "$binary")" '$2 == n {print $1}' "$sums")
        [[ -n $want ]] || die "$(basename "$binary") is not listed in $sums"
        [[ $(sha256sum "$binary" | cut -d' ' -f1) == "$want" ]] ||
            die "SHA-256 of $binary does not match $sums"
        say "checksum ok: $(basename "$binary")"
    else
        say "warning: no SHA256SUMS next to $binary; checksum not verified"
    fi
    mkdir -p "$(dirname "$BIN")"
    # Replace atomically: a running agent keeps its old file until it restarts.
    install -m 0755 -o root -g root "$binary" "$BIN.new"
    mv -f "$BIN.new" "$BIN"
    say "installed $BIN ($("$BIN" --version 2>/dev/null || echo 'cannot run here'))"
}

create_user() {
    getent_root group docker >/dev/null ||
        useradd_root groupadd --system docker
    if ! getent_root passwd "$NAME" >/dev/null; then
        useradd_root useradd --system --user-group --home-dir "$data_dir" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgefleet device agent" "$NAME"
        say "created system user $NAME"
    fi
    useradd_root usermod -a -G docker "$NAME"
    local conf
    if conf=$(find_file "$HERE/edge-agent.sysusers.conf" "$HERE/systemd/edge-agent.sysusers.conf"); then
        install -D -m 0644 "$conf" "$SYSUSERS"
    fi
}

write_config() {
    install -d -m 0750 -o root -g "$(gid_of "$NAME")" "$CONF_DIR"
    if [[ -f $CONF && $force_config == 0 ]]; then
        say "kept existing $CONF (--force-config rewrites it)"
        return
    fi
    local tmp=$CONF.new
    {
        echo "# edge-agent configuration, written by install.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
        echo "# Every key and its default: docs/operations.md. Env overrides: EDGE_AGENT_<KEY>."
        [[ -n $device_id ]] && echo "device_id = $(toml_string "$device_id")"
        echo "data_dir = $(toml_string "$data_dir")"
        if [[ -n $hub_url ]]; then
            echo
            echo "[hub]"
            echo "url = $(toml_string "$hub_url")"
            [[ -n $token ]] && echo "enrollment_token = $(toml_string "$token")"
            [[ -n $ca_sha256 ]] && echo "ca_sha256 = $(toml_string "$ca_sha256")"
        fi
    } >"$tmp"
    # The enrollment token is a secret: readable by root and the agent only.
    chown "root:$(gid_of "$NAME")" "$tmp"
    chmod 0640 "$tmp"
    mv -f "$tmp" "$CONF"
    say "wrote $CONF"
}

gid_of() { getent_root group "$1" | cut -d: -f3; }
uid_of() { getent_root passwd "$1" | cut -d: -f3; }

make_dirs() {
    install -d -m 0700 -o "$(uid_of "$NAME")" -g "$(gid_of "$NAME")" "$STATE_DIR"
    install -d -m 0750 -o "$(uid_of "$NAME")" -g "$(gid_of "$NAME")" "$LOG_DIR"
}

install_unit() {
    local src
    src=$(find_file "$HERE/edge-agent.service" "$HERE/systemd/edge-agent.service") ||
        die "edge-agent.service not found next to install.sh"
    install -D -m 0644 -o root -g root "$src" "$UNIT"
    if [[ $data_dir != /var/lib/edge-agent ]]; then
        sed -i "s|^Environment=EDGE_AGENT_DATA_DIR=.*|Environment=EDGE_AGENT_DATA_DIR=$data_dir\nReadWritePaths=$data_dir|" "$UNIT"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl enable "$NAME.service" >/dev/null 2>&1
        if ((start)); then
            # Type=notify: this returns once the agent has sent READY=1 (or failed).
            systemctl restart "$NAME.service" || die "edge-agent failed to start: journalctl -u $NAME"
            say "edge-agent is running: systemctl status $NAME; edge-agent status"
        fi
    else
        mkdir -p "$(dirname "$WANTS")"
        ln -sfn "/etc/systemd/system/$NAME.service" "$WANTS"
        say "systemd is not running: skipped systemctl; the unit is enabled and starts on" \
            "the next boot (or run: $BIN --config /etc/$NAME/agent.toml run)"
    fi
}

if ((uninstall)); then
    do_uninstall
    exit 0
fi
[[ -z $hub_url || $hub_url == https://* ]] || die "--hub-url must be an https:// URL"
if [[ -n $ca_sha256 ]]; then
    # As `edge-hub init` prints it (sha256:<hex>), or bare hex, colons allowed.
    fp=${ca_sha256#sha256:}
    fp=${fp//:/}
    [[ $fp =~ ^[0-9a-fA-F]{64}$ ]] || die "--ca-sha256 must be 64 hex digits (sha256:<hex> as edge-hub init prints)"
    ca_sha256=sha256:${fp,,}
fi
[[ -z $hub_url || -n $token ]] || die "--hub-url needs --token (the enrollment token)"
# The agent trusts the hub only through this pin: without it, it would refuse to start.
[[ -z $hub_url || -n $ca_sha256 ]] || die "--hub-url needs --ca-sha256 (the hub CA fingerprint)"
install_binary
create_user
write_config
make_dirs
install_unit
say "done"
