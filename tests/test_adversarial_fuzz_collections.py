"""A CI-sized run of the set/list adversarial fuzzer (tests/adversarial_fuzz_collections.py).

Like tests/test_adversarial_fuzz.py (the map's): each test runs the fuzzer in a subprocess
for one seed, so that a segfault or a hang fails that test, with the seed, the last steps of
the trace, the tail of the output and a command to replay it, instead of killing the pytest
worker. The budget is wall-clock: RUNS x SECONDS (10 s of fuzzing, about 12 s in all).

Environment:
  PYPERSISTENT_FUZZ_SECONDS  seconds per run (default 2.5); shared with the map fuzzer's test
  PYPERSISTENT_FUZZ_COLLECTIONS_EXCLUDE
                             features to leave out, e.g. ``known`` for every trigger of a known
                             bug, ``deep_chain`` (see KNOWN_BUG_FEATURES and FEATURES in
                             adversarial_fuzz_collections.py; the map's PYPERSISTENT_FUZZ_EXCLUDE
                             names other features)

Long mode (by hand): ``python tests/adversarial_fuzz_collections.py --seconds 600 --seed 7 --threads 4``.

Under pytest-run-parallel (``--parallel-threads=N``) these tests run on one thread only: each
already starts a process that runs its own threads.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import child_env

try:  # the map fuzzer's test has the same helpers
    from test_adversarial_fuzz import FINAL_LINE, _describe_exit, _tail
except ImportError:  # pragma: no cover - that file changed
    FINAL_LINE = re.compile(r"^adversarial fuzz: (\d+) steps, (\d+) operations, (\d+) failures$", re.M)

    def _describe_exit(rc: int) -> str:
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit status {rc}"

    def _tail(text: str, n: int) -> str:
        return text if len(text) <= n else "..." + text[-n:]


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "adversarial_fuzz_collections.py"

SECONDS = float(os.environ.get("PYPERSISTENT_FUZZ_SECONDS", "2.5"))
EXCLUDE = os.environ.get("PYPERSISTENT_FUZZ_COLLECTIONS_EXCLUDE", "")
# (seed, threads): one-thread runs (nearly) replay; the others race.
RUNS = [(1, 1), (2, 2), (3, 1), (4, 3)]
TIMEOUT = SECONDS * 4 + 90  # the script also stops itself (faulthandler) if it hangs

if importlib.util.find_spec("pytest_run_parallel") is not None:
    pytestmark = [pytest.mark.thread_unsafe(reason="runs a subprocess that starts its own threads")]


@pytest.mark.parametrize("seed,threads", RUNS, ids=[f"seed{s}-threads{t}" for s, t in RUNS])
def test_adversarial_fuzz_collections(seed: int, threads: int) -> None:
    env = child_env()
    env["PYTHONHASHSEED"] = "0"  # a one-thread run then replays
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTHONSTARTUP", None)
    fd, trace_path = tempfile.mkstemp(prefix=f"fuzz-collections-seed{seed}-", suffix=".trace")
    os.close(fd)
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--seconds",
        str(SECONDS),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
        "--trace",
        trace_path,
    ]
    if EXCLUDE:
        cmd += ["--exclude", EXCLUDE]
    try:
        try:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = 124
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            err += f"\n[timed out after {TIMEOUT:.0f}s]"
        with open(trace_path, encoding="utf-8", errors="replace") as f:
            trace_lines = f.read().splitlines()
    finally:
        os.unlink(trace_path)

    match = None
    for match in FINAL_LINE.finditer(out):
        pass
    if rc == 0 and match is not None and match.group(3) == "0" and int(match.group(1)) > 0:
        return

    last = trace_lines[-1] if trace_lines else "(no step started)"
    replay = ""
    step_match = re.match(r"thread (\d+) step (\d+) ", last)
    if threads == 1 and step_match:
        replay = (
            f"replay: cd {ROOT} && PYTHONHASHSEED=0 {sys.executable} tests/adversarial_fuzz_collections.py "
            f"--seed {seed} --steps {int(step_match.group(2)) + 1} --seconds 600 --trace -"
            + (f" --exclude {EXCLUDE}" if EXCLUDE else "")
        )
    elif step_match:
        replay = f"(threads={threads}: not deterministic; rerun with --threads {threads} --seed {seed})"
    pytest.fail(
        f"adversarial fuzz (sets, lists) seed={seed} threads={threads}: {_describe_exit(rc)}\n"
        f"last step started: {last}\n{replay}\n"
        f"--- last steps ---\n" + "\n".join(trace_lines[-15:]) + "\n"
        f"--- stdout (tail) ---\n{_tail(out, 6000)}\n"
        f"--- stderr (tail) ---\n{_tail(err, 4000)}",
        pytrace=False,
    )
