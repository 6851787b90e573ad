#!/usr/bin/env bash
# The project's whole test run, as CI does it: C++ unit tests and stress (plain, TSan,
# ASan/UBSan), the pytest suite on the default Python and on free-threaded 3.13t (also with
# every test on several threads at once), the Python stress suite on 3.13t and under a TSan
# interpreter, the C++ host examples (embedding included), the suite on CPython 3.14 and 3.15 (sid
# chroot), manylinux wheels for every Python
# pyenv provides and for 3.13t installed and tested without a compiler, and an editable install
# (`pip install -e .`).
#
#   bash scripts/test.sh            # everything, short stress modes (CI)
#   bash scripts/test.sh --long     # the same with the long stress modes
#   bash scripts/test.sh --quick    # C++ tests and pytest on the default Python only
#
# Machine set-up is apart from testing. The first step runs scripts/setup-machine.sh, which
# provisions everything the tests need, idempotently and cached under ~/.cache/pypersistent:
# apt packages from Debian (scripts/install-system-deps.sh), the free-threaded and the TSan
# CPython 3.13t (scripts/build-python.sh) and the Debian sid chroot with CPython 3.14 and 3.15
# (scripts/test-sid-pythons.sh --prepare-only); with --quick, the packages only. On a fresh
# machine that step takes the better part of an hour; once the machine is set up, seconds and
# no network. The steps after it only build the project and test: they look up the
# interpreters and the chroot the set-up made (the project's own venvs still get their pip
# packages from PyPI). To provision a machine ahead of time, run scripts/setup-machine.sh alone.
#
# Step banners show the seconds since the run started; the scripts it calls count from the
# same start (PYPERSISTENT_STARTED, see scripts/lib.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

mode=short
quick=0
for arg in "$@"; do
    case $arg in
        --long) mode=long ;;
        --short) mode=short ;;
        --quick) quick=1 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

jobs=$(nproc)

if [ "$quick" = 1 ]; then
    step "machine set-up: packages (install or reuse)"
    bash scripts/setup-machine.sh --packages-only
else
    step "machine set-up: packages, CPython builds, sid chroot (build or reuse)"
    bash scripts/setup-machine.sh
fi

step "C++: warning-free with g++ and clang++ in C++17 and C++20 (-Wall -Wextra -Wpedantic -Werror)"
if [ "$quick" = 1 ]; then
    echo "skipped (--quick)"
else
    # python_bridge.hpp also against 3.13t's headers (3.12+ and free-threaded code paths).
    PYTHONS_MORE=$(bash scripts/build-python.sh --print-python --flavour ft)
    export PYTHONS_MORE
    if [ "$mode" = long ]; then
        bash scripts/check-warnings.sh
    else
        bash scripts/check-warnings.sh --builds gcc:20,clang:17
    fi
fi

step "C++: build, unit tests, short stress (ctest)"
cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPYPERSISTENT_BUILD_TESTS=ON -DPYPERSISTENT_BUILD_STRESS=ON >/dev/null
cmake --build build/cpp -j "$jobs"
ctest --test-dir build/cpp --output-on-failure -j "$jobs"

step "Python $(python3 -c 'import sys; print(sys.version.split()[0])') (default): install, pytest -n $jobs"
default_venv=build/venv-default
[ -x "$default_venv/bin/python" ] || python3 -m venv "$default_venv"
"$default_venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$default_venv/bin/python" -m pip install -q ".[test]" immutables basedpyright
(cd tests && "../$default_venv/bin/python" -m pytest -q -n "$jobs" -p no:cacheprovider .)

if [ "$quick" = 1 ]; then
    step "done (quick) in $(step_elapsed)s"
    exit 0
fi

step "C++ sanitizers: TSan and ASan/UBSan builds ($mode)"
bash scripts/run-cpp-sanitizers.sh "--$mode"

step "3.13t: install, pytest -n $jobs"
# Built by the set-up step; --print-python only looks it up (exit 1 if it is not there).
ft_python=$(bash scripts/build-python.sh --print-python --flavour ft)
"$ft_python" -c 'import sys; assert not sys._is_gil_enabled(), "not a free-threaded build"'
bash scripts/build-extension.sh --python "$ft_python"
(cd tests && "$ft_python" -m pytest -q -n "$jobs" -p no:cacheprovider .)

step "3.13t: every test on 4 threads at once (pytest-run-parallel)"
(cd tests && "$ft_python" -m pytest -q -p no:cacheprovider --parallel-threads=4 .)

step "Python stress suite on 3.13t and under the ThreadSanitizer 3.13t ($mode)"
bash scripts/run-python-stress.sh "--$mode" --flavour both

step "C++ hosts: core-only host, CMake consumers, embedding host on 3.11, 3.13t and TSan ($mode)"
bash scripts/run-host-examples.sh "--$mode"

step "CPython 3.14 and 3.15 in the Debian sid chroot (made by the set-up): build, pytest -n $jobs"
bash scripts/test-sid-pythons.sh --jobs "$jobs"

step "wheels for every pyenv Python (3.10-3.13) and 3.13t: build, auditwheel repair, layout, install with --no-index and no compiler, demo and tests"
bash scripts/check-wheels.sh

step "editable install (pip install -e .) on the default Python: imports come from the source tree"
editable_venv=build/venv-editable
[ -x "$editable_venv/bin/python" ] || python3 -m venv "$editable_venv"
"$editable_venv/bin/python" -m pip install -q -e . pytest
(cd tests && "../$editable_venv/bin/python" - "$root" <<'PY'
import sys
import pypersistent
from persistent_map_cpp import PersistentMap as Seed
from pypersistent import PersistentMap
root = sys.argv[1]
assert pypersistent.__file__.startswith(root + "/python/pypersistent/"), pypersistent.__file__
assert Seed is PersistentMap
assert PersistentMap({"a": 1}).set("b", 2) == {"a": 1, "b": 2}
print("editable install: pypersistent from", pypersistent.__file__)
PY
)
(cd tests && "../$editable_venv/bin/python" -m pytest -q -p no:cacheprovider test_api.py test_transient.py) | tail -n 1

step "all passed in $(step_elapsed)s"
