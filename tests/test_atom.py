"""pypersistent.Atom: a lock-free cell holding a PersistentMap.

Covers every method (deref, value, reset, compare_and_set, swap), their errors, repr,
weak references, garbage collection of cycles through the atom, and exact totals when
many threads swap at once. Every threaded test is bounded (fixed work, joins with a
timeout); the whole module runs in about a second.
"""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import threading
import weakref

import pytest

from pypersistent import Atom, PersistentList, PersistentMap, PersistentSet

MUST_BE = "must be a PersistentMap, PersistentSet, PersistentList or PersistentSortedDict"

JOIN_TIMEOUT = 60


# --------------------------------------------------------------------------------------
# Construction, deref, value
# --------------------------------------------------------------------------------------


def test_default_is_an_empty_persistent_map():
    a = Atom()
    m = a.deref()
    assert type(m) is PersistentMap
    assert len(m) == 0
    assert m == PersistentMap()


def test_initial_positional_and_keyword():
    m = PersistentMap(a=1)
    assert Atom(m).deref() is m
    assert Atom(initial=m).deref() is m


def test_deref_and_value_return_the_stored_object():
    m = PersistentMap(x=1, y=2)
    a = Atom(m)
    assert a.deref() is m
    assert a.value is m
    # Repeated reads keep returning the very same object (nothing is copied).
    assert a.deref() is a.deref() is a.value


def test_value_is_read_only():
    a = Atom()
    with pytest.raises(AttributeError):
        a.value = PersistentMap(a=1)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.value  # type: ignore[misc]


@pytest.mark.parametrize("bad", [{}, {"a": 1}, None, 0, "map", [], PersistentMap().transient()])
def test_initial_must_be_a_persistent_map(bad):
    with pytest.raises(TypeError) as info:
        Atom(bad)
    assert str(info.value) == f"Atom's initial value {MUST_BE}, not {_tp_name(bad)}"


def test_initial_type_error_by_keyword():
    with pytest.raises(TypeError, match=rf"^Atom's initial value {MUST_BE}, not dict$"):
        Atom(initial={})


def test_constructor_argument_errors():
    with pytest.raises(TypeError, match=r"at most 1 argument"):
        Atom(PersistentMap(), PersistentMap())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Atom(value=PersistentMap())  # type: ignore[call-arg]


def test_deref_takes_no_arguments():
    with pytest.raises(TypeError):
        Atom().deref(1)  # type: ignore[call-arg]


def test_type_attributes():
    assert Atom.__module__ == "pypersistent"
    assert Atom.__name__ == "Atom"
    assert Atom.__doc__.startswith("A lock-free cell holding a persistent structure: Atom(initial=PersistentMap()).")
    with pytest.raises(TypeError):
        Atom.extra = 1  # immutable type
    with pytest.raises(TypeError):

        class Sub(Atom):  # not a base type
            pass


# --------------------------------------------------------------------------------------
# reset
# --------------------------------------------------------------------------------------


def test_reset_returns_the_old_map_and_stores_the_new_one():
    m0 = PersistentMap(v=0)
    m1 = PersistentMap(v=1)
    m2 = PersistentMap(v=2)
    a = Atom(m0)
    assert a.reset(m1) is m0
    assert a.deref() is m1
    assert a.reset(m2) is m1
    assert a.value is m2


def test_reset_to_the_same_map():
    m = PersistentMap(v=0)
    a = Atom(m)
    assert a.reset(m) is m
    assert a.deref() is m


@pytest.mark.parametrize("bad", [{}, None, 1, (), PersistentMap().transient()])
def test_reset_type_error(bad):
    m = PersistentMap(v=0)
    a = Atom(m)
    with pytest.raises(TypeError) as info:
        a.reset(bad)
    assert str(info.value) == f"Atom.reset()'s argument {MUST_BE}, not {_tp_name(bad)}"
    assert a.deref() is m  # unchanged


