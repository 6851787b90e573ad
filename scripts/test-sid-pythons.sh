#!/usr/bin/env bash
# Builds PyPersistent's extension for CPython 3.14 and 3.15 and runs the pytest suite on each,
# in a Debian sid chroot. Neither version exists on bookworm/trixie and their source packages
# are gone from sid, but sid's binary packages (python3.14, python3.15 and their -dev, GIL
# builds) work in a chroot with sid's own libc.
#
# Usage (as root: debootstrap, mount and chroot need it):
#   scripts/test-sid-pythons.sh [--versions "3.14 3.15"] [--jobs N] [--refresh] [--rebuild]
#                               [--prepare-only] [-- PYTEST_ARGS...]
#
#   --versions V  space-separated CPython versions to test (default "3.14 3.15"); a version
#                 that fails to build or test does not stop the others
#   --jobs N      pytest -n N (default: nproc)
#   --refresh     apt-get update/upgrade inside the cached chroot and re-resolve the venvs
#   --rebuild     delete the cached chroot and make it again
#   --prepare-only  make (or reuse) the chroot, its packages and the venvs, then exit 0 without
#                 copying the sources, building or testing (scripts/setup-machine.sh uses it)
#   PYTEST_ARGS   replace the default pytest selection (".", i.e. all of tests/)
#
# Cache (override the root with PYPERSISTENT_CACHE, as build-python.sh does):
#   ~/.cache/pypersistent/debootstrap/   sid's debootstrap, unpacked (not installed: the host's
#                                        dpkg and /etc/apt are never touched)
#   ~/.cache/pypersistent/sid-chroot/    the chroot; .pypersistent/ in it holds the stamps
#                                        (base system done; apt packages done; one per venv)
# A chroot whose stamps match is reused as is: a second run needs no apt and no pip network
# (only the extension is rebuilt, incrementally, from the current working tree).
#
# Inside the chroot the working tree (git ls-files: tracked and untracked-not-ignored files)
# is copied to /work/pypersistent on every run; its build/ directory is kept between runs so
# CMake recompiles only what changed. The extension is built by scripts/build-extension.sh
# (no build isolation) into /opt/pypersistent/venv-X.Y, which holds pytest & co. from PyPI.
# /proc, /dev (with /dev/pts, /dev/shm) are mounted for the run; on any exit, Ctrl-C and
# SIGTERM included, processes left in the chroot are stopped and everything is unmounted.
# apt inside the chroot does not check Release files' Valid-Until (the mirror may be a
# snapshot); pip there uses the host's CA bundle (copied in on every run) and proxy variables.
#
# Host needs: wget, gpgv and debian-archive-keyring (for debootstrap; the last two come with
# scripts/install-system-deps.sh), git, tar, util-linux. Network: Debian's mirror (the host's
# own, see lib-trixie-apt.sh) and PyPI, on the first run only.
#
# Exit status: 0 if every version built and passed; 1 otherwise (a summary line per version
# is printed last).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
# shellcheck source=scripts/lib-trixie-apt.sh
. "$here/lib-trixie-apt.sh"
trixie_use_suite sid   # private apt state for sid on the host (only to fetch debootstrap)

versions="3.14 3.15"
jobs=$(nproc)
refresh=0
rebuild=0
prepare_only=0
pytest_args=(.)

while [ $# -gt 0 ]; do
    case $1 in
        --versions) versions=${2:?}; shift 2 ;;
        --jobs|-j) jobs=${2:?}; shift 2 ;;
        --refresh) refresh=1; shift ;;
        --rebuild) rebuild=1; shift ;;
        --prepare-only) prepare_only=1; shift ;;
        --) shift; [ $# -gt 0 ] && pytest_args=("$@"); break ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
for v in $versions; do
    [[ $v =~ ^3\.[0-9]+$ ]] || die "--versions: '$v' does not look like 3.14"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, mount and chroot need it)"
for tool in chroot mount umount findmnt flock tar git dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found on the host"
done

mkdir -p "$PYP_CACHE"
# Resolved, as findmnt and /proc/PID/root report it.
chroot_dir="$(cd "$PYP_CACHE" && pwd -P)/sid-chroot"
stamps="$chroot_dir/.pypersistent"
mirror=$(trixie_archive_uri)
started=$SECONDS

