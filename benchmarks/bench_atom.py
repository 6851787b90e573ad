#!/usr/bin/env python3
"""Shared-state throughput: pypersistent.Atom vs. lock-guarded alternatives.

Three ways for threads to share a map that some of them replace:

  atom        pypersistent.Atom holding a PersistentMap. Readers: m = atom.deref(); m[k].
              Writers: atom.swap(PersistentMap.set, k, v) (compare-and-set, retried on conflict).
  lock+dict   a threading.Lock guarding a plain dict that is never mutated in place. Readers take
              the lock and read the current dict (d = state; then d[k] outside the lock).
              Writers take the lock and replace the dict with a copy plus one key.
  lock+pmap   a threading.Lock guarding a PersistentMap. Readers take the lock and read the
              current map; writers take the lock and replace it with map.set(k, v).

Workloads, each measured with 1, 2, 4, ... up to --max-threads threads (default: twice the CPU
count), every point bounded to --seconds (default 0.3 s):

  read        every thread reads snapshots (snapshot + one lookup = one op)
  write       every thread replaces the map (one update = one op)
  read+1w     every thread reads snapshots while one extra thread writes continuously;
              reported: the readers' ops/s

The map holds --size entries (default 1000); writers overwrite existing keys, so the size stays
the same (the dict copy costs O(size), the persistent updates O(log size)).

Usage:
  python benchmarks/bench_atom.py [--max-threads N] [--seconds S] [--size N] [--repeat R]
                                  [--workloads read,write,read+1w] [--strategies atom,lock+dict,lock+pmap]

Prints Markdown tables of operations per second (higher is better). With the GIL, threads do not
run Python code in parallel, so totals do not grow with threads there; on a free-threaded build
they can grow up to the number of cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import threading
import time
from typing import Callable, Dict, List, Tuple

from pypersistent import Atom, PersistentMap

BATCH = 64  # operations between clock reads


# ---- strategies ---------------------------------------------------------------------------------
# Each strategy builds (read_batch, write_batch): callables that do BATCH operations for thread t.


def make_atom(size: int) -> Tuple[Callable[[int, int], None], Callable[[int, int], None]]:
    keys = list(range(size))
    atom = Atom(PersistentMap.from_dict({k: 0 for k in keys}))
    setter = PersistentMap.set

    def read_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            m = atom.deref()
            m[keys[(i + j) % size]]

    def write_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            atom.swap(setter, keys[(i + j) % size], i + j)

    return read_batch, write_batch


def make_lock_dict(size: int) -> Tuple[Callable[[int, int], None], Callable[[int, int], None]]:
    keys = list(range(size))
    lock = threading.Lock()
    state = [{k: 0 for k in keys}]

    def read_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            with lock:
                d = state[0]
            d[keys[(i + j) % size]]

    def write_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            with lock:
                d = dict(state[0])
                d[keys[(i + j) % size]] = i + j
                state[0] = d

    return read_batch, write_batch


def make_lock_pmap(size: int) -> Tuple[Callable[[int, int], None], Callable[[int, int], None]]:
    keys = list(range(size))
    lock = threading.Lock()
    state = [PersistentMap.from_dict({k: 0 for k in keys})]

    def read_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            with lock:
                m = state[0]
            m[keys[(i + j) % size]]

    def write_batch(t: int, i: int) -> None:
        for j in range(BATCH):
            with lock:
                state[0] = state[0].set(keys[(i + j) % size], i + j)

    return read_batch, write_batch


STRATEGIES: Dict[str, Callable[[int], Tuple[Callable[[int, int], None], Callable[[int, int], None]]]] = {
    "atom": make_atom,
    "lock+dict": make_lock_dict,
    "lock+pmap": make_lock_pmap,
}
WORKLOADS = ("read", "write", "read+1w")


# ---- measurement --------------------------------------------------------------------------------


def measure(strategy: str, workload: str, threads: int, seconds: float, size: int) -> float:
    """Total ops/s of the measured threads (the readers, for read+1w)."""
    read_batch, write_batch = STRATEGIES[strategy](size)
    measured = [read_batch if workload in ("read", "read+1w") else write_batch] * threads
    background = [write_batch] if workload == "read+1w" else []
    n = threads + len(background)
    barrier = threading.Barrier(n + 1)
    stop = threading.Event()
    ops = [0] * threads
    spans = [0.0] * threads
    errors: List[BaseException] = []

    def run_measured(t: int, batch: Callable[[int, int], None]) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            deadline = start + seconds
            i = t * 7919
            count = 0
            now = start
            while now < deadline:
                batch(t, i)
                i += BATCH
                count += BATCH
                now = time.perf_counter()
            ops[t] = count
            spans[t] = now - start
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    def run_background(batch: Callable[[int, int], None]) -> None:
        try:
            barrier.wait()
            i = 1 << 20
            while not stop.is_set():
                batch(threads, i)
                i += BATCH
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=run_measured, args=(t, b), daemon=True) for t, b in enumerate(measured)]
    pool += [threading.Thread(target=run_background, args=(b,), daemon=True) for b in background]
    for th in pool:
        th.start()
    barrier.wait()
    for th in pool[:threads]:
        th.join(seconds * 20 + 30)
    stop.set()
    for th in pool[threads:]:
        th.join(seconds * 20 + 30)
    if any(th.is_alive() for th in pool):
        raise RuntimeError(f"{strategy}/{workload}/{threads}: threads did not finish in time")
    if errors:
        raise errors[0]
    return sum(ops) / max(spans)


def thread_counts(max_threads: int) -> List[int]:
    counts, n = [], 1
    while n < max_threads:
        counts.append(n)
        n *= 2
    counts.append(max_threads)
    return counts


def fmt(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def describe() -> str:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    ft = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    return (
        f"Python {platform.python_version()} ({'free-threaded build' if ft else 'GIL build'}, "
        f"GIL {'enabled' if gil else 'disabled'}), {os.cpu_count()} CPUs, {platform.machine()}"
    )


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-threads", type=int, default=(os.cpu_count() or 1) * 2)
    parser.add_argument("--seconds", type=float, default=0.3, help="duration of each point")
    parser.add_argument("--size", type=int, default=1000, help="entries in the shared map")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each point this many times and report the best (noisy machines)"
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    strategies = [s for s in args.strategies.split(",") if s]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")
    for s in strategies:
        if s not in STRATEGIES:
            parser.error(f"unknown strategy {s!r} (choose from {', '.join(STRATEGIES)})")
    if args.max_threads < 1 or args.size < 1 or args.seconds <= 0 or args.repeat < 1:
        parser.error("--max-threads, --size, --seconds and --repeat must be positive")

    counts = thread_counts(args.max_threads)
    print(f"# Atom benchmark: {describe()}")
    best = f", best of {args.repeat}" if args.repeat > 1 else ""
    print(f"map size {args.size}, {args.seconds:g} s per point{best}; ops/s summed over the measured threads\n")
    results: Dict[Tuple[str, str, int], float] = {}
    for workload in workloads:
        for n in counts:
            for s in strategies:
                results[(workload, s, n)] = max(
                    measure(s, workload, n, args.seconds, args.size) for _ in range(args.repeat)
                )

    titles = {
        "read": "Snapshot reads (snapshot + one lookup)",
        "write": "Updates (swap / copy + one key / set under the lock)",
        "read+1w": "Snapshot reads while one extra thread writes continuously (readers' ops/s)",
    }
    for workload in workloads:
        print(f"## {titles[workload]}\n")
        print("| threads | " + " | ".join(strategies) + " |")
        print("|---:|" + "---:|" * len(strategies))
        for n in counts:
            print(f"| {n} | " + " | ".join(fmt(results[(workload, s, n)]) for s in strategies) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
