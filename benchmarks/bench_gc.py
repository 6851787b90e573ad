#!/usr/bin/env python3
"""What the cyclic garbage collector costs with persistent maps, ours against immutables.

Rows (each measured in a fresh subprocess per library, median of --repeat runs):

  full collection, live versions   gc.collect() while 1,000 versions of a map of N keys are alive
                                   (each one key apart, so they share almost every node)
  collect dropped history cycles   gc.collect() of 200 dropped cycles: an object that keeps 20
                                   versions of an N-key map, each of which holds the object
  cycles left after collect        how many of those 200 objects survive (0 = all collected)

Usage:
  python benchmarks/bench_gc.py                     # N = 1K, 100K -> prints a Markdown table
  python benchmarks/bench_gc.py --sizes 1K --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

LIBS = ["ours", "immutables"]


def make_map(lib: str, items: dict):  # type: ignore[no-untyped-def]
    if lib == "ours":
        from pypersistent import PersistentMap

        return PersistentMap(items)
    import immutables

    return immutables.Map(items)


def worker(lib: str, n: int) -> dict:
    gc.disable()
    base = make_map(lib, {i: [i] for i in range(n)})
    versions = [base.set(i % n, "changed") for i in range(1000)]
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    full_live = time.perf_counter() - t0

    class Doc:
        def __init__(self) -> None:
            self.history: list = []

    import weakref

    refs = []
    for _ in range(200):
        d = Doc()
        m = base.set("owner", d)
        for i in range(20):
            m = m.set(i % n, -i)
            d.history.append(m)
        refs.append(weakref.ref(d))
        del d, m
    t0 = time.perf_counter()
    gc.collect()
    collect_cycles = time.perf_counter() - t0
    left = sum(r() is not None for r in refs)
    del versions
    return {"full_live_ms": full_live * 1e3, "collect_cycles_ms": collect_cycles * 1e3, "left": left}


def parse_size(s: str) -> int:
    s = s.strip().upper()
    return int(float(s[:-1]) * (1000 if s.endswith("K") else 1_000_000)) if s[-1] in "KM" else int(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1K,100K")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    print(f"Python {sys.version.split()[0]}; median of {args.repeat} runs, each in a fresh process\n")
    print("| N | library | full collection, 1,000 live versions (ms) | collect 200 dropped history cycles (ms) | cycles left |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        n = parse_size(size)
        for lib in LIBS:
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", lib, str(n)], capture_output=True, text=True, check=True
                )
                runs.append(json.loads(out.stdout))
            full = statistics.median(r["full_live_ms"] for r in runs)
            cyc = statistics.median(r["collect_cycles_ms"] for r in runs)
            left = max(r["left"] for r in runs)
            print(f"| {size} | {lib} | {full:.2f} | {cyc:.2f} | {left} |")


if __name__ == "__main__":
    main()