# Packages inside the chroot. pythonX.Y-venv brings ensurepip; g++/make/cmake/ninja build the
# extension; binutils gives nm (build-extension.sh checks the .so); ca-certificates lets pip
# verify PyPI (the host's CA bundle is copied in too, see below).
apt_packages=(ca-certificates g++ make cmake ninja-build binutils)
for v in $versions; do
    apt_packages+=("python$v" "python$v-dev" "python$v-venv")
done
apt_key="${apt_packages[*]}"

# Tools in each venv. hypothesis pinned as on 3.13t (build-python.sh): its later releases ship
# a Rust core. mypy and basedpyright only for tests/test_typing.py, which skips without them.
requirements=(pytest pytest-xdist pytest-timeout hypothesis==6.155.2 'pybind11>=3' 'scikit-build-core>=0.11')
optional_requirements=(mypy basedpyright)
venv_key="${requirements[*]} | ${optional_requirements[*]}"

# One run at a time per cache: two runs would share mounts and the chroot's apt/dpkg.
exec 9>"$PYP_CACHE/sid-chroot.lock"
flock -n 9 || { log "another test-sid-pythons.sh holds $PYP_CACHE/sid-chroot.lock; waiting"; flock 9; }

# --- mounts --------------------------------------------------------------------------------

# Mount points under DIR, deepest first.
mounts_under() {
    findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r
}
unmount_all() {
    local dir=$1 m
    for m in $(mounts_under "$dir"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
            log "WARNING: could not unmount $m"
    done
}
# Refuses to delete a directory with anything mounted inside (rm -rf would go through a bind
# mount of /dev into the host's /dev).
safe_rm_chroot() {
    local dir=$1
    [ -e "$dir" ] || return 0
    unmount_all "$dir"
    [ -z "$(mounts_under "$dir")" ] || die "still mounted under $dir: $(mounts_under "$dir" | tr '\n' ' ')"
    rm -rf --one-file-system "$dir"
}

# Processes whose root is DIR: the ones this run started in the chroot (the lock keeps other
# runs out of it).
pids_rooted_in() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$1" ] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}
stop_processes_in() {
    local pids i
    pids=$(pids_rooted_in "$1")
    [ -n "$pids" ] || return 0
    log "stopping processes still running in $1: $(echo $pids)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.5
        pids=$(pids_rooted_in "$1")
        [ -n "$pids" ] || return 0
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
}

# Long steps run in the background while the script waits: a signal then interrupts `wait`
# at once and the traps below run (bash defers traps while a foreground command runs).
step_pid=""
bg_wait() {
    "$@" &
    step_pid=$!
    local rc=0
    wait "$step_pid" || rc=$?
    step_pid=""
    return "$rc"
}

# kill_tree PID: PID and its descendants (host-side ones too, such as debootstrap).
kill_tree() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -TERM "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$? dir
    trap - EXIT INT TERM
    if [ -n "$step_pid" ]; then kill_tree "$step_pid"; fi
    for dir in "$chroot_dir" "$chroot_dir.new"; do   # .new: debootstrap mounts its own /proc
        [ -d "$dir" ] || continue
        stop_processes_in "$dir"
        unmount_all "$dir"
        [ -z "$(mounts_under "$dir")" ] ||
            log "WARNING: still mounted: $(mounts_under "$dir" | tr '\n' ' ')"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

mount_chroot() {
    local dir=$1
    unmount_all "$dir"   # leftovers of a run that was killed hard
    mkdir -p "$dir/proc" "$dir/dev" "$dir/sys"
    mount -t proc proc "$dir/proc"
    # rbind brings /dev/pts and /dev/shm (multiprocessing needs a tmpfs there); rslave keeps
    # unmounts inside from reaching the host.
    mount --rbind /dev "$dir/dev"
    mount --make-rslave "$dir/dev"
}

# The host's name resolution and CA bundle (which may hold a proxy's CA that Debian's
# ca-certificates lacks), refreshed on every run.
copy_host_files() {
    local dir=$1
    rm -f "$dir/etc/resolv.conf"   # may be a dangling symlink
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
    [ -r /etc/hosts ] && cp -L /etc/hosts "$dir/etc/hosts"
    mkdir -p "$dir/etc/ssl/certs"
    if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
        cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/host-ca-bundle.crt"
    else
        rm -f "$dir/etc/ssl/certs/host-ca-bundle.crt"
    fi
}

# in_chroot CMD...: a clean environment; proxies pass through, pip uses the host's CA bundle.
in_chroot() {
    local env_vars=(
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-120}"
        PIP_ROOT_USER_ACTION=ignore
    )
    if [ -s "$chroot_dir/etc/ssl/certs/host-ca-bundle.crt" ]; then
        env_vars+=(PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt)
    fi
    local v
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [ -n "${!v:-}" ] && env_vars+=("$v=${!v}")
    done
    chroot "$chroot_dir" /usr/bin/env -i "${env_vars[@]}" "$@"
}

