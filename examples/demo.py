"""A tour of PersistentMap: versions that share structure, transients, and lock-free sharing
between threads. Run it: python examples/demo.py"""

import sys
import threading

from pypersistent import PersistentMap

# Every update returns a new map; the old one never changes.
v1 = PersistentMap(name="pypersistent", kind="map")
v2 = v1.set("version", 1).delete("kind")
print("v1:", v1)
print("v2:", v2)
assert "kind" in v1 and "kind" not in v2

# Keeping thousands of versions is cheap: each one shares all untouched nodes.
history = [PersistentMap.from_dict({i: i * i for i in range(10_000)})]
for step in range(1_000):
    history.append(history[-1].set(step, -step))
print("versions kept:", len(history), "- oldest still intact:", history[0][999] == 999 * 999)

# Bulk edits go through a transient, then freeze in O(1).
with history[-1].transient() as t:
    for i in range(10_000, 20_000):
        t[i] = i
    bigger = t.persistent()
print("bulk-built map of", len(bigger), "entries")

# Threads share maps with no lock: each reads the version it holds, whatever others derive.
snapshot = bigger
errors = []


def reader(offset: int) -> None:
    mine = snapshot
    derived = mine
    for i in range(offset, 20_000, 8):
        if mine[i] != (i * i if i < 10_000 else i) and i >= 1_000:
            errors.append(i)
        derived = derived.set(i, "changed")
    assert len(derived) == len(mine)


threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print("8 threads read and derived versions, errors:", len(errors))

gil = getattr(sys, "_is_gil_enabled", lambda: True)()
print("GIL enabled:", gil)
