"""Keys whose __hash__ / __eq__ are slow or raise, used by many threads at once.

MoodyKey behaves according to the *calling* thread's mood (stress_support.set_mood): the same
key objects raise in one thread while other threads use them successfully. Checked: an
exception reaches exactly the thread and the call that raised it (each Boom carries the
raising thread and a per-call nonce), a failed update leaves maps and transients unchanged,
and the successful calls in the other threads return exact results meanwhile.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Dict, List, Optional, Tuple

import pytest

from pypersistent import PersistentMap
from stress_support import Boom, Budget, MoodyKey, check_boom, expired, run_threads, set_mood

SEED = 4242
BUCKETS = 32  # hash(MoodyKey(v)) == v % 32: every lookup meets keys with its whole hash
N_SHARED = 256  # keys 0..255 are in the shared map; probes go up to 319
MOODS = [None, None, "slow", "spin", "hash", "eq"]
MISSING = object()


def expected_failure(mood: Optional[str], op: str) -> Optional[str]:
    """Which Boom an operation must raise in a thread with `mood` (None: must succeed).
    Probes are fresh objects, so finding an equal key always calls __eq__, and every hash
    class of the shared map is populated, so every lookup calls __eq__ at least once."""
    if mood == "hash":
        # Comparing two maps uses the hashes cached in their entries.
        return None if op == "eq" else "hash"
    if mood == "eq":
        return "eq"
    return None


def test_raising_and_slow_keys_in_a_shared_map(budget: Budget) -> None:
    n_threads = budget.n(32, 64)
    ops = budget.n(80, 6000)
    shared_items = [(MoodyKey(i, BUCKETS), ("v", i)) for i in range(N_SHARED)]
    shared = PersistentMap(shared_items)
    # the same contents with distinct (equal) key objects: == must call __eq__ on each
    twin = PersistentMap([(MoodyKey(i, BUCKETS), ("v", i)) for i in range(N_SHARED)])
    # values that are moody keys too: hash(map) hashes them
    valued = PersistentMap({i: MoodyKey(i, BUCKETS) for i in range(64)})
    valued_hash = hash(valued.set("fresh", 0))
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> Dict[str, int]:
        rng = random.Random(SEED + index)
        tally = {"ok": 0, "boom": 0}
        for i in range(ops):
            if expired(deadline):
                break
            mood = rng.choice(MOODS)
            op = rng.choice(["getitem", "get", "contains", "set", "dissoc", "update", "or", "eq", "transient", "hash"])
            v = rng.randrange(N_SHARED + 64)
            probe = MoodyKey(v, BUCKETS)  # made while still well-behaved
            present = v < N_SHARED
            nonce = (index, i)
            patch = [(probe, ("new", index, i))]
            must = "hash" if (op == "hash" and mood == "hash") else (None if op == "hash" else expected_failure(mood, op))
            set_mood(mood, nonce)
            try:
                if op == "getitem":
                    try:
                        result = shared[probe]
                    except KeyError:
                        result = MISSING
                elif op == "get":
                    result = shared.get(probe, MISSING)
                elif op == "contains":
                    result = probe in shared
                elif op == "set":
                    result = shared.set(probe, patch[0][1])
                elif op == "dissoc":
                    result = shared.dissoc(probe)
                elif op == "update":
                    result = shared.update(patch)
                elif op == "or":
                    result = shared | PersistentMap(patch)
                elif op == "eq":
                    result = shared == twin
                elif op == "transient":
                    t = shared.transient()
                    try:
                        t[probe] = patch[0][1]
                    except Boom:
                        set_mood(None)
                        # a failed edit leaves the transient as it was, and usable
                        assert len(t) == N_SHARED
                        assert t.persistent() == shared
                        raise
                    result = t.persistent()
                else:
                    result = hash(valued.set("fresh", 0))
            except Boom as exc:
                set_mood(None)
                check_boom(exc, must or "nothing", nonce)
                tally["boom"] += 1
                continue
            finally:
                set_mood(None)
            assert must is None, f"{op} in mood {mood} should have raised Boom({must})"
            tally["ok"] += 1
            # check the result with a well-behaved thread state
            if op in ("getitem", "get"):
                assert result == (("v", v) if present else MISSING)
            elif op == "contains":
                assert result is present
            elif op in ("set", "update", "or", "transient"):
                assert len(result) == N_SHARED + (0 if present else 1)
                assert result[probe] == patch[0][1]
                assert result.dissoc(probe) == shared.dissoc(probe)
            elif op == "dissoc":
                assert len(result) == N_SHARED - (1 if present else 0)
                assert probe not in result
                if not present:
                    assert result is shared
            elif op == "eq":
                assert result is True
            else:
                assert result == valued_hash
        return tally

    tallies = run_threads(n_threads, worker, timeout=budget.join_timeout, name="moody-map")
    # the shared maps are exactly as built: same key and value objects
    assert list(shared.items()) == list(PersistentMap(shared_items).items())
    for k, v in shared_items:
        assert shared[k] is v
    assert len(shared) == N_SHARED and len(twin) == N_SHARED and shared == twin
    ok = sum(t["ok"] for t in tallies)
    boom = sum(t["boom"] for t in tallies)
    assert ok > 0 and boom > 0
    print(f"\n  {ok} calls succeeded, {boom} raised in the right thread")


def test_raising_and_slow_keys_in_a_shared_transient(budget: Budget) -> None:
    """One transient, threads own disjoint key values, but with 64 hash classes their keys
    collide across threads, so one thread's edit calls __eq__ on other threads' keys in
    its own mood. Outcomes: success (applied), Boom (this thread's, nothing applied) or
    RuntimeError (refused while another thread's call is suspended, nothing applied)."""
    n_threads = budget.n(32, 48)
    per_thread = 16
    ops = budget.n(150, 4000)
    buckets = 64
    ranges = [[MoodyKey(i * per_thread + j, buckets) for j in range(per_thread)] for i in range(n_threads)]
    t = PersistentMap({k: "base" for r in ranges for k in r[::4]}).transient()
    deadline = budget.deadline()

    def worker(index: int, _barrier: threading.Barrier) -> Tuple[Dict[Any, Any], Dict[str, int]]:
        rng = random.Random(SEED * 11 + index)
        own = ranges[index]
        model: Dict[Any, Any] = {k: "base" for k in own[::4]}
        tally = {"ok": 0, "boom": 0, "refused": 0}
        for i in range(ops):
            if expired(deadline):
                break
            mood = rng.choice(MOODS)
            j = rng.randrange(per_thread)
            key = own[j] if rng.random() < 0.5 else MoodyKey(own[j].value, buckets)
            value = (index, i)
            op = rng.randrange(5)
            nonce = (index, i)
            set_mood(mood, nonce)
            try:
                if op == 0:
                    t[key] = value
                elif op == 1:
                    t.dissoc(key)
                elif op == 2:
                    got = t.get(key, MISSING)
                elif op == 3:
                    got = key in t
                else:
                    t.update([(key, value)])
            except Boom as exc:
                set_mood(None)
                assert mood in ("hash", "eq"), f"Boom in mood {mood}"
                check_boom(exc, mood, nonce)
                tally["boom"] += 1
                continue
            except RuntimeError as exc:
                set_mood(None)
                assert "finished" not in str(exc)
                tally["refused"] += 1
                continue
            finally:
                set_mood(None)
            assert mood != "hash", "a hash-raising key was accepted"
            tally["ok"] += 1
            if op in (0, 4):
                model[own[j]] = value
            elif op == 1:
                model.pop(own[j], None)
            elif op == 2:
                assert got is model.get(own[j], MISSING)
            else:
                assert got == (own[j] in model)
        return model, tally

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="moody-transient")
    expected: Dict[Any, Any] = {}
    for model, _ in results:
        expected.update(model)
    final = t.persistent()
    assert len(final) == len(expected)
    for k, v in expected.items():
        assert final[k] is v
    assert final == expected
    ok = sum(r[1]["ok"] for r in results)
    boom = sum(r[1]["boom"] for r in results)
    refused = sum(r[1]["refused"] for r in results)
    assert ok > 0 and boom > 0
    print(f"\n  {ok} ok, {boom} Boom, {refused} refused with RuntimeError")


def test_slow_keys_race_for_a_map_hash(budget: Budget) -> None:
    """Many threads hash the same fresh maps at once while their values' __hash__ is slow
    (the cached hash is computed concurrently); some threads' computation raises instead.
    Every thread that gets a number gets the same one, and a failed computation does not
    poison the cache."""
    n_threads = budget.n(32, 64)
    rounds = budget.n(8, 400)
    items = {i: MoodyKey(i, BUCKETS) for i in range(48)}
    expected = hash(PersistentMap(items))
    deadline = budget.deadline()
    maps: List[Any] = []

    for rnd in range(rounds):
        if rnd and expired(deadline):
            break
        maps[:] = [PersistentMap(items), PersistentMap(list(reversed(list(items.items()))))]

        def worker(index: int, _barrier: threading.Barrier) -> List[int]:
            mood = ["slow", "spin", None, "hash"][index % 4]
            got = []
            for m in maps:
                set_mood(mood, (rnd, index))
                try:
                    got.append(hash(m))
                except Boom as exc:
                    set_mood(None)
                    check_boom(exc, "hash", (rnd, index))
                finally:
                    set_mood(None)
            return got

        results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="hash-race")
        assert all(h == expected for r in results for h in r)
        assert hash(maps[0]) == hash(maps[1]) == expected
