#!/usr/bin/env bash
# Build and smoke-test the ARM binaries: one command, run as root on an x86_64 Debian host.
#
#   nice -n 10 packaging/build-arm.sh [arm64|armhf|all] [--program edge-agent|edge-hub|all]
#                                     [--mode onefile|onedir|both] [--smoke-only]
#
# The same machinery builds in an older Debian for a lower glibc floor (bookworm's binaries
# need glibc 2.36; bullseye's 2.31). bullseye has no Python 3.11, so one is compiled from
# Debian's own python3.11 source package into /opt/python3.11 inside the root:
#
#   nice -n 10 packaging/build-arm.sh amd64 --suite bullseye     # the x86_64 release binary
#
# Default: all arches, edge-agent on arm64 and armhf, edge-hub on arm64.
# PyInstaller cannot cross-compile, so each build runs natively inside a Debian bookworm
# root of that architecture (mmdebstrap) under qemu-user emulation (binfmt_misc), with
# packaging/build.sh. Roots, the build venvs and the wheelhouse (uvloop, cffi and
# PyInstaller's bootloader compile from source on armhf) are kept under
# $EDGEFLEET_BUILD_CACHE (default /var/cache/edgefleet-build), so a rebuild takes minutes.
# Cold (bookworm): arm64 about 6 min, armhf about 20 min. Cold with --suite bullseye
# (CPython compiled under qemu) took 76 min for arm64 and 46 min for armhf on 2 shared
# cores: see docs/operations.md, "ARM".
#
# Then every binary is smoke-tested (--version and selftest): under qemu with
# QEMU_LD_PREFIX=<build root>, and chrooted into a minimal root with no Python at all.
# Needs: apt-get install -y qemu-user-static binfmt-support mmdebstrap
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

BUILD_PACKAGES=python3,python3-venv,python3-dev,python3-pip,gcc,libc6-dev,make,binutils,ca-certificates,zlib1g-dev,libffi-dev,libssl-dev
SUITE=bookworm
arches=()
program=default
mode=default
smoke_only=0
while (($#)); do
    case $1 in
    arm64 | armhf) arches+=("$1") ;;
    all) arches=(arm64 armhf) ;;
    --program) program=$2; shift ;;
    --mode) mode=$2; shift ;;
    --smoke-only) smoke_only=1 ;;
    amd64) arches+=("$1") ;;
    --suite) SUITE=$2; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
((${#arches[@]})) || arches=(arm64 armhf)
# bookworm has Python 3.11 as python3; an older suite gets one built from source.
PYTHON_IN_ROOT=/usr/bin/python3
if [[ $SUITE != bookworm ]]; then
    BUILD_PACKAGES=gcc,libc6-dev,make,binutils,ca-certificates,dpkg-dev,pkg-config,xz-utils,zlib1g-dev,libffi-dev,libssl-dev,libsqlite3-dev,libbz2-dev,liblzma-dev,uuid-dev
    PYTHON_IN_ROOT=/opt/python3.11/bin/python3.11
fi
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap, chroot, mounts)"
OUT=$REPO/dist
mkdir -p "$OUT" "$ROOTS"

# The first Debian mirror in the host's apt sources (deb822 or one-line format).
host_mirror() {
    local m
    m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources \
        2>/dev/null)
    [[ -n $m ]] || m=$(awk '/^deb / && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.list 2>/dev/null)
    [[ -n $m ]] && echo "$m"
}

# make_root DIR ARCH VARIANT [PACKAGES]: create a root once; .ready marks a finished one.
# The host's apt sources are used; if an index fails (a security mirror mid-sync has
# been seen for armhf), it retries once with the main and updates suites only.
make_root() {
    local root=$1 arch=$2 variant=$3 include=${4:-} logfile
    [[ -e $root/.ready ]] && return 0
    log "creating $variant root for $arch at $root"
    logfile=$BUILD_CACHE/mmdebstrap-${root##*/}.log
    local args=(--mode=root --arch="$arch" --variant="$variant" --aptopt='Acquire::Retries "3"')
    [[ -n $include ]] && args+=(--include="$include")
    rm -rf "$root.tmp"
    if ! mmdebstrap "${args[@]}" "$SUITE" "$root.tmp" >"$logfile" 2>&1; then
        grep -E '^(E|W):' "$logfile" | head -5 >&2
        log "retrying $arch root without the security suite"
        rm -rf "$root.tmp"
        local mirror
        mirror=$(host_mirror) || die "mmdebstrap $arch failed (see $logfile); no apt mirror found"
        mmdebstrap "${args[@]}" "$SUITE" "$root.tmp" \
            "deb $mirror $SUITE main" "deb $mirror $SUITE-updates main" >"$logfile" 2>&1 ||
            die "mmdebstrap $arch failed (see $logfile)"
    fi
    mv "$root.tmp" "$root"
    touch "$root/.ready"
}

# The agent ships in both forms (the install script picks one per device); the hub onefile.
mode_for() {
    local prog=$1
    if [[ $mode != default ]]; then
        echo "$mode"
    elif [[ $prog == edge-agent ]]; then
        echo both
    else
        echo onefile
    fi
}

programs_for() {
    local arch=$1
    case $program in
    default) [[ $arch == arm64 ]] && echo "edge-agent edge-hub" || echo edge-agent ;;
    all) echo "edge-agent edge-hub" ;;
    *) echo "$program" ;;
    esac
}

