# Shared helpers for edgefleet's build scripts (sourced, not run).
# Roots live under $EDGEFLEET_BUILD_CACHE (default /var/cache/edgefleet-build), never in git.

BUILD_CACHE=${EDGEFLEET_BUILD_CACHE:-/var/cache/edgefleet-build}
ROOTS=$BUILD_CACHE/roots
WHEELHOUSE=$BUILD_CACHE/wheelhouse

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '%s: FAILED: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# Debian arch name -> the name used in artefact file names (uname -m style).
arch_label() {
    case $1 in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
    armhf) echo armv7 ;;
    *) die "unknown arch $1" ;;
    esac
}

# Make foreign binaries run: binfmt_misc mounted and qemu handlers enabled.
ensure_binfmt() {
    local arch=$1 handler
    case $arch in
    amd64) return 0 ;;
    arm64) handler=qemu-aarch64 ;;
    armhf) handler=qemu-arm ;;
    esac
    command -v mmdebstrap >/dev/null && [[ -x /usr/bin/$handler-static ]] ||
        die "needs: apt-get install -y qemu-user-static binfmt-support mmdebstrap"
    [[ -e /proc/sys/fs/binfmt_misc/status ]] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
    [[ -e /proc/sys/fs/binfmt_misc/$handler ]] || update-binfmts --enable "$handler" >/dev/null ||
        die "cannot enable binfmt handler $handler"
}

# Copy the host's CA certificates in (this network may inspect TLS; pip in the root needs them).
copy_ca_certs() {
    local root=$1
    mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp -aL /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

# Bind proc/sys/dev and a tmpfs /tmp into ROOT; undone by unmount_root.
mount_root() {
    local root=$1
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mountpoint -q "$root/sys" || mount --rbind /sys "$root/sys"
    mountpoint -q "$root/dev" || mount --rbind /dev "$root/dev"
    mountpoint -q "$root/tmp" || mount -t tmpfs -o size=2g tmpfs "$root/tmp"
}

unmount_root() {
    local root=$1 m
    for m in tmp dev sys proc; do
        mountpoint -q "$root/$m" && umount -R -l "$root/$m"
    done
    return 0
}

# Rewrite DIR/SHA256SUMS over every shipped file in DIR (not the onedir folders themselves).
write_sums() {
    (
        cd "$1"
        find . -maxdepth 1 -type f -name 'edge-*' -printf '%f\n' | sort |
            xargs -r sha256sum >SHA256SUMS.tmp
        mv SHA256SUMS.tmp SHA256SUMS
    )
}

# glibc_floor PATH...: the highest GLIBC_x.y symbol version any ELF file under PATH needs
# (readelf reads every architecture's ELF; the onedir folder holds every bundled library).
glibc_floor() {
    find "$@" -type f -print0 | while IFS= read -r -d '' f; do
        [[ $(head -c 4 "$f" | od -An -c | tr -d ' ') == 177ELF ]] || continue
        readelf -V -W "$f" 2>/dev/null | grep -o 'Name: GLIBC_[0-9.]*' | cut -d_ -f2
    done | sort -uV | tail -1
}

# root_glibc ROOT: the version of glibc in a Debian root (e.g. 2.31), from its dpkg database.
root_glibc() {
    dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${Version}' libc6 | cut -d- -f1
}
