"""TransientMap: in-place editing, freezing with persistent(), invalidation afterwards,
the context manager, and isolation from the map it came from."""

from __future__ import annotations

import random

import pytest
from conftest import CollidingKey, ConstantHashKey, HashBoom, RaisingHashKey
from pypersistent import PersistentMap, TransientMap


def contents(m):
    return {k: m[k] for k in m}


def test_transient_returns_transient_map():
    t = PersistentMap({"a": 1}).transient()
    assert isinstance(t, TransientMap)
    assert not isinstance(t, PersistentMap)


def test_setitem_delitem_getitem():
    t = PersistentMap({"a": 1}).transient()
    t["b"] = 2
    t["a"] = 10
    assert t["a"] == 10
    assert t["b"] == 2
    del t["a"]
    assert "a" not in t
    assert len(t) == 1
    with pytest.raises(KeyError):
        t["a"]


def test_delitem_absent_raises_keyerror():
    t = PersistentMap({"a": 1}).transient()
    with pytest.raises(KeyError):
        del t["zzz"]
    assert len(t) == 1
    assert t["a"] == 1


def test_getitem_absent_raises_keyerror_with_key():
    t = PersistentMap().transient()
    with pytest.raises(KeyError) as excinfo:
        t["missing"]
    assert excinfo.value.args == ("missing",)


@pytest.mark.parametrize("name", ["assoc", "set"])
def test_assoc_and_set_mutate_in_place_and_return_self(name):
    t = PersistentMap().transient()
    assert getattr(t, name)("a", 1) is t
    assert getattr(t, name)("a", 2) is t
    assert getattr(t, name)("b", 3) is t
    assert len(t) == 2
    assert t["a"] == 2
    assert t["b"] == 3


@pytest.mark.parametrize("name", ["dissoc", "delete"])
def test_dissoc_and_delete_mutate_in_place_and_return_self(name):
    t = PersistentMap({"a": 1, "b": 2}).transient()
    assert getattr(t, name)("a") is t
    assert "a" not in t
    assert len(t) == 1
    assert getattr(t, name)("absent") is t
    assert len(t) == 1


def test_update_mutates_in_place_and_returns_self():
    t = PersistentMap({"a": 1}).transient()
    assert t.update({"b": 2}) is t
    assert t.update([("c", 3)]) is t
    assert t.update(d=4) is t
    assert t.update({"a": 0}, e=5) is t
    assert contents(t) == {"a": 0, "b": 2, "c": 3, "d": 4, "e": 5}


def test_get_in_len_iteration():
    t = PersistentMap({"a": 1, "b": None}).transient()
    assert t.get("a") == 1
    assert t.get("b", "default") is None
    assert t.get("zzz") is None
    assert t.get("zzz", "default") == "default"
    assert "a" in t
    assert "zzz" not in t
    assert len(t) == 2
    assert sorted(t) == ["a", "b"]
    t["c"] = 3
    assert sorted(t) == ["a", "b", "c"]
    assert len(t) == 3


def test_persistent_returns_persistent_map_with_contents():
    t = PersistentMap({"a": 1}).transient()
    t["b"] = 2
    del t["a"]
    p = t.persistent()
    assert isinstance(p, PersistentMap)
    assert contents(p) == {"b": 2}
    assert p == {"b": 2}


def test_persistent_of_untouched_transient_equals_original():
    m = PersistentMap({i: i for i in range(100)})
    p = m.transient().persistent()
    assert p == m
    assert list(p) == list(m)


def test_transient_of_empty_map():
    t = PersistentMap().transient()
    assert len(t) == 0
    assert list(t) == []
    p = t.persistent()
    assert p == {}
    assert len(p) == 0


USES_AFTER_PERSISTENT = {
    "setitem": lambda t: t.__setitem__("x", 1),
    "delitem": lambda t: t.__delitem__("a"),
    "getitem": lambda t: t["a"],
    "assoc": lambda t: t.assoc("x", 1),
    "dissoc": lambda t: t.dissoc("a"),
    "set": lambda t: t.set("x", 1),
    "delete": lambda t: t.delete("a"),
    "update": lambda t: t.update({"x": 1}),
    "get": lambda t: t.get("a"),
    "contains": lambda t: "a" in t,
    "len": lambda t: len(t),
    "iter": lambda t: list(t),
    "pop": lambda t: t.pop("a"),
    "popitem": lambda t: t.popitem(),
    "setdefault": lambda t: t.setdefault("x", 1),
    "clear": lambda t: t.clear(),
    "copy": lambda t: t.copy(),
    "eq": lambda t: t == {},
}


@pytest.mark.parametrize("use", list(USES_AFTER_PERSISTENT), ids=list(USES_AFTER_PERSISTENT))
def test_any_use_after_persistent_raises_runtime_error(use):
    t = PersistentMap({"a": 1}).transient()
    t["b"] = 2
    p = t.persistent()
    with pytest.raises(RuntimeError):
        USES_AFTER_PERSISTENT[use](t)
    # and the frozen map is unaffected by the attempt
    assert contents(p) == {"a": 1, "b": 2}


