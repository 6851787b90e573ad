#!/usr/bin/env python3
"""Side-by-side benchmark: pypersistent.PersistentMap vs. its PyPI peers.

Libraries (each column is skipped gracefully -> "n/a" if it cannot be imported):

  ours        pypersistent.PersistentMap (this repository, installed into the running Python)
  immutables  immutables.Map
  rpds        rpds.HashTrieMap (rpds-py)
  pyrsistent  pyrsistent.pmap
  pypi-2.0    PyPI's pypersistent 2.0 (pypersistent.PersistentDict).  It has the same
              distribution/import name as this project, so it lives in its own virtual
              environment (default benchmarks/.venv-pypi-pypersistent, see --pypi-python)
              and is always measured in a subprocess running that venv's python.
  dict        plain dict, as a reference (only ops that make sense for a mutable dict).

Every (library, size, key type) combination is measured in a fresh subprocess of this
script ("--worker"), and memory is measured in further fresh subprocesses ("--mem-worker").

Usage:
  python benchmarks/bench_peers.py                 # full run -> benchmarks/results/peers.{md,json,png}
  python benchmarks/bench_peers.py --quick         # ~1-2 min -> benchmarks/results/raw/peers_quick.*
  python benchmarks/bench_peers.py --sizes 1K,100K --libs ours,immutables
  python benchmarks/bench_peers.py --report-only benchmarks/results/peers.json   # re-render
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import shlex
import string
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PYPI_PYTHON = os.path.join(HERE, ".venv-pypi-pypersistent", "bin", "python")

LIBS = ["ours", "immutables", "rpds", "pyrsistent", "pypi-2.0", "dict"]
PEERS = ["immutables", "rpds", "pyrsistent", "pypi-2.0"]  # "best peer" is chosen among these
LIB_TITLES = {
    "ours": "PersistentMap (ours)",
    "immutables": "immutables",
    "rpds": "rpds-py",
    "pyrsistent": "pyrsistent",
    "pypi-2.0": "pypersistent 2.0 (PyPI)",
    "dict": "dict",
}

SEED = 20240611
N_VARIANTS = 100           # one-key variants per timing batch
N_VARIANTS_MEM = 1000      # variants created for the memory measurement (reported per variant)
MEM_TARGET_ENTRIES = 1_000_000  # memory: build max(1, this // n) copies, for RSS resolution

# (op id, label, unit); the order is the row order of the report.
OPS = [
    ("lookup_hit", "lookup hit `m[k]`", "ns/lookup"),
    ("get_hit", "lookup hit `m.get(k)`", "ns/lookup"),
    ("lookup_miss", "lookup miss `k in m`", "ns/lookup"),
    ("insert", "persistent insert `m = m.set(k, v)`, 0 -> n", "ns/insert"),
    ("delete", "persistent delete `m = m.delete(k)`, min(n, 10K) keys", "ns/delete"),
    ("iter_keys", "iterate keys `for k in m`", "ns/entry"),
    ("iter_items", "iterate items `for k, v in m.items()`", "ns/entry"),
    ("from_dict", "from_dict (bulk constructor from a dict)", "ns/entry"),
    ("transient", "bulk build 0 -> n (transient / mutate / evolver)", "ns/entry"),
    ("equality", "`m1 == m2` (equal, built separately)", "ns/entry"),
    ("update", "`m.update(u)`, len(u) = n/100 (half new keys)", "ns/key of u"),
    ("variants", "100 one-key variants `m.set(k_i, x)` of one map", "ns/variant"),
    ("mem_entry", "memory per entry (RSS delta)", "bytes/entry"),
    ("mem_variant", "memory per one-key variant (RSS delta)", "bytes/variant"),
]
OP_IDS = [o[0] for o in OPS]
TIME_OPS = [o for o in OP_IDS if not o.startswith("mem_")]

# --------------------------------------------------------------------------------------
# Library adapters.  Each adapter gives import code (run in the worker) that defines
# EMPTY (callable -> empty map, or None), FROM_DICT (callable dict -> map), and names for
# the set/delete/update methods; plus an optional transient (bulk build) body.
# --------------------------------------------------------------------------------------

ADAPTERS = {
    "ours": dict(
        imports=(
            "import pypersistent as _mod\n"
            "from pypersistent import PersistentMap as _M\n"
            "if not hasattr(_mod, 'FREE_THREADED_BUILD'):\n"
            "    raise ImportError('imported pypersistent is not this project (PyPI one?)')\n"
            "EMPTY = _M\nFROM_DICT = _M.from_dict\n"
            "VERSION = getattr(_mod, '__version__', '?')\n"
        ),
        set="set", delete="delete", update="update",
        transient=(
            "        t = EMPTY().transient()\n"
            "        for k in ks:\n"
            "            t[k] = k\n"
            "        keep[r] = t.persistent()\n"
        ),
    ),
    "immutables": dict(
        imports=(
            "import immutables as _mod\nfrom immutables import Map as _M\n"
            "EMPTY = _M\nFROM_DICT = _M\n"
            "from importlib.metadata import version as _v\nVERSION = _v('immutables')\n"
        ),
        set="set", delete="delete", update="update",
        transient=(
            "        with EMPTY().mutate() as t:\n"
            "            for k in ks:\n"
            "                t[k] = k\n"
            "            keep[r] = t.finish()\n"
        ),
    ),
    "rpds": dict(
        imports=(
            "import rpds as _mod\nfrom rpds import HashTrieMap as _M\n"
            "EMPTY = _M\nFROM_DICT = _M\n"
            "from importlib.metadata import version as _v\nVERSION = _v('rpds-py')\n"
        ),
        set="insert", delete="remove", update="update",
        transient=None,  # no transient/evolver API
    ),
    "pyrsistent": dict(
        imports=(
            "import pyrsistent as _mod\nfrom pyrsistent import pmap as _pmap\n"
            "EMPTY = _pmap\nFROM_DICT = _pmap\n"
            "from importlib.metadata import version as _v\nVERSION = _v('pyrsistent')\n"
        ),
        set="set", delete="remove", update="update",
        transient=(
            "        t = EMPTY().evolver()\n"
            "        for k in ks:\n"
            "            t[k] = k\n"
            "        keep[r] = t.persistent()\n"
        ),
    ),
    "pypi-2.0": dict(
        imports=(
            "import pypersistent as _mod\n"
            "if hasattr(_mod, 'FREE_THREADED_BUILD'):\n"
            "    raise ImportError('this is our pypersistent, not the PyPI one: wrong venv')\n"
            "_M = getattr(_mod, 'PersistentDict', None) or getattr(_mod, 'PersistentMap')\n"
            "EMPTY = _M\nFROM_DICT = _M.from_dict\n"
            "from importlib.metadata import version as _v\nVERSION = _v('pypersistent')\n"
        ),
        set="set", delete="delete", update="update",
        transient=None,  # PyPI pypersistent 2.0 has no transient API
    ),
    "dict": dict(
        imports=(
            "EMPTY = None\nFROM_DICT = dict\n"
            "import platform as _p\nVERSION = 'CPython ' + _p.python_version()\n"
        ),
        set=None, delete=None, update=None,
        transient=(
            "        t = {}\n"
            "        for k in ks:\n"
            "            t[k] = k\n"
            "        keep[r] = t\n"
        ),
    ),
}

# Timed loop templates.  The loop shape is identical for every library; only the method
# name ($set/$delete/$update) is substituted.  Each returns elapsed ns for `reps` passes.
TEMPLATES = {
    "lookup_hit": """
