"""The Python half of examples/embed: threads that derive map versions and publish them
through a pypersistent.Atom, while the C++ host (main.cpp) reads the same Atom from its own
threads.

The host runs this file with these globals set:

    atom     a pypersistent.Atom holding a PersistentMap of ENTRIES int keys, entry k -> k,
             built in C++ and handed over without copying
    THREADS  how many Python threads to start
    STEPS    how many versions each thread publishes
    ENTRIES  the number of int entries

and reads back `result` (a dict). Standalone (`python workers.py`) it builds the map itself.

Each step of worker w is one Atom.swap(): counter key "counter:w" goes up by one, "total" goes
up by one, and the int entry w + THREADS * (n - 1) (n: the new counter) becomes -k - 1. So
every version ever published satisfies, and the host checks on its snapshots:

    len(map) == ENTRIES + (counters present) + (1 if "total" present)
    map["total"] == sum of the counters
    for each worker, entries w + THREADS * j (j < counter) are modified, the next one is not
"""

import threading

from pypersistent import Atom, PersistentMap

TOTAL = "total"


def counter_key(worker):
    return f"counter:{worker}"


def touched_key(worker, n, threads):
    """The int entry that worker's n-th step (n counting from 1) modifies."""
    return worker + threads * (n - 1)


def step(current, worker, *, threads):
    """One version: called by Atom.swap, possibly several times when other threads win the
    race, so it only computes (no side effects)."""
    n = current.get(counter_key(worker), 0) + 1
    k = touched_key(worker, n, threads)
    return current.set(counter_key(worker), n).set(TOTAL, current.get(TOTAL, 0) + 1).set(k, -k - 1)


def check(m, threads, entries):
    """The invariants above, in Python (the host checks the same ones in C++)."""
    counters = [m.get(counter_key(w), 0) for w in range(threads)]
    present = sum(counter_key(w) in m for w in range(threads)) + (TOTAL in m)
    assert len(m) == entries + present, (len(m), entries, present)
    assert m.get(TOTAL, 0) == sum(counters), (m.get(TOTAL), counters)
    for w, c in enumerate(counters):
        for n in range(1, c + 1):
            k = touched_key(w, n, threads)
            assert m[k] == -k - 1, (w, n, k, m[k])
        following = touched_key(w, c + 1, threads)
        if following < entries:
            assert m[following] == following, (w, following, m[following])
    return counters


def run(atom, threads, steps, entries):
    assert threads * steps <= entries, "every step must modify a distinct entry"
    start = threading.Barrier(threads + 1)
    errors = []

    def worker(w):
        try:
            start.wait()
            for i in range(steps):
                atom.swap(step, w, threads=threads)
                if i % 64 == 0:  # Python reads consistent snapshots too
                    assert atom.deref().get(counter_key(w), 0) >= i + 1
        except BaseException as e:  # reported by the host
            errors.append(f"worker {w}: {e!r}")

    pool = [threading.Thread(target=worker, args=(w,), name=f"worker-{w}") for w in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    for t in pool:
        t.join()
    if errors:
        raise AssertionError("; ".join(errors))

    final = atom.deref()
    counters = check(final, threads, entries)
    assert counters == [steps] * threads, counters
    return {"threads": threads, "steps": steps, "total": final[TOTAL], "size": len(final)}


if __name__ == "__main__":
    THREADS, STEPS, ENTRIES = 4, 500, 100_000
    atom = Atom(PersistentMap((k, k) for k in range(ENTRIES)))

if __name__ in ("__main__", "__embed__"):
    result = run(atom, THREADS, STEPS, ENTRIES)  # noqa: F821 (globals set by the host)
    print(f"workers.py: {result['threads']} Python threads published {result['total']} versions; "
          f"final map has {result['size']} entries", flush=True)
