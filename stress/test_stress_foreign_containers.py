"""Maps built from, updated from and compared with Python containers that other threads
mutate at the same time. Writers replace values with fresh floats, so the container holds
the only reference to the value it drops: an extension that keeps a borrowed reference
across that moment uses freed memory.

Allowed outcomes: a result consistent with *some* state of the container, or the
RuntimeError CPython itself raises for a dict that changed size during iteration.
"""

from __future__ import annotations

import threading
from collections import UserDict
from typing import Any, Callable, List

import pytest

from pypersistent import PersistentMap
from stress_support import Budget, expired, run_threads

N_KEYS = 48
KEYS = [f"k{i}" for i in range(N_KEYS)]


def fresh(i: int) -> float:
    # Never a cached or immortal object; the fraction tells writers' values apart.
    return float(i) + 0.25


def valid_value(v: Any) -> bool:
    return type(v) is float and (v % 1.0) in (0.25, 0.5)


def mutate_forever(container: Any, stop: Callable[[], bool], seed: int, resize: bool) -> int:
    """Replaces every value of container (dict, UserDict or list of [k, v] / (k, v)) with a
    fresh float, over and over; with resize, also adds and removes an extra dict key."""
    i = seed * 1_000_003
    rounds = 0
    while not stop():
        if isinstance(container, list):
            for j, item in enumerate(container):
                if isinstance(item, list):
                    item[1] = fresh(i)
                else:
                    container[j] = (item[0], fresh(i))
                i += 1
        else:
            for k in KEYS:
                container[k] = fresh(i)
                i += 1
            if resize:
                extra = f"extra{seed}"  # one per writer: only its writer adds and removes it
                container[extra] = 0.5
                del container[extra]
        rounds += 1
    return rounds


def run_readers_and_writers(
    budget: Budget, container: Any, read: Callable[[], None], resize: bool = False, reads_each: int = 0
) -> int:
    n_threads = budget.n(16, 48)
    n_writers = 4
    reads_each = reads_each or budget.n(60, 5000)
    deadline = budget.deadline()
    readers_left = [True] * n_threads

    def stop() -> bool:
        return expired(deadline) or not any(readers_left[n_writers:])

    def worker(index: int, _barrier: threading.Barrier) -> int:
        if index < n_writers:
            return mutate_forever(container, stop, index, resize)
        done = 0
        try:
            for _ in range(reads_each):
                if expired(deadline):
                    break
                read()
                done += 1
        finally:
            readers_left[index] = False
        return done

    results = run_threads(n_threads, worker, timeout=budget.join_timeout, name="foreign")
    reads = sum(results[n_writers:])
    assert reads > 0
    return reads


def check_map(m: Any, extras_allowed: bool = False) -> None:
    """m holds every key with a value some writer stored (plus, where the writers resize
    the dict, the extra keys they were holding at the time)."""
    for k in KEYS:
        assert valid_value(m[k])
    if extras_allowed:
        others = [k for k in m if k not in KEYS]
        assert all(k.startswith("extra") and m[k] == 0.5 for k in others), others
        assert len(m) == N_KEYS + len(others)
    else:
        assert len(m) == N_KEYS


# --------------------------------------------------------------------------------------
# Paths that lock the container or hold strong references: must be clean
# --------------------------------------------------------------------------------------


def test_build_and_update_from_dicts_mutated_meanwhile(budget: Budget) -> None:
    d = {k: 0.5 for k in KEYS}
    base = PersistentMap({k: 0.5 for k in KEYS})
    changed_size = [0]

    def read() -> None:
        try:
            for m in (PersistentMap(d), base.update(d), base | d, PersistentMap.from_dict(d)):
                check_map(m, extras_allowed=True)
            t = base.transient()
            t.update(d)
            check_map(t.persistent(), extras_allowed=True)
        except RuntimeError as exc:
            assert "changed size" in str(exc), exc
            changed_size[0] += 1

    run_readers_and_writers(budget, d, read, resize=True)


def test_compare_with_a_mapping_mutated_meanwhile(budget: Budget) -> None:
    """Not a dict: comparison goes through PyObject_GetItem, which returns new references."""
    u = UserDict({k: 0.5 for k in KEYS})
    m = PersistentMap({k: 0.5 for k in KEYS})

    def read() -> None:
        assert (m == u) in (True, False)
        assert (m != u) in (True, False)

    run_readers_and_writers(budget, u, read)


def test_build_from_a_list_of_tuples_mutated_meanwhile(budget: Budget) -> None:
    """The list's items are replaced by new tuples: iterating the list hands out strong
    references, and tuples never change."""
    pairs: List[Any] = [(k, 0.5) for k in KEYS]
    base = PersistentMap()

    def read() -> None:
        check_map(PersistentMap(pairs))
        check_map(base.update(pairs))

    run_readers_and_writers(budget, pairs, read)


# --------------------------------------------------------------------------------------
# Regression tests: borrowed references to other threads' containers (map_object.cpp)
# --------------------------------------------------------------------------------------


def test_compare_with_a_dict_mutated_meanwhile(budget: Budget) -> None:
    d = {k: 0.5 for k in KEYS}
    m = PersistentMap({k: 0.5 for k in KEYS})

    def read() -> None:
        assert (m == d) in (True, False)

    # The window is a few instructions wide: keep comparing for the whole phase cap.
    run_readers_and_writers(budget, d, read, reads_each=10**9)


def test_build_from_pair_lists_mutated_meanwhile(budget: Budget) -> None:
    pairs = [[k, 0.5] for k in KEYS]

    def read() -> None:
        check_map(PersistentMap(pairs))

    run_readers_and_writers(budget, pairs, read)
