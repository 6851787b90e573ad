#!/usr/bin/env python3
"""Adversarial fuzzer for PyPersistent's Python API.

Hostile key and value classes (``HKey``, ``HVal``) drive a random sequence of operations over
a pool of live map versions, transients, views, iterators and Atoms, from one or several
threads. After every step every live version is checked:

* the process is still alive (a crash is the finding; run this in a subprocess),
* ``len(m) == len(list(m)) == len(list(m.values())) == len(list(m.items()))``,
* the version is unchanged: ``[(id(k), id(v)) for k, v in m.items()]`` equals the snapshot
  taken when the version was made (the snapshot keeps those objects alive, so ids stay
  unique). No check relies on ``hash``/``==`` of the keys: hostile keys make them unreliable.

Results of operations are checked the same way (multisets of ids: a key whose hash changed
may be stored twice): a ``set`` adds or replaces at most one entry, with the value given; a
merge only adds entries whose value comes from its sources and loses no entry without a
replacement; ``get`` returns one of the map's values or the default; any use of a finished
transient raises ``RuntimeError``, but ``persistent()``, which returns the map it was finished
into, the same object every time; an iterator yields exactly the snapshot of the map it was
made from, even after the map was dropped; a shared iterator hands out each entry once; a
value replaced while a generator feeds ``PersistentMap(gen())`` is released at once.

Exceptions raised on purpose by hostile code (``Hostile``, and rarely a ``MemoryError`` or a
``BaseException`` subclass), ``RuntimeError`` for a transient used from two places at once or
finished, ``TypeError``, ``KeyError`` (where a lookup may raise it) and ``RecursionError`` are
expected and counted. Anything else (``SystemError``, a wrong exception, a failed check) is a
failure.

Hostile behaviours, combined at random: each key/value has a set of trait bits, and a shared
mode word ``MODE[0]`` (flipped continuously by another thread, or between steps) switches
them on and off. A trait acts when the object has it AND the mode has it:

* ``__hash__`` raises, or returns a different value from call to call (the hash changes
  while the key is stored);
* ``__eq__`` raises, answers at random, answers differently on each call for the same pair,
  or returns an object whose ``__bool__`` raises;
* ``__hash__``/``__eq__``/``__bool__``/``__del__`` re-enter: call into the map being operated
  on, the transient being edited (``t[k] = v``, ``del t[k]``, ``t.persistent()``,
  ``t.__exit__``), an Atom (swap/reset/compare_and_set), build or merge other maps, mutate the
  dict/list being read; drop the last references to maps, transients, iterators and views
  (held in a global registry that hostile code clears and pops); run ``gc.collect()`` or
  ``gc.get_referents()`` of the object being edited; flip the mode. Weakref callbacks on
  maps, transients and Atoms do the same while those are deallocated.

Also: constructors from dicts, dict subclasses, lists, generators with hostile bodies,
non-dict mappings, other maps and kwargs; views and their set operations; iterators
consumed partly, the map dropped, then resumed, or shared between threads; Atom swap with a
function that resets the Atom or swaps it again; ``type(x)()`` / ``type(x).__new__(type(x))``
for the exported, view and iterator types; copy/pickle/subclassing of types that refuse
them; chains ``m = PersistentMap(head=i, tail=m)`` up to 300,000 deep.
"Operations" in the summary are the API calls made by steps and hostile code; the checks
after each step are not counted.

At the end everything is dropped, ``gc.collect()`` runs a few times, and no ``HKey``/``HVal``
instance may still be alive. The fuzzer builds no reference cycle through maps (hostile
objects only reach maps through module-level registries), so any survivor is a leak.

Usage::

    python tests/adversarial_fuzz.py --seconds 600 --seed 7 --threads 4   # long mode
    python tests/adversarial_fuzz.py --seconds 4 --seed 1                  # short mode
    python tests/adversarial_fuzz.py --seed 1 --steps 1234 --trace -       # replay a failure
    python tests/adversarial_fuzz.py --exclude known ...   # skip the known-bug triggers

``--trace FILE`` appends one line per step (thread, step, operation) with unbuffered writes,
so after a crash its last lines name the step that crashed. With one thread a run is
deterministic for a given seed (the script re-executes itself with ``PYTHONHASHSEED=0``
unless that is set), so ``--steps N`` replays a failure at step N; with threads it is not.

Importable: ``run(seconds=..., seed=..., threads=...)`` returns a ``Result``; the stress
suite (stress/test_stress_adversarial.py) runs it in-process, and tests/
test_adversarial_fuzz.py runs this script in a subprocess. The harness (threads, contexts,
failure records, expected exceptions, the driver and command line) is tests/fuzz_support.py,
shared with tests/adversarial_fuzz_collections.py.
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
import traceback
import weakref
from itertools import chain
from typing import Any, Callable, List, Optional

_chain = chain.from_iterable

import pypersistent
from pypersistent import Atom, PersistentMap, TransientMap

# The harness both adversarial fuzzers share sits next to this file; the stress suite loads this
# file by path, without tests/ on sys.path.
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
    Hostile,
    absorb,
    active_state,
    attempt,
    classify,
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
    reg_add,
    verify_shared_iter,
    watch,
)

KEYS_TYPE = type(PersistentMap().keys())
VALUES_TYPE = type(PersistentMap().values())
ITEMS_TYPE = type(PersistentMap().items())
ITERATOR_TYPE = type(iter(PersistentMap()))
VIEW_TYPES = (KEYS_TYPE, VALUES_TYPE, ITEMS_TYPE)

# Triggers of the bugs known when this was written, fixed in commit 9706d26 ("Crash-proof: ...");
# --exclude known skips them all, to fuzz an older build past them.
KNOWN_BUG_FEATURES = {
    "map_merge": "a | b, a.update(b), t.update(b) with two maps (and dict | map, which merges the "
    "map into a transient too) and a key whose __eq__ answers differently between two calls: "
    "len() one larger than the entries, iteration segfaults",
    "new_types": "type(m.keys())(), the values/items view types and the iterator type can be "
    "instantiated and then segfault on use",
    "deep_chain": "a 300,000-deep chain m = PersistentMap(head=i, tail=m) segfaults when dropped, "
    "and in hash()",
    "deferred_release": "references dropped during a long operation (a generator feeding "
    "PersistentMap(gen())) are only released at the end of the operation",
}

# --------------------------------------------------------------------------------------
# Hostile traits and the shared mode
# --------------------------------------------------------------------------------------

# Bits 0 to 5 (T_HASH_RAISE ... T_EQ_BADBOOL) are fuzz_support's.
T_REENTER = 1 << 6
T_DROP = 1 << 7
T_GC = 1 << 8
T_DEL = 1 << 9
T_FLIP = 1 << 10
N_TRAITS = 11
ALL_TRAITS = (1 << N_TRAITS) - 1
T_ACTIONS = T_REENTER | T_DROP | T_GC | T_FLIP
T_HASHY = T_HASH_RAISE | T_HASH_VARY | T_ACTIONS
T_EQY = T_EQ_RAISE | T_EQ_RANDOM | T_EQ_FLIP | T_EQ_BADBOOL | T_ACTIONS

#: The shared hostile mode: a trait acts only while its bit is set here. Any thread may
#: rewrite it at any time.
MODE = [0]

#: Keys hash to n % BUCKETS (+1 when the hash varies): many collisions, so __eq__ runs.
BUCKETS = 8
N_KEY_VALUES = 24


class _Hostile:
    """What hostile keys and values share. Equal n (and the same class) means equal when
    behaving; the hash is n % BUCKETS."""

    __slots__ = ("n", "h", "traits", "flip", "__weakref__")
    prefix = "?"

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
            return type(other) is type(self) and self.n == other.n  # type: ignore[attr-defined]
        return hostile_eq(self, other, act)

    def __repr__(self) -> str:
        return f"{self.prefix}{self.n}"

    def __del__(self) -> None:
        try:
            instance_counter()[1] += 1
            act = self.traits & MODE[0]
            if act & T_DEL:
                hostile_del(act)
        except BaseException:  # noqa: BLE001 - nothing may escape a finalizer
            pass


class HKey(_Hostile):
    """A hostile key."""

    __slots__ = ()
    prefix = "K"


class HVal(_Hostile):
    """A hostile value: its __hash__ (hash(map)), __eq__ (map == map) and __del__ (when a
    map drops it) misbehave like HKey's."""

    __slots__ = ()
    prefix = "V"


