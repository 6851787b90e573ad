"""Persistent maps shared between many threads: versions derived and dropped while others
read, versions handed between threads, equality and hashing of maps built by different
threads, and iterators shared by several threads.

Every scenario runs many more threads than the machine has cores, releases them together
through a barrier, uses fixed seeds, and checks exact invariants.
"""

from __future__ import annotations

import queue
import random
import threading
from typing import Any, Dict, List, NamedTuple, Tuple

import pytest

from pypersistent import PersistentMap
from stress_support import (
    FREE_THREADED_BUILD,
    Budget,
    CollidingKey,
    expired,
    gil_enabled,
    run_threads,
)

SEED = 20240611
VERSION = "__version__"


def test_import_keeps_the_gil_disabled() -> None:
    """The extension declares Py_mod_gil_not_used: importing it must not turn the GIL on
    (otherwise every other scenario here silently runs serialised)."""
    import pypersistent._pypersistent  # noqa: F401

    if FREE_THREADED_BUILD:
        assert not gil_enabled(), "importing pypersistent re-enabled the GIL"


# --------------------------------------------------------------------------------------
# Readers hold versions while writers derive new ones and drop old ones
# --------------------------------------------------------------------------------------


class Version(NamedTuple):
    vid: int
    map: Any
    touched: Tuple[int, ...]  # stable keys this version set to (vid, k)
    extras: Tuple[Any, ...]  # volatile keys present in this version
    removed: Tuple[Any, ...]  # volatile keys this version removed
    ancestors: frozenset  # vids whose writes this version may show (itself included)
    depth: int
    length: int


def check_version(v: Version, rng: random.Random, n_stable: int, samples: int) -> int:
    """Reads v.map and checks it shows exactly version v. Returns reads done."""
    m = v.map
    assert m[VERSION] == v.vid
    assert len(m) == v.length
    for k in v.touched:
        assert m[k] == (v.vid, k)
        assert m.get(k) == (v.vid, k)
    for k in v.extras:
        got = m[k]
        assert got[1] == k and got[0] in v.ancestors, (v.vid, k, got)
        assert k in m
    for k in v.removed:
        assert k not in m
        assert m.get(k, "absent") == "absent"
    for _ in range(samples):
        k = rng.randrange(n_stable)
        got = m[k]
        assert got[1] == k and got[0] in v.ancestors, (v.vid, k, got)
    return 2 * len(v.touched) + 2 * len(v.extras) + 2 * len(v.removed) + samples + 2


def derive(parent: Version, vid: int, rng: random.Random, n_stable: int) -> Version:
    """A child version: some stable keys rewritten to (vid, k), new volatile keys added, most
    of the parent's volatile keys removed; built with one of several update paths."""
    touched = tuple(rng.sample(range(n_stable), 6))
    new_extras = tuple(("x", vid, j) for j in range(2))
    keep = parent.extras[-3:]
    removed = tuple(k for k in parent.extras if k not in keep)
    m = parent.map
    how = rng.randrange(5)
    if how == 0:
        for k in touched:
            m = m.set(k, (vid, k))
        for k in new_extras:
            m = m.assoc(k, (vid, k))
        for k in removed:
            m = m.dissoc(k)
        m = m.set(VERSION, vid)
    elif how == 1:
        t = m.transient()
        for k in touched + new_extras:
            t[k] = (vid, k)
        for k in removed:
            del t[k]
        t[VERSION] = vid
        m = t.persistent()
    elif how == 2:
        upd: Dict[Any, Any] = {k: (vid, k) for k in touched + new_extras}
        upd[VERSION] = vid
        m = m.update(upd)
        for k in removed:
            m = m.delete(k)
    elif how == 3:
        patch = PersistentMap([(k, (vid, k)) for k in touched + new_extras], **{VERSION: vid})
        m = m | patch
        for k in removed:
            m = m.dissoc(k)
    else:
        t = m.transient()
        for k in removed:
            t.dissoc(k)
        t.update({k: (vid, k) for k in touched})
        t.update([(k, (vid, k)) for k in new_extras])
        t.set(VERSION, vid)
        m = t.persistent()
    return Version(
        vid=vid,
        map=m,
        touched=touched,
        extras=keep + new_extras,
        removed=removed,
        ancestors=parent.ancestors | {vid},
        depth=parent.depth + 1,
        length=parent.length + len(new_extras) - len(removed),
    )