def test_reset_argument_count():
    a = Atom()
    with pytest.raises(TypeError):
        a.reset()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        a.reset(PersistentMap(), PersistentMap())  # type: ignore[call-arg]


def test_reset_releases_the_old_map():
    class Value:
        pass

    v = Value()
    wr = weakref.ref(v)
    a = Atom(PersistentMap(v=v))
    del v
    assert wr() is not None
    a.reset(PersistentMap())  # the returned old map is dropped at once
    gc.collect()
    assert wr() is None


# --------------------------------------------------------------------------------------
# compare_and_set
# --------------------------------------------------------------------------------------


def test_compare_and_set_succeeds_on_the_current_object():
    m0 = PersistentMap(v=0)
    m1 = m0.set("v", 1)
    a = Atom(m0)
    assert a.compare_and_set(m0, m1) is True
    assert a.deref() is m1


def test_compare_and_set_fails_on_a_stale_object():
    m0 = PersistentMap(v=0)
    m1 = m0.set("v", 1)
    m2 = m0.set("v", 2)
    a = Atom(m0)
    assert a.compare_and_set(m0, m1) is True
    assert a.compare_and_set(m0, m2) is False  # m0 is no longer current
    assert a.deref() is m1


def test_compare_and_set_uses_identity_not_equality():
    m0 = PersistentMap(a=1, b=2)
    twin = PersistentMap(b=2, a=1)  # equal, but another object
    assert twin == m0 and twin is not m0
    new = PersistentMap(c=3)
    a = Atom(m0)
    assert a.compare_and_set(twin, new) is False
    assert a.deref() is m0
    # An equal copy made from the current map is not identical either.
    assert a.compare_and_set(PersistentMap.from_dict(dict(m0)), new) is False
    assert a.compare_and_set(m0.set("c", 3).delete("c"), new) is False
    assert a.deref() is m0
    assert a.compare_and_set(m0, new) is True
    assert a.deref() is new


def test_compare_and_set_empty_maps_are_distinct_objects():
    a = Atom()
    other_empty = PersistentMap()
    assert a.deref() is not other_empty
    assert a.compare_and_set(other_empty, PersistentMap(x=1)) is False
    assert len(a.deref()) == 0


def test_compare_and_set_with_non_map_expected_is_false():
    m = PersistentMap(v=0)
    a = Atom(m)
    assert a.compare_and_set(None, PersistentMap()) is False
    assert a.compare_and_set({"v": 0}, PersistentMap()) is False
    assert a.deref() is m


@pytest.mark.parametrize("bad", [{}, None, 1, PersistentMap().transient()])
def test_compare_and_set_type_error(bad):
    m = PersistentMap(v=0)
    a = Atom(m)
    with pytest.raises(TypeError) as info:
        a.compare_and_set(m, bad)
    assert str(info.value) == f"Atom.compare_and_set()'s new value {MUST_BE}, not {_tp_name(bad)}"
    assert a.deref() is m
    # Checked even when expected is stale.
    with pytest.raises(TypeError):
        a.compare_and_set(PersistentMap(), bad)


@pytest.mark.parametrize("args", [(), (PersistentMap(),), (PersistentMap(), PersistentMap(), PersistentMap())])
def test_compare_and_set_argument_count(args):
    with pytest.raises(TypeError) as info:
        Atom().compare_and_set(*args)
    assert str(info.value) == f"Atom.compare_and_set() takes exactly 2 arguments ({len(args)} given)"


def test_compare_and_set_rejects_keywords():
    a = Atom()
    with pytest.raises(TypeError):
        a.compare_and_set(expected=a.deref(), new=PersistentMap())  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------
# swap
# --------------------------------------------------------------------------------------


def test_swap_stores_and_returns_fn_result():
    m0 = PersistentMap(n=1)
    a = Atom(m0)
    seen = []

    def inc(m):
        seen.append(m)
        return m.set("n", m["n"] + 1)

    result = a.swap(inc)
    assert seen == [m0] and seen[0] is m0
    assert result == PersistentMap(n=2)
    assert a.deref() is result


