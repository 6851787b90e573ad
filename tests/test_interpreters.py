"""The extension on free-threaded builds (no GIL re-enabled on import) and in isolated
subinterpreters that have their own GIL (PEP 684)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import FREE_THREADED_BUILD, child_env, import_roots

# --------------------------------------------------------------------------------------
# Free-threaded build: importing the module must not switch the GIL back on
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not FREE_THREADED_BUILD, reason="needs a free-threaded (3.13t+) build")
def test_import_keeps_gil_disabled():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pypersistent, persistent_map_cpp, sys; print(sys._is_gil_enabled())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
    # importing an extension that does not declare free-threading support warns
    assert "GIL" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------
# Subinterpreters
# --------------------------------------------------------------------------------------

# 3.14+ runs the subinterpreters through the public concurrent.interpreters (PEP 734); 3.13
# through the private _interpreters. 3.12's _xxsubinterpreters is not used: the tests skip.
try:  # 3.14+
    from concurrent import interpreters as _high_level
except ImportError:
    _high_level = None

try:  # 3.13+: the low-level module (in 3.12 it was _xxsubinterpreters)
    import _interpreters as _low_level
except ImportError:
    _low_level = None

needs_subinterpreters = pytest.mark.skipif(
    sys.version_info < (3, 13) or (_high_level is None and _low_level is None),
    reason="needs concurrent.interpreters (Python 3.14+) or _interpreters (3.13)",
)


def _assert_isolated(config: object) -> None:
    # An interpreter with its own GIL, which refuses extensions that do not declare
    # per-interpreter GIL support.
    assert getattr(config, "gil", None) == "own", config
    assert getattr(config, "check_multi_interp_extensions", None) is True, config


def run_in_subinterpreter(code: str) -> str | None:
    """Run ``code`` in a new isolated subinterpreter (own GIL, strict extension checks)
    and destroy it again.  Returns None on success, or a description of the exception
    that escaped from ``code``."""
    if _high_level is not None:
        interp = _high_level.create()
        try:
            # create() makes an isolated interpreter; check it where the config is readable.
            if _low_level is not None and hasattr(_low_level, "get_config"):
                _assert_isolated(_low_level.get_config(interp.id))
            try:
                interp.exec(code)
            except _high_level.ExecutionFailed as exc:
                return str(exc)
            return None
        finally:
            interp.close()

    # 3.13: _interpreters.create() uses the "isolated" config by default; ask for it
    # explicitly anyway.  run_string() returns None on success and, if the code raised,
    # a types.SimpleNamespace describing the exception (type, msg, formatted, errdisplay).
    config = _low_level.new_config("isolated")
    _assert_isolated(config)
    interp_id = _low_level.create(config)
    try:
        excinfo = _low_level.run_string(interp_id, code)
        if excinfo is None:
            return None
        described = getattr(excinfo, "errdisplay", None) or getattr(excinfo, "formatted", None)
        return described or repr(excinfo)
    finally:
        _low_level.destroy(interp_id)


def _script(body: str) -> str:
    prelude = f"import sys\nsys.path[:0] = {import_roots()!r}\n"
    return prelude + textwrap.dedent(body)


SUBINTERPRETER_BODY = """
import gc
import pickle
from pypersistent import PersistentMap, TransientMap
from persistent_map_cpp import PersistentMap as Legacy

def check(cond, what):
    if not cond:
        raise AssertionError(what)

check(Legacy is PersistentMap, "legacy import path gives another class")

m = PersistentMap()
for i in range(2000):
    m = m.assoc(i, str(i))
check(len(m) == 2000, "len after assoc")
check(m[1234] == "1234", "lookup")
check(m.get(-1, "d") == "d", "get default")

m2 = m.dissoc(5).set("x", [1, 2])
check(5 in m and 5 not in m2, "dissoc")
check(len(m2) == 2000, "len after dissoc+set")

t = m2.transient()
check(isinstance(t, TransientMap), "transient type")
for i in range(100):
    del t[i + 10]
t["y"] = 3
p = t.persistent()
check(len(p) == 1901, "transient result length")
try:
    t["z"] = 1
except RuntimeError:
    pass
else:
    raise AssertionError("transient usable after persistent()")

check(PersistentMap({"a": 1}) == {"a": 1}, "equality with dict")
check(hash(PersistentMap({"a": 1, "b": 2})) == hash(PersistentMap({"b": 2, "a": 1})), "hash")
check(repr(PersistentMap({"a": 1})) == "PersistentMap({'a': 1})", "repr")
check(pickle.loads(pickle.dumps(m2)) == m2, "pickle")
try:
    PersistentMap()["missing"]
except KeyError as exc:
    check(exc.args == ("missing",), "KeyError args")
else:
    raise AssertionError("no KeyError")

lst = []
cyc = PersistentMap({"l": lst})
lst.append(cyc)
del lst, cyc
gc.collect()
"""


@needs_subinterpreters
def test_subinterpreter_api_by_version():
    # the tests below really use concurrent.interpreters from 3.14 on, _interpreters on 3.13
    if sys.version_info >= (3, 14):
        assert _high_level is not None, "concurrent.interpreters is missing on 3.14+"
    else:
        assert _high_level is None and _low_level is not None


@needs_subinterpreters
def test_subinterpreter_harness_reports_failures():
    # the helper really notices a failing script, so the tests below can fail
    result = run_in_subinterpreter("raise AssertionError('deliberate failure')")
    assert result is not None
    assert "deliberate failure" in result
    assert run_in_subinterpreter("x = 1 + 1") is None


@needs_subinterpreters
def test_works_in_isolated_subinterpreter():
    result = run_in_subinterpreter(_script(SUBINTERPRETER_BODY))
    assert result is None, result


@needs_subinterpreters
def test_works_in_successive_subinterpreters():
    # interpreters one after another: per-interpreter module state is set up and torn down
    for _ in range(3):
        result = run_in_subinterpreter(_script(SUBINTERPRETER_BODY))
        assert result is None, result
    # and the main interpreter's module still works
    from pypersistent import PersistentMap

    assert PersistentMap({"a": 1}).assoc("b", 2) == {"a": 1, "b": 2}


@needs_subinterpreters
def test_works_in_several_subinterpreters_at_once_from_threads():
    n = 4
    results: list[str | None] = ["not run"] * n
    barrier = threading.Barrier(n)
    script = _script(SUBINTERPRETER_BODY)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = run_in_subinterpreter(script)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = f"harness error: {exc!r}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "subinterpreter threads did not finish"
    for index, result in enumerate(results):
        assert result is None, f"interpreter {index}: {result}"
