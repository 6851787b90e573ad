"""PersistentSortedDict and TransientSortedDict (issue 16).

Differential tests against a dict sorted on read (Hypothesis), keys whose ``<`` raises or answers
at random, unorderable keys, reference and memory leak checks, cycles, and pypersistent 2.0's
API as a 2.0 user calls it.
"""

from __future__ import annotations

import bisect
import copy
import gc
import pickle
import random
import sys
import threading
import tracemalloc
import weakref
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import full_gc
from pypersistent import PersistentMap, PersistentSortedDict, TransientSortedDict

S = PersistentSortedDict


# ---- a reference model: a dict read in sorted order ------------------------------------------------


def model_items(d):
    return sorted(d.items())


def model_range(d, lo, hi):
    return [(k, v) for k, v in model_items(d) if (lo is None or k >= lo) and (hi is None or k < hi)]


def model_floor(d, k):
    ks = sorted(d)
    i = bisect.bisect_right(ks, k)
    return (ks[i - 1], d[ks[i - 1]]) if i else None


def model_ceiling(d, k):
    ks = sorted(d)
    i = bisect.bisect_left(ks, k)
    return (ks[i], d[ks[i]]) if i < len(ks) else None


def model_lower(d, k):
    ks = sorted(d)
    i = bisect.bisect_left(ks, k)
    return (ks[i - 1], d[ks[i - 1]]) if i else None


def model_higher(d, k):
    ks = sorted(d)
    i = bisect.bisect_right(ks, k)
    return (ks[i], d[ks[i]]) if i < len(ks) else None


def check(m, d):
    """m holds exactly d, in key order, through every read path."""
    items = model_items(d)
    assert len(m) == len(d)
    assert list(m.items()) == items
    assert list(m) == [k for k, _ in items]
    assert list(m.values()) == [v for _, v in items]
    assert list(reversed(m)) == [k for k, _ in reversed(items)]
    assert list(reversed(m.items())) == items[::-1]
    assert m == d and m.dict() == d
    for k, v in items:
        assert k in m and m[k] is v and m.get(k) is v
    if items:
        assert m.first() == items[0] and m.last() == items[-1]


# ---- basics -----------------------------------------------------------------------------------------


def test_a_short_session():
    m = S({3: "c", 1: "a", 2: "b"})
    assert list(m) == [1, 2, 3] and repr(m) == "PersistentSortedDict({1: 'a', 2: 'b', 3: 'c'})"
    m2 = m.set(0, "z").delete(2)
    assert list(m2.items()) == [(0, "z"), (1, "a"), (3, "c")] and list(m) == [1, 2, 3]
    assert m.assoc(2, "B") is not m and m.dissoc(9) is m and m.set(1, m[1]) is m
    assert m[1:3] == {1: "a", 2: "b"} and m[2:] == {2: "b", 3: "c"} and m[:2] == {1: "a"} and m[:] is m
    assert m.subseq(2, 3) == {2: "b"} and m.subseq() is m and m.rsubseq(1, 3) == m.subseq(1, 3)
    assert m.floor(2.5) == (2, "b") and m.ceiling(2.5) == (3, "c") and m.lower(1) is None and m.higher(3, 0) == 0
    assert m.floor(2) == (2, "b") and m.ceiling(2) == (2, "b") and m.lower(2) == (1, "a") and m.higher(2) == (3, "c")
    assert list(m.irange(1, 2)) == [1, 2] and list(m.irange(1, 3, (False, False))) == [2]
    assert list(m.irange(reverse=True)) == [3, 2, 1] and list(m.irange(minimum=2)) == [2, 3]
    assert list(m.irange(3, 1)) == []
    assert S() == {} and repr(S()) == "PersistentSortedDict({})" and len(S()) == 0 and list(reversed(S())) == []


