"""Helpers shared by the stress scenarios: budgets, a barrier-started thread runner, and
key classes whose __hash__ / __eq__ are slow or raise.

Imported as a plain module: stress/ has no __init__.py, so pytest (prepend import mode)
puts this directory on sys.path.
"""

from __future__ import annotations

import dataclasses
import sys
import sysconfig
import threading
import time
import traceback
from typing import Any, Callable, List, Optional, TypeVar

T = TypeVar("T")

FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
TSAN_BUILD = "--with-thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or "")


def gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def describe_runtime() -> str:
    return (
        f"python {sys.version.split()[0]}, free-threaded build={FREE_THREADED_BUILD}, "
        f"GIL enabled={gil_enabled()}, TSan={TSAN_BUILD}"
    )


# --------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work a scenario does.

    n(short, long) picks an operation count; `seconds` caps each threaded phase: workers
    poll `expired(deadline)` and stop early, so a slow machine (TSan: ~10x) cannot run
    past the cap, while invariants are still checked on what was done.
    """

    mode: str
    seconds: float

    @classmethod
    def for_mode(cls, mode: str) -> "Budget":
        return cls(mode=mode, seconds=8.0 if mode == "short" else 120.0)

    @property
    def long(self) -> bool:
        return self.mode == "long"

    def n(self, short: int, long: int) -> int:
        return long if self.long else short

    def deadline(self) -> float:
        return time.monotonic() + self.seconds

    @property
    def join_timeout(self) -> float:
        # Generous: the cap is polled between operations, and one operation under TSan on
        # an overloaded 2-core machine can take a while.
        return self.seconds * 4 + 60


def expired(deadline: float) -> bool:
    return time.monotonic() >= deadline


# --------------------------------------------------------------------------------------
# Running threads
# --------------------------------------------------------------------------------------


class WorkerFailed(AssertionError):
    pass


def run_threads(
    n: int,
    worker: Callable[[int, threading.Barrier], T],
    *,
    timeout: float,
    name: str = "stress",
) -> List[T]:
    """Run worker(index, barrier) in n threads and return their results in index order.

    All threads are released together: each waits on a shared Barrier(n) before calling
    worker, and worker may wait on the same barrier again to start later phases together.
    If a worker raises, the barrier is aborted (so nobody hangs in a later phase) and the
    first real error is raised here with every thread's traceback attached. Threads still
    running after `timeout` seconds fail the test.
    """
    barrier = threading.Barrier(n)
    results: List[Any] = [None] * n
    errors: List[tuple] = []
    errors_lock = threading.Lock()

    def body(index: int) -> None:
        try:
            barrier.wait()
            results[index] = worker(index, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with errors_lock:
                errors.append((index, exc, traceback.format_exc()))
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,), name=f"{name}-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        raise WorkerFailed(f"{len(alive)} of {n} threads still running after {timeout:.0f}s: {alive[:8]}")
    if errors:
        # A BrokenBarrierError is only the echo of another thread's failure.
        errors.sort(key=lambda e: (isinstance(e[1], threading.BrokenBarrierError), e[0]))
        index, exc, _ = errors[0]
        details = "\n".join(f"--- thread {i} ---\n{tb}" for i, _, tb in errors[:6])
        raise WorkerFailed(f"thread {index} failed: {exc!r} ({len(errors)} thread(s) failed)\n{details}") from exc
    return results


# --------------------------------------------------------------------------------------
# Per-thread state read by the hostile keys
# --------------------------------------------------------------------------------------

_local = threading.local()


def set_mood(mood: Optional[str], nonce: Any = None) -> None:
    """What MoodyKey does in the calling thread: None (behave), 'slow' (sleep(0) in
    __hash__/__eq__, which detaches the thread and so suspends critical sections), 'spin'
    (burn a little CPU), 'hash' (__hash__ raises Boom), 'eq' (__eq__ raises Boom).
    `nonce` is stored in every Boom raised, to check it reached the right call."""
    _local.mood = mood
    _local.nonce = nonce


def current_mood() -> Optional[str]:
    return getattr(_local, "mood", None)


class Boom(Exception):
    """Raised by MoodyKey; carries where it was raised, the raising thread, and its nonce."""

    def __init__(self, where: str, ident: int, nonce: Any) -> None:
        super().__init__(where, ident, nonce)
        self.where = where
        self.ident = ident
        self.nonce = nonce


def _dawdle(mood: Optional[str]) -> None:
    if mood == "slow":
        time.sleep(0)
    elif mood == "spin":
        x = 0
        for i in range(40):
            x += i


class MoodyKey:
    """A key whose __hash__ / __eq__ behave according to the *calling* thread's mood (see
    set_mood), so one key object can raise in one thread while working in another.

    hash(MoodyKey(v)) == v % buckets: with a small `buckets` many keys share a full hash
    and lookups must call __eq__. Equal values make equal keys (a fresh, equal key makes
    the map call __eq__, since identical objects compare equal without it).
    """

    __slots__ = ("value", "buckets")

    def __init__(self, value: int, buckets: int = 1 << 30) -> None:
        self.value = value
        self.buckets = buckets

    def __hash__(self) -> int:
        mood = current_mood()
        if mood == "hash":
            raise Boom("hash", threading.get_ident(), getattr(_local, "nonce", None))
        _dawdle(mood)
        return self.value % self.buckets

    def __eq__(self, other: object) -> bool:
        if type(other) is not MoodyKey:
            return NotImplemented
        mood = current_mood()
        if mood == "eq":
            raise Boom("eq", threading.get_ident(), getattr(_local, "nonce", None))
        _dawdle(mood)
        return self.value == other.value  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __repr__(self) -> str:
        return f"MoodyKey({self.value}, %{self.buckets})"


class SlowKey:
    """A key whose __hash__ and __eq__ always sleep(0): the thread detaches its state inside
    every call, so another thread may enter an object whose critical section was held.
    hash = value % buckets (collisions force __eq__ calls)."""

    __slots__ = ("value", "buckets")

    def __init__(self, value: int, buckets: int = 1 << 30) -> None:
        self.value = value
        self.buckets = buckets

    def __hash__(self) -> int:
        time.sleep(0)
        return self.value % self.buckets

    def __eq__(self, other: object) -> bool:
        if type(other) is not SlowKey:
            return NotImplemented
        time.sleep(0)
        return self.value == other.value  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __repr__(self) -> str:
        return f"SlowKey({self.value})"


class CollidingKey:
    """A well-behaved key with a tiny hash range (hash = value % 4): whole-hash collisions,
    so collision nodes whose entry order depends on insertion order."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value) % 4

    def __eq__(self, other: object) -> bool:
        if type(other) is not CollidingKey:
            return NotImplemented
        return bool(self.value == other.value)  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __repr__(self) -> str:
        return f"CollidingKey({self.value!r})"


class Payload:
    """A weak-referenceable value, to check that maps release what they held."""

    __slots__ = ("tag", "ref", "__weakref__")

    def __init__(self, tag: Any, ref: Any = None) -> None:
        self.tag = tag
        self.ref = ref  # may point back at a map: a reference cycle through the map

    def __repr__(self) -> str:
        return f"Payload({self.tag!r})"


def check_boom(exc: BaseException, where: str, nonce: Any) -> None:
    """exc must be the Boom this thread's key raised for the call tagged `nonce`."""
    assert isinstance(exc, Boom), f"expected Boom, got {exc!r}"
    assert exc.where == where, f"Boom from {exc.where}, expected {where}"
    assert exc.ident == threading.get_ident(), "exception raised in another thread reached this one"
    assert exc.nonce == nonce, f"exception of call {exc.nonce!r} surfaced in call {nonce!r}"
