"""PersistentSortedDict lookups of several builds of the extension, timed in turn in one process.

To compare a change with what it replaces without the spread between processes (at 100K keys a
process's lookups move by up to 2x with where its memory lands): each build is installed into a
folder of its own, e.g.

  pip install --no-build-isolation --no-deps -Cbuild-dir=build/base-311 --target build/base-site .

and each folder's extension file is loaded under a name of its own, so that all of them live in
one process. Every build gets the same keys (bench_sorted.py's: int keys inserted one by one,
str keys "user:%08d" built in bulk) and the same stream of random probes; the loops run in turn,
the order reversed every round, and the table gives each build's best and median round.

  python benchmarks/ab_sorted_builds.py build/base-site build/head-site --sizes 1K,100K
  python benchmarks/ab_sorted_builds.py build/base-site --sizes 1K --probes 1000   # 1,000 probes looped over
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import random
import statistics
import time
from typing import Any, Callable, List

from bench_sorted import PROBES, fmt_size, parse_size


def load_class(site: str, tag: str) -> Any:
    (path,) = glob.glob(os.path.join(site, "pypersistent", "_pypersistent*.so"))
    spec = importlib.util.spec_from_file_location(f"{tag}._pypersistent", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PersistentSortedDict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sites", nargs="+", help="folders a build was installed into with pip --target")
    ap.add_argument("--sizes", default="1K,100K")
    ap.add_argument("--probes", type=int, default=PROBES, help="random probes (default %(default)s)")
    ap.add_argument("--lookups", type=int, default=2 * PROBES, help="per round, the probes looped over (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    classes = [load_class(site, f"build{i}") for i, site in enumerate(args.sites)]
    print(f"ns per lookup, {args.lookups} lookups per round looping over {args.probes} random probes, "
          f"best / median of {args.rounds} rounds\n")
    print("| keys | kind | " + " | ".join(os.path.basename(s.rstrip("/")) for s in args.sites) + " |")
    print("|---|---|" + "---:|" * len(args.sites))
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        rng = random.Random(1)
        keys = list(range(size))
        rng.shuffle(keys)
        probes = [rng.randrange(size) for _ in range(args.probes)]
        names = [f"user:{k:08d}" for k in keys]
        for kind in ("int", "str"):
            maps: List[Any] = []
            for cls in classes:
                if kind == "int":
                    m = cls()
                    for k in keys:
                        m = m.set(k, -k)
                else:
                    m = cls(zip(names, keys))
                maps.append(m)
            ks = probes if kind == "int" else [names[i] for i in probes]

            passes = max(1, args.lookups // len(ks))

            def timed(m: Any) -> float:
                t0 = time.perf_counter()
                for _ in range(passes):
                    for k in ks:
                        m[k]
                return (time.perf_counter() - t0) / (passes * len(ks)) * 1e9

            times: List[List[float]] = [[] for _ in maps]
            for r in range(args.rounds):
                order = range(len(maps)) if r % 2 == 0 else reversed(range(len(maps)))
                for i in order:
                    times[i].append(timed(maps[i]))
            cells = [f"{min(t):.1f} / {statistics.median(t):.1f}" for t in times]
            print(f"| {fmt_size(size)} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
