"""Mapping protocols: item access, views, equality, hashing, repr, pickling, copying,
weak references and iteration order (pattern matching is in test_pattern_matching.py)."""

from __future__ import annotations

import collections.abc as cabc
import copy
import gc
import pickle
import random
import weakref

import pytest
from conftest import CollidingKey, ConstantHashKey, Unrelated
from pypersistent import PersistentMap


class CustomMapping(cabc.Mapping):
    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


class Holder:
    """Holds a reference to anything and shows it in its repr without a recursion guard."""

    def __init__(self):
        self.ref = None

    def __repr__(self):
        return f"Holder({self.ref!r})"


# --------------------------------------------------------------------------------------
# Item access, membership, length, iteration
# --------------------------------------------------------------------------------------


def test_getitem():
    m = PersistentMap({"a": 1, 2: "two", None: "none", (1, 2): [3]})
    assert m["a"] == 1
    assert m[2] == "two"
    assert m[None] == "none"
    assert m[(1, 2)] == [3]


@pytest.mark.parametrize("key", ["missing", 0, (1, 2), None, 10**40, frozenset({1})])
def test_getitem_missing_raises_keyerror_with_key_as_only_arg(key):
    m = PersistentMap({"a": 1})
    with pytest.raises(KeyError) as excinfo:
        m[key]
    assert excinfo.value.args == (key,)


def test_getitem_missing_on_empty_map():
    with pytest.raises(KeyError) as excinfo:
        PersistentMap()["x"]
    assert excinfo.value.args == ("x",)


def test_getitem_missing_colliding_key():
    m = PersistentMap({CollidingKey(i): i for i in range(10)})
    missing = CollidingKey(1000)
    with pytest.raises(KeyError) as excinfo:
        m[missing]
    assert excinfo.value.args == (missing,)


def test_in_operator():
    m = PersistentMap({"a": 1, "n": None})
    assert "a" in m
    assert "n" in m
    assert "b" not in m
    assert 1 not in m  # values are not keys


def test_len():
    assert len(PersistentMap()) == 0
    assert len(PersistentMap({"a": 1})) == 1
    assert len(PersistentMap({i: i for i in range(777)})) == 777


def test_iteration_yields_each_key_once():
    d = {i: str(i) for i in range(1000)}
    d.update({str(i): i for i in range(100)})
    m = PersistentMap(d)
    keys = list(m)
    assert len(keys) == len(d)
    assert set(keys) == set(d)


def test_iterating_twice_gives_same_order():
    m = PersistentMap({i: i for i in range(500)})
    assert list(m) == list(m)
    assert list(iter(m)) == list(m.keys())


def test_iterator_protocol():
    m = PersistentMap({"a": 1})
    it = iter(m)
    assert iter(it) is it
    assert next(it) == "a"
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_iterator_keeps_map_alive():
    it = iter(PersistentMap({i: i for i in range(100)}))
    gc.collect()
    assert sorted(it) == list(range(100))


def test_is_a_mapping_but_not_mutable():
    m = PersistentMap({"a": 1})
    assert isinstance(m, cabc.Mapping)
    assert issubclass(PersistentMap, cabc.Mapping)
    assert not isinstance(m, cabc.MutableMapping)
    with pytest.raises(TypeError):
        m["b"] = 2
    with pytest.raises(TypeError):
        del m["a"]
    assert dict(m) == {"a": 1}


# --------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------


def test_views_are_registered_abc_views():
    m = PersistentMap({"a": 1})
    assert isinstance(m.keys(), cabc.KeysView)
    assert isinstance(m.values(), cabc.ValuesView)
    assert isinstance(m.items(), cabc.ItemsView)


def test_view_len_and_iteration():
    d = {"a": 1, "b": 2, "c": 3}
    m = PersistentMap(d)
    assert len(m.keys()) == len(m.values()) == len(m.items()) == 3
    assert sorted(m.keys()) == ["a", "b", "c"]
    assert sorted(m.values()) == [1, 2, 3]
    assert sorted(m.items()) == [("a", 1), ("b", 2), ("c", 3)]


