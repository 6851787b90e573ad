"""The harness shared by the adversarial fuzzers (tests/adversarial_fuzz.py for the map,
tests/adversarial_fuzz_collections.py for sets and lists).

A fuzzer module keeps what is its own: its hostile objects and trait bits, its versions and
checks, its operations. It describes itself in a ``Fuzzer`` and gets from here what every
fuzzer needs the same way:

* the exceptions hostile code raises on purpose (``Hostile``...), and ``CATCH``;
* the per-thread context ``Ctx`` (``ctx()``), the state of a run ``State``, and the count of
  live hostile instances (``instance_counter()``, ``live_instances()``);
* failure records (``fail()``) and expected exceptions (``classify()``, ``absorb()``,
  ``attempt()``, ``attempt_exc()``, ``FAILED``);
* the trait bits of hostile ``__hash__``/``__eq__`` (``T_HASH_RAISE``...) and what those do
  (``hostile_hash()``, ``hostile_eq()``, ``BadBool``, ``raise_hostile()``), the body of a
  hostile ``__del__`` (``hostile_del()``);
* the hostile actions every fuzzer takes (``hostile()``: flip the mode, collect garbage,
  drop references, re-enter through the fuzzer's ``reenter``), the registry (``reg_add()``,
  ``drop_refs()``), hostile weakref callbacks (``watch()``), and the operations every table
  lists (``op_drop``, ``op_gc``, ``op_flip``);
* the checks every fuzzer makes (``check_pool()``, ``verify_shared_iter()``,
  ``expect_finished()``);
* the driver: worker threads drawing operations from the fuzzer's table, the flipper thread,
  the end-of-run leak check, the report (``Result``) and the command line (``main()``).

One run at a time per process, whichever fuzzer: the run, the contexts and the instance
counters live here, and the fuzzers' hostile objects reach them through these functions.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import gc
import os
import random
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional

MAX_DEPTH = 2  # nesting of hostile re-entry per thread


class Hostile(Exception):
    """Raised on purpose by hostile code."""


class HostileMemoryError(MemoryError):
    """Raised on purpose: C code sometimes treats MemoryError specially."""


class HostileBase(BaseException):
    """Raised on purpose: not an Exception (like KeyboardInterrupt)."""


#: What the fuzzer catches around each call: everything hostile code may raise.
CATCH = (Exception, HostileBase)

# The trait bits of hostile __hash__/__eq__ every fuzzer numbers alike (bits 0 to 5); a fuzzer
# numbers its other traits, its action traits among them, from bit 6 on.
T_HASH_RAISE = 1 << 0
T_HASH_VARY = 1 << 1
T_EQ_RAISE = 1 << 2
T_EQ_RANDOM = 1 << 3
T_EQ_FLIP = 1 << 4
T_EQ_BADBOOL = 1 << 5


class ActionTraits(NamedTuple):
    """The trait bits (in a fuzzer's own layout) that make hostile() act."""

    flip: int  # rewrite the shared mode
    gc: int  # gc.collect()
    drop: int  # drop registry entries and pool versions
    reenter: int  # the fuzzer's reenter()

    @property
    def all(self) -> int:
        return self.flip | self.gc | self.drop | self.reenter


@dataclass(frozen=True)
class Fuzzer:
    """What one fuzzer plugs into the harness."""

    name: str  # its module's name, for messages ("adversarial_fuzz")
    script: str  # its path from the repository root, for replay commands
    title: str  # the start of its banner line
    doc: str  # its module docstring: the first paragraph is the --help description
    known_bug_features: Dict[str, str]  # --exclude names; 'known' names them all
    features: Dict[str, str]  # other --exclude names
    known_failure_kinds: tuple  # failure kinds reported as "(known bug)"
    mode: list  # the shared hostile mode word MODE: a trait acts only while its bit is set
    n_traits: int
    actions: ActionTraits
    ctx_type: type  # a Ctx subclass
    state_type: type  # a State subclass
    hostile_types: tuple  # the classes whose instances must all be gone at the end
    ops: list  # (operation, weight, feature or None): the operations the workers draw from
    reenter: Callable[[Any, Any], None]  # reenter(c, st): hostile code calls into the API
    check_version: Callable[[Any], bool]  # a pool version still matches its snapshot
    atom_types: tuple  # what an Atom of the run may hold
    expected_extra: tuple  # exceptions a step or hostile code may raise besides classify()'s
    callback_expected_extra: tuple  # ... and a weakref callback
    transient_noun: str  # in expect_finished()'s failures
    iter_nouns: tuple  # (one item, items, its source): in verify_shared_iter()'s failures
    replay_options: str = ""  # added to a replay command after --steps


# --------------------------------------------------------------------------------------
# The run, per-thread contexts, live hostile instances
# --------------------------------------------------------------------------------------

_STATE: Optional["State"] = None
_tls = threading.local()
_COUNTS: List[List[int]] = []  # one [created, deleted] per thread; only its owner writes it


def instance_counter() -> List[int]:
    """This thread's [created, deleted] counts of hostile instances: a hostile class adds 1 to
    [0] in __init__ and to [1] in __del__."""
    try:
        return _tls.counter
    except AttributeError:
        cnt = _tls.counter = [0, 0]
        _COUNTS.append(cnt)
        return cnt


def live_instances() -> int:
    """Hostile instances created and not yet finalized (all runs of this process)."""
    return sum(c[0] - c[1] for c in list(_COUNTS))


def active_state() -> Optional["State"]:
    """The state of the run in progress, None outside a run or after its final checks began:
    hostile code acts only while this is not None."""
    st = _STATE
    return st if st is not None and st.active else None


class Ctx:
    """What one thread is doing: its random source, the objects hostile code may re-enter,
    its counters. A fuzzer's subclass adds the objects its own re-entry and checks need."""

    def __init__(self, st: "State", index: int, seed: int) -> None:
        self.run = st
        self.index = index
        self.rng = random.Random(seed)
        self.depth = 0
        self.step = 0
        self.op = "-"
        self.cur_obj: Any = None  # the map, set or list being operated on
        self.cur_transient: Any = None  # the transient being edited by this thread
        self.cur_source: Any = None  # the list/dict being read
        self.src_mutated = False  # hostile code changed cur_source this step
        self.ops = 0
        self.steps = 0
        self.expected: collections.Counter = collections.Counter()
        self.hostile: collections.Counter = collections.Counter()  # hostile actions taken

    def clear(self) -> None:
        """Forget the step's objects (after each step). A subclass drops its own after these: the
        order in which they are dropped is the order in which hostile finalizers run, so a
        change of it changes what a seed replays."""
        self.cur_obj = self.cur_transient = self.cur_source = None
        self.src_mutated = False


def ctx() -> Ctx:
    """This thread's context in the current run."""
    c = getattr(_tls, "ctx", None)
    st = _STATE
    if c is None or (st is not None and c.run is not st):
        # A thread that is not a worker (the flipper, a finalizer run at teardown).
        seed = (st.seed if st else 0) * 1_000_003 + threading.get_ident() % 1_000_003
        c = (st.fuzzer.ctx_type if st else Ctx)(st, -1, seed)
        _tls.ctx = c
        if st is not None:
            st.ctxs.append(c)
    return c


class State:
    """The shared state of one run. A fuzzer's subclass adds its shared hostile objects."""

    def __init__(self, fuzzer: Fuzzer, seed: int, threads: int, excluded: set, pool_cap: int, stop_on_failure: bool) -> None:
        self.fuzzer = fuzzer
        self.seed = seed
        self.threads = threads
        self.excluded = excluded
        self.pool_cap = pool_cap
        self.stop_on_failure = stop_on_failure
        self.active = True
        self.stop = False
        self.pool: list = []  # the live versions, checked after every step
        self.reg: list = []  # objects only hostile code drops: maps, transients, iterators...
        self.reg_cap = 48
        self.atoms: list = []
        self.shared_iters: list = []
        self.weakrefs: list = []  # weakrefs with hostile callbacks
        self.failures: List[Failure] = []
        self.ctxs: List[Ctx] = []
        self.trace_fd: Optional[int] = None
        self.deadline = float("inf")

    def allows(self, feature: str) -> bool:
        return feature not in self.excluded

    def populate(self, rng: random.Random) -> None:
        """Make the shared hostile objects and the Atoms (at the start of the run)."""
        raise NotImplementedError

    def flippable(self) -> list:
        """The shared hostile objects whose traits are toggled while the run goes on."""
        raise NotImplementedError

    def drop_shared(self) -> None:
        """Drop the shared hostile objects (at the end of the run, before the leak check)."""
        raise NotImplementedError


def trace(c: Ctx) -> None:
    fd = c.run.trace_fd
    if fd is not None:
        try:
            os.write(fd, f"thread {c.index} step {c.step} {c.op}\n".encode())
        except OSError:
            pass


# --------------------------------------------------------------------------------------
# Failures, expected exceptions
# --------------------------------------------------------------------------------------


class Failure:
    def __init__(self, c: Ctx, kind: str, msg: str, tb: str, known: bool) -> None:
        self.thread = c.index
        self.step = c.step
        self.op = c.op
        self.kind = kind
        self.msg = msg
        self.tb = tb
        self.known = known

    def describe(self, seed: int) -> str:
        known = " (known bug)" if self.known else ""
        return (
            f"FAILURE{known} [{self.kind}] seed={seed} thread={self.thread} step={self.step} "
            f"op={self.op}: {self.msg}\n{self.tb}"
        )


def fail(kind: str, msg: str, tb: Optional[str] = None) -> None:
    c = ctx()
    st = c.run or _STATE
    if tb is None:
        tb = "".join(traceback.format_stack(limit=6)[:-1])
    rec = Failure(c, kind, msg, tb, st is not None and kind in st.fuzzer.known_failure_kinds)
    if st is not None:
        st.failures.append(rec)
        if st.stop_on_failure:
            st.stop = True
    else:  # pragma: no cover - outside a run
        sys.stderr.write(rec.describe(-1) + "\n")


EXPECTED_RUNTIME_MESSAGES = (
    ("two places at once", "RuntimeError(busy)"),
    ("is finished", "RuntimeError(finished)"),
    ("in use by another thread", "RuntimeError(busy)"),
    ("changed size during iteration", "RuntimeError(source changed)"),
    ("Atom was cleared", "RuntimeError(atom cleared)"),
)


def classify(e: BaseException, extra: tuple = ()) -> Optional[str]:
    """The counter name of an expected exception, None for an unexpected one."""
    if isinstance(e, Hostile):
        return "Hostile"
    if isinstance(e, HostileMemoryError):
        return "Hostile(MemoryError)"
    if isinstance(e, HostileBase):
        return "Hostile(BaseException)"
    if isinstance(e, RecursionError):
        return "RecursionError"
    if isinstance(e, RuntimeError):
        s = str(e)
        for m, name in EXPECTED_RUNTIME_MESSAGES:
            if m in s:
                return name
        return None
    if isinstance(e, TypeError):
        return "TypeError"
    for t in extra:
        if isinstance(e, t):
            return type(e).__name__
    return None


def absorb(c: Ctx, e: BaseException, extra: tuple = ()) -> Optional[str]:
    name = classify(e, extra)
    if name is None:
        fail(
            "unexpected-exception",
            f"{type(e).__name__}: {e!s:.300}",
            "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=12)),
        )
        return None
    c.expected[name] += 1
    return name


class _FailedType:
    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _FailedType()


def attempt(fn: Callable, *args: Any, _extra: tuple = (), _forbid: tuple = (), _what: str = "") -> Any:
    """fn(*args), or FAILED after counting an expected exception / recording a failure.
    Exceptions of the types in _forbid are failures even where they are expected elsewhere."""
    c = ctx()
    c.ops += 1
    try:
        return fn(*args)
    except CATCH as e:
        if _forbid and isinstance(e, _forbid):
            fail(
                "wrong-exception",
                f"{_what or getattr(fn, '__name__', 'call')}: {type(e).__name__}: {e!s:.300}",
                "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=12)),
            )
        else:
            absorb(c, e, _extra)
        return FAILED


def attempt_exc(fn: Callable, *args: Any, _extra: tuple = ()) -> tuple:
    """(result, None) or (FAILED, exception) after counting it like attempt()."""
    c = ctx()
    c.ops += 1
    try:
        return fn(*args), None
    except CATCH as e:
        absorb(c, e, _extra)
        return FAILED, e


# --------------------------------------------------------------------------------------
# Hostile actions, the registry, weakref callbacks
# --------------------------------------------------------------------------------------


def hostile(c: Ctx, st: State, act: int) -> None:
    """Run the hostile actions `act` enables (each with some probability)."""
    if c.depth >= MAX_DEPTH or not st.active:
        return
    fuzzer = st.fuzzer
    actions = fuzzer.actions
    rng = c.rng
    c.depth += 1
    try:
        if act & actions.flip and rng.random() < 0.2:
            c.hostile["flip"] += 1
            fuzzer.mode[0] = rng.getrandbits(fuzzer.n_traits)
        if act & actions.gc and rng.random() < 0.02:
            c.hostile["gc"] += 1
            c.ops += 1
            gc.collect()
        if act & actions.drop and rng.random() < 0.3:
            c.hostile["drop"] += 1
            drop_refs(c, st)
        if act & actions.reenter and rng.random() < 0.35:
            c.hostile["reenter"] += 1
            fuzzer.reenter(c, st)
    except CATCH as e:
        absorb(c, e, fuzzer.expected_extra)
    finally:
        c.depth -= 1
    if act & actions.reenter and rng.random() < 0.05:
        raise Hostile("after re-entering")


def raise_hostile(c: Ctx, what: str) -> None:
    """Raise Hostile, rarely a MemoryError or a BaseException subclass."""
    r = c.rng.random()
    if r < 0.05:
        raise HostileBase(what)
    if r < 0.1:
        raise HostileMemoryError(what)
    raise Hostile(what)


class BadBool:
    """Returned by a hostile comparison: its truth value raises (after maybe re-entering)."""

    __slots__ = ("act",)

    def __init__(self, act: int) -> None:
        self.act = act

    def __bool__(self) -> bool:
        st = active_state()
        if st is not None:
            hostile(ctx(), st, self.act)
        raise Hostile("__bool__")


def hostile_hash(obj: Any, act: int) -> int:
    """obj.__hash__ (obj.h when behaving) while the traits `act` are on."""
    st = active_state()
    if st is None:
        return obj.h
    c = ctx()
    if act & st.fuzzer.actions.all:
        hostile(c, st, act)
    rng = c.rng
    if act & T_HASH_RAISE and rng.random() < 0.25:
        c.hostile["hash-raise"] += 1
        raise Hostile("__hash__")
    if act & T_HASH_VARY and rng.random() < 0.5:
        c.hostile["hash-vary"] += 1
        r = rng.random()
        if r < 0.9:
            return obj.h + 1
        return -1 if r < 0.95 else obj.h + (1 << 64)  # hash() makes these -2 and h + 1 (mod 2**61 - 1)
    return obj.h


def hostile_eq(obj: Any, other: Any, act: int) -> Any:
    """obj.__eq__(other) (equal n and class when behaving) while the traits `act` are on."""
    normal = type(other) is type(obj) and obj.n == other.n
    st = active_state()
    if st is None:
        return normal
    c = ctx()
    if act & st.fuzzer.actions.all:
        hostile(c, st, act)
    rng = c.rng
    if act & T_EQ_RAISE and rng.random() < 0.25:
        c.hostile["eq-raise"] += 1
        raise_hostile(c, "__eq__")
    if act & T_EQ_BADBOOL and rng.random() < 0.25:
        c.hostile["eq-badbool"] += 1
        return BadBool(act)
    if act & T_EQ_FLIP:
        c.hostile["eq-flip"] += 1
        obj.flip ^= 1  # a different answer on each call, for any pair
        return bool(obj.flip)
    if act & T_EQ_RANDOM:
        c.hostile["eq-random"] += 1
        r = rng.random()
        return NotImplemented if r < 0.1 else r < 0.55
    return normal


def hostile_del(act: int) -> None:
    """The body of a hostile __del__ whose delete trait is on: drops references and more."""
    st = active_state()
    if st is None:
        return
    c = ctx()
    c.hostile["del"] += 1
    try:
        hostile(c, st, act | st.fuzzer.actions.drop)
    except CATCH as e:  # a finalizer must not raise; still classify it
        absorb(c, e)


def drop_refs(c: Ctx, st: State) -> None:
    """Drop the last references to some registry objects, or to a pool version."""
    rng = c.rng
    x = rng.random()
    if x < 0.2:
        st.reg.clear()
    elif x < 0.75:
        for _ in range(rng.randrange(1, 6)):
            try:
                st.reg.pop(rng.randrange(len(st.reg)))
            except (IndexError, ValueError):
                break
    else:
        try:
            st.pool.pop(rng.randrange(len(st.pool)))
        except (IndexError, ValueError):
            pass


def reg_add(st: State, obj: Any, rng: random.Random) -> None:
    """Keep obj in the registry (only hostile code and the cap drop it)."""
    st.reg.append(obj)
    if len(st.reg) > st.reg_cap:
        try:
            st.reg.pop(rng.randrange(len(st.reg)))
        except (IndexError, ValueError):
            pass


def _weakref_callback(ref: Any) -> None:
    """Runs while an object of the API is being deallocated: hostile too."""
    st = active_state()
    if st is None:
        return
    c = ctx()
    c.hostile["weakref-callback"] += 1
    try:
        hostile(c, st, st.fuzzer.actions.all)
    except CATCH as e:
        absorb(c, e, st.fuzzer.callback_expected_extra)


def watch(st: State, obj: Any, rng: random.Random) -> None:
    """Sometimes attach a hostile weakref callback to obj (kept in st.weakrefs)."""
    if rng.random() < 0.1:
        st.weakrefs.append(weakref.ref(obj, _weakref_callback))
        if len(st.weakrefs) > 256:
            del st.weakrefs[:128]


# --------------------------------------------------------------------------------------
# Checks every fuzzer makes
# --------------------------------------------------------------------------------------


def check_pool(c: Ctx) -> None:
    """After every step: every pool version matches its snapshot, every Atom holds what it may."""
    st = c.run
    for v in list(st.pool):
        if not st.fuzzer.check_version(v):
            return
    for a in list(st.atoms):
        cur = a.deref()
        if type(cur) not in st.fuzzer.atom_types:
            fail("check", f"Atom holds a {type(cur).__name__}")


def verify_shared_iter(st: State, rec: Any, final: bool) -> None:
    """A shared iterator (rec: got, expected, exhausted) handed out each item at most once, and
    all of them if it ended."""
    item, items, source = st.fuzzer.iter_nouns
    got = collections.Counter(rec.got)
    if got - rec.expected:
        fail("check", f"a shared iterator handed out an {item} twice or one not in {source}")
    elif final and rec.exhausted and got != rec.expected:
        fail("check", f"a shared iterator ended after {len(rec.got)} of {sum(rec.expected.values())} {items}")


def expect_finished(what: str, fn: Callable, *args: Any) -> None:
    """fn(*args) on a finished transient must raise RuntimeError (finished) before it looks
    at its arguments."""
    c = ctx()
    c.ops += 1
    noun = c.run.fuzzer.transient_noun
    try:
        fn(*args)
    except RuntimeError as e:
        if classify(e) == "RuntimeError(finished)":
            c.expected["RuntimeError(finished)"] += 1
            return
        fail("check", f"{what} on a finished {noun} raised {type(e).__name__}: {e}")
        return
    except Exception as e:
        fail("check", f"{what} on a finished {noun} raised {type(e).__name__}, not RuntimeError: {e!s:.200}")
        return
    fail("check", f"{what} on a finished {noun} did not raise")


# --------------------------------------------------------------------------------------
# Operations every fuzzer's table lists
# --------------------------------------------------------------------------------------


def op_drop(c: Ctx, st: State) -> None:
    drop_refs(c, st)


def op_gc(c: Ctx, st: State) -> None:
    c.ops += 1
    gc.collect()


def op_flip(c: Ctx, st: State) -> None:
    st.fuzzer.mode[0] = c.rng.getrandbits(st.fuzzer.n_traits)


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


class Result:
    def __init__(self, fuzzer: Fuzzer) -> None:
        self.fuzzer = fuzzer
        self.seed = 0
        self.threads = 1
        self.steps = 0
        self.ops = 0
        self.elapsed = 0.0
        self.expected: collections.Counter = collections.Counter()
        self.hostile: collections.Counter = collections.Counter()
        self.failures: List[Failure] = []
        self.leaked = 0
        self.unfinalized = 0  # instances freed without their __del__ body running (see run())
        self.leak_details = ""
        self.excluded: List[str] = []

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self, max_failures: int = 8) -> str:
        lines = []
        rate = self.ops / self.elapsed if self.elapsed > 0 else 0.0
        lines.append(
            f"seed={self.seed} threads={self.threads} excluded={','.join(self.excluded) or '-'} "
            f"elapsed={self.elapsed:.1f}s ({self.steps / max(self.elapsed, 1e-9):.0f} steps/s, {rate:.0f} ops/s)"
        )
        lines.append("hostile actions: " + (", ".join(f"{k}={v}" for k, v in sorted(self.hostile.items())) or "none"))
        lines.append("expected exceptions: " + (", ".join(f"{k}={v}" for k, v in sorted(self.expected.items())) or "none"))
        for f in self.failures[:max_failures]:
            lines.append(f.describe(self.seed))
        if len(self.failures) > max_failures:
            lines.append(f"... and {len(self.failures) - max_failures} more failures")
        if self.failures:
            f = self.failures[0]
            if self.threads == 1:
                lines.append(
                    f"replay: PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', '?')} {sys.executable} "
                    f"{self.fuzzer.script} --seed {self.seed} --steps {f.step + 1}{self.fuzzer.replay_options} --trace -"
                    + (f" --exclude {','.join(self.excluded)}" if self.excluded else "")
                )
            else:
                lines.append(f"(threads={self.threads}: not deterministic; first failure at thread {f.thread} step {f.step})")
        if self.unfinalized:
            lines.append(f"({self.unfinalized} instances were freed without their __del__ running: RecursionError at the call)")
        # The final line tests/test_adversarial_fuzz*.py look for (FINAL_LINE), the same for every fuzzer.
        lines.append(f"adversarial fuzz: {self.steps} steps, {self.ops} operations, {len(self.failures)} failures")
        return "\n".join(lines)


