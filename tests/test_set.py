"""PersistentSet and TransientSet: frozenset's API, pypersistent 2.0's API, set algebra with any
iterable or collections.abc.Set, hostile elements, leaks, and a model check against frozenset."""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import weakref
from collections.abc import Set

import pytest
from conftest import CollidingKey, ConstantHashKey, EqBoom, HashBoom, RaisingEqKey, RaisingHashKey, full_gc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import pypersistent
from pypersistent import PersistentMap, PersistentSet, TransientSet

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

elements = st.one_of(
    st.integers(min_value=-30, max_value=30),
    st.text(alphabet="abc", max_size=2),
    st.builds(CollidingKey, st.integers(min_value=0, max_value=20)),
    st.builds(ConstantHashKey, st.integers(min_value=0, max_value=5)),
)
element_lists = st.lists(elements, max_size=40)


# --------------------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------------------


def test_construction_and_membership() -> None:
    s = PersistentSet([1, 2, 2, 3])
    assert len(s) == 3 and 2 in s and 4 not in s
    assert s.contains(1) and not s.contains(9)
    assert sorted(s) == [1, 2, 3] and sorted(s.list()) == [1, 2, 3]
    assert PersistentSet() == frozenset() and len(PersistentSet()) == 0
    assert PersistentSet(s) is s
    assert PersistentSet("abca") == {"a", "b", "c"}
    assert PersistentSet({1: "x", 2: "y"}) == {1, 2}
    assert PersistentSet(x for x in range(5)) == set(range(5))
    with pytest.raises(TypeError):
        PersistentSet(1)
    with pytest.raises(TypeError):
        PersistentSet([1], [2])
    with pytest.raises(TypeError):
        PersistentSet(x=1)
    with pytest.raises(TypeError):
        PersistentSet([[1]])  # unhashable element


def test_add_discard_return_new_versions() -> None:
    s = PersistentSet([1, 2])
    s2 = s.add(3)
    assert s == {1, 2} and s2 == {1, 2, 3}
    assert s.add(1) is s and s.discard(9) is s and s.remove(9) is s and s.disj(9) is s
    assert s2.discard(3) == s and s2.disj(1) == {2, 3} and s2.remove(2) == {1, 3}
    assert s.conj(5) == {1, 2, 5}
    assert s.clear() == set() and s.copy() is s and copy.copy(s) is s
    assert PersistentSet().clear() == PersistentSet()


def test_hash_equals_frozensets() -> None:
    for items in ([], [1], [1, 2, 3], list(range(1000)), ["a", "b"], [(1, 2), None, 1.5]):
        assert hash(PersistentSet(items)) == hash(frozenset(items))
    assert hash(PersistentSet([1, 2]).add(3).discard(1)) == hash(frozenset({2, 3}))
    assert {PersistentSet([1, 2]): "x"}[frozenset({1, 2})] == "x"
    assert hash(PersistentSet([PersistentSet([1])])) == hash(frozenset([frozenset([1])]))


def test_equality_with_sets_and_set_likes() -> None:
    s = PersistentSet([1, 2, 3])
    assert s == {1, 2, 3} and s == frozenset({1, 2, 3}) and {1, 2, 3} == s and frozenset({3, 2, 1}) == s
    assert s != {1, 2} and s != {1, 2, 3, 4} and not (s == {1, 2, 4})
    assert s == PersistentSet([3, 2, 1]) and s != PersistentSet([1])
    assert s == {1: 0, 2: 0, 3: 0}.keys() and s == PersistentMap({1: 0, 2: 0, 3: 0}).keys()
    assert s != [1, 2, 3] and s != (1, 2, 3) and s != "123" and s != 5


def test_order_comparisons() -> None:
    s = PersistentSet([1, 2])
    for other in ({1, 2, 3}, frozenset({1, 2, 3}), PersistentSet([1, 2, 3])):
        assert s < other and s <= other and not s > other and not s >= other
        assert other > s and other >= s
    assert s <= {1, 2} and s >= {1, 2} and not s < {1, 2} and not s > {1, 2}
    assert not s <= {1, 3} and not s >= {1, 3}
    with pytest.raises(TypeError):
        s < [1, 2, 3]  # noqa: B015


