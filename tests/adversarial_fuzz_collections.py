#!/usr/bin/env python3
"""Adversarial fuzzer for PyPersistent's PersistentSet/TransientSet and PersistentList/TransientList.

The companion of tests/adversarial_fuzz.py (which fuzzes the map), built the same way on the
same harness (tests/fuzz_support.py). Hostile elements (``HElem``) and
hostile indices (``HIndex``) drive a random sequence of operations over a pool of live set
and list versions, transients, iterators and Atoms, from one or several threads. After every
step every live version is checked:

* the process is still alive (a crash is the finding; run this in a subprocess),
* ``len(x) == len(list(x))``, and for a list ``x[-1]``/``x.nth(len // 2)`` agree,
* the version is unchanged: ``[id(e) for e in x]`` equals the snapshot taken when it was
  made (the snapshot keeps the elements alive, so ids stay unique). No check relies on
  ``hash``/``==`` of the elements: hostile elements make them unreliable.

Results are checked by identity too (multisets of ids: an element whose hash changed may be
stored twice in a set):

* sets: ``add`` adds at most one element and loses none it did not replace; ``discard``/
  ``remove`` add nothing and lose at most one; a set built from an iterable holds only
  elements of it; ``difference`` only removes; ``union``/``intersection``/
  ``symmetric_difference`` and the operators (also reflected, with set/frozenset) hold only
  elements of their inputs; predicates return bools;
* lists (exact: lists never call hash/eq to place elements): ``append``, ``extend``, ``+``,
  ``*``, ``set``/``assoc`` (exactly one slot changes), ``pop``, slices with steps and
  negative bounds, ``nth``/``get``/``[i]`` with negative and out-of-range indices,
  constructors from lists, tuples, sets, generators...; an element present by identity is
  ``in`` the list and counted, ``index`` finds it no later than its first occurrence, a list
  compared with a list of the same objects is equal without calling any element method;
* transients: a TransientList is checked against a model of its edits (exactly, unless
  hostile code or another thread touched it); a TransientSet's ``add`` grows it by at most
  one; leaving a ``with`` block or ``persistent()`` finishes it; ``persistent()`` again
  returns the same object; every use of a finished transient raises ``RuntimeError``
  ("is finished"); a transient used from two places at once raises ``RuntimeError``;
* iterators yield exactly the snapshot of what they were made from, even when that was
  dropped and collected before they are resumed; a shared iterator hands out each element
  once; an iterator over a transient is a snapshot.

Exceptions raised on purpose by hostile code (``Hostile``, rarely a ``MemoryError`` or a
``BaseException`` subclass), ``RuntimeError`` for a transient used from two places or
finished, ``TypeError``, ``RecursionError``, and where the API says so ``KeyError``
(``remove``), ``IndexError`` (indices), ``ValueError`` (``index``, a zero slice step, a
negative ``__len__``) are expected and counted. Anything else, or an expected exception
where it cannot happen (an ``IndexError`` for an index in range), is a failure.

Hostile behaviours, combined at random: each element has trait bits and a shared mode word
``MODE[0]`` (flipped by another thread, or between steps) switches them on and off:
``__hash__`` raises or changes between calls; ``__eq__``/``__lt__``/``__gt__`` raise, answer
at random, flip on each call or return an object whose ``__bool__`` raises; ``__bool__``
raises; and ``__hash__``/``__eq__``/``__lt__``/``__bool__``/``__index__``/``__del__`` re-enter:
call into the set/list being operated on, the transient being edited (add, update, append,
pop, ``t[i] = x``, ``persistent()``, ``__exit__``), an Atom (swap/reset/compare_and_set),
build other sets and lists, mutate the list/dict being read, drop the last references to
versions, transients and iterators (held in a global registry), run ``gc.collect()`` or
``gc.get_referents()`` of the object being edited, flip the mode. Weakref callbacks on sets,
lists and transients do the same while those are deallocated.

Also: constructors from lists, tuples, sets, frozensets, dicts, maps, strings, other sets and
lists, transients, generators with hostile bodies, iterables whose ``__len__``/
``__length_hint__`` lie or raise, iterables whose ``__iter__`` raises, and list/set/frozenset
subclasses with a hostile ``__iter__``/``__len__``/``__contains__``; ``t.extend(t)``,
``t.update(t)``; ``type(x)()`` / ``type(x).__new__(type(x))`` and subclassing for the exported
types; ``x.__init__(...)`` on a live version; copy/deepcopy/pickle; Atoms holding sets and
lists, swapped by functions that re-enter the Atom or return a non-persistent value; chains
``l = PersistentList([x, l])`` up to 300,000 deep. Not fuzzed: ``PersistentList * n`` with a
huge n (it fills memory before MemoryError, see FEATURES). "Operations" in the summary are the API calls made by steps and
hostile code; the checks after each step are not counted.

At the end everything is dropped, ``gc.collect()`` runs a few times, and no ``HElem``/
``HIndex`` instance may still be alive (the fuzzer builds no reference cycle through the
structures: hostile objects only reach them through module-level registries).

Usage::

    python tests/adversarial_fuzz_collections.py --seconds 600 --seed 7 --threads 4  # long
    python tests/adversarial_fuzz_collections.py --seconds 4 --seed 1 --threads 2    # short
    python tests/adversarial_fuzz_collections.py --seed 1 --steps 1234 --seconds 600 --trace -  # replay
    python tests/adversarial_fuzz_collections.py --exclude known ...  # skip known-bug triggers

``--trace FILE`` appends one line per step (thread, step, operation) with unbuffered writes.
With one thread a run is deterministic for a given seed (the script re-executes itself with
``PYTHONHASHSEED=0`` unless that is set), so ``--steps N`` replays a failure at step N; except
that the deep chains (feature ``deep_chain``) make long runs drift (when they are freed varies):
a failure found with ``--exclude deep_chain`` replays exactly. With threads it is not
deterministic.

Importable: ``run(seconds=..., seed=..., threads=...)`` returns a ``Result``;
tests/test_adversarial_fuzz_collections.py runs this script in a subprocess.
"""

from __future__ import annotations

import collections
import copy
import functools
import gc
import os
import pickle
import random
import sys
import time
from typing import Any, Callable, List, Optional

import pypersistent
from pypersistent import Atom, PersistentList, PersistentMap, PersistentSet, TransientList, TransientSet

# The harness both adversarial fuzzers share sits next to this file (found also when this file
# is loaded by path, without tests/ on sys.path).
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import fuzz_support  # noqa: E402
from fuzz_support import (  # noqa: E402
    CATCH,
    FAILED,
    MAX_DEPTH,
    T_EQ_BADBOOL,
    T_EQ_FLIP,
    T_EQ_RAISE,
    T_EQ_RANDOM,
    T_HASH_RAISE,
    T_HASH_VARY,
    ActionTraits,
    BadBool,
    Hostile,
    absorb,
    active_state,
    attempt,
    attempt_exc,
    ctx,
    drop_refs,
    expect_finished,
    fail,
    hostile,
    hostile_del,
    hostile_eq,
    hostile_hash,
    instance_counter,
    op_drop,
    op_flip,
    op_gc,
    raise_hostile,
    reg_add,
    verify_shared_iter,
    watch,
)

SET_ITER_TYPE: type = type(iter(PersistentSet()))
LIST_ITER_TYPE: type = type(iter(PersistentList()))
PERSISTENT_TYPES = (PersistentSet, PersistentList)
TRANSIENT_TYPES = (TransientSet, TransientList)
ATOM_TYPES = (PersistentMap, PersistentSet, PersistentList)

# Triggers of library bugs known when this was written; --exclude known skips them all.
# (None is known today: the features below can be excluded by name to narrow a search.)
KNOWN_BUG_FEATURES: dict = {}
#: Features that can be left out with --exclude, known bug or not.
FEATURES = {
    "deep_chain": "chains PersistentList([x, l]) up to 300,000 deep, PersistentSet([x, s]) 3,000 deep",
    "big_repeat": "PersistentList * n with n up to 2000 (never a huge n: the repetition is built "
    "element by element and fills memory before a MemoryError, where tuple * n fails at once)",
    "types": "type(x)() / type(x).__new__(type(x)) for the exported types",
    "pickle": "copy/deepcopy/pickle of sets and lists",
}

# --------------------------------------------------------------------------------------
# Hostile traits and the shared mode
# --------------------------------------------------------------------------------------

# Bits 0 to 5 (T_HASH_RAISE ... T_EQ_BADBOOL) are fuzz_support's.
T_LT = 1 << 6  # __lt__/__gt__ raise, answer at random or return a BadBool
T_REENTER = 1 << 7
T_DROP = 1 << 8
T_GC = 1 << 9
T_DEL = 1 << 10
T_FLIP = 1 << 11
T_BOOL = 1 << 12  # __bool__ raises
N_TRAITS = 13
T_ACTIONS = T_REENTER | T_DROP | T_GC | T_FLIP
T_HASHY = T_HASH_RAISE | T_HASH_VARY | T_ACTIONS
T_EQY = T_EQ_RAISE | T_EQ_RANDOM | T_EQ_FLIP | T_EQ_BADBOOL | T_ACTIONS
T_LTY = T_LT | T_EQ_RANDOM | T_EQ_BADBOOL | T_ACTIONS

#: The shared hostile mode: a trait acts only while its bit is set here.
MODE = [0]

BUCKETS = 8  # elements hash to n % BUCKETS: many collisions, so __eq__ runs
N_VALUES = 24
MAX_POOLED_LEN = 3000  # longer results are checked once, not kept in the pool


def _hostile_lt(obj: Any, other: Any, act: int, normal: Any) -> Any:
    st = active_state()
    if st is None:
        return normal
    c = ctx()
    if act & T_ACTIONS:
        hostile(c, st, act)
    rng = c.rng
    if act & (T_LT | T_EQ_RANDOM):
        c.hostile["lt"] += 1
        r = rng.random()
        if r < 0.25:
            raise_hostile(c, "__lt__")
        if r < 0.6:
            return rng.random() < 0.5
        if r < 0.7:
            return NotImplemented
    if act & T_EQ_BADBOOL and rng.random() < 0.25:
        c.hostile["lt-badbool"] += 1
        return BadBool(act)
    return normal


