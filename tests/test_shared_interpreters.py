"""SharedMap and SharedAtom across subinterpreters (issue 14).

The module is per interpreter, but the named cells of SharedAtom are per process (one
extension DSO), so every interpreter that opens SharedAtom("x") sees the same cell: a map
built in one interpreter is read by another in O(1). A SharedMap's nodes hold no PyObject*, so
an interpreter may be destroyed while others still use the maps it built.

A cell lives while a handle to it is open: each test opens its cells in the main interpreter
first, so they outlive the subinterpreters that write them.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
import uuid

import pytest
from conftest import import_roots

from pypersistent import SharedAtom, SharedMap

# Subinterpreters as tests/test_interpreters.py runs them: concurrent.interpreters (PEP 734) on
# 3.14+, the private _interpreters on 3.13; older versions skip.
try:  # 3.14+
    from concurrent import interpreters as _high_level
except ImportError:
    _high_level = None

try:  # 3.13+
    import _interpreters as _low_level
except ImportError:
    _low_level = None

pytestmark = [
    pytest.mark.skipif(
        sys.version_info < (3, 13) or (_high_level is None and _low_level is None),
        reason="needs concurrent.interpreters (Python 3.14+) or _interpreters (3.13)",
    ),
    # Interpreters and threads of their own, and process-wide cells: one test thread at a time
    # under pytest-run-parallel.
    pytest.mark.thread_unsafe,
]


def run_in_subinterpreter(code: str, **main_attrs: object) -> str | None:
    """Run code in a new isolated subinterpreter (own GIL) and destroy it. Returns None on
    success, or a description of the exception that escaped from code. main_attrs are passed
    into the interpreter's __main__ by CPython's cross-interpreter machinery (as
    Interpreter.prepare_main does)."""
    if _high_level is not None:
        interp = _high_level.create()
        try:
            if main_attrs:
                interp.prepare_main(**main_attrs)
            try:
                interp.exec(code)
            except _high_level.ExecutionFailed as exc:
                return str(exc)
            return None
        finally:
            interp.close()
    interp_id = _low_level.create(_low_level.new_config("isolated"))
    try:
        if main_attrs:
            _low_level.set___main___attrs(interp_id, main_attrs)
        excinfo = _low_level.run_string(interp_id, code)
        if excinfo is None:
            return None
        described = getattr(excinfo, "errdisplay", None) or getattr(excinfo, "formatted", None)
        return described or repr(excinfo)
    finally:
        _low_level.destroy(interp_id)


def script(body: str, **constants: object) -> str:
    prelude = f"import sys\nsys.path[:0] = {import_roots()!r}\n"
    prelude += "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    return prelude + textwrap.dedent(body)


def cell_name(what: str) -> str:
    return f"t-{what}-{uuid.uuid4()}"


BUILD_BIG = """
from pypersistent import SharedAtom, SharedMap
t = SharedMap().transient()
for i in range(N):
    t[i] = ("v", i, str(i), i * 0.5, 2**70 + i)
t["nested"] = SharedMap({"s": "é\U0001f600", "b": b"\\x00\\xff"})
m = t.persistent()
assert len(m) == N + 1
SharedAtom(NAME).reset(m)
"""


def test_map_built_in_a_subinterpreter_is_read_in_main():
    name = cell_name("handover")
    atom = SharedAtom(name)  # keeps the cell open across the subinterpreter's lifetime
    n = 10_000
    result = run_in_subinterpreter(script(BUILD_BIG, NAME=name, N=n))
    assert result is None, result
    start = time.perf_counter()
    m = atom.deref()
    elapsed = time.perf_counter() - start
    assert len(m) == n + 1
    assert elapsed < 0.5, f"deref took {elapsed:.3f}s: not an O(1) hand-over"
    assert m[1234] == ("v", 1234, "1234", 617.0, 2**70 + 1234)
    assert m[9999.0] == ("v", 9999, "9999", 4999.5, 2**70 + 9999)
    assert m["nested"] == {"s": "é\U0001f600", "b": b"\x00\xff"} and type(m["nested"]) is SharedMap
    expected = {i: ("v", i, str(i), i * 0.5, 2**70 + i) for i in range(n)}
    expected["nested"] = SharedMap({"s": "é\U0001f600", "b": b"\x00\xff"})
    assert m == expected
    # main builds on the map the (now destroyed) interpreter made
    m2 = m.set("main", True).delete(0)
    assert len(m2) == n + 1 and m2["main"] is True and 0 in m and 0 not in m2


COUNT = """
from pypersistent import SharedAtom
atom = SharedAtom(NAME)

def bump(m, key):
    return m.set(key, m.get(key, 0) + 1).set("total", m.get("total", 0) + 1)

for _ in range(SWAPS):
    atom.swap(bump, KEY)
