"""PersistentList and TransientList shared between many threads: versions derived and dropped
while others read them (with collections running meanwhile), iterators shared by several
threads, equality and hashing of lists built by different threads, and one TransientList
used by many threads at once, where a call that finds it busy must raise RuntimeError and
change nothing.

Fixed seeds, exact invariants; every phase is capped in time (Budget).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from typing import Any, List, Tuple

from pypersistent import PersistentList
from stress_support import Budget, expired, run_threads

SEED = 4242001


# --------------------------------------------------------------------------------------
# Readers and writers share a pool of versions
# --------------------------------------------------------------------------------------


class Owner:
    """Held by versions that an Owner holds in turn: cycles through shared nodes."""

    def __init__(self) -> None:
        self.versions: List[Any] = []


def test_threads_derive_and_read_shared_versions(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    ops = budget.n(1500, 30000)
    base_items = tuple(range(budget.n(1100, 5000)))
    base = PersistentList(base_items)
    # (list, model) pairs; list.append and indexing are atomic on every build
    pool: List[Tuple[Any, Tuple[Any, ...]]] = [(base, base_items)]
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED + index)
        checks = 0
        for i in range(ops):
            if expired(deadline):
                break
            v, model = pool[rng.randrange(len(pool))]
            r = rng.random()
            x = (index, i)  # one object: the list must store exactly it
            if r < 0.25:
                new, new_model = v.append(x), model + (x,)
            elif r < 0.5 and model:
                k = rng.randrange(len(model))
                new, new_model = v.set(k, x), model[:k] + (x,) + model[k + 1 :]
            elif r < 0.6 and model:
                new, new_model = v.pop(), model[:-1]
            elif r < 0.7:
                a, b = sorted(rng.randrange(len(model) + 1) for _ in range(2))
                step = rng.choice([1, 1, 2, -1, 3])
                new, new_model = v[a:b:step], model[a:b:step]
            elif r < 0.75:
                o = Owner()
                new = v.append(o)
                new_model = model + (o,)
                o.versions.append(new)
            elif r < 0.8 and index == 0:
                gc.collect(rng.randrange(3))
                continue
            else:
                # reads of a version other threads may be reading and deriving from
                if model:
                    k = rng.randrange(len(model))
                    assert v[k] is model[k] and v[k - len(model)] is model[k]
                assert len(v) == len(model)
                if len(model) < 2000 or rng.random() < 0.05:
                    assert tuple(v) == model
                    checks += 1
                continue
            assert len(new) == len(new_model)
            if len(pool) < 400:
                pool.append((new, new_model))
            else:
                pool[rng.randrange(1, len(pool))] = (new, new_model)  # drops a version
        return checks

    run_threads(n_threads, worker, timeout=budget.join_timeout, name="list-versions")
    assert tuple(base) == base_items
    for v, model in pool:
        assert tuple(v) == model
        assert list(reversed(v)) == list(reversed(model))


# --------------------------------------------------------------------------------------
# Shared iterators
# --------------------------------------------------------------------------------------


def test_threads_sharing_one_iterator_see_each_element_once(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    n = budget.n(20000, 300000)
    for reverse in (False, True):
        l = PersistentList(range(n))
        it = reversed(l) if reverse else iter(l)
        deadline = budget.deadline()

        def worker(index: int, _barrier: threading.Barrier) -> List[int]:
            got: List[int] = []
            for x in it:
                got.append(x)
                if len(got) % 256 == 0 and expired(deadline):
                    break
            return got

        results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="list-iter")
        seen = [x for r in results for x in r]
        assert len(seen) == len(set(seen))
        for r in results:  # each thread sees its share in the iterator's order
            assert r == sorted(r, reverse=reverse)
        rest = list(it)
        assert sorted(seen + rest) == list(range(n)) or expired(deadline)


# --------------------------------------------------------------------------------------
# Equality and hashing across threads
# --------------------------------------------------------------------------------------


def test_lists_built_by_different_threads_are_equal_and_hash_alike(budget: Budget) -> None:
    n_threads = budget.n(8, 32)
    items = [("k", i) for i in range(budget.n(3000, 40000))]
    shared = PersistentList(items)
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> Tuple[int, Any]:
        built = PersistentList()
        for x in items:
            built = built.append(x) if len(built) < 200 else built
        built = built.extend(items[len(built) :])
        assert built == shared and not built != shared
        assert not built < shared and built <= shared
        h = hash(shared)  # racing threads fill the same cache
        assert hash(built) == h
        while not expired(deadline) and random.random() < 0.9:
            assert shared.set(5, "x") != shared
            assert shared.set(5, "x") == shared.set(5, "x")
        return h, built

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="list-eq")
    assert {h for h, _ in results} == {hash(tuple(items))}


# --------------------------------------------------------------------------------------
# One TransientList used by many threads
# --------------------------------------------------------------------------------------


def test_a_shared_transient_list_serialises_or_refuses(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    ops = budget.n(600, 10000)
    base = PersistentList(range(100))
    t = base.transient()
    deadline = budget.deadline()

    def slow(index: int, i: int, count: int) -> Any:
        for j in range(count):
            time.sleep(0)  # suspends the critical section: other threads find t busy
            yield (index, i, j)

    def worker(index: int, _barrier: threading.Barrier) -> Tuple[List[Any], int]:
        rng = random.Random(SEED * 3 + index)
        added: List[Any] = []
        refused = 0
        for i in range(ops):
            if expired(deadline):
                break
            op = rng.randrange(6)
            try:
                if op == 0:
                    t.append((index, i, 0))
                    added.append((index, i, 0))
                elif op == 1:
                    count = rng.randrange(1, 4)
                    t.extend(slow(index, i, count))
                    added.extend((index, i, j) for j in range(count))
                elif op == 2:
                    assert len(t) >= 100
                elif op == 3:
                    assert t[rng.randrange(100)] in range(100)
                elif op == 4:
                    snap = t[:]
                    assert len(snap) >= 100 and all(x in range(100) for x in snap[:100])
                else:
                    t[rng.randrange(100)] = rng.randrange(100)  # base part only, values stay in range
            except RuntimeError as exc:
                assert "two places" in str(exc), exc
                refused += 1
        return added, refused

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="list-transient")
    final = t.persistent()
    assert all(x in range(100) for x in final[:100])
    tail = list(final[100:])
    expected = sorted(x for added, _ in results for x in added)
    assert sorted(tail) == expected, "an element was lost or added twice"
    for index in range(n_threads):  # each thread's additions keep their order
        mine = [x for x in tail if x[0] == index]
        assert mine == results[index][0]
    assert base == PersistentList(range(100))