class HElem:
    """A hostile element. Equal n means equal when behaving; the hash is n % BUCKETS; the
    order is the order of n."""

    __slots__ = ("n", "h", "traits", "flip", "__weakref__")

    def __init__(self, n: int, traits: int = 0) -> None:
        self.n = n
        self.h = n % BUCKETS
        self.traits = traits
        self.flip = 0
        instance_counter()[0] += 1

    def __reduce__(self) -> Any:
        return (type(self), (self.n, self.traits))

    def __hash__(self) -> int:
        act = self.traits & MODE[0]
        if not act & T_HASHY:
            return self.h
        return hostile_hash(self, act)

    def __eq__(self, other: object) -> Any:
        act = self.traits & MODE[0]
        if not act & T_EQY:
            return type(other) is HElem and self.n == other.n  # type: ignore[attr-defined]
        return hostile_eq(self, other, act)

    def __ne__(self, other: object) -> Any:
        r = self.__eq__(other)
        return r if type(r) is not bool else not r

    def __lt__(self, other: object) -> Any:
        normal = self.n < other.n if type(other) is HElem else NotImplemented  # type: ignore[attr-defined]
        act = self.traits & MODE[0]
        if not act & T_LTY:
            return normal
        return _hostile_lt(self, other, act, normal)

    def __gt__(self, other: object) -> Any:
        normal = self.n > other.n if type(other) is HElem else NotImplemented  # type: ignore[attr-defined]
        act = self.traits & MODE[0]
        if not act & T_LTY:
            return normal
        return _hostile_lt(self, other, act, normal)

    def __bool__(self) -> bool:
        act = self.traits & MODE[0]
        if act & T_BOOL:
            st = active_state()
            if st is not None:
                c = ctx()
                c.hostile["bool"] += 1
                hostile(c, st, act)
                raise Hostile("HElem.__bool__")
        return bool(self.n)

    def __repr__(self) -> str:
        return f"E{self.n}"

    def __del__(self) -> None:
        try:
            instance_counter()[1] += 1
            act = self.traits & MODE[0]
            if act & T_DEL:
                hostile_del(act)
        except BaseException:  # noqa: BLE001 - nothing may escape a finalizer
            pass


class HIndex:
    """An index whose __index__ may raise, answer another value (+-1) or re-enter."""

    __slots__ = ("value", "traits", "__weakref__")

    def __init__(self, value: int, traits: int) -> None:
        self.value = value
        self.traits = traits
        instance_counter()[0] += 1

    def __index__(self) -> int:
        act = self.traits & MODE[0]
        st = active_state()
        if act and st is not None:
            c = ctx()
            c.hostile["index"] += 1
            if act & T_ACTIONS:
                hostile(c, st, act)
            if act & T_HASH_RAISE and c.rng.random() < 0.25:
                raise_hostile(c, "__index__")
            if act & T_HASH_VARY and c.rng.random() < 0.5:
                return self.value + c.rng.choice((-1, 1))
        return self.value

    def __repr__(self) -> str:
        return f"I{self.value}"

    def __del__(self) -> None:
        try:
            instance_counter()[1] += 1
            act = self.traits & MODE[0]
            if act & T_DEL:
                hostile_del(act)
        except BaseException:  # noqa: BLE001
            pass


class LyingLen:
    """An iterable whose __len__/__length_hint__ lie or raise; __iter__ is a hostile generator."""

    def __init__(self, gen: Any, n: int, mode: int) -> None:
        self.gen = gen
        self.n = n
        self.mode = mode

    def _len(self) -> int:
        m = self.mode
        if m == 0:
            raise Hostile("__len__")
        if m == 1:
            return -1
        if m == 2:
            return 0
        if m == 3:
            return self.n + 5
        return 100_000

    def __len__(self) -> int:
        return self._len()

    def __length_hint__(self) -> int:
        return self._len()

    def __iter__(self):
        return self.gen


def _sub_iter(obj: Any, base_iter: Callable) -> Any:
    """__iter__ of the hostile container subclasses: the real elements, in order, with hostile
    code between them (or Hostile at once)."""
    st = active_state()
    act = obj.act & MODE[0]
    if st is None or not act:
        return base_iter(obj)
    c = ctx()
    if act & T_HASH_RAISE and c.rng.random() < 0.2:
        raise Hostile("__iter__ of a container subclass")
    return _sub_gen(c, st, act, list(base_iter(obj)))


def _sub_gen(c: Ctx, st: State, act: int, elems: list):
    for e in elems:
        if st.active and c.depth < MAX_DEPTH:
            hostile(c, st, act)
        yield e


def _sub_len(obj: Any, base_len: Callable) -> int:
    act = obj.act & MODE[0]
    if act & T_HASH_VARY:
        return base_len(obj) + 3  # a lie: code must not trust it
    return base_len(obj)


class HListSub(list):
    """A list subclass whose __iter__/__len__ are hostile (C code may read the list directly)."""

    act = 0

    def __iter__(self):
        return _sub_iter(self, list.__iter__)

    def __len__(self) -> int:
        return _sub_len(self, list.__len__)


class HFrozenSub(frozenset):
    """A frozenset subclass whose __iter__/__len__/__contains__ are hostile."""

    act = 0

    def __iter__(self):
        return _sub_iter(self, frozenset.__iter__)

    def __len__(self) -> int:
        return _sub_len(self, frozenset.__len__)

    def __contains__(self, x: object) -> bool:
        st = active_state()
        if st is not None and self.act & MODE[0]:
            hostile(ctx(), st, self.act & MODE[0])
        return frozenset.__contains__(self, x)


class HSetSub(set):
    """A set subclass whose __iter__/__len__ are hostile."""

    act = 0

    def __iter__(self):
        return _sub_iter(self, set.__iter__)

    def __len__(self) -> int:
        return _sub_len(self, set.__len__)


class IterRaises:
    """__iter__ raises Hostile."""

    def __iter__(self):
        raise Hostile("__iter__")


# --------------------------------------------------------------------------------------
# Per-thread context (failures and expected exceptions are fuzz_support's)
# --------------------------------------------------------------------------------------


class Ctx(fuzz_support.Ctx):
    """fuzz_support.Ctx, and whether hostile code used the transient being edited."""

    def __init__(self, st: "State", index: int, seed: int) -> None:
        super().__init__(st, index, seed)
        self.t_touched = False  # hostile code used cur_transient (reset before each edit)
        self.t_touched_ever = False  # ... at any time during this step

    def clear(self) -> None:
        super().clear()
        self.t_touched = False
        self.t_touched_ever = False


# What hostile code, sources and indices may raise besides the always-expected exceptions.
IDX = (IndexError,)
SRC = (ValueError,)  # a negative __len__ of a LyingLen source


# --------------------------------------------------------------------------------------
# Shared state of one run
# --------------------------------------------------------------------------------------


class Version:
    """A live PersistentSet/PersistentList and the snapshot of its elements."""

    __slots__ = ("obj", "items", "ids", "is_list")

    def __init__(self, obj: Any, items: list) -> None:
        self.obj = obj
        self.items = items  # keeps the elements alive, so the ids stay unique
        self.ids = [id(e) for e in items]
        self.is_list = type(obj) is PersistentList


class SharedIter:
    __slots__ = ("it", "expected", "got", "exhausted", "keep")

    def __init__(self, it: Any, expected: list, keep: list) -> None:
        self.it = it
        self.expected = collections.Counter(expected)
        self.got: list = []
        self.exhausted = False
        self.keep = keep