build_arch() {
    local arch=$1 root=$ROOTS/$SUITE-$arch p
    make_root "$root" "$arch" apt "$BUILD_PACKAGES"
    copy_ca_certs "$root"
    [[ $SUITE == bookworm ]] || ensure_python "$root"
    # Fresh copy of the sources (the root keeps its venv, wheelhouse and PyInstaller cache).
    rm -rf "$root/src" "$root/out"
    mkdir -p "$root/src" "$root/out"
    tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - \
        pyproject.toml edge_agent hub packaging $(cd "$REPO" && ls README* 2>/dev/null) |
        tar -C "$root/src" -xf -
    mount_root "$root"
    trap 'unmount_root "'"$root"'"' EXIT
    for p in $(programs_for "$arch"); do
        log "building $p for $arch inside $root"
        chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
            PIP_DEFAULT_TIMEOUT=180 \
            bash /src/packaging/build.sh --program "$p" --mode "$(mode_for "$p")" \
            --python "$PYTHON_IN_ROOT" \
            --out /out --work /var/tmp/pyinstaller || die "build of $p for $arch failed"
    done
    unmount_root "$root"
    trap - EXIT
    find "$root/out" -maxdepth 1 -name 'edge-*' -exec cp -a {} "$OUT/" \;
    write_sums "$OUT"
}

# Python 3.11 for an older root: Debian bookworm's python3.11 source package (upstream
# sources, Debian's patches not applied), shared libpython with an rpath, in /opt/python3.11.
ensure_python() {
    local root=$1 mirror
    [[ -e $root/.ready-python ]] && return 0
    [[ -x $root$PYTHON_IN_ROOT ]] || compile_python "$root"
    # Debian strips ensurepip's bundled wheels: bootstrap pip from its wheel on PyPI.
    local wheels=$WHEELHOUSE/pip-bootstrap
    mkdir -p "$wheels"
    ls "$wheels"/pip-*.whl >/dev/null 2>&1 || pip download -q --no-deps -d "$wheels" pip ||
        die "cannot download the pip wheel"
    rm -rf "$root/var/tmp/pip-bootstrap" && mkdir -p "$root/var/tmp/pip-bootstrap"
    cp "$wheels"/pip-*.whl "$root/var/tmp/pip-bootstrap/"
    chroot "$root" /bin/sh -c 'whl=$(ls /var/tmp/pip-bootstrap/pip-*.whl | tail -1) &&
        /opt/python3.11/bin/python3.11 "$whl/pip" install -q --no-index "$whl"' ||
        die "pip bootstrap failed"
    touch "$root/.ready-python"
}