def test_protocols():
    m = S.create(b=2, a=1)
    assert isinstance(m, Mapping) and isinstance(m.keys(), KeysView) and isinstance(m.values(), ValuesView)
    assert isinstance(m.items(), ItemsView) and isinstance(m.transient(), MutableMapping)
    assert m == {"a": 1, "b": 2} and m != {"a": 1} and m == PersistentMap(a=1, b=2) and PersistentMap(a=1, b=2) == m
    assert m != [("a", 1), ("b", 2)]
    assert hash(m) == hash(S({"a": 1, "b": 2})) == hash(PersistentMap(a=1, b=2))
    assert pickle.loads(pickle.dumps(m)) == m and copy.copy(m) is m and copy.deepcopy(m) == m
    assert m | {"c": 3} == {"a": 1, "b": 2, "c": 3} and type(m | {"c": 3}) is S
    assert {"a": 0, "z": 26} | m == {"a": 1, "b": 2, "z": 26} and type({"a": 0} | m) is S
    assert m.update({"a": 5}, c=3) == {"a": 5, "b": 2, "c": 3} and m.merge([("z", 0)])["z"] == 0
    assert m.keys() == {"a", "b"} and m.items() == {("a", 1), ("b", 2)} and ("a", 1) in m.items()
    assert ("a", 2) not in m.items() and 2 in m.values() and "b" in m.keys()
    assert m.keys() & {"a", "q"} == {"a"} and m.keys() | {"q"} == {"a", "b", "q"}
    assert list(reversed(m.values())) == [2, 1] and m.keys().mapping is m
    assert S(m) is m and S(m, c=3) == {"a": 1, "b": 2, "c": 3} and S.from_dict(PersistentMap(x=1)) == {"x": 1}
    assert m.items_list() == [("a", 1), ("b", 2)] and m.keys_list() == ["a", "b"] and m.values_list() == [1, 2]
    assert m.copy() is m and m.clear() == {} and S().clear() == S()
    assert weakref.ref(m)() is m
    with pytest.raises(KeyError) as info:
        m["zz"]
    assert info.value.args == ("zz",)
    with pytest.raises(KeyError) as info:
        S({(0, 0): 1})[(1, 2)]
    assert info.value.args == ((1, 2),)
    with pytest.raises(ValueError):
        m["a":"b":2]
    with pytest.raises(TypeError):
        hash(S(a=[1]))
    with pytest.raises(TypeError):
        m.diff({})
    with pytest.raises(TypeError):
        type(m.keys())()
    with pytest.raises(TypeError):
        TransientSortedDict()


def test_first_and_last_on_empty_maps_raise_runtime_error_as_in_2_0():
    for fn in (S().first, S().last, S().transient().first):
        with pytest.raises(RuntimeError):
            fn()


def test_diff():
    v1 = S({i: i for i in range(1000)})
    v2 = v1.set(5, -5).delete(7).set(2000, 1).set(-1, 0)
    added, removed, changed = v1.diff(v2)
    assert added == {2000: 1, -1: 0} and removed == {7: 7} and changed == {5: (5, -5)}
    assert type(added) is S and v1.diff(v1) == (S(), S(), S())
    assert v2.diff(v1).added == {7: 7}


# Per thread: under pytest-run-parallel several threads run the same test at once.
_counted = threading.local()


def counted_calls() -> int:
    return getattr(_counted, "calls", 0)


def reset_counted_calls() -> None:
    _counted.calls = 0


