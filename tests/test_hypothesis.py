"""Property-based tests: a stateful model check against ``dict``, plus a few properties."""

from __future__ import annotations

import pickle

import pytest
from conftest import (
    CollidingKey,
    EqBoom,
    HashBoom,
    RaisingEqKey,
    RaisingHashKey,
    has_hash_collisions,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from pypersistent import PersistentMap, TransientMap

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ints (with a few that share hashes with CollidingKeys), short strs, and colliding keys
keys = st.one_of(
    st.integers(min_value=-40, max_value=40),
    st.integers(),
    st.text(alphabet="abcxyz", max_size=3),
    st.builds(CollidingKey, st.integers(min_value=0, max_value=30)),
    st.builds(CollidingKey, st.text(alphabet="ab", max_size=2)),
)
values = st.one_of(st.integers(min_value=-5, max_value=5), st.none(), st.text(max_size=2))
pairs = st.lists(st.tuples(keys, values), max_size=12)

MISSING = object()
BAD_KEY_OPERATIONS = ["assoc", "get", "getitem", "in", "dissoc", "update", "transient"]


def assert_matches(m, model):
    assert len(m) == len(model)
    assert m == model
    assert model == m
    assert not (m != model)
    assert dict(m.items()) == model
    assert set(m) == set(model)
    for k, v in model.items():
        assert k in m
        assert m[k] == v
        assert m.get(k, MISSING) == v


class PersistentMapMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.map = PersistentMap()
        self.model = {}
        self.history = [(self.map, {})]

    def _commit(self, new_map, new_model):
        self.map = new_map
        self.model = new_model
        self.history.append((new_map, dict(new_model)))

    # ---- single-key operations --------------------------------------------------------

    @rule(k=keys, v=values)
    def assoc(self, k, v):
        new = self.map.assoc(k, v)
        model = dict(self.model)
        model[k] = v
        assert isinstance(new, PersistentMap)
        self._commit(new, model)

    @rule(k=keys, v=values)
    def set_alias(self, k, v):
        model = dict(self.model)
        model[k] = v
        self._commit(self.map.set(k, v), model)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def reassoc_same_value_object(self, data):
        k = data.draw(st.sampled_from(list(self.model)))
        assert self.map.assoc(k, self.map[k]) is self.map

    @rule(k=keys)
    def dissoc(self, k):
        new = self.map.dissoc(k)
        if k not in self.model:
            assert new is self.map
        model = dict(self.model)
        model.pop(k, None)
        self._commit(new, model)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def dissoc_existing(self, data):
        k = data.draw(st.sampled_from(list(self.model)))
        model = dict(self.model)
        del model[k]
        new = self.map.delete(k)
        assert k not in new
        self._commit(new, model)

    @rule(k=keys)
    def get(self, k):
        assert self.map.get(k, MISSING) == self.model.get(k, MISSING)
        assert (k in self.map) == (k in self.model)
        assert self.map.contains(k) == (k in self.model)
        if k in self.model:
            assert self.map[k] == self.model[k]
        else:
            with pytest.raises(KeyError) as excinfo:
                self.map[k]
            assert excinfo.value.args == (k,)

    # ---- bulk operations ---------------------------------------------------------------

    @rule(items=pairs, as_dict=st.booleans())
    def update(self, items, as_dict):
        model = dict(self.model)
        model.update(items)
        arg = dict(items) if as_dict else items
        new = self.map.update(arg)
        if not items:
            assert new == self.map
        self._commit(new, model)

    @rule(items=pairs)
    def merge_operator(self, items):
        other = dict(items)
        model = dict(self.model)
        model.update(other)
        left = self.map | other
        assert isinstance(left, PersistentMap)
        reflected = other | self.map
        assert isinstance(reflected, PersistentMap)
        assert reflected == {**other, **self.model}
        self._commit(left, model)

    @rule(
        ops=st.lists(
            st.tuples(st.sampled_from(["set", "del", "assoc", "dissoc"]), keys, values),
            max_size=25,
        )
    )
    def transient_bulk(self, ops):
        model = dict(self.model)
        t = self.map.transient()
        assert isinstance(t, TransientMap)
        for op, k, v in ops:
            if op == "set":
                t[k] = v
                model[k] = v
            elif op == "assoc":
                assert t.assoc(k, v) is t
                model[k] = v
            elif op == "dissoc":
                assert t.dissoc(k) is t
                model.pop(k, None)
            elif k in model:
                del t[k]
                del model[k]
            else:
                with pytest.raises(KeyError):
                    del t[k]
            assert len(t) == len(model)
        for k in list(model)[:5]:
            assert t[k] == model[k]
        new = t.persistent()
        with pytest.raises(RuntimeError):
            t[0] = 0
        self._commit(new, model)

    @rule(items=pairs)
    def rebuild_in_other_orders(self, items):
        m = self.map
        d = dict(self.model)
        fresh = PersistentMap(list(d.items())[::-1])
        assert fresh == m
        assert PersistentMap.from_dict(d) == m
        if not has_hash_collisions(d):
            # without colliding keys the iteration order depends only on the contents
            assert list(fresh) == list(m)
            assert list(fresh.items()) == list(m.items())
        assert hash(fresh) == hash(m)

    @rule(protocol=st.integers(min_value=0, max_value=pickle.HIGHEST_PROTOCOL))
    def pickle_round_trip(self, protocol):
        again = pickle.loads(pickle.dumps(self.map, protocol=protocol))
        assert again == self.model

    @rule(k=keys)
    def clear_and_copy(self, k):
        assert self.map.copy() is self.map
        assert len(self.map.clear()) == 0
        assert self.map.dissoc(k).clear() == {}

    # ---- misbehaving keys --------------------------------------------------------------

    @rule(v=values, which=st.sampled_from(BAD_KEY_OPERATIONS))
    def raising_hash_key(self, v, which):
        before = list(self.map.items())
        bad = RaisingHashKey()
        with pytest.raises(HashBoom):
            self._apply(which, bad, v)
        assert list(self.map.items()) == before
        assert_matches(self.map, self.model)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), v=values, which=st.sampled_from(BAD_KEY_OPERATIONS))
    def raising_eq_key(self, data, v, which):
        target = data.draw(st.sampled_from(list(self.model)))
        before = list(self.map.items())
        bad = RaisingEqKey(hash(target))
        with pytest.raises(EqBoom):
            self._apply(which, bad, v)
        assert list(self.map.items()) == before
        assert_matches(self.map, self.model)

    def _apply(self, which, k, v):
        m = self.map
        if which == "assoc":
            m.assoc(k, v)
        elif which == "get":
            m.get(k)
        elif which == "getitem":
            m[k]
        elif which == "in":
            k in m  # noqa: B015
        elif which == "dissoc":
            m.dissoc(k)
        elif which == "update":
            m.update([(k, v)])
        else:
            t = m.transient()
            t[k] = v

    # ---- checks -------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        assert_matches(self.map, self.model)

    @rule()
    def all_versions_unchanged(self):
        for m, snapshot in self.history:
            assert len(m) == len(snapshot)
            assert m == snapshot

    def teardown(self):
        for m, snapshot in self.history:
            assert m == snapshot


