#!/usr/bin/env bash
# Builds a free-threaded CPython (plain, or under ThreadSanitizer) from Debian's
# upstream tarball and sets up a test venv for it. PyPersistent needs these
# because pyenv offers only GIL builds here and python.org is unreachable; the
# orig tarball of Debian's pythonX.Y source package is the pristine upstream
# release (we apply none of Debian's patches).
#
# Usage:
#   scripts/build-python.sh [--flavour ft|tsan] [--version 3.13] [--suite trixie]
#                           [--rebuild] [--jobs N]
#       Build (or reuse) and print the venv's python as the LAST stdout line.
#   scripts/build-python.sh --print-python [--flavour F] [--version V]
#       Only print that path; exit 1 if it has not been built.
#   scripts/build-python.sh --print-tsan-options [--version V]
#       Print a TSAN_OPTIONS value for running the tsan python (suppressions
#       for CPython's own known races). Exit 1 if not built.
#
# Flavours:  ft   = --disable-gil                           (default cc, gcc)
#            tsan = --disable-gil --with-thread-sanitizer   (clang: extensions
#                   tested under it must also be built with clang and
#                   -fsanitize=thread so both sides share one TSan runtime)
#
# Layout (override the root with PYPERSISTENT_CACHE):
#   ~/.cache/pypersistent/python/<version>-<flavour>/   installed interpreter
#   ~/.cache/pypersistent/venv/<version>-<flavour>/     venv with test tools
# A stamp file holding the configure flags sits in each; when it matches, the
# step is skipped, so re-runs are instant and need no network.
#
# Needs the packages from scripts/install-system-deps.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
# shellcheck source=scripts/lib-trixie-apt.sh
. "$here/lib-trixie-apt.sh"

flavour=ft
version=3.13
suite=$TRIXIE_SUITE
mode=build
rebuild=0
jobs=$(nproc)

while [ $# -gt 0 ]; do
    case $1 in
        --flavour|--flavor) flavour=${2:?}; shift 2 ;;
        --version) version=${2:?}; shift 2 ;;
        --suite) suite=${2:?}; shift 2 ;;
        --jobs|-j) jobs=${2:?}; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --print-python) mode=print-python; shift ;;
        --print-tsan-options) mode=print-tsan; flavour=tsan; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[[ $version =~ ^3\.[0-9]+$ ]] || die "--version must look like 3.13 (got '$version')"
trixie_use_suite "$suite"

configure_flags=(--disable-gil)
case $flavour in
    ft) cc=${CC:-cc} cxx=${CXX:-c++} ;;
    tsan)
        configure_flags+=(--with-thread-sanitizer)
        # CPython's own TSan CI uses clang; gcc's libtsan would also clash with
        # the clang runtime our C++ extension is sanitized with.
        cc=clang cxx=clang++ ;;
    *) die "--flavour must be ft or tsan (got '$flavour')" ;;
esac

name="$version-$flavour"
prefix="$PYP_CACHE/python/$name"
venv="$PYP_CACHE/venv/$name"
venv_python="$venv/bin/python"
build_stamp="$prefix/.build-stamp"
venv_stamp="$venv/.venv-stamp"
tsan_supp="$prefix/share/tsan-suppressions.txt"

# Tools for the project's tests and builds. Pure-Python or abi-independent
# wheels only (see --only-binary below), so nothing needs a compiler or Rust.
requirements=(
    pytest
    pytest-xdist
    pytest-timeout
    # Later releases have a Rust core shipped as abi3 wheels, which a
    # free-threaded 3.13 cannot load; pip would fall back to the sdist and need
    # crates.io, which is unreachable here. This is the last pure-Python one.
    hypothesis==6.155.2
    pytest-run-parallel
    # tests/test_typing.py skips without it. Releases after 1.18.2 need librt,
    # which has no free-threaded wheel, so pip would backtrack to this anyway.
    mypy==1.18.2
    'pybind11>=3'
    scikit-build-core
    cmake
    ninja
)

