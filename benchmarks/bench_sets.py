#!/usr/bin/env python3
"""Side-by-side benchmark: pypersistent.PersistentSet vs. its PyPI peers.

Libraries (a column whose library cannot be imported is reported as "n/a"):

  ours        pypersistent.PersistentSet (this repository, installed into the running Python)
  rpds        rpds.HashTrieSet (rpds-py, Rust)
  pyrsistent  pyrsistent.pset (pure Python on top of pmap: pyrsistent's C extension only
              accelerates pvector)
  pypi-2.0    PyPI's pypersistent 2.0 PersistentSet.  Same import name as this project, so it
              lives in its own venv (default benchmarks/.venv-pypi-pypersistent, see
              --pypi-python) and is always measured in a subprocess of that venv's python.
  frozenset   reference only (copy-on-write: every "persistent" op copies the whole set);
              not counted as a peer in the "ours / best peer" column.

Every (library, size, element type) combination runs in a fresh subprocess ("--worker").
Elements are distinct random 62-bit ints (or 'k%x' strings of them, hashes pre-cached), fixed
seed.  Each op is a fixed loop, identical for every library except for the one expression that
differs (e.g. `s.add(k)` vs `s.insert(k)`), batched so that one timing lasts >= target_s, timed
with time.perf_counter_ns with the GC disabled; the best repetition is reported, per operation.

Usage:
  python benchmarks/bench_sets.py                  # full -> benchmarks/results/sets.{md,json}
  python benchmarks/bench_sets.py --quick          # ~1 min -> benchmarks/results/raw/sets_quick.*
  python benchmarks/bench_sets.py --sizes 1K --keys int --libs ours,rpds --pypi-python /path/python
  python benchmarks/bench_sets.py --report-only benchmarks/results/sets.json   # re-render
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import string
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PYPI_PYTHON = os.path.join(HERE, ".venv-pypi-pypersistent", "bin", "python")

LIBS = ["ours", "rpds", "pyrsistent", "pypi-2.0", "frozenset"]
PEERS = ["rpds", "pyrsistent", "pypi-2.0"]
TITLES = {"ours": "PersistentSet (ours)", "rpds": "rpds-py", "pyrsistent": "pyrsistent",
          "pypi-2.0": "pypersistent 2.0 (PyPI)", "frozenset": "frozenset (ref.)"}
SEED = 20240611
N_VARIANTS = 100

# Adapters: FROM_LIST(list) -> set; `add`/`discard` are expressions in s and k; `transient`
# is a loop body building one set from xs into keep[r] (None: the library has no such API).
_V = "from importlib.metadata import version as _v\n"
ADAPTERS = {
    "ours": dict(
        imports=("import pypersistent as _mod\nfrom pypersistent import PersistentSet as S\n"
                 "if not hasattr(_mod, 'FREE_THREADED_BUILD'):\n"
                 "    raise ImportError('imported pypersistent is not this project (PyPI 2.0?)')\n"
                 "FROM_LIST = S\nVERSION = getattr(_mod, '__version__', '?')\n"),
        add="s.add(k)", discard="s.discard(k)",
        transient=("        t = S().transient()\n        for x in xs:\n            t.add(x)\n"
                   "        keep[r] = t.persistent()\n")),
    "rpds": dict(
        imports="import rpds as _mod\nfrom rpds import HashTrieSet as S\nFROM_LIST = S\n"
                + _V + "VERSION = _v('rpds-py')\n",
        add="s.insert(k)", discard="s.discard(k)", transient=None),
    "pyrsistent": dict(
        # pset(xs) defaults to pre_size=8: 8 hash buckets whatever len(xs) is, so lookups scan
        # n/8-long buckets and one s.add(x) on a 100K set rehashes everything (~7 s).  Size the
        # buckets as pmap(dict) does (2n) instead.
        imports="import pyrsistent as _mod\nfrom pyrsistent import pset as S\n"
                "def FROM_LIST(xs):\n    return S(xs, pre_size=2 * len(xs))\n"
                + _V + "VERSION = _v('pyrsistent')\n",
        add="s.add(k)", discard="s.discard(k)",
        transient=("        t = S().evolver()\n        for x in xs:\n            t.add(x)\n"
                   "        keep[r] = t.persistent()\n")),
    "pypi-2.0": dict(
        imports=("import pypersistent as _mod\n"
                 "if hasattr(_mod, 'FREE_THREADED_BUILD'):\n"
                 "    raise ImportError('this is our pypersistent, not PyPI 2.0: wrong venv')\n"
                 "S = _mod.PersistentSet\nFROM_LIST = S.from_list\n" + _V
                 + "VERSION = _v('pypersistent')\n"),
        add="s.add(k)", discard="s.disj(k)", transient=None),
    "frozenset": dict(
        imports="_mod = None\nFROM_LIST = frozenset\nVERSION = 'CPython ' + __import__('platform').python_version()\n",
        add="s.union((k,))", discard="s.difference((k,))",
        transient=("        t = set()\n        for x in xs:\n            t.add(x)\n"
                   "        keep[r] = frozenset(t)\n")),
}

# (op id, label, unit, template, expression).  Templates: `run(reps, keep, *args)` -> ns.
T_KEYS = """
def run(reps, keep, s, ks):
    t0 = _ns()
    for _ in range(reps):
        for k in ks:
            $expr
    return _ns() - t0