def test_views_are_consistent_with_each_other():
    m = PersistentMap({i: -i for i in range(300)})
    assert list(m.keys()) == list(m)
    assert list(zip(m.keys(), m.values())) == list(m.items())
    assert all(m[k] == v for k, v in m.items())


def test_views_of_empty_map():
    m = PersistentMap()
    assert list(m.keys()) == [] and len(m.keys()) == 0
    assert list(m.values()) == [] and len(m.values()) == 0
    assert list(m.items()) == [] and len(m.items()) == 0


def test_view_membership():
    m = PersistentMap({"a": 1, "b": [2]})
    assert "a" in m.keys()
    assert "z" not in m.keys()
    assert 1 in m.values()
    assert [2] in m.values()
    assert 3 not in m.values()
    assert ("a", 1) in m.items()
    assert ("b", [2]) in m.items()
    assert ("a", 2) not in m.items()
    assert ("z", 1) not in m.items()


def test_keys_view_set_operations():
    m = PersistentMap({"a": 1, "b": 2, "c": 3})
    k = m.keys()
    assert k & {"a", "x"} == {"a"}
    assert k | {"x"} == {"a", "b", "c", "x"}
    assert k - {"a"} == {"b", "c"}
    for result in (k & {"a"}, k | {"x"}, k - {"a"}):
        assert isinstance(result, cabc.Set)
    assert set(k) == {"a", "b", "c"}  # the view itself is unchanged


def test_keys_view_reflected_and_symmetric_operations():
    m = PersistentMap({"a": 1, "b": 2, "c": 3})
    k = m.keys()
    assert {"a", "x"} & k == {"a"}
    assert {"x"} | k == {"a", "b", "c", "x"}
    assert {"a", "x"} - k == {"x"}
    assert k ^ {"a", "x"} == {"b", "c", "x"}


def test_keys_view_set_operations_with_other_views():
    a = PersistentMap({"a": 1, "b": 2})
    b = PersistentMap({"b": 3, "c": 4})
    assert a.keys() & b.keys() == {"b"}
    assert a.keys() | b.keys() == {"a", "b", "c"}
    assert a.keys() - b.keys() == {"a"}
    assert a.keys() & {"b": 0, "q": 1}.keys() == {"b"}


def test_items_view_set_operations():
    m = PersistentMap({"a": 1, "b": 2})
    i = m.items()
    assert i & {("a", 1), ("b", 3)} == {("a", 1)}
    assert i | {("c", 3)} == {("a", 1), ("b", 2), ("c", 3)}
    assert i - {("a", 1)} == {("b", 2)}
    for result in (i & {("a", 1)}, i | set(), i - set()):
        assert isinstance(result, cabc.Set)


# --------------------------------------------------------------------------------------
# Equality
# --------------------------------------------------------------------------------------


def test_equality_with_dict_both_directions():
    m = PersistentMap({"a": 1, "b": 2})
    assert m == {"a": 1, "b": 2}
    assert {"a": 1, "b": 2} == m
    assert not (m != {"a": 1, "b": 2})
    assert m != {"a": 1}
    assert m != {"a": 1, "b": 3}
    assert m != {"a": 1, "c": 2}
    assert m != {"a": 1, "b": 2, "c": 3}
    assert {"a": 1} != m


def test_equality_between_maps():
    a = PersistentMap({"a": 1, "b": 2})
    b = PersistentMap([("b", 2), ("a", 1)])
    assert a == b
    assert not (a != b)
    assert a != b.assoc("c", 3)
    assert a != b.assoc("a", 100)
    assert PersistentMap() == PersistentMap()


def test_equality_with_other_mappings():
    m = PersistentMap({"a": 1})
    assert m == CustomMapping({"a": 1})
    assert CustomMapping({"a": 1}) == m
    assert m != CustomMapping({"a": 2})
    assert PersistentMap() == {}