def run(reps, m, ks):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k in ks:
            m[k]
    return _ns() - t0, _cpu() - c0
""",
    "get_hit": """
def run(reps, m, ks):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k in ks:
            m.get(k)
    return _ns() - t0, _cpu() - c0
""",
    "lookup_miss": """
def run(reps, m, ks):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k in ks:
            k in m
    return _ns() - t0, _cpu() - c0
""",
    "insert": """
def run(reps, ks, keep):
    t0 = _ns()
    c0 = _cpu()
    for r in range(reps):
        m = EMPTY()
        for k in ks:
            m = m.$set(k, k)
        keep[r] = m
    return _ns() - t0, _cpu() - c0
""",
    "delete": """
def run(reps, m, ks):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        x = m
        for k in ks:
            x = x.$delete(k)
    return _ns() - t0, _cpu() - c0
""",
    "iter_keys": """
def run(reps, m):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k in m:
            pass
    return _ns() - t0, _cpu() - c0
""",
    "iter_items": """
def run(reps, m):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k, v in m.items():
            pass
    return _ns() - t0, _cpu() - c0
""",
    "from_dict": """
def run(reps, d, keep):
    t0 = _ns()
    c0 = _cpu()
    for r in range(reps):
        keep[r] = FROM_DICT(d)
    return _ns() - t0, _cpu() - c0
""",
    "transient": """
def run(reps, ks, keep):
    t0 = _ns()
    c0 = _cpu()
    for r in range(reps):
$body    return _ns() - t0, _cpu() - c0
""",
    "equality": """
def run(reps, m1, m2):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        if not (m1 == m2):
            raise AssertionError('maps compare unequal')
    return _ns() - t0, _cpu() - c0
""",
    "update": """
def run(reps, m, u):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        m.$update(u)
    return _ns() - t0, _cpu() - c0
""",
    "update_dict": """
def run(reps, m, u):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        {**m, **u}
    return _ns() - t0, _cpu() - c0
""",
    "variants": """
