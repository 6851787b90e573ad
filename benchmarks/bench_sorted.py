#!/usr/bin/env python3
"""PersistentSortedDict against its peers, in ns per operation (best of several rounds).

Libraries (a column is skipped when its library cannot be loaded):

  ours        pypersistent.PersistentSortedDict (this repository, installed into the running Python)
  pypi-2.0    PyPI's pypersistent 2.0 PersistentSortedDict. It has this project's import name, so it
              is loaded from its extension file under that name in a worker process of its own:
              --pypi-so (default build/pp20/pypersistent.cpython-311-*.so, unpacked from
              `pip download pypersistent==2.0.0`; the Python must match the wheel's)
  sorteddict  sortedcontainers.SortedDict: mutable, for reference (its "insert" is sd[k] = v)

Operations, on a map of SIZE int keys (inserted in random order):

  insert      build the map by one persistent set per key (ours set, 2.0 assoc; SortedDict: sd[k] = v)
  build       bulk build from a list of pairs: ours PersistentSortedDict(pairs); 2.0 from_dict(dict(pairs));
              SortedDict(pairs)
  lookup      m[k] for random present keys, 100K of them at every size (PROBES)
  lookup_str  m[k] on a map of SIZE str keys "user:%08d" (built in bulk, as build), random present
              keys (the stored key objects themselves, as a program that reads its own keys does)
  range       the keys lo <= k < lo + 100 as a list, per query (ours list(m.irange(lo, hi,
              (True, False))); 2.0 m.subseq(lo, hi).keys_list(); SortedDict list(sd.irange(...)))
  subseq      m.subseq(lo, lo + 100): a new map of 100 entries, per query (ours and 2.0)
  iterate     for k, v in m.items(), per entry

Usage:
  python benchmarks/bench_sorted.py                       # sizes 1K,100K, 3 interleaved runs
  python benchmarks/bench_sorted.py --sizes 1K --libs ours,sorteddict --ops lookup
"""

from __future__ import annotations

import argparse
import gc
import glob
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBS = ["ours", "pypi-2.0", "sorteddict"]
OPS = ["insert", "build", "lookup", "lookup_str", "range", "subseq", "iterate"]
SPAN = 100  # keys per range query
PROBES = 100_000  # lookups per timed loop, at every size


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1000, "M": 1000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def fmt_size(n: int) -> str:
    return f"{n // 1000_000}M" if n >= 1000_000 else f"{n // 1000}K" if n >= 1000 else str(n)


# --------------------------------------------------------------------------------------
# Worker: one library, one size
# --------------------------------------------------------------------------------------


def load(lib: str, pypi_so: Optional[str]) -> Dict[str, Any]:
    """The operations of one library as plain functions (None where it has none)."""
    if lib == "ours":
        from pypersistent import PersistentSortedDict as S

        return dict(
            empty=S, insert=lambda m, k, v: m.set(k, v), build=S,
            range=lambda m, lo, hi: list(m.irange(lo, hi, (True, False))),
            subseq=lambda m, lo, hi: m.subseq(lo, hi), items=lambda m: m.items(),
        )
    if lib == "pypi-2.0":
        if not pypi_so or not os.path.exists(pypi_so):
            raise ImportError("no pypersistent 2.0 extension file (--pypi-so)")
        spec = importlib.util.spec_from_file_location("pypersistent", pypi_so)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        S2 = mod.PersistentSortedDict
        return dict(
            empty=S2, insert=lambda m, k, v: m.assoc(k, v), build=lambda pairs: S2.from_dict(dict(pairs)),
            range=lambda m, lo, hi: m.subseq(lo, hi).keys_list(),
            subseq=lambda m, lo, hi: m.subseq(lo, hi), items=lambda m: m.items(),
        )
    if lib == "sorteddict":
        from sortedcontainers import SortedDict

        def insert(m: Any, k: Any, v: Any) -> Any:
            m[k] = v
            return m

        return dict(
            empty=SortedDict, insert=insert, build=SortedDict,
            range=lambda m, lo, hi: list(m.irange(lo, hi, inclusive=(True, False))),
            subseq=None, items=lambda m: m.items(),
        )
    raise ValueError(lib)


SAMPLE_NS = 20_000_000  # each timed sample repeats the operations for at least this long