def test_readers_see_the_version_they_hold(budget: Budget) -> None:
    n_stable = budget.n(2000, 30000)
    n_threads = budget.n(32, 64)
    n_writers = n_threads // 4
    writer_ops = budget.n(100, 4000)
    reader_ops = budget.n(100, 4000)
    slots = 48
    max_depth = 40

    base_map = PersistentMap({k: (0, k) for k in range(n_stable)}).set(VERSION, 0)
    base = Version(0, base_map, (), (), (), frozenset({0}), 0, n_stable + 1)
    published: List[Version] = [base] * slots
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> Tuple[str, int]:
        rng = random.Random(SEED * 1000 + index)
        if index < n_writers:
            done = 0
            for i in range(writer_ops):
                if expired(deadline):
                    break
                parent = published[rng.randrange(slots)]
                if parent.depth >= max_depth:
                    parent = base
                # vids are unique without shared state: writer index and step.
                child = derive(parent, (index + 1) * 1_000_000 + i + 1, rng, n_stable)
                check_version(child, rng, n_stable, 4)
                # Replacing a slot drops the old version: maybe its last reference.
                published[rng.randrange(slots)] = child
                done += 1
            return ("writer", done)
        reads = 0
        held = published[rng.randrange(slots)]
        for i in range(reader_ops):
            if expired(deadline):
                break
            if i % 5 == 0:
                held = published[rng.randrange(slots)]
            reads += check_version(held, rng, n_stable, 12)
            if i % 40 == 7:
                # A full pass over the held version, by items and by keys.
                count = 0
                for k, v in held.map.items():
                    if k == VERSION:
                        assert v == held.vid
                    else:
                        assert v[1] == k and v[0] in held.ancestors
                    count += 1
                assert count == held.length
                assert sum(1 for _ in held.map) == held.length
                reads += 2 * count
        return ("reader", reads)

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="version")
    derived = sum(n for kind, n in results if kind == "writer")
    reads = sum(n for kind, n in results if kind == "reader")
    assert derived > 0 and reads > 0
    # Everything still published reads back right; the base version was never disturbed.
    rng = random.Random(SEED)
    for v in published:
        check_version(v, rng, n_stable, 64)
    assert len(base_map) == n_stable + 1
    assert all(base_map[k] == (0, k) for k in range(n_stable))
    print(f"\n  {derived} versions derived, {reads} reads checked")


# --------------------------------------------------------------------------------------
# Versions handed from thread to thread through queues and shared lists
# --------------------------------------------------------------------------------------


def ring_expected(token: int, hops: int, n_threads: int) -> Dict[Any, Any]:
    """Contents of token's map after `hops` hops round the ring (see the test)."""
    out: Dict[Any, Any] = {("token",): token}
    for h in range(hops):
        out[(token, h)] = ((token + h) % n_threads, h)
        if h % 4 == 3:
            del out[(token, h - 2)]
    return out