def test_swap_passes_args_and_kwargs():
    a = Atom(PersistentMap())
    calls = []

    def fn(m, *args, **kwargs):
        calls.append((m, args, kwargs))
        return m.set("args", args).set("kwargs", tuple(sorted(kwargs.items())))

    result = a.swap(fn, 1, "two", key="k", other=3)
    assert result["args"] == (1, "two")
    assert result["kwargs"] == (("key", "k"), ("other", 3))
    assert len(calls) == 1
    # Keywords that look like swap's own parameter names go through to fn too.
    result = a.swap(fn, fn=1, self=2)
    assert result["kwargs"] == (("fn", 1), ("self", 2))


def test_swap_with_builtin_and_bound_methods():
    a = Atom(PersistentMap(a=1))
    assert a.swap(PersistentMap.set, "b", 2) == PersistentMap(a=1, b=2)
    assert a.swap(PersistentMap.delete, "a") == PersistentMap(b=2)
    assert a.swap(PersistentMap.update, {"c": 3}) == PersistentMap(b=2, c=3)
    other = PersistentMap(z=26)
    assert a.swap(lambda m: other) is other
    assert a.deref() is other


def test_swap_returning_the_same_map_succeeds():
    m = PersistentMap(a=1)
    a = Atom(m)
    assert a.swap(lambda cur: cur) is m
    assert a.deref() is m


def test_swap_needs_a_function():
    a = Atom()
    with pytest.raises(TypeError, match=r"^Atom\.swap\(\) takes at least 1 positional argument \(0 given\)$"):
        a.swap()
    with pytest.raises(TypeError, match=r"^Atom\.swap\(\) takes at least 1 positional argument \(0 given\)$"):
        a.swap(fn=lambda m: m)


def test_swap_with_a_non_callable():
    m = PersistentMap()
    a = Atom(m)
    with pytest.raises(TypeError, match="not callable"):
        a.swap(42)
    assert a.deref() is m


@pytest.mark.parametrize("bad", [{}, None, 1, PersistentMap().transient()])
def test_swap_fn_must_return_a_persistent_map(bad):
    m = PersistentMap(v=0)
    a = Atom(m)
    calls = []

    def fn(cur):
        calls.append(cur)
        return bad

    with pytest.raises(TypeError) as info:
        a.swap(fn)
    assert str(info.value) == (
        f"the value Atom.swap()'s function returned {MUST_BE}, not {_tp_name(bad)}"
    )
    assert len(calls) == 1  # no retry after an error
    assert a.deref() is m


def test_swap_propagates_exceptions_and_leaves_the_atom_unchanged():
    m = PersistentMap(v=0)
    a = Atom(m)

    class Boom(Exception):
        pass

    calls = []

    def fn(cur):
        calls.append(cur)
        raise Boom("nope")

    with pytest.raises(Boom, match="nope"):
        a.swap(fn)
    assert len(calls) == 1
    assert a.deref() is m


def test_swap_retries_when_the_map_changes_during_fn():
    m0 = PersistentMap(n=0)
    newer = m0.set("other", "written by someone else")
    a = Atom(m0)
    seen = []

    def fn(cur, amount, *, key):
        seen.append(cur)
        if len(seen) == 1:
            # A concurrent writer stores first: this call's result must be discarded.
            assert a.reset(newer) is m0
        return cur.set(key, cur[key] + amount)

    result = a.swap(fn, 5, key="n")
    assert len(seen) == 2, "fn must run again after a concurrent change"
    assert seen[0] is m0
    assert seen[1] is newer
    assert result == PersistentMap(n=5, other="written by someone else")
    assert a.deref() is result