class ListSet(Set):  # type: ignore[type-arg]
    """A collections.abc.Set that is not a builtin set."""

    def __init__(self, items: object = ()) -> None:
        self.items = list(dict.fromkeys(items))  # type: ignore[call-overload]

    def __contains__(self, x: object) -> bool:
        return x in self.items

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@pytest.mark.parametrize("kind", [set, frozenset, PersistentSet, ListSet, lambda x: dict.fromkeys(x).keys()])
def test_operators_with_any_set(kind) -> None:  # type: ignore[no-untyped-def]
    a = PersistentSet([1, 2, 3, 4])
    b = kind([3, 4, 5])
    fa, fb = frozenset(a), frozenset(b)
    for result, expected in (
        (a | b, fa | fb),
        (a & b, fa & fb),
        (a - b, fa - fb),
        (a ^ b, fa ^ fb),
    ):
        assert type(result) is PersistentSet and result == expected
    if kind is not PersistentSet and kind is not ListSet:
        for result, expected in ((b | a, fb | fa), (b & a, fb & fa), (b - a, fb - fa), (b ^ a, fb ^ fa)):
            assert result == expected
    assert a == {1, 2, 3, 4}  # unchanged
    assert (a <= b) == (fa <= fb) and (a >= b) == (fa >= fb) and (a == b) == (fa == fb)


def test_reflected_operators_give_persistent_sets() -> None:
    a = PersistentSet([1, 2])
    assert type({0, 1} | a) is PersistentSet and ({0, 1} | a) == {0, 1, 2}
    assert type(frozenset({2, 3}) - a) is PersistentSet and (frozenset({2, 3}) - a) == {3}
    assert type({1, 5} ^ a) is PersistentSet and ({1, 5} ^ a) == {2, 5}
    assert (PersistentMap({1: 0, 7: 0}).keys() - a) == {7}


def test_operators_refuse_non_sets() -> None:
    a = PersistentSet([1])
    for other in ([1], (1,), "1", 1, None, {1: 2}):
        for op in ("__or__", "__and__", "__sub__", "__xor__"):
            assert getattr(a, op)(other) is NotImplemented
        with pytest.raises(TypeError):
            a | other  # type: ignore[operator]


def test_methods_take_any_iterables() -> None:
    a = PersistentSet([1, 2, 3])
    assert a.union([4], (5,), iter([6]), "x") == {1, 2, 3, 4, 5, 6, "x"}
    assert a.union() is a and a.union([1]) is a and a.union(a) is a and a.union(PersistentSet()) is a
    assert a.intersection([2, 3, 9], iter([3, 2])) == {2, 3} and a.intersection() is a
    assert a.difference([1], (2,)) == {3} and a.difference([9]) is a
    assert a.symmetric_difference([3, 4]) == {1, 2, 4} and a.symmetric_difference([]) is a
    assert a.update([4], [5]) == {1, 2, 3, 4, 5} and a == {1, 2, 3}
    assert a.issubset(range(5)) and not a.issubset([1, 2]) and a.issubset(iter([3, 2, 1]))
    assert a.issuperset([1, 1, 2]) and not a.issuperset(iter([4]))
    assert a.isdisjoint([7, 8]) and not a.isdisjoint(iter([9, 3]))
    assert a.isdisjoint(PersistentSet([0])) and not a.isdisjoint(a)
    assert a.issubset(a) and a.issuperset(a) and a.issubset(a.add(0)) and not a.issuperset(a.add(0))
    for name in ("union", "intersection", "difference", "symmetric_difference", "issubset", "isdisjoint"):
        with pytest.raises(TypeError):
            getattr(a, name)(5)


def test_intersection_keeps_the_iterables_objects_as_frozenset_does() -> None:
    one_float = 1.0
    s = PersistentSet([1, 2])
    r = s.intersection([one_float])
    assert r == {1} and type(next(iter(r))) is type(next(iter(frozenset([1]).intersection([one_float]))))


def test_structural_algebra_reuses_versions() -> None:
    base = PersistentSet(range(10_000))
    bigger = base.add(-1)
    assert base | bigger == bigger and (base | bigger) is not None
    assert bigger - base == {-1} and base - bigger == set()
    assert base & bigger == base and base ^ bigger == {-1}
    assert base <= bigger and base < bigger and not bigger <= base
    assert base.isdisjoint(PersistentSet([-5])) and not base.isdisjoint(bigger)
    assert base | base is base and base & base is base and base.union(bigger.discard(-1)) is base


def test_repr() -> None:
    assert repr(PersistentSet()) == "PersistentSet()"
    assert repr(PersistentSet([1])) == "PersistentSet({1})"
    assert eval(repr(PersistentSet(["a", 2])), {"PersistentSet": PersistentSet}) == {"a", 2}

    class Loop:
        def __init__(self) -> None:
            self.s: object = None

        def __repr__(self) -> str:
            return repr(self.s)

    x = Loop()
    x.s = PersistentSet([x])
    assert repr(x.s) == "PersistentSet({PersistentSet({...})})"


