#!/usr/bin/env bash
# Bring up the real parts edgefleet's tests use, on a bare or warm Debian 12 machine (as root):
#   - packages: docker.io busybox-static docker-registry docker-compose postgresql chromium
#   - a Docker engine (dockerd), if `docker version` does not answer
#   - registry 127.0.0.1:5000 (open) and 127.0.0.1:5001 (htpasswd: edge / edgepass)
#   - test images edgefleet-test/<name>:1 built FROM scratch with static busybox from
#     tests/images/<name>/Dockerfile, pushed to 127.0.0.1:5000/edgefleet/<name>:1, and
#     "good" also to 127.0.0.1:5001/edgefleet/good:1
#   - a PostgreSQL 15 TEST server (trust auth) on 127.0.0.1:55432 with database
#     edgefleet_test: scripts/testenv-postgres.sh (runs alone too)
# Idempotent: each step checks first and does only what is missing. Prints "testenv ready".
set -euo pipefail

STATE=${EDGEFLEET_TESTENV_DIR:-/var/lib/edgefleet-testenv}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=$REPO/tests/images
IMAGES=(good crash unhealthy healthy slow)
AUTH_IMAGES=(good)
PACKAGES=(docker.io busybox-static docker-registry docker-compose postgresql chromium mmdebstrap systemd)
REGISTRY=127.0.0.1:5000
AUTH_REGISTRY=127.0.0.1:5001
AUTH_USER=edge
AUTH_PASSWORD=edgepass
export DEBIAN_FRONTEND=noninteractive
# The classic builder needs no buildx plugin and builds FROM scratch without any pull.
export DOCKER_BUILDKIT=0

log() { printf 'testenv: %s\n' "$*" >&2; }
die() {
    printf 'testenv: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts dockerd)"

# Poll CMD... every 0.2 s until it succeeds or SECONDS_ pass; return 1 on timeout.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

engine_ok() { timeout 5 docker version >/dev/null 2>&1; }

start_engine() {
    engine_ok && return 0
    log "starting dockerd (log: /var/log/edgefleet-dockerd.log)"
    # 256 /24 networks instead of Docker's ~30 default pools: every test release gets a
    # network, and a suite run beside others (or a leak) must not exhaust the pools.
    setsid dockerd --default-address-pool base=10.213.0.0/16,size=24 \
        >/var/log/edgefleet-dockerd.log 2>&1 </dev/null 9>&- &
    wait_for 60 engine_ok ||
        die "dockerd not ready after 60 s; see /var/log/edgefleet-dockerd.log"
}

# Succeed if the registry's API root answers (with credentials when given).
registry_ok() {
    local addr=$1 creds=${2:-}
    timeout 3 busybox wget -q -O /dev/null "http://${creds:+$creds@}$addr/v2/" 2>/dev/null
}

write_htpasswd() {
    local file=$1
    [[ -s $file ]] && return 0
    local hash
    # docker-registry accepts only bcrypt entries; low cost (2^5): a test password, checked
    # on every request.
    if ! command -v htpasswd >/dev/null && ! python3 -W ignore -c 'import crypt' 2>/dev/null; then
        log "installing apache2-utils (for htpasswd)"
        apt-get install -y -q apache2-utils >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q apache2-utils >/dev/null; } ||
            die "cannot install apache2-utils for htpasswd"
    fi
    if command -v htpasswd >/dev/null; then
        hash=$(htpasswd -nbB -C 5 "$AUTH_USER" "$AUTH_PASSWORD" | cut -d: -f2-)
    else
        hash=$(python3 -W ignore -c 'import crypt, sys
print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32)))' "$AUTH_PASSWORD") ||
            die "python3 crypt() could not make a bcrypt hash for $file"
    fi
    [[ $hash == '$2'* ]] || die "could not make a bcrypt hash for $file"
    printf '%s:%s\n' "$AUTH_USER" "$hash" >"$file"
}

start_registry() {
    local addr=$1 name=$2 auth=${3:-}
    local dir=$STATE/registry/$name creds=""
    [[ -n $auth ]] && creds="$AUTH_USER:$AUTH_PASSWORD"
    registry_ok "$addr" "$creds" && return 0
    mkdir -p "$dir/data"
    {
        printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n'
        printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n' \
            "$dir/data"
        printf 'http:\n  addr: %s\n' "$addr"
        if [[ -n $auth ]]; then
            write_htpasswd "$dir/htpasswd"
            printf 'auth:\n  htpasswd:\n    realm: edgefleet-test\n    path: %s\n' "$dir/htpasswd"
        fi
    } >"$dir/config.yml"
    log "starting registry $addr (log: $dir/registry.log)"
    setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null 9>&- &
    wait_for 30 registry_ok "$addr" "$creds" ||
        die "registry $addr not answering http://$addr/v2/ after 30 s; see $dir/registry.log" \
            "(is another process on that port?)"
}