class HMapping:
    """A mapping that is not a dict (fill_from_keys path): keys() and __getitem__ are hostile
    too. __getitem__ finds keys by identity, so it never calls the keys' __eq__ itself."""

    def __init__(self, pairs: list, act: int) -> None:
        self.pairs = pairs
        self.act = act

    def keys(self) -> list:
        st = active_state()
        if st is not None and self.act:
            hostile(ctx(), st, self.act)
        return [k for k, _ in self.pairs]

    def __getitem__(self, key: Any) -> Any:
        st = active_state()
        if st is not None and self.act:
            c = ctx()
            hostile(c, st, self.act)
            if self.act & T_EQ_RAISE and c.rng.random() < 0.1:
                raise KeyError(key)
        for k, v in self.pairs:
            if k is key:
                return v
        raise KeyError(key)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.keys())


class KeysRaises:
    """Looking up its `keys` attribute raises Hostile (not AttributeError): like dict(), a
    constructor/update must let that propagate, not fall back to reading pairs."""

    def __init__(self, pairs: list) -> None:
        self.pairs = pairs

    @property
    def keys(self) -> Any:
        raise Hostile("keys attribute")

    def __iter__(self):
        return iter(self.pairs)


class DictSub(dict):
    """A dict subclass whose overridden methods PersistentMap never calls (PyDict_Next)."""

    def __getitem__(self, key: Any) -> Any:
        raise Hostile("DictSub.__getitem__")

    def keys(self):  # type: ignore[override]
        raise Hostile("DictSub.keys")


class _Probe:
    __slots__ = ("__weakref__",)


# --------------------------------------------------------------------------------------
# Per-thread context (failures and expected exceptions are fuzz_support's)
# --------------------------------------------------------------------------------------


class Ctx(fuzz_support.Ctx):
    """fuzz_support.Ctx, and what hostile code put into the transient being edited."""

    def __init__(self, st: "State", index: int, seed: int) -> None:
        super().__init__(st, index, seed)
        self.t_added: list = []  # pairs hostile code put into cur_transient
        self.t_touched = False  # hostile code used cur_transient (reset before a check)

    def clear(self) -> None:
        super().clear()
        self.t_added = []
        self.t_touched = False


# --------------------------------------------------------------------------------------
# Shared state of one run
# --------------------------------------------------------------------------------------


class Version:
    """A live map and the snapshot of its entries taken when it was made."""

    __slots__ = ("map", "items", "kids", "vids", "flat")

    def __init__(self, m: PersistentMap, items: list) -> None:
        self.map = m
        self.items = items  # keeps the keys and values alive, so the ids stay unique
        self.flat = list(map(id, _chain(items)))  # id(k0), id(v0), id(k1), ...
        self.kids = self.flat[0::2]
        self.vids = self.flat[1::2]

    @property
    def ids(self) -> list:
        """[(id(k), id(v)) for k, v in items]"""
        return list(zip(self.kids, self.vids))


class SharedIter:
    __slots__ = ("it", "kind", "expected", "got", "exhausted", "keep")

    def __init__(self, it: Any, kind: int, expected: list, keep: list) -> None:
        self.it = it
        self.kind = kind
        self.expected = collections.Counter(expected)
        self.got: list = []
        self.exhausted = False
        self.keep = keep


