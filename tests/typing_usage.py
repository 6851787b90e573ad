"""Typed usage of the public API.

``tests/test_typing.py`` type-checks this file with ``mypy --strict`` (so the package's
type information must be precise enough for it) and also runs it, so every statement here
must hold at run time too.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, MutableMapping, Sequence, ValuesView
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Optional

from pypersistent import Atom, PersistentArrayMap, PersistentDict, PersistentMap, TransientMap
from pypersistent import MapDiff, PersistentList, PersistentSet, SetDiff, TransientList, TransientSet
from pypersistent import PersistentSortedDict

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:

    def assert_type(value, expected_type, /):
        return value


def build() -> PersistentMap[str, int]:
    empty: PersistentMap[str, int] = PersistentMap()
    m = empty.assoc("a", 1).set("b", 2)
    assert_type(m, PersistentMap[str, int])
    return m


def lookups(m: PersistentMap[str, int]) -> int:
    assert_type(m["a"], int)
    assert_type(m.get("a"), Optional[int])
    maybe: Optional[int] = m.get("zzz")
    with_default: int = m.get("zzz", 0)
    present: bool = m.contains("a")
    also_present: bool = "a" in m
    size: int = len(m)
    assert maybe is None and with_default == 0 and present and also_present
    return m["a"] + size


def derive(m: PersistentMap[str, int]) -> list[PersistentMap[str, int]]:
    removed = m.dissoc("a")
    assert_type(removed, PersistentMap[str, int])
    deleted: PersistentMap[str, int] = m.delete("b")
    updated: PersistentMap[str, int] = m.update({"c": 3})
    merged: PersistentMap[str, int] = m.merge({"d": 4})
    ored: PersistentMap[str, int] = m | {"e": 5}
    cleared: PersistentMap[str, int] = m.clear()
    same: PersistentMap[str, int] = m.copy()
    return [removed, deleted, updated, merged, ored, cleared, same]


def iterate(m: PersistentMap[str, int]) -> list[str]:
    keys: KeysView[str] = m.keys()
    values: ValuesView[int] = m.values()
    items: ItemsView[str, int] = m.items()
    it: Iterator[str] = iter(m)
    total = sum(values)
    pairs: list[tuple[str, int]] = list(items)
    assert total == sum(v for _, v in pairs)
    return sorted(keys) + list(it)


def edit(m: PersistentMap[str, int]) -> PersistentMap[str, int]:
    t = m.transient()
    assert_type(t, TransientMap[str, int])
    t["x"] = 10
    del t["x"]
    t.assoc("y", 20).dissoc("a")
    t.set("z", 30).delete("z")
    t.update({"w": 40})
    got: Optional[int] = t.get("y")
    assert got == 20 and "w" in t and len(t) >= 2
    # A full MutableMapping.
    mm: MutableMapping[str, int] = t
    assert_type(t.pop("w"), int)
    assert_type(t.pop("absent", None), Optional[int])
    assert_type(t.setdefault("s", 5), int)
    t.setdefault("s", 6)
    key, value = t.popitem()
    t[key] = value
    assert_type(t.copy(), TransientMap[str, int])
    assert sorted(t.keys()) == sorted(k for k, _ in t.items()) and len(t.values()) == len(mm)
    assert t == t.copy()
    result = t.persistent()
    assert_type(result, PersistentMap[str, int])
    with m.transient() as t2:
        t2["q"] = 1
        return t2.persistent()


def as_mapping(m: Mapping[str, int]) -> int:
    return len(m)


def constructors() -> None:
    a: PersistentMap[str, int] = PersistentMap({"a": 1})
    b: PersistentMap[str, int] = PersistentMap([("a", 1)])
    c: PersistentMap[str, int] = PersistentMap.from_dict({"a": 1})
    d: PersistentMap[str, int] = PersistentMap.create(a=1)
    e: PersistentMap[str, None] = PersistentMap.fromkeys(["a"])
    f: PersistentMap[str, int] = PersistentMap.fromkeys(["a"], 1)
    assert a == b == c == d == f
    assert e == {"a": None}
    h: int = hash(a)
    assert h == hash(b)


def version_2_names() -> None:
    d: PersistentDict[str, int] = PersistentDict.create(a=1)
    assert_type(d, PersistentMap[str, int])
    small = PersistentArrayMap.from_dict({"x": 1.5})
    assert_type(small.items_list(), list[tuple[str, float]])
    assert_type(d.keys_list(), list[str])
    assert_type(d.values_list(), list[int])
    assert d.items_list() == [("a", 1)] and small.values_list() == [1.5]


def lists() -> None:
    empty: PersistentList[int] = PersistentList()
    l = empty.append(1).conj(2).extend([3, 4]).set(0, 10).assoc(-1, 40)
    assert_type(l, PersistentList[int])
    assert_type(l[0], int)
    assert_type(l[1:], PersistentList[int])
    assert_type(l.nth(-1), int)
    assert_type(l.get(9), Optional[int])
    assert_type(l.get(9, 0), int)
    assert_type(l.get(9, "none"), "int | str")
    assert_type(l.list(), list[int])
    assert_type(l.pop(), PersistentList[int])
    assert_type(l + PersistentList([5]), PersistentList[int])
    assert_type(l * 2, PersistentList[int])
    created = PersistentList.create("a", "b")
    assert_type(created, PersistentList[str])
    assert_type(PersistentList.from_list([1.5]), PersistentList[float])
    seq: Sequence[int] = l
    first: int = next(iter(seq))
    last: int = next(reversed(l))
    assert first == 10 and last == 40 and l.index(2) == 1 and l.count(3) == 1 and 3 in l
    assert l.slice(1, 3) == PersistentList([2, 3]) and l < PersistentList([11])
    assert hash(l) == hash((10, 2, 3, 40)) and len(l) == 4
    t: TransientList[int] = l.transient()
    t.append(5)
    t.extend(range(3))
    t[0] = 0
    popped: int = t.pop()
    size: int = len(t)
    assert_type(t[0], int)
    assert_type(t.persistent(), PersistentList[int])
    assert popped == 2 and size == 7
    with PersistentList[str]().transient() as u:
        u.append("x")
        assert_type(u.persistent(), PersistentList[str])


def sets() -> None:
    s = PersistentSet([1, 2, 3])
    assert_type(s, PersistentSet[int])
    assert_type(s.add(4), PersistentSet[int])
    assert_type(s.discard(1), PersistentSet[int])
    assert_type(s | {"a"}, PersistentSet[int | str])
    assert_type(s & frozenset({1}), PersistentSet[int])
    assert_type(s - {1}, PersistentSet[int])
    assert_type(s.union(["x"]), PersistentSet[int | str])
    assert_type(s.intersection([1, 2]), PersistentSet[int])
    assert_type(PersistentSet.create("a", "b"), PersistentSet[str])
    assert_type(PersistentSet.from_list([1.5]), PersistentSet[float])
    as_set: AbstractSet[int] = s
    members: list[int] = s.list()
    assert 1 in as_set and len(members) == 3 and s <= {1, 2, 3, 4} and s.issubset(range(5))
    assert hash(s) == hash(frozenset({1, 2, 3})) and s == {1, 2, 3}
    t: TransientSet[int] = s.transient()
    t.add(5).discard(1)
    t.update([6, 7])
    assert_type(t.persistent(), PersistentSet[int])
    with PersistentSet[str]().transient() as u:
        u.add("x")
        assert_type(u.persistent(), PersistentSet[str])


def atoms() -> None:
    counts: Atom[PersistentMap[str, int]] = Atom(PersistentMap(n=0))
    counts.swap(lambda m: m.set("n", m["n"] + 1))
    assert_type(counts.deref(), PersistentMap[str, int])
    members = Atom(PersistentSet[int]())
    members.swap(lambda s: s.add(1))
    assert_type(members.value, PersistentSet[int])
    history = Atom(PersistentList[str]())
    history.reset(history.deref().append("x"))
    assert counts.deref()["n"] == 1 and 1 in members.deref() and history.deref() == PersistentList(["x"])
    plain = Atom()
    assert_type(plain.deref(), PersistentMap[Any, Any])

    def bump(m: PersistentMap[str, int], key: str, by: int = 1) -> PersistentMap[str, int]:
        return m.set(key, m.get(key, 0) + by)

    counts.swap(bump, "n")
    counts.swap(bump, "m", by=5)
    assert counts.deref() == {"n": 2, "m": 5}


def widen(flags: PersistentMap[str, bool]) -> PersistentMap[str, int]:
    return flags  # covariant in the values, like immutables.Map


def covariance() -> None:
    flags: PersistentMap[str, bool] = PersistentMap(a=True)
    numbers = widen(flags)
    assert_type(flags.set("b", 2), PersistentMap[str, bool | int])
    assert_type(numbers.set("b", 2), PersistentMap[str, int])
    assert_type(numbers | {"c": 1.5}, PersistentMap[str, int | float])
    assert_type(numbers.update({"c": "x"}), PersistentMap[str, int | str])
    assert_type(numbers.get("a", None), Optional[int])
    assert numbers.set("b", 2) == {"a": True, "b": 2}


def diffs_and_watches() -> None:
    old: PersistentMap[str, int] = PersistentMap(a=1, b=2)
    d = old.diff(old.set("a", 10))
    assert_type(d, MapDiff[str, int])
    assert_type(d.changed, PersistentMap[str, tuple[int, int]])
    added, removed, changed = d
    assert_type(added, PersistentMap[str, int])
    assert changed == {"a": (1, 10)} and not added and not removed
    s = PersistentSet([1, 2])
    sd = s.diff(s.add(3))
    assert_type(sd, SetDiff[int])
    assert_type(sd.added, PersistentSet[int])
    counts = Atom(old)
    seen: list[tuple[PersistentMap[str, int], PersistentMap[str, int]]] = []

    @counts.watch
    def record(before: PersistentMap[str, int], after: PersistentMap[str, int]) -> None:
        seen.append((before, after))

    counts.swap(lambda m: m.set("c", 3))
    counts.unwatch(record)
    assert len(seen) == 1


def sorted_dicts() -> None:
    m: PersistentSortedDict[int, str] = PersistentSortedDict({2: "b", 1: "a"})
    m2: PersistentSortedDict[int, str] = m.set(3, "c").delete(1)
    first_key, first_value = m.first()
    below: tuple[int, str] | None = m.floor(2)
    sub: PersistentSortedDict[int, str] = m[1:2]
    keys: list[int] = list(m.irange(1, 2, (True, False), reverse=True))
    back: list[int] = list(reversed(m))
    diff = m.diff(m2)
    added: PersistentSortedDict[int, str] = diff.added
    with m.transient() as t:
        t[4] = "d"
    built: PersistentSortedDict[int, str] = t.persistent()
    wider: PersistentSortedDict[int, str | int] = m.set(5, 5)
    assert first_key == 1 and first_value == "a" and below == (2, "b") and sub == {1: "a"}
    assert keys == [1] and back == [2, 1] and added == {3: "c"} and len(built) == 3 and len(wider) == 3


def main() -> None:
    m = build()
    assert lookups(m) == 3
    versions = derive(m)
    assert versions[0] == {"b": 2}
    assert sorted(iterate(m)) == ["a", "a", "b", "b"]
    assert edit(m) == {"a": 1, "b": 2, "q": 1}
    assert as_mapping(m) == 2
    constructors()
    version_2_names()
    lists()
    sets()
    atoms()
    covariance()
    diffs_and_watches()
    sorted_dicts()


if __name__ == "__main__":
    main()
