"""PersistentMap.diff and PersistentSet.diff: what changed between two versions.

Checked against a brute-force diff of dicts and sets (Hypothesis), on versions derived from
each other (shared subtrees) and built apart; values compared by identity, then ==; a raising
__eq__ propagates and leaves both versions unchanged; results are MapDiff/SetDiff named tuples
of persistent structures.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypersistent import MapDiff, PersistentMap, PersistentSet, SetDiff


def brute_force(old: dict, new: dict):
    added = {k: v for k, v in new.items() if k not in old}
    removed = {k: v for k, v in old.items() if k not in new}
    changed = {k: (v, new[k]) for k, v in old.items() if k in new and not (v is new[k] or v == new[k])}
    return added, removed, changed


keys = st.one_of(st.integers(-50, 50), st.text(max_size=2), st.sampled_from([0.5, 1.0, True, (1, 2)]))
values = st.integers(0, 3)
edits = st.lists(st.tuples(st.booleans(), keys, values), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=60), edits, st.booleans())
def test_map_diff_matches_brute_force(base, changes, derived):
    old = PersistentMap(base)
    new = old
    model = dict(base)
    for is_delete, k, v in changes:
        if is_delete:
            new = new.delete(k)
            model.pop(k, None)
        else:
            new = new.set(k, v)
            model[k] = v
    if not derived:  # the same contents, built apart: nothing shared
        new = PersistentMap(list(model.items())[::-1])
    snapshot_old, snapshot_new = list(old.items()), list(new.items())
    d = old.diff(new)
    assert isinstance(d, MapDiff) and isinstance(d, tuple) and len(d) == 3
    assert type(d.added) is PersistentMap and type(d.changed) is PersistentMap
    assert (dict(d.added), dict(d.removed), dict(d.changed)) == brute_force(base, model)
    back = new.diff(old)
    assert dict(back.added) == dict(d.removed) and dict(back.removed) == dict(d.added)
    assert {k: (b, a) for k, (a, b) in d.changed.items()} == dict(back.changed)
    assert list(old.items()) == snapshot_old and list(new.items()) == snapshot_new
    # Applying the diff to old gives new.
    patched = old.update(d.added).update({k: b for k, (_, b) in d.changed.items()})
    for k in d.removed:
        patched = patched.delete(k)
    assert patched == new


@settings(max_examples=200, deadline=None)
@given(st.sets(keys, max_size=60), st.lists(st.tuples(st.booleans(), keys), max_size=40))
def test_set_diff_matches_brute_force(base, changes):
    old = PersistentSet(base)
    new, model = old, set(base)
    for is_delete, k in changes:
        new = new.discard(k) if is_delete else new.add(k)
        (model.discard if is_delete else model.add)(k)
    d = old.diff(new)
    assert isinstance(d, SetDiff) and len(d) == 2
    assert type(d.added) is PersistentSet
    assert (set(d.added), set(d.removed)) == (model - base, base - model)


def test_named_fields_and_unpacking():
    old = PersistentMap(a=1, b=2, c=3)
    added, removed, changed = old.diff(old.set("a", 10).delete("b").set("d", 4))
    assert added == {"d": 4} and removed == {"b": 2} and changed == {"a": (1, 10)}
    assert old.diff(old) == (PersistentMap(), PersistentMap(), PersistentMap())
    assert PersistentMap().diff(old).added == old and old.diff(PersistentMap()).removed == old
    assert "MapDiff(added=" in repr(old.diff(old))


def test_equal_values_are_not_changes_and_identity_skips_eq():
    class NeverEqual:
        def __eq__(self, other):
            raise AssertionError("== must not be called for the same object")

        __hash__ = object.__hash__

    same = NeverEqual()
    old = PersistentMap(a=same, b=1)
    assert old.diff(PersistentMap(a=same, b=1.0)).changed == {}  # built apart: 1 == 1.0
    nan = float("nan")
    assert old.set("n", nan).diff(PersistentMap(a=same, b=1, n=nan)).changed == {}  # identity


class Boom(Exception):
    pass


class Raising:
    def __eq__(self, other):
        raise Boom

    __hash__ = object.__hash__


def test_raising_eq_propagates_and_changes_nothing():
    old = PersistentMap({i: Raising() for i in range(100)})
    new = PersistentMap({i: Raising() for i in range(100)})
    before = list(old.items())
    with pytest.raises(Boom):
        old.diff(new)
    assert list(old.items()) == before


def test_wrong_argument_types():
    with pytest.raises(TypeError, match=r"PersistentMap\.diff\(\) argument must be a PersistentMap, not dict"):
        PersistentMap().diff({})
    with pytest.raises(TypeError, match=r"PersistentSet\.diff\(\) argument must be a PersistentSet, not frozenset"):
        PersistentSet().diff(frozenset())
    with pytest.raises(TypeError):
        PersistentMap().diff(PersistentSet())


def test_results_release_their_objects():
    class Tracked:
        pass

    value = Tracked()
    ref = weakref.ref(value)
    old = PersistentMap(a=1)
    d = old.diff(old.set("a", value).set("b", value))
    assert d.added["b"] is value and d.changed["a"] == (1, value)
    del value, d
    gc.collect()
    assert ref() is None


def test_large_versions_differing_in_few_keys():
    old = PersistentMap.from_dict({i: i for i in range(100_000)})
    new = old.set(5, -5).delete(7).set(10**9, 1)
    d = old.diff(new)
    assert d == ({10**9: 1}, {7: 7}, {5: (5, -5)})