# --- debootstrap ----------------------------------------------------------------------------

# sid's debootstrap unpacked into the cache (it is a shell script plus data); prints its dir.
get_debootstrap() {
    local dest="$PYP_CACHE/debootstrap" deb name
    name=$(trixie_deb_filename debootstrap) && [ -n "$name" ] ||
        die "cannot look up debootstrap in Debian sid (is $mirror reachable?)"
    if ! stamp_matches "$dest/.from-deb" "$name" || [ ! -x "$dest/usr/sbin/debootstrap" ]; then
        deb=$(trixie_download_deb debootstrap "$PYP_CACHE/debs")
        rm -rf "$dest"
        mkdir -p "$dest"
        dpkg-deb -x "$deb" "$dest"
        echo "$name" >"$dest/.from-deb"
        find "$PYP_CACHE/debs" -name 'debootstrap_*.deb' ! -name "$name" -delete
        log "unpacked $name into $dest"
    fi
    printf '%s\n' "$dest"
}

make_base_system() {
    local new="$chroot_dir.new" dbs t0=$SECONDS
    for tool in wget gpgv; do
        command -v "$tool" >/dev/null || die "$tool not found on the host (debootstrap needs it)"
    done
    dbs=$(get_debootstrap)
    safe_rm_chroot "$new"
    log "debootstrap --variant=minbase sid into $new from $mirror"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts=()
    [ -r "$keyring" ] && opts+=(--keyring="$keyring")
    if ! DEBOOTSTRAP_DIR="$dbs/usr/share/debootstrap" \
            "$dbs/usr/sbin/debootstrap" --variant=minbase "${opts[@]}" \
            sid "$new" "$mirror" >"$PYP_CACHE/sid-debootstrap.log" 2>&1; then
        tail -n 30 "$PYP_CACHE/sid-debootstrap.log" >&2
        [ -r "$new/debootstrap/debootstrap.log" ] && tail -n 30 "$new/debootstrap/debootstrap.log" >&2
        die "debootstrap failed; logs: $PYP_CACHE/sid-debootstrap.log, $new/debootstrap/debootstrap.log"
    fi
    mkdir -p "$new/.pypersistent"
    echo "debootstrap sid $mirror $(date -u +%FT%TZ)" >"$new/.pypersistent/base.stamp"
    safe_rm_chroot "$chroot_dir"
    mv "$new" "$chroot_dir"
    log "base system ready in $((SECONDS - t0)) s"
}

# --- provisioning -----------------------------------------------------------------------------

provision_apt() {
    local t0=$SECONDS out
    # No recommends; sources pointing at the host's mirror. Valid-Until is not checked: a
    # mirror that is a snapshot (or a host clock ahead of it) serves a "expired" sid Release.
    printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
        'Acquire::Check-Valid-Until "false";' >"$chroot_dir/etc/apt/apt.conf.d/99pypersistent"
    echo "deb $mirror sid main" >"$chroot_dir/etc/apt/sources.list"
    log "apt inside the chroot: ${apt_packages[*]}"
    if ! out=$(in_chroot apt-get -q update 2>&1); then
        printf '%s\n' "$out" | tail -n 20 >&2
        die "apt-get update inside the chroot failed"
    fi
    if [ "$refresh" -eq 1 ]; then
        in_chroot apt-get -q -y dist-upgrade >&2 || die "apt-get dist-upgrade inside the chroot failed"
    fi
    if ! out=$(in_chroot apt-get -q -y install "${apt_packages[@]}" 2>&1); then
        printf '%s\n' "$out" | tail -n 40 >&2
        local p
        for p in "${apt_packages[@]}"; do
            in_chroot apt-cache policy "$p" 2>&1 | sed 's/^/    /' >&2
        done
        die "apt-get install inside the chroot failed (apt's output and each package's policy above)"
    fi
    in_chroot apt-get -q clean
    echo "$apt_key" >"$stamps/apt.stamp"
    log "packages installed in $((SECONDS - t0)) s"
}