def test_equality_uses_value_equality():
    assert PersistentMap({"a": 1}) == {"a": 1.0}
    assert PersistentMap({"a": [1, 2]}) == {"a": [1, 2]}
    assert PersistentMap({"a": [1, 2]}) != {"a": [1, 3]}


@pytest.mark.parametrize(
    "other", [[("a", 1)], (("a", 1),), {("a", 1)}, "a", 5, None, Unrelated(), frozenset()]
)
def test_not_equal_to_non_mappings(other):
    m = PersistentMap({"a": 1})
    assert (m == other) is False
    assert (m != other) is True
    assert (other == m) is False


def test_empty_map_not_equal_to_empty_non_mappings():
    m = PersistentMap()
    assert m != []
    assert m != ()
    assert m != set()
    assert m != ""


def test_equality_with_colliding_keys_built_in_different_orders():
    keys = [CollidingKey(i) for i in range(60)]
    a = PersistentMap()
    for k in keys:
        a = a.assoc(k, k.value)
    b = PersistentMap()
    for k in reversed(keys):
        b = b.assoc(k, k.value)
    assert a == b
    assert a != b.assoc(CollidingKey(0), "other")
    assert a != b.dissoc(CollidingKey(5))


# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------


def test_hash_is_order_independent():
    items = [(i, str(i)) for i in range(500)]
    a = PersistentMap(items)
    b = PersistentMap(list(reversed(items)))
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    c = PersistentMap()
    for k, v in shuffled:
        c = c.assoc(k, v)
    assert hash(a) == hash(b) == hash(c)


def test_hash_equal_after_different_edit_histories():
    a = PersistentMap({"a": 1, "b": 2})
    b = PersistentMap({"b": 2, "c": 3, "a": 0}).dissoc("c").assoc("a", 1)
    assert a == b
    assert hash(a) == hash(b)


def test_hash_of_empty_maps_is_stable():
    assert hash(PersistentMap()) == hash(PersistentMap())
    assert hash(PersistentMap({"a": 1}).dissoc("a")) == hash(PersistentMap())


def test_hash_is_repeatable():
    m = PersistentMap({i: (i, str(i)) for i in range(100)})
    assert hash(m) == hash(m)


def test_hash_distinguishes_most_maps():
    hashes = {hash(PersistentMap({"k": i})) for i in range(200)}
    hashes |= {hash(PersistentMap({i: "v"})) for i in range(200)}
    assert len(hashes) > 300


def test_hash_with_unhashable_value_raises_type_error():
    m = PersistentMap({"a": [1, 2]})
    with pytest.raises(TypeError):
        hash(m)
    with pytest.raises(TypeError):
        {}[m] = 1


def test_maps_usable_as_dict_keys_and_set_members():
    a = PersistentMap({"x": 1, "y": 2})
    b = PersistentMap({"y": 2}).assoc("x", 1)
    lookup = {a: "found"}
    assert lookup[b] == "found"
    assert len({a, b, PersistentMap({"x": 1})}) == 2


def test_nested_maps_hash():
    inner1 = PersistentMap({"i": 1})
    inner2 = PersistentMap({"i": 1})
    assert hash(PersistentMap({"o": inner1})) == hash(PersistentMap({"o": inner2}))


# --------------------------------------------------------------------------------------
# repr
# --------------------------------------------------------------------------------------


def test_repr_empty():
    assert repr(PersistentMap()) == "PersistentMap({})"


def test_repr_single():
    assert repr(PersistentMap({"a": 1})) == "PersistentMap({'a': 1})"
    assert repr(PersistentMap({1: "x"})) == "PersistentMap({1: 'x'})"


def test_repr_nested():
    m = PersistentMap({"a": PersistentMap({"b": 2})})
    assert repr(m) == "PersistentMap({'a': PersistentMap({'b': 2})})"


def test_repr_round_trips_through_eval():
    m = PersistentMap({i: str(i) for i in range(50)} | {"k": (1, 2), "n": None})
    again = eval(repr(m), {"PersistentMap": PersistentMap})
    assert again == m
    assert repr(m).startswith("PersistentMap({")
    assert repr(m).endswith("})")