class CountedKey:
    """An int-like key whose ``<`` calls are counted per thread (not an exact int: no inline fast path)."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        _counted.calls = counted_calls() + 1
        return self.v < other.v

    def __eq__(self, other):
        return self.v == other.v

    def __hash__(self):
        return hash(self.v)


def test_diff_skips_shared_subtrees():
    keys = [CountedKey(i) for i in range(0, 40000, 2)]
    v1 = S(zip(keys, range(len(keys))))
    v2 = v1.set(keys[10], "x").delete(keys[15000]).set(CountedKey(20001), "new")
    reset_counted_calls()
    added, removed, changed = v1.diff(v2)
    # Only the changed leaves are merged (a few dozen comparisons each), not 20,000 entries.
    assert counted_calls() < 600
    assert [k.v for k in added] == [20001] and [k.v for k in removed] == [30000]
    assert [(k.v, pair) for k, pair in changed.items()] == [(20, (10, "x"))]
    # Built apart from equal (not identical) keys, nothing is shared: a full merge, same answer.
    copies = [CountedKey(k.v) for k in keys]
    v3 = S(zip(reversed(copies), reversed(range(len(keys))))).set(copies[10], "x").delete(copies[15000])
    v3 = v3.set(CountedKey(20001), "new")
    reset_counted_calls()
    d = v1.diff(v3)
    assert counted_calls() >= len(keys)
    assert [k.v for k in d.added] == [20001] and [k.v for k in d.removed] == [30000] and len(d.changed) == 1


def test_transient():
    base = S({i: str(i) for i in range(100)})
    with base.transient() as t:
        for i in range(100, 200):
            t[i] = str(i)
        del t[0]
        t.set(-1, "x").delete(50).dissoc(12345)
        assert t.pop(1) == "1" and t.pop(1, None) is None and t.setdefault(500, "y") == "y"
        assert t.popitem() == (500, "y") and t.first() == (-1, "x") and t.last() == (199, "199")
        assert len(t) == 198 and 2 in t and t.get(3) == "3" and t.contains(4) and list(t)[:3] == [-1, 2, 3]
        assert list(reversed(t))[0] == 199 and list(t.keys())[:2] == [-1, 2]
        with pytest.raises(KeyError):
            del t[0]
        with pytest.raises(KeyError):
            t.pop(0)
    done = t.persistent()
    assert t.persistent() is done and len(done) == 198 and len(base) == 100 and list(base) == list(range(100))
    with pytest.raises(RuntimeError):
        t[1] = 1
    assert repr(t) == "TransientSortedDict(<finished>)"
    t2 = S(a=1).transient()
    assert repr(t2) == "TransientSortedDict({'a': 1})" and t2 == {"a": 1} and t2.copy() == t2
    t2.update(t2.copy(), b=2)
    t2.clear()
    assert len(t2) == 0 and t2.update({"z": 1}) is t2 and t2.persistent() == {"z": 1}


# ---- Hypothesis: differential against a dict read in sorted order ----------------------------------

KEYS = st.one_of(st.integers(-50, 50), st.floats(-50, 50, allow_nan=False).map(lambda f: round(f, 1)))
BOUNDS = st.one_of(st.none(), KEYS)
OPS = st.one_of(
    st.tuples(st.just("set"), KEYS, st.integers()),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("update"), st.dictionaries(KEYS, st.integers(), max_size=20)),
    st.tuples(st.just("transient"), st.lists(st.tuples(KEYS, st.one_of(st.none(), st.integers())), max_size=60)),
    st.tuples(st.just("slice"), BOUNDS, BOUNDS),
    st.tuples(st.just("probe"), KEYS),
    st.tuples(st.just("irange"), BOUNDS, BOUNDS, st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.just("back"), st.integers(0, 1000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40))
def test_differential(ops):
    m, d = S(), {}
    history = [(m, dict(d))]
    for op in ops:
        kind = op[0]
        if kind == "set":
            _, k, v = op
            m = m.set(k, v)
            d = {**d, k: v}
        elif kind == "delete":
            k = op[1]
            m = m.delete(k)
            d = {x: y for x, y in d.items() if not x == k}
        elif kind == "update":
            m = m.update(op[1])
            d = dict(d)
            for k, v in op[1].items():
                d.pop(k, None)
                d[k] = v
        elif kind == "transient":
            t = m.transient()
            d = dict(d)
            for k, v in op[1]:
                if v is None:
                    t.dissoc(k)
                    d.pop(k, None)
                else:
                    t[k] = v
                    d.pop(k, None)
                    d[k] = v
                assert len(t) == len(d)
            m = t.persistent()
        elif kind == "slice":
            _, lo, hi = op
            want = model_range(d, lo, hi)
            assert list(m[lo:hi].items()) == want and list(m.subseq(lo, hi).items()) == want
            continue
        elif kind == "probe":
            k = op[1]
            assert m.floor(k) == model_floor(d, k) and m.ceiling(k) == model_ceiling(d, k)
            assert m.lower(k) == model_lower(d, k) and m.higher(k) == model_higher(d, k)
            assert (k in m) == (k in d) and m.get(k, "no") == d.get(k, "no")
            continue
        elif kind == "irange":
            _, lo, hi, inc_lo, inc_hi, rev = op
            want = [k for k in sorted(d) if (lo is None or (k >= lo if inc_lo else k > lo))
                    and (hi is None or (k <= hi if inc_hi else k < hi))]
            got = list(m.irange(lo, hi, (inc_lo, inc_hi), rev))
            assert got == (want[::-1] if rev else want)
            continue
        elif kind == "back":
            m, d = history[op[1] % len(history)]
            d = dict(d)
        check(m, d)
        history.append((m, dict(d)))
    for old, want in history:  # no version ever changes
        check(old, want)
    if len(history) > 1:
        a, b = history[0][0], history[-1][0]
        added, removed, changed = a.diff(b)
        assert dict(a.update(added)) == {**dict(a), **dict(added)}
        assert set(removed) == set(a) - set(b) and set(added) == set(b) - set(a)
        assert all(a[k] == old and b[k] == new for k, (old, new) in changed.items())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(), max_size=3000))
def test_large_maps_against_the_model(keys):
    d = {k: -k for k in keys}
    m = S(d)
    check(m, d)
    for k in list(d)[::7]:
        m = m.delete(k)
        del d[k]
    check(m, d)


# Exact ints that fit in 64 bits are compared by an inline copy of their value; every other key
# (bigger ints, floats, bools, int subclasses) by Python's `<`. The two must agree on one order.
BOUNDARY_INTS = [0, 1, -1, 2**30, -(2**30), 2**31, 2**62, 2**63 - 1, 2**63, 2**64, 2**100,
                 -(2**63) + 1, -(2**63), -(2**63) - 1, -(2**64), -(2**100)]


class Offset(int):
    """An int subclass: never inlined, ordered as its int value."""


def test_inline_ints_order_like_python_across_int64_boundaries_and_numeric_kinds():
    numbers = BOUNDARY_INTS + [0.5, -0.5, 9.3e18, -9.3e18, 1.9e19, float("inf"), float("-inf"),
                               Offset(3), Offset(-(2**63) + 5), Offset(2**64 + 1), 2**63 - 2]
    for order in (numbers, numbers[::-1], sorted(numbers, key=repr)):
        m = S.from_dict({k: repr(k) for k in order})
        assert list(m) == sorted(numbers)
        for k in numbers:
            assert m[k] == repr(k) and k in m
            assert m.floor(k) == (k, repr(k)) and m.ceiling(k) == (k, repr(k))
        for probe in (2**63 - 1.5, -(2**63) - 0.5, 2**63 + 1, Offset(2**63), -(2**63) + 2):
            assert m.floor(probe) == max(((k, repr(k)) for k in numbers if k <= probe), default=None)
            assert m.ceiling(probe) == min(((k, repr(k)) for k in numbers if k >= probe), default=None)
        lo, hi = -(2**63), 2**63
        assert list(m[lo:hi]) == [k for k in sorted(numbers) if lo <= k < hi]
        assert list(m.delete(2**63 - 1).delete(-(2**63))) == [k for k in sorted(numbers) if k not in (2**63 - 1, -(2**63))]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(BOUNDARY_INTS), st.integers(-(2**64), 2**64), st.floats(allow_nan=False)),
                max_size=200))
def test_mixed_ints_and_floats_against_the_model(keys):
    d = {}
    for k in keys:
        d.setdefault(k, repr(k))  # the first of equal keys (1, 1.0) stays, as in the map
    m = S()
    for k in keys:
        if k not in m:
            m = m.set(k, d[k])
    assert list(m.items()) == sorted(d.items(), key=lambda kv: kv[0])
    check(m, d)


# Latin-1 strs carry their first sixteen bytes inline and compare the rest eight bytes at a time;
# other strs compare through CPython. Shared prefixes, zero bytes and short keys must all agree with `<`.
KEY_CHARS = "ab\0\x7f\x80\xe9\xff\u0100\u20ac\U0001f600"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(KEY_CHARS), max_size=20), max_size=120),
       st.lists(st.text(alphabet=st.sampled_from(KEY_CHARS), max_size=20), max_size=20))
def test_str_keys_order_like_python(keys, probes):
    prefix = "user:000"  # shared prefixes, the first word's and both words': the bytes after them decide
    keys = keys + ["user:0000000000" + k for k in keys[1::3]]
    keys = keys + [prefix + k for k in keys[::2]]
    d = {k: k.upper() for k in keys}
    m = S()
    for k in keys:
        m = m.set(k, d[k])
    check(m, d)
    ordered = sorted(d)
    for probe in probes + [prefix + p for p in probes] + ["user:0000000000" + p for p in probes]:
        below = [k for k in ordered if k <= probe]
        above = [k for k in ordered if k >= probe]
        assert m.floor(probe) == ((below[-1], d[below[-1]]) if below else None)
        assert m.ceiling(probe) == ((above[0], d[above[0]]) if above else None)


def test_str_keys_that_differ_around_each_eight_byte_word():
    base = "0123456789abcdefghij"
    keys = {base[:n] for n in range(len(base) + 1)}
    keys |= {base[:i] + c + base[i + 1:] for i in range(len(base)) for c in ("\0", "\xff", "\u20ac")}
    m = S.from_dict({k: len(k) for k in keys})
    assert list(m) == sorted(keys)
    assert all(m[k] == len(k) for k in keys)


def test_short_latin1_keys_are_found_by_equal_copies_and_never_confused():
    # Latin-1 strs of up to 16 characters with no NUL lie whole in their inline bytes, and two
    # such keys with equal bytes are taken as equal without reading either object; with a NUL,
    # or longer, equal bytes decide nothing. Probes are fresh copies (never the stored objects).
    base = ["", "a", "ab", "x" * 15, "x" * 16, "x" * 17, "é" * 16, "ÿ" * 15 + "a", "user:00012345"]
    keys = set(base)
    keys |= {k + "\0" for k in base} | {k + "\0a" for k in base} | {"\0" + k for k in base}
    keys |= {k[:-1] for k in base if k}
    keys = sorted(keys)
    stored = {k: i for i, k in enumerate(keys)}
    m = S.from_dict(stored)
    t = S().transient()
    for k in reversed(keys):
        t[k] = stored[k]
    grown = t.persistent()

    def copy_of(k: str) -> str:
        return "".join(list(k))  # a new object, but for CPython's cached 0- and 1-character strs

    for mm in (m, grown):
        assert list(mm) == keys
        for k in keys:
            probe = copy_of(k)
            assert probe == k
            assert mm[probe] == stored[k] and probe in mm and mm.get(probe) == stored[k]
            assert mm.floor(probe) == (k, stored[k]) and mm.ceiling(probe) == (k, stored[k])
        for absent in ("b", "a\0\0\0", "x" * 18, "é" * 17, "user:00012346", "ÿ" * 16):
            assert absent not in mm and mm.get(absent) is None
        smaller = mm.delete(copy_of("x" * 16))
        assert "x" * 16 not in smaller and "x" * 15 in smaller and "x" * 17 in smaller
        assert len(smaller) == len(mm) - 1 and "x" * 16 in mm


# ---- hostile keys: raising, inconsistent and unorderable -------------------------------------------


class Boom(Exception):
    pass


class Key:
    """Ordered by .n; counts comparisons and raises Boom from the one numbered `fail_at`."""

    calls = 0
    fail_at = -1

    def __init__(self, n):
        self.n = n

    def __lt__(self, other):
        Key.calls += 1
        if Key.calls == Key.fail_at:
            raise Boom
        return self.n < other.n

    def __eq__(self, other):
        return isinstance(other, Key) and self.n == other.n

    def __hash__(self):
        return hash(self.n)

    def __repr__(self):
        return f"Key({self.n})"


def snapshot(m):
    return [(k, v) for k, v in m.items()]


@pytest.mark.thread_unsafe  # Key's counters are class-wide
def test_a_raising_lt_leaves_every_map_unchanged():
    rng = random.Random(5)
    maps = [S({Key(i): i for i in range(0, 2000, 2)})]
    t = maps[0].transient()
    raised = 0
    try:
        for step in range(600):
            m = rng.choice(maps)
            before = snapshot(m)
            Key.calls, Key.fail_at = 0, rng.randint(1, 12)
            k = Key(rng.randrange(2100))
            op = rng.randrange(6)
            try:
                if op == 0:
                    maps.append(m.set(k, step))
                elif op == 1:
                    maps.append(m.delete(k))
                elif op == 2:
                    m.floor(k), m.ceiling(k), m.get(k), k in m
                elif op == 3:
                    m.subseq(k, Key(k.n + 30))
                elif op == 4:
                    t[k] = step
                else:
                    t.dissoc(k)
            except Boom:
                raised += 1
            Key.fail_at = -1
            assert snapshot(m) == before
        assert raised > 50
        Key.fail_at = -1
        for m in maps:  # still valid B+-trees in order, lookups all work
            keys = [k.n for k in m]
            assert keys == sorted(keys) and len(keys) == len(m)
            for k in list(m)[::50]:
                assert m[k] is not None
        final = t.persistent()
        keys = [k.n for k in final]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    finally:
        Key.fail_at = -1


@pytest.mark.thread_unsafe  # Key's counters are class-wide
def test_a_raising_lt_while_building_in_bulk_propagates_and_leaks_nothing():
    keys = [Key(n) for n in random.Random(3).sample(range(1000), 300)]
    source = {k: str(k.n) for k in keys}
    before = [sys.getrefcount(k) for k in keys]
    raised = 0
    try:
        for fail_at in list(range(1, 40)) + list(range(40, 3000, 97)):
            Key.calls, Key.fail_at = 0, fail_at
            try:
                S(source)
            except Boom:
                raised += 1
        Key.fail_at = -1
        assert raised > 30
        assert [sys.getrefcount(k) for k in keys] == before
        m = S(source)
        assert [k.n for k in m] == sorted(k.n for k in keys) and all(m[k] == str(k.n) for k in keys)
    finally:
        Key.fail_at = -1


def test_bulk_builds_keep_the_last_of_equal_keys_and_let_keywords_win():
    pairs = [(3, "a"), (1, "b"), (3, "c"), (2, "d"), (1.0, "e"), (True, "f"), (0, "g")]
    assert S(pairs).items() == dict(pairs).items()
    assert list(S(pairs)) == [0, 1, 2, 3] and type(next(iter(S(pairs).irange(1, 2)))) is int
    assert S({"b": 1, "a": 2}, a=3, c=4) == {"a": 3, "b": 1, "c": 4}
    assert list(S((k, k) for k in reversed(range(500)))) == list(range(500))


class Emptier:
    """A key whose < empties the dict being read and drops every other reference to the keys."""

    source: dict = {}

    def __init__(self, n):
        self.n = n

    def __lt__(self, other):
        Emptier.source.clear()
        gc.collect()
        return self.n < other.n


@pytest.mark.thread_unsafe  # Emptier.source is class-wide
def test_a_lt_that_drops_the_source_while_building_in_bulk():
    Emptier.source = {Emptier(n): [n] for n in random.Random(4).sample(range(100), 40)}
    probe = weakref.ref(next(iter(Emptier.source)))
    m = S(Emptier.source)
    assert len(m) == 40 and [k.n for k in m] == sorted(k.n for k in m) and all(v == [k.n] for k, v in m.items())
    assert probe() is not None  # the map holds the keys
    del m
    gc.collect()
    assert probe() is None


class Chaos:
    """A key whose < answers at random (and sometimes raises)."""

    rng = random.Random(1)

    def __init__(self, n):
        self.n = n

    def __lt__(self, other):
        r = Chaos.rng.random()
        if r < 0.02:
            raise Boom
        return r < 0.5


@pytest.mark.thread_unsafe  # Chaos's shared random generator
def test_an_inconsistent_lt_never_crashes_or_changes_old_versions():
    versions = [S()]
    contents = [[]]
    t = S().transient()
    for i in range(3000):
        m = versions[-1] if i % 5 else versions[random.Random(i).randrange(len(versions))]
        try:
            op = i % 7
            if op < 4:
                new = m.set(Chaos(i), i)
            elif op == 4:
                new = m.delete(Chaos(i))
            elif op == 5:
                m.floor(Chaos(i)), m.ceiling(Chaos(i)), Chaos(i) in m, m.get(Chaos(i))
                list(m.irange(Chaos(i), Chaos(i + 1)))
                new = m[Chaos(i):Chaos(i + 5)]
            else:
                t[Chaos(i)] = i
                if i % 3 == 0:
                    t.dissoc(Chaos(i - 1))
                continue
        except Boom:
            continue
        versions.append(new)
        contents.append([(k.n, v) for k, v in new.items()])
        assert len(new) == len(contents[-1]) == len(list(reversed(new)))
    for m, c in zip(versions, contents):
        assert [(k.n, v) for k, v in m.items()] == c and len(m) == len(c)
    frozen = t.persistent()
    assert len(list(frozen)) == len(frozen)
    t = frozen.transient()
    for _ in range(len(frozen) + 5):  # ends: each call removes an entry or raises
        if not t:
            break
        try:
            t.popitem()
        except (Boom, RuntimeError):
            pass
    assert len(t) <= len(frozen)


def test_unorderable_keys_raise_type_error_and_change_nothing():
    m = S({1: "a", 2: "b"})
    for bad in ("x", None, object(), [1], 1j):
        with pytest.raises(TypeError):
            m.set(bad, 0)
        with pytest.raises(TypeError):
            m[bad]
        with pytest.raises(TypeError):
            bad in m
        with pytest.raises(TypeError):
            m.floor(bad)
        with pytest.raises(TypeError):
            S({1: 0, bad: 1})
        t = m.transient()
        with pytest.raises(TypeError):
            t[bad] = 0
        assert t.persistent() == m
    assert m == {1: "a", 2: "b"} and list(m) == [1, 2]


def test_the_users_own_exception_propagates():
    class Mine(Exception):
        pass

    class K:
        def __lt__(self, other):
            raise Mine("from __lt__")

        __gt__ = __lt__

    m = S({1: 1})
    with pytest.raises(Mine, match="from __lt__"):
        m.set(K(), 0)
    with pytest.raises(Mine):
        S([(K(), 1), (K(), 2)])
    assert m == {1: 1}


def test_keys_that_are_equal_by_lt_are_one_key():
    m = S({1: "int"}).set(1.0, "float").set(True, "bool")
    assert len(m) == 1 and m[1] == "bool" and type(next(iter(m))) is int  # the first key object stays


def test_reentrant_lt_on_a_transient_raises_runtime_error():
    holder = {}

    class Sneaky:
        def __init__(self, n):
            self.n = n

        def __lt__(self, other):
            t = holder.get("t")
            if t is not None:
                with pytest.raises(RuntimeError):
                    len(t)
            return self.n < other.n

    t = S({Sneaky(i): i for i in range(10)}).transient()
    holder["t"] = t
    t[Sneaky(5.5)] = 1
    holder.clear()
    assert len(t) == 11


# ---- leaks and cycles --------------------------------------------------------------------------------


class RKey:
    """A fresh, ordered, never-cached key object for reference counting."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __lt__(self, other):
        return self.n < other.n