def run(reps, m, ks):
    t0 = _ns()
    c0 = _cpu()
    for _ in range(reps):
        for k in ks:
            m.$set(k, -1)
    return _ns() - t0, _cpu() - c0
""",
}

MODES = {
    # min/max timed repetitions, stop once the repetitions took `budget_s` in total,
    # and batch passes so that one timing lasts at least `target_s`.
    # Ops whose repetitions already took `long_s` stop after 2 timed repetitions.
    "full": dict(min_rep=3, max_rep=7, budget_s=0.6, target_s=0.05, long_s=1.0),
    "quick": dict(min_rep=2, max_rep=3, budget_s=0.15, target_s=0.01, long_s=0.3),
}


def parse_size(s: str) -> int:
    s = s.strip().upper().replace("_", "")
    mult = 1
    if s.endswith("K"):
        mult, s = 1_000, s[:-1]
    elif s.endswith("M"):
        mult, s = 1_000_000, s[:-1]
    return int(float(s) * mult)


def fmt_size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}K"
    return str(n)


# --------------------------------------------------------------------------------------
# Data (deterministic for a given size and key type)
# --------------------------------------------------------------------------------------


def make_keys(n: int, keytype: str):
    """Return (keys, miss_keys, rng): 2n distinct random keys split in two halves."""
    rng = random.Random(SEED * 31 + n)
    bits = rng.getrandbits
    pool = [bits(62) for _ in range(2 * n)]
    if len(set(pool)) != len(pool):  # astronomically unlikely; keep it correct anyway
        seen, uniq = set(), []
        for x in pool:
            if x not in seen:
                seen.add(x)
                uniq.append(x)
        while len(uniq) < 2 * n:
            x = bits(62)
            if x not in seen:
                seen.add(x)
                uniq.append(x)
        pool = uniq
    if keytype == "str":
        pool = [f"k{x:x}" for x in pool]
        for s in pool:  # make sure every str caches its hash before anything is timed
            hash(s)
    elif keytype != "int":
        raise ValueError(keytype)
    return pool[:n], pool[n:], rng


def trim_heap() -> None:
    """Give free malloc memory back to the OS (glibc), so that RSS counts live data only."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except Exception:
        _libc = False


_libc = None


def settle_rss() -> int:
    gc.collect()
    if _libc is not False:
        trim_heap()
    return rss_bytes()


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # peak RSS only; a poor fallback, but better than nothing

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------
# Worker: time every op for one (lib, n, keytype); prints one JSON object
# --------------------------------------------------------------------------------------


def load_adapter(lib: str) -> dict:
    ad = ADAPTERS[lib]
    ns: dict = {"_ns": time.perf_counter_ns, "_cpu": time.process_time_ns}
    exec(ad["imports"], ns)
    return ns


def compile_op(lib: str, op: str, ns: dict):
    ad = ADAPTERS[lib]
    if lib == "dict":
        if op in ("insert", "delete", "variants"):
            return None
        if op == "update":
            op = "update_dict"
    if op == "transient":
        if ad["transient"] is None:
            return None
        src = string.Template(TEMPLATES[op]).substitute(body=ad["transient"])
    else:
        src = string.Template(TEMPLATES[op]).substitute(
            set=ad["set"] or "x", delete=ad["delete"] or "x", update=ad["update"] or "x"
        )
    code = compile(src, f"<{lib}:{op}>", "exec")
    local = dict(ns)
    exec(code, local)
    return local["run"]


def time_op(run, args, ops_per_pass: int, cfg: dict, keep_results: bool, clock: str) -> dict:
    """Best-of-repeats ns per op, for both clocks: {"wall": ..., "cpu": ...}.

    `run(reps, *args)` returns (wall ns, process CPU ns) for reps passes.  Batching and the
    repetition budget follow `clock` (the clock shown in the report)."""
    target_ns = cfg["target_s"] * 1e9
    budget_ns = cfg["budget_s"] * 1e9
    ci = 0 if clock == "wall" else 1

    def one(reps):
        extra = ([None] * reps,) if keep_results else ()
        gc.collect()
        gc.disable()
        try:
            dt = run(reps, *args, *extra)
        finally:
            gc.enable()
        del extra  # results (if kept) are freed outside the timed region
        return dt

    reps = 1
    dt = one(1)  # calibration (also a warm-up)
    times = []
    if dt[ci] >= target_ns:
        times.append(dt)
    else:
        reps = max(1, int(math.ceil(target_ns / max(dt[ci], 1) * 1.1)))
    total = dt[ci]
    while True:
        if len(times) >= cfg["max_rep"]:
            break
        if len(times) >= cfg["min_rep"] and total >= budget_ns:
            break
        if len(times) >= 2 and total >= cfg["long_s"] * 1e9:  # long ops: best of 2 is enough
            break
        dt = one(reps)
        total += dt[ci]
        times.append((dt[0] / reps, dt[1] / reps))
    return {"wall": min(t[0] for t in times) / ops_per_pass,
            "cpu": min(t[1] for t in times) / ops_per_pass}


