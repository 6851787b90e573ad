#!/usr/bin/env bash
# Builds PyPersistent's C++ extension and installs the project into the
# environment of a given interpreter (normally a venv made by
# scripts/build-python.sh).
#
# Usage:
#   scripts/build-extension.sh --python PY [--tsan] [--clean]
#
#   --python PY  the interpreter whose environment receives the package; it
#                must have scikit-build-core, pybind11, cmake and ninja
#                installed (the build-python.sh venvs do), because the build
#                runs with --no-build-isolation and needs no network.
#   --tsan       build the extension with clang/clang++ and -fsanitize=thread
#                (RelWithDebInfo at -O1, asserts on, frame pointers kept).
#                Use it with the tsan interpreter only: the extension then
#                references __tsan_* symbols that only a TSan-built python
#                provides. After installing, checks that the .so really is
#                instrumented.
#   --clean      remove this flavour's build directory first.
#
# Each flavour has its own CMake build directory, build/ext-<flavour>/<wheel
# tag>, so the plain and TSan builds (and the default build/<wheel tag> of a
# plain `pip install .`) never reuse each other's objects.
#
# Prints the installed extension's path as the last stdout line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

python=""
tsan=0
clean=0
while [ $# -gt 0 ]; do
    case $1 in
        --python) python=${2:?}; shift 2 ;;
        --tsan) tsan=1; shift ;;
        --clean) clean=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$python" ] || { echo "--python is required" >&2; usage; }
[ -x "$python" ] || python=$(command -v "$python") || die "no such interpreter: $python"

flavour=plain
[ "$tsan" -eq 1 ] && flavour=tsan

# Python processes that are only tools here (pip, the checks below) must not
# fail or flood the log on CPython's own TSan reports.
quiet_tsan_env=()
if [ "$tsan" -eq 1 ]; then
    quiet_tsan_env=(env "TSAN_OPTIONS=report_bugs=0 handle_segv=0")
fi
pyrun() { "${quiet_tsan_env[@]}" "$python" "$@"; }

if ! out=$(pyrun -c 'import sys' 2>&1); then
    if grep -q 'unexpected memory mapping' <<<"$out"; then
        die "TSan runtime aborted at start-up (unexpected memory mapping): run 'sysctl -w vm.mmap_rnd_bits=28' as root and retry"
    fi
    die "$python does not start: $out"
fi

# The tsan build must go into a TSan interpreter: CPython's configure records
# --with-thread-sanitizer as -fsanitize=thread in CFLAGS/LDFLAGS.
if [ "$tsan" -eq 1 ]; then
    cfg=$(pyrun -c 'import sysconfig; print(sysconfig.get_config_var("CONFIG_ARGS") or "")')
    grep -q -- '--with-thread-sanitizer' <<<"$cfg" ||
        die "$python was not configured --with-thread-sanitizer; a TSan extension cannot load into it"
    command -v clang >/dev/null && command -v clang++ >/dev/null ||
        die "clang/clang++ not found: run scripts/install-system-deps.sh"
fi

pyrun -c 'import scikit_build_core, pybind11' 2>/dev/null ||
    die "$python lacks scikit-build-core/pybind11 (make it with scripts/build-python.sh)"

tag=$(pyrun -c 'import sys, sysconfig
abi = sysconfig.get_config_var("abiflags") or ""
print(f"cp{sys.version_info[0]}{sys.version_info[1]}{abi}")')
build_dir="build/ext-$flavour/$tag"
if [ "$clean" -eq 1 ]; then
    log "removing $build_dir"
    rm -rf "${root:?}/$build_dir"
fi

pip_args=(-m pip install --no-build-isolation --no-deps --force-reinstall -q
          -C "build-dir=$build_dir")
build_env=()
if [ "$tsan" -eq 1 ]; then
    # RelWithDebInfo rather than the project's Release: its flags variable is
    # replaced whole, so no -O3/-DNDEBUG sneaks in after ours. Asserts stay on.
    # No explicit runtime link: clang leaves __tsan_* undefined in a shared
    # object and the TSan python provides them (one runtime for both sides).
    tsan_flags="-fsanitize=thread -g -O1 -fno-omit-frame-pointer"
    pip_args+=(
        -C cmake.build-type=RelWithDebInfo
        -C "cmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=$tsan_flags"
        -C "cmake.define.CMAKE_C_FLAGS_RELWITHDEBINFO=$tsan_flags"
        -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread"
        -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=thread"
        # pybind11 turns on LTO for non-debug builds; keep the instrumented
        # objects as compiled.
        -C "cmake.define.CMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF"
    )
    build_env=(CC=clang CXX=clang++)
fi

log "building the $flavour extension for $python in $build_dir"
started=$SECONDS
(cd "$root" && env "${build_env[@]}" "${quiet_tsan_env[@]}" "$python" "${pip_args[@]}" .) >&2 ||
    die "pip install failed"
log "installed in $((SECONDS - started)) s"

so=$(cd / && pyrun -c 'import pypersistent._pypersistent as m; print(m.__file__)') ||
    die "the installed package does not import"

# Captured first: `nm | grep -q` under pipefail fails when grep exits early.
undefined=$(nm -D --undefined-only "$so") || die "nm failed on $so"
if [ "$tsan" -eq 1 ]; then
    n=$(grep -c ' __tsan_' <<<"$undefined" || true)
    grep -q ' __tsan_func_entry$' <<<"$undefined" ||
        die "$so has no __tsan_func_entry reference: it is not compiled with -fsanitize=thread"
    log "instrumented: $so references $n __tsan_* symbols"
    # PyGILState_Check reads a runtime-wide flag that creating a subinterpreter writes without a
    # lock, so TSan reports any call of it made while another thread creates an interpreter.
    # pybind11 calls it only in builds without NDEBUG (this one); src/ keeps away from those
    # calls (src/CMakeLists.txt, src/module.cpp). Fail here rather than intermittently under TSan.
    if grep -q ' PyGILState_Check$' <<<"$undefined"; then
        die "$so calls PyGILState_Check (a pybind11 debug check): see src/CMakeLists.txt"
    fi
elif grep -q ' __tsan_' <<<"$undefined"; then
    die "$so references __tsan_* symbols but this is the plain build (stale build dir? try --clean)"
fi
echo "$so"
