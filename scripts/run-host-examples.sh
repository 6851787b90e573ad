#!/usr/bin/env bash
# Builds and runs the C++ host examples, failing on any error:
#   1. examples/cpp_core_only, examples/embed and examples/shared_config inside the project
#      build (-DPYPERSISTENT_BUILD_EXAMPLES=ON), run by CTest; the embedding hosts on the
#      default Python;
#   2. tests/cmake_consumers/run.sh: the core installed + find_package, add_subdirectory and
#      FetchContent consumers;
#   3. examples/embed and examples/shared_config built on their own for each other interpreter:
#      the free-threaded 3.13t, and the ThreadSanitizer 3.13t (hosts compiled with clang++
#      -fsanitize=thread, extension built with scripts/build-extension.sh --tsan, TSAN_OPTIONS
#      from build-python.sh plus halt_on_error=1; embed in stress mode; shared_config with
#      stress/tsan-suppressions.txt, which has CPython's report on creating subinterpreters).
#
# Usage:
#   scripts/run-host-examples.sh [--short|--long] [--python PY]... [--bare-snapshots]
#
#   --short           (default) the embed hosts' default run; under TSan a stress run of
#                     4 x 10,000 swaps with 3 C++ readers. About 2-4 minutes on 2 cores once
#                     the interpreters and extensions exist.
#   --long            every embed host in stress mode (4 x 25,000 swaps: every entry of the
#                     100,000 modified once, 3 readers), TSan included.
#   --python PY       after the default Python (python3 on PATH, used by the project build),
#                     run the embed host with PY (repeatable) instead of the ft and tsan builds
#                     of scripts/build-python.sh. A TSan build (configured
#                     --with-thread-sanitizer) gets the TSan treatment. A venv's python must
#                     provide pybind11 and scikit-build-core; pypersistent is (re)installed into
#                     it when the sources are newer than its copy; an interpreter outside a venv
#                     gets a venv of its own under build/host-examples instead (with pybind11
#                     and scikit-build-core from PyPI when the interpreter lacks them).
#   --bare-snapshots  build free-threaded hosts with PYPERSISTENT_EMBED_BARE_SNAPSHOTS=ON
#                     (atom_snapshot without any thread state; see examples/embed/main.cpp),
#                     readers spinning (--spin), each such run repeated up to 5 times.
#
# Build trees go to build/host-examples/ and are reused between runs.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
LOG_PREFIX=run-host-examples

mode=short
pythons=()
bare=OFF
while [ $# -gt 0 ]; do
    case $1 in
        --short) mode=short; shift ;;
        --long) mode=long; shift ;;
        --python) pythons+=("${2:?--python needs a path}"); shift 2 ;;
        --bare-snapshots) bare=ON; shift ;;
        -h|--help) usage 0 2>&1 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

out=$root/build/host-examples
mkdir -p "$out"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
jobs=$(nproc)
started=$SECONDS

# ctest -V in DIR (extra ctest arguments after it), output kept in LOG; prints what the tests
# printed; returns ctest's status.
run_ctest() {
    local dir=$1 log=$2 rc=0; shift 2
    ctest --test-dir "$dir" -V --timeout 600 "$@" >"$log" 2>&1 || rc=$?
    sed -n 's/^[0-9]*: //p' "$log" |
        grep -v '^Test command\|^Working Directory\|^Test timeout\|^Environment variables\|^ *TSAN_OPTIONS=' |
        tail -n 150 || true
    grep -E '^[0-9]+% tests passed|tests failed|\*\*\*' "$log" || true
    return $rc
}

# Quiet TSan for interpreters used as tools (pip, sysconfig queries at configure time).
quiet_tsan="report_bugs=0 handle_segv=0"

