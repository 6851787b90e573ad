"""Construction, the functional API, the Pythonic aliases, merging and identity on no-ops."""

from __future__ import annotations

import collections
import random
import typing
from collections.abc import Mapping

import pytest
from conftest import CollidingKey, Unrelated
from pypersistent import PersistentMap, TransientMap


class KeysOnly:
    """Not a Mapping, but has keys() and __getitem__, which dict() accepts."""

    def __init__(self, data):
        self._data = dict(data)

    def keys(self):
        return list(self._data)

    def __getitem__(self, key):
        return self._data[key]


class CustomMapping(Mapping):
    """A Mapping that is neither a dict nor a PersistentMap and defines no __or__."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


def as_dict(m):
    """The contents of a map as a plain dict, read through iteration and __getitem__."""
    return {k: m[k] for k in m}


# --------------------------------------------------------------------------------------
# Import paths
# --------------------------------------------------------------------------------------


def test_legacy_import_path_gives_the_same_class():
    import persistent_map_cpp
    import pypersistent

    assert persistent_map_cpp.PersistentMap is pypersistent.PersistentMap
    from persistent_map_cpp import PersistentMap as Legacy

    assert Legacy is PersistentMap
    assert Legacy({"a": 1}) == PersistentMap({"a": 1})


def test_transient_map_is_exported():
    assert isinstance(PersistentMap().transient(), TransientMap)


# --------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------


def test_empty_construction():
    m = PersistentMap()
    assert len(m) == 0
    assert list(m) == []
    assert m == {}
    assert isinstance(m, PersistentMap)


def test_construct_from_dict():
    d = {"a": 1, "b": 2, 3: "three", (4, 5): None}
    m = PersistentMap(d)
    assert len(m) == 4
    assert as_dict(m) == d


def test_construct_from_pairs_list_and_generator():
    pairs = [("a", 1), ("b", 2), ("c", 3)]
    assert as_dict(PersistentMap(pairs)) == dict(pairs)
    assert as_dict(PersistentMap(p for p in pairs)) == dict(pairs)
    assert as_dict(PersistentMap(iter(pairs))) == dict(pairs)


def test_construct_from_pairs_later_duplicates_win():
    m = PersistentMap([("a", 1), ("b", 2), ("a", 3)])
    assert len(m) == 2
    assert m["a"] == 3


def test_construct_from_two_element_sequences_that_are_not_tuples():
    m = PersistentMap([["a", 1], "bc"])
    assert as_dict(m) == {"a": 1, "b": "c"}


def test_construct_from_kwargs_only():
    m = PersistentMap(a=1, b=2)
    assert as_dict(m) == {"a": 1, "b": 2}


def test_construct_from_mapping_and_kwargs_kwargs_win():
    m = PersistentMap({"a": 1, "b": 2}, b=20, c=30)
    assert as_dict(m) == {"a": 1, "b": 20, "c": 30}
    m2 = PersistentMap([("a", 1)], a=5)
    assert as_dict(m2) == {"a": 5}


def test_construct_from_object_with_keys_method():
    m = PersistentMap(KeysOnly({"x": 1, "y": 2}))
    assert as_dict(m) == {"x": 1, "y": 2}


def test_construct_from_other_mappings():
    src = PersistentMap({"a": 1, "b": 2})
    assert as_dict(PersistentMap(src)) == {"a": 1, "b": 2}
    assert as_dict(PersistentMap(CustomMapping({"q": 9}))) == {"q": 9}
    od = collections.OrderedDict([("z", 1), ("y", 2)])
    assert as_dict(PersistentMap(od)) == {"z": 1, "y": 2}
    assert as_dict(PersistentMap(collections.Counter("aab"))) == {"a": 2, "b": 1}


def test_construct_does_not_keep_a_reference_to_mutable_source():
    d = {"a": 1}
    m = PersistentMap(d)
    d["b"] = 2
    d["a"] = 100
    assert as_dict(m) == {"a": 1}


def test_construct_rejects_non_iterable():
    with pytest.raises(TypeError):
        PersistentMap(5)


def test_construct_rejects_two_positional_arguments():
    with pytest.raises(TypeError):
        PersistentMap({}, {})


def test_create_classmethod():
    m = PersistentMap.create(a=1, b=2)
    assert isinstance(m, PersistentMap)
    assert as_dict(m) == {"a": 1, "b": 2}
    empty = PersistentMap.create()
    assert isinstance(empty, PersistentMap)
    assert len(empty) == 0


def test_from_dict():
    d = {i: str(i) for i in range(100)}
    m = PersistentMap.from_dict(d)
    assert isinstance(m, PersistentMap)
    assert as_dict(m) == d
    assert len(PersistentMap.from_dict({})) == 0


def test_fromkeys_default_value_is_none():
    m = PersistentMap.fromkeys(["a", "b", "a"])
    assert isinstance(m, PersistentMap)
    assert as_dict(m) == {"a": None, "b": None}


def test_fromkeys_with_value_shares_the_value_object():
    value = []
    m = PersistentMap.fromkeys(range(10), value)
    assert len(m) == 10
    assert all(m[i] is value for i in range(10))


def test_fromkeys_accepts_any_iterable():
    m = PersistentMap.fromkeys((c for c in "hello"), 0)
    assert as_dict(m) == dict.fromkeys("hello", 0)


def test_large_construction():
    d = {i: i * i for i in range(5000)}
    m = PersistentMap(d)
    assert len(m) == 5000
    assert all(m[i] == i * i for i in range(5000))
    assert set(m) == set(d)


# --------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------


def test_assoc_returns_new_map_and_leaves_original():
    m = PersistentMap({"a": 1})
    m2 = m.assoc("b", 2)
    assert m2 is not m
    assert isinstance(m2, PersistentMap)
    assert as_dict(m) == {"a": 1}
    assert as_dict(m2) == {"a": 1, "b": 2}


def test_assoc_replaces_existing_value():
    m = PersistentMap({"a": 1, "b": 2})
    m2 = m.assoc("a", 100)
    assert len(m2) == 2
    assert m2["a"] == 100
    assert m["a"] == 1


def test_assoc_stores_the_value_object_itself():
    value = object()
    key = ("some", "key")
    m = PersistentMap().assoc(key, value)
    assert m[key] is value
    assert m.get(key) is value


def test_assoc_with_equal_but_distinct_value_stores_new_object():
    old = 10**30
    new = int(str(10**30))
    assert old == new and old is not new
    m = PersistentMap({"k": old})
    m2 = m.assoc("k", new)
    assert m2["k"] is new
    assert m["k"] is old


def test_assoc_chain_keeps_all_versions():
    versions = [PersistentMap()]
    for i in range(200):
        versions.append(versions[-1].assoc(i, -i))
    for n, v in enumerate(versions):
        assert len(v) == n
        assert as_dict(v) == {i: -i for i in range(n)}


def test_dissoc_removes_key_and_leaves_original():
    m = PersistentMap({"a": 1, "b": 2})
    m2 = m.dissoc("a")
    assert as_dict(m2) == {"b": 2}
    assert as_dict(m) == {"a": 1, "b": 2}
    assert "a" not in m2


def test_dissoc_absent_key_returns_same_map():
    m = PersistentMap({"a": 1})
    assert m.dissoc("zzz") is m
    empty = PersistentMap()
    assert empty.dissoc("a") is empty


def test_dissoc_down_to_empty():
    m = PersistentMap({i: i for i in range(100)})
    for i in range(100):
        m = m.dissoc(i)
        assert len(m) == 99 - i
        assert i not in m
    assert m == {}
    assert list(m) == []


def test_dissoc_in_random_order_matches_dict():
    rng = random.Random(1234)
    keys = list(range(1000)) + [str(i) for i in range(300)]
    d = {k: k for k in keys}
    m = PersistentMap(d)
    order = keys[:]
    rng.shuffle(order)
    for k in order[:700]:
        m = m.dissoc(k)
        del d[k]
    assert len(m) == len(d)
    assert as_dict(m) == d


def test_get_and_default():
    m = PersistentMap({"a": 1, "n": None})
    assert m.get("a") == 1
    assert m.get("zzz") is None
    sentinel = object()
    assert m.get("zzz", sentinel) is sentinel
    assert m.get("n", sentinel) is None
    assert m.get("a", sentinel) == 1


def test_contains_method():
    m = PersistentMap({"a": 1, "n": None})
    assert m.contains("a") is True
    assert m.contains("n") is True
    assert m.contains("zzz") is False


def test_int_and_float_keys_are_the_same_key_like_dict():
    m = PersistentMap({1: "int"})
    assert m[1.0] == "int"
    assert m[True] == "int"
    m2 = m.assoc(1.0, "float")
    assert len(m2) == 1
    assert m2[1] == "float"


def _ints_across_digit_boundaries():
    # Ints of 0 to 5 internal 30-bit digits and both signs, around the values where hash()
    # wraps (multiples of 2**61 - 1) or special-cases (-1 hashes to -2).
    modulus = 2**61 - 1
    picks = {0, 1, -1, 2, -2, 2**30 - 1, 2**30, 2**60, 2**61 - 2, modulus, modulus + 1, 2 * modulus - 1}
    for shift in (29, 30, 31, 59, 60, 61, 62, 63, 64, 89, 90, 91, 120, 150):
        picks.update({2**shift - 1, 2**shift, 2**shift + 1})
    picks.update({-modulus * 5, -modulus * 5 - 1, -modulus * 5 + 1, -(2**150) + 12345})
    rng = random.Random(7)
    for bits in (8, 30, 31, 45, 60, 61, 62, 63, 64, 100, 150):
        picks.update(rng.getrandbits(bits) for _ in range(40))
    ints = sorted(picks | {-k for k in picks})
    assert len(ints) > 800
    return ints


def test_int_keys_hash_like_python_so_equal_numbers_of_other_types_find_them():
    # Exact ints are hashed by the extension itself (a fast path); the result must be hash(k)
    # exactly, or Fraction(k), float(k) and True would miss keys that compare equal.
    from fractions import Fraction

    ints = _ints_across_digit_boundaries()
    by_int = PersistentMap.fromkeys(ints, "int")
    by_fraction = PersistentMap.fromkeys([Fraction(k) for k in ints], "fraction")
    # Iteration follows the hashes, so equal hashes give the same order.
    assert list(by_int) == list(by_fraction)
    for k in ints:
        assert by_int[Fraction(k)] == "int"
        assert by_fraction[k] == "fraction"
        assert Fraction(k) in by_int and k in by_fraction
        if float(k) == k:
            assert by_int[float(k)] == "int"
    assert by_int.update(by_fraction) == by_fraction
    assert all(v == "fraction" for v in by_int.update(by_fraction).values())
    assert by_int[True] == "int" and by_int[False] == "int"


def test_colliding_keys_basic():
    keys = [CollidingKey(i) for i in range(50)]
    m = PersistentMap()
    for i, k in enumerate(keys):
        m = m.assoc(k, i)
    assert len(m) == 50
    for i in range(50):
        assert m[CollidingKey(i)] == i
    # int keys share hashes with CollidingKeys but are never equal to them
    m = m.assoc(1, "int one")
    assert len(m) == 51
    assert m[1] == "int one"
    assert m[CollidingKey(1)] == 1


# --------------------------------------------------------------------------------------
# Pythonic aliases and bulk operations
# --------------------------------------------------------------------------------------


def test_set_is_assoc():
    m = PersistentMap({"a": 1})
    m2 = m.set("b", 2)
    assert isinstance(m2, PersistentMap)
    assert as_dict(m2) == {"a": 1, "b": 2}
    assert as_dict(m) == {"a": 1}


def test_delete_is_dissoc():
    m = PersistentMap({"a": 1, "b": 2})
    m2 = m.delete("a")
    assert as_dict(m2) == {"b": 2}
    assert as_dict(m) == {"a": 1, "b": 2}
    assert m.delete("absent") is m


@pytest.mark.parametrize("method", ["update", "merge"])
def test_update_and_merge_accept_what_dict_update_accepts(method):
    base = PersistentMap({"a": 1, "b": 2})

    def call(*args, **kw):
        return getattr(base, method)(*args, **kw)

    expected = {"a": 1, "b": 20, "c": 3}
    assert as_dict(call({"b": 20, "c": 3})) == expected
    assert as_dict(call([("b", 20), ("c", 3)])) == expected
    assert as_dict(call(iter([("b", 20), ("c", 3)]))) == expected
    assert as_dict(call(b=20, c=3)) == expected
    assert as_dict(call({"b": 0}, b=20, c=3)) == expected
    assert as_dict(call(PersistentMap({"b": 20, "c": 3}))) == expected
    assert as_dict(call(KeysOnly({"b": 20, "c": 3}))) == expected
    assert as_dict(call(CustomMapping({"b": 20, "c": 3}))) == expected
    # the receiver is never changed
    assert as_dict(base) == {"a": 1, "b": 2}


@pytest.mark.parametrize("method", ["update", "merge"])
def test_update_returns_new_persistent_map(method):
    base = PersistentMap({"a": 1})
    result = getattr(base, method)({"b": 2})
    assert isinstance(result, PersistentMap)
    assert result is not base


def test_update_with_no_arguments_is_equal():
    base = PersistentMap({"a": 1})
    assert as_dict(base.update()) == {"a": 1}
    assert as_dict(base.merge()) == {"a": 1}


def test_update_large_bulk():
    base = PersistentMap({i: i for i in range(0, 2000, 2)})
    other = {i: -i for i in range(0, 4000, 3)}
    expected = {i: i for i in range(0, 2000, 2)}
    expected.update(other)
    assert as_dict(base.update(other)) == expected
    assert as_dict(base.update(list(other.items()))) == expected


def test_or_with_dict_right_side_wins():
    m = PersistentMap({"a": 1, "b": 2})
    result = m | {"b": 20, "c": 3}
    assert isinstance(result, PersistentMap)
    assert as_dict(result) == {"a": 1, "b": 20, "c": 3}
    assert as_dict(m) == {"a": 1, "b": 2}


def test_ror_dict_or_map_returns_persistent_map_right_side_wins():
    m = PersistentMap({"a": 1, "b": 2})
    d = {"b": 20, "c": 3}
    result = d | m
    assert isinstance(result, PersistentMap)
    assert as_dict(result) == {"a": 1, "b": 2, "c": 3}
    assert d == {"b": 20, "c": 3}


def test_or_between_persistent_maps():
    a = PersistentMap({"x": 1, "y": 2})
    b = PersistentMap({"y": 20, "z": 3})
    assert as_dict(a | b) == {"x": 1, "y": 20, "z": 3}
    assert as_dict(b | a) == {"x": 1, "y": 2, "z": 3}
    assert isinstance(a | b, PersistentMap)


def test_or_with_custom_mapping_both_sides():
    m = PersistentMap({"a": 1, "b": 2})
    c = CustomMapping({"b": 20, "c": 3})
    left = m | c
    right = c | m
    assert isinstance(left, PersistentMap)
    assert isinstance(right, PersistentMap)
    assert as_dict(left) == {"a": 1, "b": 20, "c": 3}
    assert as_dict(right) == {"a": 1, "b": 2, "c": 3}


def test_or_with_non_mapping_raises_type_error():
    m = PersistentMap({"a": 1})
    with pytest.raises(TypeError):
        m | 5
    with pytest.raises(TypeError):
        5 | m
    with pytest.raises(TypeError):
        m | Unrelated()


def test_inplace_or_rebinds_and_leaves_original():
    m = PersistentMap({"a": 1})
    alias = m
    m |= {"b": 2}
    assert isinstance(m, PersistentMap)
    assert as_dict(m) == {"a": 1, "b": 2}
    assert as_dict(alias) == {"a": 1}


def test_clear_returns_empty_map():
    m = PersistentMap({"a": 1, "b": 2})
    c = m.clear()
    assert isinstance(c, PersistentMap)
    assert len(c) == 0
    assert list(c) == []
    assert as_dict(m) == {"a": 1, "b": 2}
    assert len(PersistentMap().clear()) == 0


def test_copy_returns_self():
    m = PersistentMap({"a": 1})
    assert m.copy() is m


# --------------------------------------------------------------------------------------
# Identity on no-op updates
# --------------------------------------------------------------------------------------


def test_set_same_value_object_returns_same_map():
    value = object()
    m = PersistentMap({"a": value, "b": 2})
    assert m.set("a", value) is m
    assert m.assoc("a", value) is m


def test_set_same_value_object_with_colliding_keys_returns_same_map():
    values = [object() for _ in range(20)]
    m = PersistentMap({CollidingKey(i): values[i] for i in range(20)})
    for i in range(20):
        assert m.assoc(CollidingKey(i), values[i]) is m


def test_set_same_value_object_in_large_map_returns_same_map():
    m = PersistentMap({i: str(i) for i in range(3000)})
    for i in range(0, 3000, 97):
        assert m.assoc(i, m[i]) is m


def test_update_with_empty_returns_same_map():
    m = PersistentMap({"a": 1})
    assert m.update({}) is m
    empty = PersistentMap()
    assert empty.update({}) is empty


def test_dissoc_absent_from_large_and_colliding_maps_returns_same_map():
    m = PersistentMap({i: i for i in range(3000)})
    assert m.dissoc(10**9) is m
    assert m.dissoc("absent") is m
    c = PersistentMap({CollidingKey(i): i for i in range(30)})
    assert c.dissoc(CollidingKey(1000)) is c
    assert c.dissoc(1) is c  # same hash as CollidingKey(1), but not equal


# --------------------------------------------------------------------------------------
# Generic alias
# --------------------------------------------------------------------------------------


def test_class_getitem():
    alias = PersistentMap[str, int]
    assert typing.get_origin(alias) is PersistentMap
    assert typing.get_args(alias) == (str, int)
    m = alias({"a": 1})
    assert isinstance(m, PersistentMap)
    assert as_dict(m) == {"a": 1}


def test_class_getitem_in_annotations():
    def f(m: PersistentMap[str, int]) -> PersistentMap[str, int]:
        return m.assoc("x", 1)

    assert as_dict(f(PersistentMap())) == {"x": 1}
    hints = typing.get_type_hints(f)
    assert typing.get_origin(hints["m"]) is PersistentMap
