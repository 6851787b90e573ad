#!/usr/bin/env bash
# Runs the Python thread stress suite (stress/) on the free-threaded CPython 3.13
# ("ft") and/or on the free-threaded + ThreadSanitizer one ("tsan").
#
# Usage:
#   scripts/run-python-stress.sh [--short|--long] [--flavour ft|tsan|both]
#                                [--no-build] [--known-bugs] [-- PYTEST_ARGS...]
#
#   --short        (default) the whole suite in ~2 minutes under TSan on 2 cores
#   --long         ~20x the operations, up to 2 minutes per threaded phase:
#                  10-15 minutes on ft, up to an hour under TSan (stress/README.md)
#   --flavour F    ft, tsan or both (default both, ft first)
#   --no-build     use the extension already installed in the venv
#   --known-bugs   also run the known_bug reproductions (they fail until fixed)
#
# Per flavour it (1) makes sure the interpreter and its venv exist
# (scripts/build-python.sh; instant when cached), (2) installs the extension
# into that venv (scripts/build-extension.sh: a plain build for ft, clang +
# -fsanitize=thread for tsan), (3) runs `python -m pytest stress
# -p no:cacheprovider` with pytest-timeout; ft spreads the tests over 2 xdist
# workers, tsan runs them in one process with -s so reports show at once.
#
# TSan runs with halt_on_error=1 and stress/tsan-suppressions.txt (CPython's own
# known races only). The run fails if pytest fails OR if "WARNING:
# ThreadSanitizer" (or ERROR:/FATAL:) appears anywhere in the output (kept in
# build/stress-logs/<flavour>-<mode>.log).
#
# If the TSan interpreter aborts at start-up with "FATAL: ThreadSanitizer:
# unexpected memory mapping", the kernel's mmap randomisation is too high for
# LLVM 14's runtime: as root this script runs `sysctl -w vm.mmap_rnd_bits=28`
# and retries; otherwise run that command yourself (or `setarch -R`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

mode=short
flavours=(ft tsan)
build=1
known_bugs=0
pytest_extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --short) mode=short; shift ;;
        --long) mode=long; shift ;;
        --flavour|--flavor)
            case ${2:-} in
                ft|tsan) flavours=("$2") ;;
                both) flavours=(ft tsan) ;;
                *) die "--flavour must be ft, tsan or both" ;;
            esac
            shift 2 ;;
        --no-build) build=0; shift ;;
        --known-bugs) known_bugs=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; pytest_extra=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

if [ "$mode" = short ]; then timeout=300; else timeout=3600; fi
supp="$root/stress/tsan-suppressions.txt"
[ -f "$supp" ] || die "missing $supp"
logdir="$root/build/stress-logs"
mkdir -p "$logdir"

# TSAN_OPTIONS: what build-python.sh says the interpreter needs, with our
# suppressions file (a superset of CPython's) instead of CPython's.
tsan_options() {
    local opt opts=()
    for opt in $("$here/build-python.sh" --print-tsan-options); do
        case $opt in suppressions=*) ;; *) opts+=("$opt") ;; esac
    done
    opts+=(halt_on_error=1 "suppressions=$supp" second_deadlock_stack=1 history_size=4)
    echo "${opts[*]}"
}

# Starts the tsan python once; lowers mmap entropy and retries on the known abort.
check_tsan_starts() {
    local py=$1 out
    if out=$(TSAN_OPTIONS="$TSAN_OPTIONS" "$py" -c 'import sys' 2>&1); then return 0; fi
    if grep -q 'unexpected memory mapping' <<<"$out"; then
        log "TSan aborted on a memory mapping; setting vm.mmap_rnd_bits=28 (was $(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?'))"
        as_root sysctl -w vm.mmap_rnd_bits=28 >&2 ||
            die "cannot lower vm.mmap_rnd_bits: run 'sysctl -w vm.mmap_rnd_bits=28' as root and retry"
        out=$(TSAN_OPTIONS="$TSAN_OPTIONS" "$py" -c 'import sys' 2>&1) && return 0
    fi
    die "the tsan interpreter does not start: $out"
}

run_flavour() {
    local flavour=$1 py args logf rc started
    log "== $flavour, $mode =="
    py=$("$here/build-python.sh" --flavour "$flavour" | tail -n1)
    [ -x "$py" ] || die "no $flavour interpreter (scripts/build-python.sh --flavour $flavour)"

    args=(-m pytest stress -p no:cacheprovider "--stress-mode=$mode" "--timeout=$timeout" -ra --durations=10)
    [ "$known_bugs" -eq 1 ] && args+=(--run-known-bugs)
    if [ "$flavour" = tsan ]; then
        export TSAN_OPTIONS
        TSAN_OPTIONS=$(tsan_options)
        check_tsan_starts "$py"
        if [ "$build" -eq 1 ]; then
            "$here/build-extension.sh" --python "$py" --tsan >/dev/null
        fi
        # one process, output unbuffered and uncaptured: a TSan report is printed
        # (and the run halted) at the moment it happens
        args+=(-s -p no:xdist)
    else
        unset TSAN_OPTIONS
        if [ "$build" -eq 1 ]; then
            "$here/build-extension.sh" --python "$py" >/dev/null
        fi
        args+=(-n 2)
    fi

    logf="$logdir/$flavour-$mode.log"
    log "running: $py ${args[*]} ${pytest_extra[*]}  (log: $logf)"
    started=$SECONDS
    set +e
    (cd "$root" && PYPERSISTENT_STRESS=$mode PYTHONFAULTHANDLER=1 "$py" "${args[@]}" "${pytest_extra[@]}") 2>&1 | tee "$logf"
    rc=${PIPESTATUS[0]}
    set -e
    log "$flavour: pytest exit status $rc after $((SECONDS - started)) s"
    if grep -Eq '(WARNING|ERROR|FATAL): ThreadSanitizer' "$logf"; then
        log "$flavour: ThreadSanitizer reported $(grep -Ec '(WARNING|ERROR|FATAL): ThreadSanitizer' "$logf") problem(s); see $logf"
        [ "$rc" -ne 0 ] || rc=66
    fi
    return "$rc"
}

failed=()
for f in "${flavours[@]}"; do
    run_flavour "$f" || failed+=("$f")
done
if [ "${#failed[@]}" -gt 0 ]; then
    die "stress suite failed for: ${failed[*]}"
fi
log "stress suite passed ($mode): ${flavours[*]}"