# Everything that decides the interpreter's binary: version, flags, compilers.
# Suite/tarball are recorded in build-info.txt but not keyed, so a cache hit
# needs no network.
build_key="python=$version configure=${configure_flags[*]} CC=$cc CXX=$cxx"
venv_key="$build_key | ${requirements[*]}"

# Run-time options for the tsan interpreter. handle_segv=0 because CPython
# installs its own SIGSEGV handler (faulthandler); the suppressions cover
# races CPython itself knows about (Tools/tsan in its source tree).
tsan_options() {
    printf 'suppressions=%s handle_segv=0' "$tsan_supp"
}

if [ "$mode" = print-python ]; then
    if stamp_matches "$venv_stamp" "$venv_key" && [ -x "$venv_python" ]; then
        echo "$venv_python"; exit 0
    fi
    log "not built: run scripts/build-python.sh --flavour $flavour --version $version"
    exit 1
fi
if [ "$mode" = print-tsan ]; then
    [ -f "$tsan_supp" ] || { log "tsan python $version not built"; exit 1; }
    tsan_options; echo; exit 0
fi

# Runs the interpreter under construction. TSan reports from CPython itself
# during build/pip would turn exit codes into 66 and fail steps that are not
# what we are testing, so those runs report nothing.
run_quiet_tsan() {
    if [ "$flavour" = tsan ]; then
        TSAN_OPTIONS="report_bugs=0 handle_segv=0" "$@"
    else
        "$@"
    fi
}

# TSan's runtime reserves fixed address ranges; kernels with more mmap
# randomisation (vm.mmap_rnd_bits=32, default on some newer distros/kernels)
# make older runtimes such as LLVM 14's abort at start-up with
# "FATAL: ThreadSanitizer: unexpected memory mapping". The kernel setting can
# come back after a reboot, so this runs before a build and whenever the built
# interpreter fails to start. Lowering the entropy to 28 (the usual default)
# needs root; returns non-zero if OUTPUT shows another problem or it can't.
lower_mmap_entropy_for_tsan() {
    grep -q 'unexpected memory mapping' <<<"$1" || return 1
    log "TSan aborted on a memory mapping; lowering vm.mmap_rnd_bits to 28 (was $(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?'))"
    as_root sysctl -w vm.mmap_rnd_bits=28 >&2 || {
        log "cannot set it: run 'sysctl -w vm.mmap_rnd_bits=28' as root, or run the python under 'setarch -R'"
        return 1
    }
}

# Proves clang's TSan runtime links and starts here before spending minutes on
# a build.
check_tsan_runtime() {
    command -v clang >/dev/null || die "clang not found: run scripts/install-system-deps.sh"
    local tmp out
    tmp=$(mktemp -d)
    printf '#include <pthread.h>\nstatic void *f(void *p){return p;}\nint main(void){pthread_t t;pthread_create(&t,0,f,0);return pthread_join(t,0);}\n' >"$tmp/t.c"
    clang -fsanitize=thread -o "$tmp/t" "$tmp/t.c" 2>"$tmp/err" ||
        die "clang -fsanitize=thread cannot link (missing clang runtime package? run scripts/install-system-deps.sh): $(cat "$tmp/err")"
    if ! out=$("$tmp/t" 2>&1); then
        lower_mmap_entropy_for_tsan "$out" || die "TSan runtime does not work here: $out"
        out=$("$tmp/t" 2>&1) || die "TSan still fails after lowering vm.mmap_rnd_bits: $out"
    fi
    rm -rf "$tmp"
}