"""
T_BUILD = """
def run(reps, keep, xs):
    t0 = _ns()
    for r in range(reps):
$expr    return _ns() - t0
"""
T_ITER = """
def run(reps, keep, s):
    t0 = _ns()
    for _ in range(reps):
        for x in s:
            pass
    return _ns() - t0
"""
T_BIN = """
def run(reps, keep, a, b):
    t0 = _ns()
    for r in range(reps):
        keep[r] = $expr
    return _ns() - t0
"""
OPS = [
    ("from_list", "build from a list (`S(xs)`, `from_list`)", "ns/elem", T_BUILD,
     "        keep[r] = FROM_LIST(xs)\n"),
    ("transient", "build 0 -> n via transient/evolver", "ns/elem", T_BUILD, None),
    ("add", f"add one element ({N_VARIANTS} one-element variants)", "ns/variant", T_KEYS, "add"),
    ("discard", f"remove one element ({N_VARIANTS} variants)", "ns/variant", T_KEYS, "discard"),
    ("contains_hit", "contains hit `k in s`", "ns/lookup", T_KEYS, "k in s"),
    ("contains_miss", "contains miss `k in s`", "ns/lookup", T_KEYS, "k in s"),
    ("iterate", "iterate `for x in s`", "ns/elem", T_ITER, "pass"),
    ("union_shared", "union sharing structure `s | s.add(x)`", "ns/op", T_BIN, "a | b"),
    ("union_disjoint", "union of two disjoint halves `a | b`", "ns/op", T_BIN, "a | b"),
    ("intersection", "intersection, 50% overlap `a & b`", "ns/op", T_BIN, "a & b"),
    ("difference", "difference, 50% overlap `a - b`", "ns/op", T_BIN, "a - b"),
    ("symmetric_difference", "symmetric difference, 50% overlap `a ^ b`", "ns/op", T_BIN, "a ^ b"),
    ("issubset", "issubset `s <= s.add(x)`", "ns/op", T_BIN, "a <= b"),
]
OP_IDS = [o[0] for o in OPS]

MODES = {  # min/max timed repetitions, stop after budget_s; one timing lasts >= target_s
    "full": dict(min_rep=3, max_rep=7, budget_s=0.5, target_s=0.04),
    "quick": dict(min_rep=2, max_rep=3, budget_s=0.08, target_s=0.008),
}


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def fmt_size(n: int) -> str:
    for div, suf in ((1_000_000, "M"), (1_000, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{suf}"
    return str(n)


def make_elems(n: int, kind: str):
    """2n distinct random elements (first n: members, rest: never inserted) and the rng."""
    rng = random.Random(SEED * 31 + n)
    seen: set = set()
    pool = []
    while len(pool) < 2 * n:
        x = rng.getrandbits(62)
        if x not in seen:
            seen.add(x)
            pool.append(x)
    if kind == "str":
        pool = [f"k{x:x}" for x in pool]
        for s in pool:
            hash(s)  # cache the hash before anything is timed
    elif kind != "int":
        raise ValueError(kind)
    return pool[:n], pool[n:], rng


# --------------------------------------------------------------------------------------
# Worker: time every op for one (lib, n, element type); prints JSON lines
# --------------------------------------------------------------------------------------


def time_op(run, args, nops: int, cfg: dict, keep: bool) -> float:
    """Best-of-repeats ns per op; `run(reps, keep, *args)` returns elapsed ns for reps passes."""

    def one(reps):
        k = [None] * reps if keep else None
        gc.collect()
        gc.disable()
        try:
            return run(reps, k, *args)
        finally:
            gc.enable()
            del k  # results are freed outside the timed region

    dt = one(1)  # calibration and warm-up
    times = [dt] if dt >= cfg["target_s"] * 1e9 else []
    reps = 1 if times else max(1, math.ceil(cfg["target_s"] * 1e9 / max(dt, 1) * 1.1))
    total = dt
    while len(times) < cfg["max_rep"] and not (len(times) >= cfg["min_rep"] and total >= cfg["budget_s"] * 1e9):
        dt = one(reps)
        total += dt
        times.append(dt / reps)
    return min(times) / nops


def worker(lib: str, n: int, kind: str, mode: str, ops: list[str]) -> None:
    """Prints one JSON line of metadata, then one line per op as soon as it is measured (so
    that the orchestrator keeps what was measured before a crash)."""
    ad = ADAPTERS[lib]
    ns: dict = {"_ns": time.perf_counter_ns}
    try:
        exec(ad["imports"], ns)
        exec(f"def _add(s, k):\n    return {ad['add']}\n", ns)
    except Exception as e:
        print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"}))
        return
    meta = {"version": ns.get("VERSION"), "python": sys.version.split()[0],
            "module_file": getattr(ns.get("_mod"), "__file__", None)}
    if lib == "ours":  # which build was measured
        d = os.path.dirname(meta["module_file"])
        so = [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".so")]
        if so:
            meta["extension_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(so[0])))
    print(json.dumps(meta), flush=True)
    gc.disable()
    keys, miss, rng = make_elems(n, kind)
    FROM_LIST, add = ns["FROM_LIST"], ns["_add"]
    s = FROM_LIST(keys)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    half = n // 2
    lo, hi = FROM_LIST(keys[:half]), FROM_LIST(keys[half:])
    ov = FROM_LIST(keys[half:] + miss[:n - half])  # n elements, half of them in s
    bigger = add(s, miss[-1])
    if len(s) != n or len(bigger) != n + 1 or len(lo) + len(hi) != n or len(ov) != n:
        raise AssertionError(f"{lib}: a set built for the benchmark has the wrong size")
    expect = {"union_shared": n + 1, "union_disjoint": n, "intersection": n - half,
              "difference": half, "symmetric_difference": 2 * half}
    plan = {  # op: (args, ops per pass, keep results alive until after the timing)
        "from_list": ((keys,), n, True),
        "transient": ((shuffled,), n, True),
        "add": ((s, miss[:N_VARIANTS]), N_VARIANTS, False),
        "discard": ((s, rng.sample(keys, min(n, N_VARIANTS))), min(n, N_VARIANTS), False),
        "contains_hit": ((s, shuffled), n, False),
        "contains_miss": ((s, miss), n, False),
        "iterate": ((s,), n, False),
        "union_shared": ((s, bigger), 1, True),
        "union_disjoint": ((lo, hi), 1, True),
        "intersection": ((s, ov), 1, True),
        "difference": ((s, ov), 1, True),
        "symmetric_difference": ((s, ov), 1, True),
        "issubset": ((s, bigger), 1, True),
    }
    gc.collect()
    gc.freeze()  # setup data out of the collector's way
    cfg = MODES[mode]
    for op_id, _label, _unit, tmpl, expr in OPS:
        if op_id not in ops:
            continue
        c0 = time.process_time()
        rec: dict = {"op": op_id, "value": None}
        try:
            if op_id == "transient":
                expr = ad["transient"]
            elif expr in ("add", "discard"):
                expr = ad[expr]
            if expr is not None:
                local = dict(ns)
                src = string.Template(tmpl).substitute(expr=expr)
                exec(compile(src, f"<{lib}:{op_id}>", "exec"), local)
                args, nops, keep = plan[op_id]
                if op_id in expect:  # same result from every library?  (timed anyway)
                    got = len(eval(expr, {}, {"a": args[0], "b": args[1]}))
                    if got != expect[op_id]:
                        rec["error"] = f"wrong result: len({expr}) = {got}, expected {expect[op_id]}"
                rec["value"] = time_op(local["run"], args, nops, cfg, keep)
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        print(f"    {lib:<10} {fmt_size(n):>5} {kind:<3} {op_id:<20} {_fmt(rec['value']):>12}"
              f"  [{time.process_time() - c0:.1f}s cpu]", file=sys.stderr, flush=True)
        print(json.dumps(rec), flush=True)


# --------------------------------------------------------------------------------------
# Orchestrator and report
# --------------------------------------------------------------------------------------


def run_worker(py: str, lib: str, n: int, kind: str, mode: str, ops: list[str], timeout: float) -> dict:
    """Run workers until every op has a result; an op that kills its worker (a crash in the
    library) is recorded as an error and the remaining ops run in a fresh worker."""
    rec: dict = {"lib": lib, "n": n, "keys": kind, "results": {}, "errors": {}}
    todo = list(ops)
    while todo:
        argv = [py, os.path.abspath(__file__), "--worker", lib, "--n", str(n), "--key-type", kind,
                "--mode", mode, "--ops", ",".join(todo)]
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=HERE)
            out, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        except OSError as e:
            return {"unavailable": f"{type(e).__name__}: {e}"}
        lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        if not lines:
            rec["errors"][todo[0]] = f"worker failed before measuring anything (exit {rc})"
            return rec
        if "unavailable" in lines[0]:
            return lines[0]
        rec.update(lines[0])
        for r in lines[1:]:
            rec["results"][r["op"]] = r["value"]
            if "error" in r:
                rec["errors"][r["op"]] = r["error"]
            todo.remove(r["op"])
        if todo and rc == 0:
            raise RuntimeError(f"worker exited without measuring {todo}")
        if todo:  # the first op not reported is the one that crashed
            why = f"worker killed by signal {-rc}" if isinstance(rc, int) and rc < 0 else f"worker exit {rc}"
            rec["results"][todo[0]] = None
            rec["errors"][todo[0]] = why
            todo.pop(0)
    return rec


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def orchestrate(args) -> dict:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    kinds = args.keys.split(",")
    libs = [l for l in LIBS if l in args.libs.split(",")]
    ops = [o for o in OP_IDS if o in args.ops.split(",")] if args.ops else OP_IDS
    mode = "quick" if args.quick else "full"
    t_start = time.time()
    load0 = os.getloadavg()
    unavailable: dict = {}
    versions: dict = {}
    results: list = []
    for n in sizes:
        for kind in kinds:
            for lib in libs:
                if lib in unavailable:
                    continue
                py = args.pypi_python if lib == "pypi-2.0" else sys.executable
                print(f"[{time.time() - t_start:6.1f}s] {lib} n={fmt_size(n)} {kind}", file=sys.stderr, flush=True)
                r = run_worker(py, lib, n, kind, mode, ops, args.timeout)
                if "unavailable" in r:
                    unavailable[lib] = r["unavailable"]
                    print(f"  {lib} unavailable: {r['unavailable']}", file=sys.stderr)
                    continue
                versions.setdefault(lib, r.get("version"))
                results.append(r)
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              text=True, timeout=30).stdout.strip()
    except Exception:
        head = "?"
    return {
        "command": " ".join(["python", os.path.relpath(os.path.abspath(__file__), os.getcwd())] + sys.argv[1:]),
        "mode": mode, "mode_settings": MODES[mode], "sizes": sizes, "key_types": kinds, "libs": libs,
        "ops": ops, "unavailable": unavailable, "versions": versions, "git_head": head,
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t_start)),
        "elapsed_s": round(time.time() - t_start, 1),
        "results": results,
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def render_markdown(data: dict) -> str:
    m, libs = data["machine"], data["libs"]
    idx = {(r["lib"], r["n"], r["keys"]): r for r in data["results"]}
    la = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    out = ["# PersistentSet vs. peers (Python side-by-side benchmark)\n", f"```\n{data['command']}\n```\n",
           f"- Mode **{data['mode']}** ({', '.join(f'{k}={v}' for k, v in data['mode_settings'].items())}); "
           f"started {data['started']}, took {data['elapsed_s']:.0f} s; git {data['git_head']}",
           f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical cores; {m['platform']}; Python {m['python']}",
           f"- Load average (1/5/15 min) at start: {la(m['loadavg_start'])}; at end: {la(m['loadavg_end'])}",
           "- Libraries: " + ", ".join(f"{TITLES[l]} {data['versions'].get(l, '?')}"
                                       for l in libs if l not in data["unavailable"])]
    ours = next((r for r in data["results"] if r["lib"] == "ours" and r.get("module_file")), None)
    if ours:
        out.append(f"- Our build: {ours['module_file']}, extension built {ours.get('extension_mtime', '?')}")
    out += [f"- **{TITLES[l]} unavailable** ({why}): column is n/a" for l, why in data["unavailable"].items()]
    out.append(
        "\nns per operation, best of the repetitions, wall clock (`time.perf_counter_ns`), GC disabled while "
        "timing, one fresh process per (library, size, element type).  Sets built by the build and algebra rows "
        "are kept alive until after the timing; the one-element variants are dropped as they go (their "
        "deallocation is timed: for frozenset that is a whole copy).  `s` holds n random elements; `a & b`, "
        "`a - b`, `a ^ b` use `s` and a separately built set of n elements, half of them in `s`; the disjoint "
        "union joins two separately built halves of `s`.  frozenset is a reference (copy-on-write: `add` is "
        "`s.union((k,))`, remove is `s.difference((k,))`, transient is a `set` then `frozenset(t)`); "
        "`ours / best peer` excludes it.  > 1 means ours is slower.  pyrsistent sets are built with "
        "`pset(xs, pre_size=2 * len(xs))`: the default `pset(xs)` has 8 hash buckets whatever n is (one "
        "`s.add(x)` on such a 100K-element pset took ~7.5 s here).  `pypersistent 2.0`'s set algebra accepts "
        "only its own sets, so both operands are always built with the same library.\n")
    out.append("| op | n | elems | unit | " + " | ".join(TITLES[l] for l in libs) + " | ours / best peer |")
    out.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(libs) + 1)) + "|")
    losses = []
    for op_id, label, unit, _t, _e in OPS:
        if op_id not in data["ops"]:
            continue
        for n in data["sizes"]:
            for kind in data["key_types"]:
                vals = {l: (idx.get((l, n, kind)) or {}).get("results", {}).get(op_id) for l in libs}
                present = [vals[l] for l in ["ours"] + PEERS if vals.get(l) is not None]
                cells = [("**" + _fmt(vals[l]) + "**") if l != "frozenset" and vals[l] is not None
                         and vals[l] == min(present) else _fmt(vals[l]) for l in libs]
                peers = [(vals[p], p) for p in PEERS if vals.get(p) is not None]
                ratio = "n/a"
                if peers and vals.get("ours") is not None:
                    bv, best = min(peers)
                    r = vals["ours"] / bv
                    ratio = f"{r:.2f}x ({TITLES[best]})" if r >= 0.1 else f"{r:.2g}x ({TITLES[best]})"
                    if r > 1.05:
                        ratio = f"**{ratio}**"
                        losses.append((r, label, n, kind, unit, vals["ours"], best, bv))
                out.append("| " + " | ".join([label, fmt_size(n), kind, unit] + cells + [ratio]) + " |")
    out.append("\n## Rows where PersistentSet is slower than the best peer (ratio > 1.05)\n")
    if not losses:
        out.append("None.")
    else:
        out += ["| ratio | op | n | elems | ours | best peer |", "|---:|---|---|---|---:|---|"]
        for r, label, n, kind, unit, ov, best, bv in sorted(losses, key=lambda x: -x[0]):
            out.append(f"| {r:.2f}x | {label} | {fmt_size(n)} | {kind} | {_fmt(ov)} {unit} | {TITLES[best]}: {_fmt(bv)} |")
    errs = [f"- {r['lib']} n={fmt_size(r['n'])} {r['keys']} {op}: {e}"
            for r in data["results"] for op, e in r.get("errors", {}).items()]
    if errs:
        out += ["\n## Errors\n"] + errs
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~1 min)")
    ap.add_argument("--sizes", default="1K,100K", help="comma list, e.g. 1K,100K,1M (default 1K,100K)")
    ap.add_argument("--keys", default="int,str", help="element types: int,str (default %(default)s)")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"subset of {','.join(LIBS)}")
    ap.add_argument("--ops", default=None, help=f"subset of {','.join(OP_IDS)}")
    ap.add_argument("--pypi-python", default=DEFAULT_PYPI_PYTHON,
                    help="python of the venv holding PyPI pypersistent 2.0 (default %(default)s)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/sets, "
                                                "quick: benchmarks/results/raw/sets_quick)")
    ap.add_argument("--timeout", type=float, default=900, help="per-subprocess timeout, s")
    ap.add_argument("--report-only", metavar="JSON", help="re-render the markdown from a JSON file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key-type", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.n, args.key_type, args.mode, args.ops.split(",") if args.ops else OP_IDS)
        return
    if args.report_only:
        with open(args.report_only) as f:
            data = json.load(f)
        prefix = args.out or os.path.splitext(args.report_only)[0]
    else:
        prefix = args.out or (os.path.join(HERE, "results", "raw", "sets_quick") if args.quick
                              else os.path.join(HERE, "results", "sets"))
        data = orchestrate(args)
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".json", "w") as f:
            json.dump(data, f, indent=1)
    md = render_markdown(data)
    with open(prefix + ".md", "w") as f:
        f.write(md)
    print(f"wrote {prefix}.md" + ("" if args.report_only else f", {prefix}.json"), file=sys.stderr)
    print(md)


if __name__ == "__main__":
    main()
