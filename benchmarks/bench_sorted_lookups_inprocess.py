"""Lookups `m[k]` of PersistentSortedDict and sortedcontainers.SortedDict, timed in turn in one process.

bench_sorted.py measures each library in its own worker process and keeps each cell's best run.
At 100K keys a process's lookups move by up to 2x with where its memory happens to land, so a
ratio of two bests from different processes can land anywhere in that spread. Here both maps are
built from the same keys (bench_sorted.py's: int keys inserted one by one, str keys "user:%08d"
built in bulk) in
one process and their lookup loops run in turn, best of --rounds rounds each; that is repeated in
--repeat fresh processes, and the table gives the median of each library's times and the median
of the processes' own ratios.

  python benchmarks/bench_sorted_lookups_inprocess.py                      # 1K and 100K, 5 processes
  python benchmarks/bench_sorted_lookups_inprocess.py --sizes 100K --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List

from bench_sorted import PROBES, fmt_size, parse_size, reps_for, sample  # the same sampling and probes as bench_sorted.py

LIBS = ["ours", "sorteddict"]
OPS = ["lookup", "lookup_str"]


def worker(size: int, rounds: int) -> Dict[str, Dict[str, float]]:
    from sortedcontainers import SortedDict

    from pypersistent import PersistentSortedDict

    rng = random.Random(1)
    keys = list(range(size))
    rng.shuffle(keys)
    # 100K random probes at every size: a shorter stream looped over (1K probes into a 1K map)
    # is learned by the CPU's branch predictor, which then foresees every turn of a search.
    probes = [rng.randrange(size) for _ in range(PROBES)]
    names = [f"user:{k:08d}" for k in keys]
    int_pairs = [(k, -k) for k in keys]
    str_pairs = list(zip(names, keys))
    by_inserts = PersistentSortedDict()  # as bench_sorted.py builds its int map: one insert at a time
    for k, v in int_pairs:
        by_inserts = by_inserts.set(k, v)
    maps = {
        "lookup": {"ours": by_inserts, "sorteddict": SortedDict(int_pairs)},
        "lookup_str": {"ours": PersistentSortedDict(str_pairs), "sorteddict": SortedDict(str_pairs)},
    }
    probe_keys = {"lookup": probes, "lookup_str": [names[i] for i in probes]}
    out: Dict[str, Dict[str, float]] = {}
    for op in OPS:
        ks = probe_keys[op]

        def loop_of(m: Any) -> Callable[[], int]:
            def loop() -> int:
                for k in ks:
                    m[k]
                return len(ks)

            return loop

        loops = {lib: loop_of(maps[op][lib]) for lib in LIBS}
        reps = {lib: reps_for(sample(loops[lib], 1)[0]) for lib in LIBS}
        best = {lib: float("inf") for lib in LIBS}
        for r in range(rounds):
            for lib in LIBS if r % 2 == 0 else LIBS[::-1]:
                dt, n = sample(loops[lib], reps[lib])
                best[lib] = min(best[lib], dt / n)
        out[op] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1K,100K")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per size")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rounds)))
        return
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    runs: Dict[int, List[Dict[str, Dict[str, float]]]] = {size: [] for size in sizes}
    for _ in range(args.repeat):
        for size in sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(size), "--rounds", str(args.rounds)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
            runs[size].append(json.loads(p.stdout))
    print(f"PersistentSortedDict and SortedDict lookups in one process, ns per lookup (best of {args.rounds} "
          f"rounds; median of {args.repeat} processes); Python {sys.version.split()[0]}\n")
    print("| op | keys | ours | SortedDict | ours / SortedDict (median of the processes' ratios) | range of the ratios |")
    print("|---|---:|---:|---:|---:|---|")
    for op in OPS:
        for size in sizes:
            cells = [r[op] for r in runs[size]]
            ours = statistics.median(c["ours"] for c in cells)
            theirs = statistics.median(c["sorteddict"] for c in cells)
            ratios = sorted(c["ours"] / c["sorteddict"] for c in cells)
            print(f"| {op} | {fmt_size(size)} | {ours:.1f} | {theirs:.1f} | {statistics.median(ratios):.2f}x | "
                  f"{ratios[0]:.2f}x - {ratios[-1]:.2f}x |")


if __name__ == "__main__":
    main()
