"""Lookups of PersistentMap, immutables.Map and dict counted, not timed: instructions and
simulated cache misses per lookup, from valgrind's cachegrind.

Wall-clock and CPU-time figures for lookups move by several percent between runs, and by far
more on a shared machine whose neighbours compete for memory. The counts here come out the same
on every run (same binaries, same inputs, hash seed fixed), so they settle whether one map does
less work per lookup than another when the timings are too close to call. They leave out what a
simulator cannot see (hardware prefetchers, misses overlapping in an out-of-order core), so they
explain the timings; they do not replace them.

Each (library, size, key type, operation) runs in its own valgrind process twice, with 1 and
with 3 passes over the probe keys (the keys of bench_peers.py); the difference, divided by the 2n extra lookups, is the cost
of one lookup with the setup (building keys and maps) cancelled out.

  python benchmarks/bench_lookup_cachesim.py                  # 1K and 100K, int and str keys (~5 min)
  python benchmarks/bench_lookup_cachesim.py --sizes 1000000  # far longer: valgrind runs each setup twice
  python benchmarks/bench_lookup_cachesim.py --output benchmarks/results/lookup_cachesim.md
  python benchmarks/bench_lookup_cachesim.py --libs SharedMap,PersistentMap --sizes 100000

Needs valgrind (Debian: `apt-get install valgrind`). The last-level cache simulated is by default
512 KiB, 8-way (the per-core L2 of the AMD EPYC the other benchmarks ran on), since at these sizes
the misses that cost are the ones that leave L2.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import sys
bench_dir, lib, n, kind, op, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
sys.path.insert(0, bench_dir)
from bench_peers import make_keys  # the peers benchmark's keys: same scheme, hit and miss halves distinct

keys, absent, rng = make_keys(n, kind)
d = {k: k for k in keys}
if lib == "PersistentMap":
    from pypersistent import PersistentMap
    m = PersistentMap.from_dict(d)
elif lib == "SharedMap":
    from pypersistent import SharedMap
    m = SharedMap(d)
elif lib == "immutables":
    import immutables
    m = immutables.Map(d)
else:
    m = d
probes = keys[:] if op == "hit" else absent
rng.shuffle(probes)

def hit(m, probes=probes):
    for k in probes:
        m[k]

def miss(m, probes=probes):
    for k in probes:
        k in m

loop = hit if op == "hit" else miss
for _ in range(passes):
    loop(m)
"""

LIBRARIES = ("PersistentMap", "immutables", "dict", "SharedMap")
DEFAULT_LIBRARIES = "PersistentMap,immutables,dict"
OPS = {"hit": "hit `m[k]`", "miss": "miss `k in m`"}


def run_cachegrind(python: str, child: str, args: list[str], ll: str) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cg") as out:
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={ll}",
               f"--cachegrind-out-file={out.name}", python, child, *args]
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        with open(out.name) as f:
            text = f.read()
    events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
    totals = [int(x) for x in re.search(r"^summary: (.*)$", text, re.M).group(1).split()]
    return dict(zip(events, totals))


def per_lookup(python: str, child: str, lib: str, n: int, kind: str, op: str, ll: str) -> dict[str, float]:
    args = [os.path.dirname(os.path.abspath(__file__)), lib, str(n), kind, op]
    one = run_cachegrind(python, child, [*args, "1"], ll)
    three = run_cachegrind(python, child, [*args, "3"], ll)
    # Below 0.005 per lookup is rounding noise of the setup, not a cost of the lookup.
    diff = {k: max((three[k] - one[k]) / (2 * n), 0.0) for k in one}
    diff = {k: v if v >= 0.005 else 0.0 for k, v in diff.items()}
    return {
        "instructions": diff["Ir"],
        "D1 misses": diff["D1mr"] + diff["D1mw"],
        "LL misses": diff["DLmr"] + diff["DLmw"],
    }


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--keys", default="int,str")
    ap.add_argument("--ops", default="hit,miss")
    ap.add_argument("--libs", default=DEFAULT_LIBRARIES,
                    help=f"comma-separated, of {', '.join(LIBRARIES)}; the last column is the first over the second")
    ap.add_argument("--ll", default="524288,8,64", help="last-level cache for valgrind: size,assoc,line")
    ap.add_argument("--output", help="also write the Markdown table to this file")
    args = ap.parse_args()
    libs = args.libs.split(",")
    if len(libs) < 2 or any(lib not in LIBRARIES for lib in libs):
        sys.exit(f"--libs: two or more of {', '.join(LIBRARIES)}")
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")

    lines = [
        "# Lookups counted: instructions and simulated cache misses per lookup",
        "",
        "Command: `python benchmarks/bench_lookup_cachesim.py"
        + "".join(f" --{k} {v}" for k, v in (("sizes", args.sizes), ("keys", args.keys), ("ops", args.ops),
                                             ("libs", args.libs))
                  if v != ap.get_default(k))
        + "`",
        "",
        f"- valgrind cachegrind, last-level cache {args.ll} (size, ways, line), hash seed 0;"
        " per lookup = (3 passes - 1 pass) / 2n",
        f"- Python {platform.python_version()}, {platform.machine()}; source tree at git {git_commit()}"
        " (the installed extension should be built from it)",
        "",
        "| op | n | keys | measure | " + " | ".join(libs) + f" | {libs[0]} / {libs[1]} |",
        "|---|---|---|---|" + "---:|" * len(libs) + "---:|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        child = os.path.join(tmp, "lookups.py")
        with open(child, "w") as f:
            f.write(CHILD)
        for op in args.ops.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                for kind in args.keys.split(","):
                    results = {lib: per_lookup(sys.executable, child, lib, n, kind, op, args.ll) for lib in libs}
                    for measure in ("instructions", "D1 misses", "LL misses"):
                        cells = " | ".join(f"{results[lib][measure]:.2f}" for lib in libs)
                        theirs = results[libs[1]][measure]
                        ratio = f"{results[libs[0]][measure] / theirs:.2f}x" if theirs >= 0.05 else "–"
                        row = f"| {OPS[op]} | {n:,} | {kind} | {measure} | {cells} | {ratio} |"
                        lines.append(row)
                        print(row, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
