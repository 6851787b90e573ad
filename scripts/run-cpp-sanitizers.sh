#!/usr/bin/env bash
# Builds the C++ stress program (and the C++ unit tests, when tests/cpp exists) with clang under
# ThreadSanitizer and under AddressSanitizer + UndefinedBehaviorSanitizer, and runs them.
#
# Usage: scripts/run-cpp-sanitizers.sh [--short|--long] [--tsan-only|--asan-only] [--seed S]
#   --short  (default) the stress program's CI-sized run (a few seconds under TSan on 2 cores)
#   --long   the full 16-thread stress with many more operations (a few minutes on 2 cores)
#
# Build dirs: build-sanitizers/tsan and build-sanitizers/asan (RelWithDebInfo, but with
# assertions left on). Logs: build-sanitizers/<name>/*.log.
# Environment: CXX (default clang++), PYPERSISTENT_STRESS_ARGS (extra stress arguments),
# SANITIZER_JOBS (build parallelism).
#
# Exits non-zero on any sanitizer report, failed check, or build failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
LOG_PREFIX=sanitizers

mode=short
which=both
seed=1
while [ $# -gt 0 ]; do
    case "$1" in
        --short) mode=short ;;
        --long) mode=long ;;
        --tsan-only) which=tsan ;;
        --asan-only) which=asan ;;
        --seed) shift; seed=${1:?--seed needs a value} ;;
        -h|--help) usage 0 2>&1 ;;
        *) echo "run-cpp-sanitizers.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# ---- toolchain --------------------------------------------------------------------------------

export CXX=${CXX:-clang++}
export CC=${CC:-clang}

# A clang whose sanitizer runtimes are installed: compile and link a trivial program with both
# sanitizer sets.
have_sanitizer_runtimes() {
    command -v "$CXX" >/dev/null 2>&1 || return 1
    local tmp rc=0
    tmp=$(mktemp -d)
    printf 'int main() { return 0; }\n' >"$tmp/t.cpp"
    "$CXX" -fsanitize=thread "$tmp/t.cpp" -o "$tmp/t1" >/dev/null 2>&1 &&
        "$CXX" -fsanitize=address,undefined "$tmp/t.cpp" -o "$tmp/t2" >/dev/null 2>&1 || rc=1
    rm -rf "$tmp"
    return $rc
}

if ! have_sanitizer_runtimes; then
    [ "$(id -u)" -eq 0 ] || die "$CXX with sanitizer runtimes not found; install clang and libclang-rt-<N>-dev"
    log "installing clang and its sanitizer runtimes (Debian $(cat /etc/debian_version 2>/dev/null || echo '?'))"
    # apt_get_retry (lib.sh) waits while another process (another helper, unattended-upgrades)
    # holds the dpkg lock.
    apt_get_retry update -q >&2 || die "apt-get update failed"
    apt_get_retry install -y -q --no-install-recommends clang llvm >&2 || die "apt-get install clang llvm failed"
    major=$(clang -dumpversion | cut -d. -f1)
    # bookworm: libclang-rt-14-dev; trixie: libclang-rt-19-dev; bullseye: libclang-common-N-dev.
    rt=""
    for p in "libclang-rt-$major-dev" "libclang-common-$major-dev"; do
        if apt-cache show "$p" >/dev/null 2>&1; then rt=$p; break; fi
    done
    [ -n "$rt" ] || die "no sanitizer runtime package found for clang $major"
    apt_get_retry install -y -q --no-install-recommends "$rt" >&2 || die "apt-get install $rt failed"
    have_sanitizer_runtimes || die "$CXX still cannot link sanitizer programs"
fi
# llvm-symbolizer gives reports function names and lines.
if sym=$(command -v llvm-symbolizer 2>/dev/null); then
    export ASAN_SYMBOLIZER_PATH=$sym TSAN_SYMBOLIZER_PATH=$sym UBSAN_SYMBOLIZER_PATH=$sym
fi

generator=()
if command -v ninja >/dev/null 2>&1 && ninja --version >/dev/null 2>&1; then generator=(-G Ninja); fi
jobs=${SANITIZER_JOBS:-$(nproc 2>/dev/null || echo 2)}

