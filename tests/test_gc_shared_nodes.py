"""Cycles through trie nodes that several maps share are collected (src/gc_census.cpp), and
nothing reachable is ever collected: a collector that counted a shared node's references once
per map would clear live objects.

The shapes that used to leak forever: an object keeping a history of versions that refer back
to it, and a map sharing its root with a live transient. The soundness checks keep part of a
structure alive from outside (a local, an older generation, a frozen object, a transient, an
Atom) and verify that every object reachable from there is intact after collections.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest
from conftest import child_env, full_gc
from pypersistent import Atom, PersistentMap


class Doc:
    """Keeps a history of map versions, each of which holds the Doc."""

    def __init__(self) -> None:
        self.history: list[PersistentMap] = []


class Node:
    pass


def history_cycle(n_keys: int = 100, n_versions: int = 20, cls: type = Doc) -> weakref.ref:
    d = cls()
    m = PersistentMap({i: i for i in range(n_keys)}).set("owner", d)
    for i in range(n_versions):
        m = m.set(i, -i)
        d.history.append(m)
    return weakref.ref(d)


def test_objects_keeping_a_history_of_versions_that_refer_back_are_collected() -> None:
    refs = [history_cycle() for _ in range(200)]
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


@pytest.mark.thread_unsafe  # process-wide state: tracemalloc, gc.freeze, gc.callbacks
def test_dropped_history_cycles_do_not_accumulate_memory() -> None:
    import tracemalloc

    full_gc()
    tracemalloc.start()
    try:
        for _ in range(2000):
            history_cycle(n_keys=200, n_versions=10)
            if _ % 100 == 0:
                gc.collect()
        full_gc()
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 2,000 such cycles used to keep about 100 MB
    assert current < 5_000_000, current


def test_a_cycle_through_a_map_sharing_its_root_with_a_live_transient_is_collected() -> None:
    refs = []
    for _ in range(100):
        o = Node()
        m = PersistentMap({i: i for i in range(50)}).set("o", o)
        t = m.transient()
        o.t, o.m = t, m  # type: ignore[attr-defined]
        refs.append(weakref.ref(o))
        del o, m, t
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_cycles_through_atoms_and_shared_versions_are_collected() -> None:
    refs = []
    for _ in range(100):
        a = Atom()
        base = PersistentMap({i: i for i in range(300)})
        a.reset(base.set("atom", a))
        a.swap(lambda m: m.set(1, "one"))
        keep = [base.set("atom", a).set(2, "two") for _ in range(3)]
        a.swap(lambda m, keep=keep: m.set("keep", keep))
        refs.append(weakref.ref(a))
        del a, base, keep
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_cycles_with_finalizers_through_shared_nodes_are_collected() -> None:
    # objects with __del__ make the collector subtract twice (the resurrection check)
    finalized = []

    class Final(Doc):
        def __del__(self) -> None:
            finalized.append(1)

    refs = [history_cycle(n_versions=10, cls=Final) for _ in range(50)]
    gc.collect()
    assert len(finalized) == 50
    assert sum(r() is not None for r in refs) == 0


def test_a_finalizer_that_resurrects_keeps_the_whole_structure_intact() -> None:
    saved: list[Doc] = []

    class Phoenix(Doc):
        def __del__(self) -> None:
            saved.append(self)

    d = Phoenix()
    m = PersistentMap({i: [i] for i in range(200)}).set("owner", d)
    for i in range(10):
        m = m.set(i, [-i])
        d.history.append(m)
    del d, m
    gc.collect()
    assert len(saved) == 1
    (d,) = saved
    for version in d.history:
        assert version["owner"] is d
        assert len(version) == 201
        assert version[150] == [150] and version[3] in ([3], [-3])
    saved.clear()
    ref = weakref.ref(d)
    del d, version
    full_gc()
    assert ref() is None


# --------------------------------------------------------------------------------------
# Soundness: what is reachable stays intact
# --------------------------------------------------------------------------------------


def test_a_version_kept_by_a_local_keeps_the_shared_cycle_alive() -> None:
    x = Node()
    a = PersistentMap({i: i for i in range(100)}).set("x", x)
    b = a.set(5, "five")  # shares a's nodes
    x.b = b  # type: ignore[attr-defined]
    ref = weakref.ref(x)
    del x, b
    gc.collect()
    assert a["x"].b["x"] is a["x"]
    del a
    gc.collect()
    assert ref() is None


def test_a_holder_in_an_older_generation_keeps_shared_contents_alive() -> None:
    x = Node()
    a = PersistentMap({i: [i] for i in range(300)}).set("x", x)
    gc.collect()  # a and x move to the oldest generation
    for _ in range(20):
        b = a.set(7, "seven")  # young versions sharing a's (old) nodes
        lst = [b, a]
        x.lst = lst  # type: ignore[attr-defined]
        del b, lst
        gc.collect(0)
        gc.collect(1)
        assert a["x"].lst[0]["x"] is x and a["x"].lst[1] is a
        assert a[150] == [150]


@pytest.mark.thread_unsafe  # process-wide state: tracemalloc, gc.freeze, gc.callbacks
def test_frozen_holders_keep_shared_contents_alive() -> None:
    x = Node()
    a = PersistentMap({i: i for i in range(300)}).set("x", x)
    gc.freeze()
    try:
        b = a.set(1, "one")
        x.b = b  # type: ignore[attr-defined]
        del b
        gc.collect()
        assert a["x"].b["x"] is x
    finally:
        gc.unfreeze()
    del a, x
    gc.collect()


def test_a_live_transient_keeps_shared_contents_alive() -> None:
    x = Node()
    a = PersistentMap({i: i for i in range(300)}).set("x", x)
    t = a.transient()
    x.a = a  # type: ignore[attr-defined]
    del a
    gc.collect()
    assert t["x"].a["x"] is t["x"]
    t[1000] = "new"
    gc.collect()
    assert t.persistent()["x"].a[299] == 299


@pytest.mark.thread_unsafe  # process-wide state: tracemalloc, gc.freeze, gc.callbacks
def test_the_census_survives_a_user_clearing_gc_callbacks() -> None:
    saved = list(gc.callbacks)
    gc.callbacks.clear()
    try:
        ref = history_cycle()
        gc.collect()
        assert ref() is not None  # without the callback, shared nodes count as external: kept
        # calling the callback by hand, in any order, must not crash or clear live objects
        census = [cb for cb in saved if getattr(cb, "__name__", "") == "_gc_census"]
        assert census
        x = Node()
        a = PersistentMap({i: i for i in range(300)}).set("x", x)
        b = a.set(1, 1)
        x.b = b  # type: ignore[attr-defined]
        del b
        census[0]("start", {})
        gc.collect()
        census[0]("stop", {})
        census[0]("stop", {})
        gc.collect()
        census[0]("start", {})
        gc.collect()
        assert a["x"].b["x"] is x
    finally:
        gc.callbacks[:] = saved
    gc.collect()
    assert ref() is None


def test_get_referents_still_reports_a_maps_own_references() -> None:
    x = Node()
    m = PersistentMap({"x": x})
    assert x in gc.get_referents(m)
    big = PersistentMap({i: Node() for i in range(500)})
    assert len([o for o in gc.get_referents(big) if isinstance(o, Node)]) == 500


def test_random_graphs_of_shared_versions_collect_exactly_the_garbage() -> None:
    # A child process (a wrongly collected object can crash): random versions, objects that
    # hold versions, Atoms and transients; some roots kept; collections of every generation
    # in between. Every object reachable from the kept roots must be intact; once the roots
    # are dropped, everything must be collected.
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
from pypersistent import Atom, PersistentMap

class Obj:
    __slots__ = ("token", "refs", "__weakref__")
    def __init__(self, token):
        self.token = token
        self.refs = []

def check(obj, seen):
    # every object reachable from a kept root still has its token and its references
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Obj):
            assert o.token == ("tok", id(o) % 1000003), "a reachable object was cleared"
            stack.extend(o.refs)
        elif isinstance(o, PersistentMap):
            assert len(o) == len(list(o.items()))
            stack.extend(o.values())
        elif isinstance(o, Atom):
            stack.append(o.deref())
        elif isinstance(o, list):
            stack.extend(o)

def one_graph(rng, all_refs):
    objs = []
    versions = [PersistentMap({i: i for i in range(rng.choice([5, 40, 300]))})]
    for step in range(rng.randrange(20, 80)):
        r = rng.random()
        if r < 0.3:
            o = Obj(None)
            o.token = ("tok", id(o) % 1000003)
            objs.append(o)
            all_refs.append(weakref.ref(o))
        elif r < 0.75 and objs:
            v = rng.choice(versions)
            k = rng.randrange(400) if rng.random() < 0.7 else ("o", rng.randrange(10))
            versions.append(v.set(k, rng.choice(objs)) if rng.random() < 0.8 else v.delete(k))
        elif r < 0.85 and objs and versions:
            rng.choice(objs).refs.append(rng.choice(versions))
        elif r < 0.9 and objs:
            a = Atom(rng.choice(versions))
            rng.choice(objs).refs.append(a)
            a.swap(lambda m, a=a: m.set("atom", a))
        elif r < 0.95 and objs:
            t = rng.choice(versions).transient()
            t[("t", step)] = rng.choice(objs)
            rng.choice(objs).refs.append(t.persistent())
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

rng = random.Random(2024)
all_refs = []
for graph in range(60):
    one_graph(rng, all_refs)
gc.collect()
alive = sum(r() is not None for r in all_refs)
assert alive == 0, f"{alive} of {len(all_refs)} objects leaked"
print("graphs ok", len(all_refs))
"""
