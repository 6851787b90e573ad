#!/usr/bin/env python3
"""PersistentList against its peers, in ns per operation (best of several rounds).

Libraries (a column is skipped when its library cannot be loaded):

  ours        pypersistent.PersistentList (this repository, installed into the running Python)
  pyrsistent  pyrsistent.pvector (its C extension pvectorc when built)
  pypi-2.0    PyPI's pypersistent 2.0 PersistentList. It has this project's import name, so it is
              loaded from its extension file under that name in a worker process of its own:
              --pypi-so (default build/pp20/pypersistent.cpython-311-*.so, unpacked from
              `pip download pypersistent==2.0.0`; the Python must match the wheel's)
  rpds        rpds.List (rpds-py): a cons list, so only prepend and iterate
  list        Python's list, for reference; "variants" copies it and sets one element

Operations, each on a list of SIZE elements:

  append      build SIZE elements by one persistent append each (ours conj, pyrsistent
              append, 2.0 conj, rpds push_front, list: mutable append)
  build_t     the same through a transient / evolver (ours transient().append, pyrsistent
              evolver().append)
  index       l[i] for random i
  set         one-element variants: l.set(i, x) from the same list (list: copy, then l[i] = x)
  iterate     for x in l, per element
  eq          l == copy built separately, per element

Usage:
  python benchmarks/bench_list.py                       # sizes 1K,100K, 3 interleaved runs
  python benchmarks/bench_list.py --sizes 1K,100K,1M --libs ours,pyrsistent
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
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBS = ["ours", "pyrsistent", "pypi-2.0", "rpds", "list"]
OPS = ["append", "build_t", "index", "set", "iterate", "eq"]


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1000, "M": 1000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def fmt_size(n: int) -> str:
    return f"{n // 1000_000}M" if n >= 1000_000 else f"{n // 1000}K" if n >= 1000 else str(n)


# --------------------------------------------------------------------------------------
# Worker: one library, one size
# --------------------------------------------------------------------------------------


def load(lib: str, pypi_so: Optional[str]) -> Dict[str, Callable[..., Any]]:
    """The operations of one library as plain functions (None where it has none)."""
    if lib == "ours":
        from pypersistent import PersistentList as L

        def build_t(items: List[Any]) -> Any:
            t = L().transient()
            a = t.append
            for x in items:
                a(x)
            return t.persistent()

        return dict(make=L, append=lambda l, x: l.conj(x), empty=L, build_t=build_t, set=lambda l, i, x: l.set(i, x))
    if lib == "pyrsistent":
        import pyrsistent

        def build_t(items: List[Any]) -> Any:
            e = pyrsistent.pvector().evolver()
            a = e.append
            for x in items:
                a(x)
            return e.persistent()

        return dict(
            make=pyrsistent.pvector, append=lambda l, x: l.append(x), empty=pyrsistent.pvector,
            build_t=build_t, set=lambda l, i, x: l.set(i, x),
        )
    if lib == "pypi-2.0":
        if not pypi_so or not os.path.exists(pypi_so):
            raise ImportError("no pypersistent 2.0 extension file (--pypi-so)")
        spec = importlib.util.spec_from_file_location("pypersistent", pypi_so)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        L = mod.PersistentList
        return dict(make=L.from_list, append=lambda l, x: l.conj(x), empty=L, build_t=None,
                    set=lambda l, i, x: l.assoc(i, x))
    if lib == "rpds":
        import rpds

        return dict(make=rpds.List, append=lambda l, x: l.push_front(x), empty=rpds.List, build_t=None, set=None,
                    no_index=True)
    if lib == "list":

        def variant(l: List[Any], i: int, x: Any) -> List[Any]:
            c = l.copy()
            c[i] = x
            return c

        def build_t(items: List[Any]) -> List[Any]:
            out: List[Any] = []
            a = out.append
            for x in items:
                a(x)
            return out

        return dict(make=list, append=None, empty=list, build_t=build_t, set=variant)
    raise ValueError(lib)


def best(f: Callable[[], int], rounds: int) -> float:
    """ns per op: f() runs the operations and returns how many it ran."""
    results = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        t0 = time.perf_counter_ns()
        n = f()
        t1 = time.perf_counter_ns()
        gc.enable()
        results.append((t1 - t0) / n)
    return min(results)


def worker(lib: str, size: int, pypi_so: Optional[str], rounds: int, ops: List[str]) -> Dict[str, Any]:
    api = load(lib, pypi_so)
    items = list(range(size))
    l = api["make"](items)
    rng = random.Random(1)
    idx = [rng.randrange(size) for _ in range(min(size, 100_000))]
    out: Dict[str, Any] = {}
    if "append" in ops:
        append = api["append"]
        if append is not None:
            n_append = min(size, 200_000)

            def run_append() -> int:
                v = api["empty"]()
                for x in items[:n_append]:
                    v = append(v, x)
                return n_append

            out["append"] = best(run_append, rounds)
        elif lib == "list":

            def run_list_append() -> int:
                v: List[Any] = []
                a = v.append
                for x in items:
                    a(x)
                return size

            out["append"] = best(run_list_append, rounds)
    if "build_t" in ops and api.get("build_t"):
        out["build_t"] = best(lambda: (api["build_t"](items), size)[1], rounds)
    if "index" in ops and not api.get("no_index"):

        def run_index() -> int:
            for i in idx:
                l[i]
            return len(idx)

        out["index"] = best(run_index, rounds)
    if "set" in ops and api.get("set"):
        setf = api["set"]
        n_var = 100

        def run_set() -> int:
            done = 0
            for _ in range(20):  # 20 times 100 one-element variants, each batch kept alive
                keep = [setf(l, i, -1) for i in idx[:n_var]]
                done += len(keep)
            return done

        out["set"] = best(run_set, rounds)
    if "iterate" in ops:

        def run_iter() -> int:
            for _x in l:
                pass
            return size

        out["iterate"] = best(run_iter, rounds)
    if "eq" in ops and lib != "rpds":
        other = api["make"](list(items))

        def run_eq() -> int:
            assert l == other
            return size

        out["eq"] = best(run_eq, rounds)
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
    print(f"PersistentList vs peers, ns per op (best of {args.rounds} rounds x {args.repeat} runs); "
          f"Python {sys.version.split()[0]}")
    for size_name, per_lib in table.items():
        print(f"\n### {size_name} elements\n")
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