def test_swap_retries_after_compare_and_set_and_nested_swap():
    a = Atom(PersistentMap(n=0))
    seen = []

    def fn(cur):
        seen.append(cur)
        if len(seen) == 1:
            assert a.compare_and_set(cur, cur.set("cas", True))
        elif len(seen) == 2:
            a.swap(lambda m: m.set("nested", True))
        return cur.set("n", cur["n"] + 1)

    result = a.swap(fn)
    assert len(seen) == 3
    assert result == PersistentMap(n=1, cas=True, nested=True)
    assert a.deref() is result


def test_swap_args_seen_by_fn_are_not_mutated_on_retry():
    # swap reuses one argument tuple between attempts; what fn kept must not change.
    a = Atom(PersistentMap(n=0))
    kept = []

    def fn(*args, **kwargs):
        kept.append((args, kwargs))
        if len(kept) == 1:
            a.reset(PersistentMap(n=100))
        return args[0].set("n", args[0]["n"] + args[1])

    a.swap(fn, 1, flag=True)
    assert [args[0]["n"] for args, _ in kept] == [0, 100]
    assert all(args[1] == 1 and kw == {"flag": True} for args, kw in kept)
    assert a.deref() == PersistentMap(n=101)


# --------------------------------------------------------------------------------------
# repr, weakref, GC, reference counts
# --------------------------------------------------------------------------------------


def test_repr():
    assert repr(Atom()) == "Atom(PersistentMap({}))"
    assert repr(Atom(PersistentMap(a=1))) == "Atom(PersistentMap({'a': 1}))"
    a = Atom(PersistentMap(a=1))
    a.reset(PersistentMap(b="x"))
    assert repr(a) == "Atom(PersistentMap({'b': 'x'}))"


def test_repr_of_self_referencing_atom_does_not_recurse_forever():
    a = Atom()
    a.reset(PersistentMap(me=a))
    r = repr(a)  # the map's repr shows the atom; PersistentMap.__repr__ guards recursion
    assert r.startswith("Atom(PersistentMap({'me': ")
    a.reset(PersistentMap())


def test_weakref():
    a = Atom()
    wr = weakref.ref(a)
    assert wr() is a
    proxy = weakref.proxy(a)
    assert len(proxy.deref()) == 0
    fired = []
    wr2 = weakref.ref(a, fired.append)
    del a
    gc.collect()
    assert wr() is None
    assert fired == [wr2]


def test_cycle_through_the_atom_is_collected():
    class Value:
        pass

    a = Atom()
    v = Value()
    a.reset(PersistentMap(me=a, v=v))
    wr_atom = weakref.ref(a)
    wr_value = weakref.ref(v)
    m = a.deref()
    wr_map = weakref.ref(m) if _weakrefable(m) else None
    del a, v, m
    gc.collect()
    assert wr_atom() is None
    assert wr_value() is None
    if wr_map is not None:
        assert wr_map() is None


def test_longer_cycle_through_two_atoms_is_collected():
    a, b = Atom(), Atom()
    a.reset(PersistentMap(peer=b))
    b.reset(PersistentMap(peer=a, items=[a, b]))
    wa, wb = weakref.ref(a), weakref.ref(b)
    del a, b
    gc.collect()
    assert wa() is None and wb() is None


def test_gc_sees_the_map_held_by_the_atom():
    m = PersistentMap(x=1)
    a = Atom(m)
    assert m in gc.get_referents(a)
    new = PersistentMap(y=2)
    a.reset(new)
    refs = gc.get_referents(a)
    assert new in refs and not any(r is m for r in refs)


def test_atoms_are_not_copied_or_pickled():
    # A copy would be a second cell that silently stops sharing updates: refused instead.
    a = Atom(PersistentMap(a=1))
    for f in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot pickle"):
            f(a)


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="needs sys.getrefcount")
def test_no_reference_leaks():
    m0 = PersistentMap(v=0)
    m1 = PersistentMap(v=1)
    a = Atom(m0)
    for _ in range(3):  # warm up (method caches, interned strings)
        a.reset(m1)
        a.reset(m0)
    before0, before1 = sys.getrefcount(m0), sys.getrefcount(m1)
    for _ in range(1000):
        a.deref()
        a.value
        a.reset(m1)
        a.compare_and_set(m1, m0)
        a.compare_and_set(m1, m0)  # fails
        a.swap(lambda cur: m1)
        a.swap(lambda cur: m0)
        repr(a)
    assert sys.getrefcount(m0) == before0
    assert sys.getrefcount(m1) == before1
    del a
    assert sys.getrefcount(m0) == before0 - 1