def test_versions_passed_between_threads(budget: Budget) -> None:
    """Each thread starts a token map and passes it round a ring of queue.Queues; every hop
    checks what it received, derives the next version (a different update path each time)
    and stores every version in a shared history list. At the end every historical version
    must still hold exactly what it held when it was made."""
    n_threads = budget.n(32, 64)
    hops = budget.n(48, 600)
    inboxes = [queue.Queue() for _ in range(n_threads)]
    # history[token][hop]: the version made at that hop; each slot written by one thread.
    history: List[List[Any]] = [[None] * hops for _ in range(n_threads)]
    deadline = budget.deadline()
    STOP = object()

    def hop(token: int, h: int, m: Any, me: int) -> Any:
        key, value = (token, h), (me, h)
        how = h % 5
        if how == 0:
            m = m.set(key, value)
        elif how == 1:
            t = m.transient()
            t[key] = value
            m = t.persistent()
        elif how == 2:
            m = m.update({key: value})
        elif how == 3:
            m = m | PersistentMap([(key, value)])
        else:
            m = PersistentMap(m, **{}).assoc(key, value)
        if h % 4 == 3:
            m = m.dissoc((token, h - 2))
        return m

    def worker(me: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED + me)
        nxt = inboxes[(me + 1) % n_threads]
        m = hop(me, 0, PersistentMap({("token",): me}), me)
        history[me][0] = m
        nxt.put((me, 1, m))
        received = 0
        for _ in range(hops - 1):
            item = inboxes[me].get(timeout=budget.join_timeout)
            if item is STOP:
                nxt.put(STOP)
                return received
            token, h, m = item
            received += 1
            assert len(m) == len(ring_expected(token, h, n_threads))
            # spot checks here; full comparisons at the end
            assert m[("token",)] == token
            assert m[(token, h - 1)] == ((token + h - 1) % n_threads, h - 1)
            probe = rng.randrange(h)
            expected = ring_expected(token, h, n_threads)
            assert m.get((token, probe), "gone") == expected.get((token, probe), "gone")
            m2 = hop(token, h, m, me)
            assert len(m) == len(expected), "the received version changed"
            history[token][h] = m2
            if h + 1 < hops and not expired(deadline):
                nxt.put((token, h + 1, m2))
            else:
                nxt.put(STOP)
                return received
        return received

    received = run_threads(n_threads, worker, timeout=budget.join_timeout, name="ring")
    assert sum(received) > 0
    checked = 0
    for token in range(n_threads):
        for h, m in enumerate(history[token]):
            if m is None:
                continue
            expected = ring_expected(token, h + 1, n_threads)
            assert m == expected
            assert dict(m.items()) == expected
            assert m == PersistentMap(reversed(list(expected.items())))
            assert hash(m) == hash(PersistentMap(expected))
            checked += 1
    print(f"\n  {sum(received)} hand-overs, {checked} versions re-checked")


# --------------------------------------------------------------------------------------
# Equal maps built by different threads in different ways
# --------------------------------------------------------------------------------------