def _counts(objs):
    return [sys.getrefcount(o) for o in objs]


@pytest.mark.thread_unsafe  # reference counts of shared objects
def test_no_reference_leaks():
    keys = [RKey(i) for i in range(300)]
    vals = [object() for _ in range(300)]
    base = S(zip(keys[::2], vals[::2]))

    def ops():
        m = base
        for i in range(0, 300, 7):
            m = m.set(keys[i], vals[i]).delete(keys[(i * 3) % 300])
        t = m.transient()
        for i in range(1, 300, 5):
            t[keys[i]] = vals[i]
            t.pop(keys[(i + 2) % 300], None)
        t.setdefault(keys[3], vals[3])
        t.popitem()
        m2 = t.persistent()
        m2[keys[10]:keys[200]], m2.floor(keys[7]), m2.ceiling(keys[9]), m2.first(), m2.last()
        list(m2.items()), list(reversed(m2.values())), list(m2.irange(keys[5], keys[50]))
        m.diff(m2), m | m2, m2.update(zip(keys[:9], vals[:9]))
        m2 == dict(m2), repr(m2), m2.dict(), m2.items_list(), hash(S(zip(keys[:5], range(5))))
        try:
            m2.set("x", vals[0])
        except TypeError:
            pass
        with pytest.raises(KeyError):
            m2[RKey(-5)]

    for _ in range(3):
        ops()
    full_gc()
    before = _counts(keys) + _counts(vals)
    for _ in range(200):
        ops()
    full_gc()
    assert _counts(keys) + _counts(vals) == before