is_tsan_python() {
    TSAN_OPTIONS=$quiet_tsan "$1" -c 'import sysconfig, sys
sys.exit(0 if "--with-thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or "") else 1)' 2>/dev/null
}
python_tag() {
    TSAN_OPTIONS=$quiet_tsan "$1" -c 'import sys, sysconfig
print("cp%d%d%s" % (sys.version_info[0], sys.version_info[1], sysconfig.get_config_var("abiflags") or ""))'
}

# Whether pypersistent in PY's environment is older than the sources (or missing).
extension_stale() {
    local py=$1 pkg so
    pkg=$(TSAN_OPTIONS=$quiet_tsan "$py" -c 'import importlib.util as u
s = u.find_spec("pypersistent")
print(s.submodule_search_locations[0] if s and s.submodule_search_locations else "")') || return 0
    [ -n "$pkg" ] || return 0
    so=$(ls "$pkg"/_pypersistent*.so 2>/dev/null | head -n 1 || true)
    [ -n "$so" ] || return 0
    [ -n "$(find src include python cmake CMakeLists.txt pyproject.toml -type f -newer "$so" -print -quit)" ]
}

# PY (a venv's python or not) -> the python to build the host with, pypersistent installed.
prepare_python() {
    local py=$1 tag venv
    tag=$(python_tag "$py")
    if is_tsan_python "$py"; then
        if extension_stale "$py"; then
            log "installing the TSan extension into $py (scripts/build-extension.sh --tsan)"
            bash scripts/build-extension.sh --python "$py" --tsan >&2 || die "build-extension.sh --tsan failed"
        fi
        echo "$py"
        return
    fi
    if ! "$py" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
        # Not a venv: leave its site-packages alone and use a venv of our own that sees them
        # (pybind11 and scikit-build-core for the --no-build-isolation install).
        venv=$out/venv-$tag
        if [ ! -x "$venv/bin/python" ]; then
            log "creating $venv (--system-site-packages) for $py"
            "$py" -m venv --system-site-packages "$venv" >&2
        fi
        py=$venv/bin/python
        if ! "$py" -c 'import pybind11, scikit_build_core' 2>/dev/null; then
            # A bare interpreter (a pyenv build, say): the build requirements come from PyPI.
            log "installing pybind11 and scikit-build-core into $venv"
            "$py" -m pip install -q "pybind11>=3.0" "scikit-build-core>=0.11" ninja >&2 || die "pip install of the build requirements failed"
        fi
    fi
    if extension_stale "$py"; then
        local build_dir=build/$([ "$tag" = cp313t ] && echo ft || echo "$tag")-embed
        log "installing pypersistent into $py (build dir $build_dir)"
        "$py" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
            -C "build-dir=$build_dir" . >&2 || die "pip install into $py failed"
    fi
    "$py" -c 'import pybind11, pypersistent._pypersistent' ||
        die "$py: pybind11 or pypersistent does not import"
    echo "$py"
}

embed_args() {  # $1: tsan or plain
    local args
    if [ "$1" = tsan ]; then
        [ "$mode" = long ] && args="--stress" || args="--stress --steps 10000"
    else
        [ "$mode" = long ] && args="--stress" || args=""
    fi
    # Bare snapshots: readers that never yield hit the give-back race far more often.
    [ "$bare" = ON ] && args="$args --spin"
    echo $args
}

# ---- interpreters --------------------------------------------------------------------------
default_python=$(python3 -c 'import sys; print(sys.executable)')
if [ ${#pythons[@]} -eq 0 ]; then
    step "interpreters: default $default_python, free-threaded and TSan 3.13t (build or reuse)"
    ft_python=$(bash scripts/build-python.sh --print-python --flavour ft 2>/dev/null | tail -n 1) ||
        ft_python=$(bash scripts/build-python.sh --flavour ft | tail -n 1)
    tsan_python=$(bash scripts/build-python.sh --print-python --flavour tsan 2>/dev/null | tail -n 1) ||
        tsan_python=$(bash scripts/build-python.sh --flavour tsan | tail -n 1)
    others=("$ft_python" "$tsan_python")
else
    others=("${pythons[@]}")
fi

# ---- 1. the project build with the examples ------------------------------------------------
step "prepare $default_python"
default_python=$(prepare_python "$default_python")
step "project build with PYPERSISTENT_BUILD_EXAMPLES=ON (Python: $default_python)"
cmake -S . -B "$out/project" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DPYPERSISTENT_BUILD_TESTS=OFF -DPYPERSISTENT_BUILD_STRESS=OFF -DPYPERSISTENT_BUILD_EXAMPLES=ON \
    -DPython_EXECUTABLE="$default_python" -DPYPERSISTENT_EMBED_TEST_ARGS="$(embed_args plain | tr ' ' ';')" \
    -DPYPERSISTENT_EMBED_BARE_SNAPSHOTS=$bare >"$out/project-configure.log" 2>&1 ||
    { cat "$out/project-configure.log"; die "configure failed"; }
grep -q "embed host: Python" "$out/project-configure.log" ||
    { cat "$out/project-configure.log"; die "examples/embed was skipped (no Python/pybind11?)"; }
grep -q "shared_config host: Python" "$out/project-configure.log" ||
    { cat "$out/project-configure.log"; die "examples/shared_config was skipped (no Python?)"; }
cmake --build "$out/project" -j "$jobs"
step "cpp_core_only (ctest)"
run_ctest "$out/project/examples/cpp_core_only" "$out/cpp_core_only.test.log" -E cmake_consumers ||
    die "cpp_core_only failed"
step "embed host on $("$default_python" -c 'import sys; print(sys.version.split()[0])') (ctest)"
run_ctest "$out/project/examples/embed" "$out/embed-default.test.log" ||
    die "embed host on the default Python failed"
step "shared_config host on the default Python (ctest)"
run_ctest "$out/project/examples/shared_config" "$out/shared_config-default.test.log" ||
    die "shared_config host on the default Python failed"

# ---- 2. CMake consumers --------------------------------------------------------------------
step "CMake consumers: install + find_package, add_subdirectory, FetchContent"
bash tests/cmake_consumers/run.sh "$out/cmake-consumers"

# ---- 3. the embed host on the other interpreters -------------------------------------------
for py in "${others[@]}"; do
    [ -x "$py" ] || die "no such interpreter: $py"
    flavour=plain
    is_tsan_python "$py" && flavour=tsan
    step "prepare $py ($flavour)"
    py=$(prepare_python "$py")
    tag=$(python_tag "$py")
    dir=$out/embed-$tag-$flavour
    cfg=(-S examples/embed -B "$dir" "${gen[@]}" -DPython_EXECUTABLE="$py"
         -DCMAKE_DISABLE_FIND_PACKAGE_pypersistent=ON   # the checkout's core, not an installed one
         -DPYPERSISTENT_EMBED_TEST_ARGS="$(embed_args $flavour | tr ' ' ';')"
         -DPYPERSISTENT_EMBED_BARE_SNAPSHOTS=$bare)
    env=()
    if [ "$flavour" = tsan ]; then
        tsan_options="$(bash scripts/build-python.sh --print-tsan-options) halt_on_error=1"
        cfg+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo
              "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-fsanitize=thread -g -O1 -fno-omit-frame-pointer"
              -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread
              "-DPYPERSISTENT_EMBED_TEST_ENV=TSAN_OPTIONS=$tsan_options")
        env=(env "TSAN_OPTIONS=$quiet_tsan")
    else
        cfg+=(-DCMAKE_BUILD_TYPE=Release)
    fi
    step "embed host on $py ($flavour): build"
    "${env[@]}" cmake "${cfg[@]}" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; die "configure failed"; }
    grep "embed host:" "$dir.configure.log" || true
    "${env[@]}" cmake --build "$dir" -j "$jobs"
    step "embed host on $py ($flavour): run ($(embed_args $flavour | sed 's/^$/default/'))"
    repeat=()
    # Bare snapshots: a run passes now and then even with the give-back race; repeat.
    [ "$bare" = ON ] && repeat=(--repeat until-fail:5)
    if ! run_ctest "$dir" "$dir.test.log" "${repeat[@]}"; then
        grep -q 'unexpected memory mapping' "$dir.test.log" &&
            log "TSan needs lower mmap entropy: sysctl -w vm.mmap_rnd_bits=28 (as root)"
        die "embed host on $py ($flavour) failed"
    fi

    # examples/shared_config: subinterpreters sharing a named cell with the host.
    dir=$out/shared_config-$tag-$flavour
    cfg=(-S examples/shared_config -B "$dir" "${gen[@]}" -DPython_EXECUTABLE="$py"
         -DCMAKE_DISABLE_FIND_PACKAGE_pypersistent=ON)
    if [ "$flavour" = tsan ]; then
        # The project's suppressions (a superset of CPython's): they hold CPython 3.13's own
        # reports on creating a subinterpreter while others run (gh-129817) and on destroying
        # one while another imports a builtin module (interpreter_clear, gh-140257's family).
        sc_options=$(for opt in $tsan_options; do case $opt in suppressions=*) ;; *) echo "$opt" ;; esac; done)
        sc_options="$(echo $sc_options) suppressions=$root/stress/tsan-suppressions.txt"
        cfg+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo
              "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-fsanitize=thread -g -O1 -fno-omit-frame-pointer"
              -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread
              "-DPYPERSISTENT_SHARED_CONFIG_TEST_ENV=TSAN_OPTIONS=$sc_options")
    else
        cfg+=(-DCMAKE_BUILD_TYPE=Release)
    fi
    step "shared_config host on $py ($flavour): build and run"
    "${env[@]}" cmake "${cfg[@]}" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; die "configure failed"; }
    grep "shared_config host:" "$dir.configure.log" || true
    "${env[@]}" cmake --build "$dir" -j "$jobs"
    run_ctest "$dir" "$dir.test.log" || die "shared_config host on $py ($flavour) failed"
done

step "all host examples passed in $((SECONDS - started))s"