# Build context shared by all images: bin/ with static busybox and a link per applet.
prepare_bin() {
    local bin=$STATE/build/bin applet
    [[ -x /bin/busybox ]] || die "/bin/busybox missing (package busybox-static)"
    if [[ ! -f $bin/busybox ]] || ! cmp -s /bin/busybox "$bin/busybox"; then
        rm -rf "$bin" && mkdir -p "$bin"
        cp /bin/busybox "$bin/busybox"
        for applet in $(/bin/busybox --list); do
            [[ $applet == busybox ]] || ln -s busybox "$bin/$applet"
        done
    fi
}

image_label() {
    docker image inspect -f '{{index .Config.Labels "io.edgefleet.test-hash"}}' "$1" 2>/dev/null
}

# Build edgefleet-test/NAME:1 unless an image with the same inputs hash exists.
build_image() {
    local name=$1 tag=edgefleet-test/$1:1 dockerfile=$IMAGES_DIR/$1/Dockerfile hash
    [[ -f $dockerfile ]] || die "missing $dockerfile"
    hash=$(cat "$dockerfile" "$STATE/build/bin/busybox" | sha256sum | cut -c1-16)
    [[ $(image_label "$tag") == "$hash" ]] && return 0
    log "building $tag"
    local out
    out=$(docker build -q --label "io.edgefleet.test-hash=$hash" -t "$tag" \
        -f "$dockerfile" "$STATE/build" 2>&1) || die "docker build of $tag failed: $out"
}

# Print the manifest digest the registry holds for REPO:TAG (empty if none).
registry_digest() {
    local addr=$1 repo=$2 creds=${3:-}
    # (busybox wget -T crashes in Debian's static build; timeout(1) bounds it instead.)
    timeout 5 busybox wget -q -S -O /dev/null \
        --header 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://${creds:+$creds@}$addr/v2/$repo/manifests/1" 2>&1 |
        sed -n 's/^ *[Dd]ocker-[Cc]ontent-[Dd]igest: *\([^ \r]*\).*/\1/p' || true
}

# Push edgefleet-test/NAME:1 as ADDR/edgefleet/NAME:1 unless the registry has that image.
push_image() {
    local name=$1 addr=$2 creds=${3:-} remote=$2/edgefleet/$1:1 have
    have=$(registry_digest "$addr" "edgefleet/$name" "$creds")
    if [[ -n $have ]] &&
        docker image inspect -f '{{json .RepoDigests}}' "edgefleet-test/$name:1" |
        grep -q "\"$addr/edgefleet/$name@$have\""; then
        return 0
    fi
    log "pushing $remote"
    docker tag "edgefleet-test/$name:1" "$remote"
    local out
    out=$(docker push -q "$remote" 2>&1) || die "docker push $remote failed: $out"
}

main() {
    mkdir -p "$STATE"
    # One run at a time: parallel test sessions may all call this script.
    exec 9>"$STATE/lock"
    flock -w 600 9 || die "another testenv.sh run holds $STATE/lock for over 10 min"
    install_packages
    command -v docker-registry >/dev/null || die "docker-registry not on PATH"
    start_engine
    start_registry "$REGISTRY" open
    start_registry "$AUTH_REGISTRY" auth yes
    # shellcheck source=scripts/testenv-postgres.sh
    source "$REPO/scripts/testenv-postgres.sh"
    start_postgres
    prepare_bin
    local name
    for name in "${IMAGES[@]}"; do
        build_image "$name"
        push_image "$name" "$REGISTRY"
    done
    # Log in with a private client config so root's ~/.docker is left alone.
    export DOCKER_CONFIG=$STATE/docker-config
    mkdir -p "$DOCKER_CONFIG"
    if [[ ! -s $DOCKER_CONFIG/config.json ]] || ! grep -q "$AUTH_REGISTRY" "$DOCKER_CONFIG/config.json"; then
        printf '%s' "$AUTH_PASSWORD" |
            docker login -u "$AUTH_USER" --password-stdin "$AUTH_REGISTRY" >/dev/null 2>&1 ||
            die "docker login $AUTH_REGISTRY failed"
    fi
    for name in "${AUTH_IMAGES[@]}"; do
        push_image "$name" "$AUTH_REGISTRY" "$AUTH_USER:$AUTH_PASSWORD"
    done
    echo "testenv ready"
}

main "$@"
