#!/usr/bin/env bash
# Checks that other CMake projects can use PyPersistent's core in each supported way:
#   (0) the README's install command, with GoogleTest hidden: it must not need it;
#   (a) installed: `cmake --install` into a temporary prefix, then examples/cpp_core_only built
#       on its own against it with find_package(pypersistent CONFIG) and CMAKE_PREFIX_PATH;
#   (b) add_subdirectory(<checkout>) and (c) FetchContent_Declare(SOURCE_DIR <checkout>) from a
#       tiny consumer project (tests/cmake_consumers/consumer), no network.
# Builds and runs each program; fails on any error.
#
#   tests/cmake_consumers/run.sh [WORK_DIR]      (default: build/cmake-consumers; wiped first)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-$root/build/cmake-consumers}
case $work in /*) ;; *) work=$PWD/$work ;; esac

log() { printf '[cmake_consumers] %s\n' "$*"; }
die() { printf '[cmake_consumers] ERROR: %s\n' "$*" >&2; exit 1; }

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
# The version, as CMakeLists.txt's project() writes it (its only place).
version=$(sed -n 's/^project(pypersistent VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
[ -n "$version" ] || die "no version in $root/CMakeLists.txt"
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}

# Output goes to a log per step; shown only when the step fails.
step() {
    local name=$1; shift
    if ! "$@" >"$work/$name.log" 2>&1; then
        cat "$work/$name.log" >&2
        die "$name failed: $*"
    fi
}

log "(0) the README's install command on a machine without GoogleTest (tests are off unless asked)"
step readme-install-configure cmake -S "$root" -B "$work/readme-install" -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON
step readme-install cmake --install "$work/readme-install" --prefix "$work/readme-prefix"
[ -f "$work/readme-prefix/include/pypersistent/persistent_vector.hpp" ] || die "the README's install installed no headers"
grep -q "cmake -S . -B build && cmake --install build --prefix" "$root/README.md" ||
    die "README.md's install command changed: update this check"

log "(a) install into $prefix"
step project-configure cmake -S "$root" -B "$work/project" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DPYPERSISTENT_BUILD_TESTS=OFF -DPYPERSISTENT_BUILD_STRESS=OFF -DPYPERSISTENT_INSTALL=ON
step project-build cmake --build "$work/project"
step project-install cmake --install "$work/project" --prefix "$prefix"
for f in include/pypersistent/pypersistent.hpp include/pypersistent/python_bridge.hpp \
         share/cmake/pypersistent/pypersistentConfig.cmake \
         share/cmake/pypersistent/pypersistentConfigVersion.cmake \
         share/cmake/pypersistent/pypersistentTargets.cmake; do
    [ -f "$prefix/$f" ] || die "not installed: $f"
done

log "(a) examples/cpp_core_only on its own, find_package(pypersistent CONFIG) from $prefix"
step core-only-configure cmake -S "$root/examples/cpp_core_only" -B "$work/core-only" "${gen[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
grep -q "pypersistent $version from $prefix/share/cmake/pypersistent" "$work/core-only-configure.log" ||
    die "find_package did not take the package from $prefix: $(grep pypersistent "$work/core-only-configure.log")"
step core-only-build cmake --build "$work/core-only"
# The headers must come from the prefix, not from the checkout.
grep -q -- "$prefix/include" "$work/core-only/compile_commands.json" || die "compiled without $prefix/include"
if grep -q -- "-I$root/include\|-isystem $root/include" "$work/core-only/compile_commands.json"; then
    die "compiled against the checkout's include/ instead of the installed headers"
fi
"$work/core-only/cpp_core_only" || die "cpp_core_only (installed package) failed"
(cd "$work/core-only" && ctest --output-on-failure >"$work/core-only-ctest.log" 2>&1) ||
    { cat "$work/core-only-ctest.log" >&2; die "ctest of the standalone cpp_core_only failed"; }

# A version the package does not satisfy must be refused (SameMinorVersion).
mkdir -p "$work/version-check"
cat >"$work/version-check/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.18)
project(version_check NONE)
find_package(pypersistent $major.$((minor + 1)) CONFIG QUIET)
if(pypersistent_FOUND)
  message(FATAL_ERROR "$version accepted for a request of $major.$((minor + 1))")
endif()
find_package(pypersistent $((major + 1)).0 CONFIG QUIET)
if(pypersistent_FOUND)
  message(FATAL_ERROR "$version accepted for a request of $((major + 1)).0")
endif()
find_package(pypersistent $major.$minor CONFIG REQUIRED)
CMAKE
step version-check cmake -S "$work/version-check" -B "$work/version-check/build" -DCMAKE_PREFIX_PATH="$prefix"

for mode in add_subdirectory fetchcontent; do
    log "($([ $mode = add_subdirectory ] && echo b || echo c)) consumer project with $mode(<checkout>)"
    extra=()
    [ $mode = fetchcontent ] && extra=(-DFETCHCONTENT_FULLY_DISCONNECTED=ON)
    step "$mode-configure" cmake -S "$here/consumer" -B "$work/$mode" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DCONSUMER_MODE=$mode -DPYPERSISTENT_SOURCE_DIR="$root" "${extra[@]}"
    step "$mode-build" cmake --build "$work/$mode"
    "$work/$mode/consumer" || die "consumer ($mode) failed"
    # A subproject installs nothing of PyPersistent's.
    step "$mode-install" cmake --install "$work/$mode" --prefix "$work/$mode-prefix"
    [ ! -e "$work/$mode-prefix/include/pypersistent" ] || die "$mode: the subproject installed its headers"
done
log "all CMake consumers passed"