def test_repr_of_self_containing_map_through_list():
    lst = []
    m = PersistentMap({"self": lst})
    lst.append(m)
    r = repr(m)
    assert r.startswith("PersistentMap(")
    assert "..." in r


def test_repr_of_self_containing_map_through_unguarded_object():
    # Holder.__repr__ has no recursion guard of its own, so only the map's guard can stop
    # the recursion here.
    holder = Holder()
    m = PersistentMap({"h": holder})
    holder.ref = m
    r = repr(m)
    assert r.startswith("PersistentMap(")
    assert "..." in r
    assert len(r) < 200


def test_repr_of_two_maps_containing_each_other():
    h1, h2 = Holder(), Holder()
    m1 = PersistentMap({"h": h1})
    m2 = PersistentMap({"h": h2})
    h1.ref = m2
    h2.ref = m1
    assert "..." in repr(m1)
    assert "..." in repr(m2)


def test_repr_same_map_twice_as_sibling_values_is_not_elided():
    inner = PersistentMap({"x": 1})
    m = PersistentMap({"a": inner, "b": inner})
    r = repr(m)
    assert "..." not in r
    assert r.count("PersistentMap({'x': 1})") == 2


def test_repr_propagates_exception_from_value_repr_and_releases_guard():
    class FlakyRepr:
        calls = 0

        def __repr__(self):
            FlakyRepr.calls += 1
            if FlakyRepr.calls == 1:
                raise ZeroDivisionError("no repr")
            return "ok"

    m = PersistentMap({"a": FlakyRepr()})
    with pytest.raises(ZeroDivisionError):
        repr(m)
    # had the recursion guard not been released, this would now show "..."
    assert repr(m) == "PersistentMap({'a': ok})"


# --------------------------------------------------------------------------------------
# Pickle and copy
# --------------------------------------------------------------------------------------


PICKLE_PROTOCOLS = list(range(0, pickle.HIGHEST_PROTOCOL + 1))


@pytest.mark.parametrize("protocol", PICKLE_PROTOCOLS)
def test_pickle_round_trip(protocol):
    m = PersistentMap({"a": 1, 2: [3, 4], (5, 6): {"seven": 7}, None: None})
    again = pickle.loads(pickle.dumps(m, protocol=protocol))
    assert type(again) is PersistentMap
    assert again == m
    assert dict(again.items()) == dict(m.items())


@pytest.mark.parametrize("protocol", PICKLE_PROTOCOLS)
def test_pickle_round_trip_empty_large_and_colliding(protocol):
    for m in (
        PersistentMap(),
        PersistentMap({i: str(i) for i in range(3000)}),
        PersistentMap({CollidingKey(i): i for i in range(40)}),
        PersistentMap({ConstantHashKey(i): i for i in range(40)}),
    ):
        again = pickle.loads(pickle.dumps(m, protocol=protocol))
        assert type(again) is PersistentMap
        assert again == m
        assert len(again) == len(m)


@pytest.mark.parametrize("protocol", PICKLE_PROTOCOLS)
def test_pickle_nested_and_shared(protocol):
    inner = PersistentMap({"x": [1]})
    m = PersistentMap({"a": inner, "b": inner})
    again = pickle.loads(pickle.dumps(m, protocol=protocol))
    assert again == m
    assert type(again["a"]) is PersistentMap
    assert again["a"] is again["b"]  # pickle memo keeps shared references shared


@pytest.mark.parametrize("protocol", PICKLE_PROTOCOLS)
def test_pickle_preserves_iteration_order(protocol):
    m = PersistentMap({str(i): i for i in range(300)})
    again = pickle.loads(pickle.dumps(m, protocol=protocol))
    assert list(again) == list(m)


def test_copy_copy():
    m = PersistentMap({"a": [1]})
    c = copy.copy(m)
    assert c is m or (type(c) is PersistentMap and c == m and c["a"] is m["a"])