# ---- what to run ------------------------------------------------------------------------------

have_unit_tests=0
[ -f "$root/tests/cpp/CMakeLists.txt" ] && have_unit_tests=1

if [ "$mode" = short ]; then
    stress_args=(--short --seed "$seed")
    atom_args=(--short)
else
    # The full 16-thread stress: 10x the short run's operations over twice the keys.
    stress_args=(--threads 16 --ops 1000 --keys 512 --seed "$seed")
    atom_args=()
fi
# shellcheck disable=SC2206
stress_args+=(${PYPERSISTENT_STRESS_ARGS:-})

# Common runtime options. halt_on_error makes the first report fatal; exitcode keeps reports
# distinguishable from failed checks (exit 1).
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 exitcode=66 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:exitcode=66${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

# ---- helpers ----------------------------------------------------------------------------------

configure_and_build() {  # name sanitizer-flags targets...
    local name=$1 flags=$2
    shift 2
    local dir="$root/build-sanitizers/$name"
    local tests=OFF
    [ "$have_unit_tests" -eq 1 ] && tests=ON
    log "configuring $name ($flags) in $dir"
    # RelWithDebInfo without -DNDEBUG: the core's assertions stay on.
    cmake -S "$root" -B "$dir" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER="$CXX" \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g" \
        -DCMAKE_CXX_FLAGS="$flags -fno-omit-frame-pointer" \
        -DCMAKE_EXE_LINKER_FLAGS="$flags" \
        -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
        -DPYPERSISTENT_BUILD_TESTS=$tests \
        -DPYPERSISTENT_BUILD_STRESS=ON \
        -DPYPERSISTENT_BUILD_BENCHMARKS=OFF \
        -DPYPERSISTENT_BUILD_PYTHON=OFF \
        -DPYPERSISTENT_INSTALL=OFF >"$dir.configure.log" 2>&1 ||
        { cat "$dir.configure.log" >&2; die "configuring $name failed"; }
    log "building $name: $*"
    cmake --build "$dir" --parallel "$jobs" --target "$@" ||
        die "building $name failed"
}

# Runs a sanitized program, retrying once after lowering vm.mmap_rnd_bits when TSan refuses to
# start. Output goes to the terminal and to $log.
run_sanitized() {  # log-file command...
    local logf=$1
    shift
    local rc=0
    "$@" 2>&1 | tee "$logf" || rc=${PIPESTATUS[0]}
    # Kernels with high ASLR entropy (vm.mmap_rnd_bits > 28, the default on recent kernels) place
    # mappings where TSan's (and sometimes ASan's) shadow layout expects nothing, and the runtime
    # aborts with "FATAL: ThreadSanitizer: unexpected memory mapping" before main(). Lowering
    # the entropy to 28 bits fixes it (clang >= 18 re-execs itself without ASLR instead). We
    # are root in CI containers; elsewhere, say what to run.
    if [ "$rc" -ne 0 ] && grep -q "unexpected memory mapping\|Shadow memory range interleaves" "$logf"; then
        log "sanitizer runtime rejected the memory layout; setting vm.mmap_rnd_bits=28 and retrying"
        if sysctl -w vm.mmap_rnd_bits=28 >&2 || echo 28 >/proc/sys/vm/mmap_rnd_bits; then
            rc=0
            "$@" 2>&1 | tee "$logf" || rc=${PIPESTATUS[0]}
        else
            log "could not set vm.mmap_rnd_bits (run: sudo sysctl vm.mmap_rnd_bits=28)"
        fi
    fi
    # Belt and braces: any report fails the run even if the exit status did not say so.
    if [ "$rc" -eq 0 ] && grep -q "WARNING: ThreadSanitizer\|ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:\|SUMMARY: .*Sanitizer" "$logf"; then
        log "sanitizer report found in $logf"
        rc=66
    fi
    return "$rc"
}

failures=()
timings=()

run_step() {  # label log-file command...
    local label=$1
    shift
    local start end rc=0
    start=$(date +%s.%N)
    run_sanitized "$@" || rc=$?
    end=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    timings+=("$label: ${secs}s (exit $rc)")
    if [ "$rc" -ne 0 ]; then
        failures+=("$label (exit $rc, log $1)")
        log "FAILED: $label (exit $rc)"
    else
        log "ok: $label (${secs}s)"
    fi
}

mkdir -p "$root/build-sanitizers"

# ---- ThreadSanitizer --------------------------------------------------------------------------

if [ "$which" != asan ]; then
    tsan_targets=(cpp_map_stress cpp_atom_stress cpp_sorted_map_stress cpp_shared_cell_stress)
    [ "$have_unit_tests" -eq 1 ] && tsan_targets+=(test_vector test_set test_sorted_map test_shared_map)
    configure_and_build tsan "-fsanitize=thread" "${tsan_targets[@]}"
    dir="$root/build-sanitizers/tsan"
    run_step "tsan: cpp_map_stress $mode" "$dir/cpp_map_stress.$mode.log" \
        "$dir/stress/cpp_map_stress" "${stress_args[@]}"
    run_step "tsan: cpp_atom_stress $mode" "$dir/cpp_atom_stress.$mode.log" \
        "$dir/stress/cpp_atom_stress" "${atom_args[@]}"
    # The sorted map's and the interpreter-neutral named cell's stress (--short in both modes:
    # their long runs are by hand).
    run_step "tsan: cpp_sorted_map_stress" "$dir/cpp_sorted_map_stress.log" \
        "$dir/stress/cpp_sorted_map_stress" --short
    run_step "tsan: cpp_shared_cell_stress" "$dir/cpp_shared_cell_stress.log" \
        "$dir/stress/cpp_shared_cell_stress" --short
    if [ "$have_unit_tests" -eq 1 ]; then
        # 16 threads sharing sorted maps / neutral maps and deriving versions.
        run_step "tsan: test_sorted_map threads" "$dir/test_sorted_map.threads.log" \
            "$dir/tests/cpp/test_sorted_map" --gtest_filter='SortedMapThreads.*'
        run_step "tsan: test_shared_map threads" "$dir/test_shared_map.threads.log" \
            "$dir/tests/cpp/test_shared_map" --gtest_filter='SharedMapThreads.*'
        # The vector's and the set's many-thread unit tests (the others are single-threaded).
        run_step "tsan: test_vector threads" "$dir/test_vector.threads.log" \
            "$dir/tests/cpp/test_vector" --gtest_filter='VectorThreads.*'
        # The set's: 16 threads sharing sets and deriving versions, the set algebra included.
        run_step "tsan: test_set threads" "$dir/test_set.threads.log" \
            "$dir/tests/cpp/test_set" --gtest_filter='SetThreads.*'
    fi
fi

# ---- AddressSanitizer + UndefinedBehaviorSanitizer -------------------------------------------

if [ "$which" != tsan ]; then
    asan_flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    configure_and_build asan "$asan_flags" cpp_map_stress cpp_atom_stress
    dir="$root/build-sanitizers/asan"
    run_step "asan+ubsan: cpp_map_stress $mode" "$dir/cpp_map_stress.$mode.log" \
        "$dir/stress/cpp_map_stress" "${stress_args[@]}"
    run_step "asan+ubsan: cpp_atom_stress $mode" "$dir/cpp_atom_stress.$mode.log" \
        "$dir/stress/cpp_atom_stress" "${atom_args[@]}"
    if [ "$have_unit_tests" -eq 1 ]; then
        # Everything else the project defines (the unit tests); the stress target is up to date.
        log "building asan: all targets (unit tests)"
        if cmake --build "$dir" --parallel "$jobs"; then
            run_step "asan+ubsan: ctest -L unit" "$dir/ctest-unit.log" \
                ctest --test-dir "$dir" -L unit -j "$jobs" --output-on-failure --no-tests=error --timeout 600
        else
            failures+=("asan+ubsan: building the unit tests")
        fi
    else
        log "tests/cpp/CMakeLists.txt not found: no unit tests to run"
    fi
fi

# ---- summary ----------------------------------------------------------------------------------

log "summary ($mode):"
for t in "${timings[@]}"; do log "  $t"; done
if [ "${#failures[@]}" -gt 0 ]; then
    for f in "${failures[@]}"; do log "FAILED: $f"; done
    exit 1
fi
log "all clean"
