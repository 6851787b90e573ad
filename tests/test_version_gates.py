"""Code paths the extension picks by CPython version, checked on whichever version runs this.

* Exact int keys are hashed inline (src/bindings.hpp, ``exact_int_hash``), reading the
  ``PyLongObject`` layout -- CPython internals -- on 64-bit CPython with 30-bit digits below
  3.15 (``PY_VERSION_HEX < 0x030F0000``); elsewhere, 3.15 included, they go through
  ``tp_hash``.  Either way the hash stored with a key must be ``hash(key)`` bit for bit: a
  ``PersistentSet`` hashes like the equal ``frozenset`` from those stored hashes, a map's hash
  is built from them, and lookups with equal keys of other types (``1.0``, ``Fraction(1)``,
  ``True``) must find them.
* ``PersistentList`` indexes with compact ints through ``PyUnstable_Long_CompactValue`` on
  3.12+ (src/list_object.cpp) and with ``PyNumber_AsSsize_t`` otherwise.

scripts/test-sid-pythons.sh runs this on 3.14 (inline hash) and 3.15 (generic path);
scripts/test.sh on the default Python and on 3.13t.
"""

from __future__ import annotations

import random
import sys
from fractions import Fraction
from typing import Any

import pytest
from pypersistent import PersistentList, PersistentMap, PersistentSet

#: Whether this interpreter takes the extension's inline int hash (the gate in src/bindings.hpp).
INLINE_INT_HASH = (
    sys.implementation.name == "cpython"
    and sys.maxsize == 2**63 - 1
    and sys.int_info.bits_per_digit == 30
    and sys.version_info < (3, 15)
)

MODULUS = 2**61 - 1  # sys.hash_info.modulus on 64-bit CPython


def _interesting_ints() -> list[int]:
    picks = {0, 1, 2, -1, -2, -3, 255, 256, 257, -5, -6}  # -1 hashes to -2; small-int cache edges
    for shift in (29, 30, 31, 32, 59, 60, 61, 62, 63, 64, 89, 90, 91, 119, 120, 121, 150, 300, 1000):
        picks.update({2**shift - 1, 2**shift, 2**shift + 1})
    for k in (1, 2, 3, 7, 2**40, 2**70):
        picks.update({k * MODULUS - 1, k * MODULUS, k * MODULUS + 1})
    picks.update({10**18, 10**19, 10**100, 3**500, sys.maxsize, sys.maxsize + 1})
    rng = random.Random(20260315)
    for bits in (5, 30, 31, 45, 60, 61, 62, 63, 64, 65, 90, 91, 100, 150, 200, 400):
        picks.update(rng.getrandbits(bits) for _ in range(16))
    return sorted(picks | {-k for k in picks})


INTS = _interesting_ints()


class SameHash:
    """Equal to one int and hashing exactly as Python hashes it (hash computed by Python)."""

    __slots__ = ("value", "h")

    def __init__(self, value: int) -> None:
        self.value = value
        self.h = hash(value)

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SameHash):
            return self.value == other.value
        if type(other) is int:
            return self.value == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"SameHash({self.value!r})"


class IntSubclass(int):
    """Not an exact int: always hashed through tp_hash."""


@pytest.mark.skipif(not INLINE_INT_HASH, reason="the extension hashes ints through tp_hash here")
def test_inline_int_hash_assumptions_hold() -> None:
    # exact_int_hash hard-codes these; a CPython that changed them must not pass the gate.
    assert sys.hash_info.width == 64
    assert sys.hash_info.modulus == MODULUS
    assert sys.int_info.bits_per_digit == 30 and sys.int_info.sizeof_digit == 4
    assert hash(-1) == -2 and hash(MODULUS) == 0 and hash(-MODULUS - 1) == -2


@pytest.mark.parametrize("k", INTS, ids=lambda k: f"{k:#x}"[:24])
def test_stored_int_hash_is_pythons(k: int) -> None:
    # frozenset's hash is a function of its elements' hashes only; PersistentSet's is the same
    # function of the hashes it stored, so any difference shows here.
    assert hash(PersistentSet([k])) == hash(frozenset([k]))
    # A map's hash combines the stored key hashes with the values' hashes.
    assert hash(PersistentMap({k: None})) == hash(PersistentMap({SameHash(k): None}))
    # Lookups with equal keys whose hash Python computes.
    m = PersistentMap({k: "int"})
    assert m[SameHash(k)] == "int"
    assert m[Fraction(k)] == "int"
    if float(k) == k:
        assert m[float(k)] == "int"
    assert PersistentMap({SameHash(k): "probe"})[k] == "probe"
    assert SameHash(k) in PersistentSet([k]) and k in PersistentSet([SameHash(k)])


def test_many_int_keys_at_once() -> None:
    m = PersistentMap.fromkeys(INTS, 0)
    by_probe = PersistentMap.fromkeys([SameHash(k) for k in INTS], 0)
    assert hash(m) == hash(by_probe)
    # iteration follows the stored hashes
    assert [k for k in m] == [p.value for p in by_probe]
    assert hash(PersistentSet(INTS)) == hash(frozenset(INTS))
    for k in INTS:
        assert m[Fraction(k)] == 0
    # -1 and -2 share the hash -2 and stay two keys
    both = PersistentMap({-1: "a", -2: "b"})
    assert len(both) == 2 and both[-1] == "a" and both[-2] == "b"
    assert both[SameHash(-1)] == "a" and both[SameHash(-2)] == "b"


def test_transients_store_pythons_hash() -> None:
    tm = PersistentMap().transient()
    ts = PersistentSet().transient()
    for k in INTS:
        tm[k] = k
        ts.add(k)
    m, s = tm.persistent(), ts.persistent()
    assert hash(s) == hash(frozenset(INTS))
    assert m == {k: k for k in INTS}
    assert hash(m) == hash(PersistentMap({SameHash(k): k for k in INTS}))
    # and assoc/dissoc on the persistent side find the transient's keys
    for k in INTS[::7]:
        assert len(m.dissoc(SameHash(k))) == len(m) - 1
        assert len(m.assoc(Fraction(k), 1)) == len(m)


@pytest.mark.parametrize("key", [True, False, IntSubclass(5), IntSubclass(-1), IntSubclass(2**100)])
def test_non_exact_ints_take_tp_hash_and_meet_exact_ones(key: Any) -> None:
    exact = int(key)
    assert hash(PersistentSet([key])) == hash(frozenset([exact]))
    assert PersistentMap({exact: "exact"})[key] == "exact"
    assert PersistentMap({key: "other"})[exact] == "other"
    assert len(PersistentSet([key, exact])) == 1


def test_list_indexing_across_the_compact_int_boundary() -> None:
    # compact ints are the one-digit ones, |i| < 2**30
    n = 100
    lst = PersistentList(range(n))
    for i in (0, 1, n - 1, -1, -n):
        assert lst[i] == list(range(n))[i]
        assert lst[IntSubclass(i)] == list(range(n))[i]
    for i in (n, -n - 1, 2**30 - 1, 2**30, -(2**30), -(2**30) - 1, 2**62, 2**63, -(2**63) - 1, 2**100):
        with pytest.raises(IndexError):
            lst[i]
        with pytest.raises(IndexError):
            lst.set(i, 0)
    assert lst[True] == 1 and lst.set(True, "x")[1] == "x"