def sample(f: Callable[[], int], reps: int) -> Tuple[int, int]:
    """(ns, operations) of reps runs of f() with the collector off: f() runs the operations and
    returns how many it ran."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        n = 0
        for _ in range(reps):
            n += f()
        t1 = time.perf_counter_ns()
    finally:
        gc.enable()
    return t1 - t0, n


def reps_for(dt: int) -> int:
    """How many runs of an f() that took dt ns make a sample of at least SAMPLE_NS."""
    return max(1, -(-SAMPLE_NS // max(dt, 1)))


def best(f: Callable[[], int], rounds: int) -> float:
    """ns per op, the best of `rounds` samples: f() runs the operations and returns how many it ran.

    As in bench_peers.py, a sample repeats f() for at least SAMPLE_NS (the first, untimed-for-
    the-result run calibrates and warms up): a single pass over a small map right after
    gc.collect() would time cache misses the collector caused, not the operation."""
    dt, n = sample(f, 1)
    reps = reps_for(dt)
    results = [dt / n] if reps == 1 else []
    while len(results) < rounds:
        dt, n = sample(f, reps)
        results.append(dt / n)
    return min(results)


def worker(lib: str, size: int, pypi_so: Optional[str], rounds: int, ops: List[str]) -> Dict[str, Any]:
    api = load(lib, pypi_so)
    rng = random.Random(1)
    keys = list(range(size))
    rng.shuffle(keys)
    pairs = [(k, -k) for k in keys]
    insert = api["insert"]
    m = api["empty"]()
    for k, v in pairs:
        m = insert(m, k, v)
    # 100K random probes at every size: a shorter stream looped over (1K probes into a 1K map)
    # is learned by the CPU's branch predictor, which then foresees every turn of a search.
    probes = [rng.randrange(size) for _ in range(PROBES)]
    starts = [rng.randrange(max(1, size - SPAN)) for _ in range(1000)]
    out: Dict[str, Any] = {}
    if "insert" in ops:

        def run_insert() -> int:
            v = api["empty"]()
            for k, x in pairs:
                v = insert(v, k, x)
            return size

        out["insert"] = best(run_insert, rounds)
    if "build" in ops and api.get("build"):
        out["build"] = best(lambda: (api["build"](pairs), size)[1], rounds)
    if "lookup" in ops:

        def run_lookup() -> int:
            for k in probes:
                m[k]
            return len(probes)

        out["lookup"] = best(run_lookup, rounds)
    if "lookup_str" in ops and api.get("build"):
        names = [f"user:{k:08d}" for k in keys]
        by_name = api["build"]([(name, k) for name, k in zip(names, keys)])
        name_probes = [names[i] for i in probes]

        def run_lookup_str() -> int:
            for k in name_probes:
                by_name[k]
            return len(name_probes)

        out["lookup_str"] = best(run_lookup_str, rounds)
    if "range" in ops:
        rangef = api["range"]
        assert len(rangef(m, starts[0], starts[0] + SPAN)) == min(SPAN, size)

        def run_range() -> int:
            for lo in starts:
                rangef(m, lo, lo + SPAN)
            return len(starts)

        out["range"] = best(run_range, rounds)
    if "subseq" in ops and api.get("subseq"):
        subseq = api["subseq"]

        def run_subseq() -> int:
            for lo in starts:
                subseq(m, lo, lo + SPAN)
            return len(starts)

        out["subseq"] = best(run_subseq, rounds)
    if "iterate" in ops:
        items = api["items"]

        def run_iter() -> int:
            for _k, _v in items(m):
                pass
            return size

        out["iterate"] = best(run_iter, rounds)
    return out


# --------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------


def default_pypi_so() -> Optional[str]:
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    found = glob.glob(os.path.join(REPO, "build", "pp20", f"pypersistent.{tag}-*.so"))
    return found[0] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1K,100K")
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3,
                    help="run every worker this many times, libraries interleaved, and keep each cell's best")
    ap.add_argument("--pypi-so", default=default_pypi_so())
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--worker", nargs=2, metavar=("LIB", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    ops = args.ops.split(",")
    if args.worker:
        lib, size = args.worker
        print(json.dumps(worker(lib, int(size), args.pypi_so, args.rounds, ops)))
        return
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    libs = args.libs.split(",")
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    # Workers of all libraries take turns (in alternating order) so that a noisy stretch of the
    # machine hits every library alike; each cell keeps its best run.
    for rep in range(args.repeat):
        for size in sizes:
            for lib in libs if rep % 2 == 0 else libs[::-1]:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, str(size), "--rounds",
                       str(args.rounds), "--ops", args.ops]
                if args.pypi_so:
                    cmd += ["--pypi-so", args.pypi_so]
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if p.returncode != 0:
                    if rep == 0:
                        why = p.stderr.strip().splitlines()[-1] if p.stderr else "?"
                        print(f"  {lib} {fmt_size(size)}: n/a ({why})", file=sys.stderr)
                    continue
                cell = table.setdefault(fmt_size(size), {}).setdefault(lib, {})
                for op, ns in json.loads(p.stdout).items():
                    cell[op] = min(ns, cell.get(op, ns))
    print(f"PersistentSortedDict vs peers, ns per op (best of {args.rounds} rounds x {args.repeat} runs); "
          f"Python {sys.version.split()[0]}")
    for size_name, per_lib in table.items():
        print(f"\n### {size_name} keys\n")
        present = [lib for lib in libs if lib in per_lib]
        print("| op | " + " | ".join(present) + " |")
        print("|---|" + "---:|" * len(present))
        for op in ops:
            cells = [f"{per_lib[lib][op]:.1f}" if op in per_lib[lib] else "-" for lib in present]
            print(f"| {op} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