def _worker(st: State, index: int, deadline: float, max_steps: Optional[int], barrier: Optional[threading.Barrier]) -> None:
    fuzzer = st.fuzzer
    c = fuzzer.ctx_type(st, index, st.seed * 7919 + index)
    _tls.ctx = c
    st.ctxs.append(c)
    ops = [op for op, _, feature in fuzzer.ops if feature is None or st.allows(feature)]
    weights = [w for _, w, feature in fuzzer.ops if feature is None or st.allows(feature)]
    mode, n_traits = fuzzer.mode, fuzzer.n_traits
    rng = c.rng
    if barrier is not None:
        try:
            barrier.wait(30)
        except threading.BrokenBarrierError:
            pass
    try:
        while not st.stop and time.monotonic() < deadline and (max_steps is None or c.steps < max_steps):
            c.step = c.steps
            op = rng.choices(ops, weights)[0]
            c.op = op.__name__
            trace(c)
            if st.threads == 1:  # no flipper thread: flip between steps
                if rng.random() < 0.3:
                    mode[0] = rng.getrandbits(n_traits)
                if rng.random() < 0.1:
                    rng.choice(st.flippable()).traits ^= 1 << rng.randrange(n_traits)
            try:
                op(c, st)
            except CATCH as e:  # raised by the fuzzer's own code (building a dict, a set...)
                absorb(c, e, fuzzer.expected_extra)
            finally:
                c.clear()
                c.depth = 0
            c.op = op.__name__ + ":check"
            check_pool(c)
            c.steps += 1
    except BaseException as e:  # noqa: BLE001 - a bug in the fuzzer itself
        fail("fuzzer-error", f"{type(e).__name__}: {e}", traceback.format_exc())
    finally:
        c.clear()