def test_2_0_api() -> None:
    S = PersistentSet
    s = S.create(1, 2, 3)
    assert s == {1, 2, 3} and S.create() == set()
    assert S.from_list([1, 1, 2]) == {1, 2} and S.from_set({3}) == {3} and S.from_iterable(range(3)) == {0, 1, 2}
    assert S.from_set(frozenset([4])) == {4} and S.from_list((5,)) == {5}
    assert s.add(4) == {1, 2, 3, 4} and s.conj(5) == {1, 2, 3, 5}
    assert s.disj(1) == {2, 3} and s.remove(2) == {1, 3} and s.remove(9) is s
    assert s.union(S.create(7)) == {1, 2, 3, 7} and s | S.create(8) == {1, 2, 3, 8}
    assert s.update([1, 10]) == {1, 2, 3, 10} and s.update(S.create(11)) == {1, 2, 3, 11}
    assert sorted(s.list()) == [1, 2, 3] and s.list() == list(s)
    assert s.intersection(S.create(1, 2)) == {1, 2} and s.difference(S.create(1)) == {2, 3}
    assert s.symmetric_difference(S.create(1, 9)) == {2, 3, 9}
    assert s.issubset(S.create(1, 2, 3, 4)) and s.issuperset(S.create(1)) and s.isdisjoint(S.create(9))
    assert s & S.create(1) == {1} and s - S.create(1) == {2, 3} and s ^ S.create(1) == {2, 3}
    assert s.contains(1) and 1 in s and len(s) == 3
    assert s.clear() == set() and s.copy() is s
    assert "PersistentSet" in pypersistent.__all__ and "TransientSet" in pypersistent.__all__


def test_pickle_copy_weakref_generic() -> None:
    s = PersistentSet([1, "a", (2, 3), PersistentSet([4])])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        t = pickle.loads(pickle.dumps(s, protocol))
        assert t == s and type(t) is PersistentSet and hash(t) == hash(s)
    inner = [1]
    holder = PersistentSet([ListHolder(inner)])
    deep = copy.deepcopy(holder)
    assert next(iter(deep)).items is not inner and next(iter(deep)).items == inner
    r = weakref.ref(s)
    assert r() is s
    assert PersistentSet[int] is not None and TransientSet[str] is not None
    assert isinstance(s, Set) and issubclass(PersistentSet, Set)
    assert not isinstance(s, pypersistent.PersistentMap)


class ListHolder:
    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListHolder) and other.items == self.items


def test_iterator() -> None:
    s = PersistentSet(range(100))
    it = iter(s)
    assert iter(it) is it and it.__length_hint__() == 100
    first = next(it)
    assert it.__length_hint__() == 99 and first in s
    assert sorted([first, *it]) == list(range(100))
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(TypeError):
        type(it)()
    assert list(PersistentSet([3, 1, 2]).add(0)) == list(PersistentSet([0, 1, 2, 3]))  # order depends on keys only


# --------------------------------------------------------------------------------------
# TransientSet
# --------------------------------------------------------------------------------------


def test_transient() -> None:
    s = PersistentSet([1, 2])
    t = s.transient()
    assert isinstance(t, TransientSet) and len(t) == 2 and 1 in t and t.contains(2)
    assert t.add(3) is t and t.conj(4) is t and t.discard(1) is t and t.disj(99) is t
    assert t.update([5], PersistentSet([6]), t) is t
    with pytest.raises(KeyError) as info:
        t.remove(99)
    assert info.value.args == (99,)
    assert t.remove(2) is t
    assert sorted(t) == [3, 4, 5, 6] and repr(t) == f"TransientSet({set(t)!r})"
    frozen = t.persistent()
    assert frozen == {3, 4, 5, 6} and s == {1, 2} and type(frozen) is PersistentSet
    for call in (lambda: t.add(1), lambda: len(t), lambda: 1 in t, lambda: list(t)):
        with pytest.raises(RuntimeError):
            call()
    assert t.persistent() is frozen
    assert "finished" in repr(t)
    with pytest.raises(TypeError):
        TransientSet()
    with PersistentSet().transient() as u:
        u.add(1)
    with pytest.raises(RuntimeError):
        u.add(2)
    assert u.persistent() == {1}  # the block's end froze the edits