class State(fuzz_support.State):
    """fuzz_support.State, and the shared hostile elements every thread draws from."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.shared_elems: List[HElem] = []

    def populate(self, rng: random.Random) -> None:
        self.shared_elems = [HElem(i % N_VALUES, random_traits(rng)) for i in range(2 * N_VALUES)]
        self.atoms = [Atom(PersistentSet()), Atom(PersistentList()), Atom(PersistentSet([1, 2])), Atom()]

    def flippable(self) -> list:
        return self.shared_elems

    def drop_shared(self) -> None:
        self.shared_elems = []


# --------------------------------------------------------------------------------------
# Random elements, indices, sources
# --------------------------------------------------------------------------------------

PLAIN: tuple = (0, 1, 2, 3, 5, 7, -1, 2.0, "a", "b", "elem", (1, 2), None, 10**20, True, frozenset({1}))


def random_traits(rng: random.Random) -> int:
    return rng.getrandbits(N_TRAITS) & rng.getrandbits(N_TRAITS)  # each bit with p = 1/4


def pick_elem(c: Ctx) -> Any:
    rng = c.rng
    r = rng.random()
    st = c.run
    if r < 0.55 and st.shared_elems:
        return rng.choice(st.shared_elems)
    if r < 0.82:
        return HElem(rng.randrange(N_VALUES), random_traits(rng))
    if r < 0.96:
        return rng.choice(PLAIN)
    if r < 0.98:
        v = random_version(st, rng)
        return v.obj if v is not None else ()
    return [rng.random()]  # unhashable: TypeError in a set, fine in a list


def make_elems(c: Ctx, n: int) -> list:
    return [pick_elem(c) for _ in range(n)]


def pick_index(c: Ctx, n: int) -> Any:
    """An index for a sequence of length n: mostly in range, sometimes negative, out of range,
    huge, a bool or a hostile __index__ object."""
    rng = c.rng
    r = rng.random()
    if r < 0.55:
        return rng.randrange(n) if n else 0
    if r < 0.75:
        return -rng.randrange(1, n + 1) if n else -1
    if r < 0.85:
        return rng.choice((n, n + 1, -n - 1, -n - 5, 1 << 40, -(1 << 40), 1 << 70))
    if r < 0.88:
        return rng.choice((True, False))
    return HIndex(rng.randrange(-n - 1, n + 2), random_traits(rng))


def norm_index(i: Any, n: int) -> Optional[int]:
    """The slot a plain index names, None when out of range."""
    i = int(i)
    if i < 0:
        i += n
    return i if 0 <= i < n else None


def random_version(st: State, rng: random.Random, want_list: Optional[bool] = None) -> Optional[Version]:
    pool = [v for v in list(st.pool) if want_list is None or v.is_list == want_list]
    return rng.choice(pool) if pool else None


def pick_version(c: Ctx, want_list: bool) -> Version:
    st = c.run
    if c.rng.random() < 0.95:
        v = random_version(st, c.rng, want_list)
        if v is not None:
            return v
    while True:
        T = PersistentList if want_list else PersistentSet
        n = c.rng.randrange(0, 16)
        elems = make_elems(c, n)
        if not want_list:
            elems = [e for e in elems if type(e) is not list]
        obj = attempt(T, elems)
        if obj is not FAILED:
            v = add_version(c, obj)
            if v is not None:
                return v
        c.expected["retry"] += 1
        MODE[0] &= c.rng.getrandbits(N_TRAITS)  # calm down a little


class Source:
    """An iterable input and the elements it may contribute (filled while a generator runs).
    `exact`: iterating it yields exactly `elems`, in that order (unless hostile code mutates
    it: then Ctx.src_mutated is set)."""

    __slots__ = ("obj", "elems", "kind", "exact")

    def __init__(self, obj: Any, elems: list, kind: str, exact: bool = True) -> None:
        self.obj = obj
        self.elems = elems
        self.kind = kind
        self.exact = exact


def hostile_gen(c: Ctx, st: State, elems: list, record: list, act: int):
    """Yields elems, recording each; between them hostile code runs; with T_HASH_RAISE it may
    raise Hostile after the last one."""
    for e in elems:
        if act and st.active and c.depth < MAX_DEPTH:
            hostile(c, st, act)
        record.append(e)
        yield e
    if act & T_HASH_RAISE and c.rng.random() < 0.2:
        raise Hostile("generator body")


def make_source(c: Ctx, st: State, for_set: bool, allow_unknown: bool = True) -> Source:
    rng = c.rng
    kinds = ["list", "tuple", "set", "frozenset", "gen", "pset", "plist", "dict", "pmap", "str", "lying", "raises"]
    kinds += ["listsub", "frozensub", "setsub"]
    if allow_unknown:
        kinds.append("transient")
    kind = rng.choice(kinds)
    elems = make_elems(c, rng.randrange(0, 10))
    hashable = [e for e in elems if type(e) is not list]
    if for_set and rng.random() < 0.8:
        elems = hashable
    if kind == "list":
        return Source(list(elems), elems, kind)
    if kind == "tuple":
        return Source(tuple(elems), elems, kind)
    if kind in ("set", "frozenset", "dict"):
        try:
            obj: Any = (set if kind == "set" else frozenset if kind == "frozenset" else dict.fromkeys)(hashable)
        except CATCH as e:  # a hostile hash while we build it
            absorb(c, e)
            return Source(list(elems), elems, "list")
        return Source(obj, list(obj), kind)
    if kind == "gen":
        record: list = []
        return Source(hostile_gen(c, st, elems, record, random_traits(rng) & (T_ACTIONS | T_HASH_RAISE)), record, kind)
    if kind == "lying":
        record = []
        gen = hostile_gen(c, st, elems, record, random_traits(rng) & T_ACTIONS)
        return Source(LyingLen(gen, len(elems), rng.randrange(5)), record, kind)
    if kind == "raises":
        return Source(IterRaises(), [], kind)
    if kind in ("listsub", "frozensub", "setsub"):
        T = HListSub if kind == "listsub" else HFrozenSub if kind == "frozensub" else HSetSub
        try:
            obj = T(elems if T is HListSub else hashable)
        except CATCH as e:  # a hostile hash while we build it
            absorb(c, e)
            return Source(list(elems), elems, "list")
        obj.act = random_traits(rng) & (T_ACTIONS | T_HASH_RAISE | T_HASH_VARY)
        base = list.__iter__ if T is HListSub else frozenset.__iter__ if T is HFrozenSub else set.__iter__
        return Source(obj, list(base(obj)), kind)
    if kind == "str":
        s = rng.choice(("", "abc", "aab", "xyzzy"))
        return Source(s, list(s), kind)  # the characters are new objects on each iteration
    if kind == "pmap":
        m = attempt(PersistentMap.fromkeys, hashable, 0)
        if m is FAILED:
            return Source(list(elems), elems, "list")
        return Source(m, list(m), kind)
    if kind == "transient":
        ts = [x for x in list(st.reg) if type(x) in TRANSIENT_TYPES]
        if ts:
            return Source(rng.choice(ts), [], kind, exact=False)
        kind = "pset"
    v = pick_version(c, want_list=(kind == "plist"))
    return Source(v.obj, v.items, kind)


def source_ids(src: Source) -> Optional[list]:
    """The ids the source yields, or None when they cannot be known."""
    if not src.exact or src.kind == "str":
        return None
    if ctx().src_mutated:
        return None
    return [id(e) for e in src.elems]


# --------------------------------------------------------------------------------------
# Hostile actions
# --------------------------------------------------------------------------------------


def _reenter_set(c: Ctx, st: State, s: Any) -> None:
    rng = c.rng
    x = rng.randrange(7)
    e = pick_elem(c)
    if x == 0:
        attempt(s.__contains__, e)
    elif x == 1:
        res = attempt(s.add if rng.random() < 0.5 else s.discard, e)
        if res is not FAILED:
            reg_add(st, res, rng)
    elif x == 2:
        res = attempt(s.union, make_elems(c, 3))
        if res is not FAILED:
            reg_add(st, res, rng)
    elif x == 3:
        attempt(len, s)
        attempt(list, s)
    elif x == 4:
        attempt(hash, s)
    elif x == 5:
        attempt(s.issubset, make_elems(c, 3))
    else:
        it = attempt(iter, s)
        if it is not FAILED:
            attempt(next, it, None)
            reg_add(st, it, rng)


def _reenter_list(c: Ctx, st: State, l: Any) -> None:
    rng = c.rng
    x = rng.randrange(8)
    e = pick_elem(c)
    if x == 0:
        attempt(l.__contains__, e)
    elif x == 1:
        res = attempt(l.append, e)
        if res is not FAILED:
            reg_add(st, res, rng)
    elif x == 2:
        n = attempt(len, l)
        if n is not FAILED:
            res = attempt(l.set, pick_index(c, n), e, _extra=IDX)
            if res is not FAILED:
                reg_add(st, res, rng)
    elif x == 3:
        attempt(l.index, e, _extra=(ValueError,))
    elif x == 4:
        attempt(l.count, e)
    elif x == 5:
        attempt(hash, l)
    elif x == 6:
        attempt(l.__getitem__, slice(None, None, rng.choice((-1, 2))))
    else:
        it = attempt(iter, l)
        if it is not FAILED:
            attempt(next, it, None)
            reg_add(st, it, rng)


def _reenter_transient(c: Ctx, st: State, t: Any) -> None:
    rng = c.rng
    x = rng.randrange(9)
    e = pick_elem(c)
    if x == 0:
        res = attempt(t.persistent)
        if res is not FAILED:
            reg_add(st, res, rng)
        return
    if x == 1:
        attempt(t.__exit__, None, None, None)
        return
    if x == 2:
        attempt(len, t)
        attempt(list, t)
        return
    if x == 3:
        attempt(t.__contains__, e)
        return
    if type(t) is TransientSet:
        if x <= 5:
            attempt(t.add, e)
        elif x == 6:
            attempt(t.discard, e)
        elif x == 7:
            attempt(t.remove, e, _extra=(KeyError,))
        else:
            attempt(t.update, make_elems(c, 2))
    else:
        if x <= 5:
            attempt(t.append, e)
        elif x == 6:
            attempt(t.pop, _extra=IDX)
        elif x == 7:
            attempt(t.__setitem__, pick_index(c, 4), e, _extra=IDX)
        else:
            attempt(t.extend, make_elems(c, 2))


def reenter(c: Ctx, st: State) -> None:
    rng = c.rng
    r = rng.randrange(8)
    if r <= 1:  # the set/list being operated on (or another one)
        obj = c.cur_obj
        if obj is None or rng.random() < 0.3:
            v = random_version(st, rng)
            obj = v.obj if v is not None else None
        if obj is None:
            return
        if type(obj) is PersistentSet:
            _reenter_set(c, st, obj)
        elif type(obj) is PersistentList:
            _reenter_list(c, st, obj)
    elif r == 2:  # the transient being edited (or a shared one)
        t = c.cur_transient
        if t is None or rng.random() < 0.2:
            ts = [x for x in list(st.reg) if type(x) in TRANSIENT_TYPES]
            t = rng.choice(ts) if ts else None
        if t is None:
            return
        if t is c.cur_transient:
            c.t_touched = c.t_touched_ever = True
        _reenter_transient(c, st, t)
    elif r == 3:  # an Atom
        atoms = list(st.atoms)
        if not atoms:
            return
        a = rng.choice(atoms)
        x = rng.randrange(4)
        e = pick_elem(c)
        if x == 0:
            attempt(a.swap, _grow, e)
        elif x == 1:
            v = random_version(st, rng)
            if v is not None:
                attempt(a.reset, v.obj)
        elif x == 2:
            cur = attempt(a.deref)
            v = random_version(st, rng)
            if cur is not FAILED and v is not None:
                attempt(a.compare_and_set, cur, v.obj)
        else:
            attempt(repr, a)
    elif r == 4:  # build other sets and lists
        x = rng.randrange(4)
        if x == 0:
            res = attempt(PersistentSet, make_elems(c, rng.randrange(4)))
        elif x == 1:
            res = attempt(PersistentList, make_elems(c, rng.randrange(4)))
        elif x == 2:
            p, q = random_version(st, rng, False), random_version(st, rng, False)
            res = attempt(lambda: p.obj | q.obj) if p is not None and q is not None else FAILED
        else:
            p, q = random_version(st, rng, True), random_version(st, rng, True)
            res = attempt(lambda: p.obj + q.obj) if p is not None and q is not None else FAILED
        if res is not FAILED:
            if rng.random() < 0.3:
                add_version(c, res)
            else:
                reg_add(st, res, rng)
    elif r == 5:  # mutate the list/dict being read
        src = c.cur_source
        if isinstance(src, (dict, list)):
            c.src_mutated = True
        if isinstance(src, dict):
            try:
                k, v = src.popitem()
            except KeyError:
                return
            c.ops += 1
            try:
                dict.__setitem__(src, k, v)
            except CATCH as e:
                absorb(c, e)
        elif isinstance(src, list) and src:
            if rng.random() < 0.5:
                src.append(src[rng.randrange(len(src))])
            else:
                try:
                    src.pop()
                except IndexError:
                    pass
    elif r == 6:
        drop_refs(c, st)
    elif rng.random() < 0.5:  # step a registry iterator
        its = [x for x in list(st.reg) if type(x) in (SET_ITER_TYPE, LIST_ITER_TYPE)]
        if its:
            attempt(next, rng.choice(its), None)
    else:  # traverse the object being edited, from inside the edit
        target = c.cur_transient if c.cur_transient is not None else c.cur_obj
        if target is not None:
            c.ops += 1
            gc.get_referents(target)


def _grow(cur: Any, e: Any) -> Any:
    """An Atom swap function: adds/appends e to what the Atom holds."""
    if type(cur) is PersistentSet:
        return cur.add(e)
    if type(cur) is PersistentList:
        return cur.append(e)
    return cur.set(e, 1)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def add_version(c: Ctx, obj: Any) -> Optional[Version]:
    """Snapshot obj, check it, and put it in the pool."""
    st = c.run
    if type(obj) not in PERSISTENT_TYPES:
        fail("check", f"expected a PersistentSet or PersistentList, got {type(obj).__name__}")
        return None
    n = len(obj)
    items = list(obj)
    if n != len(items):
        fail("check", f"new version: len() == {n} but {len(items)} elements")
        return None
    v = Version(obj, items)
    check_version(v)
    watch(st, obj, c.rng)
    if n > MAX_POOLED_LEN:
        return v  # checked once; too big to check after every step (and to grow further)
    st.pool.append(v)
    while len(st.pool) > st.pool_cap:
        try:
            st.pool.pop(c.rng.randrange(len(st.pool)))
        except (IndexError, ValueError):
            break
    return v


def check_version(v: Version) -> bool:
    """len and iteration agree with the snapshot, compared by identity only."""
    obj = v.obj
    n = len(obj)
    ids = [id(e) for e in obj]
    if not n == len(ids) == len(v.ids):
        fail("check", f"version of {len(v.ids)} elements: len()={n}, iteration {len(ids)}")
        return False
    if ids != v.ids:
        fail("check", f"a {type(obj).__name__}'s elements changed after it was made")
        return False
    if v.is_list and n:
        if id(obj[-1]) != v.ids[-1] or id(obj.nth(n // 2)) != v.ids[n // 2]:
            fail("check", "indexing a PersistentList disagrees with its iteration")
            return False
    return True


def over(what: str, got: list, allowed: list) -> bool:
    """Fails (and returns True) if the multiset of ids `got` is not within `allowed`."""
    extra = collections.Counter(got) - collections.Counter(allowed)
    if extra:
        fail("check", f"{what}: {sum(extra.values())} elements that came from none of the inputs")
        return True
    return False


def check_bool(what: str, r: Any) -> None:
    if r is not FAILED and type(r) is not bool:
        fail("check", f"{what} returned {type(r).__name__}, not a bool")


# --------------------------------------------------------------------------------------
# Operations on sets
# --------------------------------------------------------------------------------------


def op_set_build(c: Ctx, st: State) -> None:
    rng = c.rng
    src = make_source(c, st, for_set=True)
    c.cur_source = src.obj
    x = rng.randrange(6)
    if x == 0:
        res = attempt(PersistentSet, src.obj, _extra=SRC)
    elif x == 1:
        res = attempt(PersistentSet.from_iterable, src.obj, _extra=SRC)
    elif x == 2:
        res = attempt(PersistentSet.from_list, src.obj, _extra=SRC)
    elif x == 3:
        res = attempt(PersistentSet.from_set, src.obj, _extra=SRC)
    elif x == 4:
        elems = src.elems if src.kind not in ("gen", "lying", "raises", "transient") else make_elems(c, 4)
        src = Source(elems, elems, "args")
        res = attempt(lambda: PersistentSet.create(*elems))
    else:
        res = attempt(PersistentSet.__new__, PersistentSet, src.obj, _extra=SRC)
    if res is FAILED:
        return
    if src.kind == "raises":
        fail("check", "a set was built from an iterable whose __iter__ raises")
        return
    nv = add_version(c, res)
    ids = source_ids(src)
    if nv is not None and ids is not None:
        if not over("PersistentSet(iterable)", nv.ids, ids) and len(nv.ids) > len(ids):
            fail("check", f"PersistentSet of {len(ids)} elements has {len(nv.ids)}")
        if ids and not nv.ids:
            fail("check", "PersistentSet(iterable) of a non-empty iterable is empty")


def op_set_edit(c: Ctx, st: State) -> None:
    rng = c.rng
    v = pick_version(c, False)
    s = c.cur_obj = v.obj
    e = pick_elem(c)
    x = rng.randrange(5)
    name = ("add", "conj", "discard", "disj", "remove")[x]
    res = attempt(getattr(s, name), e, _extra=(KeyError,) if x == 4 else ())
    if res is FAILED:
        return
    nv = add_version(c, res)
    if nv is None:
        return
    base = collections.Counter(v.ids)
    got = collections.Counter(nv.ids)
    new = sum((got - base).values())
    lost = sum((base - got).values())
    if x <= 1:
        if (got - base) and set(got - base) != {id(e)} or new > 1 or lost > new:
            fail("check", f"s.{name}(x): {new} new, {lost} lost elements")
    elif new or lost > 1:
        fail("check", f"s.{name}(x): {new} new, {lost} lost elements")
    # (PersistentSet.remove is discard, as in pypersistent 2.0: an absent x is no error.)


def op_set_lookup(c: Ctx, st: State) -> None:
    v = pick_version(c, False)
    s = c.cur_obj = v.obj
    e = pick_elem(c)
    if c.rng.random() < 0.5:
        check_bool("x in s", attempt(s.__contains__, e))
    else:
        check_bool("s.contains(x)", attempt(s.contains, e))


def op_set_algebra(c: Ctx, st: State) -> None:
    rng = c.rng
    v = pick_version(c, False)
    s = c.cur_obj = v.obj
    srcs = [make_source(c, st, for_set=True) for _ in range(rng.randrange(1, 3))]
    c.cur_source = srcs[0].obj
    objs = [x.obj for x in srcs]
    o = objs[0]
    x = rng.randrange(18)
    extra = SRC
    # (what, call, kind): kind says how the result relates to s and the sources
    if x == 0:
        what, fn, kind = "union", lambda: s.union(*objs), "union"
    elif x == 1:
        what, fn, kind = "update", lambda: s.update(*objs), "union"
    elif x == 2:
        what, fn, kind = "intersection", lambda: s.intersection(*objs), "within"
    elif x == 3:
        what, fn, kind = "difference", lambda: s.difference(*objs), "subset"
    elif x == 4:
        what, fn, kind = "symmetric_difference", lambda: s.symmetric_difference(o), "within"
    elif x <= 6:
        op = rng.choice(("|", "&", "-", "^"))
        f = {"|": lambda a, b: a | b, "&": lambda a, b: a & b, "-": lambda a, b: a - b, "^": lambda a, b: a ^ b}[op]
        if rng.random() < 0.5:
            what, fn, kind = f"s {op} other", lambda: f(s, o), ("subset" if op == "-" else "within")
        else:
            what, fn, kind = f"other {op} s", lambda: f(o, s), ("rsubset" if op == "-" else "within")
    elif x <= 9:
        name = ("issubset", "issuperset", "isdisjoint")[x - 7]
        check_bool(f"s.{name}()", attempt(getattr(s, name), o, _extra=extra))
        return
    elif x <= 12:
        op = rng.choice(("<", "<=", ">", ">=", "==", "!="))
        f = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
        }[op]
        r = attempt(f, s, o) if rng.random() < 0.5 else attempt(f, o, s)
        check_bool(f"set {op}", r)
        if op in ("==", "!=") and type(o) is PersistentSet and o is s and r is not FAILED and r != (op == "=="):
            fail("check", f"s {op} s is {r}")
        return
    elif x == 13:  # s with itself
        op = rng.choice(("|", "&", "-", "^", "<=", "<", "=="))
        f = {
            "|": lambda a, b: a | b,
            "&": lambda a, b: a & b,
            "-": lambda a, b: a - b,
            "^": lambda a, b: a ^ b,
            "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b,
            "==": lambda a, b: a == b,
        }[op]
        r = attempt(f, s, s)
        if r is FAILED:
            return
        if op in ("<=", "<", "=="):
            check_bool(f"s {op} s", r)
            return
        srcs, objs = [Source(s, v.items, "self")], [s]
        what, fn, kind = f"s {op} s", lambda: r, ("subset" if op in "-&" else "within")
    elif x == 14:  # several inputs, the last an iterator
        more = make_elems(c, 3)
        srcs.append(Source(more, more, "list"))
        what, fn, kind = "union(..., iter)", lambda: s.union(*objs, iter(more)), "union"
    elif x == 15:
        what, fn, kind = "intersection()", lambda: s.intersection(), "subset"
        srcs = []
    elif x == 16:
        what, fn, kind = "clear()", s.clear, "empty"
    else:
        what, fn, kind = "copy()", s.copy, "same"
    res = attempt(fn, _extra=extra)
    if res is FAILED:
        return
    if any(sx.kind == "raises" for sx in srcs) and kind != "any":
        # An operation may stop before reading every input (intersection with an empty set).
        c.expected["raises-unread"] += 1
    if type(res) is not PersistentSet:
        fail("check", f"{what} returned a {type(res).__name__}")
        return
    nv = add_version(c, res)
    if nv is None:
        return
    ids_list = [source_ids(sx) for sx in srcs]
    known = all(i is not None for i in ids_list)
    allowed = list(v.ids) + [i for ids in ids_list if ids is not None for i in ids]
    if kind == "empty":
        if nv.ids:
            fail("check", "s.clear() is not empty")
    elif kind == "same":
        if nv.ids != v.ids:
            fail("check", "s.copy() has other elements")
    elif kind == "subset":
        over(what, nv.ids, v.ids)
    elif kind == "rsubset":
        if known:
            over(what, nv.ids, allowed)
    elif known:
        if not over(what, nv.ids, allowed) and kind == "union" and all(sx.kind in ("list", "tuple", "gen") for sx in srcs):
            base = collections.Counter(v.ids)
            got = collections.Counter(nv.ids)
            lost = sum((base - got).values())
            new = sum((got - base).values())
            if lost > new:
                fail("check", f"{what}: lost {lost} of the set's elements, {new} new")


def op_set_transient(c: Ctx, st: State) -> None:
    """Edit a TransientSet of this thread, finish it, check the result and use-after-finish."""
    rng = c.rng
    v = pick_version(c, False)
    s = c.cur_obj = v.obj
    t = s.transient()
    watch(st, t, rng)
    c.cur_transient = t
    shared = rng.random() < 0.15  # also: touched by hostile code, or fed unknown elements
    if shared:
        reg_add(st, t, rng)  # other threads and hostile code may edit it now
    registered = shared  # other threads may edit it at any time
    added: list = []
    use_with = rng.random() < 0.3
    if use_with:
        if t.__enter__() is not t:
            fail("check", "TransientSet.__enter__ did not return the transient")
    snap: Any = None
    for _ in range(rng.randrange(1, 10)):
        x = rng.randrange(12)
        e = pick_elem(c)
        c.t_touched = False
        n0 = attempt(len, t)
        if x <= 2:
            added.append(e)
            r = attempt(t.add if x else t.conj, e)
            if r is not FAILED and r is not t:
                fail("check", "TransientSet.add did not return the transient")
            n1 = attempt(len, t)
            if n0 is not FAILED and n1 is not FAILED and not shared and not c.t_touched:
                if r is FAILED and n1 != n0:  # a failed edit leaves the transient unchanged
                    fail("check", f"TransientSet.add raised, but len {n0} -> {n1}")
                elif not 0 <= n1 - n0 <= 1:
                    fail("check", f"TransientSet.add: len {n0} -> {n1}")
        elif x <= 4:
            name = rng.choice(("discard", "disj", "remove"))
            r = attempt(getattr(t, name), e, _extra=(KeyError,))
            n1 = attempt(len, t)
            if n0 is not FAILED and n1 is not FAILED and not shared and not c.t_touched:
                if r is FAILED and n1 != n0:
                    fail("check", f"TransientSet.{name} raised, but len {n0} -> {n1}")
                elif r is not FAILED and (not 0 <= n0 - n1 <= 1 or (name == "remove" and n1 != n0 - 1)):
                    fail("check", f"TransientSet.{name}: len {n0} -> {n1}")
        elif x == 5:
            check_bool("x in t", attempt(t.__contains__, e))
        elif x == 6:
            check_bool("t.contains(x)", attempt(t.contains, e))
        elif x <= 8 and rng.random() < 0.1:  # t.update(t): adds nothing new
            attempt(t.update, t) if rng.random() < 0.5 else attempt(t.update, [e], t)
            added.append(e)
        elif x <= 8:
            srcs = [make_source(c, st, for_set=True) for _ in range(rng.randrange(0, 3))]
            c.cur_source = srcs[0].obj if srcs else None
            attempt(t.update, *[sx.obj for sx in srcs], _extra=SRC)
            c.cur_source = None
            for sx in srcs:
                if source_ids(sx) is None:
                    shared = True  # unknown elements: no membership check at the end
                added.extend(sx.elems)
        elif x == 9:
            elems = attempt(list, t)
            it = attempt(iter, t)
            # What the iterator must yield is known only if nothing edited the transient between
            # list(t) and iter(t): another thread (registered), or hostile code run by this one.
            if elems is not FAILED and it is not FAILED and not registered and not c.t_touched:
                snap = (it, [id(y) for y in elems], elems)
        else:
            n = attempt(len, t)
            elems = attempt(list, t)
            if n is not FAILED and elems is not FAILED and n != len(elems) and not shared and not c.t_touched:
                fail("check", f"TransientSet: len() {n}, iteration {len(elems)}")
        if c.t_touched_ever:
            shared = True
    snap_late = snap is not None and rng.random() < 0.5
    if snap is not None and not snap_late:
        it, ids, _ = snap
        got = attempt(lambda: [id(y) for y in it])
        if got is not FAILED and got != ids:
            fail("check", "an iterator over a TransientSet changed with the transient")
    res = finish(c, t, use_with)
    if snap_late:  # resumed after the transient was finished (and maybe collected)
        if rng.random() < 0.3:
            gc.collect()
        it, ids, _ = snap
        got = attempt(lambda: [id(y) for y in it])
        if got is not FAILED and got != ids:
            fail("check", "an iterator over a transient changed after the transient was finished")
    c.cur_transient = None
    if res is not FAILED and type(res) is PersistentSet:
        nv = add_version(c, res)
        if nv is not None and not shared and not c.t_touched_ever:
            over("TransientSet", nv.ids, list(v.ids) + [id(y) for y in added])
    after_finish(c, st, t, res, [("t.add()", t.add, (pick_elem(c),)), ("t.discard()", t.discard, (1,)),
                                 ("t.remove()", t.remove, (1,)), ("t.update()", t.update, ([1],)),
                                 ("len(t)", len, (t,)), ("x in t", t.__contains__, (1,)), ("iter(t)", iter, (t,))])


def finish(c: Ctx, t: Any, use_with: bool) -> Any:
    """Finish t: persistent(), or the end of its with-block (maybe by an exception)."""
    rng = c.rng
    if use_with and rng.random() < 0.4:
        exc = rng.random() < 0.5
        c.ops += 1
        try:
            r = t.__exit__(Hostile, Hostile("in with"), None) if exc else t.__exit__(None, None, None)
            if r:
                fail("check", "a transient's __exit__ swallowed the exception")
        except CATCH as e:
            absorb(c, e)
        return attempt(t.persistent)
    res = attempt(t.persistent)
    if use_with:
        attempt(t.__exit__, None, None, None)
    return res


def after_finish(c: Ctx, st: State, t: Any, res: Any, uses: list) -> None:
    rng = c.rng
    if res is not FAILED and type(res) is not PERSISTENT_TYPES[type(t) is TransientList]:
        fail("check", f"{type(t).__name__}.persistent() returned {type(res).__name__}")
    if res is not FAILED or rng.random() < 0.5:
        # Hostile code may have failed persistent() with "busy"; the transient is finished anyway
        # only if persistent() succeeded somewhere: then every use raises "is finished".
        c.ops += 1
        try:
            again = t.persistent()
        except CATCH as e:
            absorb(c, e)
        else:
            if res is not FAILED and again is not res:
                fail("check", "t.persistent() twice returned two different objects")
            res = again
    if res is not FAILED:
        what, fn, args = rng.choice(uses)
        expect_finished(what, fn, *args)
        if rng.random() < 0.3:
            c.ops += 1
            try:
                r = t.__exit__(None, None, None)
                if r:
                    fail("check", "__exit__ of a finished transient returned true")
            except CATCH as e:
                absorb(c, e)
    if rng.random() < 0.2:
        reg_add(st, t, rng)


# --------------------------------------------------------------------------------------
# Operations on lists
# --------------------------------------------------------------------------------------


def op_list_build(c: Ctx, st: State) -> None:
    rng = c.rng
    src = make_source(c, st, for_set=False)
    c.cur_source = src.obj
    x = rng.randrange(5)
    if x == 0:
        res = attempt(PersistentList, src.obj, _extra=SRC)
    elif x == 1:
        res = attempt(PersistentList.from_list, src.obj, _extra=SRC)
    elif x == 2:
        res = attempt(PersistentList.from_iterable, src.obj, _extra=SRC)
    elif x == 3:
        elems = src.elems if src.kind not in ("gen", "lying", "raises", "transient") else make_elems(c, 4)
        src = Source(elems, elems, "args")
        res = attempt(lambda: PersistentList.create(*elems))
    else:
        res = attempt(PersistentList.__new__, PersistentList, src.obj, _extra=SRC)
    if res is FAILED:
        return
    if src.kind == "raises":
        fail("check", "a list was built from an iterable whose __iter__ raises")
        return
    nv = add_version(c, res)
    ids = source_ids(src)
    if nv is not None and ids is not None and nv.ids != ids:
        fail("check", f"PersistentList({src.kind}) of {len(ids)} elements: {len(nv.ids)} elements, or another order")


def op_list_edit(c: Ctx, st: State) -> None:
    rng = c.rng
    v = pick_version(c, True)
    l = c.cur_obj = v.obj
    n = len(v.ids)
    e = pick_elem(c)
    x = rng.randrange(11)
    expect: Optional[list] = None  # the exact ids of the result, when known
    if x <= 1:
        res = attempt(l.append if x else l.conj, e)
        expect = v.ids + [id(e)]
    elif x <= 3:
        src = make_source(c, st, for_set=False)
        c.cur_source = src.obj
        res = attempt(l.extend, src.obj, _extra=SRC)
        ids = source_ids(src)
        if src.kind == "raises" and res is not FAILED:
            fail("check", "l.extend() of an iterable whose __iter__ raises succeeded")
            return
        expect = v.ids + ids if ids is not None else None
    elif x <= 5:
        i = pick_index(c, n)
        res, exc = attempt_exc(l.set if x == 4 else l.assoc, i, e, _extra=IDX)
        if type(i) is not HIndex:
            slot = norm_index(i, n)
            if res is FAILED and isinstance(exc, IndexError) and slot is not None:
                fail("check", f"l.set({i}, x) on a list of {n} raised IndexError")
            if res is not FAILED and slot is None:
                fail("check", f"l.set({i}, x) on a list of {n} did not raise IndexError")
                return
            if slot is not None:
                expect = list(v.ids)
                expect[slot] = id(e)
        elif res is not FAILED:
            nv = add_version(c, res)
            if nv is not None:
                diff = [k for k in range(min(n, len(nv.ids))) if nv.ids[k] != v.ids[k]]
                if len(nv.ids) != n or len(diff) > 1 or (diff and nv.ids[diff[0]] != id(e)):
                    fail("check", "l.set(hostile index, x) changed more than one slot")
            return
    elif x == 6:
        res, exc = attempt_exc(l.pop, _extra=IDX)
        if res is FAILED and isinstance(exc, IndexError) and n:
            fail("check", f"pop() of a list of {n} raised IndexError")
        if res is not FAILED and not n:
            fail("check", "pop() of an empty list did not raise IndexError")
            return
        expect = v.ids[:-1]
    elif x == 7:
        w = pick_version(c, True)
        if rng.random() < 0.8:
            res = attempt(lambda: l + w.obj)
            expect = v.ids + w.ids
        else:
            other = rng.choice(([1], (1,), PersistentSet([1]), "ab"))
            res = attempt(lambda: l + other)
            if res is not FAILED:
                fail("check", f"PersistentList + {type(other).__name__} succeeded")
            return
    elif x == 8:
        k: Any = rng.choice((-3, -1, 0, 1, 2, 3, 4)) if rng.random() < 0.8 else HIndex(rng.randrange(-1, 4), random_traits(rng))
        if st.allows("big_repeat") and rng.random() < 0.05:
            k = rng.randrange(100, 2000)
        if type(k) is int and n * k > 4 * MAX_POOLED_LEN:
            k = 2
        res = attempt(lambda: l * k) if rng.random() < 0.5 else attempt(lambda: k * l)
        if type(k) is int:
            expect = v.ids * k
        elif res is not FAILED:
            nv = add_version(c, res)
            if nv is not None and (not n and nv.ids or n and (len(nv.ids) % n or nv.ids != v.ids * (len(nv.ids) // n))):
                fail("check", "l * hostile index is not a repetition of l")
            return
    else:  # del l[i], l[i] = x: immutable. (CPython converts an int index first: a huge one
        # raises IndexError, a hostile __index__ its own exception.)
        i = pick_index(c, n)

        def delete() -> None:
            del l[i]

        def assign() -> None:
            l[i] = e

        if attempt(delete if x == 9 else assign, _extra=IDX) is not FAILED:
            fail("check", "del l[i] / l[i] = x on a PersistentList succeeded")
        return
    if res is FAILED:
        return
    nv = add_version(c, res)
    if nv is not None and expect is not None and nv.ids != expect:
        fail("check", f"list op {x}: {len(nv.ids)} elements, expected {len(expect)} (or another order/slot)")


def op_list_read(c: Ctx, st: State) -> None:
    rng = c.rng
    v = pick_version(c, True)
    l = c.cur_obj = v.obj
    n = len(v.ids)
    x = rng.randrange(11)
    if x <= 2:
        i = pick_index(c, n)
        name = ("nth", "get", "getitem")[x]
        if name == "get" and rng.random() < 0.5:
            d = object()
            res, exc = attempt_exc(l.get, i, d, _extra=IDX)
        else:
            d = None
            res, exc = attempt_exc(l.__getitem__ if name == "getitem" else getattr(l, name), i, _extra=IDX)
        if type(i) is HIndex:
            if res is not FAILED and id(res) not in v.ids and not (name == "get" and res is d):
                fail("check", f"l.{name}(hostile index) returned an element not in the list")
            return
        slot = norm_index(i, n)
        if res is FAILED:
            if isinstance(exc, IndexError) and (slot is not None or name == "get"):
                fail("check", f"l.{name}({i}) on a list of {n} raised IndexError")
            return
        if slot is None:
            if name != "get":
                fail("check", f"l.{name}({i}) on a list of {n} did not raise IndexError")
            elif res is not d:
                fail("check", f"l.get({i}) on a list of {n} did not return the default")
        elif id(res) != v.ids[slot]:
            fail("check", f"l.{name}({i}) returned the wrong element")
    elif x <= 4:
        # Slices: plain bounds are exact; hostile __index__ bounds give some sub-sequence.
        def b() -> Any:
            r = rng.random()
            if r < 0.25:
                return None
            if r < 0.9:
                return rng.randrange(-n - 3, n + 4)
            return HIndex(rng.randrange(-n - 1, n + 2), random_traits(rng))

        a, z = b(), b()
        step = rng.choice((None, 1, 2, 3, -1, -2, 0, 5)) if rng.random() < 0.9 else HIndex(rng.choice((-1, 1, 2)), random_traits(rng))
        plain = all(type(y) is not HIndex for y in (a, z, step))
        if x == 3:
            res, exc = attempt_exc(l.__getitem__, slice(a, z, step), _extra=(ValueError,))
            exp = v.ids[a:z:step] if plain and step != 0 else None
        else:
            res, exc = attempt_exc(l.slice, a, z, _extra=(ValueError,))
            exp = v.ids[a:z] if plain else None
        if res is FAILED:
            if isinstance(exc, ValueError) and not (x == 3 and (step == 0 or type(step) is HIndex)):
                fail("check", f"slice ({a}, {z}, {step}) raised ValueError")
            return
        if x == 3 and plain and step == 0:
            fail("check", "a slice with step 0 did not raise ValueError")
            return
        nv = add_version(c, res)
        if nv is not None:
            if exp is not None and nv.ids != exp:
                fail("check", f"slice ({a}, {z}, {step}) of a list of {n}: {len(nv.ids)} elements, expected {len(exp)}")
            elif exp is None:
                over("slice with hostile bounds", nv.ids, v.ids)
    elif x <= 6:
        # Membership by identity: Python's identity shortcut makes x equal to itself.
        if n and rng.random() < 0.6:
            j = rng.randrange(n)
            e = v.items[j]
            first = v.ids.index(id(e))
            same = v.ids.count(id(e))
        else:
            e, first, same = pick_elem(c), None, 0
        y = rng.randrange(3)
        if y == 0:
            r = attempt(l.__contains__, e)
            check_bool("x in l", r)
            if r is False and first is not None:
                fail("check", "an element of the list (by identity) is not `in` it")
        elif y == 1:
            r = attempt(l.count, e)
            if r is not FAILED and not (same <= r <= n):
                fail("check", f"l.count(x) = {r}: x occurs {same} times by identity in {n}")
        else:
            args: tuple = ()
            if rng.random() < 0.3:
                args = (pick_index(c, n),) if rng.random() < 0.5 else (pick_index(c, n), pick_index(c, n))
            r, exc = attempt_exc(l.index, e, *args, _extra=(ValueError,))
            if args:
                plain_args = all(type(y) is not HIndex for y in args)
                if r is not FAILED and plain_args:
                    lo, hi, _ = slice(*args).indices(n) if len(args) == 2 else slice(args[0], None).indices(n)
                    if not lo <= r < hi:
                        fail("check", f"l.index(x, {args}) = {r}: outside the range")
            elif r is FAILED:
                if isinstance(exc, ValueError) and first is not None:
                    fail("check", "l.index(x) raised ValueError for an element of the list (by identity)")
            elif not 0 <= r < n or (first is not None and r > first):
                fail("check", f"l.index(x) = {r}, first occurrence by identity at {first}")
    elif x == 7:
        it = attempt(reversed, l)
        if it is not FAILED:
            got = attempt(lambda: [id(y) for y in it])
            if got is not FAILED and got != v.ids[::-1]:
                fail("check", "reversed(l) gave other elements")
    elif x == 8:
        r = attempt(l.list)
        if r is not FAILED and [id(y) for y in r] != v.ids:
            fail("check", "l.list() gave other elements")
    elif x == 9:
        # A list of the same objects: equal without calling any element method.
        same = attempt(PersistentList, list(v.items))
        if same is not FAILED:
            for op, want in (("==", True), ("!=", False), ("<", False), ("<=", True), (">", False), (">=", True)):
                f = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
                     "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]
                r = attempt(f, l, same)
                if r is not want:
                    fail("check", f"l {op} (a list of the same objects) is {r}, expected {want}")
                    break
    else:
        attempt(repr, l)
        attempt(str, l)


def op_compare(c: Ctx, st: State) -> None:
    """Comparisons and hashes of lists and sets with hostile elements."""
    rng = c.rng
    want_list = rng.random() < 0.75
    v = pick_version(c, want_list)
    a = c.cur_obj = v.obj
    x = rng.randrange(4)
    if x == 0:
        r = attempt(hash, a)
        if r is not FAILED and type(r) is not int:
            fail("check", f"hash() returned {type(r).__name__}")
        return
    if x == 1:
        other: Any = rng.choice(([], (), [1], {1}, frozenset(), "x", None, 3, PersistentMap()))
    elif want_list and v.ids and rng.random() < 0.8:
        # The same objects up to a slot, then another element: == on the shared prefix takes
        # the identity shortcut, the differing elements' __eq__ and __lt__/__gt__ decide.
        j = rng.randrange(len(v.ids))
        e = pick_elem(c) if rng.random() < 0.5 else HElem(rng.randrange(N_VALUES), random_traits(rng) | T_LT)
        y = rng.randrange(3)
        other = attempt(a.set, j, e) if y == 0 else attempt(a.slice, 0, j) if y == 1 else attempt(lambda: a.slice(0, j).append(e))
        if other is FAILED:
            return
    else:
        other = pick_version(c, rng.random() < 0.8 if want_list else rng.random() < 0.2).obj
    op = rng.choice(("<", "<=", ">", ">=") if rng.random() < 0.6 else ("==", "!="))
    f = {"==": lambda p, q: p == q, "!=": lambda p, q: p != q, "<": lambda p, q: p < q,
         "<=": lambda p, q: p <= q, ">": lambda p, q: p > q, ">=": lambda p, q: p >= q}[op]
    r = attempt(f, a, other) if rng.random() < 0.5 else attempt(f, other, a)
    if r is FAILED:
        return
    if want_list and type(other) is not PersistentList and op in ("==", "!="):
        if r is not (op == "!="):
            fail("check", f"PersistentList {op} {type(other).__name__} is {r!r}")
    elif type(r) is not bool and not (want_list and op not in ("==", "!=")):
        # (Like a tuple's, a list's < returns what the first differing elements' < returned.)
        fail("check", f"{type(a).__name__} {op} {type(other).__name__} returned {type(r).__name__}")


def op_list_transient(c: Ctx, st: State) -> None:
    """Edit a TransientList against a model of its edits, finish it, check use-after-finish."""
    rng = c.rng
    v = pick_version(c, True)
    l = c.cur_obj = v.obj
    t = l.transient()
    watch(st, t, rng)
    c.cur_transient = t
    model = list(v.items)
    exact = True  # the model is exactly the transient's contents
    unknown = False  # shared, or touched by hostile code: elements from elsewhere
    registered = False  # other threads may edit it at any time
    if rng.random() < 0.15:
        reg_add(st, t, rng)  # shared from now on
        registered = True
        exact = False
        unknown = True
    added: list = []
    use_with = rng.random() < 0.3
    if use_with:
        if t.__enter__() is not t:
            fail("check", "TransientList.__enter__ did not return the transient")
    snap: Any = None
    log: list = []  # what was done, for the failure messages
    for _ in range(rng.randrange(1, 12)):
        x = rng.randrange(13)
        e = pick_elem(c)
        n = len(model)
        c.t_touched = False
        log.append(f"{x}:{n}")
        if x <= 2:
            added.append(e)
            if attempt(t.append, e) is not FAILED:
                model.append(e)
        elif x <= 4 and rng.random() < 0.1:  # t.extend(t): reads a snapshot of itself
            r = attempt(t.extend, t)
            log.append(f"extend(t)->{'ok' if r is not FAILED else 'failed'}")
            if r is not FAILED:
                model.extend(list(model))
            else:
                exact = False
            if not exact:
                unknown = True  # elements doubled: counts no longer bounded by the inputs
        elif x <= 4:
            src = make_source(c, st, for_set=False)
            c.cur_source = src.obj
            r = attempt(t.extend, src.obj, _extra=SRC)
            c.cur_source = None
            ids = source_ids(src)
            added.extend(src.elems)
            log.append(f"extend({src.kind}, {len(src.elems)})->{'ok' if r is not FAILED else 'failed'}")
            if r is not FAILED and ids is not None:
                model.extend(src.elems)
            else:
                exact = False  # a failed extend may have appended some elements
                if not src.exact:
                    unknown = True  # read from a transient: its elements are not known
        elif x == 5:
            r, exc = attempt_exc(t.pop, _extra=IDX)
            log.append(f"pop->{type(exc).__name__ if r is FAILED else 'ok'}")
            if exact and not c.t_touched_ever:
                if r is FAILED:
                    if isinstance(exc, IndexError) and n:
                        fail("check", f"TransientList.pop() with {n} elements raised IndexError")
                elif not n:
                    fail("check", "TransientList.pop() of an empty transient did not raise")
                elif r is not model[-1]:
                    fail("check", "TransientList.pop() returned another element than the last")
            if r is not FAILED and model:
                model.pop()
        elif x <= 7:
            i = pick_index(c, n)
            added.append(e)
            r, exc = attempt_exc(t.__setitem__, i, e, _extra=IDX)
            log.append(f"t[{i!r}]=x->{type(exc).__name__ if r is FAILED else 'ok'}")
            if type(i) is HIndex:
                if r is not FAILED:
                    exact = False
            elif exact and not c.t_touched_ever:
                slot = norm_index(i, n)
                if r is FAILED and isinstance(exc, IndexError) and slot is not None:
                    fail("check", f"t[{i}] = x with {n} elements raised IndexError")
                elif r is not FAILED and slot is None:
                    fail("check", f"t[{i}] = x with {n} elements did not raise IndexError")
                elif r is not FAILED:
                    model[slot] = e
            elif r is not FAILED:
                exact = False
        elif x == 8:
            i = pick_index(c, n)
            r, exc = attempt_exc(t.__getitem__, i, _extra=IDX)
            if exact and not c.t_touched_ever and type(i) is not HIndex:
                slot = norm_index(i, n)
                if r is FAILED:
                    if isinstance(exc, IndexError) and slot is not None:
                        fail("check", f"t[{i}] with {n} elements raised IndexError")
                elif slot is None:
                    fail("check", f"t[{i}] with {n} elements did not raise IndexError")
                elif r is not model[slot]:
                    fail("check", f"t[{i}] returned another element than the model's; from {len(v.ids)}: {' '.join(log)}")
        elif x == 9:
            a, z = rng.randrange(-n - 2, n + 3), rng.randrange(-n - 2, n + 3)
            step = rng.choice((None, 1, 2, -1, -3))
            r = attempt(t.__getitem__, slice(a, z, step))
            if r is not FAILED:
                if type(r) is not PersistentList:
                    fail("check", f"t[a:b] returned {type(r).__name__}")
                elif exact and not c.t_touched_ever and [id(y) for y in r] != [id(y) for y in model[a:z:step]]:
                    fail("check", f"t[{a}:{z}:{step}] disagrees with the model")
        elif x == 10:
            check_bool("x in t", attempt(t.__contains__, e))
        elif x == 11:
            elems = attempt(list, t)
            it = attempt(iter, t)
            # What the iterator must yield is known only if nothing edited the transient between
            # list(t) and iter(t): another thread (registered), or hostile code run by this one.
            if elems is not FAILED and it is not FAILED and not registered and not c.t_touched:
                snap = (it, [id(y) for y in elems], elems)
        else:
            k = attempt(len, t)
            elems = attempt(list, t)
            if exact and not c.t_touched_ever and k is not FAILED and elems is not FAILED:
                if k != len(elems) or [id(y) for y in elems] != [id(y) for y in model]:
                    fail("check", f"TransientList: len {k}, {len(elems)} elements, model {len(model)}")
        if c.t_touched_ever:
            log.append("touched")
            exact = False
            unknown = True
    snap_late = snap is not None and rng.random() < 0.5
    if snap is not None and not snap_late:
        it, ids, _ = snap
        got = attempt(lambda: [id(y) for y in it])
        if got is not FAILED and got != ids:
            fail("check", "an iterator over a TransientList changed with the transient")
    res = finish(c, t, use_with)
    if snap_late:  # resumed after the transient was finished (and maybe collected)
        if rng.random() < 0.3:
            gc.collect()
        it, ids, _ = snap
        got = attempt(lambda: [id(y) for y in it])
        if got is not FAILED and got != ids:
            fail("check", "an iterator over a transient changed after the transient was finished")
    if c.t_touched_ever:
        exact = False
        unknown = True
    c.cur_transient = None
    if res is not FAILED and type(res) is PersistentList:
        nv = add_version(c, res)
        if nv is not None:
            if exact:
                if nv.ids != [id(y) for y in model]:
                    fail("check", f"TransientList result: {len(nv.ids)} elements, model {len(model)} (or other elements); "
                         f"from {len(v.ids)}: {' '.join(log)}")
            elif not unknown:
                over("TransientList", nv.ids, list(v.ids) + [id(y) for y in added] + [id(y) for y in model])
    after_finish(c, st, t, res, [("t.append()", t.append, (1,)), ("t.extend()", t.extend, ([1],)),
                                 ("t.pop()", t.pop, ()), ("t[0] = x", t.__setitem__, (0, 1)),
                                 ("t[0]", t.__getitem__, (0,)), ("len(t)", len, (t,)),
                                 ("x in t", t.__contains__, (1,)), ("iter(t)", iter, (t,))])


def op_shared_transient(c: Ctx, st: State) -> None:
    """Transients in the registry, edited by any thread and by hostile code."""
    rng = c.rng
    ts = [x for x in list(st.reg) if type(x) in TRANSIENT_TYPES]
    if not ts or rng.random() < 0.2:
        t = pick_version(c, rng.random() < 0.5).obj.transient()
        reg_add(st, t, rng)
        return
    t = rng.choice(ts)
    for _ in range(rng.randrange(1, 6)):
        e = pick_elem(c)
        x = rng.randrange(8)
        if x <= 3:
            _reenter_transient(c, st, t)
        elif x == 4:
            if type(t) is TransientSet:
                attempt(t.update, make_elems(c, 3))
            else:
                attempt(t.extend, make_elems(c, 3))
        elif x == 5:
            attempt(t.__contains__, e)
        elif x == 6:
            n = attempt(len, t)
            elems = attempt(list, t)
            if n is not FAILED and elems is not FAILED and type(n) is not int:
                fail("check", "len() of a transient is not an int")
        else:
            res = attempt(t.persistent)
            if res is not FAILED:
                add_version(c, res)
                again = attempt(t.persistent)
                if again is not FAILED and again is not res:
                    fail("check", "persistent() of a shared transient returned two different objects")


# --------------------------------------------------------------------------------------
# Iterators, Atoms, types, copies
# --------------------------------------------------------------------------------------


def make_iter(v: Version, rng: random.Random) -> tuple:
    """(iterator, expected ids)"""
    if v.is_list and rng.random() < 0.3:
        return reversed(v.obj), v.ids[::-1]
    return iter(v.obj), list(v.ids)


def op_iter_resume(c: Ctx, st: State) -> None:
    """Partially consume an iterator, drop the set/list, maybe collect, resume."""
    rng = c.rng
    if rng.random() < 0.5:
        v = pick_version(c, rng.random() < 0.5)
    else:  # a fresh one that nothing else holds
        want = rng.random() < 0.5
        obj = attempt(PersistentList if want else PersistentSet, [e for e in make_elems(c, rng.randrange(40)) if want or type(e) is not list])
        if obj is FAILED:
            return
        v = Version(obj, list(obj))
        del obj
    it, expected = make_iter(v, rng)
    keep = v.items
    got = []
    for _ in range(rng.randrange(len(expected) + 1)):
        got.append(id(next(it)))
    hint = it.__length_hint__()
    if hint != len(expected) - len(got):
        fail("check", f"__length_hint__ {hint}, expected {len(expected) - len(got)}")
    try:
        st.pool.remove(v)
    except ValueError:
        pass
    del v
    if rng.random() < 0.3:
        drop_refs(c, st)
    if rng.random() < 0.2:
        gc.collect()
    for e in it:
        got.append(id(e))
    if got != expected:
        fail("check", "an iterator resumed after its set/list was dropped gave other elements")
    if next(it, None) is not None:
        fail("check", "an exhausted iterator produced more")
    if it.__length_hint__() != 0:
        fail("check", "an exhausted iterator's __length_hint__ is not 0")
    if rng.random() < 0.3:
        reg_add(st, it, rng)
    del keep


def op_shared_iter(c: Ctx, st: State) -> None:
    """Iterators shared by all threads: each element handed out once."""
    rng = c.rng
    its = list(st.shared_iters)
    if not its or rng.random() < 0.15:
        v = pick_version(c, rng.random() < 0.5)
        it, expected = make_iter(v, rng)
        st.shared_iters.append(SharedIter(it, expected, v.items))
        if len(st.shared_iters) > 24:
            try:
                old = st.shared_iters.pop(rng.randrange(len(st.shared_iters)))
            except (IndexError, ValueError):
                old = None
            if old is not None:
                verify_shared_iter(st, old, final=False)
        return
    rec = rng.choice(its)
    for _ in range(rng.randrange(1, 8)):
        c.ops += 1
        try:
            e = next(rec.it)
        except StopIteration:
            rec.exhausted = True
            break
        rec.got.append(id(e))
    hint = rec.it.__length_hint__()
    if not 0 <= hint <= sum(rec.expected.values()):
        fail("check", f"shared iterator: __length_hint__ {hint}")


def op_atom(c: Ctx, st: State) -> None:
    rng = c.rng
    atoms = list(st.atoms)
    if not atoms:
        return
    a = rng.choice(atoms)
    x = rng.randrange(8)
    e = pick_elem(c)
    if x <= 2:
        before = attempt(a.deref)
        r = attempt(a.swap, _grow, e)
        if r is not FAILED:
            if type(r) not in ATOM_TYPES:
                fail("check", f"Atom.swap returned {type(r).__name__}")
            elif type(before) is PersistentList and type(r) is PersistentList and r[-1] is not e:
                # swap returns what its function returned: cur.append(e)
                fail("check", "Atom.swap(append) returned a list that does not end with the element")
    elif x == 3:

        def hostile_fn(cur: Any) -> Any:
            hostile(c, st, T_ACTIONS)
            y = rng.randrange(5)
            if y == 0:
                attempt(a.reset, cur)
            elif y == 1:
                attempt(a.swap, _grow, pick_elem(c))
            elif y == 2:
                # not a persistent structure: TypeError
                return rng.choice((5, None, [1], {1}, cur.transient() if hasattr(cur, "transient") else 5))
            elif y == 3:
                raise Hostile("swap function")
            return _grow(cur, e)

        r = attempt(a.swap, hostile_fn)
        if r is not FAILED and type(r) not in ATOM_TYPES:
            fail("check", f"Atom.swap returned {type(r).__name__}")
    elif x == 4:
        v = pick_version(c, rng.random() < 0.5)
        r = attempt(a.reset, v.obj)  # returns the value it replaced
        if r is not FAILED and type(r) not in ATOM_TYPES:
            fail("check", f"Atom.reset() returned {type(r).__name__}")
    elif x == 5:
        cur = attempt(a.deref)
        v = pick_version(c, rng.random() < 0.5)
        if cur is not FAILED:
            check_bool("compare_and_set", attempt(a.compare_and_set, cur, v.obj))
    elif x == 6:
        r = attempt(a.reset, rng.choice((5, None, [1], frozenset())))
        if r is not FAILED:
            fail("check", "Atom.reset() accepted a non-persistent value")
    else:
        attempt(repr, a)
        r = attempt(lambda: a.value)
        if r is not FAILED and type(r) not in ATOM_TYPES:
            fail("check", f"Atom.value is a {type(r).__name__}")


def op_types(c: Ctx, st: State) -> None:
    """type(x)() and type(x).__new__(type(x)) for the exported types: a TypeError, or an object
    that works."""
    rng = c.rng
    types = [PersistentSet, PersistentList, TransientSet, TransientList, SET_ITER_TYPE, LIST_ITER_TYPE]
    T = rng.choice(types)
    arg = pick_version(c, rng.random() < 0.5).obj
    x = rng.randrange(5)
    if x == 4:  # not an acceptable base type
        sub = attempt(type, "Sub", (T,), {"__iter__": lambda self: iter(())})
        if sub is not FAILED:
            fail("check", f"{T.__name__} could be subclassed")
        return
    if x == 0:
        obj = attempt(T)
    elif x == 1:
        obj = attempt(T.__new__, T)
    elif x == 2:
        obj = attempt(T, arg)
    else:
        obj = attempt(T.__new__, T, arg)
    if obj is FAILED:
        return
    if T in TRANSIENT_TYPES:
        fail("check", f"{T.__name__} was created directly")
    if type(obj) in PERSISTENT_TYPES:
        add_version(c, obj)
    elif T in (SET_ITER_TYPE, LIST_ITER_TYPE):
        attempt(next, obj, None)
        attempt(obj.__length_hint__)
        attempt(list, obj)
    elif isinstance(obj, TRANSIENT_TYPES):
        attempt(len, obj)
        attempt(list, obj)
        attempt(obj.persistent)
    reg_add(st, obj, rng)


def op_reinit(c: Ctx, st: State) -> None:
    """x.__init__(...) on a live version must not change it (the pool check would see it)."""
    v = pick_version(c, c.rng.random() < 0.5)
    c.cur_obj = v.obj
    src = make_source(c, st, for_set=not v.is_list)
    attempt(v.obj.__init__, src.obj, _extra=SRC)
    check_version(v)


def op_copy(c: Ctx, st: State) -> None:
    rng = c.rng
    v = pick_version(c, rng.random() < 0.5)
    obj = c.cur_obj = v.obj
    x = rng.randrange(6)
    if x == 0:
        r = attempt(copy.copy, obj)
        if r is not FAILED and [id(e) for e in r] != v.ids:
            fail("check", "copy.copy() has other elements")
    elif x == 1:
        r = attempt(copy.deepcopy, obj)
        if r is not FAILED:
            if type(r) is not type(obj):
                fail("check", f"deepcopy returned {type(r).__name__}")
            elif v.is_list and len(r) != len(v.ids) or len(r) > len(v.ids):
                fail("check", f"deepcopy: {len(r)} elements from {len(v.ids)}")
            else:
                add_version(c, r)
    elif x <= 3:
        data = attempt(pickle.dumps, obj, rng.randrange(pickle.HIGHEST_PROTOCOL + 1), _extra=(pickle.PicklingError, AttributeError))
        if data is FAILED:
            return
        r = attempt(pickle.loads, data, _extra=(pickle.UnpicklingError,))
        if r is not FAILED:
            if type(r) is not type(obj):
                fail("check", f"pickle round trip gave a {type(r).__name__}")
            elif v.is_list and len(r) != len(v.ids) or len(r) > len(v.ids):
                fail("check", f"pickle round trip: {len(r)} elements from {len(v.ids)}")
            else:
                add_version(c, r)
    else:
        # Things that refuse to be copied or pickled: transients and iterators.
        t = obj.transient() if rng.random() < 0.5 else iter(obj)
        f = rng.choice((copy.copy, copy.deepcopy, pickle.dumps))
        r = attempt(f, t, _extra=(pickle.PicklingError,))
        if r is not FAILED and f is pickle.dumps:
            fail("check", f"pickle.dumps({type(t).__name__}) succeeded")
        if isinstance(t, TRANSIENT_TYPES):
            attempt(t.persistent)


def op_deep_chain(c: Ctx, st: State) -> None:
    """l = PersistentList([x, l]) many levels deep (a set chain less deep: building it hashes
    each level; a chain counts as one operation), with hostile elements on the way: hash/==/
    repr (RecursionError allowed), an iterator left in the registry, then dropped here or by
    whoever clears the registry: deallocation must not overflow the C stack."""
    rng = c.rng
    if rng.random() < 0.5:
        depth = 300_000 if rng.random() < 0.1 else rng.choice((1_000, 20_000))
        x: Any = PersistentList()
        for i in range(depth):
            e = pick_elem(c) if i % 997 == 0 else i
            x = PersistentList([e, x])
            if i % 10000 == 9999 and (st.stop or time.monotonic() > st.deadline):
                break
    else:
        depth = rng.choice((100, 3_000))
        x = PersistentSet()
        for i in range(depth):
            e = pick_elem(c) if i % 97 == 0 else i
            r = attempt(PersistentSet, [e, x])
            if r is not FAILED:
                x = r
    c.ops += 1
    c.cur_obj = x
    attempt(hash, x)
    r = attempt(lambda: x == x)
    if r is not FAILED and r is not True:
        fail("check", "a deep chain is not equal to itself")
    attempt(repr, x)
    if rng.random() < 0.3:
        attempt(copy.deepcopy, x, _extra=(RecursionError,))
    it = iter(x)
    next(it, None)
    if rng.random() < 0.5:
        reg_add(st, it, rng)
    if rng.random() < 0.3:
        reg_add(st, x, rng)  # dropped later, maybe by hostile code in another thread
    c.cur_obj = None
    del x, it


OPS: list = [
    (op_set_build, 8, None),
    (op_set_edit, 10, None),
    (op_set_lookup, 5, None),
    (op_set_algebra, 12, None),
    (op_set_transient, 8, None),
    (op_list_build, 8, None),
    (op_list_edit, 12, None),
    (op_list_read, 10, None),
    (op_compare, 8, None),
    (op_list_transient, 8, None),
    (op_shared_transient, 3, None),
    (op_iter_resume, 4, None),
    (op_shared_iter, 4, None),
    (op_atom, 5, None),
    (op_types, 0.5, "types"),
    (op_reinit, 1, None),
    (op_copy, 2, "pickle"),
    (op_deep_chain, 0.02, "deep_chain"),
    (op_drop, 2, None),
    (op_gc, 0.3, None),
    (op_flip, 2, None),
]


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


FUZZER = fuzz_support.Fuzzer(
    name="adversarial_fuzz_collections",
    script="tests/adversarial_fuzz_collections.py",
    title="adversarial fuzz (sets, lists)",
    doc=__doc__,
    known_bug_features=KNOWN_BUG_FEATURES,
    features=FEATURES,
    known_failure_kinds=(),
    mode=MODE,
    n_traits=N_TRAITS,
    actions=ActionTraits(flip=T_FLIP, gc=T_GC, drop=T_DROP, reenter=T_REENTER),
    ctx_type=Ctx,
    state_type=State,
    hostile_types=(HElem, HIndex),
    ops=OPS,
    reenter=reenter,
    check_version=check_version,
    atom_types=ATOM_TYPES,
    expected_extra=IDX + (KeyError,) + SRC,
    callback_expected_extra=IDX + (KeyError,) + SRC,
    transient_noun="transient",
    iter_nouns=("element", "elements", "its set/list"),
    # The default --seconds 5 could end a replay before the failing step.
    replay_options=" --seconds 600",
)


# run(seconds=5.0, seed=0, threads=1, steps=None, exclude=(), trace_path=None, pool_cap=24,
# stop_on_failure=True) -> Result runs this fuzzer in this process: `exclude` names features, or
# 'known' for all of KNOWN_BUG_FEATURES; `steps` caps the steps per thread (fuzz_support.run).
run = functools.partial(fuzz_support.run, FUZZER)
# main(argv=None) -> exit status: the command line (fuzz_support.main).
main = functools.partial(fuzz_support.main, FUZZER)

if __name__ == "__main__":
    sys.exit(main())