TestPersistentMapStateMachine = PersistentMapMachine.TestCase
TestPersistentMapStateMachine.settings = SETTINGS


# --------------------------------------------------------------------------------------
# Plain properties
# --------------------------------------------------------------------------------------


@SETTINGS
@given(items=pairs, data=st.data())
def test_equal_maps_from_any_insertion_order(items, data):
    d = dict(items)
    order = data.draw(st.permutations(list(d.items())))
    a = PersistentMap(d)
    b = PersistentMap()
    for k, v in order:
        b = b.assoc(k, v)
    assert a == b
    assert hash(a) == hash(b)
    if not has_hash_collisions(d):
        assert list(a) == list(b)


@SETTINGS
@given(items=pairs, removals=st.lists(keys, max_size=10))
def test_dissoc_sequence_matches_dict(items, removals):
    d = dict(items)
    m = PersistentMap(d)
    for k in removals:
        m = m.dissoc(k)
        d.pop(k, None)
    assert_matches(m, d)


@SETTINGS
@given(items=pairs)
def test_repr_round_trip(items):
    m = PersistentMap(dict(items))
    namespace = {"PersistentMap": PersistentMap, "CollidingKey": CollidingKey}
    assert eval(repr(m), namespace) == m


@settings(max_examples=300, deadline=None, database=None)
@given(ints=st.lists(st.integers(min_value=-(2**200), max_value=2**200) | st.integers(), min_size=1, max_size=20))
def test_int_keys_and_equal_fractions_are_the_same_keys(ints):
    # Exact ints are hashed by the extension itself; Fraction uses Python's hash(). Any
    # difference would send equal keys down different paths of the trie.
    from fractions import Fraction

    m = PersistentMap.fromkeys(ints, "int")
    for k in ints:
        assert m[Fraction(k)] == "int"
        assert m.dissoc(Fraction(k)).get(k) is None
    by_fraction = PersistentMap.fromkeys([Fraction(k) for k in ints], "fraction")
    assert list(by_fraction) == list(m)
    assert all(by_fraction[k] == "fraction" for k in ints)
