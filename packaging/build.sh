#!/usr/bin/env bash
# Freeze edge-agent (and edge-hub) with PyInstaller for the architecture of this machine.
#
#   packaging/build.sh [--program edge-agent|edge-hub|all] [--mode onefile|onedir|both]
#                      [--out DIR] [--work DIR] [--python PY] [--if-stale]
#
# Outputs in DIR (default dist/), for each program (edge-agent, edge-hub):
# <program>-<version>-linux-<arch> (onefile),
# <program>-<version>-linux-<arch>-onedir/ and its .tar.gz (onedir), a
# <name>.manifest.json per build (Python, every bundled package and version, inputs hash)
# and SHA256SUMS over every file. The build venv and a wheelhouse are cached under
# $EDGEFLEET_BUILD_CACHE (default /var/cache/edgefleet-build), never in git.
# --if-stale skips a build whose manifest already records the current inputs hash.
# ARM binaries: packaging/build-arm.sh runs this script inside a Debian root under qemu.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=lib.sh
source "$HERE/lib.sh"

program=edge-agent
mode=onefile
out=$REPO/dist
work=$REPO/build/pyinstaller
python=${PYTHON:-}
if_stale=0
while (($#)); do
    case $1 in
    --program) program=$2; shift ;;
    --mode) mode=$2; shift ;;
    --onedir) mode=onedir ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    --python) python=$2; shift ;;
    --if-stale) if_stale=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
if [[ -z $python ]]; then
    for candidate in python3.11 python3; do
        command -v "$candidate" >/dev/null && python=$(command -v "$candidate") && break
    done
fi
[[ -n $python ]] || die "no python3.11 found (set PYTHON=...)"
"$python" -c 'import sys; assert sys.version_info[:2] >= (3, 11)' ||
    die "$python is older than 3.11"

arch=$("$python" "$HERE/speclib.py" arch)
mkdir -p "$out" "$work" "$BUILD_CACHE"

# The build venv holds only the declared dependencies (+ PyInstaller), never the project:
# sources always come from this tree, and the manifest lists exactly what is bundled.
requirements() {
    "$python" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(p["dependencies"]) + list(p["optional-dependencies"]["hub"])
reqs += [r for r in p["optional-dependencies"]["dev"] if r.lower().startswith("pyinstaller")]
print("\n".join(reqs))
PY
}

setup_venv() {
    local reqs key venv wheels
    reqs=$(requirements)
    key=$( (printf '%s\n' "$reqs"; "$python" -VV) | sha256sum | cut -c1-12)
    venv=$BUILD_CACHE/venv-$arch-$key
    wheels=$WHEELHOUSE/$arch
    if [[ ! -x $venv/bin/python || ! -e $venv/.complete ]]; then
        log "creating build venv $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        mkdir -p "$wheels"
        printf '%s\n' "$reqs" >"$venv/requirements.txt"
        # Offline from the wheelhouse if it has everything; otherwise fill it, then install.
        if ! "$venv/bin/pip" install -q --no-index --find-links "$wheels" \
            -r "$venv/requirements.txt" 2>/dev/null; then
            log "filling wheelhouse $wheels (slow the first time on ARM: some wheels build from source)"
            "$venv/bin/pip" wheel -q --find-links "$wheels" -w "$wheels" \
                -r "$venv/requirements.txt" || die "pip wheel failed"
            "$venv/bin/pip" install -q --no-index --find-links "$wheels" \
                -r "$venv/requirements.txt" || die "pip install from the wheelhouse failed"
        fi
        touch "$venv/.complete"
    fi
    VENV=$venv
}

is_fresh() {
    local manifest=$1 prog=$2
    [[ -f $manifest ]] || return 1
    local want have
    want=$("$python" "$HERE/speclib.py" inputs-hash "$prog")
    have=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["inputs_sha256"])' \
        "$manifest" 2>/dev/null) || return 1
    [[ $want == "$have" ]]
}

build_one() {
    local prog=$1 m=$2 name manifest target tmp
    name=$("$python" "$HERE/speclib.py" name "$prog")
    if [[ $m == onedir ]]; then
        target=$out/$name-onedir
        manifest=$out/$name-onedir.manifest.json
    else
        target=$out/$name
        manifest=$out/$name.manifest.json
    fi
    if ((if_stale)) && [[ -e $target ]] && is_fresh "$manifest" "$prog"; then
        log "$(basename "$target") is up to date (inputs unchanged)"
        return 0
    fi
    [[ -n ${VENV:-} ]] || setup_venv
    log "building $(basename "$target") ($m) with $("$VENV/bin/python" -V)"
    tmp=$(mktemp -d "$work/dist.XXXXXX")
    (
        cd "$REPO"
        EDGEFLEET_MODE=$m EDGEFLEET_MANIFEST=$tmp/manifest.json \
            "$VENV/bin/python" -m PyInstaller --noconfirm --log-level WARN \
            --distpath "$tmp" --workpath "$work/$arch-$prog-$m" "$HERE/$prog.spec"
    ) || die "PyInstaller failed for $prog ($m)"
    rm -rf "$target" "$target.tar.gz"
    if [[ $m == onedir ]]; then
        mv "$tmp/$name-onedir" "$target"
        tar -C "$out" -czf "$target.tar.gz" "$(basename "$target")"
    else
        mv "$tmp/$name" "$target"
    fi
    mv "$tmp/manifest.json" "$manifest"
    rm -rf "$tmp"
    log "built $target ($(du -sh "$target" | cut -f1))"
}

# All of it in one function: editing this file while a build runs cannot derail it.
main() {
    case $program in
    all) programs=(edge-agent edge-hub) ;;
    edge-agent | edge-hub) programs=("$program") ;;
    *) die "unknown program $program" ;;
    esac
    case $mode in
    both) modes=(onefile onedir) ;;
    onefile | onedir) modes=("$mode") ;;
    *) die "unknown mode $mode" ;;
    esac
    for p in "${programs[@]}"; do
        for m in "${modes[@]}"; do
            build_one "$p" "$m"
        done
    done

    write_sums "$out"
    log "done: $out"
}

main
exit
