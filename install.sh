#!/usr/bin/env bash
# Install edge-agent on this device: one command, as root.
#
#   ./install.sh --hub-url URL --token TOKEN --ca-sha256 sha256:HEX [--device-id ID]
#                [--data-dir DIR] [--binary PATH] [--no-start] [--force-config]
#                [--form auto|onefile|onedir] [--min-tmp-mb N] [--min-tmpfs-mb N]
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
#
# Form: the onefile binary unpacks itself (~45 MB) into /tmp at every start; the onedir
# form (edge-agent-<version>-linux-<arch>-onedir.tar.gz, unpacked into
# /usr/local/lib/edge-agent, /usr/local/bin/edge-agent a symlink to it) unpacks nothing.
# --form auto (the default) picks onedir when the bundle has it and /tmp has less than
# --min-tmp-mb (default 256) MB free, or is a tmpfs (RAM) smaller than --min-tmpfs-mb
# (default 2048) MB: a small device, where the unpacked copy would hold RAM for the
# agent's whole life. Otherwise onefile. --form onefile|onedir forces one.
set -euo pipefail

NAME=edge-agent
root=""
hub_url=""
token=""
ca_sha256=""
device_id=""
data_dir=/var/lib/edge-agent
binary=""
form=auto
min_tmp_mb=256
min_tmpfs_mb=2048
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
    --form) form=$2; shift ;;
    --min-tmp-mb) min_tmp_mb=$2; shift ;;
    --min-tmpfs-mb) min_tmpfs_mb=$2; shift ;;
    --root) root=${2%/}; shift ;;
    --no-start) start=0 ;;
    --force-config) force_config=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --purge-containers) purge_containers=1 ;;
    -h | --help) sed -n '2,33p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[[ $(id -u) == 0 ]] || die "run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$root/usr/local/bin/$NAME
LIB=$root/usr/local/lib/$NAME
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
    rm -rf "$LIB"
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

# verify FILE: its SHA-256 against the SHA256SUMS next to it (if there is one).
verify() {
    local file=$1 sums want
    sums=$(find_file "$(dirname "$file")/SHA256SUMS") || sums=""
    if [[ -n $sums ]]; then
        want=$(awk -v n="$(basename "$file")" '$2 == n {print $1}' "$sums")
        [[ -n $want ]] || die "$(basename "$file") is not listed in $sums"
        [[ $(sha256sum "$file" | cut -d' ' -f1) == "$want" ]] ||
            die "SHA-256 of $file does not match $sums"
        say "checksum ok: $(basename "$file")"
    else
        say "warning: no SHA256SUMS next to $file; checksum not verified"
    fi
}

# Why onedir suits this device, or nothing if onefile does: /tmp as the unit sees it
# (PrivateTmp= lives on the same filesystem).
small_tmp() {
    local tmp=$root/tmp fstype avail_mb size_mb
    [[ -d $tmp ]] || { echo "there is no /tmp"; return; }
    read -r size_mb avail_mb < <(df -Pk "$tmp" | awk 'NR == 2 {print int($2 / 1024), int($4 / 1024)}')
    fstype=$(stat -f -c %T "$tmp")
    if ((avail_mb < min_tmp_mb)); then
        echo "/tmp has ${avail_mb} MB free (< --min-tmp-mb $min_tmp_mb)"
    elif [[ $fstype == tmpfs ]] && ((size_mb < min_tmpfs_mb)); then
        echo "/tmp is a ${size_mb} MB tmpfs (< --min-tmpfs-mb $min_tmpfs_mb)"
    fi
}

# Set $binary and $form: the file to install and its form (onefile or onedir).
choose_binary() {
    local label onefile onedir why
    label=$(arch_label)
    if [[ -n $binary ]]; then
        [[ -f $binary ]] || die "no such binary: $binary"
        local given=onefile
        [[ $binary == *.tar.gz ]] && given=onedir
        [[ $form == auto || $form == "$given" ]] ||
            die "--form $form does not match --binary $binary (a $given build)"
        form=$given
        return
    fi
    onefile=$(find_file "$HERE"/edge-agent-*-linux-"$label" "$HERE"/dist/edge-agent-*-linux-"$label") ||
        onefile=""
    onedir=$(find_file "$HERE"/edge-agent-*-linux-"$label"-onedir.tar.gz \
        "$HERE"/dist/edge-agent-*-linux-"$label"-onedir.tar.gz) || onedir=""
    case $form in
    onefile)
        [[ -n $onefile ]] || die "no edge-agent-*-linux-$label next to install.sh (use --binary PATH)"
        binary=$onefile
        say "form: onefile (--form onefile)"
        ;;
    onedir)
        [[ -n $onedir ]] ||
            die "no edge-agent-*-linux-$label-onedir.tar.gz next to install.sh (use --binary PATH)"
        binary=$onedir
        say "form: onedir (--form onedir)"
        ;;
    auto)
        why=$(small_tmp)
        if [[ -n $why && -n $onedir ]]; then
            form=onedir binary=$onedir
            say "form: onedir: $why; nothing is unpacked at start"
        elif [[ -n $onefile ]]; then
            form=onefile binary=$onefile
            if [[ -n $why ]]; then
                say "warning: $why, but the bundle has no onedir build: onefile unpacks ~45 MB there at every start"
            else
                say "form: onefile (/tmp has room; --form onedir to unpack nothing at start)"
            fi
        elif [[ -n $onedir ]]; then
            form=onedir binary=$onedir
            say "form: onedir (the only build in the bundle)"
        else
            die "no edge-agent-*-linux-$label next to install.sh (use --binary PATH)"
        fi
        ;;
    esac
}

install_binary() {
    choose_binary
    verify "$binary"
    mkdir -p "$(dirname "$BIN")"
    if [[ $form == onedir ]]; then
        # Unpack beside the old folder, then swap: a running agent keeps its old files.
        rm -rf "$LIB.new" "$LIB.old"
        mkdir -p "$LIB.new"
        tar -xzf "$binary" -C "$LIB.new" --strip-components=1 --no-same-owner ||
            die "cannot unpack $binary"
        [[ -x $LIB.new/$NAME ]] || die "$binary has no $NAME executable at its top"
        chown -R root:root "$LIB.new"
        chmod -R go-w "$LIB.new"
        [[ -e $LIB ]] && mv "$LIB" "$LIB.old"
        mv "$LIB.new" "$LIB"
        rm -rf "$LIB.old"
        ln -sfn "/usr/local/lib/$NAME/$NAME" "$BIN.new"
        mv -Tf "$BIN.new" "$BIN"
    else
        # Replace atomically: a running agent keeps its old file until it restarts.
        install -m 0755 -o root -g root "$binary" "$BIN.new"
        mv -Tf "$BIN.new" "$BIN"
        rm -rf "$LIB"
    fi
    say "installed $BIN ($form; $("$BIN" --version 2>/dev/null || echo 'cannot run here'))"
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
[[ $form == auto || $form == onefile || $form == onedir ]] ||
    die "--form must be auto, onefile or onedir (got '$form')"
[[ $min_tmp_mb =~ ^[0-9]+$ ]] || die "--min-tmp-mb must be a whole number of MB (got '$min_tmp_mb')"
[[ $min_tmpfs_mb =~ ^[0-9]+$ ]] ||
    die "--min-tmpfs-mb must be a whole number of MB (got '$min_tmpfs_mb')"
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
