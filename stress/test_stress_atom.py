"""Stress: many threads updating one pypersistent.Atom while others read snapshots.

Scenarios (operation counts from the `budget` fixture of stress/conftest.py: --stress-mode
short|long, or $PYPERSISTENT_STRESS):

  * swaps: 64 writer threads each swap N times (short: 200, long: 10,000), incrementing
    their own counter key and a shared total in one update; reader threads meanwhile take
    snapshots, check total == sum of counters in each one, iterate whole snapshots while
    the writers keep swapping, and check that nothing they saw ever decreases or changes.
    At the end every counter and the total are exact (no lost or doubled update). Every
    8th call of a writer's function sleeps(0) between swap's load and its compare-and-set,
    so that swaps really conflict and retry even with the GIL or on few cores.
  * compare_and_set loops: the same with hand-written deref / compare_and_set retry loops,
    and a count of the failed attempts (which must all have been real conflicts).
  * deref vs reset hammer: for a few seconds (short: up to 3 s, long: 60 s) 8 writers
    reset() the atom as fast as they can while 8 readers deref() it, in a subprocess so that a crash (a map
    freed while still in use) fails this test instead of killing the whole run. This is the
    interleaving where a reader that lost a race with a store gives its borrow back while the
    storing thread is between publishing the new map and crediting the old one's borrows.
  * reset churn: writers replace whole maps (reset and swap mixed) holding weakly
    referenced payloads while readers hold snapshots; afterwards every payload but those of
    the final map is freed (the lock-free cell neither leaks nor frees a map too early).

All threads start together (threading.Barrier in stress_support.run_threads), every join
has a timeout, and each threaded phase stops early at the budget's wall-clock cap, after
which the invariants are checked on whatever was done.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Dict, List

from stress_support import Budget, Payload, expired, run_threads

from pypersistent import Atom, PersistentMap

N_WRITERS = 64
N_READERS = 4
TOTAL = "total"


def _key(i: int) -> str:
    return f"w{i:02d}"


def _bump(m: PersistentMap, key: str, *, by: int) -> PersistentMap:
    # No side effects: swap() may call this several times for one update.
    return m.set(key, m.get(key, 0) + by).set(TOTAL, m[TOTAL] + by)


class _Writers:
    """Counts finished writers, so readers know when to take their last look."""

    def __init__(self, n: int) -> None:
        self._left = n
        self._lock = threading.Lock()
        self.done = threading.Event()

    def finished(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.done.set()


def _check_snapshot(snap: PersistentMap, n_writers: int) -> Dict[str, int]:
    """total == sum of the counters, by lookups and by iterating the whole snapshot."""
    total = snap[TOTAL]
    counters = {}
    seen_total = None
    count = 0
    for k, v in snap.items():  # a full iteration while writers keep swapping
        count += 1
        if k == TOTAL:
            seen_total = v
        else:
            counters[k] = v
    assert count == len(snap), f"iteration visited {count} entries of {len(snap)}"
    assert seen_total == total, f"iteration saw total={seen_total}, lookup saw {total}"
    assert len(counters) <= n_writers
    summed = sum(counters.values())
    assert total == summed, f"inconsistent snapshot: total={total}, counters sum to {summed}"
    for k, v in counters.items():
        assert snap.get(k) == v
    return counters


def _reader_loop(atom: Atom, writers: _Writers, deadline: float, n_writers: int) -> int:
    """Reads snapshots until the writers finish; returns how many were checked."""
    previous: Dict[str, int] = {}
    kept: List[tuple] = []  # some old snapshots with what they held, re-checked at the end
    checked = 0
    while True:
        last_look = writers.done.is_set() or expired(deadline)
        snap = atom.deref()
        counters = _check_snapshot(snap, n_writers)
        # Counters only grow: a later snapshot never shows an older version of a key.
        for k, v in previous.items():
            assert counters.get(k, 0) >= v, f"{k} went back from {v} to {counters.get(k)}"
        previous = counters
        if checked % 16 == 0 and len(kept) < 64:
            kept.append((snap, dict(counters), snap[TOTAL]))
        checked += 1
        if last_look:
            break
    for snap, counters, total in kept:  # persistent: old versions never change
        assert snap[TOTAL] == total
        assert {k: v for k, v in snap.items() if k != TOTAL} == counters
    return checked


def test_swaps_are_exact_and_snapshots_consistent(budget: Budget) -> None:
    n_ops = budget.n(200, 10_000)
    atom = Atom(PersistentMap({TOTAL: 0}))
    writers = _Writers(N_WRITERS)
    deadline = budget.deadline()
    done_by: List[int] = [0] * N_WRITERS
    calls_by: List[int] = [0] * N_WRITERS

    def worker(index: int, barrier: threading.Barrier) -> int:
        if index >= N_WRITERS:
            return _reader_loop(atom, writers, deadline, N_WRITERS)
        key = _key(index)
        calls = 0

        def bump(m: PersistentMap, key: str, *, by: int) -> PersistentMap:
            nonlocal calls
            calls += 1
            if calls % 8 == 0:
                time.sleep(0)  # let other writers publish between swap's load and its CAS
            return _bump(m, key, by=by)

        try:
            for i in range(n_ops):
                if i % 16 == 0 and expired(deadline):
                    break
                new = atom.swap(bump, key, by=1)
                done_by[index] += 1
                assert new[key] >= done_by[index]  # our own update is in what we published
        finally:
            calls_by[index] = calls
            writers.finished()
        return done_by[index]

    reads = run_threads(N_WRITERS + N_READERS, worker, timeout=budget.join_timeout, name="atom-swap")

    final = atom.deref()
    _check_snapshot(final, N_WRITERS)
    for i in range(N_WRITERS):
        assert final.get(_key(i), 0) == done_by[i], f"writer {i}: {final.get(_key(i))} != {done_by[i]}"
        assert calls_by[i] >= done_by[i]
    assert final[TOTAL] == sum(done_by)
    if not expired(deadline):
        assert done_by == [n_ops] * N_WRITERS
    assert all(r > 0 for r in reads[N_WRITERS:])
    print(
        f"swaps: {sum(done_by)} published ({sum(calls_by) - sum(done_by)} retries), "
        f"{sum(reads[N_WRITERS:])} snapshots checked"
    )


def test_compare_and_set_loops_are_exact(budget: Budget) -> None:
    n_ops = budget.n(200, 10_000)
    atom = Atom(PersistentMap({TOTAL: 0}))
    writers = _Writers(N_WRITERS)
    deadline = budget.deadline()
    done_by: List[int] = [0] * N_WRITERS
    failed_by: List[int] = [0] * N_WRITERS

    def worker(index: int, barrier: threading.Barrier) -> int:
        if index >= N_WRITERS:
            return _reader_loop(atom, writers, deadline, N_WRITERS)
        key = _key(index)
        try:
            for i in range(n_ops):
                if i % 16 == 0 and expired(deadline):
                    break
                attempt = 0
                while True:
                    current = atom.deref()
                    attempt += 1
                    if (i + attempt) % 8 == 0:
                        time.sleep(0)  # widen the window between deref and compare_and_set
                    if atom.compare_and_set(current, _bump(current, key, by=1)):
                        break
                    # A failure means another version really was published meanwhile.
                    failed_by[index] += 1
                    assert atom.deref() is not current
                done_by[index] += 1
        finally:
            writers.finished()
        return done_by[index]

    reads = run_threads(N_WRITERS + N_READERS, worker, timeout=budget.join_timeout, name="atom-cas")

    final = atom.deref()
    _check_snapshot(final, N_WRITERS)
    for i in range(N_WRITERS):
        assert final.get(_key(i), 0) == done_by[i]
    assert final[TOTAL] == sum(done_by)
    if not expired(deadline):
        assert done_by == [n_ops] * N_WRITERS
    assert all(r > 0 for r in reads[N_WRITERS:])
    print(f"compare_and_set: {sum(done_by)} published, {sum(failed_by)} conflicts")


def test_reset_churn_frees_every_replaced_map(budget: Budget) -> None:
    n_threads = 16
    n_ops = budget.n(300, 5_000)
    atom = Atom(PersistentMap(payload=Payload(("initial",)), n=0))
    refs: List[List[weakref.ref]] = [[] for _ in range(n_threads)]
    deadline = budget.deadline()
    held_max = 8

    def worker(index: int, barrier: threading.Barrier) -> None:
        held: List[PersistentMap] = []
        for i in range(n_ops):
            if i % 16 == 0 and expired(deadline):
                break
            p = Payload((index, i))
            refs[index].append(weakref.ref(p))
            op = i % 4
            if op == 0:
                old = atom.reset(PersistentMap(payload=p, n=i))
                assert type(old) is PersistentMap and "payload" in old
            elif op == 1:
                atom.swap(lambda m, p: m.set("payload", p).set("n", m["n"] + 1), p)
            elif op == 2:
                cur = atom.deref()
                atom.compare_and_set(cur, cur.set("payload", p))
            else:
                # A payload that points back at the atom: cycles through the cell.
                p.ref = atom
                atom.swap(lambda m, p: m.set("payload", p), p)
            snap = atom.deref()
            assert isinstance(snap["payload"], Payload)
            held.append(snap)  # readers keep versions alive across replacements
            if len(held) > held_max:
                held.pop(0)
        held.clear()

    run_threads(n_threads, worker, timeout=budget.join_timeout, name="atom-churn")

    last = atom.deref()["payload"]
    gc.collect()
    alive = [r() for rs in refs for r in rs if r() is not None]
    assert alive in ([], [last]), f"{len(alive)} payloads still alive: {alive[:5]}"
    del last, alive
    wr_atom = weakref.ref(atom)
    atom.reset(PersistentMap())
    del atom
    gc.collect()
    assert wr_atom() is None
    assert not any(r() is not None for rs in refs for r in rs)


_HAMMER = textwrap.dedent(
    """
    import sys, threading, time
    from pypersistent import Atom, PersistentMap

    seconds, n_writers, n_readers = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    atom = Atom(PersistentMap(v=0, check=0))
    barrier = threading.Barrier(n_writers + n_readers)
    counts = [0] * (n_writers + n_readers)
    errors = []

    def writer(t):
        barrier.wait()
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            for _ in range(64):
                i += 1
                old = atom.reset(PersistentMap(v=i, check=-i))
                if type(old) is not PersistentMap or old["v"] != -old["check"]:
                    errors.append(repr(old))
            counts[t] += 64

    def reader(t):
        barrier.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(64):
                m = atom.deref()
                if type(m) is not PersistentMap or m["v"] != -m["check"]:
                    errors.append(repr(m))
            counts[t] += 64

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_writers)]
    threads += [threading.Thread(target=reader, args=(n_writers + t,)) for t in range(n_readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds * 10 + 60)
    assert not any(t.is_alive() for t in threads), "hammer threads did not finish"
    assert not errors, errors[:5]
    print("resets", sum(counts[:n_writers]), "derefs", sum(counts[n_writers:]))
    """
)


def test_deref_races_reset_hammer(budget: Budget) -> None:
    seconds = 60.0 if budget.long else min(3.0, budget.seconds / 4)
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run(
        [sys.executable, "-c", _HAMMER, str(seconds), "8", "8"],
        capture_output=True,
        text=True,
        timeout=seconds * 10 + 120,
        env=env,
    )
    if proc.returncode < 0:
        how = signal.Signals(-proc.returncode).name
    else:
        how = f"exit status {proc.returncode}"
    assert proc.returncode == 0, (
        f"deref/reset hammer died ({how}): a map was freed while still in use?\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr (last 3000 chars) ---\n{proc.stderr[-3000:]}"
    )
    print(f"hammer ({seconds:g}s): {proc.stdout.strip()}")