def test_transient_busy_during_element_hash() -> None:
    t = PersistentSet().transient()
    seen: list[BaseException] = []

    class Reentrant:
        def __hash__(self) -> int:
            try:
                t.add(1)
            except RuntimeError as e:
                seen.append(e)
            return 5

    t.add(Reentrant())
    assert len(seen) == 1 and len(t) == 1


# --------------------------------------------------------------------------------------
# Hostile elements
# --------------------------------------------------------------------------------------


def test_raising_hash_and_eq_leave_everything_unchanged() -> None:
    s = PersistentSet([1, 2, 3, 7])
    snapshot = frozenset(s)
    bad_hash = RaisingHashKey()
    bad_eq = RaisingEqKey(hash(7))
    for call in (
        lambda: s.add(bad_hash),
        lambda: s.discard(bad_hash),
        lambda: bad_hash in s,
        lambda: s | {bad_hash},
        lambda: s.union([bad_hash]),
        lambda: s.intersection([bad_hash]),
        lambda: s.difference([bad_hash]),
        lambda: s.issuperset([bad_hash]),
        lambda: s.isdisjoint([bad_hash]),
        lambda: PersistentSet([1, bad_hash]),
    ):
        with pytest.raises(HashBoom):
            call()
    for call in (
        lambda: s.add(bad_eq),
        lambda: s.discard(bad_eq),
        lambda: bad_eq in s,
        lambda: s.union([bad_eq]),
        lambda: s | PersistentSet([bad_eq]),
        lambda: s & PersistentSet([bad_eq]),
        lambda: s - PersistentSet([bad_eq]),
        lambda: s ^ PersistentSet([bad_eq]),
        lambda: s <= PersistentSet([bad_eq, 1, 2, 3]),
        lambda: s == PersistentSet([bad_eq, 1, 2, 3]),
        lambda: s.isdisjoint(PersistentSet([bad_eq])),
    ):
        with pytest.raises(EqBoom):
            call()
    assert frozenset(s) == snapshot and len(s) == 4
    t = s.transient()
    with pytest.raises(EqBoom):
        t.add(bad_eq)
    with pytest.raises(HashBoom):
        t.update([4, bad_hash])
    assert t.persistent() == snapshot | {4}


def test_eq_that_drops_the_operands_does_not_crash() -> None:
    holder: dict[str, object] = {}
    dropping = [False]

    class Dropper:
        def __init__(self, v: int) -> None:
            self.v = v

        def __hash__(self) -> int:
            return 3

        def __eq__(self, other: object) -> bool:
            if dropping[0]:  # the first comparison drops both operands
                dropping[0] = False
                holder.clear()
                gc.collect()
            return isinstance(other, Dropper) and other.v == self.v

    for op in ("|", "&", "-", "^", "<=", "=="):
        holder["a"] = PersistentSet(Dropper(i) for i in range(20))
        holder["b"] = PersistentSet(Dropper(i) for i in range(10, 30))
        dropping[0] = True
        result = eval(f"holder['a'] {op} holder['b']", {"holder": holder})
        assert not holder and not dropping[0]
        expected = {"|": 30, "&": 10, "-": 10, "^": 20}.get(op)
        if expected is not None:
            assert len(result) == expected and all(isinstance(x, Dropper) for x in result)
        else:
            assert result is False


def test_colliding_elements() -> None:
    items = [ConstantHashKey(i) for i in range(50)] + [CollidingKey(i) for i in range(50)]
    s = PersistentSet(items)
    assert len(s) == 100 and all(x in s for x in items)
    half = PersistentSet(items[::2])
    assert s - half == frozenset(items[1::2]) and s & half == half and half < s
    assert hash(s) == hash(frozenset(items))
    for x in items:
        s = s.discard(x)
    assert s == set()


# --------------------------------------------------------------------------------------
# Leaks and cycles
# --------------------------------------------------------------------------------------


def test_no_reference_leaks() -> None:
    objs = [object() for _ in range(50)]
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(50):
        s = PersistentSet(objs)
        t = s.discard(objs[0]).add(objs[0])
        u = (s | t) & t ^ PersistentSet(objs[:10]) - PersistentSet(objs[5:8])
        list(u)
        s.union(objs[:3]).intersection(objs).difference(objs[:1]).symmetric_difference(objs[2:4])
        tr = s.transient()
        tr.update(objs)
        tr.discard(objs[3])
        tr.persistent()
        pickle.loads(pickle.dumps(PersistentSet([1, 2])))
        del s, t, u, tr
    assert [sys.getrefcount(o) for o in objs] == before


