#!/usr/bin/env python3
"""SharedMap between interpreters: hand-over time, memory of one table read by 4 interpreters,
and lookups against PersistentMap and dict (issue 14).

Parts (--parts, default all three):

  handover   One interpreter hands a map of SIZE entries (int keys -> str values, --values) to
             another, on 3.13+ (subinterpreters with their own GIL: concurrent.interpreters on
             3.14+, _interpreters on 3.13; older Pythons print n/a). Methods:

               shared         the map is already a SharedMap: the sender publishes it in a
                              SharedAtom; the receiver deref()s it
               shared+build   the sender starts from the dict: SharedMap(d), then as above (the
                              one-time cost of making a dict shareable, for comparison)
               pickle         what users do without SharedMap: the sender pickles the dict
                              (protocol 5) and writes the bytes to a pipe; the receiver reads
                              them and unpickles
               queue          concurrent.interpreters Queue put/get of the dict (3.14+, which
                              pickles it inside); n/a on 3.13
               shared via queue  the SharedMap itself through such a queue (3.14+): it moves
                              by reference (cross-interpreter data), not pickled
               signal only    no payload: the floor that every row includes

             Measurement: the receiver runs in its own interpreter on its own thread and is
             already waiting in os.read() on a pipe. The sender takes t0 =
             time.perf_counter_ns(), does its side of the hand-over, and writes one byte to that
             pipe (for pickle, the bytes follow on a second pipe). The receiver wakes, gets the
             object, reads len() and one key, takes t1 = time.perf_counter_ns() and sends t1
             back. perf_counter_ns is CLOCK_MONOTONIC, one clock for every thread and
             interpreter of the process, so t1 - t0 is the whole hand-over, both sides
             included, plus one thread wake-up (the "signal only" row). Each cell is the best of
             --rounds hand-overs x --repeat worker processes, in microseconds.

  memory     One table of SIZE entries read by 4 interpreters. shared: the main interpreter
             publishes one SharedMap; each of 4 interpreters deref()s it and keeps it. copies:
             the main interpreter pickles the dict to a file; each of the 4 unpickles its own
             copy and keeps it. Reported: VmRSS (/proc/self/status, the whole process) after all
             4 hold the table minus VmRSS before the first one took it (the interpreters exist
             and have imported everything by then), in MiB; and what the source cost the main
             interpreter (the SharedMap, or the pickled bytes). Best of --repeat processes.

  lookup     In one interpreter: m[k] and `k in m` over a stream of random draws of the map's
             keys (200,000 lookups per round), ns per lookup, for dict, PersistentMap and
             SharedMap built from the same dicts in one worker process and timed in turn, round
             after round (best of --rounds each); every cell is the median over --repeat such
             processes, the ratio the median of each process's own ratio. Int keys, str keys
             ("user:<i>", 6 to 10 characters: a SharedMap keeps them inside its entries) and long
             str keys ("customer-<i, 12 digits>", 21 characters: kept in a block of their own,
             which a lookup must read to compare), with int values (SIZE + i, outside
             CPython's small-int cache) and str values (str(i)). In most rows the probe keys are the stored key objects themselves,
             so dict and PersistentMap find a key by identity and never read the stored key; a
             SharedMap compares a str key's bytes and builds a new value object on every m[k]
             (its values are not Python objects). The rows marked "equal keys" probe with equal
             keys built anew (as keys parsed from input or computed are), which dict and
             PersistentMap must compare with the stored key object. The cycle collector runs
             once before the rounds and is off during them: a collection before each round
             would walk the dict and the PersistentMap (containers it tracks), and with them
             their memory, into the CPU's caches just before they are timed, but not the
             SharedMap's nodes (no Python objects in them).

Every measurement runs in a fresh worker process. Hand-over and memory workers of the different
methods take turns (in alternating order) so that a noisy stretch of the machine hits all of them
alike; a lookup worker times all the structures itself, in turn.

Usage:
  python benchmarks/bench_shared.py                                  # all parts, 1K,100K,1M
  python benchmarks/bench_shared.py --parts lookup --sizes 1K,100K --repeat 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

PARTS = ["handover", "memory", "lookup"]
HANDOVER_METHODS = ["shared", "shared via queue", "shared+build", "pickle", "queue", "signal only"]
MEMORY_METHODS = ["shared", "copies"]
LOOKUP_STRUCTURES = ["dict", "PersistentMap", "SharedMap"]
LOOKUP_OPS = [
    "m[k], int values",
    "m[k], str values",
    "k in m",
    "m[k], int values, equal keys",
    "k in m, equal keys",
]
KEY_KINDS = ["int", "str", "long str"]
READERS = 4
LOOKUPS_PER_ROUND = 200_000


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1000, "M": 1000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def fmt_size(n: int) -> str:
    return f"{n // 1000_000}M" if n >= 1000_000 else f"{n // 1000}K" if n >= 1000 else str(n)


def make_value(i: int, values: str) -> Any:
    return str(i) if values == "str" else i


# --------------------------------------------------------------------------------------
# Subinterpreters: one small interface over concurrent.interpreters (3.14+) and _interpreters
# (3.13), as tests/test_shared_interpreters.py uses them
# --------------------------------------------------------------------------------------

try:  # 3.14+
    from concurrent import interpreters as high_level  # type: ignore[attr-defined]
except ImportError:
    high_level = None
try:  # 3.13+
    import _interpreters as low_level  # type: ignore[import-not-found]
except ImportError:
    low_level = None

HAVE_INTERPRETERS = high_level is not None or low_level is not None


class Interpreter:
    """An isolated subinterpreter (its own GIL) whose __main__ keeps its globals between runs."""

    def __init__(self) -> None:
        if high_level is not None:
            self._interp = high_level.create()
        else:
            self._id = low_level.create(low_level.new_config("isolated"))
        # The worker's import path (the venv's site-packages, the checkout) for the interpreter.
        self.run(f"import sys\nsys.path[:] = {sys.path!r}\n")

    def prepare(self, **attrs: Any) -> None:
        """Bind shareable objects (a Queue) in the interpreter's __main__."""
        self._interp.prepare_main(**attrs)

    def run(self, code: str) -> None:
        """Run code to completion; raise RuntimeError with the interpreter's error if it fails."""
        if high_level is not None:
            try:
                self._interp.exec(code)
            except high_level.ExecutionFailed as exc:
                raise RuntimeError(str(exc)) from None
            return
        excinfo = low_level.run_string(self._id, code)
        if excinfo is not None:
            described = getattr(excinfo, "errdisplay", None) or getattr(excinfo, "formatted", None)
            raise RuntimeError(described or repr(excinfo))

    def run_in_thread(self, code: str) -> Callable[[], None]:
        """Start code on a new thread; returns a join() that re-raises its failure."""
        failure: List[BaseException] = []

        def target() -> None:
            try:
                self.run(code)
            except BaseException as exc:  # reported by join()
                failure.append(exc)

        thread = threading.Thread(target=target)
        thread.start()

        def join() -> None:
            thread.join()
            if failure:
                raise failure[0]

        return join

    def close(self) -> None:
        if high_level is not None:
            self._interp.close()
        else:
            low_level.destroy(self._id)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# --------------------------------------------------------------------------------------
