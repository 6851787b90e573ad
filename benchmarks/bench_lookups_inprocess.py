"""Lookup hits `m[k]` of PersistentMap, immutables.Map and dict, timed in turn in one process.

bench_peers.py measures each library in its own subprocess, which is fair but leaves a run-to-run
spread of a few percent (memory layout, ASLR). When two libraries are that close, this script
settles it: the three maps are built from the same keys in one process and their lookup loops
run in turn, best of 9 rounds (CPU time, GC off).

  python benchmarks/bench_lookups_inprocess.py                 # 1K and 100K, int and str keys
  python benchmarks/bench_lookups_inprocess.py --sizes 1000 --keys str
"""

from __future__ import annotations

import argparse
import gc
import random
import time


def measure(n: int, kind: str, rounds: int) -> dict[str, float]:
    import immutables
    from pypersistent import PersistentMap

    rng = random.Random(1)
    keys = [rng.getrandbits(62) for _ in range(n)]
    if kind == "str":
        keys = ["k%x" % k for k in keys]
    for k in keys:
        hash(k)
    d = {k: k for k in keys}
    maps = {"PersistentMap": PersistentMap.from_dict(d), "immutables": immutables.Map(d), "dict": d}
    probes = keys[:]
    rng.shuffle(probes)
    reps = max(1, 400_000 // n)

    def loop(m, probes=probes):
        for k in probes:
            m[k]

    best = {name: float("inf") for name in maps}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, m in maps.items():
                t0 = time.process_time_ns()
                for _ in range(reps):
                    loop(m)
                best[name] = min(best[name], (time.process_time_ns() - t0) / (reps * n))
    finally:
        gc.enable()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--keys", default="int,str")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    print("ns per m[k] hit, best of %d rounds" % args.rounds)
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in args.keys.split(","):
            best = measure(n, kind, args.rounds)
            ratio = best["PersistentMap"] / best["immutables"]
            cells = "  ".join(f"{name} {ns:6.1f}" for name, ns in best.items())
            print(f"n={n:<7} {kind:3}  {cells}  ours/immutables {ratio:.2f}x")


if __name__ == "__main__":
    main()
