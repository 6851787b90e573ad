"""The collector's census of shared nodes (src/gc_census.cpp) under threads.

Workers derive versions of shared maps and build cycles through shared nodes (objects whose
history of versions refers back to them), some kept alive from a shared registry, while other
threads run gc.collect() of every generation, gc.get_referents() on shared maps (a traversal
that runs without stopping the world on free-threaded builds) and, as a hostile user might,
call the census callback by hand. Checked: every object reachable from the registry is intact
after each collection (a shared node counted once per map would clear live objects), and at
the end, with the registry dropped, everything is collected.
"""

from __future__ import annotations

import gc
import random
import threading
import weakref
from typing import Any, List

from pypersistent import PersistentMap
from stress_support import Budget, expired, run_threads

SEED = 515


class Owner:
    __slots__ = ("token", "history", "__weakref__")

    def __init__(self, token: int) -> None:
        self.token = token
        self.history: List[Any] = []


def census_callback() -> Any:
    found = [cb for cb in gc.callbacks if getattr(cb, "__name__", "") == "_gc_census"]
    assert found, "pypersistent registers its census in gc.callbacks"
    return found[0]


def test_cycles_through_shared_nodes_under_threads_and_collections(budget: Budget) -> None:
    n_workers = budget.n(4, 12)
    ops = budget.n(300, 20000)
    base = PersistentMap({i: [i] for i in range(400)})
    registry: List[Owner] = []
    registry_lock = threading.Lock()
    refs: List[Any] = []
    refs_lock = threading.Lock()
    deadline = budget.deadline()
    done = threading.Event()
    callback = census_callback()

    def check_registry() -> None:
        with registry_lock:
            owners = list(registry)
        for owner in owners:
            for version in owner.history:
                assert version["owner"] is owner, "a reachable owner's versions were cleared"
                assert version[399] == [399]
                assert len(version) == len(list(version))

    def worker(index: int, _barrier: threading.Barrier) -> int:
        rng = random.Random(SEED + index)
        made = 0
        if index == 0:  # the collector
            while not done.is_set() and not expired(deadline):
                gc.collect(rng.randrange(3))
                check_registry()
            return 0
        if index == 1:  # traversals outside collections, and hand-made census calls
            while not done.is_set() and not expired(deadline):
                gc.get_referents(base.set(rng.randrange(400), "x"))
                if rng.random() < 0.05:
                    callback(rng.choice(["start", "stop"]), {})
            callback("stop", {})
            return 0
        for i in range(ops):
            if expired(deadline):
                break
            owner = Owner(index * 1_000_000 + i)
            m = base.set("owner", owner)
            for j in range(rng.randrange(1, 6)):
                m = m.set(rng.randrange(399), owner)  # key 399 keeps [399]: checked above
                owner.history.append(m)
            with refs_lock:
                refs.append(weakref.ref(owner))
            if rng.random() < 0.1:
                with registry_lock:
                    registry.append(owner)
                    if len(registry) > 50:
                        registry.pop(rng.randrange(len(registry)))
            made += 1
        return made

    results = run_threads(n_workers + 2, worker, timeout=budget.join_timeout, name="gc-census")
    done.set()
    assert sum(results) > 0
    check_registry()
    registry.clear()
    for _ in range(3):
        gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} owners were not collected"