def key_universe(rng: random.Random, n: int) -> List[Any]:
    keys: List[Any] = []
    keys += list(range(-n // 4, n // 4))  # hash(-1) == hash(-2): a whole-hash collision
    keys += [f"s{i}" for i in range(n // 4)]
    keys += [(i, f"t{i}") for i in range(n // 8)]
    keys += [CollidingKey(i) for i in range(n // 8)]  # hash % 4: long collision chains
    keys += [float(i) + 0.5 for i in range(n // 8)]
    rng.shuffle(keys)
    return keys


def value_for(k: Any) -> Any:
    return ("v", k.value) if isinstance(k, CollidingKey) else ("v", k)


def build_map(how: int, keys: List[Any], rng: random.Random) -> Any:
    order = list(keys)
    rng.shuffle(order)
    if how == 0:
        m = PersistentMap()
        for k in order:
            m = m.set(k, value_for(k))
        return m
    if how == 1:
        t = PersistentMap().transient()
        for k in order:
            t[k] = ("wrong", 0)
        for k in order[: len(order) // 2]:
            del t[k]
        rng.shuffle(order)
        for k in order:
            t[k] = value_for(k)
        for i in range(20):
            t[("spurious", i)] = i
        for i in range(20):
            t.dissoc(("spurious", i))
        return t.persistent()
    if how == 2:
        return PersistentMap([(k, value_for(k)) for k in order])
    if how == 3:
        return PersistentMap({k: value_for(k) for k in order})
    if how == 4:
        half = len(order) // 2
        a = PersistentMap([(k, value_for(k)) for k in order[:half]])
        b = PersistentMap([(k, ("stale", 1)) for k in order[half:]])
        b = b.update({k: value_for(k) for k in order[half:]})
        return a | b if rng.random() < 0.5 else b.update(a)
    # how == 5: start wrong and fix it up
    m = PersistentMap([(k, ("wrong", 1)) for k in order]).update({("extra", i): i for i in range(50)})
    rng.shuffle(order)
    for k in order:
        m = m.set(k, value_for(k))
    for i in range(50):
        m = m.dissoc(("extra", i))
    return m


def test_equal_maps_built_by_different_threads(budget: Budget) -> None:
    """Threads build the same contents in different orders and ways; all results must be
    ==, hash equal (hashes computed concurrently on shared maps), equal to the dict, and
    iterate in the same order except among keys with equal whole hashes."""
    n_threads = budget.n(16, 48)
    rounds = budget.n(2, 12)
    n_keys = budget.n(400, 4000)
    deadline = budget.deadline()

    for rnd in range(rounds):
        if rnd and expired(deadline):
            break
        keys = key_universe(random.Random(SEED + rnd), n_keys)
        expected = {k: value_for(k) for k in keys}
        built: List[Any] = [None] * n_threads

        def worker(index: int, barrier: threading.Barrier) -> int:
            rng = random.Random(SEED * 7 + rnd * 1000 + index)
            mine = build_map(index % 6, keys, rng)
            built[index] = mine
            barrier.wait()  # phase 2: everyone compares with everyone
            h = hash(mine)
            others = list(range(n_threads))
            rng.shuffle(others)
            for j in others:
                other = built[j]
                assert hash(other) == h, f"maps from threads {index} and {j} hash differently"
                assert mine == other and not (mine != other)
            assert mine == expected
            near = mine.set(keys[index % len(keys)], ("different",))
            assert near != mine and mine != near
            assert near != expected
            order = [k for k in mine if not isinstance(k, (CollidingKey, int))]
            assert order == [k for k in built[(index + 1) % n_threads] if not isinstance(k, (CollidingKey, int))]
            return h

        hashes = run_threads(n_threads, worker, timeout=budget.join_timeout, name="equal")
        assert len(set(hashes)) == 1
        assert hash(PersistentMap(expected)) == hashes[0]


# --------------------------------------------------------------------------------------
# One iterator shared by several threads
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keys", "values", "items", "map", "transient"])
def test_shared_iterator_yields_every_entry_once(budget: Budget, kind: str) -> None:
    n_entries = budget.n(4000, 60000)
    n_threads = budget.n(32, 64)
    rounds = budget.n(2, 10)
    m = PersistentMap({k: ("v", k) for k in range(n_entries)})
    deadline = budget.deadline()

    for rnd in range(rounds):
        if rnd and expired(deadline):
            break
        t = None
        if kind == "keys":
            it, expected = iter(m.keys()), list(range(n_entries))
        elif kind == "values":
            it, expected = iter(m.values()), [("v", k) for k in range(n_entries)]
        elif kind == "items":
            it, expected = iter(m.items()), [(k, ("v", k)) for k in range(n_entries)]
        elif kind == "map":
            it, expected = iter(m), list(range(n_entries))
        else:
            t = m.transient()
            for k in range(0, n_entries, 3):
                del t[k]
            it = iter(t)  # a snapshot: later edits of t must not show
            expected = [k for k in range(n_entries) if k % 3]
        outputs: List[List[Any]] = [[] for _ in range(n_threads)]

        def worker(index: int, _barrier: threading.Barrier) -> None:
            out = outputs[index]
            last_hint = None
            while True:
                if t is not None and index % 8 == 0:
                    # Mutate the transient under the iterator's feet.
                    try:
                        k = len(out) * 3
                        t[k] = "new"
                        del t[k + 1]
                    except (RuntimeError, KeyError):
                        pass
                if index % 4 == 1:
                    hint = it.__length_hint__()
                    assert 0 <= hint <= len(expected)
                    if last_hint is not None:
                        assert hint <= last_hint, "length hint grew"
                    last_hint = hint
                try:
                    out.append(next(it))
                except StopIteration:
                    break
            # Exhausted stays exhausted.
            for _ in range(3):
                with pytest.raises(StopIteration):
                    next(it)

        run_threads(n_threads, worker, timeout=budget.join_timeout, name=f"iter-{kind}")
        got = [x for out in outputs for x in out]
        assert len(got) == len(expected), f"{len(got)} entries produced, {len(expected)} expected"
        assert sorted(got, key=repr) == sorted(expected, key=repr), "an entry was produced twice or never"
        assert it.__length_hint__() == 0
        assert len(m) == n_entries
