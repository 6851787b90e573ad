#!/usr/bin/env bash
# Checks that the C++ core, its unit tests and the stress programs compile warning-free with GCC
# and clang at -Wall -Wextra -Wpedantic -Werror, in C++17 and C++20 (without GNU extensions:
# -std=c++NN, not gnu++NN). For each compiler and standard it
#   (a) compiles every public header of include/pypersistent/ on its own (-fsyntax-only), so each
#       one includes what it uses; python_bridge.hpp with Python's headers (as system headers);
#   (b) configures and builds tests/cpp and stress/ with CMake + Ninja (building only: the tests
#       are run by scripts/test.sh's ctest step).
# and prints one summary line per configuration. Build dirs: build/warn-<compiler>-<std>; the
# compiler output of a failed step is in its log there (and its first lines are printed).
#
# Usage: scripts/check-warnings.sh [--jobs N] [--builds LIST]
#   --builds LIST  which configurations also get step (b), e.g. "gcc:20,clang:17" (default: all;
#                  the headers of step (a) are always checked in all four). scripts/test.sh
#                  passes "gcc:20,clang:17": both compilers and both standards, in half the
#                  time; `--long` runs all four.
# Environment: GXX (default g++), CLANGXX (default clang++), PYTHON (default python3, only to
# find Python's headers), PYTHONS_MORE (more Pythons whose headers python_bridge.hpp is checked
# against), BUILD_TYPE (default Release: GCC's flow warnings such as
# -Wmaybe-uninitialized only appear with optimisation).
# Needs the packages scripts/install-system-deps.sh installs (g++, clang, googletest, ninja and
# cmake). A missing compiler is an error, not a skip. Exits non-zero if any configuration warns.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

jobs=$(nproc)
builds=all
while [ $# -gt 0 ]; do
    case "$1" in
        --jobs|-j) shift; jobs=${1:?--jobs needs a value} ;;
        --builds) shift; builds=${1:?--builds needs a value} ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-warnings.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

warn_flags=(-Wall -Wextra -Wpedantic -Werror)
build_type=${BUILD_TYPE:-Release}
started=$(date +%s)

# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
LOG_PREFIX=check-warnings

for tool in cmake ninja; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install it: scripts/install-system-deps.sh / pip)"
done