def _flipper(st: State, done: threading.Event) -> None:
    """With several worker threads: flips the mode and the shared objects' traits all the time."""
    mode, n_traits = st.fuzzer.mode, st.fuzzer.n_traits
    rng = random.Random(st.seed * 31 + 17)
    objs = list(st.flippable())
    while not done.is_set() and not st.stop:
        mode[0] = rng.getrandbits(n_traits)
        for _ in range(4):
            obj = rng.choice(objs)
            obj.traits ^= 1 << rng.randrange(n_traits)
        time.sleep(0.0005)


def run(
    fuzzer: Fuzzer,
    seconds: float = 5.0,
    seed: int = 0,
    threads: int = 1,
    steps: Optional[int] = None,
    exclude: Any = (),
    trace_path: Optional[str] = None,
    pool_cap: int = 24,
    stop_on_failure: bool = True,
) -> Result:
    """Run `fuzzer` in this process. `exclude`: feature names, or 'known' for all of its
    known_bug_features. `steps`: at most this many steps per thread."""
    global _STATE
    excluded: set = set()
    for name in exclude:
        if name == "known":
            excluded.update(fuzzer.known_bug_features)
        elif name:
            if name not in fuzzer.known_bug_features and name not in fuzzer.features:
                known = ", ".join(list(fuzzer.known_bug_features) + list(fuzzer.features))
                raise ValueError(f"unknown feature {name!r}; known: {known}, known")
            excluded.add(name)
    if _STATE is not None:
        raise RuntimeError(f"{_STATE.fuzzer.name}.run() is already running in this process")
    result = Result(fuzzer)
    result.seed = seed
    result.threads = threads
    result.excluded = sorted(excluded)
    gc.collect()
    baseline = live_instances()
    st = fuzzer.state_type(fuzzer, seed, threads, excluded, pool_cap, stop_on_failure)
    if trace_path == "-":
        st.trace_fd = os.dup(2)
    elif trace_path:
        st.trace_fd = os.open(trace_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    setup_rng = random.Random(seed)
    fuzzer.mode[0] = 0
    st.populate(setup_rng)
    _STATE = st
    old_switch = sys.getswitchinterval()
    started = time.monotonic()
    deadline = st.deadline = started + seconds
    try:
        if threads <= 1:
            _worker(st, 0, deadline, steps, None)
        else:
            sys.setswitchinterval(min(old_switch, 1e-5))
            done = threading.Event()
            barrier = threading.Barrier(threads)
            workers = [
                threading.Thread(target=_worker, args=(st, i, deadline, steps, barrier), name=f"fuzz-{i}", daemon=True)
                for i in range(threads)
            ]
            flipper = threading.Thread(target=_flipper, args=(st, done), name="fuzz-flipper", daemon=True)
            for t in workers:
                t.start()
            flipper.start()
            join_until = deadline + max(60.0, seconds)
            for t in workers:
                t.join(max(0.0, join_until - time.monotonic()))
                if t.is_alive():
                    fail("hang", f"{t.name} still running long after the deadline")
            done.set()
            flipper.join(30)
        result.elapsed = time.monotonic() - started
        # The end: every shared iterator checked, everything dropped, nothing may survive.
        _tls.ctx = fuzzer.ctx_type(st, 0, seed)
        c = _tls.ctx
        c.op = "final"
        c.step = sum(x.steps for x in st.ctxs)
        _final_checks(st)
        st.pool.clear()
        st.reg.clear()
        st.shared_iters.clear()
        st.atoms.clear()
        st.weakrefs.clear()
        st.drop_shared()
        for x in st.ctxs:
            x.clear()
        for _ in range(4):
            gc.collect()
        leaked = live_instances() - baseline
        if leaked > 0 and not survivors(fuzzer):
            # Every instance is gone, but some finalizers never ran their body: an object dropped
            # at the recursion limit (hostile code recursing, deepcopy of deep values) has its
            # __del__ call fail with RecursionError ("Exception ignored in ... __del__"), so the
            # counter missed its end. Not a leak.
            result.unfinalized = leaked
            leaked = 0
        result.leaked = leaked
        if leaked > 0:
            result.leak_details = describe_leak(fuzzer)
            what = "/".join(t.__name__ for t in fuzzer.hostile_types)
            fail("leak", f"{leaked} {what} instances still alive after the run\n{result.leak_details}")
    finally:
        sys.setswitchinterval(old_switch)
        st.active = False
        fuzzer.mode[0] = 0
        _STATE = None
        if st.trace_fd is not None:
            os.close(st.trace_fd)
        _tls.__dict__.pop("ctx", None)
    for x in st.ctxs:
        result.steps += x.steps
        result.ops += x.ops
        result.expected.update(x.expected)
        result.hostile.update(x.hostile)
    result.expected.pop("retry", None)
    result.failures = list(st.failures)
    return result


def _final_checks(st: State) -> None:
    # A function of its own, so that no loop variable of run() keeps a version alive.
    for rec in list(st.shared_iters):
        verify_shared_iter(st, rec, final=True)
    st.active = False
    st.fuzzer.mode[0] = 0
    for v in list(st.pool):
        st.fuzzer.check_version(v)


def survivors(fuzzer: Fuzzer) -> List[Any]:
    """The fuzzer's hostile instances still alive (the collector tracks every instance)."""
    return [o for o in gc.get_objects() if type(o) in fuzzer.hostile_types]


def describe_leak(fuzzer: Fuzzer, limit: int = 5) -> str:
    """The survivors and what refers to them."""
    found = survivors(fuzzer)
    lines = [f"{len(found)} tracked survivors"]
    for o in found[:limit]:
        refs = [type(r).__name__ for r in gc.get_referrers(o) if r is not found]
        lines.append(f"  {o!r} refcount={sys.getrefcount(o) - 2} referrers={refs[:6]}")
    del found
    return "\n".join(lines)


def main(fuzzer: Fuzzer, argv: Optional[List[str]] = None) -> int:
    """The command line of a fuzzer script (see the usage in its docstring)."""
    parser = argparse.ArgumentParser(description=fuzzer.doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="wall-clock budget (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="worker threads (default 1: deterministic)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps per thread")
    parser.add_argument("--trace", default=None, metavar="FILE", help="append a line per step to FILE ('-': stderr)")
    parser.add_argument(
        "--exclude",
        default="",
        help="comma-separated features to leave out ('known' = all known-bug triggers"
        + (": " + ", ".join(fuzzer.known_bug_features) if fuzzer.known_bug_features else "")
        + ("; others: " + ", ".join(fuzzer.features) if fuzzer.features else "")
        + ")",
    )
    parser.add_argument("--pool", type=int, default=24, help="live versions kept (default 24)")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    args = parser.parse_args(argv)

    if argv is None and "PYTHONHASHSEED" not in os.environ:
        # Deterministic str hashes, so a one-thread run replays exactly.
        os.environ["PYTHONHASHSEED"] = "0"
        argv = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))  # keeps -X options
        os.execv(sys.executable, [sys.executable] + argv[1:])

    faulthandler.enable(all_threads=True)
    # A hang prints every thread's stack and exits.
    faulthandler.dump_traceback_later(max(120.0, args.seconds * 3 + 120), exit=True)
    print(
        f"{fuzzer.title}: seed={args.seed} threads={args.threads} seconds={args.seconds:g} "
        f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')} python={sys.version.split()[0]}"
        f" GIL={getattr(sys, '_is_gil_enabled', lambda: True)()}",
        flush=True,
    )
    result = run(
        fuzzer,
        seconds=args.seconds,
        seed=args.seed,
        threads=args.threads,
        steps=args.steps,
        exclude=[x.strip() for x in args.exclude.split(",") if x.strip()],
        trace_path=args.trace,
        pool_cap=args.pool,
        stop_on_failure=not args.keep_going,
    )
    faulthandler.cancel_dump_traceback_later()
    print(result.report(), flush=True)
    return 0 if result.ok else 1
