"""PersistentSet and the garbage collector: cycles through sets and through trie nodes that several
versions share are collected (the census of src/gc_census.hpp, with the set's node traits: keys
only), and nothing reachable is freed: a version kept by a local, a holder in an older generation,
a frozen holder or a live transient keep the shared contents alive.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

import pytest
from conftest import full_gc
from pypersistent import PersistentMap, PersistentSet

PS = PersistentSet


class Node:
    """Hashable by identity, weak-referenceable, takes attributes."""


class Doc(Node):
    def __init__(self) -> None:
        self.history: list[Any] = []


def history_cycle(n: int = 100, versions: int = 20, cls: type = Doc) -> weakref.ref[Any]:
    d = cls()
    s = PS(range(n)).add(d)
    for i in range(versions):
        s = s.discard(i % n) if i % 2 else s.add(-i - 1)  # versions share nodes
        d.history.append(s)
    d.history.append(s | PS(range(n, n + 5)))  # structural union: reuses both sides' nodes
    return weakref.ref(d)


@pytest.mark.parametrize("n", [1, 5, 40, 2000, 40000])
def test_objects_keeping_versions_that_refer_back_are_collected(n: int) -> None:
    refs = [history_cycle(n) for _ in range(20 if n < 10000 else 2)]
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


def test_cycles_through_transients_maps_and_iterators_are_collected() -> None:
    refs = []
    for _ in range(50):
        o = Node()
        s = PS(range(100)).add(o)
        t = s.transient()
        t.add(-1)
        o.stuff = [t, s, PersistentMap(s=s), iter(s.discard(3))]  # type: ignore[attr-defined]
        refs.append(weakref.ref(o))
        del o, s, t
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


def test_a_version_kept_by_a_local_keeps_the_shared_cycle_alive() -> None:
    x = Node()
    a = PS(range(1000)).add(x)
    b = a.discard(5)
    x.b = b  # type: ignore[attr-defined]
    del x, b
    gc.collect()
    (x2,) = [e for e in a if isinstance(e, Node)]
    assert x2.b <= a and x2 in x2.b  # type: ignore[attr-defined]
    r = weakref.ref(x2)
    del a, x2
    gc.collect()
    assert r() is None


def test_a_holder_in_an_older_generation_keeps_shared_contents_alive() -> None:
    x = Node()
    inner = [Node() for _ in range(3000)]
    a = PS(inner).add(x)
    del inner
    gc.collect()
    for _ in range(10):
        b = a.discard(x).add(Node())
        x.lst = [b, a]  # type: ignore[attr-defined]
        del b
        gc.collect(0)
        gc.collect(1)
        assert x in a and x.lst[1] is a and len(a) == 3001  # type: ignore[attr-defined]
        assert all(type(e) is Node for e in a)


@pytest.mark.thread_unsafe  # gc.freeze is process-wide
def test_frozen_holders_keep_shared_contents_alive() -> None:
    x = Node()
    a = PS(range(300)).add(x)
    gc.freeze()
    try:
        b = a.discard(1)
        x.b = b  # type: ignore[attr-defined]
        del b
        gc.collect()
        assert x in x.b and len(a) == 301  # type: ignore[attr-defined]
    finally:
        gc.unfreeze()
    del a, x
    gc.collect()


def test_a_live_transient_keeps_shared_contents_alive() -> None:
    x = Node()
    a = PS(range(300)).add(x)
    t = a.transient()
    x.a = a  # type: ignore[attr-defined]
    del a
    gc.collect()
    assert x in t and x.a is not None  # type: ignore[attr-defined]
    t.add("new")
    gc.collect()
    frozen = t.persistent()
    assert len(frozen) == 302 and 299 in frozen and x in x.a  # type: ignore[attr-defined]


def test_get_referents_reports_a_sets_own_references() -> None:
    x = Node()
    assert x in gc.get_referents(PS([x]))