compile_python() {
    local root=$1 mirror
    mirror=$(host_mirror) || die "no apt mirror found in the host's sources"
    log "compiling Python 3.11 inside $root (from Debian's python3.11 source package)"
    echo "deb-src $mirror bookworm main" >"$root/etc/apt/sources.list.d/python-src.list"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    mount_root "$root"
    trap 'unmount_root "'"$root"'"' EXIT
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        bash -euo pipefail -c '
        apt-get update -q >/dev/null
        rm -rf /var/tmp/cpython && mkdir -p /var/tmp/cpython && cd /var/tmp/cpython
        apt-get source -q --download-only python3.11 >/dev/null
        dpkg-source --skip-patches -x python3.11_*.dsc src >/dev/null
        cd src
        ./configure -q --prefix=/opt/python3.11 --enable-shared --with-ensurepip=no \
            LDFLAGS=-Wl,-rpath,/opt/python3.11/lib >/dev/null
        make -s -j"$(nproc)" >/dev/null 2>&1 || make -j1
        make -s install >/dev/null
        /opt/python3.11/bin/python3.11 -c "import ssl, sqlite3, ctypes, bz2, lzma, uuid, zlib"
        ' || die "building Python 3.11 in $root failed"
    unmount_root "$root"
    trap - EXIT
}

# run_smoke ARCH BINARY: --version and selftest under qemu, then in a root with no Python.
smoke_arch() {
    local arch=$1 build_root=$ROOTS/$SUITE-$arch bare=$ROOTS/$SUITE-$arch-nopython label bin
    label=$(arch_label "$arch")
    make_root "$bare" "$arch" essential
    if chroot "$bare" /bin/sh -c 'command -v python3 || ls /usr/bin/python*' >/dev/null 2>&1; then
        die "$bare has a Python; it must not"
    fi
    local found=0
    for bin in "$OUT"/edge-*-linux-"$label"; do
        [[ -f $bin ]] || continue
        found=1
        local name=${bin##*/} prog
        prog=${name%%-[0-9]*}
        log "smoke: $name under qemu (QEMU_LD_PREFIX=$build_root)"
        QEMU_LD_PREFIX=$build_root "$bin" --version || die "$name --version failed under qemu"
        if [[ $prog == edge-agent ]]; then
            QEMU_LD_PREFIX=$build_root "$bin" selftest || die "$name selftest failed under qemu"
        fi
        log "smoke: $name in a root without Python ($bare)"
        install -m 0755 "$bin" "$bare/usr/local/bin/$prog"
        mount_root "$bare"
        trap 'unmount_root "'"$bare"'"' EXIT
        chroot "$bare" "/usr/local/bin/$prog" --version || die "$name --version failed in $bare"
        if [[ $prog == edge-agent ]]; then
            chroot "$bare" /usr/local/bin/edge-agent selftest || die "$name selftest failed in $bare"
        fi
        unmount_root "$bare"
        trap - EXIT
        rm -f "$bare/usr/local/bin/$prog"
    done
    for dir in "$OUT"/edge-agent-*-linux-"$label"-onedir; do
        [[ -x $dir/edge-agent ]] || continue
        found=1
        local floor root_libc
        floor=$(glibc_floor "$dir")
        root_libc=$(root_glibc "$build_root")
        log "glibc floor of ${dir##*/}: GLIBC_$floor (build root: glibc $root_libc)"
        [[ $(printf '%s\n%s\n' "$floor" "$root_libc" | sort -V | tail -1) == "$root_libc" ]] ||
            die "${dir##*/} needs glibc $floor, newer than its build root's $root_libc"
        log "smoke: ${dir##*/} in a root without Python ($bare)"
        rm -rf "$bare/opt/edge-agent" && cp -a "$dir" "$bare/opt/edge-agent"
        ln -sfn /opt/edge-agent/edge-agent "$bare/usr/local/bin/edge-agent"
        mount_root "$bare"
        trap 'unmount_root "'"$bare"'"' EXIT
        chroot "$bare" /usr/local/bin/edge-agent --version || die "${dir##*/} --version failed"
        chroot "$bare" /usr/local/bin/edge-agent selftest || die "${dir##*/} selftest failed"
        unmount_root "$bare"
        trap - EXIT
        rm -rf "$bare/opt/edge-agent" "$bare/usr/local/bin/edge-agent"
    done
    ((found)) || die "no binaries for $label in $OUT"
}

# All of it in one function: editing this file while a build runs cannot derail it.
main() {
    for arch in "${arches[@]}"; do
        ensure_binfmt "$arch"
        start=$SECONDS
        ((smoke_only)) || build_arch "$arch"
        smoke_arch "$arch"
        log "$arch done in $((SECONDS - start)) s"
    done
    log "ARM builds smoke-tested: $(cd "$OUT" && ls edge-*-linux-aarch64 edge-*-linux-armv7 2>/dev/null | tr '\n' ' ')"
}

main
exit
