"""Garbage collection of cycles through maps, and reference/memory leak checks.

The reference checks use fresh ``object()`` instances (never immortal, never cached) as
keys and values, run an operation many times, drop every map, and compare
``sys.getrefcount`` of those objects with what it was before.
"""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import tracemalloc
import weakref

import pytest
from conftest import (
    CollidingKey,
    ConstantHashKey,
    EqBoom,
    HashBoom,
    RaisingEqKey,
    RaisingHashKey,
    full_gc,
)
from pypersistent import PersistentMap

ITERATIONS = 2000


class Helper:
    """Something weak-referenceable to put into a cycle."""


# --------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------


def test_cycle_through_map_value_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    m = PersistentMap({"l": lst})
    lst.append(m)
    del h, lst, m
    full_gc()
    assert wr() is None


def test_cycle_through_map_key_is_collected():
    class KeyHolder:
        def __init__(self):
            self.m = None
            self.h = Helper()

    k = KeyHolder()
    wr = weakref.ref(k.h)
    m = PersistentMap({k: 1})
    k.m = m
    del k, m
    full_gc()
    assert wr() is None


def test_cycle_through_nested_maps_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    inner = PersistentMap({"l": lst})
    outer = PersistentMap({"inner": inner, "x": 1})
    lst.append(outer)
    del h, lst, inner, outer
    full_gc()
    assert wr() is None


def test_cycle_through_large_map_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    m = PersistentMap({i: i for i in range(3000)}).assoc("l", lst)
    lst.append(m)
    del h, lst, m
    full_gc()
    assert wr() is None


def test_cycle_through_colliding_keys_node_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    m = PersistentMap({ConstantHashKey(i): i for i in range(30)}).assoc(ConstantHashKey(99), lst)
    lst.append(m)
    del h, lst, m
    full_gc()
    assert wr() is None


def test_cycle_through_a_shared_node_is_collected_once_the_sharing_ends():
    # While ``m1`` is alive, it keeps the node holding ``lst1`` (shared with m2), so the cycle
    # lst1 -> m2 -> node -> lst1 is reachable and stays; once m1 is gone it is collected.
    h1 = Helper()
    wr1 = weakref.ref(h1)
    base = PersistentMap({i: str(i) for i in range(2000)})
    lst1 = [h1]
    m1 = base.assoc("l1", lst1)
    m2 = m1.assoc("l2", [])  # shares the node holding lst1 with m1
    lst1.append(m2)
    del h1, lst1, m2
    full_gc()
    assert wr1() is not None, "collected while m1 still shares the node (unsound traversal)"
    assert m1["l1"][1]["l1"] is m1["l1"]
    del m1
    full_gc()
    assert wr1() is None
    # the untouched base is still intact
    assert len(base) == 2000
    assert base[1999] == "1999"


def test_reachable_objects_in_shared_nodes_are_not_collected():
    # ``lst`` is held by a trie node that many versions share, and it holds those versions.
    # It is also held by a local variable, so nothing here is garbage: a collector that
    # counted the shared node's reference once per map would wrongly clear ``lst``.
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    base = PersistentMap({i: i for i in range(2000)}).assoc("l", lst)
    versions = [base.assoc(("v", j), j) for j in range(8)]
    versions += [base.dissoc(j) for j in range(8)]
    lst.extend(versions)
    lst.append(base)
    n = len(lst)
    del base, versions
    full_gc()
    assert wr() is h
    assert len(lst) == n
    assert lst[0] is h
    for v in lst[1:]:
        assert v["l"] is lst
        assert len(v) in (2000, 2001, 2002)
    del h
    lst.clear()
    full_gc()
    assert wr() is None


def test_partially_dropped_versions_keep_their_values():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    m1 = PersistentMap({i: i for i in range(1000)}).assoc("l", lst)
    m2 = m1.assoc("x", 1)
    m3 = m2.assoc("y", 2)
    lst.extend([m1, m2, m3])
    keep = m2
    del lst, m1, m2, m3
    full_gc()
    assert wr() is h  # still reachable through keep["l"]
    assert keep["l"][0] is h
    assert len(keep["l"]) == 4
    assert keep["l"][2] is keep
    del keep, h
    full_gc()
    assert wr() is None  # the versions share the node holding lst: collected all the same