def test_iterator_made_before_persistent_does_not_crash():
    t = PersistentMap({i: i for i in range(100)}).transient()
    it = iter(t)
    next(it)
    p = t.persistent()
    try:
        rest = list(it)
    except RuntimeError:
        pass
    else:
        assert set(rest) <= set(range(100))
    assert contents(p) == {i: i for i in range(100)}


def test_mutating_while_iterating_does_not_crash():
    # Whether this raises RuntimeError or finishes is up to the implementation; it must
    # neither crash nor lose writes that succeeded.
    t = PersistentMap({i: i for i in range(200)}).transient()
    written = {}
    deleted = set()
    try:
        for k in t:
            t[k + 1000] = k
            written[k + 1000] = k
            deleted.discard(k + 1000)
            if k % 2 and k < 1000:
                del t[k]
                deleted.add(k)
                written.pop(k, None)
            if len(written) > 5000:
                break
    except RuntimeError:
        pass
    p = t.persistent()
    for k, v in written.items():
        assert p[k] == v
    for k in deleted:
        assert k not in p


def test_original_is_never_changed_by_its_transient():
    original = {i: str(i) for i in range(2000)}
    m = PersistentMap(original)
    order = list(m)
    t = m.transient()
    for i in range(0, 2000, 2):
        del t[i]
    for i in range(2000, 3000):
        t[i] = "new"
    for i in range(1, 2000, 4):
        t[i] = "changed"
    p = t.persistent()
    assert len(m) == 2000
    assert contents(m) == original
    assert list(m) == order
    assert len(p) == 1000 + 1000
    assert p[1] == "changed"
    assert 0 not in p


def test_transients_of_same_map_are_independent():
    m = PersistentMap({i: i for i in range(500)})
    t1 = m.transient()
    t2 = m.transient()
    for i in range(500):
        t1[i] = "one"
    for i in range(0, 500, 2):
        del t2[i]
    p1 = t1.persistent()
    p2 = t2.persistent()
    assert all(p1[i] == "one" for i in range(500))
    assert contents(p2) == {i: i for i in range(1, 500, 2)}
    assert contents(m) == {i: i for i in range(500)}


def test_persistent_result_is_not_changed_by_later_transients():
    t = PersistentMap().transient()
    for i in range(1000):
        t[i] = i
    p1 = t.persistent()
    t2 = p1.transient()
    for i in range(1000):
        t2[i] = -i
    for i in range(0, 1000, 3):
        del t2[i]
    p2 = t2.persistent()
    assert contents(p1) == {i: i for i in range(1000)}
    assert contents(p2) == {i: -i for i in range(1000) if i % 3}


def test_persistent_then_assoc_does_not_affect_it():
    t = PersistentMap().transient()
    for i in range(300):
        t[i] = i
    p = t.persistent()
    versions = [p.assoc(i, "x") for i in range(300)]
    assert contents(p) == {i: i for i in range(300)}
    for i, v in enumerate(versions):
        assert v[i] == "x"
        assert len(v) == 300


def test_transient_with_colliding_keys():
    m = PersistentMap({CollidingKey(i): i for i in range(40)})
    t = m.transient()
    for i in range(40, 80):
        t[CollidingKey(i)] = i
    for i in range(0, 80, 3):
        del t[CollidingKey(i)]
    t[1] = "int"
    p = t.persistent()
    expected = {CollidingKey(i): i for i in range(80) if i % 3}
    expected[1] = "int"
    assert p == expected
    assert m == {CollidingKey(i): i for i in range(40)}


def test_transient_with_constant_hash_keys():
    t = PersistentMap().transient()
    for i in range(250):
        t[ConstantHashKey(i)] = i
    for i in range(0, 250, 2):
        del t[ConstantHashKey(i)]
    assert len(t) == 125
    p = t.persistent()
    assert contents(p) == {ConstantHashKey(i): i for i in range(1, 250, 2)}


def test_random_transient_ops_match_dict():
    rng = random.Random(2024)
    base = {rng.randrange(5000): i for i in range(1000)}
    m = PersistentMap(base)
    model = dict(base)
    t = m.transient()
    for _ in range(5000):
        k = rng.randrange(5000)
        op = rng.random()
        if op < 0.5:
            t[k] = op
            model[k] = op
        elif op < 0.8:
            if k in model:
                del t[k]
                del model[k]
            else:
                with pytest.raises(KeyError):
                    del t[k]
        else:
            assert t.get(k, "absent") == model.get(k, "absent")
    assert len(t) == len(model)
    p = t.persistent()
    assert p == model
    assert m == base


def test_context_manager():
    m = PersistentMap({"a": 1})
    with m.transient() as t:
        assert isinstance(t, TransientMap)
        t["b"] = 2
        del t["a"]
        assert contents(t) == {"b": 2}
        result = t.persistent()
    assert contents(result) == {"b": 2}
    assert contents(m) == {"a": 1}


def test_context_manager_without_persistent_leaves_original():
    m = PersistentMap({"a": 1})
    with m.transient() as t:
        t["b"] = 2
        assert len(t) == 2
    assert contents(m) == {"a": 1}


