#!/usr/bin/env bash
# Installs the Debian packages PyPersistent's C++ tests, benchmarks, sanitizer
# builds and from-source CPython builds need, then unpacks trixie's header-only
# libimmer-dev into the project cache (bookworm has no immer package).
#
# Idempotent: apt-get update/install run only when something is missing, and the
# immer headers are re-extracted only when a newer .deb appears.
# Works on Debian 12 (bookworm) and 13 (trixie); never edits /etc/apt.
#
# apt-get update/install wait for the dpkg lock and are retried a few times
# (apt_get_retry in lib.sh; APT_RETRY_TRIES, default 5 here).
#
# Usage: scripts/install-system-deps.sh
# Prints the immer include dir as the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
# shellcheck source=scripts/lib-trixie-apt.sh
. "$here/lib-trixie-apt.sh"

for arg in "$@"; do
    case $arg in
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $arg" >&2; usage ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
# A held dpkg lock or a flaky mirror: a few attempts, not lib.sh's default 60.
APT_RETRY_TRIES=${APT_RETRY_TRIES:-5}

packages=(
    # C++ unit tests and micro-benchmarks. googletest ships the sources, so a
    # sanitizer build can compile gtest with the same -fsanitize flags.
    googletest libgtest-dev libgmock-dev libbenchmark-dev
    # clang for TSan/ASan builds; llvm gives llvm-symbolizer so sanitizer
    # reports carry function names and lines. The runtime package is added below.
    clang llvm
    # CPython from source (scripts/build-python.sh).
    build-essential pkg-config dpkg-dev xz-utils
    libssl-dev zlib1g-dev libbz2-dev libreadline-dev libncurses-dev
    libsqlite3-dev libffi-dev liblzma-dev uuid-dev libgdbm-dev libexpat1-dev
    # Verifying and fetching trixie's indexes with our private apt state.
    debian-archive-keyring gpgv ca-certificates
)

system_updated=0
system_apt_update() {
    [ "$system_updated" -eq 1 ] && return 0
    log "apt-get update (system sources)"
    apt_get_retry -q update >&2
    system_updated=1
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# The sanitizer runtimes (libclang_rt.tsan etc.) live in a package named after
# clang's major version: libclang-rt-14-dev on bookworm, libclang-rt-19-dev on
# trixie. Take the version the `clang` metapackage points at.
clang_rt_package() {
    local major
    if command -v clang >/dev/null 2>&1; then
        major=$(clang -dumpversion 2>/dev/null | cut -d. -f1)
    else
        major=$(apt-cache depends clang 2>/dev/null |
                sed -n 's/^ *Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n1)
    fi
    [ -n "$major" ] || return 1
    # Older releases (bullseye) kept the runtimes in libclang-common-N-dev.
    # Neither being known means the package lists are missing: fail so the
    # caller updates them first.
    local p
    for p in "libclang-rt-$major-dev" "libclang-common-$major-dev"; do
        if apt-cache show "$p" >/dev/null 2>&1; then echo "$p"; return 0; fi
    done
    return 1
}

rt_pkg=$(clang_rt_package || true)
if [ -z "$rt_pkg" ]; then
    system_apt_update
    rt_pkg=$(clang_rt_package) || die "cannot determine clang's runtime package"
fi
packages+=("$rt_pkg")

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    system_apt_update
    apt_get_retry -q install -y --no-install-recommends "${missing[@]}" >&2
else
    log "system packages already installed"
fi

# --- immer (header-only) from trixie -----------------------------------------
immer_root="$PYP_CACHE/immer"
immer_include="$immer_root/usr/include"
stamp="$immer_root/.from-deb"
have_immer() { [ -f "$immer_include/immer/map.hpp" ]; }

if deb_name=$(trixie_deb_filename libimmer-dev) && [ -n "$deb_name" ]; then
    if ! have_immer || ! stamp_matches "$stamp" "$deb_name"; then
        deb=$(trixie_download_deb libimmer-dev "$PYP_CACHE/debs")
        log "unpacking $deb_name into $immer_root"
        # Fresh dir so headers dropped upstream don't linger from an old version.
        rm -rf "$immer_root"
        mkdir -p "$immer_root"
        dpkg -x "$deb" "$immer_root"
        echo "$deb_name" >"$stamp"
        # The unpacked tree is what is used; keep only the current .deb.
        find "$PYP_CACHE/debs" -name 'libimmer-dev_*.deb' ! -name "$deb_name" -delete
    fi
elif have_immer; then
    # Offline re-run: the headers we already have are good enough.
    log "cannot look up libimmer-dev in Debian $TRIXIE_SUITE; keeping $(cat "$stamp" 2>/dev/null)"
else
    die "cannot fetch libimmer-dev from Debian $TRIXIE_SUITE"
fi
have_immer || die "immer/map.hpp missing under $immer_include"

log "immer include dir (use with -I):"
echo "$immer_include"