class State(fuzz_support.State):
    """fuzz_support.State, and the shared hostile keys and values every thread draws from."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.shared_keys: List[HKey] = []
        self.shared_values: List[Any] = []
        self.probe_counter = 0

    def populate(self, rng: random.Random) -> None:
        self.shared_keys = [HKey(i % N_KEY_VALUES, random_traits(rng)) for i in range(2 * N_KEY_VALUES)]
        self.shared_values = [HVal(i, random_traits(rng)) for i in range(16)]
        self.atoms = [Atom(), Atom(PersistentMap(a=1)), Atom()]

    def flippable(self) -> list:
        return self.shared_keys

    def drop_shared(self) -> None:
        self.shared_keys = []
        self.shared_values = []


# --------------------------------------------------------------------------------------
# Random keys, values, sources
# --------------------------------------------------------------------------------------

PLAIN_KEYS: tuple = (0, 1, 2, 3, 5, 7, -1, 2.0, "a", "b", "key", (1, 2), None, 10**20, True)


def random_traits(rng: random.Random) -> int:
    return rng.getrandbits(N_TRAITS) & rng.getrandbits(N_TRAITS)  # each bit with p = 1/4


def pick_key(c: Ctx) -> Any:
    rng = c.rng
    r = rng.random()
    st = c.run
    if r < 0.6 and st.shared_keys:
        return rng.choice(st.shared_keys)
    if r < 0.85:
        return HKey(rng.randrange(N_KEY_VALUES), random_traits(rng))
    if r < 0.995:
        return rng.choice(PLAIN_KEYS)
    return [rng.random()]  # unhashable: TypeError


def pick_value(c: Ctx) -> Any:
    rng = c.rng
    r = rng.random()
    st = c.run
    if r < 0.2 and st.shared_values:
        return rng.choice(st.shared_values)
    if r < 0.6:
        return HVal(rng.randrange(N_KEY_VALUES), random_traits(rng))
    if r < 0.72:
        return rng.randrange(1000)
    if r < 0.8:
        return "v%d" % rng.randrange(10)
    if r < 0.88:
        return [rng.randrange(5)]  # unhashable: hash(map) raises TypeError
    if r < 0.92:
        return None
    if r < 0.97:
        m = random_map(st, rng)
        return m if m is not None else ()
    return (rng.randrange(3), "t")


def make_pairs(c: Ctx, n: int) -> list:
    return [(pick_key(c), pick_value(c)) for _ in range(n)]


def random_map(st: State, rng: random.Random) -> Optional[PersistentMap]:
    pool = list(st.pool)
    if pool and rng.random() < 0.8:
        return rng.choice(pool).map
    maps = [x for x in list(st.reg) if type(x) is PersistentMap]
    if maps:
        return rng.choice(maps)
    return pool[0].map if pool else None


def pick_version(c: Ctx) -> Version:
    st = c.run
    pool = list(st.pool)
    if pool and c.rng.random() < 0.95:
        return c.rng.choice(pool)
    while True:
        m = attempt(PersistentMap, make_pairs(c, c.rng.randrange(0, 16)))
        if m is not FAILED:
            v = add_version(c, m)
            if v is not None:
                return v
        c.expected["retry"] += 1
        MODE[0] &= c.rng.getrandbits(N_TRAITS)  # calm down a little


class Source:
    """An input to a constructor/update, and the pairs it may contribute (filled in while a
    generator runs)."""

    __slots__ = ("obj", "pairs", "kind", "has_map")

    def __init__(self, obj: Any, pairs: list, kind: str, has_map: bool = False) -> None:
        self.obj = obj
        self.pairs = pairs
        self.kind = kind
        self.has_map = has_map


def hostile_gen(c: Ctx, st: State, pairs: list, record: list, act: int, probe: bool):
    """Yields pairs; between them hostile code runs. With probe, checks that a value the
    map replaced (and that nothing else holds) is released at once."""
    for k, v in pairs:
        if act and st.active and c.depth < MAX_DEPTH:
            hostile(c, st, act)
        record.append((k, v))
        yield (k, v)
        if probe and c.rng.random() < 0.3:
            probe = False
            st.probe_counter += 1
            key = 10**12 + st.probe_counter * 1000 + max(c.index, 0)
            obj = _Probe()
            ref = weakref.ref(obj)
            record.append((key, None))
            yield (key, obj)
            del obj
            yield (key, None)  # replaces obj
            if ref() is not None:
                gc.collect()
                if ref() is not None:
                    fail(
                        "deferred-release",
                        "a value replaced while a generator feeds the map is still alive "
                        "(released only at the end of the operation)",
                    )


def make_source(c: Ctx, st: State, allow_map: bool = True) -> Source:
    rng = c.rng
    kinds = ["dict", "list", "gen", "hmapping", "dictsub", "list_of_lists", "keys_raises"]
    if allow_map:
        kinds.append("map")
    kind = rng.choice(kinds)
    pairs = make_pairs(c, rng.randrange(0, 12))
    if kind == "dict":
        d = {}
        for k, v in pairs:
            d[k] = v  # may raise Hostile: the step ends there
        return Source(d, list(d.items()), kind)
    if kind == "dictsub":
        d = DictSub()
        for k, v in pairs:
            dict.__setitem__(d, k, v)
        return Source(d, list(dict.items(d)), kind)
    if kind == "list":
        return Source(list(pairs), pairs, kind)
    if kind == "list_of_lists":
        return Source([[k, v] for k, v in pairs], pairs, kind)
    if kind == "gen":
        record: list = []
        probe = st.allows("deferred_release") and rng.random() < 0.3
        return Source(hostile_gen(c, st, pairs, record, random_traits(rng) & T_ACTIONS, probe), record, kind)
    if kind == "hmapping":
        return Source(HMapping(pairs, random_traits(rng) & (T_ACTIONS | T_EQ_RAISE)), pairs, kind)
    if kind == "keys_raises":
        return Source(KeysRaises(pairs), [], kind)  # contributes nothing: the call must raise
    v = pick_version(c)
    return Source(v.map, v.items, kind, has_map=True)


def call_with_source(src: Source, fn: Callable, *args: Any) -> Any:
    """attempt(fn, *args) for a call that reads src. From a KeysRaises source the call must
    fail with the Hostile raised by its `keys` attribute (or the transient's RuntimeError)."""
    if src.kind != "keys_raises":
        return attempt(fn, *args, _extra=(KeyError,))
    c = ctx()
    c.ops += 1
    try:
        fn(*args)
    except CATCH as e:
        name = classify(e)
        if name in ("Hostile", "RuntimeError(busy)", "RuntimeError(finished)"):
            c.expected[name] += 1
        else:
            fail(
                "wrong-exception",
                f"the input's `keys` attribute raised Hostile, the call raised {type(e).__name__}: {e!s:.200}",
                "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=12)),
            )
        return FAILED
    fail("check", "the input's `keys` attribute raised, but the call succeeded (read it as pairs?)")
    return FAILED


# --------------------------------------------------------------------------------------
# Hostile actions
# --------------------------------------------------------------------------------------


def reenter(c: Ctx, st: State) -> None:
    rng = c.rng
    r = rng.randrange(8)
    if r <= 1:  # the map being operated on (or another one)
        m = c.cur_obj if c.cur_obj is not None and rng.random() < 0.7 else random_map(st, rng)
        if m is None:
            return
        k = pick_key(c)
        x = rng.randrange(7)
        if x == 0:
            attempt(m.get, k)
        elif x == 1:
            attempt(m.__contains__, k)
        elif x == 2:
            res = attempt(m.set, k, pick_value(c))
            if res is not FAILED:
                reg_add(st, res, rng)
        elif x == 3:
            attempt(m.delete, k)
        elif x == 4:
            attempt(len, m)
            attempt(list, m.items())
        elif x == 5:
            attempt(hash, m)
        else:
            it = attempt(iter, m.items())
            if it is not FAILED:
                attempt(next, it, None)
                reg_add(st, it, rng)
    elif r == 2:  # the transient being edited (or a shared one)
        t = c.cur_transient
        if t is None or rng.random() < 0.2:
            ts = [x for x in list(st.reg) if type(x) is TransientMap]
            t = rng.choice(ts) if ts else None
        if t is None:
            return
        own = t is c.cur_transient
        if own:
            c.t_touched = True
        x = rng.randrange(8)
        k = pick_key(c)
        if x <= 1:
            v = pick_value(c)
            if own:
                c.t_added.append((k, v))
            attempt(t.__setitem__, k, v)
        elif x == 2:
            attempt(t.__delitem__, k, _extra=(KeyError,))
        elif x == 3:
            attempt(t.get, k)
        elif x == 4:
            res = attempt(t.persistent)
            if res is not FAILED:
                reg_add(st, res, rng)
        elif x == 5:
            attempt(t.__exit__, None, None, None)
        elif x == 6:
            attempt(len, t)
            attempt(list, t)
        else:
            pairs = make_pairs(c, 2)
            if own:
                c.t_added.extend(pairs)
            attempt(t.update, pairs)
    elif r == 3:  # an Atom
        atoms = list(st.atoms)
        if not atoms:
            return
        a = rng.choice(atoms)
        x = rng.randrange(4)
        if x == 0:
            k, v = pick_key(c), pick_value(c)
            attempt(a.swap, lambda cur: cur.set(k, v))
        elif x == 1:
            m = random_map(st, rng)
            if m is not None:
                attempt(a.reset, m)
        elif x == 2:
            cur = attempt(a.deref)
            m = random_map(st, rng)
            if cur is not FAILED and m is not None:
                attempt(a.compare_and_set, cur, m)
        else:
            attempt(repr, a)
    elif r == 4:  # build or merge other maps
        x = rng.randrange(3)
        if x == 0:
            res = attempt(PersistentMap, make_pairs(c, rng.randrange(4)))
        elif x == 1 and st.allows("map_merge"):
            a, b = random_map(st, rng), random_map(st, rng)
            res = attempt(lambda: a | b) if a is not None and b is not None else FAILED
        else:
            res = attempt(PersistentMap.fromkeys, [pick_key(c) for _ in range(3)], pick_value(c))
        if res is not FAILED:
            if rng.random() < 0.3:
                add_version(c, res)
            else:
                reg_add(st, res, rng)
    elif r == 5:  # mutate the dict/list being read, keeping its set of pairs
        src = c.cur_source
        if isinstance(src, (dict, list)):
            c.src_mutated = True  # a pair may now be read twice
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
        its = [x for x in list(st.reg) if type(x) is ITERATOR_TYPE]
        if its:
            attempt(next, rng.choice(its), None)
    else:  # traverse the object being edited, from inside the edit
        target = c.cur_transient if c.cur_transient is not None else c.cur_obj
        if target is not None:
            c.ops += 1
            gc.get_referents(target)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def add_version(c: Ctx, m: Any) -> Optional[Version]:
    """Snapshot m, check it, and put it in the pool."""
    st = c.run
    if type(m) is not PersistentMap:
        fail("check", f"expected a PersistentMap, got {type(m).__name__}")
        return None
    n = len(m)
    items = list(m.items())
    if n != len(items):
        fail("check", f"new version: len() == {n} but {len(items)} items")
        return None
    v = Version(m, items)
    check_version(v)
    watch(st, m, c.rng)
    st.pool.append(v)
    while len(st.pool) > st.pool_cap:
        try:
            st.pool.pop(c.rng.randrange(len(st.pool)))
        except (IndexError, ValueError):
            break
    return v


def check_version(v: Version) -> bool:
    """len and all three iterations agree with the snapshot, compared by identity only."""
    m = v.map
    n = len(m)
    keys = list(map(id, m))
    vals = list(map(id, m.values()))
    flat = list(map(id, _chain(m.items())))
    if not (n == len(keys) == len(vals) == len(v.kids)) or len(flat) != 2 * n:
        fail(
            "check",
            f"version of {len(v.kids)} entries: len()={n}, list(m)={len(keys)}, "
            f"values={len(vals)}, items={len(flat) // 2}",
        )
        return False
    if flat != v.flat:
        fail("check", "a version's items changed after it was made")
        return False
    if keys != v.kids or vals != v.vids:
        fail("check", "keys()/values() disagree with items()")
        return False
    return True


def check_derived(
    what: str,
    res: Version,
    base: list,
    sources: list,
    *,
    no_loss: bool,
    max_new: Optional[int] = None,
) -> None:
    """res was derived from the entries `base` and the pairs `sources` (lists of (k, v)).

    Entries are compared as multisets of (id(key), id(value)): a key whose hash changed can be
    stored twice. Every entry of res not in base has a value from the sources and a key from
    base or the sources. With no_loss (set/merge: entries are added or replaced, never
    removed): no more base entries are gone than new ones came, and len(res) >= len(base).
    """
    base_ids = collections.Counter((id(k), id(v)) for k, v in base)
    res_ids = collections.Counter(res.ids)
    key_ids = {id(k) for k, _ in base}
    key_ids.update(id(k) for k, _ in sources)
    val_ids = {id(v) for _, v in sources}
    new = res_ids - base_ids
    n_new = sum(new.values())
    n_res = len(res.kids)
    bad = [p for p in new if p[0] not in key_ids or p[1] not in val_ids]
    if bad:
        fail("check", f"{what}: {len(bad)} entries whose key or value came from neither the map nor the input")
        return
    if n_res > len(base) + len(sources) and not ctx().src_mutated:
        fail("check", f"{what}: {n_res} entries from {len(base)} + {len(sources)}")
        return
    if max_new is not None and n_new > max_new:
        fail("check", f"{what}: {n_new} new entries, at most {max_new} expected")
        return
    if no_loss:
        missing = sum((base_ids - res_ids).values())
        if missing > n_new or n_res < len(base):
            fail("check", f"{what}: lost entries ({len(base)} -> {n_res}, {missing} gone, {n_new} new)")


def check_subset(what: str, res: Version, base: list, max_lost: Optional[int]) -> None:
    base_ids = collections.Counter((id(k), id(v)) for k, v in base)
    got = collections.Counter(res.ids)
    if got - base_ids:
        fail("check", f"{what}: entries that were not in the map")
    elif max_lost is not None and len(base) - len(res.kids) > max_lost:
        fail("check", f"{what}: {len(base)} -> {len(res.kids)} entries")


def ident(x: Any, kind: int) -> Any:
    if kind == 2:
        return (id(x[0]), id(x[1]))
    return id(x)


def snapshot_idents(v: Version, kind: int) -> list:
    if kind == 0:
        return list(v.kids)
    if kind == 1:
        return list(v.vids)
    return v.ids


def make_iter(m: PersistentMap, kind: int, rng: random.Random) -> Any:
    if kind == 0:
        return iter(m) if rng.random() < 0.5 else iter(m.keys())
    if kind == 1:
        return iter(m.values())
    return iter(m.items())


# --------------------------------------------------------------------------------------
# Operations (one per step)
# --------------------------------------------------------------------------------------


def op_build(c: Ctx, st: State) -> None:
    rng = c.rng
    x = rng.randrange(9)
    if x <= 2:
        src = make_source(c, st)
        c.cur_source = src.obj
        if x == 2 and isinstance(src.obj, dict) and type(src.obj) is dict:
            res = attempt(PersistentMap.from_dict, src.obj)
        elif x == 1:
            res = call_with_source(src, PersistentMap.__new__, PersistentMap, src.obj)
        else:
            res = call_with_source(src, PersistentMap, src.obj)
        c.cur_source = None
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived(f"PersistentMap({src.kind})", v, [], src.pairs, no_loss=False)
    elif x == 3:  # kwargs, alone or with a source
        kw = {"k%d" % rng.randrange(8): pick_value(c) for _ in range(rng.randrange(6))}
        if rng.random() < 0.5:
            src = make_source(c, st)
            c.cur_source = src.obj
            res = call_with_source(src, lambda: PersistentMap(src.obj, **kw))
            c.cur_source = None
            pairs = list(kw.items()) + src.pairs
        else:
            res = attempt(lambda: PersistentMap(**kw))
            pairs = list(kw.items())
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived("PersistentMap(..., **kw)", v, [], pairs, no_loss=False)
    elif x == 4:
        kw = {"c%d" % rng.randrange(8): pick_value(c) for _ in range(rng.randrange(6))}
        res = attempt(lambda: PersistentMap.create(**kw))
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived("create(**kw)", v, [], list(kw.items()), no_loss=False)
    elif x == 5:
        keys = [pick_key(c) for _ in range(rng.randrange(10))]
        if rng.random() < 0.5:
            value = pick_value(c)
            res = attempt(PersistentMap.fromkeys, keys, value)
        else:
            value = None
            res = attempt(PersistentMap.fromkeys, keys)
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived("fromkeys", v, [], [(k, value) for k in keys], no_loss=False)
    elif x == 6:  # from another map (copies its entries)
        base = pick_version(c)
        res = attempt(PersistentMap, base.map)
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived("PersistentMap(map)", v, [], base.items, no_loss=False)
    elif x == 7:  # a generator, alone
        pairs = make_pairs(c, rng.randrange(20))
        record: list = []
        gen = hostile_gen(c, st, pairs, record, random_traits(rng) & T_ACTIONS, st.allows("deferred_release"))
        res = attempt(PersistentMap, gen)
        del gen
        if res is not FAILED:
            v = add_version(c, res)
            if v is not None:
                check_derived("PersistentMap(gen())", v, [], record, no_loss=False)
    else:
        res = attempt(PersistentMap)
        if res is not FAILED:
            add_version(c, res)


def op_set(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    k, val = pick_key(c), pick_value(c)
    res = attempt(m.set if c.rng.random() < 0.5 else m.assoc, k, val)
    if res is not FAILED:
        nv = add_version(c, res)
        if nv is not None:
            check_derived("set", nv, v.items, [(k, val)], no_loss=True, max_new=1)


def op_delete(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    if v.items and c.rng.random() < 0.6:
        k = c.rng.choice(v.items)[0]
    else:
        k = pick_key(c)
    res = attempt(m.delete if c.rng.random() < 0.5 else m.dissoc, k)
    if res is not FAILED:
        nv = add_version(c, res)
        if nv is not None:
            check_subset("delete", nv, v.items, max_lost=1)


def op_lookup(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    k = rng.choice(v.items)[0] if v.items and rng.random() < 0.5 else pick_key(c)
    vals = set(v.vids)
    x = rng.randrange(5)
    if x == 0:
        default = object()
        r = attempt(m.get, k, default)
        if r is not FAILED and r is not default and id(r) not in vals:
            fail("check", "get() returned an object that is not a value of the map")
    elif x == 1:
        r = attempt(m.get, k)
        if r is not FAILED and r is not None and id(r) not in vals:
            fail("check", "get() returned an object that is not a value of the map")
    elif x == 2:
        r = attempt(m.__getitem__, k, _extra=(KeyError,))
        if r is not FAILED and id(r) not in vals:
            fail("check", "m[k] returned an object that is not a value of the map")
    elif x == 3:
        r = attempt(m.__contains__, k)
        if r is not FAILED and type(r) is not bool:
            fail("check", f"`in` returned {type(r).__name__}")
    else:
        r = attempt(m.contains, k)
        if r is not FAILED and type(r) is not bool:
            fail("check", f"contains() returned {type(r).__name__}")


def op_update(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    src = make_source(c, st, allow_map=st.allows("map_merge"))
    c.cur_source = src.obj
    kw = {}
    if rng.random() < 0.25:
        kw = {"u%d" % rng.randrange(6): pick_value(c) for _ in range(rng.randrange(1, 4))}
    meth = m.update if rng.random() < 0.5 else m.merge
    if rng.random() < 0.1:
        res = attempt(lambda: meth(**kw))
        pairs = list(kw.items())
    else:
        res = call_with_source(src, lambda: meth(src.obj, **kw))
        pairs = src.pairs + list(kw.items())
    c.cur_source = None
    if res is not FAILED:
        nv = add_version(c, res)
        if nv is not None:
            check_derived(f"update({src.kind})", nv, v.items, pairs, no_loss=True)


def op_or(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    x = rng.randrange(3)
    if x == 0 and st.allows("map_merge"):
        w = pick_version(c)
        res = attempt(lambda: m | w.map)
        if res is not FAILED:
            nv = add_version(c, res)
            if nv is not None:
                check_derived("map | map", nv, v.items, w.items, no_loss=True)
        return
    d: dict = {}
    for k, val in make_pairs(c, rng.randrange(8)):
        d[k] = val
    pairs = list(d.items())
    c.cur_source = d
    if x == 1:
        res = attempt(lambda: m | d)
        c.cur_source = None
        if res is not FAILED:
            nv = add_version(c, res)
            if nv is not None:
                check_derived("map | dict", nv, v.items, pairs, no_loss=True)
    elif st.allows("map_merge"):  # the dict's entries, then the map merged into them
        res = attempt(lambda: d | m)
        c.cur_source = None
        if res is not FAILED:
            nv = add_version(c, res)
            if nv is not None:
                check_derived("dict | map", nv, [], pairs + v.items, no_loss=False)


def op_compare(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    x = rng.randrange(5)
    if x == 0:
        other: Any = pick_version(c).map
    elif x == 1:
        other = PersistentMap(v.items) if rng.random() < 0.5 else m
    elif x == 2:
        other = {}
        for k, val in v.items:
            other[k] = val
    elif x == 3:
        other = dict(make_pairs(c, 3))
    else:
        other = [1, 2]
    for r in (attempt(lambda: m == other), attempt(lambda: other != m), attempt(lambda: other == m)):
        if r is not FAILED and type(r) is not bool:
            fail("check", f"== returned {type(r).__name__}")


def op_hash_repr(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    x = c.rng.randrange(4)
    if x <= 1:
        h = attempt(hash, m)
        if h is not FAILED and type(h) is not int:
            fail("check", "hash() is not an int")
    elif x == 2:
        r = attempt(repr, m)
        if r is not FAILED and type(r) is not str:
            fail("check", "repr() is not a str")
    else:
        r = attempt(m.__sizeof__)
        if r is not FAILED and (type(r) is not int or r <= 0):
            fail("check", f"__sizeof__() returned {r!r}")


def op_copy(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    x = c.rng.randrange(5)
    if x == 0:
        data = attempt(pickle.dumps, m)
        if data is not FAILED:
            res = attempt(pickle.loads, data)
            if res is not FAILED:
                nv = add_version(c, res)
                if nv is not None and len(nv.kids) > len(v.kids):
                    fail("check", f"unpickled map has {len(nv.kids)} entries, the original {len(v.kids)}")
    elif x == 1:
        res = attempt(copy.deepcopy, m)
        if res is not FAILED:
            nv = add_version(c, res)
            if nv is not None and len(nv.kids) > len(v.kids):
                fail("check", f"deepcopy has {len(nv.kids)} entries, the original {len(v.kids)}")
    elif x == 2:
        if copy.copy(m) is not m or m.copy() is not m:
            fail("check", "copy of an immutable map is not the map itself")
    elif x == 3:
        res = attempt(m.clear)
        if res is not FAILED and (type(res) is not PersistentMap or len(res) != 0):
            fail("check", "clear() did not return an empty map")
    else:
        r = attempt(m.__reduce__)
        if r is not FAILED:
            res = attempt(r[0], *r[1])
            if res is not FAILED:
                nv = add_version(c, res)
                if nv is not None and len(nv.kids) > len(v.kids):
                    fail("check", f"rebuilt from __reduce__: {len(nv.kids)} entries, the original {len(v.kids)}")


def op_reinit(c: Ctx, st: State) -> None:
    """__init__ / __new__ called again on live objects must not change them."""
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    x = rng.randrange(3)
    if x == 0:
        src = make_source(c, st)
        if src.kind != "keys_raises":  # __init__ ignores its arguments
            attempt(m.__init__, src.obj, _extra=(KeyError,))
    elif x == 1:
        attempt(lambda: m.__init__(a=pick_value(c)))
    else:
        atoms = list(st.atoms)
        if atoms:
            a = rng.choice(atoms)
            before = a.deref()
            attempt(a.__init__, m)
            if st.threads == 1 and c.depth == 0 and a.deref() is not before and MODE[0] & T_REENTER == 0:
                fail("check", "Atom.__init__ on a live Atom replaced its value")
    # v is checked with the pool after the step


def op_views(c: Ctx, st: State) -> None:
    v = pick_version(c)
    m = c.cur_obj = v.map
    rng = c.rng
    kind = rng.randrange(3)
    view = (m.keys, m.values, m.items)[kind]()
    if rng.random() < 0.2:
        reg_add(st, view, rng)
    expected = snapshot_idents(v, kind)
    x = rng.randrange(9)
    if x == 0:
        if len(view) != len(expected):
            fail("check", f"len(view) == {len(view)}, map has {len(expected)}")
    elif x == 1:
        got = [ident(e, kind) for e in view]
        if got != expected:
            fail("check", "iterating a view does not give the map's entries")
    elif x == 2:
        probe: Any = pick_key(c)
        if kind == 2:
            probe = rng.choice(v.items) if v.items and rng.random() < 0.5 else (probe, pick_value(c))
        elif kind == 1 and v.items and rng.random() < 0.5:
            probe = rng.choice(v.items)[1]
        r = attempt(view.__contains__, probe)
        if r is not FAILED and type(r) is not bool:
            fail("check", "`in` on a view did not return a bool")
    elif x == 3:
        others: list = []
        for _ in range(rng.randrange(6)):
            others.append(pick_key(c) if kind != 2 else (pick_key(c), pick_value(c)))
        if v.items and rng.random() < 0.5:
            others.append(v.items[0][0] if kind != 2 else v.items[0])
        s = attempt(set, others)
        if s is FAILED:
            return
        allowed = set(expected) | {id(e) for e in others}
        for fn in (
            lambda: view & s,
            lambda: view | s,
            lambda: view - s,
            lambda: view ^ s,
            lambda: s & view,
            lambda: s - view,
        ):
            r = attempt(fn)
            if r is FAILED:
                continue
            if not isinstance(r, (set, frozenset)):
                fail("check", f"set operation on a view returned {type(r).__name__}")
                return
            for e in r:
                if id(e) in allowed:
                    continue
                if kind == 2 and type(e) is tuple and len(e) == 2 and (id(e[0]), id(e[1])) in allowed:
                    continue
                fail("check", "set operation on a view produced an element from neither side")
                return
    elif x == 4 and kind == 2 and rng.random() < 0.5:
        # Items views of two maps compare like dict items views: by lookup and value ==, so
        # unhashable values are no reason for a TypeError.
        other_view = (m if rng.random() < 0.3 else pick_version(c).map).items()
        for fn in (lambda: view == other_view, lambda: view != other_view, lambda: view <= other_view):
            r = attempt(fn, _forbid=(TypeError,), _what="comparing items views of two maps")
            if r is not FAILED and type(r) is not bool:
                fail("check", f"items view comparison returned {type(r).__name__}")
    elif x == 4:
        s = attempt(set, [pick_key(c) for _ in range(3)] if kind != 2 else [])
        if s is FAILED:
            return
        for fn in (lambda: view == s, lambda: view != s, lambda: view <= s, lambda: view < s, lambda: view >= s):
            r = attempt(fn)
            if r is not FAILED and type(r) is not bool:
                fail("check", f"view comparison returned {type(r).__name__}")
    elif x == 5 and kind != 1:  # values views are not set-like
        r = attempt(view.isdisjoint, [pick_key(c) for _ in range(3)])
        if r is not FAILED and type(r) is not bool:
            fail("check", "isdisjoint() did not return a bool")
    elif x == 6:
        r = attempt(repr, view)
        if r is not FAILED and type(r) is not str:
            fail("check", "repr(view) is not a str")
    elif x == 7:
        if view.mapping is not m:
            fail("check", "view.mapping is not the map")
    else:  # drop the map, then use the view
        keep_alive = [v.items]  # the snapshot's objects, so that their ids stay unique
        try:
            st.pool.remove(v)
        except ValueError:
            pass
        c.cur_obj = None
        del m, v
        if rng.random() < 0.2:
            gc.collect()
        got = [ident(e, kind) for e in view]
        if got != expected or len(view) != len(expected):
            fail("check", "a view of a dropped map changed")
        keep_alive.clear()


def op_iter_resume(c: Ctx, st: State) -> None:
    """Partially consume an iterator, drop the map, maybe collect, resume."""
    v = pick_version(c)
    rng = c.rng
    kind = rng.randrange(3)
    it = make_iter(v.map, kind, rng)
    expected = snapshot_idents(v, kind)
    keep = v.items
    got = []
    for _ in range(rng.randrange(len(expected) + 1)):
        got.append(ident(next(it), kind))
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
        got.append(ident(e, kind))
    if got != expected:
        fail("check", "an iterator resumed after its map was dropped gave other entries")
    if next(it, None) is not None:
        fail("check", "an exhausted iterator produced more")
    if rng.random() < 0.3:
        # Only now: hostile code steps registry iterators, which would take entries from us.
        reg_add(st, it, rng)
    del keep


def op_shared_iter(c: Ctx, st: State) -> None:
    """Iterators shared by all threads: each entry handed out once, in total the snapshot."""
    rng = c.rng
    its = list(st.shared_iters)
    if not its or rng.random() < 0.15:
        v = pick_version(c)
        kind = rng.randrange(3)
        rec = SharedIter(make_iter(v.map, kind, rng), kind, snapshot_idents(v, kind), v.items)
        st.shared_iters.append(rec)
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
        rec.got.append(ident(e, rec.kind))
    hint = rec.it.__length_hint__()
    if not 0 <= hint <= sum(rec.expected.values()):
        fail("check", f"shared iterator: __length_hint__ {hint}")


def op_transient(c: Ctx, st: State) -> None:
    """Edit a transient of this thread, finish it, check the result and use-after-finish."""
    rng = c.rng
    v = pick_version(c)
    m = c.cur_obj = v.map
    t = m.transient()
    watch(st, t, rng)
    c.cur_transient = t
    c.t_added = added = []
    use_with = rng.random() < 0.3
    if use_with:
        t.__enter__()
    snap_check: Any = None
    unknown_pairs = False
    for _ in range(rng.randrange(1, 10)):
        x = rng.randrange(12)
        k = pick_key(c)
        if x <= 2:
            val = pick_value(c)
            added.append((k, val))
            attempt(t.__setitem__ if x else t.set, k, val)
        elif x == 3:
            attempt(t.__delitem__ if rng.random() < 0.5 else t.delete, k, _extra=(KeyError,))
        elif x == 4:
            attempt(t.get, k)
        elif x == 5:
            r = attempt(t.__contains__, k)
            if r is not FAILED and type(r) is not bool:
                fail("check", "`in` on a transient did not return a bool")
        elif x == 6:
            attempt(t.__getitem__, k, _extra=(KeyError,))
        elif x == 7:
            src = make_source(c, st, allow_map=st.allows("map_merge"))
            c.cur_source = src.obj
            call_with_source(src, t.update, src.obj)
            c.cur_source = None
            added.extend(src.pairs)
        elif x == 8:
            y = rng.randrange(3)
            if y == 0:
                kw = {"t%d" % rng.randrange(5): pick_value(c)}
                added.extend(kw.items())
                attempt(lambda: t.update(**kw))
            elif not st.allows("map_merge"):
                pass  # a transient source is read as a snapshot map, merged into t
            elif y == 1:
                attempt(t.update, t)  # through a snapshot of itself: adds nothing new
            elif rng.random() < 0.5:  # a fresh transient: its pairs are known
                w = pick_version(c)
                added.extend(w.items)
                attempt(t.update, w.map.transient(), _forbid=(TypeError,), _what="t.update(another transient)")
            else:  # a shared one (maybe busy or finished): its pairs are unknown
                ts = [x for x in list(st.reg) if type(x) is TransientMap]
                if ts:
                    unknown_pairs = True
                    attempt(t.update, rng.choice(ts))
        elif x == 9:  # an iterator over a transient is a snapshot
            c.t_touched = False
            keys = attempt(list, t)
            it = attempt(iter, t)
            # What it must yield is known only if hostile code (run by gc during list(t), say)
            # did not edit the transient between list(t) and iter(t).
            if keys is not FAILED and it is not FAILED and not c.t_touched:
                snap_check = (it, [id(k) for k in keys], keys)
        else:
            n = attempt(len, t)
            keys = attempt(list, t)
            if n is not FAILED and keys is not FAILED and n != len(keys):
                fail("check", f"transient: len() {n}, iteration {len(keys)}")
    if snap_check is not None:
        it, ids, _ = snap_check
        if [id(k) for k in it] != ids:
            fail("check", "an iterator over a transient changed with the transient")
    if use_with and rng.random() < 0.3:
        # Leave the with-block by an exception: __exit__ finishes the transient.
        try:
            t.__exit__(Hostile, Hostile("in with"), None)
        except CATCH as e:
            absorb(c, e)
        res: Any = FAILED
    else:
        res = attempt(t.persistent)
        if use_with:
            attempt(t.__exit__, None, None, None)
    added.extend(c.t_added)
    c.cur_transient = None
    if res is not FAILED:
        nv = add_version(c, res)
        if nv is not None and not unknown_pairs:
            check_derived("transient", nv, v.items, added, no_loss=False)
    k = pick_key(c)
    x = rng.randrange(6)
    if x == 0:
        expect_finished("t[k] = v", t.__setitem__, k, 1)
    elif x == 1:
        expect_finished("del t[k]", t.__delitem__, k)
    elif x == 2:
        expect_finished("t.get()", t.get, k)
    elif x == 3:
        expect_finished("len(t)", len, t)
    elif x == 4:
        # persistent() on a finished transient returns the map it was finished into, every time.
        c.ops += 1
        try:
            again = t.persistent()
        except CATCH as e:
            # Hostile code may have finished it with an error (busy) before persistent() ran.
            absorb(c, e)
        else:
            if type(again) is not PersistentMap:
                fail("check", f"t.persistent() on a finished transient returned {type(again).__name__}")
            elif res is not FAILED and again is not res:
                fail("check", "t.persistent() twice returned two different maps")
    else:
        expect_finished("t.update()", t.update, [(k, 1)])
    if rng.random() < 0.2:
        reg_add(st, t, rng)
    c.t_added = []


def op_shared_transient(c: Ctx, st: State) -> None:
    """Transients in the registry, edited by any thread and by hostile code."""
    rng = c.rng
    ts = [x for x in list(st.reg) if type(x) is TransientMap]
    if not ts or rng.random() < 0.2:
        t = pick_version(c).map.transient()
        reg_add(st, t, rng)
        return
    t = rng.choice(ts)
    for _ in range(rng.randrange(1, 6)):
        x = rng.randrange(8)
        k = pick_key(c)
        if x <= 2:
            attempt(t.__setitem__, k, pick_value(c))
        elif x == 3:
            attempt(t.__delitem__, k, _extra=(KeyError,))
        elif x == 4:
            attempt(t.get, k)
        elif x == 5:
            attempt(list, t)
        elif x == 6:
            attempt(t.update, make_pairs(c, 3))
        else:
            res = attempt(t.persistent)
            if res is not FAILED:
                add_version(c, res)


def op_atom(c: Ctx, st: State) -> None:
    rng = c.rng
    atoms = list(st.atoms)
    if not atoms or rng.random() < 0.03:
        x = rng.randrange(4)
        if x == 0:
            a = attempt(Atom)
        elif x == 1:
            a = attempt(Atom, pick_version(c).map)
        elif x == 2:
            a = attempt(lambda: Atom(initial=pick_version(c).map))
        else:
            a = attempt(Atom, {"not": "a map"})
            if a is not FAILED:
                fail("check", "Atom accepted a dict")
            return
        if a is not FAILED:
            watch(st, a, rng)
            st.atoms.append(a)
            if len(st.atoms) > 4:
                try:
                    st.atoms.pop(rng.randrange(len(st.atoms)))
                except (IndexError, ValueError):
                    pass
        return
    a = rng.choice(atoms)
    x = rng.randrange(6)
    if x == 0:
        cur = a.deref() if rng.random() < 0.5 else a.value
        if type(cur) is not PersistentMap:
            fail("check", "deref() is not a PersistentMap")
        elif rng.random() < 0.3:
            add_version(c, cur)
    elif x == 1:
        old = attempt(a.reset, pick_version(c).map if rng.random() < 0.95 else "bad")
        if old is not FAILED and type(old) is not PersistentMap:
            fail("check", "reset() did not return the old map")
    elif x == 2:
        cur = a.deref()
        ok = attempt(a.compare_and_set, cur, pick_version(c).map)
        if ok is not FAILED and type(ok) is not bool:
            fail("check", "compare_and_set() did not return a bool")
        fresh = PersistentMap({object(): 1})
        if a.compare_and_set(fresh, pick_version(c).map):
            fail("check", "compare_and_set() succeeded with an object the Atom never held")
    elif x == 3:
        attempt(repr, a)
    else:
        calls = [0]
        k, val = pick_key(c), pick_value(c)
        act = random_traits(rng) | T_REENTER

        def fn(cur: Any, key: Any, value: Any, extra: Any = None) -> Any:
            calls[0] += 1
            c.cur_obj = cur
            if calls[0] <= 3:
                y = rng.random()
                if y < 0.2:
                    a.reset(random_map(st, rng) or cur)  # makes swap retry
                elif y < 0.3:
                    a.swap(lambda cur2: cur2.set(key, value))  # nested swap on the same Atom
                elif y < 0.6:
                    hostile(c, st, act)
                elif y < 0.65:
                    raise Hostile("swap fn")
                elif y < 0.68:
                    return "not a map"  # TypeError
            return cur.set(key, value)

        r = attempt(lambda: a.swap(fn, k, val, extra=1) if rng.random() < 0.3 else a.swap(fn, k, val))
        if r is not FAILED and type(r) is not PersistentMap:
            fail("check", "swap() did not return a PersistentMap")


def op_types(c: Ctx, st: State) -> None:
    """type(x)() and type(x).__new__(type(x)) for every exported type and the view/iterator
    types: a TypeError, or an object that works."""
    rng = c.rng
    types: list = [PersistentMap, TransientMap, Atom]
    if st.allows("new_types"):
        types += [KEYS_TYPE, VALUES_TYPE, ITEMS_TYPE, ITERATOR_TYPE]
    for name in getattr(pypersistent, "__all__", ()):
        obj = getattr(pypersistent, name, None)
        if isinstance(obj, type) and obj not in types and (st.allows("new_types") or obj not in VIEW_TYPES + (ITERATOR_TYPE,)):
            types.append(obj)
    T = rng.choice(types)
    m = pick_version(c).map
    x = rng.randrange(4)
    if x == 0:
        obj = attempt(T)
    elif x == 1:
        obj = attempt(T.__new__, T)
    elif x == 2:
        obj = attempt(T, m)
    else:
        obj = attempt(T.__new__, T, m)
    if obj is FAILED:
        return
    if T is TransientMap:
        fail("check", "TransientMap was created directly")
    if type(obj) is PersistentMap:
        add_version(c, obj)
    elif type(obj) is Atom:
        attempt(obj.deref)
        attempt(obj.swap, lambda cur: cur)
        attempt(repr, obj)
    elif T in VIEW_TYPES:
        n = attempt(len, obj)
        items = attempt(list, obj)
        if n is not FAILED and items is not FAILED and n != len(items):
            fail("check", f"{T.__name__} made directly: len {n}, {len(items)} items")
        attempt(repr, obj)
        attempt(obj.__contains__, pick_key(c))
        attempt(lambda: obj.mapping)
        attempt(lambda: obj & set())
    elif T is ITERATOR_TYPE:
        attempt(next, obj, None)
        attempt(obj.__length_hint__)
        attempt(list, obj)
    reg_add(st, obj, rng)


def op_misc(c: Ctx, st: State) -> None:
    """copy/pickle of objects that cannot be copied, subclassing, weakrefs."""
    rng = c.rng
    v = pick_version(c)
    m = v.map
    x = rng.randrange(3)
    if x == 0:
        objs: list = [m.transient(), m.keys(), m.values(), m.items(), iter(m), iter(m.items())]
        objs += [o for o in list(st.reg) if type(o) is not PersistentMap][:4]
        objs += list(st.atoms)[:1]
        o = rng.choice(objs)
        for fn in (copy.copy, copy.deepcopy, pickle.dumps):
            res = attempt(fn, o)
            if res is not FAILED and type(res) is PersistentMap:
                add_version(c, res)
            elif res is not FAILED and fn is not pickle.dumps:
                reg_add(st, res, rng)
    elif x == 1:
        base = rng.choice([PersistentMap, TransientMap, Atom, KEYS_TYPE, VALUES_TYPE, ITEMS_TYPE, ITERATOR_TYPE])
        sub = attempt(type, "Sub", (base,), {})
        if sub is not FAILED and base is PersistentMap:
            res = attempt(sub, v.items)
            if res is not FAILED:
                reg_add(st, res, rng)
    else:
        w = attempt(weakref.ref, rng.choice([m, iter(m), m.keys()]))
        if w is not FAILED and w() is not None and w() is not m and type(w()) is PersistentMap:
            fail("check", "a weakref to a map resolves to another object")


def op_deep_chain(c: Ctx, st: State) -> None:
    """m = PersistentMap(head=i, tail=m), up to 300,000 deep (counted as one operation):
    hash/repr/pickle/deepcopy must raise RecursionError or work, and dropping it must not
    overflow the C stack."""
    rng = c.rng
    depth = rng.choice((500, 5000, 50000, 300000))
    m = PersistentMap()
    for i in range(depth):
        m = PersistentMap(head=i, tail=m)
        if i % 10000 == 9999 and (st.stop or time.monotonic() > st.deadline):
            break
    c.ops += 1
    x = rng.randrange(4)
    if x == 0:
        attempt(hash, m)
    elif x == 1:
        attempt(repr, m)
    elif x == 2:
        attempt(pickle.dumps, m)
    else:
        attempt(copy.deepcopy, m)
    del m  # deallocation must not recurse through the whole chain


OPS: list = [
    (op_build, 10, None),
    (op_set, 12, None),
    (op_delete, 7, None),
    (op_lookup, 8, None),
    (op_update, 8, None),
    (op_or, 5, None),
    (op_compare, 4, None),
    (op_hash_repr, 4, None),
    (op_copy, 3, None),
    (op_reinit, 1, None),
    (op_views, 6, None),
    (op_iter_resume, 4, None),
    (op_shared_iter, 4, None),
    (op_transient, 10, None),
    (op_shared_transient, 3, None),
    (op_atom, 6, None),
    (op_types, 0.5, None),
    (op_misc, 1, None),
    (op_deep_chain, 0.04, "deep_chain"),
    (op_drop, 2, None),
    (op_gc, 0.3, None),
    (op_flip, 2, None),
]


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


FUZZER = fuzz_support.Fuzzer(
    name="adversarial_fuzz",
    script="tests/adversarial_fuzz.py",
    title="adversarial fuzz",
    doc=__doc__,
    known_bug_features=KNOWN_BUG_FEATURES,
    features={},
    known_failure_kinds=("deferred-release",),
    mode=MODE,
    n_traits=N_TRAITS,
    actions=ActionTraits(flip=T_FLIP, gc=T_GC, drop=T_DROP, reenter=T_REENTER),
    ctx_type=Ctx,
    state_type=State,
    hostile_types=(HKey, HVal),
    ops=OPS,
    reenter=reenter,
    check_version=check_version,
    atom_types=(PersistentMap,),
    expected_extra=(KeyError,),
    callback_expected_extra=(),
    transient_noun="TransientMap",
    iter_nouns=("entry", "entries", "its map"),
)


# run(seconds=5.0, seed=0, threads=1, steps=None, exclude=(), trace_path=None, pool_cap=24,
# stop_on_failure=True) -> Result runs this fuzzer in this process: `exclude` names features, or
# 'known' for all of KNOWN_BUG_FEATURES; `steps` caps the steps per thread (fuzz_support.run).
run = functools.partial(fuzz_support.run, FUZZER)
# main(argv=None) -> exit status: the command line (fuzz_support.main).
main = functools.partial(fuzz_support.main, FUZZER)

if __name__ == "__main__":
    sys.exit(main())