@pytest.mark.thread_unsafe  # tracemalloc is process-wide
def test_memory_does_not_grow_across_rounds():
    base = S({i: [i] for i in range(2000)})
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        sizes = []
        for r in range(5):
            for i in range(400):
                m = base.set(10**6 + i, [i]).delete(i)
                t = m.transient()
                t[-i] = i
                del t[i + 1]
                t.persistent()[5:500].first()
                list(m.irange(100, 150))
            full_gc()
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        if started:
            tracemalloc.stop()
    assert sizes[-1] - sizes[1] < 64 * 1024, sizes


class Helper:
    pass


@pytest.mark.thread_unsafe  # gc.collect() and weakref timing
def test_cycles_through_values_keys_and_transients_are_collected():
    h = Helper()
    h.m = S({1: h, 2: 0})
    r = weakref.ref(h)
    del h
    full_gc()
    assert r() is None

    class K(Helper):
        def __init__(self, n):
            self.n = n

        def __lt__(self, other):
            return self.n < other.n

    keys = [K(i) for i in range(200)]  # a deep tree whose separators hold keys too
    m = S({k: k for k in keys})
    for k in keys:
        k.m = m
    r = weakref.ref(keys[150])
    del keys, m, k
    full_gc()
    assert r() is None

    h = Helper()
    versions = [S({i: i for i in range(500)})]
    for i in range(20):
        versions.append(versions[-1].set(i, h))  # nodes shared by the versions
    h.versions = versions
    t = versions[-1].transient()
    h.t = t
    r = weakref.ref(h)
    del h, versions, t
    full_gc()
    assert r() is None
    gc.collect()