"""


def test_interpreters_on_threads_lose_no_update():
    name = cell_name("counters")
    atom = SharedAtom(name)
    n_interpreters, swaps = 8, 2_000
    results: list[str | None] = ["not run"] * n_interpreters
    barrier = threading.Barrier(n_interpreters + 1)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = run_in_subinterpreter(script(COUNT, NAME=name, KEY=f"c{index}", SWAPS=swaps))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = f"harness error: {exc!r}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_interpreters)]
    for t in threads:
        t.start()
    barrier.wait()
    # Snapshots read meanwhile are consistent: every swap moves a counter and the total together.
    snapshots = 0
    while any(t.is_alive() for t in threads):
        m = atom.deref()
        counters = [m.get(f"c{i}", 0) for i in range(n_interpreters)]
        assert m.get("total", 0) == sum(counters), dict(m)
        snapshots += 1
        time.sleep(0.001)
    for t in threads:
        t.join(300)
    for index, result in enumerate(results):
        assert result is None, f"interpreter {index}: {result}"
    final = atom.deref()
    assert final["total"] == n_interpreters * swaps
    assert all(final[f"c{i}"] == swaps for i in range(n_interpreters))
    assert snapshots > 0


DERIVE = """
from pypersistent import SharedAtom, SharedMap
src = SharedAtom(SOURCE).deref()
assert src["round"] == ROUND - 1 or ROUND == 0
out = src.set("round", ROUND).set(("r", ROUND), SharedMap({"big": 2**100 + ROUND, "s": "x" * ROUND}))
SharedAtom(NAME).reset(out)
"""


def test_maps_outlive_the_interpreters_that_built_them():
    rounds = 12
    source = SharedAtom(cell_name("chain"))
    source.reset({"round": -1})
    kept = []
    for r in range(rounds):
        name = cell_name(f"round{r}")
        atom = SharedAtom(name)
        result = run_in_subinterpreter(script(DERIVE, SOURCE=source.name, NAME=name, ROUND=r))
        assert result is None, result
        m = atom.deref()
        del atom  # the cell closes; the map lives on in main
        kept.append(m)
        source.reset(m)  # the next interpreter derives from this one
    # every interpreter is gone: all the maps still work
    for r, m in enumerate(kept):
        assert m["round"] == r
        assert len(m) == r + 2
        for j in range(r + 1):
            assert m[("r", j)] == {"big": 2**100 + j, "s": "x" * j}
        assert hash(m) == hash(SharedMap(m.to_dict()))
        assert m.set("extra", 1)["extra"] == 1
    assert kept[-1].to_persistent()["round"] == rounds - 1


# ---- moving a SharedMap itself: CPython's cross-interpreter data, by reference -----------------

# The versions whose cross-interpreter registry the extension knows (src/shared_crossinterp.cpp).
_moves_by_reference = (3, 13) <= sys.version_info[:2] < (3, 16)


def _is_shareable(obj: object) -> bool:
    if _high_level is not None:
        return _high_level.is_shareable(obj)
    return _low_level.is_shareable(obj)


@pytest.mark.skipif(not _moves_by_reference, reason="no known cross-interpreter registry on this version")
def test_shared_map_moves_to_another_interpreter_by_reference():
    big = SharedMap({i: str(i) for i in range(10_000)}).set("nested", SharedMap(a=(1, 2.5, None)))
    assert _is_shareable(big) and _is_shareable(SharedMap())
    name = cell_name("moved")
    cell = SharedAtom(name)
    error = run_in_subinterpreter(
        script(
            """
            from pypersistent import SharedAtom, SharedMap
            assert type(m) is SharedMap, type(m)
            assert len(m) == 10_001 and m[4_321] == "4321" and m["nested"]["a"] == (1, 2.5, None)
            SharedAtom(name).reset(m)  # back to the main interpreter, through the cell
            """
        ),
        m=big,
        name=name,
    )
    assert error is None, error
    # The cell holds the very trie that was sent (compare_and_set compares identity): no copy
    # was made on the way, and it outlives the interpreter that received it.
    assert cell.deref() == big
    assert cell.compare_and_set(big, SharedMap())
    assert cell.deref() == SharedMap()


@pytest.mark.skipif(
    not _moves_by_reference or _high_level is None, reason="needs concurrent.interpreters queues (3.14+)"
)
def test_shared_map_passes_through_an_interpreter_queue():
    queue = _high_level.create_queue()
    original = SharedMap({i: i * i for i in range(1_000)})
    queue.put(original)
    received = queue.get()
    assert type(received) is SharedMap and received == original
    name = cell_name("queued")
    cell = SharedAtom(name)
    cell.reset(original)
    assert cell.compare_and_set(received, SharedMap())  # the same trie, not a copy
    # A map built in another interpreter and put on the queue there, still in use here after
    # that interpreter is gone. (CPython unbinds the queue items an interpreter put when it is
    # closed, so the item is taken before.)
    interp = _high_level.create()
    try:
        interp.prepare_main(queue=queue)
        interp.exec(
            script(
                """
                from pypersistent import SharedMap
                queue.put(SharedMap({("k", i): i for i in range(500)}).set("from", "sub"))
                """
            )
        )
        built_there = queue.get()
    finally:
        interp.close()
    assert type(built_there) is SharedMap
    assert len(built_there) == 501 and built_there["from"] == "sub" and built_there[("k", 7)] == 7


# ---- the per-interpreter cache of looked-up values (src/shared_value_cache.hpp) ---------------

READ_VALUES = """
from pypersistent import SharedMap
m = SharedMap({i: (f"value-{i}" if i % 2 else 10_000 + i) for i in range(N)})
for _ in range(3):  # values are cached on their second read
    for i in range(N):
        assert m[i] == (f"value-{i}" if i % 2 else 10_000 + i) if LOOKUP else i in m
