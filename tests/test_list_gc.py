"""PersistentList and the garbage collector: cycles through lists and through trie nodes that
several versions share are collected (the census of src/gc_census.hpp, with the vector's node
traits), nothing reachable is freed, no reference or memory leaks, and 300,000-deep nesting
neither overflows the C stack when dropped nor crashes hash/==/repr.
"""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from typing import Any, Callable

import pytest
from conftest import child_env, full_gc
from pypersistent import PersistentList, PersistentMap

PL = PersistentList


class Node:
    pass


class Doc:
    def __init__(self) -> None:
        self.history: list[Any] = []


# --------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 5, 40, 2000])
def test_cycle_through_a_list_is_collected(n: int) -> None:
    o = Node()
    o.l = PL(range(n)).append(o)  # type: ignore[attr-defined]
    r = weakref.ref(o)
    del o
    full_gc()
    assert r() is None


def history_cycle(n: int = 100, versions: int = 20, cls: type = Doc) -> weakref.ref[Any]:
    d = cls()
    l = PL(range(n)).append(d)
    for i in range(versions):
        l = l.set(i % n, -i) if i % 2 else l.append(i)  # versions share nodes (and tails)
        d.history.append(l)
    return weakref.ref(d)


@pytest.mark.parametrize("n", [3, 100, 1100, 40000])
def test_objects_keeping_versions_that_refer_back_are_collected(n: int) -> None:
    refs = [history_cycle(n) for _ in range(20 if n < 10000 else 2)]
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_the_issue_shape_obj_attr_is_l_append_obj() -> None:
    refs = []
    for _ in range(100):
        obj = Node()
        l = PL(range(500))
        obj.attr = l.append(obj)  # type: ignore[attr-defined]
        obj.others = [l.append(obj).set(3, obj) for _ in range(3)]  # type: ignore[attr-defined]
        refs.append(weakref.ref(obj))
        del obj
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


@pytest.mark.thread_unsafe  # tracemalloc is process-wide
def test_dropped_history_cycles_do_not_accumulate_memory() -> None:
    full_gc()
    tracemalloc.start()
    try:
        for i in range(1000):
            history_cycle(n=300, versions=10)
            if i % 100 == 0:
                gc.collect()
        full_gc()
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 3_000_000, current


def test_cycle_through_a_list_sharing_nodes_with_a_live_transient_is_collected() -> None:
    refs = []
    for _ in range(50):
        o = Node()
        l = PL(range(100)).append(o)
        t = l.transient()
        t.append(o)
        o.t, o.l = t, l  # type: ignore[attr-defined]
        refs.append(weakref.ref(o))
        del o, l, t
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_cycles_through_lists_maps_and_iterators_are_collected() -> None:
    refs = []
    for _ in range(50):
        o = Node()
        l = PL(range(70)).append(o)
        m = PersistentMap(l=l, o=o)
        o.stuff = [m, iter(l), reversed(l.set(0, m))]  # type: ignore[attr-defined]
        refs.append(weakref.ref(o))
        del o, l, m
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_cycles_with_finalizers_through_shared_nodes_are_collected() -> None:
    finalized = []

    class Final(Doc):
        def __del__(self) -> None:
            finalized.append(1)

    refs = [history_cycle(n=200, versions=10, cls=Final) for _ in range(30)]
    gc.collect()
    assert len(finalized) == 30
    assert sum(r() is not None for r in refs) == 0


# --------------------------------------------------------------------------------------
# Soundness: what is reachable stays intact
# --------------------------------------------------------------------------------------


def test_a_version_kept_by_a_local_keeps_the_shared_cycle_alive() -> None:
    x = Node()
    a = PL([[i] for i in range(1000)]).append(x)
    b = a.set(5, "five")
    x.b = b  # type: ignore[attr-defined]
    del x, b
    gc.collect()
    assert a[-1].b[-1] is a[-1] and a[999] == [999]
    r = weakref.ref(a[-1])
    del a
    gc.collect()
    assert r() is None


def test_a_holder_in_an_older_generation_keeps_shared_contents_alive() -> None:
    x = Node()
    a = PL([[i] for i in range(3000)]).append(x)
    gc.collect()
    for _ in range(10):
        b = a.set(7, "seven")
        x.lst = [b, a]  # type: ignore[attr-defined]
        del b
        gc.collect(0)
        gc.collect(1)
        assert a[-1].lst[0][-1] is x and a[-1].lst[1] is a
        assert a[1500] == [1500]


