"""Worker threads publish progress into an Atom while a monitor reads consistent snapshots.

Each worker processes its share of items and, after each one, swaps the shared state: it
bumps its own progress counter *and* the shared total in one update. The monitor thread
never locks anything: every deref() is one complete version of the state, so the total
always equals the sum of the per-worker counters, however the workers interleave.

Run it: python examples/worker_snapshots.py [--workers N] [--items N] [--work S] [--seconds S]
(defaults: 4 workers, 400 items each taking ~2 ms, capped at 2 s: about a second in all)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from pypersistent import Atom, PersistentMap


def record_progress(state: PersistentMap, worker: str, done: int) -> PersistentMap:
    """One update: this worker's counter and the total move together.

    swap() may call this more than once (when another worker published first), so it only
    computes a new map from the one it is given and has no side effects.
    """
    progress = state["progress"]
    return state.update(
        progress=progress.set(worker, progress[worker] + done),
        total=state["total"] + done,
    )


def check(snapshot: PersistentMap) -> tuple[int, int]:
    """Returns (total, sum of per-worker progress); raises if they disagree."""
    total = snapshot["total"]
    summed = sum(snapshot["progress"].values())
    if total != summed:
        raise AssertionError(f"inconsistent snapshot: total={total} but workers sum to {summed}")
    return total, summed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--items", type=int, default=400, help="items per worker")
    parser.add_argument("--work", type=float, default=0.002, help="seconds of simulated work per item")
    parser.add_argument("--seconds", type=float, default=2.0, help="time cap for the workers")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between printed snapshots")
    args = parser.parse_args(argv)

    names = [f"worker-{i}" for i in range(args.workers)]
    state = Atom(PersistentMap(progress=PersistentMap.fromkeys(names, 0), total=0))
    start = threading.Barrier(args.workers + 1)  # the workers and the monitor start together
    deadline = time.monotonic() + args.seconds
    finished = threading.Event()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            for _ in range(args.items):
                if time.monotonic() >= deadline:
                    break
                time.sleep(args.work)  # ... process one item here ...
                state.swap(record_progress, name, 1)
        except BaseException as exc:  # noqa: BLE001 - reported by main
            errors.append(exc)
            start.abort()

    def monitor() -> None:
        try:
            start.wait()
            snapshots = 0
            next_print = time.monotonic()
            while not finished.is_set():
                snapshot = state.deref()  # one consistent version, no lock
                total, _ = check(snapshot)
                snapshots += 1
                if time.monotonic() >= next_print:
                    per_worker = ", ".join(f"{k}={v}" for k, v in sorted(snapshot["progress"].items()))
                    print(f"snapshot: total={total} == sum({per_worker})  [consistent]", flush=True)
                    next_print += args.every
                time.sleep(0.001)
            print(f"monitor: checked {snapshots} snapshots, all consistent", flush=True)
        except BaseException as exc:  # noqa: BLE001 - reported by main
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(n,), name=n) for n in names]
    watcher = threading.Thread(target=monitor, name="monitor")
    for t in [*threads, watcher]:
        t.start()
    join_by = time.monotonic() + args.seconds + 60
    for t in threads:
        t.join(max(0.0, join_by - time.monotonic()))
    finished.set()
    watcher.join(max(0.0, join_by - time.monotonic()))
    if any(t.is_alive() for t in [*threads, watcher]):
        print("error: threads did not finish in time", file=sys.stderr)
        return 1
    if errors:
        print(f"error: {errors[0]!r}", file=sys.stderr)
        return 1

    final = state.deref()
    total, summed = check(final)
    print("per-worker progress:", dict(sorted(final["progress"].items())))
    print(f"final: total={total}, sum of workers={summed}, workers={len(names)}: consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
