"""Structural pattern matching (``match``/``case``) on PersistentMap.

This module needs Python 3.10+ syntax; conftest.py leaves it out of collection on older
versions.
"""

from __future__ import annotations

import gc
import sys

from conftest import CollidingKey
from pypersistent import PersistentMap


class Keys:
    """Dotted names, so that computed keys can be used as value patterns."""

    five = CollidingKey(5)
    nine = CollidingKey(9)
    absent = CollidingKey(1000)


def test_structural_pattern_matching():
    m = PersistentMap({"a": 1, "b": 2})
    match m:
        case {"zz": _}:
            matched = "wrong"
        case {"a": x, **rest}:
            matched = ("ok", x, rest)
        case _:
            matched = "nothing"
    assert matched == ("ok", 1, {"b": 2})


def test_pattern_matching_mapping_vs_sequence():
    def classify(obj):
        match obj:
            case [*_]:
                return "sequence"
            case {"kind": "point", "x": x, "y": y}:
                return ("point", x, y)
            case {}:
                return "mapping"
            case _:
                return "other"

    assert classify(PersistentMap({"kind": "point", "x": 1, "y": 2})) == ("point", 1, 2)
    assert classify(PersistentMap({"kind": "line"})) == "mapping"
    assert classify(PersistentMap()) == "mapping"



def test_pattern_matching_with_colliding_keys():
    m = PersistentMap({CollidingKey(i): i for i in range(20)})
    match m:
        case {Keys.absent: _}:
            result = "wrong"
        case {Keys.five: a, Keys.nine: b}:
            result = (a, b)
        case _:
            result = "nothing"
    assert result == (5, 9)


def test_pattern_matching_rest_is_a_plain_dict_without_matched_keys():
    m = PersistentMap({i: str(i) for i in range(50)})
    match m:
        case {0: zero, **rest}:
            pass
    assert zero == "0"
    assert type(rest) is dict
    assert rest == {i: str(i) for i in range(1, 50)}


def test_pattern_matching_does_not_leak_references():
    value = object()
    m = PersistentMap({"a": value, "b": 2})

    def match_once():
        match m:
            case {"zz": _}:
                return None
            case {"a": found, **rest}:
                return found, rest
        return None

    for _ in range(3):
        match_once()
    gc.collect()
    before = sys.getrefcount(value)
    for _ in range(2000):
        found, _rest = match_once()
        assert found is value
    del found
    gc.collect()
    assert sys.getrefcount(value) == before
