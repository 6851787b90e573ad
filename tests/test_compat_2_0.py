"""pypersistent 2.0's map API keeps working: its names (PersistentDict, PersistentArrayMap) and
its methods, as a 2.0 user calls them. (2.0's PersistentArrayMap refused more than 8 entries;
here both names are the one map, whose small maps are a single array node anyway.) At the end,
2.0's PersistentSortedDict, likewise."""

from __future__ import annotations

import copy
import pickle

import pytest
import pypersistent
from pypersistent import PersistentArrayMap, PersistentDict, PersistentMap, PersistentSortedDict


@pytest.mark.parametrize("cls", [PersistentDict, PersistentArrayMap])
def test_the_2_0_names_are_the_map(cls: type) -> None:
    assert cls is PersistentMap
    assert {"PersistentDict", "PersistentArrayMap"} <= set(pypersistent.__all__)
    from persistent_map_cpp import PersistentMap as Seed

    assert Seed is cls


@pytest.mark.parametrize("cls", [PersistentDict, PersistentArrayMap])
def test_a_2_0_session(cls: type) -> None:
    m = cls.create(name="Alice", age=30)
    m2 = m.set("city", "NYC")
    m3 = m | {"role": "developer"}
    assert m == {"name": "Alice", "age": 30}
    assert m2["city"] == "NYC" and "city" not in m
    assert m3.get("role") == "developer" and m3.get("zzz") is None and m3.get("zzz", 0) == 0
    assert m.assoc("x", 1).dissoc("x") == m and m.delete("absent") is m
    assert m.contains("age") and not m.contains("city")
    assert cls.from_dict({1: "a"}) == {1: "a"}
    assert m.update({"age": 31})["age"] == 31 and m.merge(cls.create(k=1))["k"] == 1
    assert m.clear() == {} and m.copy() is m
    assert sorted(m.items_list()) == sorted(m.items()) == [("age", 30), ("name", "Alice")]
    assert sorted(m.keys_list()) == sorted(m.keys()) == ["age", "name"]
    assert sorted(m.values_list(), key=str) == [30, "Alice"]
    assert m.items_list() == list(m.items()) and m.keys_list() == list(m)  # iteration order
    assert len(m) == 2 and set(iter(m)) == {"name", "age"}
    assert hash(m) == hash(cls.from_dict({"age": 30, "name": "Alice"}))
    assert pickle.loads(pickle.dumps(m)) == m and copy.deepcopy(m) == m


def test_the_list_methods_on_large_maps_and_empty_ones() -> None:
    big = PersistentDict.from_dict({i: str(i) for i in range(10_000)})
    assert big.items_list() == list(big.items())
    assert big.keys_list() == list(big.keys())
    assert big.values_list() == list(big.values())
    empty = PersistentDict()
    assert empty.items_list() == empty.keys_list() == empty.values_list() == []


# ---- PersistentSortedDict (issue 16) --------------------------------------------------------------


def test_a_2_0_sorted_dict_session() -> None:
    """What pypersistent 2.0's PersistentSortedDict offered, called as a 2.0 user did."""
    m = PersistentSortedDict.create(c=3, a=1, b=2)
    m2 = PersistentSortedDict.from_dict({3: "c", 1: "a", 2: "b", 4: "d"})
    assert list(m.keys()) == ["a", "b", "c"] and list(m.values()) == [1, 2, 3]
    assert m.assoc("d", 4)["d"] == 4 and m.set("d", 4) == m.assoc("d", 4) and m.dissoc("a") == {"b": 2, "c": 3}
    assert m.delete("absent") is m and m.dissoc("absent") is m  # as 2.0: no KeyError
    assert m.contains("a") and not m.contains("z") and "a" in m
    assert m.get("a") == 1 and m.get("z", None) is None
    # 2.0 returned a [key, value] list; now a (key, value) tuple, which unpacks the same way.
    k, v = m2.first()
    assert (k, v) == (1, "a") and tuple(m2.last()) == (4, "d")
    assert m2.subseq(1, 3) == {1: "a", 2: "b"} and m2[1:3] == {1: "a", 2: "b"} and m2[1:3:None] == m2.subseq(1, 3)
    assert m2.rsubseq(1, 4) == {1: "a", 2: "b", 3: "c"}
    assert m.update({"z": 0})["z"] == 0 and m.merge({"z": 0}) == m.update({"z": 0}) and (m | {"z": 0})["z"] == 0
    assert m.clear() == {} and m.copy() is m and m.dict() == {"a": 1, "b": 2, "c": 3}
    assert [tuple(p) for p in m.items_list()] == [("a", 1), ("b", 2), ("c", 3)]
    assert m.keys_list() == ["a", "b", "c"] and m.values_list() == [1, 2, 3]
    assert pickle.loads(pickle.dumps(m2)) == m2 and len(m2) == 4
    assert m2 == PersistentSortedDict.from_dict(dict(m2))
    with pytest.raises(KeyError):
        m2[9]
    with pytest.raises(TypeError):
        PersistentSortedDict.from_dict({1: 1, "a": 2})


def test_what_changed_from_2_0_in_the_sorted_dict() -> None:
    m = PersistentSortedDict({1: "a", 2: "b"})
    assert m == {1: "a", 2: "b"}  # 2.0: False (it compared equal only to its own type)
    assert hash(m) == hash(PersistentSortedDict({2: "b", 1: "a"}))  # 2.0: unhashable
    assert m.get(9) is None  # 2.0: get() without a default raised KeyError
    assert list(reversed(m)) == [2, 1]  # 2.0: reversed() raised KeyError
    assert m[1:] == m and m[:2] == {1: "a"}  # 2.0: both bounds were required
    # 2.0's constructor took no arguments.
    assert PersistentSortedDict(m) is m and PersistentSortedDict({1: 2}) == {1: 2}
    assert PersistentSortedDict(a=1) == {"a": 1}