def worker(lib: str, n: int, keytype: str, mode: str, ops: list[str], clock: str) -> dict:
    cfg = MODES[mode]
    out: dict = {"lib": lib, "n": n, "keys": keytype, "results": {}, "results_other_clock": {},
                 "clock": clock, "errors": {}}
    try:
        ns = load_adapter(lib)
    except Exception as e:  # library missing -> whole column n/a
        out["unavailable"] = f"{type(e).__name__}: {e}"
        return out
    out["version"] = ns.get("VERSION")
    mod = ns.get("_mod")
    out["module_file"] = getattr(mod, "__file__", None) if mod is not None else None
    out["python"] = sys.version.split()[0]
    out["executable"] = sys.executable

    gc.disable()  # setup creates no cycles; automatic GC would only slow it down
    keys, miss, rng = make_keys(n, keytype)
    FROM_DICT = ns["FROM_DICT"]
    d = dict(zip(keys, keys))
    d_rev = dict(zip(reversed(keys), reversed(keys)))
    m = FROM_DICT(d)
    m2 = FROM_DICT(d_rev)
    if len(m) != n or len(m2) != n:
        raise AssertionError(f"{lib}: built map has wrong size")

    look = keys[:]  # random order, unrelated to the insertion order of d
    rng.shuffle(look)
    look_miss = miss  # never inserted anywhere, already in random order
    del_keys = rng.sample(keys, min(n, 10_000))
    var_keys = rng.sample(keys, min(n, N_VARIANTS))
    n_upd = max(2, n // 100)
    upd = {k: -1 for k in rng.sample(keys, n_upd // 2)}
    for k in miss[: n_upd - len(upd)]:
        upd[k] = k
    build_keys = look

    plan = {
        # op: (args, ops per pass, keep results alive until after the timing)
        "lookup_hit": ((m, look), len(look), False),
        "get_hit": ((m, look), len(look), False),
        "lookup_miss": ((m, look_miss), len(look_miss), False),
        "insert": ((build_keys,), n, True),
        "delete": ((m, del_keys), len(del_keys), False),
        "iter_keys": ((m,), n, False),
        "iter_items": ((m,), n, False),
        "from_dict": ((d,), n, True),
        "transient": ((build_keys,), n, True),
        "equality": ((m, m2), n, False),
        "update": ((m, upd), len(upd), False),
        "variants": ((m, var_keys), len(var_keys), False),
    }
    # Move everything built so far out of the collector's way: the per-repetition
    # gc.collect() then costs next to nothing even for libraries whose nodes are GC-tracked.
    gc.collect()
    gc.freeze()
    t_setup = time.process_time()
    print(f"    {lib:<11} {fmt_size(n):>5} {keytype:<3} setup        "
          f"[{t_setup:.1f}s cpu]", file=sys.stderr, flush=True)
    for op in ops:
        if op not in plan:
            continue
        c_op = time.process_time()
        try:
            run = compile_op(lib, op, ns)
            if run is None:
                out["results"][op] = None
                continue
            args, nops, keep = plan[op]
            both = time_op(run, args, nops, cfg, keep, clock)
            out["results"][op] = both[clock]
            out["results_other_clock"][op] = both["cpu" if clock == "wall" else "wall"]
        except Exception as e:
            out["results"][op] = None
            out["errors"][op] = f"{type(e).__name__}: {e}"
        print(f"    {lib:<11} {fmt_size(n):>5} {keytype:<3} {op:<12} "
              f"{_fmt_num(out['results'][op]):>8}  [{time.process_time() - c_op:.1f}s cpu]",
              file=sys.stderr, flush=True)
    return out


def mem_worker(lib: str, n: int, keytype: str, what: str) -> dict:
    out: dict = {"lib": lib, "n": n, "keys": keytype, "what": what}
    try:
        ns = load_adapter(lib)
    except Exception as e:
        out["unavailable"] = f"{type(e).__name__}: {e}"
        return out
    FROM_DICT = ns["FROM_DICT"]
    keys, miss, rng = make_keys(n, keytype)
    d = dict(zip(keys, keys))
    if what == "entry":
        copies = max(1, MEM_TARGET_ENTRIES // n)
        r0 = settle_rss()
        maps = [FROM_DICT(d) for _ in range(copies)]
        r1 = settle_rss()
        out["copies"] = copies
        out["value"] = (r1 - r0) / (n * copies)
        del maps
    elif what == "variant":
        if lib == "dict":
            out["value"] = None
            return out
        setname = ADAPTERS[lib]["set"]
        m = FROM_DICT(d)
        vkeys = [rng.choice(keys) for _ in range(N_VARIANTS_MEM)]
        setter = getattr(m, setname)
        r0 = settle_rss()  # the value -1 is a shared small int: only the map's own nodes count
        variants = [setter(k, -1) for k in vkeys]
        r1 = settle_rss()
        out["variants"] = len(variants)
        out["value"] = (r1 - r0) / len(variants)
    else:
        raise ValueError(what)
    return out


# --------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------


def lib_python(lib: str, args) -> str | None:
    if lib == "pypi-2.0":
        p = args.pypi_python
        return p if p and os.path.exists(p) else None
    return sys.executable


def run_sub(py: str, argv: list[str], timeout: float, env: dict | None = None) -> dict:
    cmd = [py, os.path.abspath(__file__)] + argv
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                           timeout=timeout, cwd=HERE, env=env)
    except subprocess.TimeoutExpired:
        return {"failed": f"timeout after {timeout:.0f}s"}
    if p.returncode != 0:
        return {"failed": f"exit code {p.returncode}"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"failed": "no JSON output"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def check_ours_fresh() -> str | None:
    """Warn if the installed pypersistent extension is older than the C++ sources."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pypersistent")
        if spec is None or not spec.origin:
            return "pypersistent is not installed in this Python"
        pkgdir = os.path.dirname(spec.origin)
        sos = [os.path.join(pkgdir, f) for f in os.listdir(pkgdir) if f.endswith((".so", ".pyd"))]
        if not sos:
            return None
        built = max(os.path.getmtime(s) for s in sos)
        newest = 0.0
        for sub in ("src", "include", "python"):
            for root, _, files in os.walk(os.path.join(REPO, sub)):
                for f in files:
                    newest = max(newest, os.path.getmtime(os.path.join(root, f)))
        if newest > built:
            return ("installed pypersistent extension is older than the sources; "
                    "re-run `pip install --no-build-isolation .` from the repo root")
    except Exception:
        return None
    return None


def snapshot_ours(tmpdir: str) -> dict:
    """Copy the installed pypersistent package into tmpdir, so that every worker of this run
    measures the same build even if the package is re-installed while the benchmark runs."""
    import hashlib
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("pypersistent")
    if spec is None or not spec.origin:
        return {}
    pkgdir = os.path.dirname(spec.origin)
    dst = os.path.join(tmpdir, "pypersistent")
    shutil.copytree(pkgdir, dst, ignore=shutil.ignore_patterns("__pycache__"))
    info = {"installed_from": pkgdir, "snapshot": dst}
    for f in sorted(os.listdir(dst)):
        if f.endswith((".so", ".pyd")):
            with open(os.path.join(dst, f), "rb") as fh:
                info["extension_sha256"] = hashlib.sha256(fh.read()).hexdigest()[:16]
            info["extension_mtime"] = time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(os.path.join(pkgdir, f))))
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "include",
                                "python", "CMakeLists.txt", "pyproject.toml"],
                               stdout=subprocess.PIPE, text=True, timeout=30).stdout.strip()
        info["git_head"] = head + (" (+uncommitted changes in src/include/python)" if dirty else "")
    except Exception:
        pass
    return info


def orchestrate(args) -> dict:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    keytypes = args.keys.split(",")
    libs = [l for l in LIBS if l in args.libs.split(",")]
    ops = [o for o in OP_IDS if o in args.ops.split(",")] if args.ops else OP_IDS
    mode = "quick" if args.quick else "full"
    t_start = time.time()

    warn = check_ours_fresh() if "ours" in libs else None
    if warn:
        print("WARNING:", warn, file=sys.stderr)

    versions: dict = {}
    unavailable: dict = {}
    results: list = []
    pythons = {}
    envs: dict = {}
    ours_info: dict = {}
    loadavg_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if "ours" in libs and not args.no_snapshot:
        import atexit
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="bench_peers_ours_")
        atexit.register(shutil.rmtree, tmp, True)
        ours_info = snapshot_ours(tmp)
        if ours_info:
            env = dict(os.environ)
            env["PYTHONPATH"] = tmp + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            envs["ours"] = env
    for lib in libs:
        py = lib_python(lib, args)
        if py is None:
            unavailable[lib] = f"interpreter not found: {args.pypi_python}"
        pythons[lib] = py

    time_ops = [o for o in ops if not o.startswith("mem_")]
    for n in sizes:
        for kt in keytypes:
            for lib in libs:
                if lib in unavailable:
                    continue
                print(f"[{time.time() - t_start:6.1f}s] {lib} n={fmt_size(n)} keys={kt}",
                      file=sys.stderr, flush=True)
                rec: dict = {"lib": lib, "n": n, "keys": kt, "results": {}, "errors": {}}
                if time_ops:
                    r = run_sub(pythons[lib], ["--worker", lib, "--n", str(n), "--key-type", kt,
                                               "--mode", mode, "--clock", args.clock,
                                               "--ops", ",".join(time_ops)],
                                timeout=args.timeout, env=envs.get(lib))
                    if "unavailable" in r:
                        unavailable[lib] = r["unavailable"]
                        print(f"  {lib} unavailable: {r['unavailable']}", file=sys.stderr)
                        continue
                    if "failed" in r:
                        rec["errors"]["worker"] = r["failed"]
                    else:
                        rec.update({k: v for k, v in r.items() if k not in ("results", "errors")})
                        rec["results"].update(r["results"])
                        rec["errors"].update(r["errors"])
                        versions.setdefault(lib, r.get("version"))
                for what in ("entry", "variant"):
                    op = "mem_" + what
                    if op not in ops:
                        continue
                    r = run_sub(pythons[lib], ["--mem-worker", lib, "--n", str(n),
                                               "--key-type", kt, "--what", what],
                                timeout=args.timeout, env=envs.get(lib))
                    if "unavailable" in r:
                        unavailable[lib] = r["unavailable"]
                        break
                    rec["results"][op] = r.get("value")
                    if "failed" in r:
                        rec["errors"][op] = r["failed"]
                    print(f"    {lib:<11} {fmt_size(n):>5} {kt:<3} {op:<12} "
                          f"{_fmt_num(rec['results'][op])}", file=sys.stderr, flush=True)
                if lib not in unavailable:
                    results.append(rec)

    elapsed = time.time() - t_start
    pypi_py_version = None
    if pythons.get("pypi-2.0"):
        try:
            pypi_py_version = subprocess.run(
                [pythons["pypi-2.0"], "-c", "import sys; print(sys.version.split()[0])"],
                stdout=subprocess.PIPE, text=True, timeout=60).stdout.strip()
        except Exception:
            pass
    return {
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO)
                                                       if sys.executable.startswith(REPO)
                                                       else "python"] +
                            [os.path.relpath(os.path.abspath(__file__), os.getcwd())] +
                            sys.argv[1:]),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "mode": mode,
        "mode_settings": MODES[mode],
        "clock": args.clock,
        "sizes": sizes,
        "key_types": keytypes,
        "libs": libs,
        "ops": ops,
        "unavailable": unavailable,
        "versions": versions,
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.replace("\n", " "),
            "python_pypi_venv": pypi_py_version,
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t_start)),
        "elapsed_s": round(elapsed, 1),
        "stale_warning": warn,
        "ours_build": ours_info,
        "results": results,
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _fmt_num(v) -> str:
    if v is None:
        return "n/a"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def table_rows(data: dict):
    """Yield (op, label, unit, n, keytype, {lib: value}, ratio, best_peer)."""
    idx = {(r["lib"], r["n"], r["keys"]): r for r in data["results"]}
    labels = {o: (l, u) for o, l, u in OPS}
    for op in data["ops"]:
        label, unit = labels[op]
        for n in data["sizes"]:
            for kt in data["key_types"]:
                vals = {}
                for lib in data["libs"]:
                    rec = idx.get((lib, n, kt))
                    vals[lib] = rec["results"].get(op) if rec else None
                peers = [(vals[p], p) for p in PEERS if vals.get(p) is not None]
                ratio = best = None
                if peers and vals.get("ours") is not None:
                    bv, best = min(peers)
                    ratio = vals["ours"] / bv if bv > 0 else None
                yield op, label, unit, n, kt, vals, ratio, best


def render_markdown(data: dict) -> str:
    m = data["machine"]
    libs = data["libs"]
    lines = []
    lines.append("# PersistentMap vs. peers (Python side-by-side benchmark)\n")
    lines.append(f"Command (from `{data['cwd']}`):\n")
    lines.append(f"```\n{data['command']}\n```\n")
    clk = data.get("clock", "wall")
    lines.append(f"- Clock shown: **{clk}** (" + ("`time.perf_counter_ns`, wall time" if clk == "wall" else
                 "`time.process_time_ns`, CPU time of the process: robust against other load on the machine")
                 + "); the JSON also keeps the other clock (`results_other_clock`)")
    lines.append(f"- Mode: **{data['mode']}** ({', '.join(f'{k}={v}' for k, v in data['mode_settings'].items())}); "
                 f"started {data['started']}, took {data['elapsed_s']:.0f} s")
    lines.append(f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical cores; {m['platform']}")
    lines.append(f"- Python: {m['python']}"
                 + (f" (PyPI pypersistent venv: Python {m['python_pypi_venv']})" if m.get("python_pypi_venv") else ""))
    vers = ", ".join(f"{LIB_TITLES[l]} {data['versions'].get(l, '?')}" for l in libs if l not in data["unavailable"])
    lines.append(f"- Libraries: {vers}")
    if data["unavailable"]:
        for l, why in data["unavailable"].items():
            lines.append(f"- **{LIB_TITLES[l]} unavailable** ({why}): column is n/a")
    ob = data.get("ours_build") or {}
    if ob:
        lines.append(f"- Our build: git {ob.get('git_head', '?')}, extension installed {ob.get('extension_mtime', '?')}"
                     f" (sha256 {ob.get('extension_sha256', '?')}), snapshotted for the whole run")
    if m.get("loadavg_end"):
        la = lambda v: ", ".join(f"{x:.2f}" for x in v) if v else "?"
        lines.append(f"- Load average (1/5/15 min) at start: {la(m.get('loadavg_start'))}; at end: {la(m['loadavg_end'])}")
    if data.get("stale_warning"):
        lines.append(f"- **WARNING**: {data['stale_warning']}")
    lines.append("")
    lines.append(
        "Method: every (library, size, key type) runs in a fresh subprocess; keys are 2n distinct "
        "random 62-bit ints (or `'k%x'` strings of them, hashes pre-cached), fixed seed; values are the keys. "
        "Each op is a fixed loop (identical for all libraries, only the method name differs), batched so one "
        "timing lasts >= target_s, GC disabled while timing, best of the repetitions, divided by the number of "
        "ops.  Lookups go over all n keys in random order; inserts build 0 -> n in random order; maps built "
        "by insert/from_dict/transient are kept alive until after the timing (their deallocation is not timed). "
        "Equality compares two maps built from the same dict in opposite insertion orders. "
        "Memory: RSS delta (/proc/self/statm, after gc.collect() and glibc malloc_trim(0)) in a fresh process after building max(1, 1M/n) copies of "
        "the map with from_dict, per entry (keys and values are shared, not counted); per variant: RSS delta "
        f"of {N_VARIANTS_MEM} one-key variants of one map. dict: only the ops that make sense for a mutable "
        "dict (update is `{**d, **u}`, bulk build is a plain `d[k] = v` loop, from_dict is `dict(d)`).\n"
    )
    lines.append("`ours / best` = PersistentMap divided by the best *peer* (dict excluded); > 1 means ours is slower/bigger.\n")
    head = ["op", "n", "keys", "unit"] + [LIB_TITLES[l] for l in libs] + ["ours / best peer"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(libs) + 1)) + "|")
    slower = []
    for op, label, unit, n, kt, vals, ratio, best in table_rows(data):
        cells = []
        for lib in libs:
            v = vals.get(lib)
            s = _fmt_num(v)
            if lib != "dict" and v is not None:
                present = [vals[p] for p in ["ours"] + PEERS if vals.get(p) is not None]
                if present and v == min(present):
                    s = f"**{s}**"
            cells.append(s)
        rs = "n/a" if ratio is None else f"{ratio:.2f}x ({LIB_TITLES[best]})"
        if ratio is not None and ratio > 1.05:
            slower.append((ratio, label, n, kt, unit, vals.get("ours"), best, vals.get(best)))
            rs = f"**{rs}**"
        lines.append("| " + " | ".join([label, fmt_size(n), kt, unit] + cells + [rs]) + " |")
    lines.append("")
    lines.append("## Rows where PersistentMap is slower (or bigger) than the best peer (ratio > 1.05)\n")
    if not slower:
        lines.append("None.\n")
    else:
        lines.append("| ratio | op | n | keys | ours | best peer |")
        lines.append("|---:|---|---|---|---:|---|")
        for ratio, label, n, kt, unit, ov, best, bv in sorted(slower, key=lambda x: -x[0]):
            lines.append(f"| {ratio:.2f}x | {label} | {fmt_size(n)} | {kt} | {_fmt_num(ov)} {unit} | "
                         f"{LIB_TITLES[best]}: {_fmt_num(bv)} |")
        lines.append("")
    errs = [(r["lib"], r["n"], r["keys"], op, e) for r in data["results"] for op, e in r.get("errors", {}).items()]
    if errs:
        lines.append("## Errors\n")
        for lib, n, kt, op, e in errs:
            lines.append(f"- {lib} n={fmt_size(n)} {kt} {op}: {e}")
        lines.append("")
    return "\n".join(lines)


def render_chart(data: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print(f"matplotlib unavailable, no chart: {e}", file=sys.stderr)
        return False
    idx = {(r["lib"], r["n"], r["keys"]): r for r in data["results"]}
    libs = [l for l in data["libs"] if l not in data["unavailable"]]
    time_ops = [o for o in data["ops"] if not o.startswith("mem_")]
    mem_ops = [o for o in data["ops"] if o.startswith("mem_")]
    sizes = data["sizes"]
    # panels: time ops at 100K and 1M (or the largest two sizes) with int keys; memory at the largest size
    wanted = [s for s in (100_000, 1_000_000) if s in sizes] or sizes[-2:]
    kt = "int" if "int" in data["key_types"] else data["key_types"][0]
    panels = [("time", s, kt) for s in wanted]
    if mem_ops:
        panels.append(("mem", sizes[-1], None))
    colors = {"ours": "#d62728", "immutables": "#1f77b4", "rpds": "#ff7f0e",
              "pyrsistent": "#2ca02c", "pypi-2.0": "#9467bd", "dict": "#7f7f7f"}
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 4.6 * len(panels)), squeeze=False)
    labels = {o: l for o, l, _ in OPS}
    short = {"lookup_hit": "lookup hit", "get_hit": "get hit", "lookup_miss": "lookup miss",
             "insert": "insert 1-by-1", "delete": "delete 1-by-1", "iter_keys": "iter keys",
             "iter_items": "iter items", "from_dict": "from_dict", "transient": "bulk build",
             "equality": "equality", "update": "update (per key)", "variants": "one-key variant",
             "mem_entry": "bytes/entry", "mem_variant": "bytes/variant"}
    for ax, (kind, n, kt_) in zip(axes[:, 0], panels):
        if kind == "time":
            cats = [(o, kt_) for o in time_ops]
            title = f"ns per op (per entry for whole-map ops), n = {fmt_size(n)}, {kt_} keys (log scale, lower is better)"
        else:
            cats = [(o, k) for o in mem_ops for k in data["key_types"]]
            title = f"memory, n = {fmt_size(n)} (log scale, lower is better)"
        width = 0.8 / max(1, len(libs))
        for i, lib in enumerate(libs):
            xs, ys = [], []
            for j, (o, k) in enumerate(cats):
                rec = idx.get((lib, n, k))
                v = rec["results"].get(o) if rec else None
                if v is not None and v > 0:
                    xs.append(j + (i - (len(libs) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=LIB_TITLES[lib], color=colors.get(lib))
        ax.set_yscale("log")
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([short.get(o, labels[o]) + ("" if kind == "time" else f"\n{k} keys")
                            for o, k in cats], rotation=20, ha="right", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, hl = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, hl, loc="upper center", ncol=len(libs), fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.35 / (4.6 * len(panels))))
    fig.suptitle(f"PersistentMap vs. peers - {data['machine']['cpu_model']}, "
                 f"Python {data['machine']['python'].split()[0]}, {data.get('clock', 'wall')} clock, "
                 f"{data['mode']} mode", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / (4.6 * len(panels))))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(data: dict, prefix: str):
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(data, f, indent=1)
    md = render_markdown(data)
    with open(prefix + ".md", "w") as f:
        f.write(md + "\n")
    chart = render_chart(data, prefix + ".png")
    print(f"wrote {prefix}.json, {prefix}.md" + (f", {prefix}.png" if chart else ""), file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, sizes 1K,100K (unless --sizes)")
    ap.add_argument("--sizes", default=None, help="comma list, e.g. 1K,100K,1M (default: full 1K,100K,1M)")
    ap.add_argument("--keys", default="int,str", help="key types: int,str")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"subset of {','.join(LIBS)}")
    ap.add_argument("--ops", default=None, help=f"subset of {','.join(OP_IDS)}")
    ap.add_argument("--pypi-python", default=DEFAULT_PYPI_PYTHON,
                    help="python of the venv holding PyPI pypersistent 2.0")
    ap.add_argument("--out", default=None,
                    help="output prefix (default benchmarks/results/peers, quick: benchmarks/results/raw/peers_quick)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="clock shown in the report: wall = time.perf_counter_ns (default), cpu = "
                         "time.process_time_ns (robust on a loaded machine); the JSON keeps both")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="import our package from site-packages in each worker instead of a snapshot")
    ap.add_argument("--timeout", type=float, default=900, help="per-subprocess timeout, s")
    ap.add_argument("--report-only", metavar="JSON", help="re-render md/png from an existing JSON file")
    # internal
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mem-worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key-type", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        ops = args.ops.split(",") if args.ops else TIME_OPS
        print(json.dumps(worker(args.worker, args.n, args.key_type, args.mode, ops, args.clock)))
        return
    if args.mem_worker:
        print(json.dumps(mem_worker(args.mem_worker, args.n, args.key_type, args.what)))
        return
    if args.report_only:
        with open(args.report_only) as f:
            data = json.load(f)
        prefix = args.out or os.path.splitext(args.report_only)[0]
        write_outputs(data, prefix)
        return
    if args.sizes is None:
        args.sizes = "1K,100K" if args.quick else "1K,100K,1M"
    if args.out is None:
        args.out = os.path.join(HERE, "results", "raw", "peers_quick") if args.quick else \
            os.path.join(HERE, "results", "peers")
    data = orchestrate(args)
    write_outputs(data, args.out)
    print(render_markdown(data))


if __name__ == "__main__":
    main()
