"""The adversarial fuzzer (tests/adversarial_fuzz.py) run in this process, from many threads.

Worker threads share a pool of map versions, the hostile key objects, transients, iterators,
views and Atoms; one more thread flips the shared hostile mode and the keys' traits all the
time. Hostile __hash__/__eq__/__bool__/__del__ (and weakref callbacks) raise, change their
answers, re-enter the map, transient or Atom being used, drop the last references to other
objects and collect garbage. After every step each thread checks every live version (len ==
every iteration, entries identical to the snapshot taken when the version was made); at the
end, no hostile key or value may survive. See the docstring of tests/adversarial_fuzz.py.

Under the TSan interpreter (scripts/run-python-stress.sh) this also puts those paths under
ThreadSanitizer. The phase runs for Budget.seconds (short: 8 s, long: 120 s); threads:
6 (short) or 24 (long).

A crash here takes the whole pytest process down; tests/test_adversarial_fuzz.py runs the
same engine in subprocesses, where a crash fails one test with its seed and a replay command.
To bisect an older build, `run(..., exclude=["known"])` leaves out the triggers of the bugs
fixed in commit 9706d26 (KNOWN_BUG_FEATURES in the engine).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from stress_support import Budget, describe_runtime

SEED = 20250601
FUZZ_PATH = Path(__file__).resolve().parent.parent / "tests" / "adversarial_fuzz.py"


def _load_fuzzer():
    # Registered under its own name so that pickle finds the hostile classes again.
    name = "adversarial_fuzz"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, FUZZ_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def test_adversarial_fuzz_threads(budget: Budget) -> None:
    fuzz = _load_fuzzer()
    threads = budget.n(6, 24)
    result = fuzz.run(seconds=budget.seconds, seed=SEED, threads=threads)
    report = result.report()
    print(f"\n[{describe_runtime()}]\n{report}")
    assert result.ok, report
    assert result.steps >= threads, report
