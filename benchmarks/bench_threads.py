#!/usr/bin/env python3
"""Read scaling: N reader threads doing lookups on ONE shared map.

Readers on 1, 2, 4, ... N threads (N = os.cpu_count() unless --max-threads) look up random
keys of one shared map of --n entries (default 100K); reported is the total number of
lookups per second over all threads, for pypersistent.PersistentMap and, as the reference,
a plain dict (readers only, no writers), plus optional peers (--libs).

On a free-threaded build (python3.13t / 3.14t, with the GIL disabled) lookups should scale
with the thread count; on a GIL build the total stays flat (or drops) as threads are added:
the script runs on any Python and reports which kind it ran on.

Each point runs for --duration seconds (default 0.5 s), best of --repeats (default 1).

Usage:
  python benchmarks/bench_threads.py
  python3.14t benchmarks/bench_threads.py --max-threads 16 --duration 0.5 --repeats 3
  python benchmarks/bench_threads.py --libs ours,dict,immutables --keys str --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import sysconfig
import threading
import time

SEED = 424242
CHUNK = 1024


def make_map(lib: str, d: dict):
    if lib == "ours":
        from pypersistent import PersistentMap

        return PersistentMap.from_dict(d)
    if lib == "dict":
        return dict(d)
    if lib == "immutables":
        import immutables

        return immutables.Map(d)
    if lib == "rpds":
        import rpds

        return rpds.HashTrieMap(d)
    if lib == "pyrsistent":
        import pyrsistent

        return pyrsistent.pmap(d)
    raise ValueError(lib)


TITLES = {"ours": "PersistentMap", "dict": "dict", "immutables": "immutables",
          "rpds": "rpds", "pyrsistent": "pyrsistent"}


def reader(m, chunks, barrier, duration, counts, idx):
    perf = time.perf_counter
    n = 0
    barrier.wait()
    end = perf() + duration
    while True:
        for ks in chunks:
            for k in ks:  # same loop shape for every library
                m[k]
            n += len(ks)
            if perf() >= end:
                counts[idx] = n
                return


def one_point(m, key_lists, threads: int, duration: float) -> tuple[float, float]:
    """Return (total lookups per second, CPU cores busy = process CPU time / wall time)."""
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    ts = [threading.Thread(target=reader, args=(m, key_lists[i], barrier, duration, counts, i))
          for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return sum(counts) / wall, cpu / wall


def thread_counts(max_threads: int) -> list[int]:
    out, t = [], 1
    while t < max_threads:
        out.append(t)
        t *= 2
    out.append(max_threads)
    return out


def gil_status() -> str:
    ft_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    enabled = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    if not ft_build:
        return "GIL build (no scaling expected)"
    return "free-threaded build, GIL " + ("ENABLED at runtime (no scaling expected)" if enabled
                                          else "disabled")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="map size (default 100000)")
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--duration", type=float, default=0.5, help="seconds per point (default 0.5)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per point")
    ap.add_argument("--libs", default="ours,dict", help="comma list of ours,dict,immutables,rpds,pyrsistent")
    ap.add_argument("--keys", default="int", choices=["int", "str"])
    ap.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = ap.parse_args(argv)

    rng = random.Random(SEED)
    keys = [rng.getrandbits(62) for _ in range(args.n)]
    if args.keys == "str":
        keys = [f"k{x:x}" for x in keys]
    d = dict(zip(keys, keys))
    libs, maps, skipped = [], {}, {}
    for lib in args.libs.split(","):
        try:
            maps[lib] = make_map(lib, d)
            libs.append(lib)
        except Exception as e:
            skipped[lib] = f"{type(e).__name__}: {e}"
    counts = thread_counts(args.max_threads)
    # one shuffled key order per thread, pre-split into chunks (thread-private lists)
    key_lists = []
    for i in range(max(counts)):
        ks = keys[:]
        random.Random(SEED + 1 + i).shuffle(ks)
        key_lists.append([ks[j:j + CHUNK] for j in range(0, len(ks), CHUNK)])

    res: dict = {lib: {} for lib in libs}
    busy: dict = {lib: {} for lib in libs}
    for lib in libs:
        m = maps[lib]
        one_point(m, key_lists, 1, min(0.1, args.duration))  # warm-up
        for t in counts:
            res[lib][t], busy[lib][t] = max(one_point(m, key_lists, t, args.duration)
                                            for _ in range(args.repeats))
            print(f"  {lib:<10} threads={t:<3} {res[lib][t] / 1e6:8.2f} M lookups/s, "
                  f"{busy[lib][t]:.2f} cores busy",
                  file=sys.stderr, flush=True)

    ver = ""
    try:
        import pypersistent

        ver = (f"pypersistent {getattr(pypersistent, '__version__', '?')} "
               f"(FREE_THREADED_BUILD={getattr(pypersistent, 'FREE_THREADED_BUILD', '?')})")
    except Exception:
        pass
    lines = [
        f"# Read scaling: lookups on one shared {args.n:,}-entry map ({args.keys} keys)\n",
        f"- Command: `python {' '.join(sys.argv)}`",
        f"- Python {platform.python_version()} ({sys.implementation.name}), {gil_status()}; {ver}",
        f"- {os.cpu_count()} logical cores; {args.duration} s per point, best of {args.repeats}; "
        f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'}",
        "- `cores busy` = process CPU time / wall time during the point (about 1 on a GIL build; "
        "below the thread count when the machine is busy with other work)",
    ]
    for lib, why in skipped.items():
        lines.append(f"- {lib}: skipped ({why})")
    lines.append("")
    head = ["threads"]
    for lib in libs:
        head += [f"{TITLES[lib]} M lookups/s", f"{TITLES[lib]} speedup", "cores busy"]
    if "ours" in libs and "dict" in libs:
        head.append("PersistentMap / dict")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---:"] * len(head)) + "|")
    for t in counts:
        row = [str(t)]
        for lib in libs:
            v = res[lib][t]
            row += [f"{v / 1e6:.2f}", f"{v / res[lib][1]:.2f}x", f"{busy[lib][t]:.2f}"]
        if "ours" in libs and "dict" in libs:
            row.append(f"{res['ours'][t] / res['dict'][t]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "keys": args.keys, "python": sys.version, "gil": gil_status(),
                       "duration": args.duration, "repeats": args.repeats,
                       "results": {lib: {str(t): v for t, v in r.items()} for lib, r in res.items()},
                       "cores_busy": {lib: {str(t): v for t, v in r.items()} for lib, r in busy.items()},
                       "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
