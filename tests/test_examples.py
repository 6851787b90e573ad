"""Every script in examples/ runs to completion with the current interpreter.

Each example runs in a subprocess (python examples/NAME.py, from the repository root) and
must exit 0. Examples listed in KEY_LINES must also print lines matching those patterns;
a new example needs no entry here to be run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 120  # seconds per example; each takes a second or two

# Regular expressions that must each match a whole line of the example's stdout.
KEY_LINES = {
    "demo.py": [
        r"versions kept: 1001 - oldest still intact: True",
        r"8 threads read and derived versions, errors: 0",
    ],
    "worker_snapshots.py": [
        r"snapshot: total=(\d+) == sum\(.*\)  \[consistent\]",
        r"monitor: checked \d+ snapshots, all consistent",
        r"final: total=(\d+), sum of workers=\1, workers=4: consistent",
    ],
}

SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_examples_exist():
    assert "demo.py" in SCRIPTS
    assert "worker_snapshots.py" in SCRIPTS
    # Every pattern belongs to a script that still exists.
    assert set(KEY_LINES) <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name):
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a hang or crash prints every thread's stack
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    lines = proc.stdout.splitlines()
    for pattern in KEY_LINES.get(name, []):
        assert any(re.fullmatch(pattern, line) for line in lines), (
            f"{name}: no line matches {pattern!r}\n--- stdout ---\n{proc.stdout}"
        )