def test_deepcopy_copies_values():
    m = PersistentMap({"a": [1, 2], "b": {"c": [3]}})
    d = copy.deepcopy(m)
    assert type(d) is PersistentMap
    assert d == m
    assert d["a"] is not m["a"]
    assert d["b"] is not m["b"]
    assert d["b"]["c"] is not m["b"]["c"]
    d["a"].append(99)
    assert m["a"] == [1, 2]


def test_deepcopy_keeps_shared_references_shared():
    shared = [1]
    m = PersistentMap({"a": shared, "b": shared})
    d = copy.deepcopy(m)
    assert d["a"] is d["b"]
    assert d["a"] is not shared


def test_deepcopy_inside_containers_uses_memo():
    m = PersistentMap({"a": [1]})
    outer = [m, m]
    d = copy.deepcopy(outer)
    assert d[0] == m
    assert d[0] is d[1]


def test_deepcopy_of_self_containing_map():
    lst = []
    m = PersistentMap({"l": lst})
    lst.append(m)
    d = copy.deepcopy(m)
    assert type(d) is PersistentMap
    assert d["l"] is not lst
    assert len(d["l"]) == 1
    assert d["l"][0]["l"] is d["l"]


# --------------------------------------------------------------------------------------
# Weak references
# --------------------------------------------------------------------------------------


def test_weakref():
    m = PersistentMap({"a": 1})
    r = weakref.ref(m)
    assert r() is m
    del m
    gc.collect()
    assert r() is None


def test_weakref_in_weak_value_dictionary():
    wvd = weakref.WeakValueDictionary()
    m = PersistentMap({"a": 1})
    wvd["k"] = m
    assert wvd["k"] is m
    del m
    gc.collect()
    assert "k" not in wvd


# --------------------------------------------------------------------------------------
# Iteration order is the trie's order
# --------------------------------------------------------------------------------------


def _build_variants(items):
    """Equal maps built in many different ways."""
    items = list(items)
    d = dict(items)
    variants = {}
    fwd = PersistentMap()
    for k, v in items:
        fwd = fwd.assoc(k, v)
    variants["forward assoc"] = fwd
    rev = PersistentMap()
    for k, v in reversed(items):
        rev = rev.assoc(k, v)
    variants["reverse assoc"] = rev
    shuffled = items[:]
    random.Random(99).shuffle(shuffled)
    variants["shuffled constructor"] = PersistentMap(shuffled)
    variants["from_dict"] = PersistentMap.from_dict(d)
    variants["constructor"] = PersistentMap(d)
    t = PersistentMap().transient()
    for k, v in shuffled:
        t[k] = v
    variants["transient"] = t.persistent()
    variants["update"] = PersistentMap().update(dict(reversed(items)))
    half = len(items) // 2
    variants["two updates"] = PersistentMap(items[half:]).update(items[:half])
    extra = PersistentMap(d).assoc("extra-key", 1).assoc(-12345, 2)
    variants["assoc extra then dissoc"] = extra.dissoc("extra-key").dissoc(-12345)
    return variants


@pytest.mark.parametrize(
    "items",
    [
        [(i, i) for i in range(2000)],
        [(i * 7919, str(i)) for i in range(500)],
        [(str(i), i) for i in range(1000)],
        [(f"key-{i}", i) for i in range(40)],
        # (not -1: hash(-1) == hash(-2) in CPython, and colliding keys may keep insertion order)
        [(i, i) for i in range(-20, 20) if i != -1] + [(f"s{i}", i) for i in range(20)],
    ],
    ids=["ints", "spread-ints", "strs", "few-strs", "mixed"],
)
def test_iteration_order_independent_of_construction(items):
    variants = _build_variants(items)
    reference_name, reference = next(iter(variants.items()))
    expected_keys = list(reference)
    expected_items = list(reference.items())
    assert set(expected_keys) == {k for k, _ in items}
    for name, m in variants.items():
        assert m == reference, name
        assert list(m) == expected_keys, f"{name} iterates differently from {reference_name}"
        assert list(m.items()) == expected_items, name
        assert list(m.values()) == [v for _, v in expected_items], name