def test_many_versions_with_cycles_gc_does_not_crash():
    helpers = []
    weakrefs = []
    versions = []
    m = PersistentMap({i: i for i in range(500)})
    for j in range(400):
        h = Helper()
        helpers.append(h)
        weakrefs.append(weakref.ref(h))
        lst = [h]
        m = m.assoc(("k", j % 50), lst)
        if j % 3 == 0:
            m = m.dissoc(j % 500)
        lst.append(m)
        if versions:
            lst.append(versions[j // 2])
        versions.append(m)
    del h, lst, m
    keep = versions[::25]
    expected_lens = [len(v) for v in keep]
    helpers.clear()
    del versions
    for _ in range(3):
        gc.collect()
    for v, n in zip(keep, expected_lens):
        assert len(v) == n
        for key in v:
            value = v[key]
            if isinstance(value, list):
                assert isinstance(value[0], Helper)
                assert isinstance(value[1], PersistentMap)
    del keep, v, value
    full_gc()
    # Cycles through nodes shared between versions are collected too (gc_census.cpp).
    assert all(w() is None for w in weakrefs)


def test_gc_during_transient_editing():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    base = PersistentMap({i: i for i in range(1000)}).assoc("l", lst)
    lst.append(base)
    t = base.transient()
    for i in range(1000, 2000):
        t[i] = [i]
        if i % 100 == 0:
            gc.collect()
    p = t.persistent()
    gc.collect()
    assert p["l"] is lst
    assert p[1500] == [1500]
    del base, lst, t, p, h
    full_gc()
    assert wr() is None


def test_cycle_through_transient_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    t = PersistentMap({"a": 1}).transient()
    t["l"] = lst
    lst.append(t)
    del h, lst, t
    full_gc()
    assert wr() is None


def test_cycle_through_iterator_is_collected():
    h = Helper()
    wr = weakref.ref(h)
    lst = [h]
    m = PersistentMap({"l": lst, "x": 1})
    it = iter(m.items())
    lst.append(it)
    del h, lst, m, it
    full_gc()
    assert wr() is None


# --------------------------------------------------------------------------------------
# Reference-count leak checks
# --------------------------------------------------------------------------------------


def _counts(objs):
    return [sys.getrefcount(o) for o in objs]


def _objs(n):
    return [object() for _ in range(n)]


def _swallow(exc_type, fn):
    try:
        fn()
    except exc_type:
        pass
    else:  # pragma: no cover - a failure of the implementation
        raise AssertionError(f"{exc_type.__name__} was not raised")


def _scenarios():
    """name -> factory returning (operation, objects whose refcounts must be restored)."""
    s = {}

    def reg(fn):
        s[fn.__name__] = fn
        return fn

    @reg
    def construct_from_dict():
        ks, vs = _objs(40), _objs(40)
        d = dict(zip(ks, vs))
        return (lambda: PersistentMap(d)), ks + vs

    @reg
    def construct_from_pairs_and_kwargs():
        ks, vs = _objs(40), _objs(41)
        pairs = list(zip(ks, vs))
        return (lambda: PersistentMap(pairs, kw=vs[40])), ks + vs

    @reg
    def from_dict():
        ks, vs = _objs(40), _objs(40)
        d = dict(zip(ks, vs))
        return (lambda: PersistentMap.from_dict(d)), ks + vs

    @reg
    def fromkeys():
        ks, v = _objs(40), object()
        return (lambda: PersistentMap.fromkeys(ks, v)), ks + [v]

    @reg
    def create_kwargs():
        vs = _objs(3)
        return (lambda: PersistentMap.create(a=vs[0], b=vs[1], c=vs[2])), vs

    @reg
    def assoc_new_key():
        ks, vs = _objs(30), _objs(30)
        base = PersistentMap(zip(ks[:-1], vs[:-1]))
        return (lambda: base.assoc(ks[-1], vs[-1])), ks + vs

    @reg
    def assoc_replace_value():
        ks, vs = _objs(30), _objs(31)
        base = PersistentMap(zip(ks, vs))
        return (lambda: base.assoc(ks[3], vs[30])), ks + vs

    @reg
    def assoc_chain():
        ks, vs = _objs(60), _objs(60)

        def op():
            m = PersistentMap()
            for k, v in zip(ks, vs):
                m = m.assoc(k, v)
            m.set(ks[0], vs[1])

        return op, ks + vs

    @reg
    def dissoc_present_and_absent():
        ks, vs = _objs(30), _objs(30)
        absent = object()
        base = PersistentMap(zip(ks, vs))

        def op():
            base.dissoc(ks[7]).dissoc(ks[8])
            base.dissoc(absent)
            base.delete(ks[9])

        return op, ks + vs + [absent]

    @reg
    def lookups():
        ks, vs = _objs(30), _objs(30)
        missing, default = object(), object()
        base = PersistentMap(zip(ks, vs))

        def op():
            assert base.get(ks[1]) is vs[1]
            assert base.get(missing) is None
            assert base.get(missing, default) is default
            assert base[ks[2]] is vs[2]
            assert base.contains(ks[3])
            assert ks[4] in base
            assert missing not in base

        return op, ks + vs + [missing, default]

    @reg
    def getitem_missing_keyerror():
        ks, vs = _objs(10), _objs(10)
        missing = object()
        base = PersistentMap(zip(ks, vs))
        return (lambda: _swallow(KeyError, lambda: base[missing])), ks + vs + [missing]

    @reg
    def iteration_and_views():
        ks, vs = _objs(50), _objs(50)
        base = PersistentMap(zip(ks, vs))

        def op():
            list(base)
            list(base.keys())
            list(base.values())
            list(base.items())
            len(base.items())
            assert ks[0] in base.keys()
            assert vs[0] in base.values()
            assert (ks[0], vs[0]) in base.items()
            assert base.keys() & {ks[1]} == {ks[1]}
            assert len(base.items() - set()) == 50
            it = iter(base)
            next(it)  # abandoned half-way

        return op, ks + vs

    @reg
    def update_merge_or():
        ks, vs = _objs(40), _objs(40)
        base = PersistentMap(zip(ks[:20], vs[:20]))
        other = dict(zip(ks[10:], vs[10:]))
        pairs = list(other.items())

        def op():
            base.update(other)
            base.update(pairs)
            base.merge(other)
            base | other
            other | base
            base.update({})

        return op, ks + vs

    @reg
    def transient_round_trip():
        ks, vs = _objs(40), _objs(40)
        base = PersistentMap(zip(ks[:20], vs[:20]))

        def op():
            t = base.transient()
            for k, v in zip(ks[20:], vs[20:]):
                t[k] = v
            del t[ks[0]]
            t.assoc(ks[1], vs[39]).dissoc(ks[2]).update({ks[3]: vs[38]})
            t.get(ks[4])
            list(t)
            t.persistent()

        return op, ks + vs

    @reg
    def transient_abandoned():
        ks, vs = _objs(40), _objs(40)
        base = PersistentMap(zip(ks[:20], vs[:20]))

        def op():
            t = base.transient()
            for k, v in zip(ks[20:], vs[20:]):
                t[k] = v
            del t[ks[0]]

        return op, ks + vs

    @reg
    def transient_context_manager_and_errors():
        ks, vs = _objs(20), _objs(20)
        missing = object()
        base = PersistentMap(zip(ks, vs))

        def op():
            with base.transient() as t:
                t[ks[0]] = vs[1]
                _swallow(KeyError, lambda: t.__delitem__(missing))
                _swallow(KeyError, lambda: t[missing])
                p = t.persistent()
            _swallow(RuntimeError, lambda: t.__setitem__(ks[1], vs[2]))
            _swallow(RuntimeError, lambda: t[ks[1]])
            return p

        return op, ks + vs + [missing]

    @reg
    def equality_and_hash():
        ks, vs = _objs(30), _objs(30)
        d = dict(zip(ks, vs))

        def op():
            a = PersistentMap(d)
            b = PersistentMap(reversed(list(d.items())))
            assert a == b
            assert a == d
            assert not (a != d)
            hash(a)
            hash(b)

        return op, ks + vs

    @reg
    def repr_copy_clear_weakref():
        ks, vs = _objs(10), _objs(10)
        base = PersistentMap(zip(ks, vs))

        def op():
            repr(base)
            copy.copy(base)
            copy.deepcopy(base)
            base.copy()
            base.clear()
            weakref.ref(base)

        return op, ks + vs

    @reg
    def pickle_round_trip():
        ks = [10**30 + i for i in range(20)]
        vs = [10**40 + i for i in range(20)]
        base = PersistentMap(zip(ks, vs))
        return (lambda: pickle.loads(pickle.dumps(base))), ks + vs

    @reg
    def colliding_keys():
        ks = [CollidingKey(i) for i in range(40)]
        vs = _objs(40)
        absent = CollidingKey(1000)

        def op():
            m = PersistentMap()
            for k, v in zip(ks, vs):
                m = m.assoc(k, v)
            m.get(ks[5])
            m.get(absent)
            m.dissoc(ks[6]).dissoc(absent)
            list(m.items())
            t = m.transient()
            del t[ks[7]]
            t.persistent()

        return op, ks + vs + [absent]

    @reg
    def constant_hash_keys():
        ks = [ConstantHashKey(i) for i in range(40)]
        vs = _objs(40)

        def op():
            m = PersistentMap(zip(ks, vs))
            m.dissoc(ks[3])
            m.assoc(ks[4], vs[0])
            assert m == dict(zip(ks, vs))

        return op, ks + vs

    @reg
    def raising_hash_errors():
        ks, vs = _objs(10), _objs(10)
        bad = RaisingHashKey()
        value = object()
        base = PersistentMap(zip(ks, vs))

        def op():
            _swallow(HashBoom, lambda: base.assoc(bad, value))
            _swallow(HashBoom, lambda: base.get(bad, value))
            _swallow(HashBoom, lambda: base[bad])
            _swallow(HashBoom, lambda: bad in base)
            _swallow(HashBoom, lambda: base.dissoc(bad))
            _swallow(HashBoom, lambda: base.update([(ks[0], value), (bad, value)]))
            _swallow(HashBoom, lambda: PersistentMap([(ks[1], value), (bad, value)]))
            t = base.transient()
            _swallow(HashBoom, lambda: t.__setitem__(bad, value))

        return op, ks + vs + [bad, value]

    @reg
    def raising_eq_errors():
        ks, vs = _objs(10), _objs(10)
        value = object()
        stored = CollidingKey("stored")
        probe = RaisingEqKey(hash(stored))
        base = PersistentMap(zip(ks, vs)).assoc(stored, value)

        def op():
            _swallow(EqBoom, lambda: base.assoc(probe, value))
            _swallow(EqBoom, lambda: base.get(probe))
            _swallow(EqBoom, lambda: base.dissoc(probe))
            _swallow(EqBoom, lambda: probe in base)
            t = base.transient()
            _swallow(EqBoom, lambda: t.__setitem__(probe, value))

        return op, ks + vs + [value, stored, probe]

    @reg
    def bad_arguments():
        ks, vs = _objs(10), _objs(10)
        base = PersistentMap(zip(ks, vs))
        unhashable = [object()]
        value = object()

        def gen():
            yield (ks[0], value)
            yield (object(), value)
            raise ZeroDivisionError

        def op():
            _swallow(TypeError, lambda: base.assoc(unhashable, value))
            _swallow(TypeError, lambda: base.update(5))
            _swallow((TypeError, ValueError), lambda: base.update([(ks[0], value, value)]))
            _swallow(ZeroDivisionError, lambda: base.update(gen()))
            _swallow(ZeroDivisionError, lambda: PersistentMap(gen()))
            _swallow(TypeError, lambda: hash(PersistentMap({ks[0]: unhashable})))

        return op, ks + vs + unhashable + [unhashable, value]

    @reg
    def self_referencing_repr():
        vs = _objs(3)

        def op():
            lst = list(vs)
            m = PersistentMap({"l": lst})
            lst.append(m)
            repr(m)
            lst.clear()

        return op, vs

    return s


SCENARIOS = _scenarios()


@pytest.mark.parametrize("name", list(SCENARIOS), ids=list(SCENARIOS))
def test_no_reference_leaks(name):
    op, objs = SCENARIOS[name]()
    # warm up: one-time caches (type attribute caches, interned names) settle here
    for _ in range(3):
        op()
    full_gc()
    before = _counts(objs)
    for _ in range(ITERATIONS):
        op()
    full_gc()
    after = _counts(objs)
    leaked = [(i, b, a) for i, (b, a) in enumerate(zip(before, after)) if a != b]
    assert not leaked, f"refcounts changed (index, before, after): {leaked[:10]}"


def test_refcount_check_can_detect_a_leak():
    """The measuring approach works: an operation that keeps references is noticed."""
    sink = []
    objs = _objs(3)

    def leaky():
        sink.append(PersistentMap({"a": objs[0]}))

    before = _counts(objs)
    for _ in range(100):
        leaky()
    assert _counts(objs)[0] == before[0] + 100
    sink.clear()
    assert _counts(objs) == before


def test_values_released_when_map_dropped():
    v = object()
    base = sys.getrefcount(v)
    maps = [PersistentMap({i: v for i in range(100)}) for _ in range(10)]
    assert sys.getrefcount(v) >= base + 100  # shared structure or not, at least one map's worth
    del maps
    full_gc()
    assert sys.getrefcount(v) == base


def test_values_released_when_versions_dropped_one_by_one():
    vs = _objs(200)
    before = _counts(vs)
    versions = [PersistentMap()]
    for i in range(200):
        versions.append(versions[-1].assoc(i, vs[i]))
    for i in range(0, 200, 2):
        versions.append(versions[-1].dissoc(i))
    while versions:
        versions.pop(len(versions) // 2)
    full_gc()
    assert _counts(vs) == before


# --------------------------------------------------------------------------------------
# tracemalloc: memory must not grow across rounds
# --------------------------------------------------------------------------------------

ROUNDS = 5
PER_ROUND = 1000
SLACK_BYTES = 64 * 1024


def _memory_rounds(op):
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        sizes = []
        for r in range(ROUNDS):
            for i in range(PER_ROUND):
                op(r * PER_ROUND + i)
            full_gc()
            sizes.append(tracemalloc.get_traced_memory()[0])
        return sizes
    finally:
        if started_here:
            tracemalloc.stop()


def _memory_ops():
    base = PersistentMap({i: [i] for i in range(500)})
    colliding = PersistentMap({CollidingKey(i): i for i in range(30)})

    def assoc(i):
        base.assoc(10**20 + i, [i])

    def assoc_chain(i):
        m = base
        for j in range(5):
            m = m.assoc(10**20 + i * 5 + j, str(i))

    def dissoc(i):
        base.assoc(10**20 + i, [i]).dissoc(i % 500)

    def update(i):
        base.update({10**20 + i: [i], 10**21 + i: str(i)})

    def construct(i):
        PersistentMap({10**20 + i: [i], str(i): (i,)})

    def transient(i):
        t = base.transient()
        t[10**20 + i] = [i]
        del t[i % 500]
        t.persistent()

    def transient_abandoned(i):
        t = base.transient()
        t[10**20 + i] = [i]

    def iterate(i):
        m = base.assoc(10**20 + i, [i])
        for _ in m.items():
            pass

    def collide(i):
        colliding.assoc(CollidingKey(10**20 + i), [i]).dissoc(CollidingKey(3))

    def hash_error(i):
        try:
            base.assoc(RaisingHashKey(), [i])
        except HashBoom:
            pass

    def eq_error(i):
        try:
            colliding.assoc(RaisingEqKey(hash(CollidingKey(1))), [i])
        except EqBoom:
            pass

    def missing_key(i):
        try:
            base[10**20 + i]
        except KeyError:
            pass

    def cycle(i):
        lst = [str(i)]
        m = base.assoc("l", lst)
        lst.append(m)

    return {
        f.__name__: f
        for f in (
            assoc,
            assoc_chain,
            dissoc,
            update,
            construct,
            transient,
            transient_abandoned,
            iterate,
            collide,
            hash_error,
            eq_error,
            missing_key,
            cycle,
        )
    }


MEMORY_OPS = list(_memory_ops())


@pytest.mark.parametrize("name", MEMORY_OPS, ids=MEMORY_OPS)
def test_memory_does_not_grow_across_rounds(name):
    op = _memory_ops()[name]
    sizes = _memory_rounds(op)
    growth = sizes[4] - sizes[1]
    assert growth < SLACK_BYTES, f"traced memory per round: {sizes}"


def test_memory_check_can_detect_a_leak():
    sink = []
    sizes = _memory_rounds(lambda i: sink.append(PersistentMap({10**20 + i: [i]})))
    assert sizes[4] - sizes[1] >= SLACK_BYTES
    sink.clear()