# make_venv V: /opt/pypersistent/venv-V with the test tools, unless its stamp matches.
make_venv() {
    local v=$1 venv=/opt/pypersistent/venv-$1 stamp="$stamps/venv-$1.stamp" t0=$SECONDS
    if [ "$refresh" -eq 0 ] && stamp_matches "$stamp" "$venv_key" &&
       in_chroot test -x "$venv/bin/python"; then   # a symlink into the chroot's /usr/bin
        return 0
    fi
    log "venv for $v: $venv"
    rm -f "$stamp"
    rm -rf "${chroot_dir:?}$venv"
    in_chroot "python$v" -m venv "$venv" || die "python$v -m venv failed (is python$v-venv installed?)"
    in_chroot "$venv/bin/python" -m pip install -q --upgrade pip >&2 ||
        die "pip upgrade in the $v venv failed (is PyPI reachable from the chroot?)"
    in_chroot "$venv/bin/python" -m pip install -q "${requirements[@]}" >&2 ||
        die "pip install ${requirements[*]} failed for Python $v"
    local r
    for r in "${optional_requirements[@]}"; do
        in_chroot "$venv/bin/python" -m pip install -q "$r" >&2 ||
            log "WARNING: optional $r does not install on Python $v; the tests that need it skip"
    done
    echo "$venv_key" >"$stamp"
    log "venv for $v ready in $((SECONDS - t0)) s"
}

# The working tree into /work/pypersistent (build/ kept; tar keeps mtimes, so an unchanged file
# is not recompiled).
sync_sources() {
    local dest="$chroot_dir/work/pypersistent"
    mkdir -p "$dest"
    find "$dest" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
    (cd "$root" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null --no-recursion -T - -cf -) | tar -xf - -C "$dest" ||
        die "copying the working tree into the chroot failed"
}

# --- main -------------------------------------------------------------------------------------

[ "$rebuild" -eq 1 ] && { log "--rebuild: removing $chroot_dir"; safe_rm_chroot "$chroot_dir"; }
unmount_all "$chroot_dir"
if [ ! -f "$stamps/base.stamp" ]; then
    [ -e "$chroot_dir" ] && log "$chroot_dir is incomplete (no base stamp); making it again"
    bg_wait make_base_system
else
    log "reusing $chroot_dir ($(cat "$stamps/base.stamp"))"
fi

mount_chroot "$chroot_dir"
copy_host_files "$chroot_dir"
# Every package installed (whatever an earlier run with other --versions installed too)?
apt_missing() {
    local status
    status=$(in_chroot dpkg-query -W -f='${db:Status-Status}\n' "${apt_packages[@]}" 2>/dev/null || true)
    [ "$(grep -cx installed <<<"$status")" -ne "${#apt_packages[@]}" ]
}
if [ "$refresh" -eq 1 ] || [ ! -f "$stamps/apt.stamp" ] || apt_missing; then
    bg_wait provision_apt
fi
for v in $versions; do bg_wait make_venv "$v"; done
log "chroot ready after $((SECONDS - started)) s"
if [ "$prepare_only" -eq 1 ]; then
    log "--prepare-only: Python $versions ready in $chroot_dir; not building or testing"
    exit 0
fi

sync_sources
failed=()
summary=()
for v in $versions; do
    venv=/opt/pypersistent/venv-$v
    printf '\n===== Python %s (sid chroot) =====\n' \
        "$(in_chroot "$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    t0=$SECONDS
    if ! bg_wait in_chroot bash -c "cd /work/pypersistent && nice bash scripts/build-extension.sh --python $venv/bin/python" >/dev/null; then
        failed+=("$v")
        summary+=("Python $v: BUILD FAILED")
        continue
    fi
    log "Python $v: extension built in $((SECONDS - t0)) s"
    t0=$SECONDS
    out_file=$(mktemp)
    rc=0
    run_pytest() {
        in_chroot bash -c 'cd /work/pypersistent/tests && exec nice "$@"' _ \
            "$venv/bin/python" -m pytest -q -n "$jobs" -p no:cacheprovider "${pytest_args[@]}" 2>&1 |
            tee "$out_file"
        return "${PIPESTATUS[0]}"
    }
    bg_wait run_pytest || rc=$?
    result=$(grep -E '[0-9]+ (passed|failed|errors?|skipped)' "$out_file" | tail -n 1 || true)
    rm -f "$out_file"
    summary+=("Python $v: pytest rc=$rc in $((SECONDS - t0)) s: ${result:-no summary line}")
    [ "$rc" -eq 0 ] || failed+=("$v")
done

printf '\n'
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED on: ${failed[*]} (total $((SECONDS - started)) s)"
    exit 1
fi
log "all passed on: $versions (total $((SECONDS - started)) s)"