build_python() {
    [ "$flavour" = tsan ] && check_tsan_runtime
    command -v "$cc" >/dev/null || die "compiler $cc not found: run scripts/install-system-deps.sh"

    local tarball build_root src logf started
    log "fetching the python$version source package from Debian $TRIXIE_SUITE"
    tarball=$(trixie_download_orig "python$version" "$PYP_CACHE/src")
    started=$SECONDS

    build_root="$PYP_CACHE/build/$name"
    logf="$PYP_CACHE/build/$name.log"
    rm -rf "$build_root"
    mkdir -p "$build_root"
    log "unpacking ${tarball##*/}"
    tar -xf "$tarball" -C "$build_root"
    src=$(find "$build_root" -mindepth 1 -maxdepth 1 -type d | head -n1)
    [ -x "$src/configure" ] || die "unexpected tarball layout in $tarball"

    # The old install must go first: make install would merge into it.
    rm -rf "$prefix"
    log "building CPython $version ($flavour) with ${jobs} jobs; log: $logf"
    (
        cd "$src"
        export CC="$cc" CXX="$cxx"
        # No ensurepip at install time: the venv step bootstraps pip itself.
        ./configure --prefix="$prefix" --without-ensurepip "${configure_flags[@]}"
        run_quiet_tsan make -j"$jobs"
        run_quiet_tsan make install
    ) >"$logf" 2>&1 || {
        tail -n 40 "$logf" >&2
        die "CPython build failed; full log: $logf (sources kept in $build_root)"
    }

    if [ "$flavour" = tsan ]; then
        mkdir -p "${tsan_supp%/*}"
        local supp="$src/Tools/tsan/suppressions_free_threading.txt"
        [ -f "$supp" ] || supp="$src/Tools/tsan/suppressions.txt"
        if [ -f "$supp" ]; then cp "$supp" "$tsan_supp"; else : >"$tsan_supp"; fi
    fi
    {
        echo "tarball: ${tarball##*/} (Debian $TRIXIE_SUITE source package python$version)"
        echo "configure: --prefix=$prefix --without-ensurepip ${configure_flags[*]}"
        echo "CC=$cc ($("$cc" --version | head -n1))"
        echo "built: $(date -u +%FT%TZ) in $((SECONDS - started)) s"
    } >"$prefix/build-info.txt"
    echo "$build_key" >"$build_stamp"
    cp "$logf" "$prefix/build.log"
    rm -rf "$build_root" "$logf"
    log "built CPython $version ($flavour) in $((SECONDS - started)) s"
}

base_python() {
    # Free-threaded installs are named pythonX.Yt; fall back to the plain name.
    local p
    for p in "$prefix/bin/python${version}t" "$prefix/bin/python${version}"; do
        [ -x "$p" ] && { echo "$p"; return 0; }
    done
    return 1
}

if [ "$rebuild" -eq 0 ] && stamp_matches "$build_stamp" "$build_key" && base_python >/dev/null; then
    log "reusing CPython $version ($flavour) in $prefix"
else
    build_python
fi
base=$(base_python) || die "no python$version executable in $prefix/bin"

# PYTHON_GIL=1 in the caller's environment would re-enable the GIL and make a
# good build look broken.
gil_enabled() { run_quiet_tsan env -u PYTHON_GIL "$base" -c 'import sys; print(sys._is_gil_enabled())' 2>&1; }
if ! gil=$(gil_enabled); then
    { [ "$flavour" = tsan ] && lower_mmap_entropy_for_tsan "$gil" && gil=$(gil_enabled); } ||
        die "$base does not start: $gil"
fi
[ "$gil" = False ] || die "$base has the GIL enabled (sys._is_gil_enabled() = $gil)"

if [ "$rebuild" -eq 0 ] && stamp_matches "$venv_stamp" "$venv_key" && [ -x "$venv_python" ]; then
    log "reusing venv $venv"
else
    log "creating venv $venv"
    rm -rf "$venv"
    run_quiet_tsan "$base" -m venv "$venv"
    # --only-binary: on a free-threaded interpreter any sdist would need a
    # toolchain (possibly Rust) and the network beyond PyPI; fail fast instead.
    run_quiet_tsan "$venv_python" -m pip install -q --only-binary=:all: "${requirements[@]}" >&2 ||
        die "pip install into $venv failed"
    echo "$venv_key" >"$venv_stamp"
fi

if [ "$flavour" = tsan ]; then
    log "run it with: TSAN_OPTIONS='$(tsan_options)'"
fi
echo "$venv_python"
