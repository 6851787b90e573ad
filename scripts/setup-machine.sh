#!/usr/bin/env bash
# Machine set-up for PyPersistent's tests: installs and builds everything scripts/test.sh needs
# before it can test, so that the test steps only test. scripts/test.sh runs it as its first
# step; run it on its own to provision a machine (a CI image, a fresh container) ahead of time.
#
#   1. system packages from Debian (compilers, clang's sanitizer runtimes, googletest, CPython's
#      build dependencies) and trixie's header-only immer: scripts/install-system-deps.sh;
#   2. the free-threaded CPython 3.13t and the ThreadSanitizer 3.13t built from Debian's
#      upstream tarball, each with a venv of test tools: scripts/build-python.sh --flavour ft,
#      then --flavour tsan;
#   3. a Debian sid chroot with CPython 3.14 and 3.15 and a venv of test tools for each:
#      scripts/test-sid-pythons.sh --prepare-only (needs root: debootstrap, mount, chroot).
#
# Idempotent and cached: each step keeps stamps next to what it made (under
# ~/.cache/pypersistent, or $PYPERSISTENT_CACHE) and skips the work while they match, so on a
# machine already set up the whole script takes seconds and needs no network. A fresh machine
# needs Debian's mirror and PyPI, and builds CPython twice (the better part of an hour on
# 2 cores).
#
# Usage:
#   scripts/setup-machine.sh [--packages-only] [--no-sid] [--jobs N]
#
#   --packages-only  step 1 only (all that `scripts/test.sh --quick` needs)
#   --no-sid         skip step 3 (no root, or no CPython 3.14/3.15 wanted)
#   --jobs N         parallel jobs for the CPython builds (default: nproc)
#
# Prints what it set up (the immer include dir, the interpreters, the chroot) last on stdout;
# the steps' own output goes to stderr. Exits non-zero on the first step that fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

packages_only=0
sid=1
jobs=$(nproc)
while [ $# -gt 0 ]; do
    case $1 in
        --packages-only) packages_only=1; shift ;;
        --no-sid) sid=0; shift ;;
        --jobs|-j) jobs=${2:?--jobs needs a value}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

t0=$SECONDS
summary=()

step "set-up: system packages (apt) and immer headers"
immer_include=$(bash "$here/install-system-deps.sh" | tail -n 1)
summary+=("immer headers:        $immer_include")

if [ "$packages_only" -eq 0 ]; then
    step "set-up: free-threaded CPython 3.13t (build or reuse)"
    ft_python=$(bash "$here/build-python.sh" --flavour ft --jobs "$jobs" | tail -n 1)
    summary+=("CPython 3.13t:        $ft_python")

    step "set-up: ThreadSanitizer CPython 3.13t (build or reuse)"
    tsan_python=$(bash "$here/build-python.sh" --flavour tsan --jobs "$jobs" | tail -n 1)
    summary+=("CPython 3.13t (TSan): $tsan_python")

    if [ "$sid" -eq 1 ]; then
        step "set-up: CPython 3.14 and 3.15 in a Debian sid chroot (make or reuse)"
        bash "$here/test-sid-pythons.sh" --prepare-only
        summary+=("CPython 3.14, 3.15:   Debian sid chroot under ${PYPERSISTENT_CACHE:-$HOME/.cache/pypersistent}/sid-chroot")
    fi
fi

log "machine set-up done in $((SECONDS - t0)) s"
printf '%s\n' "${summary[@]}"
