"""Bad keys and bad arguments: errors propagate, maps stay unchanged, nothing crashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping

import pytest
from conftest import (
    BadBoolEqKey,
    BoolBoom,
    CollidingKey,
    ConstantHashKey,
    EqBoom,
    HashBoom,
    NotImplementedEqKey,
    RaisingEqKey,
    RaisingHashKey,
    child_env,
)
from pypersistent import PersistentMap


def snapshot(m):
    return list(m.items())


BASE_ITEMS = [("a", 1), ("b", 2), (3, "three"), (7, "seven"), (CollidingKey(5), "c5")]


def make_base():
    return PersistentMap(BASE_ITEMS)


# --------------------------------------------------------------------------------------
# Unhashable keys
# --------------------------------------------------------------------------------------

UNHASHABLE_OPS = {
    "assoc": lambda m, k: m.assoc(k, 1),
    "set": lambda m, k: m.set(k, 1),
    "get": lambda m, k: m.get(k),
    "get-default": lambda m, k: m.get(k, 0),
    "getitem": lambda m, k: m[k],
    "contains-op": lambda m, k: k in m,
    "contains": lambda m, k: m.contains(k),
    "dissoc": lambda m, k: m.dissoc(k),
    "delete": lambda m, k: m.delete(k),
    "update-pairs": lambda m, k: m.update([(k, 1)]),
    "merge-pairs": lambda m, k: m.merge([(k, 1)]),
    "constructor-pairs": lambda m, k: PersistentMap([(k, 1)]),
    "fromkeys": lambda m, k: PersistentMap.fromkeys([k]),
    "transient-setitem": lambda m, k: m.transient().__setitem__(k, 1),
    "transient-getitem": lambda m, k: m.transient()[k],
}


@pytest.mark.parametrize("op", list(UNHASHABLE_OPS), ids=list(UNHASHABLE_OPS))
def test_unhashable_key_raises_type_error_naming_the_type(op):
    m = make_base()
    before = snapshot(m)
    with pytest.raises(TypeError, match="list"):
        UNHASHABLE_OPS[op](m, ["not", "hashable"])
    assert snapshot(m) == before


def test_unhashable_dict_key_names_dict():
    with pytest.raises(TypeError, match="dict"):
        PersistentMap().assoc({}, 1)


def test_unhashable_values_are_fine():
    m = PersistentMap().assoc("k", [1, 2]).assoc("d", {"x": {}})
    assert m["k"] == [1, 2]
    assert m["d"] == {"x": {}}


# --------------------------------------------------------------------------------------
# __hash__ raising a custom exception
# --------------------------------------------------------------------------------------

RAISING_HASH_OPS = {
    "assoc": lambda m, k: m.assoc(k, 1),
    "set": lambda m, k: m.set(k, 1),
    "get": lambda m, k: m.get(k),
    "get-default": lambda m, k: m.get(k, 0),
    "getitem": lambda m, k: m[k],
    "contains-op": lambda m, k: k in m,
    "contains": lambda m, k: m.contains(k),
    "dissoc": lambda m, k: m.dissoc(k),
    "delete": lambda m, k: m.delete(k),
    "update-pairs": lambda m, k: m.update([(k, 1)]),
    "update-pairs-late": lambda m, k: m.update([("new", 1), ("newer", 2), (k, 1)]),
    "update-keys-object": lambda m, k: m.update(_PairsKeysObject([(k, 1)])),
    "update-mapping": lambda m, k: m.update(_PairsMapping([(k, 1)])),
    "merge-pairs": lambda m, k: m.merge([(k, 1)]),
    "or": lambda m, k: m | _PairsMapping([(k, 1)]),
    "ror": lambda m, k: _PairsMapping([(k, 1)]) | m,
    "constructor-pairs": lambda m, k: PersistentMap([("x", 0), (k, 1)]),
    "constructor-mapping": lambda m, k: PersistentMap(_PairsMapping([(k, 1)])),
    "fromkeys": lambda m, k: PersistentMap.fromkeys(["x", k]),
    "transient-setitem": lambda m, k: m.transient().__setitem__(k, 1),
    "transient-delitem": lambda m, k: m.transient().__delitem__(k),
    "transient-get": lambda m, k: m.transient().get(k),
}


class _PairsKeysObject:
    """Not a Mapping: keys() + __getitem__ over a list of pairs, looked up by identity,
    so it can hold keys that a dict cannot."""

    def __init__(self, pairs):
        self._pairs = list(pairs)

    def keys(self):
        return [k for k, _ in self._pairs]

    def __getitem__(self, key):
        for k, v in self._pairs:
            if k is key:
                return v
        raise KeyError(key)


class _PairsMapping(Mapping):
    """A Mapping over a list of pairs, looked up by identity (never hashes its keys)."""

    def __init__(self, pairs):
        self._pairs = list(pairs)

    def __getitem__(self, key):
        for k, v in self._pairs:
            if k is key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._pairs)

    def __len__(self):
        return len(self._pairs)


@pytest.mark.parametrize("op", list(RAISING_HASH_OPS), ids=list(RAISING_HASH_OPS))
def test_raising_hash_propagates_and_map_unchanged(op):
    m = make_base()
    before = snapshot(m)
    with pytest.raises(HashBoom):
        RAISING_HASH_OPS[op](m, RaisingHashKey())
    assert snapshot(m) == before
    assert len(m) == len(BASE_ITEMS)
    # still fully usable
    assert m.assoc("z", 26)["z"] == 26


def test_raising_hash_on_empty_map():
    m = PersistentMap()
    for op in ("assoc", "get", "getitem", "contains-op", "dissoc", "update-pairs"):
        with pytest.raises(HashBoom):
            RAISING_HASH_OPS[op](m, RaisingHashKey())
    assert len(m) == 0


# --------------------------------------------------------------------------------------
# __eq__ raising (with an exactly colliding hash so that __eq__ is really called)
# --------------------------------------------------------------------------------------

RAISING_EQ_OPS = {
    "assoc": lambda m, k: m.assoc(k, 1),
    "set": lambda m, k: m.set(k, 1),
    "get": lambda m, k: m.get(k),
    "getitem": lambda m, k: m[k],
    "contains-op": lambda m, k: k in m,
    "contains": lambda m, k: m.contains(k),
    "dissoc": lambda m, k: m.dissoc(k),
    "delete": lambda m, k: m.delete(k),
    "update-pairs": lambda m, k: m.update([(k, 1)]),
    "merge-pairs": lambda m, k: m.merge([(k, 1)]),
    "transient-setitem": lambda m, k: m.transient().__setitem__(k, 1),
    "transient-delitem": lambda m, k: m.transient().__delitem__(k),
    "transient-get": lambda m, k: m.transient().get(k),
}


@pytest.mark.parametrize("op", list(RAISING_EQ_OPS), ids=list(RAISING_EQ_OPS))
@pytest.mark.parametrize("stored_key", [7, "a", CollidingKey(5)], ids=["int", "str", "colliding"])
def test_raising_eq_propagates_and_map_unchanged(op, stored_key):
    m = make_base()
    assert stored_key in m
    before = snapshot(m)
    probe = RaisingEqKey(hash(stored_key))
    with pytest.raises(EqBoom):
        RAISING_EQ_OPS[op](m, probe)
    assert snapshot(m) == before
    assert m[stored_key] == dict(BASE_ITEMS)[stored_key]


@pytest.mark.parametrize("op", list(RAISING_EQ_OPS), ids=list(RAISING_EQ_OPS))
def test_raising_eq_in_deep_collision_node(op):
    m = PersistentMap({ConstantHashKey(i): i for i in range(50)})
    before = snapshot(m)
    with pytest.raises(EqBoom):
        RAISING_EQ_OPS[op](m, RaisingEqKey(ConstantHashKey.HASH))
    assert snapshot(m) == before


def test_raising_eq_key_stored_in_map_never_crashes():
    k = RaisingEqKey(12345)
    m = PersistentMap({"a": 1}).assoc(k, "v")
    assert len(m) == 2
    # lookups by the very same object may short-circuit on identity; if they don't, the
    # exception must propagate cleanly
    for op in (lambda: m[k], lambda: m.get(k), lambda: k in m, lambda: m.dissoc(k)):
        try:
            op()
        except EqBoom:
            pass
    other = RaisingEqKey(12345)
    with pytest.raises(EqBoom):
        m.assoc(other, 1)
    with pytest.raises(EqBoom):
        m.get(other)
    assert len(m) == 2
    assert set(m) == {"a", k}
    assert "RaisingEqKey(12345)" in repr(m)


def test_eq_returning_object_with_raising_bool_propagates():
    m = make_base()
    before = snapshot(m)
    probe = BadBoolEqKey(hash("a"))
    with pytest.raises(BoolBoom):
        m.assoc(probe, 1)
    with pytest.raises(BoolBoom):
        m.get(probe)
    with pytest.raises(BoolBoom):
        m.dissoc(probe)
    assert snapshot(m) == before


def test_eq_returning_not_implemented_falls_back_to_identity():
    keys = [NotImplementedEqKey() for _ in range(60)]
    m = PersistentMap()
    for i, k in enumerate(keys):
        m = m.assoc(k, i)
    assert len(m) == 60
    for i, k in enumerate(keys):
        assert m[k] == i
        assert k in m
    assert NotImplementedEqKey() not in m
    assert m.get(NotImplementedEqKey(), "absent") == "absent"
    m2 = m.dissoc(keys[10]).dissoc(NotImplementedEqKey())
    assert len(m2) == 59
    assert keys[10] not in m2
    assert m == dict(zip(keys, range(60)))
    assert set(m) == set(keys)


def test_key_identity_decides_before_hash_and_eq_like_dict():
    # NaN is not equal to itself: like dict, a map finds the very same NaN object by identity,
    # and another NaN object is a different key.
    nan = float("nan")
    m = PersistentMap({nan: 1, "x": 2})
    d = {nan: 1, "x": 2}
    assert m[nan] == d[nan] == 1
    assert nan in m
    other = float("nan")
    assert other not in m and other not in d
    assert m.set(other, 3)[other] == 3 and len(m.set(other, 3)) == 3
    assert m.set(nan, 5)[nan] == 5 and len(m.set(nan, 5)) == 2
    assert nan not in m.dissoc(nan)

    # A key whose hash changed after it was stored is still found through its identity when
    # the new hash leads to the same slot (dict does the same).
    class Shifting:
        def __init__(self):
            self.h = 8

        def __hash__(self):
            return self.h

        def __eq__(self, other):
            raise AssertionError("identity must decide before __eq__")

    k = Shifting()
    m = PersistentMap({k: "v"})
    d = {k: "v"}
    k.h = 8 + (1 << 40)  # same low bits: same slot of a one-entry map and of the dict
    assert m[k] == d[k] == "v"


def test_keys_of_types_that_refuse_comparison_with_each_other():
    # int, str, bytes, tuples, None and frozensets: heterogeneous keys whose __eq__
    # returns NotImplemented against each other.
    keys = [1, "1", b"1", (1,), None, frozenset({1}), 1.5, 2 + 3j, CollidingKey(1)]
    m = PersistentMap()
    for i, k in enumerate(keys):
        m = m.assoc(k, i)
    assert len(m) == len(keys)
    for i, k in enumerate(keys):
        assert m[k] == i


def test_huge_hash_value_is_reduced_like_python():
    class HugeHash:
        def __init__(self, n):
            self.n = n

        def __hash__(self):
            return 2**100 + self.n

        def __eq__(self, other):
            return isinstance(other, HugeHash) and other.n == self.n

    m = PersistentMap({HugeHash(i): i for i in range(10)})
    assert len(m) == 10
    assert m[HugeHash(3)] == 3


def test_hash_returning_non_int_raises_type_error():
    class BadHashType:
        def __hash__(self):
            return "nope"

    with pytest.raises(TypeError):
        PersistentMap().assoc(BadHashType(), 1)


# --------------------------------------------------------------------------------------
# Bad arguments to bulk operations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["update", "merge"])
def test_update_with_int_raises_type_error(method):
    m = make_base()
    with pytest.raises(TypeError):
        getattr(m, method)(5)
    assert snapshot(m) == list(make_base().items())


@pytest.mark.parametrize("bad", [[(1, 2, 3)], [(1,)], ["abc"], [()]])
@pytest.mark.parametrize("method", ["update", "merge", "constructor", "transient-update"])
def test_update_with_bad_sequence_elements_like_dict(method, bad):
    # dict.update raises ValueError for wrong-length elements
    with pytest.raises((ValueError, TypeError)):
        {}.update(bad)
    m = make_base()
    before = snapshot(m)
    calls = {
        "update": lambda: m.update(bad),
        "merge": lambda: m.merge(bad),
        "constructor": lambda: PersistentMap(bad),
        "transient-update": lambda: m.transient().update(bad),
    }
    with pytest.raises((ValueError, TypeError)):
        calls[method]()
    assert snapshot(m) == before


@pytest.mark.parametrize("bad", [[1], [None], [3.5]])
def test_update_with_non_sequence_elements_raises_type_error(bad):
    m = make_base()
    with pytest.raises(TypeError):
        m.update(bad)
    with pytest.raises(TypeError):
        PersistentMap(bad)


def test_update_with_iterable_that_raises_midway():
    def gen():
        yield ("x", 1)
        yield ("y", 2)
        raise ZeroDivisionError("stop")

    m = make_base()
    before = snapshot(m)
    with pytest.raises(ZeroDivisionError):
        m.update(gen())
    with pytest.raises(ZeroDivisionError):
        PersistentMap(gen())
    assert snapshot(m) == before


def test_keys_object_whose_getitem_raises():
    class BadKeys:
        def keys(self):
            return ["a", "b"]

        def __getitem__(self, key):
            raise LookupError(key)

    m = make_base()
    before = snapshot(m)
    with pytest.raises(LookupError):
        m.update(BadKeys())
    with pytest.raises(LookupError):
        PersistentMap(BadKeys())
    assert snapshot(m) == before


def test_fromkeys_with_non_iterable():
    with pytest.raises(TypeError):
        PersistentMap.fromkeys(5)


# --------------------------------------------------------------------------------------
# Deeply colliding keys
# --------------------------------------------------------------------------------------

N_CONST = 260


def test_constant_hash_keys_all_operations():
    keys = [ConstantHashKey(i) for i in range(N_CONST)]
    m = PersistentMap()
    for i, k in enumerate(keys):
        m = m.assoc(k, i)
        assert len(m) == i + 1
    assert len(m) == N_CONST
    for i in range(N_CONST):
        assert m[ConstantHashKey(i)] == i
        assert m.get(ConstantHashKey(i)) == i
        assert ConstantHashKey(i) in m
    assert ConstantHashKey(N_CONST + 1) not in m
    assert m.get(ConstantHashKey(-1), "absent") == "absent"
    with pytest.raises(KeyError):
        m[ConstantHashKey(-1)]
    assert set(m) == set(keys)
    assert len(list(m)) == N_CONST
    assert sorted(m.values()) == list(range(N_CONST))

    # replace values
    m2 = m.assoc(ConstantHashKey(100), "hundred")
    assert len(m2) == N_CONST
    assert m2[ConstantHashKey(100)] == "hundred"
    assert m[ConstantHashKey(100)] == 100

    # equality, in both build orders, and with dicts
    rev = PersistentMap()
    for i in reversed(range(N_CONST)):
        rev = rev.assoc(ConstantHashKey(i), i)
    assert rev == m
    assert m == {k: i for i, k in enumerate(keys)}
    assert hash(rev) == hash(m)
    assert m != m2

    # removal of every other key, then all
    d = m
    for i in range(0, N_CONST, 2):
        d = d.dissoc(ConstantHashKey(i))
    assert len(d) == N_CONST // 2
    assert d == {ConstantHashKey(i): i for i in range(1, N_CONST, 2)}
    assert d.dissoc(ConstantHashKey(0)) is d
    for i in range(1, N_CONST, 2):
        d = d.dissoc(ConstantHashKey(i))
    assert len(d) == 0
    assert d == {}
    assert len(m) == N_CONST


def test_constant_hash_keys_mixed_with_normal_keys():
    m = PersistentMap({i: i for i in range(1000)})
    for i in range(N_CONST):
        m = m.assoc(ConstantHashKey(i), -i)
    assert len(m) == 1000 + N_CONST
    # a normal int with the same hash as the constant-hash keys
    m = m.assoc(ConstantHashKey.HASH, "int")
    assert len(m) == 1001 + N_CONST
    assert m[ConstantHashKey.HASH] == "int"
    assert m[ConstantHashKey(5)] == -5
    m = m.dissoc(ConstantHashKey.HASH)
    assert m[ConstantHashKey(5)] == -5
    assert ConstantHashKey.HASH not in m


def test_constant_hash_keys_bulk_paths():
    pairs = [(ConstantHashKey(i), i) for i in range(N_CONST)]
    expected = dict(pairs)
    assert PersistentMap(pairs) == expected
    assert PersistentMap.from_dict(expected) == expected
    assert PersistentMap().update(pairs) == expected
    t = PersistentMap().transient()
    t.update(pairs)
    assert t.persistent() == expected


# --------------------------------------------------------------------------------------
# Re-entrancy: a key's __eq__ that edits the transient being edited.
# Run in a subprocess so that a crash or a deadlock fails this one test only.
# --------------------------------------------------------------------------------------

REENTRANT_SCRIPT = textwrap.dedent(
    """
    import sys
    from pypersistent import PersistentMap

    class Evil:
        target = None
        def __init__(self, n):
            self.n = n
        def __hash__(self):
            return 77
        def __eq__(self, other):
            t = Evil.target
            if t is not None:
                Evil.target = None
                try:
                    for i in range(200):
                        t[("filler", i)] = i
                    for i in range(0, 200, 2):
                        del t[("filler", i)]
                    t[Evil(-1)] = "evil"
                except Exception:
                    pass
            return isinstance(other, Evil) and other.n == self.n

    t = PersistentMap({Evil(i): i for i in range(5)}).transient()
    for attempt in range(20):
        Evil.target = t
        try:
            t[Evil(100 + attempt)] = attempt
        except Exception:
            pass
        Evil.target = t
        try:
            t.get(Evil(3))
        except Exception:
            pass
        Evil.target = t
        try:
            del t[Evil(4 if attempt == 0 else 1000)]
        except Exception:
            pass
    try:
        m = t.persistent()
        n = len(m)
        list(m.items())
    except RuntimeError:
        pass
    print("survived")
    """
)


def test_reentrant_edit_of_transient_from_eq_does_not_crash_or_hang():
    proc = subprocess.run(
        [sys.executable, "-c", REENTRANT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "survived" in proc.stdout
