"""pypersistent 2.0's map API keeps working: its names (PersistentDict, PersistentArrayMap) and
its methods, as a 2.0 user calls them. (2.0's PersistentArrayMap refused more than 8 entries;
here both names are the one map, whose small maps are a single array node anyway.)"""

from __future__ import annotations

import copy
import pickle

import pytest
import pypersistent
from pypersistent import PersistentArrayMap, PersistentDict, PersistentMap


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
