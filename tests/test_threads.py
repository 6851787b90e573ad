"""Objects shared between threads: iterators, persistent maps, transients.

Every test is bounded: a fixed amount of work per thread, and joins with a timeout.
These tests matter most on free-threaded builds, but they must pass everywhere.
"""

from __future__ import annotations

import gc
import threading

from conftest import CollidingKey
from pypersistent import PersistentMap

N_THREADS = 8
JOIN_TIMEOUT = 120


def run_threads(target, n=N_THREADS):
    """Start n threads running target(index, barrier); re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def wrapper(index):
        try:
            target(index, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "threads did not finish in time"
    if errors:
        raise errors[0]


def drain_shared(it, n=N_THREADS):
    """Call next() on one iterator from n threads until it is exhausted."""
    results = [[] for _ in range(n)]

    def worker(index, barrier):
        barrier.wait()
        out = results[index]
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            out.append(item)

    run_threads(worker, n)
    return [x for r in results for x in r]


def test_shared_key_iterator_yields_each_key_at_most_once():
    keys = list(range(20000))
    m = PersistentMap.fromkeys(keys, 0)
    got = drain_shared(iter(m))
    assert len(got) == len(set(got)), "a key was yielded twice"
    assert set(got) <= set(keys)
    # the map itself is intact
    assert len(m) == 20000


def test_shared_items_iterator_yields_each_item_at_most_once():
    m = PersistentMap({f"k{i}": i for i in range(20000)})
    got = drain_shared(iter(m.items()))
    seen_keys = [k for k, _ in got]
    assert len(seen_keys) == len(set(seen_keys))
    for k, v in got:
        assert m[k] == v


def test_shared_values_iterator_yields_each_value_at_most_once():
    m = PersistentMap({i: ("v", i) for i in range(20000)})
    got = drain_shared(iter(m.values()))
    assert len(got) == len(set(got))
    assert set(got) <= {("v", i) for i in range(20000)}


def test_shared_iterator_over_colliding_keys():
    m = PersistentMap({CollidingKey(i): i for i in range(400)})
    got = drain_shared(iter(m))
    assert len(got) == len(set(got))
    assert set(got) <= {CollidingKey(i) for i in range(400)}


def test_exhausted_shared_iterator_stays_exhausted():
    m = PersistentMap({i: i for i in range(1000)})
    it = iter(m)
    drain_shared(it)
    for _ in range(3):
        try:
            next(it)
        except StopIteration:
            pass
        else:
            raise AssertionError("exhausted iterator yielded again")


def test_concurrent_readers_and_derivers_share_one_map():
    base = PersistentMap({i: str(i) for i in range(5000)})
    expected = {i: str(i) for i in range(5000)}

    def worker(index, barrier):
        barrier.wait()
        m = base
        for j in range(300):
            k = 10**6 + index * 100000 + j
            m = m.assoc(k, j)
            assert base.get(k) is None
            assert base[j] == str(j)
            if j % 3 == 0:
                m = m.dissoc(j)
        assert len(m) == 5000 + 300 - 100
        for j in range(300):
            assert m[10**6 + index * 100000 + j] == j
        assert sum(1 for _ in base) == 5000

    run_threads(worker)
    assert base == expected


def test_concurrent_hash_repr_equality_on_shared_map():
    m = PersistentMap({i: (i, str(i)) for i in range(3000)})
    other = PersistentMap(reversed(list(m.items())))
    hashes = [None] * N_THREADS
    reprs = [None] * N_THREADS

    def worker(index, barrier):
        barrier.wait()
        hashes[index] = hash(m)
        reprs[index] = repr(m)
        for _ in range(20):
            assert m == other
            assert hash(m) == hashes[index]

    run_threads(worker)
    assert len(set(hashes)) == 1
    assert hashes[0] == hash(other)
    assert len(set(reprs)) == 1


def test_concurrent_transients_from_one_map():
    base = PersistentMap({i: i for i in range(2000)})
    results = [None] * N_THREADS

    def worker(index, barrier):
        barrier.wait()
        t = base.transient()
        for j in range(2000):
            if j % N_THREADS == index:
                t[j] = -index
            elif j % 5 == 0:
                del t[j]
        results[index] = t.persistent()

    run_threads(worker)
    assert base == {i: i for i in range(2000)}
    for index, p in enumerate(results):
        expected = {}
        for j in range(2000):
            if j % N_THREADS == index:
                expected[j] = -index
            elif j % 5 != 0:
                expected[j] = j
        assert p == expected


def test_transient_shared_between_threads_never_loses_successful_writes():
    # Whether a transient may be used from threads other than its creator is up to the
    # implementation (it may raise RuntimeError); every write that did succeed must be
    # in the result, and nothing else.
    t = PersistentMap({"base": 0}).transient()
    succeeded = [[] for _ in range(N_THREADS)]

    def worker(index, barrier):
        barrier.wait()
        for j in range(300):
            key = (index, j)
            try:
                t[key] = j
            except RuntimeError:
                continue
            succeeded[index].append(key)

    run_threads(worker)
    p = t.persistent()
    expected = {"base": 0}
    for keys in succeeded:
        for index, j in keys:
            expected[(index, j)] = j
    assert p == expected


def test_concurrent_persistent_calls_return_one_map():
    for _ in range(20):
        t = PersistentMap({i: i for i in range(100)}).transient()
        t["x"] = 1
        outcomes = [None] * N_THREADS

        def worker(index, barrier, t=t, outcomes=outcomes):
            barrier.wait()
            try:
                outcomes[index] = t.persistent()
            except RuntimeError:
                outcomes[index] = "error"

        run_threads(worker)
        # Each call either finds the transient busy (another thread is freezing it) or returns
        # the one map it was frozen into.
        winners = [o for o in outcomes if o != "error"]
        assert all(p is winners[0] for p in winners)
        final = t.persistent()
        assert all(p is final for p in winners)
        assert final == {**{i: i for i in range(100)}, "x": 1}


def test_gc_while_threads_build_cyclic_maps():
    def worker(index, barrier):
        barrier.wait()
        m = PersistentMap({i: i for i in range(200)})
        for j in range(200):
            lst = [j]
            m = m.assoc(("l", j % 20), lst)
            lst.append(m)
            if j % 50 == 0:
                gc.collect()
        assert len(m) == 220

    run_threads(worker)
    gc.collect()
