"""freeze() and thaw(): deep conversion between plain nested data and the persistent structures."""

from __future__ import annotations

import collections
import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypersistent import PersistentList, PersistentMap, PersistentSet, freeze, thaw

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4), st.floats(allow_nan=False))
hashables = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
    ),
    max_leaves=25,
)


def assert_frozen(x: object) -> None:
    """No dict, list or set is left anywhere inside x."""
    assert not isinstance(x, (dict, list, set)), type(x)
    if isinstance(x, PersistentMap):
        for v in x.values():
            assert_frozen(v)
    elif isinstance(x, (PersistentList, tuple)):
        for v in x:
            assert_frozen(v)


def assert_thawed(x: object) -> None:
    assert not isinstance(x, (PersistentMap, PersistentList, PersistentSet)), type(x)
    if isinstance(x, dict):
        for v in x.values():
            assert_thawed(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            assert_thawed(v)


@settings(max_examples=300, deadline=None)
@given(plain)
def test_thaw_inverts_freeze(data):
    frozen = freeze(data)
    assert_frozen(frozen)
    back = thaw(frozen)
    assert_thawed(back)
    assert back == data
    assert freeze(back) == frozen
    assert freeze(frozen) == frozen  # freezing frozen data changes nothing


def test_types_and_values():
    data = {"a": [1, {"b": {2, 3}}], "t": (1, [2]), "s": {(1, 2)}, "f": frozenset({1})}
    frozen = freeze(data)
    assert type(frozen) is PersistentMap
    assert type(frozen["a"]) is PersistentList and type(frozen["a"][1]) is PersistentMap
    assert type(frozen["a"][1]["b"]) is PersistentSet and frozen["a"][1]["b"] == {2, 3}
    assert frozen["t"] == (1, PersistentList([2])) and type(frozen["t"]) is tuple
    assert frozen["f"] is data["f"]  # already immutable
    assert hash(frozen)  # deep-frozen data of hashable leaves is hashable
    assert thaw(frozen) == data and type(thaw(frozen)["a"][1]["b"]) is set


def test_leaves_and_unchanged_tuples_are_kept():
    leaf = object()
    t = (1, "x", leaf)
    assert freeze(leaf) is leaf
    assert freeze(t) is t and thaw(t) is t
    assert freeze([leaf])[0] is leaf


def test_subclasses_and_named_tuples():
    Point = collections.namedtuple("Point", "x y")
    data = collections.OrderedDict(p=Point(1, [2]), d=collections.defaultdict(list, a=[1]))
    frozen = freeze(data)
    assert type(frozen) is PersistentMap and type(frozen["d"]) is PersistentMap
    assert type(frozen["p"]) is Point and frozen["p"] == Point(1, PersistentList([2]))
    assert thaw(frozen) == {"p": Point(1, [2]), "d": {"a": [1]}}


def test_strict_false_leaves_persistent_contents_alone():
    inner = PersistentMap(x=[1])  # a persistent map holding a plain list
    assert freeze(inner)["x"] == PersistentList([1])
    assert freeze(inner, False) is inner
    assert freeze([inner], False)[0] is inner
    plain = {"a": PersistentList([1])}
    assert thaw(plain) == {"a": [1]}
    assert thaw(plain, False) is plain
    assert thaw(PersistentList([plain]), False)[0] is plain


def test_shared_substructure_stays_shared():
    shared = [1, 2]
    frozen = freeze({"a": shared, "b": [shared, shared]})
    assert frozen["a"] is frozen["b"][0] is frozen["b"][1]
    back = thaw(frozen)
    assert back["a"] is back["b"][0] and back["a"] is not shared


@pytest.mark.parametrize("convert", [freeze, thaw])
def test_cycles_raise_value_error(convert):
    loop: list = []
    loop.append(loop)
    d: dict = {}
    d["self"] = [d]
    for bad in (loop, d, (1, loop)):
        with pytest.raises(ValueError, match="contains itself"):
            convert(bad)


class Boom(Exception):
    pass


class BadKey:
    armed = False

    def __hash__(self):
        if BadKey.armed:
            raise Boom
        return 1


def test_user_exceptions_propagate_and_nothing_leaks():
    class Tracked:
        pass

    alive = Tracked()
    ref = weakref.ref(alive)
    data = {"ok": [alive], "bad": {BadKey(): 1}}
    BadKey.armed = True
    try:
        with pytest.raises(Boom):
            freeze(data)
    finally:
        BadKey.armed = False
    del alive, data
    gc.collect()
    assert ref() is None


def test_deep_nesting_raises_recursion_error_not_a_crash():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        freeze(deep)


def test_sorted_dicts_freeze_their_values_and_thaw_to_dicts():
    from pypersistent import PersistentSortedDict

    sd = PersistentSortedDict({2: [1, {"a": {3}}], 1: "x"})
    frozen = freeze(sd)
    assert type(frozen) is PersistentSortedDict and type(frozen[2]) is PersistentList and list(frozen) == [1, 2]
    assert type(frozen[2][1]) is PersistentMap and freeze(sd, False) is sd
    back = thaw(frozen)
    assert back == {1: "x", 2: [1, {"a": {3}}]} and type(back) is dict and type(back[2][1]["a"]) is set
    assert thaw(PersistentSortedDict({1: [2]}), False) == {1: [2]}