"""


def test_interpreter_teardown_releases_the_cached_values():
    # An interpreter that read its map's values with m[k] (filling its value cache) must leave
    # no more allocated blocks behind than one that only asked `k in m` (cache left empty).
    # sys.getallocatedblocks() counts what destroyed interpreters left allocated too (3.12+),
    # so a cache that kept its strs and ints would show up as thousands of blocks per interpreter.
    import gc

    n, interpreters = 3_000, 3

    def growth(lookup: bool) -> int:
        code = script(READ_VALUES, N=n, LOOKUP=lookup)
        assert run_in_subinterpreter(code) is None  # warm-up: one-time allocations
        gc.collect()
        before = sys.getallocatedblocks()
        for _ in range(interpreters):
            result = run_in_subinterpreter(code)
            assert result is None, result
        gc.collect()
        return sys.getallocatedblocks() - before

    without_cache, with_cache = growth(False), growth(True)
    assert with_cache - without_cache < n // 3, (with_cache, without_cache)


# ---- hostile code inside subinterpreters ------------------------------------------------------

HOSTILE_SWAPS = """
import gc
from pypersistent import SharedAtom, SharedMap
atom = SharedAtom(NAME)
start = atom.deref()

# A swap function that raises leaves the cell as it was; the error is the caller's own.
try:
    atom.swap(lambda m: 1 / 0)
except ZeroDivisionError:
    pass
else:
    raise AssertionError("swap swallowed the function's error")
try:
    atom.swap(lambda m: [m])  # not a map
except TypeError:
    pass
else:
    raise AssertionError("swap accepted a list")
assert atom.deref() is start or atom.deref() == start

# One that re-enters: it resets the same cell through a second handle (so the swap must retry on
# the newer version) and drops this interpreter's name for the handle it was called through.
calls = []
def bump(m):
    global atom
    calls.append(m)
    if len(calls) == 1:
        SharedAtom(NAME).reset(m.set("n", m["n"] + 100))
        del atom
        gc.collect()
    return m.set("n", m["n"] + 1).set(("sub", len(calls)), SharedMap({"calls": len(calls)}))

handle = SharedAtom(NAME)
result = handle.swap(bump)
assert len(calls) == 2 and calls[1]["n"] == calls[0]["n"] + 100, [dict(c) for c in calls]
assert result["n"] == calls[0]["n"] + 101 and handle.deref() == result

# compare_and_set against a version this interpreter did not read is refused.
assert not handle.compare_and_set(calls[0], SharedMap())
assert handle.deref() == result

# A map the main interpreter built, read here, updated and published back.
other = SharedAtom(OTHER).deref()
handle.reset(result.set("from_main", other).set("main_sum", sum(other.values())))

# Leave maps behind in every place an interpreter's teardown has to release them: a global, a
# reference cycle through a list, an exception's traceback.
kept = result.set("kept", True)
cycle = [kept]
cycle.append(cycle)
try:
    raise ValueError(kept)
except ValueError as error:
    pending = error
"""


def test_hostile_swaps_in_a_subinterpreter_leave_consistent_cells():
    name, other_name = cell_name("hostile"), cell_name("hostile-other")
    atom, other = SharedAtom(name), SharedAtom(other_name)
    atom.reset({"n": 0})
    other.reset({i: i * i for i in range(50)})
    for round_ in range(3):
        result = run_in_subinterpreter(script(HOSTILE_SWAPS, NAME=name, OTHER=other_name))
        assert result is None, result
        m = atom.deref()
        assert m["n"] == 101 * (round_ + 1)
        assert m[("sub", 2)] == {"calls": 2} and ("sub", 1) not in m
        assert m["from_main"] == {i: i * i for i in range(50)} and m["main_sum"] == sum(i * i for i in range(50))
        assert "kept" not in m


def test_a_cell_only_a_destroyed_interpreter_held_is_closed():
    # The cell lives while any interpreter holds a handle: here only the subinterpreter did.
    name = cell_name("orphan")
    code = script(
        """
from pypersistent import SharedAtom
keep = SharedAtom(NAME)
keep.reset({i: str(i) for i in range(1000)})
assert len(SharedAtom(NAME).deref()) == 1000
""",
        NAME=name,
    )
    assert run_in_subinterpreter(code) is None
    assert SharedAtom(name).deref() == {}
