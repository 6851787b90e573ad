"""One TransientMap shared by many threads.

Each thread owns a disjoint range of keys and only ever edits its own keys, so whatever the
interleaving, the final contents are determined: the base map's other keys plus, for every
thread, the model that its *successful* operations built. A concurrent operation must either
run serialised (the per-object critical section) or fail with RuntimeError and change
nothing (when another thread's operation is suspended inside a key's __hash__/__eq__);
RuntimeError is the only exception allowed besides the KeyErrors the model predicts.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from pypersistent import PersistentMap
from stress_support import Budget, MoodyKey, SlowKey, expired, run_threads, set_mood

SEED = 777001
MISSING = object()

KEY_KINDS = {
    # plain ints: operations rarely get suspended, so they mostly serialise
    "int": lambda i: i,
    # __hash__/__eq__ sleep(0): the critical section is suspended inside every operation,
    # so concurrent callers see the transient busy and get RuntimeError
    "slow": lambda i: SlowKey(i, buckets=1 << 12),
    # CPU spinning in __hash__/__eq__ (set per thread), many whole-hash collisions
    "spin": lambda i: MoodyKey(i, buckets=512),
}


class Counts:
    __slots__ = ("ok", "refused", "keyerror")

    def __init__(self) -> None:
        self.ok = self.refused = self.keyerror = 0


def is_finished_error(exc: RuntimeError) -> bool:
    return "finished" in str(exc)


def transient_session(
    t: Any,
    own: List[Any],
    model: Dict[Any, Any],
    rng: random.Random,
    ops: int,
    deadline: float,
    counts: Counts,
    index: int,
    total_keys: int,
    stop: Optional[Callable[[], bool]] = None,
) -> bool:
    """Runs up to `ops` random operations on t touching only `own` keys, keeping `model`
    (this thread's keys -> values) in step with the operations that succeeded, and checking
    every result against it. Returns False if t turned out to be finished."""

    def value(i: int) -> Tuple[int, int]:
        return (index, i)

    own_set = set(own)

    for i in range(ops):
        if expired(deadline) or (stop is not None and stop()):
            break
        k = own[rng.randrange(len(own))]
        v = value(i)  # one object: the transient must store exactly it
        op = rng.randrange(14)
        try:
            if op == 0:
                t[k] = v
                model[k] = v
            elif op == 1:
                assert t.set(k, v) is t
                model[k] = v
            elif op == 2:
                assert t.assoc(k, v) is t
                model[k] = v
            elif op == 3:
                try:
                    del t[k]
                except KeyError:
                    assert k not in model, "KeyError deleting a key this thread had set"
                    counts.keyerror += 1
                else:
                    assert model.pop(k, MISSING) is not MISSING, "deleted a key this thread never set"
            elif op == 4:
                assert (t.dissoc(k) if i % 2 else t.delete(k)) is t
                model.pop(k, None)
            elif op == 5:
                assert t.get(k, MISSING) is model.get(k, MISSING)
            elif op == 6:
                try:
                    got = t[k]
                except KeyError:
                    assert k not in model
                    counts.keyerror += 1
                else:
                    assert got is model[k]
            elif op == 7:
                assert (k in t) == (k in model)
                assert t.contains(k) == (k in model)
            elif op == 8:
                n = len(t)
                assert len(model) <= n <= total_keys
            elif op == 9:
                batch = {own[rng.randrange(len(own))]: v for _ in range(3)}
                assert t.update(batch) is t
                model.update(batch)
            elif op == 10:
                pairs = [(own[rng.randrange(len(own))], v) for _ in range(2)]
                assert t.update(pairs) is t
                model.update(pairs)
            elif op == 11 and i % 4 == 0:
                # iteration runs over an O(1) snapshot: this thread's keys in it are exactly
                # its model at the time the iterator was made
                snap = iter(t)
                mine = set(model)
                seen = [x for x in snap if x in own_set]
                assert len(seen) == len(set(seen))
                assert set(seen) == mine
            elif op == 12:
                r = repr(t)
                assert r.startswith("TransientMap(")
            else:
                assert t.get(k) is model.get(k)
            counts.ok += 1
        except RuntimeError as exc:
            if is_finished_error(exc):
                return False
            counts.refused += 1
    return True


def make_key_ranges(kind: str, n_threads: int, per_thread: int) -> List[List[Any]]:
    make = KEY_KINDS[kind]
    return [[make(i * per_thread + j) for j in range(per_thread)] for i in range(n_threads)]


@pytest.mark.parametrize("kind", sorted(KEY_KINDS))
def test_shared_transient_ends_as_the_union_of_the_threads_models(budget: Budget, kind: str) -> None:
    n_threads = budget.n(32, 64)
    per_thread = 24
    ops = budget.n(300 if kind == "int" else 120, 5000)
    ranges = make_key_ranges(kind, n_threads, per_thread)
    # The base map holds some keys of every range (so early edits copy shared nodes) and
    # keys nobody owns (which must come through untouched).
    base_items = {("base", i): i for i in range(400)}
    for r in ranges:
        for k in r[::3]:
            base_items[k] = ("base", 0)
    base = PersistentMap(base_items)
    t = base.transient()
    total_keys = 400 + n_threads * per_thread
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> Tuple[Dict[Any, Any], Counts]:
        set_mood("spin" if kind == "spin" else None)
        try:
            rng = random.Random(SEED + index)
            own = ranges[index]
            model = {k: base_items[k] for k in own if k in base_items}
            counts = Counts()
            alive = transient_session(t, own, model, rng, ops, deadline, counts, index, total_keys)
            assert alive, "the transient was finished by nobody"
            return model, counts
        finally:
            set_mood(None)

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name=f"transient-{kind}")
    expected = {k: v for k, v in base_items.items() if isinstance(k, tuple) and k[0] == "base"}
    for model, _ in results:
        expected.update(model)
    final = t.persistent()
    assert len(final) == len(expected)
    assert final == expected
    for k, v in expected.items():
        assert final[k] is v
    # finished: every further use raises RuntimeError, but persistent() returns the same map
    for use in (lambda: t.set(1, 2), lambda: t[1], lambda: len(t), lambda: iter(t)):
        with pytest.raises(RuntimeError):
            use()
    assert t.persistent() is final
    # the base map the transient started from never changed
    assert base == base_items
    ok = sum(c.ok for _, c in results)
    refused = sum(c.refused for _, c in results)
    assert ok > 0
    print(f"\n  {ok} operations done, {refused} refused with RuntimeError")


@pytest.mark.parametrize("kind", ["int", "slow"])
def test_persistent_racing_with_edits(budget: Budget, kind: str) -> None:
    """Several threads edit their own keys while others call persistent(): the first call that
    gets in finishes the transient, and every call that succeeds returns that same map (the
    others are refused while an edit is in progress); every later edit raises RuntimeError; the
    map is the union of the models of the operations that succeeded (each ran before the
    finish, or it would have failed)."""
    n_threads = budget.n(32, 48)
    finishers = 4
    per_thread = 16
    rounds = budget.n(3, 20)
    ops = budget.n(200 if kind == "int" else 60, 3000)
    deadline = budget.deadline()

    for rnd in range(rounds):
        if rnd and expired(deadline):
            break
        ranges = make_key_ranges(kind, n_threads, per_thread)
        base = PersistentMap({k: ("base", 0) for r in ranges for k in r[::2]})
        t = base.transient()
        outcomes: List[Any] = [None] * n_threads
        # each finisher waits until the editors have done some fraction of their work
        planned = (n_threads - finishers) * ops
        finish_after = [int(random.Random(SEED + rnd * 100 + i).random() * planned * 0.8) for i in range(finishers)]
        done_ops = [0] * n_threads  # each slot written by its own thread only
        editor_done = [False] * n_threads

        def worker(index: int, _barrier: threading.Barrier) -> Any:
            rng = random.Random(SEED * 3 + rnd * 1000 + index)
            if index < finishers:
                # wait until the editors have made some progress, then try to finish
                while (
                    sum(done_ops) < finish_after[index]
                    and not all(editor_done[finishers:])
                    and not expired(deadline)
                ):
                    threading.Event().wait(0.0005)
                try:
                    result = t.persistent()
                except RuntimeError as exc:
                    return ("lost", str(exc))
                return ("won", result)
            own = ranges[index]
            model = {k: ("base", 0) for k in own[::2]}
            counts = Counts()
            alive = True
            for _ in range(ops // 10 + 1):
                alive = transient_session(t, own, model, rng, 10, deadline, counts, index, n_threads * per_thread)
                done_ops[index] += 10
                if not alive:
                    break
            editor_done[index] = True
            return ("editor", model, alive)

        results = run_threads(n_threads, worker, timeout=budget.join_timeout, name=f"finish-{kind}")
        winners = [r[1] for r in results if r[0] == "won"]
        losers = [r for r in results if r[0] == "lost"]
        if not winners:
            # Every finisher was refused because an edit was in progress; finish now.
            winners = [t.persistent()]
        assert all(w is winners[0] for w in winners), "persistent() calls returned different maps"
        assert all(("finished" in msg) or ("two places" in msg) for _, msg in losers), losers
        final = winners[0]
        # the finishers' key ranges keep their base contents
        expected: Dict[Any, Any] = {k: ("base", 0) for r in ranges[:finishers] for k in r[::2]}
        for r in results:
            if r[0] == "editor":
                expected.update(r[1])
        assert final == expected
        for use in (lambda: t.set(0, 0), lambda: t.get(0), lambda: 0 in t):
            with pytest.raises(RuntimeError):
                use()
        assert t.persistent() is final
        assert base == {k: ("base", 0) for r in ranges for k in r[::2]}


def test_many_transients_over_one_shared_base(budget: Budget) -> None:
    """Every thread edits its own transients made from one shared base map (and from maps
    other threads finished and handed over through a queue): in-place edits of one
    transient must never show in the base, in another thread's transient, or in a map
    handed out earlier."""
    n_threads = budget.n(32, 64)
    n_base = budget.n(1000, 20000)
    rounds = budget.n(8, 200)
    base = PersistentMap({k: ("base", k) for k in range(n_base)})
    handoff: "queue.Queue[Tuple[Any, Dict[Any, Any]]]" = queue.Queue()
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED * 5 + index)
        finished: List[Tuple[Any, Dict[Any, Any]]] = []  # (map, its changes vs base)
        for rnd in range(rounds):
            if expired(deadline):
                break
            start, changes = base, {}
            if rnd % 3 == 2:
                try:
                    start, changes = handoff.get_nowait()
                    changes = dict(changes)
                except queue.Empty:
                    pass
            t = start.transient()
            for j in range(30):
                k = rng.randrange(n_base + 50)
                if rng.random() < 0.25:
                    t.dissoc(k)
                    changes[k] = MISSING
                else:
                    v = ("t", index, rnd, j)
                    t[k] = v
                    changes[k] = v
                if j % 10 == 9:
                    snap = dict.fromkeys(iter(t))  # snapshot, then keep editing in place
                    for kk, vv in changes.items():
                        assert (kk in snap) == (vv is not MISSING)
            m = t.persistent()
            finished.append((m, changes))
            handoff.put((m, changes))
            # nothing finished earlier (by anyone) was disturbed
            for old, ch in finished[-4:]:
                for kk, vv in ch.items():
                    if vv is MISSING:
                        assert kk not in old
                    else:
                        assert old[kk] is vv
            for kk in rng.sample(range(n_base), 20):
                assert base[kk] == ("base", kk)
        return len(finished)

    made = run_threads(n_threads, worker, timeout=budget.join_timeout, name="many-transients")
    assert sum(made) > 0
    assert len(base) == n_base
    assert all(base[k] == ("base", k) for k in range(n_base))
    # every handed-over map still matches base + its changes
    full_checks = 8
    while True:
        try:
            m, changes = handoff.get_nowait()
        except queue.Empty:
            break
        added = sum(1 for k, v in changes.items() if k >= n_base and v is not MISSING)
        dropped = sum(1 for k, v in changes.items() if k < n_base and v is MISSING)
        assert len(m) == n_base + added - dropped
        for k, v in changes.items():
            assert m.get(k, MISSING) is v
        if full_checks:
            full_checks -= 1
            expected = {k: ("base", k) for k in range(n_base)}
            for k, v in changes.items():
                if v is MISSING:
                    expected.pop(k, None)
                else:
                    expected[k] = v
            assert m == expected


@pytest.mark.parametrize("kind", ["int", "slow"])
def test_with_block_exit_racing_with_edits(budget: Budget, kind: str) -> None:
    """__exit__ of a `with` block (which finishes the transient, keeping its edits) racing with
    edits from other threads: it either finishes it or is refused with RuntimeError while an
    edit is suspended; afterwards edits raise RuntimeError and persistent() returns the map the
    block's end froze, every time. No crash, no other exception."""
    n_threads = budget.n(24, 48)
    rounds = budget.n(3, 60)
    deadline = budget.deadline()
    for rnd in range(rounds):
        if rnd and expired(deadline):
            break
        ranges = make_key_ranges(kind, n_threads, 8)
        refusals = [0]
        t = PersistentMap({k: 0 for r in ranges for k in r[::2]}).transient()

        def worker(index: int, _barrier: threading.Barrier) -> str:
            if index == 0:
                # Refused while another thread's edit is suspended; keep trying.
                give_up = time.monotonic() + budget.join_timeout / 2
                while time.monotonic() < give_up:
                    try:
                        t.__exit__(None, None, None)
                        return "exited"
                    except RuntimeError:
                        refusals[0] += 1
                        threading.Event().wait(0.0002)
                return "never exited"
            rng = random.Random(SEED + rnd * 100 + index)
            own = ranges[index]
            model = {k: 0 for k in own[::2]}
            counts = Counts()
            transient_session(t, own, model, rng, 10_000, deadline, counts, index, 10**9)
            return "edited"

        results = run_threads(n_threads, worker, timeout=budget.join_timeout, name=f"exit-{kind}")
        assert results[0] == "exited"
        with pytest.raises(RuntimeError):
            t[ranges[1][0]] = 1
        frozen = t.persistent()
        assert type(frozen) is PersistentMap and t.persistent() is frozen
