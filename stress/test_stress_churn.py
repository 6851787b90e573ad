"""Creation and destruction churn: many short-lived versions, transients (finished,
abandoned, closed by `with`), iterators (partly consumed), views, and maps handed between
threads through shared slots, while one thread runs the cyclic garbage collector now and
then. Values are weak-referenceable Payloads; at the end, after gc.collect(), every
Payload, map and transient made here must be gone: no reference leaked or was lost (a lost
reference would more likely crash or trip a refcount assertion first).
"""

from __future__ import annotations

import gc
import random
import threading
import weakref
from typing import Any, List

from pypersistent import PersistentMap
from stress_support import Budget, Payload, expired, run_threads

SEED = 99


def churn(index: int, ops: int, deadline: float, shared: List[Any], refs: List[Any], collect: bool) -> int:
    rng = random.Random(SEED + index)
    m = PersistentMap()
    done = 0
    for i in range(ops):
        if expired(deadline):
            break
        p = Payload((index, i))
        refs.append(weakref.ref(p))
        k = rng.randrange(48)
        action = rng.randrange(14)
        if action == 0:
            m = m.set(k, p)
        elif action == 1:
            m = m.dissoc(k).delete(k + 1)
        elif action == 2:
            t = m.transient()
            refs.append(weakref.ref(t))
            t[k] = p
            t[k + 1] = Payload("extra")
            t.dissoc(k + 2)
            if rng.random() < 0.5:
                m = t.persistent()
            # else: abandoned unfinished
        elif action == 3:
            with m.transient() as t:  # finished by the with-block, without a result
                t[k] = p
                t.set(k + 3, Payload("with"))
            refs.append(weakref.ref(t))
        elif action == 4:
            it = iter(m.items())
            for _ in range(rng.randrange(4)):
                next(it, None)
        elif action == 5:
            ks, vs, its = m.keys(), m.values(), m.items()
            assert len(ks) == len(vs) == len(its) == len(m)
            assert (p in vs) is False
            assert ((k, p) in its) is False
            head = list(vs)[:2]
            del head
            it = iter(ks)
            next(it, None)
        elif action == 6:
            # hand a version to another thread's slot, take someone else's
            shared[rng.randrange(len(shared))] = m.set(k, p)
            m = shared[rng.randrange(len(shared))]
        elif action == 7:
            m = m | PersistentMap({k: p, k + 1: Payload("or")})
        elif action == 8:
            m = m.update({k: p}, **{"kw": Payload("kw")})
        elif action == 9:
            refs.append(weakref.ref(m))
            m = PersistentMap(dict(m.items())) if rng.random() < 0.5 else m.clear()
        elif action == 10:
            other = m.set(k, p)
            assert other != m or m.get(k) is p
            hash(other)
        elif action == 11:
            # iterator over a transient's snapshot outliving the transient
            t = m.transient()
            it = iter(t)
            t[k] = p
            m = t.persistent()
            del t
            next(it, None)
        elif action == 12:
            # small reference cycles through a map that nobody derives from
            cyc = PersistentMap({("c", k): p})
            p.ref = cyc
            refs.append(weakref.ref(cyc))
        else:
            m = PersistentMap.fromkeys(range(k), p) if k < 16 else m.set(k, p).set(k, None)
        done += 1
        if collect and i % 64 == 63:
            gc.collect()
    return done


def test_churn_leaves_nothing_alive(budget: Budget) -> None:
    n_threads = budget.n(32, 64)
    ops = budget.n(400, 10000)
    shared: List[Any] = [PersistentMap()] * 16
    refs: List[List[Any]] = [[] for _ in range(n_threads)]
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> int:
        return churn(index, ops, deadline, shared, refs[index], collect=(index == 0))

    done = run_threads(n_threads, worker, timeout=budget.join_timeout, name="churn")
    assert sum(done) > 0
    shared.clear()
    for _ in range(3):
        gc.collect()
    alive = [r() for rs in refs for r in rs if r() is not None]
    total = sum(len(rs) for rs in refs)
    assert not alive, f"{len(alive)} of {total} objects still alive, e.g. {alive[:5]!r}"
    print(f"\n  {sum(done)} churn operations, {total} weakrefs all dead")


def test_values_released_when_the_last_sharing_version_dies(budget: Budget) -> None:
    """Many threads derive versions from one map whose values are Payloads, then drop them
    in a different order than they were made; the Payloads live exactly as long as some
    version still holds them."""
    n_threads = budget.n(32, 64)
    n_keys = budget.n(1500, 20000)
    payloads = [Payload(i) for i in range(n_keys)]
    refs = [weakref.ref(p) for p in payloads]
    base = PersistentMap({i: payloads[i] for i in range(n_keys)})
    deadline = budget.deadline()

    def worker(index: int, barrier: threading.Barrier) -> List[Any]:
        rng = random.Random(SEED * 3 + index)
        versions = []
        m = base
        for j in range(budget.n(60, 600)):
            if expired(deadline):
                break
            k = rng.randrange(n_keys)
            m = m.set(k, Payload(("new", index, j))) if j % 3 else m.dissoc(k)
            versions.append(m)
        barrier.wait()  # everyone holds its versions; now drop them in random order
        rng.shuffle(versions)
        while versions:
            versions.pop()
        return [weakref.ref(m)]

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="release")
    # base still holds every original payload
    del payloads
    gc.collect()
    assert all(r() is not None for r in refs)
    assert all(base[i] is refs[i]() for i in range(n_keys))
    del base
    gc.collect()
    assert all(r() is None for r in refs), "payloads outlived every map holding them"
    assert all(w() is None for r in results for w in r)


def test_cycle_through_a_subtree_shared_by_two_garbage_maps_is_collected() -> None:
    # Once a documented limitation; the GC census (src/gc_census.cpp) collects it.
    p = Payload("cyclic")
    ref = weakref.ref(p)
    m1 = PersistentMap({i: i for i in range(1000)}).set("p", p)
    m2 = m1.set(10**6, 0)  # shares every subtree but one path with m1
    p.ref = (m1, m2)
    del m1, m2, p
    gc.collect()
    gc.collect()
    assert ref() is None