@pytest.mark.thread_unsafe  # gc.freeze is process-wide
def test_frozen_holders_keep_shared_contents_alive() -> None:
    x = Node()
    a = PL(range(300)).append(x)
    gc.freeze()
    try:
        b = a.set(1, "one")
        x.b = b  # type: ignore[attr-defined]
        del b
        gc.collect()
        assert a[-1].b[-1] is x
    finally:
        gc.unfreeze()
    del a, x
    gc.collect()


def test_a_live_transient_keeps_shared_contents_alive() -> None:
    x = Node()
    a = PL([[i] for i in range(300)]).append(x)
    t = a.transient()
    x.a = a  # type: ignore[attr-defined]
    del a
    gc.collect()
    assert t[-1].a[-1] is t[-1]
    t.append("new")
    gc.collect()
    assert t.persistent()[-2].a[299] == [299]


def test_get_referents_reports_a_lists_own_references() -> None:
    x = Node()
    assert x in gc.get_referents(PL([x]))
    big = PL(Node() for _ in range(5000))
    assert len([o for o in gc.get_referents(big) if isinstance(o, Node)]) == 5000


def test_random_graphs_of_shared_versions_collect_exactly_the_garbage() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RANDOM_GRAPHS)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "graphs ok" in out.stdout


RANDOM_GRAPHS = """
import gc, random, weakref
from pypersistent import PersistentList, PersistentMap

class Obj:
    __slots__ = ("token", "refs", "__weakref__")
    def __init__(self):
        self.token = ("tok", id(self) % 1000003)
        self.refs = []

def check(obj, seen):
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Obj):
            assert o.token == ("tok", id(o) % 1000003), "a reachable object was cleared"
            stack.extend(o.refs)
        elif isinstance(o, PersistentList):
            items = list(o)
            assert len(items) == len(o)
            stack.extend(items)
        elif isinstance(o, PersistentMap):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)

def one_graph(rng, all_refs):
    objs = []
    versions = [PersistentList(range(rng.choice([0, 5, 40, 1100])))]
    for step in range(rng.randrange(20, 80)):
        r = rng.random()
        if r < 0.3:
            o = Obj()
            objs.append(o)
            all_refs.append(weakref.ref(o))
        elif r < 0.75 and objs:
            v = rng.choice(versions)
            x = rng.choice(objs)
            if len(v) and rng.random() < 0.5:
                v = v.set(rng.randrange(len(v)), x)
            elif len(v) and rng.random() < 0.2:
                v = v.pop()
            else:
                v = v.append(x)
            versions.append(v)
        elif r < 0.85 and objs:
            rng.choice(objs).refs.append(rng.choice(versions))
        elif r < 0.9 and objs:
            rng.choice(objs).refs.append(PersistentMap(l=rng.choice(versions)))
        elif r < 0.95 and objs:
            t = rng.choice(versions).transient()
            t.append(rng.choice(objs))
            holder = rng.choice(objs)
            holder.refs.append(t.persistent() if rng.random() < 0.5 else t)
        else:
            gc.collect(rng.randrange(3))
    kept = [x for x in objs + versions if rng.random() < 0.1]
    del objs, versions
    for gen in (0, 1, 2):
        gc.collect(gen)
        seen = set()
        for k in kept:
            check(k, seen)
    del kept
    gc.collect()

rng = random.Random(77)
all_refs = []
for graph in range(60):
    one_graph(rng, all_refs)
gc.collect()
alive = sum(r() is not None for r in all_refs)
assert alive == 0, f"{alive} of {len(all_refs)} objects leaked"
print("graphs ok", len(all_refs))
"""


# --------------------------------------------------------------------------------------
# Reference and memory leaks
# --------------------------------------------------------------------------------------


class Boom(Exception):
    pass


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise Boom

    def __lt__(self, other: object) -> bool:
        raise Boom

    def __hash__(self) -> int:
        raise Boom


def _raises(f: Callable[[], Any]) -> None:
    try:
        f()
    except (Boom, IndexError, ValueError, TypeError, RuntimeError):
        pass