# ---- threads ------------------------------------------------------------------------------------------


def _run_threads(target, n=8):
    import threading

    barrier = threading.Barrier(n)
    errors = []

    def wrapper(index):
        try:
            target(index, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "threads did not finish in time"
    if errors:
        raise errors[0]


@pytest.mark.thread_unsafe  # starts threads of its own
def test_one_map_and_one_iterator_shared_by_threads():
    base = S({i: -i for i in range(20000)})
    for reverse in (False, True):
        it = base.irange(reverse=reverse)
        got = [[] for _ in range(8)]

        def drain(index, barrier):
            barrier.wait()
            for k in it:
                got[index].append(k)

        _run_threads(drain)
        flat = [k for r in got for k in r]
        assert sorted(flat) == list(range(20000))  # each key once
        for r in got:  # each thread saw its share in order
            assert r == sorted(r, reverse=reverse)

    def derive(index, barrier):
        barrier.wait()
        m = base
        for i in range(2000):
            k = (index + 1) * 100_000 + i
            m = m.set(k, i).delete(i * 8 + index)
            assert m.floor(k) == (k, i) and m.ceiling(k - i) == (k - i, 0)
        assert len(m) == 20000 and list(base.items())[:3] == [(0, 0), (1, -1), (2, -2)]

    _run_threads(derive)
    assert len(base) == 20000 and base.last() == (19999, -19999)


def test_an_atom_holds_a_sorted_dict():
    from pypersistent import Atom

    a = Atom(S({1: "a"}))
    seen = []
    a.watch(lambda old, new: seen.append(old.diff(new).added))
    a.swap(lambda m, k: m.set(k, "b"), 2)
    assert a.deref() == {1: "a", 2: "b"} and type(a.deref()) is S and seen == [{2: "b"}]
    assert a.compare_and_set(a.deref(), S()) and a.deref() == {}


# ---- a short adversarial fuzz: __lt__ that raises, lies, collects garbage, reenters -------------------


@pytest.mark.thread_unsafe  # gc.collect() inside comparisons and finalizers; shared generator
def test_hostile_fuzz():
    rng = random.Random(11)
    state = {"t": None, "maps": [S()], "collections": 40}

    def collect():  # a bounded number: free-threaded builds have no young generation to collect
        if state["collections"] > 0:
            state["collections"] -= 1
            gc.collect(0)

    class V:
        def __del__(self):
            t = state["t"]
            if t is not None and rng.random() < 0.3:
                try:
                    t[FK(rng.randrange(50))] = 1  # a finalizer that edits a transient (busy or not)
                except Exception:  # noqa: BLE001 - RuntimeError while busy, Boom, TypeError
                    pass
            if rng.random() < 0.02:
                collect()

    class FK:
        __slots__ = ("n",)

        def __init__(self, n):
            self.n = n

        def __lt__(self, o):
            r = rng.random()
            if r < 0.01:
                raise Boom
            if r < 0.02:
                collect()
            if r < 0.03 and state["t"] is not None:
                try:
                    len(state["t"])
                except RuntimeError:
                    pass
            if r < 0.04:
                state["maps"][:] = state["maps"][-3:]  # drop versions mid-operation
            if r < 0.045:
                return rng.random() < 0.5
            return self.n < o.n

    for step in range(20000):
        maps = state["maps"]
        m = rng.choice(maps) if maps else S()
        k = FK(rng.randrange(300))
        op = rng.randrange(14)
        try:
            if op < 4:
                maps.append(m.set(k, V()))
            elif op == 4:
                maps.append(m.delete(k))
            elif op == 5:
                m.floor(k), m.ceiling(k), m.lower(k), m.higher(k), k in m, m.get(k)
            elif op == 6:
                maps.append(m[k:FK(k.n + 40)])
            elif op == 7:
                list(m.irange(k, FK(k.n + 30), reverse=rng.random() < 0.5))
            elif op == 8:
                t = m.transient()
                state["t"] = t
                for _ in range(rng.randrange(30)):
                    if rng.random() < 0.7:
                        t[FK(rng.randrange(300))] = V()
                    else:
                        t.pop(FK(rng.randrange(300)), None)
                maps.append(t.persistent())
            elif op == 9:
                m.diff(rng.choice(maps))
            elif op == 10:
                m == rng.choice(maps)
            elif op == 11:
                maps.append(m | rng.choice(maps))
            elif op == 12:
                list(reversed(m.items()))
            else:
                S(list(m.items()))
        except (Boom, RuntimeError):
            pass
        finally:
            state["t"] = None
        if len(maps) > 200:
            del maps[:100]
        for x in maps[-2:]:
            assert len(list(x)) == len(x) == len(list(reversed(x)))
    state["maps"].clear()
    full_gc()


def test_latin1_keys_of_every_length_sort_as_python_does():
    # The inline bytes of a latin-1 key are read in two big-endian words, the second from loads
    # that overlap the first for keys of 9-15 characters: their order and their lookups must be
    # Python's for every length around the 8- and 16-byte edges, NULs and high bytes included.
    rng = random.Random(5)
    alphabet = "ab\x00\x7f\xffz"
    keys = {"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 21))) for _ in range(20_000)}
    m = PersistentSortedDict((k, i) for i, k in enumerate(keys))
    assert list(m.keys()) == sorted(keys)
    for k in keys:
        assert "".join(list(k)) in m


# A node is searched without jumps where the probe and the keys it meets decide by their inline
# bytes (exact ints in 64 bits, latin-1 strs), and by Python's `<` otherwise: a foreign key met on
# the way (a float, a big int, a bool, a long or non-latin-1 str, equal inline bytes of strs that
# are not whole in them) must hand the node back to `<`. Maps of a few thousand keys (three levels)
# with foreign keys sprinkled into some nodes, every probe kind, checked against bisect.
def _search_cases():
    rng = random.Random(11)
    ints = rng.sample(range(-(2**40), 2**40), 3000)
    foreign_numbers = [0.5, -7.25, 2**64 + 3, -(2**70), True, Offset(12), 1e15 + 0.5, float("inf")]
    strs = [f"user:{i:08d}" for i in rng.sample(range(10**8), 3000)]
    foreign_strs = ["user:0000", "user:00000000000000000000", "user:5\0", "user:500000000\u20ac", "\u0100",
                    "user:49999999" + "x" * 10, "user:4999999\0\0", "", "user:5" + "0" * 15, "user:5" + "0" * 10 + "\0"]
    yield "ints", ints, foreign_numbers, [x + d for x in ints[:300] for d in (-1, 0, 1)] + foreign_numbers + [2**63, -(2**63) - 1, 1.5]
    long_probes = ["user:5" + "0" * 15, "user:49999999" + "x" * 11, "user:4999999", "user:4999999\0", "\u20ac"]
    yield "strs", strs, foreign_strs, strs[:300] + [s + "\0" for s in strs[:100]] + [s[:-1] for s in strs[:100]] + foreign_strs + long_probes


@pytest.mark.parametrize("case", list(_search_cases()), ids=lambda c: c[0])
def test_node_search_hands_foreign_keys_to_python_lt(case):
    _, plain, foreign, probes = case
    rng = random.Random(3)
    for sprinkle in (0, 1, len(foreign)):
        keys = plain + foreign[:sprinkle]
        rng.shuffle(keys)
        d = {k: i for i, k in enumerate(keys)}
        for m in (S.from_dict(d), _grown_one_by_one(keys, d)):
            ordered = sorted(d)
            assert list(m) == ordered
            for p in probes + ordered[::50]:
                i = bisect.bisect_left(ordered, p)
                j = bisect.bisect_right(ordered, p)
                assert (p in m) == (i < j), p
                assert m.ceiling(p) == ((ordered[i], d[ordered[i]]) if i < len(ordered) else None), p
                assert m.floor(p) == ((ordered[j - 1], d[ordered[j - 1]]) if j else None), p
            lo, hi = ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]
            assert list(m[lo:hi]) == ordered[len(ordered) // 3:2 * len(ordered) // 3]


def _grown_one_by_one(keys, d):
    t = S().transient()
    for k in keys:
        t[k] = d[k]
    return t.persistent()