def _tp_name(obj) -> str:
    """What C's Py_TYPE(obj)->tp_name says: 'dict', or 'pypersistent.TransientMap'."""
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def _run(n, target):
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "threads did not finish in time"
    if errors:
        raise errors[0]


def test_concurrent_swaps_lose_no_update():
    n_threads, n_swaps = 8, 2000
    a = Atom(PersistentMap(total=0))
    calls = [0] * n_threads

    def bump(m, key):
        return m.set(key, m.get(key, 0) + 1).set("total", m["total"] + 1)

    def worker(i):
        key = f"t{i}"
        local_calls = 0

        def counted(m):
            nonlocal local_calls
            local_calls += 1
            return bump(m, key)

        for _ in range(n_swaps):
            a.swap(counted)
        calls[i] = local_calls

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # more interleavings on GIL builds
    try:
        _run(n_threads, worker)
    finally:
        sys.setswitchinterval(old)
    final = a.deref()
    assert final["total"] == n_threads * n_swaps
    for i in range(n_threads):
        assert final[f"t{i}"] == n_swaps
    assert len(final) == n_threads + 1
    assert all(c >= n_swaps for c in calls)  # retries are extra calls, never fewer


def test_concurrent_readers_see_consistent_snapshots():
    n_writers, n_readers, n_swaps = 4, 4, 1000
    a = Atom(PersistentMap(total=0))
    writers_left = [n_writers]
    writers_lock = threading.Lock()
    done = threading.Event()
    snapshots_checked = [0] * n_readers

    def bump(m, key):
        return m.set(key, m.get(key, 0) + 1).set("total", m["total"] + 1)

    def body(i):
        if i < n_writers:
            try:
                for _ in range(n_swaps):
                    a.swap(bump, f"w{i}")
            finally:
                with writers_lock:
                    writers_left[0] -= 1
                    if writers_left[0] == 0:
                        done.set()
            return
        r = i - n_writers
        last_total = -1
        while True:
            finished = done.is_set()
            snap = a.deref()
            total = snap["total"]
            assert total == sum(v for k, v in snap.items() if k != "total")
            assert total >= last_total  # the total only grows
            last_total = total
            snapshots_checked[r] += 1
            if finished:
                break

    _run(n_writers + n_readers, body)
    final = a.deref()
    assert final["total"] == n_writers * n_swaps
    assert all(final[f"w{i}"] == n_swaps for i in range(n_writers))
    assert all(n > 0 for n in snapshots_checked)


def test_concurrent_compare_and_set_exactly_one_winner_per_round():
    n_threads, rounds = 8, 200
    a = Atom(PersistentMap(round=0))
    wins = [0] * n_threads
    barrier = threading.Barrier(n_threads, timeout=JOIN_TIMEOUT / 2)

    def worker(i):
        for r in range(rounds):
            barrier.wait()
            cur = a.deref()
            barrier.wait()  # everyone holds the same version
            assert cur["round"] == r
            if a.compare_and_set(cur, cur.set("round", r + 1).set("winner", i)):
                wins[i] += 1
            barrier.wait()

    _run(n_threads, worker)
    assert sum(wins) == rounds
    assert a.deref()["round"] == rounds