def scenario(objs: list[Any]) -> None:
    a, b, c = objs[:3]
    l = PL(objs)
    l2 = l.append(a).set(1, b).extend([c, a]).pop() + PL([b]) * 2
    _ = l2[::-3], l2[5:100], l2[-40:], list(reversed(l2)), l2.index(c), l2.count(a), b in l2
    _ = l2 == l, l2 < l, repr(PL([a])), l.list(), l.slice(2, 50), l.get(10**6, a)
    _ = pickle.loads(pickle.dumps(PL([1, 2]))), l.nth(-1), l.get(3)
    t = l2.transient()
    t.append(a)
    t[0] = b
    t.extend(objs[:40])
    t.pop()
    _ = t[3], t[1:9], list(t), c in t, len(t)
    t.persistent()
    bad = PL([RaisingEq()] * 3 + [a])
    _raises(lambda: hash(bad))
    _raises(lambda: bad == PL([RaisingEq()] * 4))
    _raises(lambda: bad < PL([RaisingEq()] * 4))
    _raises(lambda: bad.index(a))
    _raises(lambda: a in bad)
    _raises(lambda: PL().pop())
    _raises(lambda: l.nth(10**6))
    _raises(lambda: l.set(10**6, a))
    _raises(lambda: l["x"])  # type: ignore[index]

    def gen() -> Any:
        yield a
        raise Boom

    _raises(lambda: l.extend(gen()))
    t2 = l.transient()
    _raises(lambda: t2.extend(gen()))
    with t2:
        pass
    _raises(lambda: t2.append(a))


def refcounts(objs: list[Any]) -> list[int]:
    return [sys.getrefcount(o) for o in objs]


@pytest.mark.thread_unsafe  # counts references of shared objects
def test_no_reference_leaks() -> None:
    objs = [object() for _ in range(1100)]
    scenario(objs)
    full_gc()
    before = refcounts(objs)
    for _ in range(30):
        scenario(objs)
    full_gc()
    assert refcounts(objs) == before


@pytest.mark.thread_unsafe  # tracemalloc is process-wide
def test_memory_does_not_grow_across_rounds() -> None:
    objs = [object() for _ in range(1100)]
    scenario(objs)
    full_gc()
    tracemalloc.start()
    try:
        for _ in range(5):
            scenario(objs)
        full_gc()
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(40):
            scenario(objs)
        full_gc()
        later, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert later - first < 200_000, (first, later)


def test_values_released_when_versions_dropped() -> None:
    v = object()
    base = sys.getrefcount(v)
    versions = [PL([v] * 100)]
    for i in range(200):
        versions.append(versions[-1].append(v).set(i % 50, v))
    assert sys.getrefcount(v) > base
    while versions:
        versions.pop(len(versions) // 2)
    assert sys.getrefcount(v) == base


# --------------------------------------------------------------------------------------
# Deep nesting
# --------------------------------------------------------------------------------------


def run_child(body: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_300k_deep_chain_of_lists_does_not_overflow_the_c_stack() -> None:
    out = run_child(
        """
        from pypersistent import PersistentList
        l = PersistentList()
        for i in range(300_000):
            l = PersistentList([i, l])
        for name, f in [("hash", hash), ("repr", repr), ("eq", lambda x: x == PersistentList([0, x]))]:
            try:
                f(l)
            except RecursionError:
                print(name, "RecursionError")
        # transients holding transients
        t = PersistentList().transient()
        for i in range(300_000):
            t2 = PersistentList().transient()
            t2.append(t)
            t = t2
        # lists through the tail and through the trie (more than 32 elements)
        big = PersistentList()
        for i in range(100_000):
            big = PersistentList(range(40)).append(big)
        del l, t, t2, big
        print("freed")
        """
    )
    assert "freed" in out
    assert "hash RecursionError" in out


def test_deep_comparisons_of_equal_chains_raise_recursion_error_not_crash() -> None:
    out = run_child(
        """
        from pypersistent import PersistentList
        a = PersistentList()
        b = PersistentList()
        for i in range(200_000):
            a = PersistentList([a])
            b = PersistentList([b])
        for op in ("==", "<"):
            try:
                print(op, eval("a " + op + " b"))
            except RecursionError:
                print(op, "RecursionError")
        """
    )
    assert "== RecursionError" in out and "< RecursionError" in out