# Part a: hand-over
# --------------------------------------------------------------------------------------

RECEIVER = """
import os, pickle, time
from pypersistent import SharedAtom
atom = SharedAtom(CELL)
data_file = open(DATA_R, "rb", buffering=0, closefd=False)

def read_exactly(n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        got += data_file.readinto(view[got:])
    return buf

for _ in range(ROUNDS):
    os.read(GO_R, 1)  # waiting here before t0: the wake-up is in every row
    if METHOD in ("shared", "shared+build"):
        table = atom.deref()
    elif METHOD == "pickle":
        size = int.from_bytes(read_exactly(8), "little")
        table = pickle.loads(read_exactly(size))
    elif METHOD in ("queue", "shared via queue"):
        table = queue.get()
    else:
        table = None
    if table is not None:
        assert len(table) == SIZE and table[PROBE] is not None
    t1 = time.perf_counter_ns()
    os.write(DONE_W, t1.to_bytes(8, "little"))
    del table
"""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def handover_worker(method: str, size: int, rounds: int, values: str) -> Dict[str, Any]:
    if not HAVE_INTERPRETERS:
        raise RuntimeError("needs concurrent.interpreters (3.14+) or _interpreters (3.13)")
    if method in ("queue", "shared via queue") and high_level is None:
        raise RuntimeError("concurrent.interpreters queues need Python 3.14+")
    import fcntl
    import pickle

    from pypersistent import SharedAtom, SharedMap

    d = {i: make_value(i, values) for i in range(size)}
    shared = SharedMap(d)
    cell = f"bench-handover-{uuid.uuid4()}"
    atom = SharedAtom(cell)  # keeps the cell open while the receiver uses it
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    data_r, data_w = os.pipe()
    for fd in (data_r, data_w):  # fewer, larger writes of the pickled bytes
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
    receiver = Interpreter()
    constants = dict(CELL=cell, GO_R=go_r, DONE_W=done_w, DATA_R=data_r, ROUNDS=rounds, METHOD=method,
                     SIZE=size, PROBE=size // 2)
    queue = None
    if method in ("queue", "shared via queue"):
        queue = high_level.create_queue()
        receiver.prepare(queue=queue)
    code = "".join(f"{k} = {v!r}\n" for k, v in constants.items()) + RECEIVER
    join = receiver.run_in_thread(code)
    times = []
    try:
        for _ in range(rounds):
            time.sleep(0.01)  # the receiver is blocked in os.read by now
            t0 = time.perf_counter_ns()
            if method == "shared":
                atom.reset(shared)
                os.write(go_w, b"x")
            elif method == "shared+build":
                atom.reset(SharedMap(d))
                os.write(go_w, b"x")
            elif method == "pickle":
                payload = pickle.dumps(d, protocol=5)
                os.write(go_w, b"x")
                write_all(data_w, len(payload).to_bytes(8, "little"))
                write_all(data_w, payload)
                del payload
            elif method == "queue":
                queue.put(d)
                os.write(go_w, b"x")
            elif method == "shared via queue":
                queue.put(shared)  # by reference: the receiver gets a SharedMap over this trie
                os.write(go_w, b"x")
            else:
                os.write(go_w, b"x")
            t1 = int.from_bytes(os.read(done_r, 8), "little")
            times.append((t1 - t0) / 1000)
            atom.reset(SharedMap())  # the next round publishes again
    finally:
        join()
        receiver.close()
        for fd in (go_r, go_w, done_r, done_w, data_r, data_w):
            os.close(fd)
    return {"us": min(times), "median_us": statistics.median(times)}


# --------------------------------------------------------------------------------------
# Part b: memory of one table read by 4 interpreters
# --------------------------------------------------------------------------------------


def memory_worker(method: str, size: int, values: str) -> Dict[str, Any]:
    if not HAVE_INTERPRETERS:
        raise RuntimeError("needs concurrent.interpreters (3.14+) or _interpreters (3.13)")
    import pickle

    from pypersistent import SharedAtom, SharedMap

    cell = f"bench-memory-{uuid.uuid4()}"
    atom = SharedAtom(cell)
    readers = [Interpreter() for _ in range(READERS)]
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        path = os.path.join(tmp, "table.pickle")
        try:
            for r in readers:
                r.run(f"import pickle\nfrom pypersistent import SharedAtom, SharedMap\natom = SharedAtom({cell!r})\n")
            gc.collect()
            before_source = rss_bytes()
            d = {i: make_value(i, values) for i in range(size)}
            if method == "shared":
                atom.reset(SharedMap(d))
            else:
                with open(path, "wb") as f:
                    pickle.dump(d, f, protocol=5)
            del d  # the main interpreter keeps only the source: the SharedMap, or the file
            gc.collect()
            before_readers = rss_bytes()
            if method == "shared":
                take = f"table = atom.deref()\nassert len(table) == {size}\n"
            else:
                take = f"with open({path!r}, 'rb') as f:\n    table = pickle.load(f)\nassert len(table) == {size}\n"
            for r in readers:
                r.run(take + f"table[{size // 2}]\n")
            after = rss_bytes()
        finally:
            for r in readers:
                r.close()
    mib = 1024 * 1024
    return {"source_mib": (before_readers - before_source) / mib, "readers_mib": (after - before_readers) / mib}


# --------------------------------------------------------------------------------------
# Part c: lookups in one interpreter
# --------------------------------------------------------------------------------------


def time_ns(f: Callable[[], int]) -> float:
    """ns per op: f() runs the operations and returns how many it ran."""
    t0 = time.perf_counter_ns()
    n = f()
    return (time.perf_counter_ns() - t0) / n


def make_lookup_keys(key_kind: str, size: int) -> List[Any]:
    if key_kind == "int":
        return list(range(size))
    if key_kind == "str":
        return [f"user:{i}" for i in range(size)]
    return [f"customer-{i:012d}" for i in range(size)]


def equal_new_key(k: Any) -> Any:
    """A key equal to k but a different object (for ints outside CPython's small-int cache)."""
    return int(str(k)) if isinstance(k, int) else (k + " ")[:-1]


def lookup_worker(structures: List[str], size: int, rounds: int) -> Dict[str, Any]:
    """Every structure is built from the same dicts and timed in turn, round after round, in this
    one process: the ratios between them come from the same memory layout and the same stretch of
    the machine (separate processes differ by up to 2x at 100K entries, from where their memory
    lands)."""
    from pypersistent import PersistentMap, SharedMap

    makers = {"dict": dict, "PersistentMap": PersistentMap, "SharedMap": SharedMap}
    out: Dict[str, Any] = {}
    for key_kind in KEY_KINDS:
        keys = make_lookup_keys(key_kind, size)
        int_values = {k: size + i for i, k in enumerate(keys)}
        str_values = {k: str(i) for i, k in enumerate(keys)}
        maps = {s: (makers[s](int_values), makers[s](str_values)) for s in structures}
        # A stream of random probes, not a shuffle of the keys looped over: a loop of 1K lookups
        # repeats exactly, and the CPU's branch predictor learns it (bench_sorted.py's PROBES).
        rng = random.Random(1)
        probes = [keys[rng.randrange(size)] for _ in range(LOOKUPS_PER_ROUND)]
        equal_probes = [equal_new_key(k) for k in probes]

        def subscript(m: Any, probes: List[Any] = probes) -> Callable[[], int]:
            def run() -> int:
                for k in probes:
                    m[k]
                return len(probes)

            return run

        def contains(m: Any, probes: List[Any] = probes) -> Callable[[], int]:
            def run() -> int:
                for k in probes:
                    k in m
                return len(probes)

            return run

        loops = {
            "m[k], int values": lambda s: subscript(maps[s][0]),
            "m[k], str values": lambda s: subscript(maps[s][1]),
            "k in m": lambda s: contains(maps[s][0]),
            "m[k], int values, equal keys": lambda s: subscript(maps[s][0], equal_probes),
            "k in m, equal keys": lambda s: contains(maps[s][0], equal_probes),
        }
        out[key_kind] = {}
        gc.collect()
        gc.disable()
        try:
            for op, loop_of in loops.items():
                best = {s: float("inf") for s in structures}
                for r in range(rounds):
                    for s in structures if r % 2 == 0 else structures[::-1]:
                        best[s] = min(best[s], time_ns(loop_of(s)))
                out[key_kind][op] = best
        finally:
            gc.enable()
    return out


# --------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, part: str, method: str, size: int) -> Optional[Dict[str, Any]]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", part, method, str(size),
           "--rounds", str(args.rounds), "--values", args.values]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        why = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        print(f"  {part} {method} {fmt_size(size)}: n/a ({why})", file=sys.stderr)
        return None
    return json.loads(p.stdout)