def test_cycles_through_sets_are_collected() -> None:
    class Node:
        def __hash__(self) -> int:
            return id(self)

    n = Node()
    wr = weakref.ref(n)
    base = PersistentSet(range(1000))
    versions = [base.add(n)]
    for i in range(5):
        versions.append(versions[-1].add(-i))
    n.versions = versions  # type: ignore[attr-defined]
    del n, versions
    full_gc()
    assert wr() is None
    assert len(base) == 1000

    m = Node()
    wm = weakref.ref(m)
    t = PersistentSet([m]).transient()
    m.t = t  # type: ignore[attr-defined]
    del m, t
    full_gc()
    assert wm() is None


def test_deep_nesting_frees_without_recursion() -> None:
    s = PersistentSet()
    for i in range(200_000):
        s = PersistentSet([i, s])
    del s  # the trashcan turns the nested frees into a loop


# --------------------------------------------------------------------------------------
# Model check against frozenset
# --------------------------------------------------------------------------------------


@SETTINGS
@given(element_lists, element_lists)
def test_algebra_matches_frozenset(xs: list[object], ys: list[object]) -> None:
    a, b = PersistentSet(xs), PersistentSet(ys)
    fa, fb = frozenset(xs), frozenset(ys)
    assert a == fa and b == fb and hash(a) == hash(fa)
    assert a | b == fa | fb and a & b == fa & fb and a - b == fa - fb and a ^ b == fa ^ fb
    assert (a <= b) == (fa <= fb) and (a < b) == (fa < fb) and (a >= b) == (fa >= fb) and (a > b) == (fa > fb)
    assert a.isdisjoint(b) == fa.isdisjoint(fb) and a.isdisjoint(ys) == fa.isdisjoint(ys)
    assert a.union(ys) == fa.union(ys) and a.intersection(ys) == fa.intersection(ys)
    assert a.difference(ys) == fa.difference(ys) and a.symmetric_difference(ys) == fa.symmetric_difference(ys)
    assert a.issubset(ys) == fa.issubset(ys) and a.issuperset(ys) == fa.issuperset(ys)
    # versions derived from each other share structure: the walks skip what both hold
    c = a.union(ys[:3])
    d = c.difference(xs[:2])
    fc, fd = fa.union(ys[:3]), fa.union(ys[:3]).difference(xs[:2])
    assert c == fc and d == fd and c - d == fc - fd and d | a == fd | fa and (d & c) == (fd & fc)
    assert (d <= c) == (fd <= fc) and c ^ d == fc ^ fd and hash(d) == hash(fd)
    assert a == fa and b == fb  # unchanged


class SetModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.versions: list[tuple[PersistentSet[object], frozenset[object]]] = [(PersistentSet(), frozenset())]
        self.transient = PersistentSet().transient()
        self.transient_model: set[object] = set()

    @rule(x=elements, i=st.integers(min_value=0))
    def add(self, x: object, i: int) -> None:
        s, f = self.versions[i % len(self.versions)]
        self.versions.append((s.add(x), f | {x}))

    @rule(x=elements, i=st.integers(min_value=0))
    def discard(self, x: object, i: int) -> None:
        s, f = self.versions[i % len(self.versions)]
        self.versions.append((s.discard(x), f - {x}))

    @rule(i=st.integers(min_value=0), j=st.integers(min_value=0), op=st.sampled_from(["|", "&", "-", "^"]))
    def combine(self, i: int, j: int, op: str) -> None:
        s, f = self.versions[i % len(self.versions)]
        t, g = self.versions[j % len(self.versions)]
        ops = {"|": lambda p, q: p | q, "&": lambda p, q: p & q, "-": lambda p, q: p - q, "^": lambda p, q: p ^ q}
        self.versions.append((ops[op](s, t), ops[op](f, g)))

    @rule(xs=element_lists)
    def transient_update(self, xs: list[object]) -> None:
        self.transient.update(xs)
        self.transient_model.update(xs)

    @rule(x=elements)
    def transient_discard(self, x: object) -> None:
        self.transient.discard(x)
        self.transient_model.discard(x)

    @rule()
    def freeze(self) -> None:
        frozen = self.transient.persistent()
        self.versions.append((frozen, frozenset(self.transient_model)))
        self.transient = frozen.transient()

    @invariant()
    def versions_match(self) -> None:
        for s, f in self.versions:
            assert s == f and len(s) == len(f) and hash(s) == hash(f)
        assert len(self.transient) == len(self.transient_model)
        assert set(self.transient) == self.transient_model


SetModel.TestCase.settings = SETTINGS
test_set_model = SetModel.TestCase