# name:executable pairs; both must exist.
compilers=("gcc:${GXX:-g++}" "clang:${CLANGXX:-clang++}")
for c in "${compilers[@]}"; do
    exe=${c#*:}
    command -v "$exe" >/dev/null 2>&1 ||
        die "C++ compiler '$exe' (${c%%:*}) not found; install it (scripts/install-system-deps.sh installs clang) or set ${c%%:*}'s variable (GXX / CLANGXX)"
done
standards=(17 20)

# Python's include dir for python_bridge.hpp. Absent headers are reported on every summary line
# (the extension build elsewhere in scripts/test.sh needs them anyway).
python_include=""
py=${PYTHON:-python3}
if command -v "$py" >/dev/null 2>&1; then
    python_include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
fi
if [ -z "$python_include" ] || [ ! -f "$python_include/Python.h" ]; then
    log "warning: no Python.h found via $py; python_bridge.hpp is not checked"
    python_include=""
fi

# More Pythons whose headers python_bridge.hpp is also checked against (PYTHONS_MORE: executables,
# space-separated; scripts/test.sh passes its free-threaded 3.13t): its code differs by version
# (3.12's compact-int API) and build (Py_GIL_DISABLED), and one Python's headers see one variant.
# Each is checked as "python_bridge.N.hpp" (N from 1) in the summary's header count.
more_includes=0
for more_py in ${PYTHONS_MORE:-}; do
    inc=$("$more_py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
    if [ -z "$inc" ] || [ ! -f "$inc/Python.h" ]; then
        log "warning: no Python.h found via $more_py; python_bridge.hpp is not checked against it"
        continue
    fi
    more_includes=$((more_includes + 1))
    export "PYINC_$more_includes=$inc"
done

headers=()
for h in include/pypersistent/*.hpp; do headers+=("${h##*/}"); done

# check_headers CXX STD DIR: one -fsyntax-only compile per header, in parallel; prints
# "<failed> <total>".
check_headers() {
    local cxx=$1 std=$2 dir=$3 h n
    mkdir -p "$dir/headers"
    rm -f "$dir"/headers/*.log
    for ((n = 1; n <= more_includes; n++)); do
        printf '#include <pypersistent/python_bridge.hpp>\n' >"$dir/headers/python_bridge.$n.cpp"
    done
    {
        for h in "${headers[@]}"; do echo "$h"; done
        for ((n = 1; n <= more_includes; n++)); do echo "python_bridge.$n.hpp"; done
    } | while read -r h; do
        if [ "$h" = python_bridge.hpp ] && [ -z "$python_include" ]; then continue; fi
        [[ $h == python_bridge.*.hpp ]] || printf '#include <pypersistent/%s>\n' "$h" >"$dir/headers/${h%.hpp}.cpp"
        printf '%s\n' "$h"
    done | xargs -P "$jobs" -I{} bash -c '
        h={}; dir=$1; shift
        extra=()
        case $h in
            python_bridge.hpp) extra=(-isystem "$PYINC") ;;
            python_bridge.*.hpp) n=${h#python_bridge.}; var=PYINC_${n%.hpp}; extra=(-isystem "${!var}") ;;
        esac
        "$@" "${extra[@]}" "$dir/headers/${h%.hpp}.cpp" >"$dir/headers/${h%.hpp}.log" 2>&1 ||
            mv "$dir/headers/${h%.hpp}.log" "$dir/headers/${h%.hpp}.failed.log"
    ' _ "$dir" "$cxx" "-std=c++$std" "${warn_flags[@]}" -fsyntax-only -I "$root/include"
    local failed
    failed=$(find "$dir/headers" -name '*.failed.log' | wc -l)
    local total
    total=$(find "$dir/headers" -name '*.log' | wc -l)
    echo "$failed $total"
}
export PYINC=$python_include

status=0
summaries=()
for c in "${compilers[@]}"; do
    name=${c%%:*}
    cxx=$(command -v "${c#*:}")
    version=$("$cxx" -dumpfullversion -dumpversion 2>/dev/null | head -n1)
    for std in "${standards[@]}"; do
        dir="build/warn-$name-cxx$std"
        t0=$(date +%s)
        mkdir -p "$dir"

        read -r hfail htotal < <(check_headers "$cxx" "$std" "$dir")
        if [ "$hfail" -eq 0 ]; then
            hres="headers $htotal/$htotal clean"
        else
            hres="headers $hfail/$htotal FAILED"
            status=1
            for f in "$dir"/headers/*.failed.log; do
                log "$name c++$std: $(basename "$f" .failed.log).hpp:"
                head -n 30 "$f" >&2
            done
        fi
        [ -n "$python_include" ] || hres="$hres (python_bridge.hpp skipped: no Python.h)"

        # -std=c++NN exactly: CXX_STANDARD raises the targets' cxx_std_17 requirement, and
        # extensions off keeps GNU dialects out.
        blog="$dir/build.log"
        if [ "$builds" != all ] && [[ ",$builds," != *",$name:$std,"* ]]; then
            bres="build skipped (--builds)"
        elif cmake -S . -B "$dir/cmake" -G Ninja \
                -DCMAKE_BUILD_TYPE="$build_type" \
                -DCMAKE_CXX_COMPILER="$cxx" \
                -DCMAKE_CXX_STANDARD="$std" -DCMAKE_CXX_STANDARD_REQUIRED=ON -DCMAKE_CXX_EXTENSIONS=OFF \
                -DCMAKE_CXX_FLAGS="${warn_flags[*]}" \
                -DPYPERSISTENT_BUILD_TESTS=ON -DPYPERSISTENT_BUILD_STRESS=ON \
                -DPYPERSISTENT_BUILD_PYTHON=OFF -DPYPERSISTENT_BUILD_BENCHMARKS=OFF \
                -DPYPERSISTENT_BUILD_EXAMPLES=OFF >"$blog" 2>&1 &&
           nice cmake --build "$dir/cmake" -j "$jobs" -- -k 0 >>"$blog" 2>&1; then
            bres="build clean"
        else
            nerr=$(grep -c -E '(error|warning):' "$blog" || true)
            bres="build FAILED ($nerr diagnostics, see $blog)"
            status=1
            grep -E '(error|warning):' "$blog" | sort | uniq | head -n 40 >&2 || tail -n 40 "$blog" >&2
        fi
        summaries+=("$(printf '%-5s %-8s c++%s: %s; %s [%ds]' "$name" "$version" "$std" "$hres" "$bres" $(( $(date +%s) - t0 )))")
        echo "${summaries[-1]}"
    done
done

echo "check-warnings: ${#summaries[@]} configurations, $(( $(date +%s) - started ))s, $([ "$status" -eq 0 ] && echo "all clean" || echo "WARNINGS/ERRORS")"
exit "$status"
