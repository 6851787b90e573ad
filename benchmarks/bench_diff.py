#!/usr/bin/env python3
"""What changed between two snapshots: PersistentMap.diff against comparing dicts.

Two versions of a map of n int keys, the second derived from the first by k edits (a third each
changed, removed and added). Measured, per size n and number of changes k:

  diff            old.diff(new) on PersistentMaps (shared subtrees skipped: about k log n)
  dict compare    the same answer from two dicts: keys only in one, and keys whose values
                  differ (O(n))
  set diff        old.diff(new) on PersistentSets of the same keys
  sorted diff     old.diff(new) on PersistentSortedDicts (shared subtrees skipped: about k log n)

Each cell is the best of --repeat timings, in microseconds per diff, with the GC disabled.

  python benchmarks/bench_diff.py                          # sizes 1K,100K,1M; changes 10,1000
  python benchmarks/bench_diff.py --sizes 1K,100K --changes 10 --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from pypersistent import PersistentMap, PersistentSet, PersistentSortedDict


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def dict_diff(old: dict, new: dict):
    added = {k: new[k] for k in new.keys() - old.keys()}
    removed = {k: old[k] for k in old.keys() - new.keys()}
    changed = {k: (v, new[k]) for k, v in old.items() if k in new and new[k] is not v and new[k] != v}
    return added, removed, changed


def best_of(fn, repeat: int, min_time: float = 0.05) -> float:
    """Best time per call in seconds, calls batched so that one timing lasts >= min_time."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or loops >= 1 << 20:
            break
        loops *= 4
    best = elapsed / loops
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1K,100K,1M")
    parser.add_argument("--changes", default="10,1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(20261204)
    print("| size | changes | diff (µs) | dict compare (µs) | dict / diff | set diff (µs) | sorted diff (µs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gc.disable()
    for n in map(parse_size, args.sizes.split(",")):
        keys = rng.sample(range(1 << 40), n)
        old = PersistentMap.from_dict({k: k for k in keys})
        old_dict = dict(old)
        old_set = PersistentSet(keys)
        old_sorted = PersistentSortedDict(old_dict)
        for k in map(int, args.changes.split(",")):
            if 3 * k > n:
                continue
            t = old.transient()
            s = old_set.transient()
            o = old_sorted.transient()
            victims = rng.sample(keys, 2 * k)
            for key in victims[:k]:
                t[key] = -key  # changed
                o[key] = -key
            for key in victims[k:]:
                del t[key]  # removed
                del o[key]
                s.discard(key)
            for i in range(k):
                t[(1 << 41) + i] = i  # added
                o[(1 << 41) + i] = i
                s.add((1 << 41) + i)
            new, new_set, new_sorted = t.persistent(), s.persistent(), o.persistent()
            new_dict = dict(new)
            result = old.diff(new)
            want = dict_diff(old_dict, new_dict)
            assert (dict(result.added), dict(result.removed), dict(result.changed)) == want
            result = old_sorted.diff(new_sorted)
            assert (dict(result.added), dict(result.removed), dict(result.changed)) == want
            ours = best_of(lambda: old.diff(new), args.repeat)
            theirs = best_of(lambda: dict_diff(old_dict, new_dict), args.repeat)
            sets = best_of(lambda: old_set.diff(new_set), args.repeat)
            sort = best_of(lambda: old_sorted.diff(new_sorted), args.repeat)
            print(f"| {n:,} | {k:,} | {ours * 1e6:,.1f} | {theirs * 1e6:,.1f} | {theirs / ours:,.0f}x "
                  f"| {sets * 1e6:,.1f} | {sort * 1e6:,.1f} |", flush=True)
    gc.enable()


if __name__ == "__main__":
    main()
