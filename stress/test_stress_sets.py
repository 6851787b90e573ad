"""PersistentSet and TransientSet shared between many threads: versions derived (add, discard,
and structural set algebra between versions that share nodes) and dropped while others read
them, with collections running meanwhile; iterators shared by several threads; equality and
hashing of sets built by different threads; and one TransientSet used by many threads at once,
where a call that finds it busy must raise RuntimeError and change nothing.

Fixed seeds, exact invariants; every phase is capped in time (Budget).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from typing import Any, FrozenSet, List, Tuple

from pypersistent import PersistentSet
from stress_support import Budget, expired, run_threads

SEED = 5151001


class Owner:
    """Held by versions that an Owner holds in turn: cycles through shared nodes."""

    def __init__(self) -> None:
        self.versions: List[Any] = []


class Colliding:
    """Equal by value, few distinct hashes: collision nodes and __eq__ calls across threads."""

    __slots__ = ("v",)

    def __init__(self, v: int) -> None:
        self.v = v

    def __hash__(self) -> int:
        return self.v % 5

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Colliding) and other.v == self.v


def test_threads_derive_combine_and_read_shared_versions(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    ops = budget.n(1500, 30000)
    base_items = frozenset(range(budget.n(1100, 5000))) | {Colliding(i) for i in range(40)}
    base = PersistentSet(base_items)
    pool: List[Tuple[Any, FrozenSet[Any]]] = [(base, base_items)]  # list.append/indexing are atomic
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED + index)
        checks = 0
        for i in range(ops):
            if expired(deadline):
                break
            s, model = pool[rng.randrange(len(pool))]
            r = rng.random()
            if r < 0.2:
                x: Any = (index, i) if rng.random() < 0.8 else Colliding(rng.randrange(60))
                new, new_model = s.add(x), model | {x}
            elif r < 0.35:
                x = rng.randrange(len(base_items)) if rng.random() < 0.8 else Colliding(rng.randrange(60))
                new, new_model = s.discard(x), model - {x}
            elif r < 0.55:
                t, other = pool[rng.randrange(len(pool))]
                op = rng.randrange(4)
                if op == 0:
                    new, new_model = s | t, model | other
                elif op == 1:
                    new, new_model = s & t, model & other
                elif op == 2:
                    new, new_model = s - t, model - other
                else:
                    new, new_model = s ^ t, model ^ other
                assert (s <= t) == (model <= other) and s.isdisjoint(t) == model.isdisjoint(other)
            elif r < 0.6:
                o = Owner()
                new, new_model = s.add(o), model | {o}
                o.versions.append(new)
            elif r < 0.65 and index == 0:
                gc.collect(rng.randrange(3))
                continue
            else:
                x = rng.randrange(len(base_items) + 50)
                assert (x in s) == (x in model) and len(s) == len(model)
                if len(model) < 1500 or rng.random() < 0.05:
                    assert s == model and hash(s) == hash(model)
                    checks += 1
                continue
            assert len(new) == len(new_model)
            if len(pool) < 300:
                pool.append((new, new_model))
            else:
                pool[rng.randrange(1, len(pool))] = (new, new_model)  # drops a version
        return checks

    run_threads(n_threads, worker, timeout=budget.join_timeout, name="set-versions")
    assert base == base_items
    for s, model in pool:
        assert s == model and frozenset(s) == model


def test_threads_sharing_one_iterator_see_each_element_once(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    n = budget.n(20000, 300000)
    s = PersistentSet(range(n))
    it = iter(s)
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> List[int]:
        got: List[int] = []
        for x in it:
            got.append(x)
            if len(got) % 256 == 0 and expired(deadline):
                break
        return got

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="set-iter")
    seen = [x for r in results for x in r]
    assert len(seen) == len(set(seen))
    rest = list(it)
    assert sorted(seen + rest) == list(range(n)) or expired(deadline)


def test_sets_built_by_different_threads_are_equal_and_hash_alike(budget: Budget) -> None:
    n_threads = budget.n(8, 32)
    items = [("k", i) for i in range(budget.n(3000, 40000))]
    shared = PersistentSet(items)
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED * 7 + index)
        order = items[:]
        rng.shuffle(order)
        built = PersistentSet()
        for x in order[:300]:
            built = built.add(x)
        built = built.union(order[300:])
        assert built == shared and built <= shared and built >= shared and not built < shared
        h = hash(shared)  # racing threads fill the same cache
        assert hash(built) == h
        while not expired(deadline) and rng.random() < 0.9:
            assert shared.discard(("k", 5)) < shared
            assert (shared - built) == set() and (shared ^ built) == set()
        return h

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="set-eq")
    assert set(results) == {hash(frozenset(items))}


def test_a_shared_transient_set_serialises_or_refuses(budget: Budget) -> None:
    n_threads = budget.n(8, 48)
    ops = budget.n(600, 10000)
    t = PersistentSet(range(100)).transient()
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
            op = rng.randrange(5)
            try:
                if op == 0:
                    t.add((index, i, 0))
                    added.append((index, i, 0))
                elif op == 1:
                    count = rng.randrange(1, 4)
                    t.update(slow(index, i, count))
                    added.extend((index, i, j) for j in range(count))
                elif op == 2:
                    assert len(t) >= 100
                elif op == 3:
                    assert rng.randrange(100) in t
                else:
                    snap = PersistentSet(t)
                    assert len(snap) >= 100
            except RuntimeError as exc:
                assert "two places" in str(exc), exc
                refused += 1
        return added, refused

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="set-transient")
    final = t.persistent()
    expected = set(range(100))
    for added, _ in results:
        expected.update(added)
    # a refused call changed nothing; every call that returned added all of its elements
    assert final == expected
