#!/usr/bin/env python3
"""Run bench_core and write its results as a Markdown table.

    python3 benchmarks/cpp/make_table.py                      # run, write benchmarks/results/cpp_core.md
    python3 benchmarks/cpp/make_table.py --json raw.json      # tabulate an earlier JSON run instead

Times are CPU time per operation (the median over --repetitions runs), in ns: CPU rather than
wall time because a shared machine descheduling the process inflates wall time only.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBS = ["pypersistent", "immer", "unordered_map"]
OPS = [
    ("insert", "insert one by one (persistent)"),
    ("lookup_hit", "lookup, hit"),
    ("lookup_miss", "lookup, miss"),
    ("erase", "erase 100 keys one by one (persistent)"),
    ("iterate", "iteration (sum of values)"),
    ("equal", "equality of two separately built maps"),
    ("build", "bulk build (transient; unordered_map: plain inserts)"),
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmake_cache(build_dir: Path) -> dict[str, str]:
    cache = {}
    try:
        for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
            m = re.match(r"^([A-Za-z_0-9]+):[A-Z]+=(.*)$", line)
            if m:
                cache[m.group(1)] = m.group(2)
    except OSError:
        pass
    return cache


def compiler_version(cache: dict[str, str]) -> str:
    cxx = cache.get("CMAKE_CXX_COMPILER", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return cxx


def immer_version(cache: dict[str, str]) -> str:
    inc = cache.get("IMMER_INCLUDE_DIR")
    if not inc:
        return "unknown"
    for f in glob.glob(os.path.join(inc, "..", "lib", "*", "cmake", "*", "*ConfigVersion.cmake")) + glob.glob(
        os.path.join(inc, "..", "lib", "cmake", "*", "*ConfigVersion.cmake")
    ):
        m = re.search(r'set\(PACKAGE_VERSION "([^"$]+)"\)', Path(f).read_text())
        if m:
            return f"{m.group(1)} (headers from {os.path.normpath(inc)})"
    return f"unknown (headers from {inc})"


def run_benchmark(binary: Path, min_time: str, repetitions: int, extra: list[str], raw_out: Path) -> list[str]:
    cmd = [
        str(binary),
        f"--benchmark_min_time={min_time}",
        f"--benchmark_repetitions={repetitions}",
        "--benchmark_report_aggregates_only=true" if repetitions > 1 else "--benchmark_report_aggregates_only=false",
        "--benchmark_format=json",
        # Repetitions run in random order, so that a burst of load on a shared machine spreads
        # over all libraries instead of landing on one.
        *(["--benchmark_enable_random_interleaving=true"] if repetitions > 1 else []),
        *extra,
    ]
    raw_out.parent.mkdir(parents=True, exist_ok=True)
    print("running:", shlex.join(cmd), file=sys.stderr)
    with open(raw_out, "w") as f:
        subprocess.run(cmd, stdout=f, check=True)
    return cmd


def parse(data: dict):
    """Returns {(op, lib, n): ns_per_op} and {(kind, lib, n): (heap, requested)} bytes per entry."""
    times: dict[tuple[str, str, int], float] = {}
    memory: dict[tuple[str, str, int], tuple[float, float]] = {}
    aggregated = any(b.get("run_type") == "aggregate" for b in data["benchmarks"])
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            continue
        if aggregated and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        parts = name.split("/")
        if len(parts) < 3:
            continue
        op, lib, n = parts[0], parts[1], int(parts[2])
        if op.startswith("memory"):
            memory[(op, lib, n)] = (b["bytes_per_entry"], b["requested_bytes_per_entry"])
        elif "items_per_second" in b:
            times[(op, lib, n)] = 1e9 / b["items_per_second"]
    return times, memory


def fmt_ns(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e4:
        return f"{x / 1e3:.1f} µs"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def fmt_size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}K" if n % 1000 == 0 else str(n)


def render(data: dict, cmd: list[str], cache: dict[str, str]) -> str:
    times, memory = parse(data)
    ctx = data.get("context", {})
    sizes = sorted({k[2] for k in list(times) + list(memory)})
    libs = [lib for lib in LIBS if any(k[1] == lib for k in list(times) + list(memory))]
    lines = []
    lines.append("# C++ core benchmark: pypersistent vs immer vs copied std::unordered_map")
    lines.append("")
    lines.append(f"- Date of the run: {ctx.get('date') or datetime.datetime.now().astimezone().isoformat(timespec='minutes')}")
    load = ctx.get("load_avg")
    load = ", ".join(f"{x:.2f}" for x in load) if isinstance(load, list) else "?"
    lines.append(
        f"- Machine: {cpu_model()}, {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz, "
        f"{platform.system()} {platform.release()}; load average at start: {load}"
    )
    flags = cache.get("CMAKE_CXX_FLAGS_" + cache.get("CMAKE_BUILD_TYPE", "RELEASE").upper(), "").strip()
    if cache.get("PYPERSISTENT_USE_POPCNT", "ON").upper() in ("ON", "1", "TRUE", "YES") and platform.machine() in (
        "x86_64",
        "AMD64",
    ):
        flags += " -mpopcnt"
    lines.append(
        f"- Compiler: {compiler_version(cache)}; build type {cache.get('CMAKE_BUILD_TYPE', '?')} (flags `{flags.strip()}`)"
    )
    lines.append(
        f"- immer: {immer_version(cache)}; Google Benchmark {ctx.get('library_build_type', '?')} build "
        "(this is how the harness library was built; the measured code is the Release build above)"
    )
    lines.append(f"- Command: `{shlex.join(cmd)}`")
    lines.append(f"- Table made by: `{shlex.join(['python3', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}`")
    lines.append("")
    lines.append(
        "CPU time per operation in ns (median of the repetitions; lower is better). Keys: distinct "
        "pseudo-random 64-bit integers, identical for every library, all hashed with "
        "`std::hash<int64_t>`. `unordered_map` is copied before every persistent update, so its insert "
        "and erase run at 1K only. Lookups run over a stream of max(n, 100K) keys. "
        "`pyp/immer` > 1 means pypersistent is slower."
    )
    lines.append("")
    header = "| operation | size | " + " | ".join(libs) + " | pyp/immer |"
    lines.append(header)
    lines.append("|" + "---|" * (3 + len(libs)))
    for op, label in OPS:
        for n in sizes:
            row = [times.get((op, lib, n)) for lib in libs]
            if all(v is None for v in row):
                continue
            p, i = times.get((op, "pypersistent", n)), times.get((op, "immer", n))
            ratio = f"{p / i:.2f}" if p and i else "–"
            if p and i and p / i > 1.05:
                ratio = f"**{ratio}**"
            lines.append(f"| {label} | {fmt_size(n)} | " + " | ".join(fmt_ns(v) for v in row) + f" | {ratio} |")
    cvs = sorted(
        (b["cpu_time"], b.get("run_name", b["name"]))
        for b in data["benchmarks"]
        if b.get("aggregate_name") == "cv" and not b["name"].startswith("memory")
    )
    if cvs:
        lines.append("")
        lines.append(
            f"Run-to-run spread (coefficient of variation of the CPU time over the repetitions): median "
            f"{100 * cvs[len(cvs) // 2][0]:.1f}%, worst {100 * cvs[-1][0]:.1f}% (`{cvs[-1][1]}`). "
            "Differences smaller than that are noise."
        )
    lines.append("")
    if memory:
        lines.append("## Memory")
        lines.append("")
        lines.append(
            "Bytes per entry of one map (16 of which are the key and value). *heap*: live heap "
            "footprint, glibc's `malloc_usable_size` + 8-byte chunk header of every block, counted by a "
            "replaced global `operator new`/`delete`; *requested*: bytes the library asked its "
            "allocator for (our policy's `allocate`, immer's heap policy, the std allocator). "
            "*transient*: built by the bulk build; *inserts*: built by persistent inserts one by one. "
            "*requested* is exact; *heap* moves by up to ~1 byte/entry between runs (glibc sometimes hands "
            "out a free chunk slightly larger than asked for)."
        )
        lines.append("")
        cols = []
        for lib in libs:
            if lib == "unordered_map":
                cols.append(("memory", lib, "unordered_map"))
            else:
                cols.append(("memory", lib, f"{lib} (transient)"))
                cols.append(("memory_inserts", lib, f"{lib} (inserts)"))
        cols = [c for c in cols if any((c[0], c[1], n) in memory for n in sizes)]
        lines.append("| size | measure | " + " | ".join(c[2] for c in cols) + " |")
        lines.append("|" + "---|" * (2 + len(cols)))
        for n in sizes:
            for idx, measure in ((0, "heap"), (1, "requested")):
                vals = []
                for kind, lib, _ in cols:
                    v = memory.get((kind, lib, n))
                    vals.append(f"{v[idx]:.2f}" if v else "–")
                lines.append(f"| {fmt_size(n)} | {measure} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=str(ROOT / "build-bench"))
    ap.add_argument("--binary", help="default: <build-dir>/benchmarks/cpp/bench_core")
    ap.add_argument("--min-time", default="0.2", help="--benchmark_min_time (seconds)")
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--filter", help="--benchmark_filter regex")
    ap.add_argument("--json", help="tabulate this JSON output instead of running")
    ap.add_argument("--raw-out", default=str(ROOT / "benchmarks" / "results" / "raw" / "cpp_core.json"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpp_core.md"))
    args = ap.parse_args()

    build_dir = Path(args.build_dir)
    cache = cmake_cache(build_dir)
    if args.json:
        raw = Path(args.json)
        sidecar = raw.with_suffix(raw.suffix + ".cmd")
        cmd = shlex.split(sidecar.read_text()) if sidecar.exists() else ["(unknown command)"]
    else:
        binary = Path(args.binary) if args.binary else build_dir / "benchmarks" / "cpp" / "bench_core"
        if not binary.exists():
            print(f"{binary} not found; build it first (see benchmarks/cpp/README.md)", file=sys.stderr)
            return 1
        extra = [f"--benchmark_filter={args.filter}"] if args.filter else []
        raw = Path(args.raw_out)
        cmd = run_benchmark(binary, args.min_time, args.repetitions, extra, raw)
        try:
            cmd[0] = os.path.relpath(cmd[0], ROOT)
        except ValueError:
            pass
        raw.with_suffix(raw.suffix + ".cmd").write_text(shlex.join(cmd) + "\n")
    data = json.loads(raw.read_text())
    text = render(data, cmd, cache)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} (raw JSON: {raw})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