@pytest.mark.parametrize("initial", [PersistentSet([1]), PersistentList([1])])
def test_atom_holds_any_persistent_structure(initial):
    a = Atom(initial)
    assert a.deref() is initial and a.value is initial
    new = a.swap(lambda v, x: v + type(v)([x]) if isinstance(v, PersistentList) else v | {x}, 2)
    assert list(new) == [1, 2] and a.deref() is new
    assert a.compare_and_set(new, PersistentMap(a=1)) and a.deref() == {"a": 1}
    assert a.reset(initial) == {"a": 1} and a.deref() is initial
    for bad in (PersistentSet().transient(), PersistentList().transient(), frozenset(), ()):
        with pytest.raises(TypeError):
            a.reset(bad)
    assert a.deref() is initial
    assert Atom[PersistentSet[int]] is not None


# ---- watches --------------------------------------------------------------------------------


def test_watchers_see_every_change_with_its_old_and_new_value():
    a = Atom(PersistentMap(n=0))
    seen = []

    @a.watch
    def record(old, new):
        seen.append((old, new))

    assert record is not None and callable(record)  # watch() returns fn: usable as a decorator
    v0 = a.deref()
    v1 = a.swap(lambda m: m.set("n", 1))
    v2 = PersistentMap(n=2)
    assert a.reset(v2) is v1
    assert not a.compare_and_set(v1, PersistentMap())  # a failed compare_and_set changes nothing
    v3 = PersistentMap(n=3)
    assert a.compare_and_set(v2, v3)
    assert seen == [(v0, v1), (v1, v2), (v2, v3)]
    assert all(o is x and n is y for (o, n), (x, y) in zip(seen, [(v0, v1), (v1, v2), (v2, v3)]))
    a.unwatch(record)
    a.reset(PersistentMap())
    assert len(seen) == 3
    with pytest.raises(ValueError, match="not watching"):
        a.unwatch(record)
    with pytest.raises(TypeError, match=r"Atom\.watch\(\) argument must be callable"):
        a.watch(42)


def test_a_raising_watcher_does_not_undo_the_change_or_silence_the_others():
    class Boom(Exception):
        pass

    a = Atom(PersistentSet())
    calls = []

    def first(old, new):
        calls.append("first")
        raise Boom("first")

    def second(old, new):
        calls.append("second")

    a.watch(first)
    a.watch(second)
    with pytest.raises(Boom, match="first"):
        a.swap(lambda s: s.add(1))
    assert a.deref() == {1} and calls == ["first", "second"]
    with pytest.raises(Boom):
        a.reset(PersistentSet({2}))
    assert a.deref() == {2}


def test_watchers_may_change_the_watch_list_and_the_atom_while_notified():
    a = Atom(PersistentList())
    log = []

    def once(old, new):
        log.append(len(new))
        a.unwatch(once)
        a.watch(lambda o, n: log.append(("late", len(n))))

    a.watch(once)
    a.swap(lambda v: v.append(1))  # calls once, which swaps the watch list
    a.swap(lambda v: v.append(2))  # calls only the late watcher
    assert log == [1, ("late", 2)]

    b = Atom(PersistentMap(n=0))

    def chain(old, new):  # a watcher that changes the atom again, until n reaches 5
        if new["n"] < 5:
            b.swap(lambda m: m.set("n", m["n"] + 1))

    b.watch(chain)
    b.reset(PersistentMap(n=1))
    assert b.deref()["n"] == 5


def test_each_concurrent_change_is_notified_once_with_its_own_values():
    a = Atom(PersistentMap(n=0))
    pairs = []
    lock = threading.Lock()

    def record(old, new):
        with lock:
            pairs.append((old["n"], new["n"]))

    a.watch(record)
    threads, per_thread = 8, 200

    def work():
        for _ in range(per_thread):
            a.swap(lambda m: m.set("n", m["n"] + 1))

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = threads * per_thread
    assert a.deref()["n"] == total
    assert sorted(pairs) == [(i, i + 1) for i in range(total)]


def test_watchers_take_part_in_garbage_collection():
    a = Atom(PersistentMap())
    a.watch(lambda old, new: a)  # the atom holds a watcher that holds the atom: a cycle
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None