def interleaved(args: argparse.Namespace, part: str, methods: List[str], sizes: List[int],
                keep: Callable[[Dict[str, Any], Dict[str, Any]], Dict[str, Any]]) -> Dict[str, Dict[int, Any]]:
    table: Dict[str, Dict[int, Any]] = {}
    for rep in range(args.repeat):
        for size in sizes:
            for method in methods if rep % 2 == 0 else methods[::-1]:
                result = run_worker(args, part, method, size)
                if result is None:
                    continue
                cell = table.setdefault(method, {})
                cell[size] = keep(cell[size], result) if size in cell else result
    return table


def keep_min(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    return {k: min(old[k], new[k]) if isinstance(new[k], (int, float)) else new[k] for k in new}


def keep_min_nested(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    return {kind: keep_min(old[kind], new[kind]) for kind in new}


def report_handover(args: argparse.Namespace, sizes: List[int]) -> None:
    methods = [m for m in HANDOVER_METHODS if m in args.methods]
    runnable = [m for m in methods if "queue" not in m or high_level is not None]  # queues: 3.14+
    table = interleaved(args, "handover", runnable, sizes, keep_min)
    print(f"\n### Hand-over to another interpreter, µs (int keys -> {args.values} values; best of "
          f"{args.rounds} rounds x {args.repeat} runs)\n")
    print("| method | " + " | ".join(fmt_size(s) for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for method in methods:
        cells = [f"{table[method][s]['us']:,.0f}" if s in table.get(method, {}) else "n/a" for s in sizes]
        print(f"| {method} | " + " | ".join(cells) + " |")


def report_memory(args: argparse.Namespace, sizes: List[int]) -> None:
    methods = [m for m in MEMORY_METHODS if m in args.methods]
    table = interleaved(args, "memory", methods, sizes, keep_min)
    print(f"\n### One table read by {READERS} interpreters: VmRSS growth, MiB (int keys -> {args.values} "
          f"values; best of {args.repeat} runs)\n")
    print("| entries | method | source in the main interpreter | all 4 readers | per reader |")
    print("|---:|---|---:|---:|---:|")
    for size in sizes:
        for method in methods:
            r = table.get(method, {}).get(size)
            if r is None:
                print(f"| {fmt_size(size)} | {method} | n/a | n/a | n/a |")
                continue
            print(f"| {fmt_size(size)} | {method} | {r['source_mib']:.1f} | {r['readers_mib']:.1f} | "
                  f"{r['readers_mib'] / READERS:.1f} |")


def report_lookup(args: argparse.Namespace, sizes: List[int]) -> None:
    structures = [s for s in LOOKUP_STRUCTURES if s in args.methods]
    runs: Dict[int, List[Dict[str, Any]]] = {size: [] for size in sizes}
    for _ in range(args.repeat):
        for size in sizes:
            result = run_worker(args, "lookup", ",".join(structures), size)
            if result is not None:
                runs[size].append(result)
    print(f"\n### Lookups, ns per lookup (in each process all structures timed in turn, best of "
          f"{args.rounds} rounds; median of {args.repeat} processes)\n")
    ratio = "SharedMap" in structures and "PersistentMap" in structures
    print("| keys | entries | operation | " + " | ".join(structures) + (" | SharedMap / PersistentMap |" if ratio else " |"))
    print("|---|---:|---|" + "---:|" * (len(structures) + ratio))
    for key_kind in KEY_KINDS:
        for size in sizes:
            for op in LOOKUP_OPS:
                cells_of = [r[key_kind][op] for r in runs[size]]
                if not cells_of:
                    print(f"| {key_kind} | {fmt_size(size)} | {op} | " + " | ".join(["n/a"] * (len(structures) + ratio)) + " |")
                    continue
                cells = [f"{statistics.median(c[s] for c in cells_of):.1f}" for s in structures]
                if ratio:
                    # The median of each process's own ratio, not a ratio of medians from different processes.
                    cells.append(f"{statistics.median(c['SharedMap'] / c['PersistentMap'] for c in cells_of):.2f}x")
                print(f"| {key_kind} | {fmt_size(size)} | {op} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1K,100K,1M")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--methods", default=",".join(HANDOVER_METHODS + MEMORY_METHODS + LOOKUP_STRUCTURES),
                    help="the rows or columns to run (default: all)")
    ap.add_argument("--values", choices=["str", "int"], default="str",
                    help="value type of the handed-over and the memory tables")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3,
                    help="run every worker this many times; hand-over and memory keep each cell's best "
                         "(methods interleaved), lookups the median")
    ap.add_argument("--worker", nargs=3, metavar=("PART", "METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    if args.worker:
        part, method, size = args.worker[0], args.worker[1], int(args.worker[2])
        if part == "handover":
            result = handover_worker(method, size, args.rounds, args.values)
        elif part == "memory":
            result = memory_worker(method, size, args.values)
        else:
            result = lookup_worker(method.split(","), size, args.rounds)
        print(json.dumps(result))
        return
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    parts = args.parts.split(",")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"SharedMap benchmarks; Python {sys.version.split()[0]}{'' if gil else ' (free-threaded, GIL off)'}, "
          f"{os.cpu_count()} CPUs")
    if ("handover" in parts or "memory" in parts) and not HAVE_INTERPRETERS:
        print("\n(hand-over and memory need subinterpreters: Python 3.13+; n/a here)")
    if "handover" in parts:
        report_handover(args, sizes)
    if "memory" in parts:
        report_memory(args, sizes)
    if "lookup" in parts:
        report_lookup(args, sizes)


if __name__ == "__main__":
    main()