def test_leaving_the_with_block_freezes_the_edits():
    # The block's end finishes the transient as persistent() does; persistent() afterwards
    # returns that map (it used to raise "persistent() was already called", losing the edits).
    m = PersistentMap({"a": 1})
    with m.transient() as t:
        t["b"] = 2
    p = t.persistent()
    assert isinstance(p, PersistentMap) and contents(p) == {"a": 1, "b": 2}
    assert t.persistent() is p
    with pytest.raises(RuntimeError, match="finished"):
        t["c"] = 3
    assert contents(p) == {"a": 1, "b": 2} and contents(m) == {"a": 1}
    # persistent() inside the block: the block's end keeps that result
    with m.transient() as t2:
        t2["x"] = 1
        inside = t2.persistent()
    assert t2.persistent() is inside
    # an exception in the block propagates, and the edits made before it are kept too
    with pytest.raises(ValueError):
        with m.transient() as t3:
            t3["y"] = 1
            raise ValueError
    assert contents(t3.persistent()) == {"a": 1, "y": 1}


def test_persistent_twice_returns_the_same_map():
    t = PersistentMap({"a": 1}).transient()
    t["b"] = 2
    p = t.persistent()
    assert t.persistent() is p and t.persistent() is p


def test_context_manager_does_not_swallow_exceptions():
    m = PersistentMap({"a": 1})
    with pytest.raises(ValueError, match="inside"):
        with m.transient() as t:
            t["b"] = 2
            raise ValueError("inside")
    assert contents(m) == {"a": 1}


def test_failed_operation_leaves_transient_usable_and_unchanged():
    t = PersistentMap({"a": 1, "b": 2}).transient()
    bad = RaisingHashKey()
    for op in (
        lambda: t.__setitem__(bad, 1),
        lambda: t.assoc(bad, 1),
        lambda: t.__delitem__(bad),
        lambda: t.dissoc(bad),
        lambda: t[bad],
        lambda: t.get(bad),
        lambda: bad in t,
        lambda: t.update([(bad, 4)]),
    ):
        with pytest.raises(HashBoom):
            op()
    with pytest.raises(TypeError):
        t[["unhashable"]] = 1
    assert contents(t) == {"a": 1, "b": 2}
    t["c"] = 3
    assert contents(t.persistent()) == {"a": 1, "b": 2, "c": 3}


# --------------------------------------------------------------------------------------
# TransientMap is a MutableMapping: the same answers as a dict, call for call
# --------------------------------------------------------------------------------------


def test_transient_map_is_a_mutable_mapping():
    import collections.abc

    t = PersistentMap().transient()
    assert isinstance(t, collections.abc.MutableMapping)
    with pytest.raises(TypeError):
        hash(t)  # mutable, like dict


def test_mutable_mapping_api_against_dict():
    import random

    rng = random.Random(3)
    d: dict = {}
    t = PersistentMap().transient()
    keys_view, values_view, items_view = t.keys(), t.values(), t.items()
    for step in range(4000):
        k = rng.randrange(40)
        op = rng.randrange(9)
        if op == 0:
            d[k] = t[k] = step
        elif op == 1:
            assert t.pop(k, "none") == d.pop(k, "none")
        elif op == 2:
            if k in d:
                assert t.pop(k) == d.pop(k)
            else:
                with pytest.raises(KeyError) as info:
                    t.pop(k)
                assert info.value.args == (k,)
        elif op == 3:
            assert t.setdefault(k, step) == d.setdefault(k, step)
        elif op == 4:
            if d:
                key, value = t.popitem()
                assert d.pop(key) == value
            else:
                with pytest.raises(KeyError):
                    t.popitem()
        elif op == 5 and rng.random() < 0.05:
            t.clear()
            d.clear()
        elif op == 6:
            extra = {rng.randrange(40): step for _ in range(3)}
            t.update(extra)
            d.update(extra)
        elif op == 7:
            c = t.copy()
            assert type(c) is TransientMap and c == d and c is not t
            c[-1] = "only in the copy"
            assert -1 not in t
        else:
            assert t.get(k) == d.get(k) and (k in t) == (k in d)
        assert len(t) == len(d) and t == d and not (t != d)
        # the views are live, as a dict's are
        assert set(keys_view) == d.keys() and sorted(values_view) == sorted(d.values())
        assert set(items_view) == set(d.items()) and len(keys_view) == len(d)
        assert (k in keys_view) == (k in d)
    assert t == PersistentMap(d) and t.persistent() == d


def test_repr_shows_the_contents():
    t = PersistentMap({"a": 1}).transient()
    assert repr(t) == "TransientMap({'a': 1})"
    t["self"] = t  # a transient holding itself: no endless recursion
    assert repr(t) in ("TransientMap({'a': 1, 'self': TransientMap(...)})", "TransientMap({'self': TransientMap(...), 'a': 1})")
    del t["self"]
    t.persistent()
    assert repr(t) == "TransientMap(<finished>)"
